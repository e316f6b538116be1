"""How a revision written as plain SQL is applied and undone, shared by every revision, and the
one drawing of a state machine as a table plus the trigger that holds a status column to it."""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

__all__ = ["create_schema", "drop_tables", "transition_table", "transition_trigger"]


def create_schema(schema: str) -> None:
    """Run ``schema``, one statement at a time.

    asyncpg prepares each statement, and a prepared statement holds exactly one command.
    """
    for statement in schema.split(";\n"):
        if statement.strip():
            op.execute(statement)


def drop_tables(tables: Sequence[str]) -> None:
    for table in tables:
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")


def transition_table(entity: str, transitions: Sequence[tuple[str | None, str]]) -> list[str]:
    """Statements creating ``{entity}_transitions`` and filling it with ``transitions`` (``None``
    as the source is a row's creation): the drawing a revision freezes for
    :func:`transition_trigger`. ``entity`` is singular (``exchange_request``)."""
    rows = ", ".join(
        f"({'NULL' if old is None else repr(old)}, '{new}')" for old, new in transitions
    )
    return [
        f"""
    CREATE TABLE {entity}_transitions (
        from_state text,
        to_state text NOT NULL
    )
    """,
        f"CREATE UNIQUE INDEX {entity}_transitions_once"
        f" ON {entity}_transitions (coalesce(from_state, ''), to_state)",
        f"INSERT INTO {entity}_transitions (from_state, to_state) VALUES {rows}",
    ]


def transition_trigger(
    entity: str, table: str, *, unchanged: str = "NEW.status = OLD.status"
) -> list[str]:
    """Statements creating the function ``{entity}_transition()`` and the trigger
    ``{table}_transition`` that refuse any insert or update of ``table`` whose status change is
    not a row of ``{entity}_transitions`` (a ``check_violation`` naming the constraint
    ``{table}_transition``). An update for which the SQL condition ``unchanged`` holds is no
    transition and passes. A downgrade drops the function after the table."""
    label = entity.replace("_", " ")
    return [
        f"""
    CREATE FUNCTION {entity}_transition() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        old_status text;
    BEGIN
        IF TG_OP = 'UPDATE' THEN
            IF {unchanged} THEN
                RETURN NEW;
            END IF;
            old_status := OLD.status;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM {entity}_transitions
                       WHERE from_state IS NOT DISTINCT FROM old_status
                       AND to_state = NEW.status) THEN
            RAISE EXCEPTION '{label} % may not go from % to %',
                NEW.id, coalesce(old_status, '(new)'), NEW.status
                USING ERRCODE = 'check_violation', CONSTRAINT = '{table}_transition';
        END IF;
        RETURN NEW;
    END $$
    """,
        f"""
    CREATE TRIGGER {table}_transition BEFORE INSERT OR UPDATE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {entity}_transition()
    """,
    ]
