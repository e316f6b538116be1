"""How a revision written as plain SQL is applied and undone, shared by every revision."""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

__all__ = ["create_schema", "drop_tables"]


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
