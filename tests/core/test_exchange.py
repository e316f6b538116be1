"""Exchange requests' state machine (core/exchange.py): drawn once, held by Postgres too, and every
request's audit log a path of the drawing ending in its status, whatever random actors do."""

from __future__ import annotations

import inspect
import itertools
import uuid

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from core import exchange
from core.contracts import EXCHANGE_TRANSITIONS, ExchangeStatus
from core.db import Connection
from core.errors import OperatorError
from tests.money_support import new_merchant

OPERATORS = [exchange.Actor("op-a"), exchange.Actor("op-b"), exchange.Actor("op-c")]
ADMIN = exchange.Actor("boss", admin=True)
ACTORS = [*OPERATORS, ADMIN]


async def new_request(conn: Connection, merchant: str) -> str:
    row = await exchange.create(
        conn,
        merchant_id=merchant,
        customer_id=f"c-{uuid.uuid4().hex[:8]}",
        from_amount=10_000,
        from_currency="EUR",
        to_currency="BTC",
        quote=None,
        actor="tests",
    )
    request_id: str = row["id"]
    return request_id


def test_the_docstring_shows_the_drawing() -> None:
    assert EXCHANGE_TRANSITIONS.drawing() in inspect.cleandoc(ExchangeStatus.__doc__ or "")


async def test_the_database_holds_the_same_drawing(pool: asyncpg.Pool) -> None:
    """Migration 0006's transition rows are exactly the code's table."""
    rows = await pool.fetch("SELECT from_state, to_state FROM exchange_request_transitions")
    in_database = {(row["from_state"], row["to_state"]) for row in rows}
    assert len(rows) == len(in_database)
    assert in_database == {
        (None if old is None else str(old), str(new)) for old, new in EXCHANGE_TRANSITIONS
    }


async def test_the_database_refuses_an_illegal_transition_from_raw_sql(pool: asyncpg.Pool) -> None:
    merchant = await new_merchant(pool)
    async with pool.acquire() as conn:
        request_id = await new_request(conn, merchant)
        with pytest.raises(asyncpg.CheckViolationError, match="may not go from pending to"):
            await conn.execute(
                "UPDATE exchange_requests SET status = 'completed', assignee = 'x' WHERE id = $1",
                request_id,
            )
        with pytest.raises(asyncpg.CheckViolationError, match=r"from \(new\) to pending"):
            await conn.execute(
                "INSERT INTO exchange_requests (id, merchant_id, customer_id, from_amount,"
                " from_currency, to_currency, status, created_by)"
                " VALUES ($1, $2, 'c', 1, 'EUR', 'BTC', 'pending', 'sql')",
                f"exr_{uuid.uuid4().hex}",
                merchant,
            )
        # A legal move by hand still goes through; a final status never moves again.
        await conn.execute(
            "UPDATE exchange_requests SET status = 'cancelled' WHERE id = $1", request_id
        )
        with pytest.raises(asyncpg.CheckViolationError, match="from cancelled to pending"):
            await conn.execute(
                "UPDATE exchange_requests SET status = 'pending' WHERE id = $1", request_id
            )


_steps = st.lists(
    st.tuples(
        st.sampled_from(["claim", "advance", "release", "reassign", "cancel"]),
        st.sampled_from(ACTORS),
        st.sampled_from(list(exchange.ADVANCES)),
        st.sampled_from([a.name for a in OPERATORS]),
    ),
    max_size=12,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plans=st.lists(_steps, min_size=1, max_size=3))
async def test_random_actors_leave_a_valid_audited_path(
    pool: asyncpg.Pool, plans: list[list[tuple[str, exchange.Actor, ExchangeStatus, str]]]
) -> None:
    """Whatever random operators try, in any order, each request's audit log is a path of the
    drawing from its creation, ends in the status it has, and has one entry per version."""
    merchant = await new_merchant(pool)
    async with pool.acquire() as conn:
        ids = [await new_request(conn, merchant) for _ in plans]
        for request_id, plan in zip(ids, plans, strict=True):
            for action, actor, to, other in plan:
                try:
                    if action == "claim":
                        await exchange.claim(conn, request_id, actor=actor)
                    elif action == "advance":
                        await exchange.advance(conn, request_id, to, actor=actor, reason="p")
                    elif action == "release":
                        await exchange.release(conn, request_id, actor=actor, reason=None)
                    elif action == "reassign":
                        await exchange.reassign(conn, request_id, other, actor=actor, reason="r")
                    else:
                        await exchange.cancel(conn, request_id, actor=actor, reason=None)
                except OperatorError as refused:
                    assert refused.status in (403, 409)
        for request_id in ids:
            row = await exchange.show(conn, request_id)
            steps = await exchange.timeline(conn, request_id)
            assert steps[0]["from_state"] is None
            for before, after in itertools.pairwise(steps):
                assert after["from_state"] == before["to_state"]
            for step in steps:
                assert EXCHANGE_TRANSITIONS.allows(step["from_state"], step["to_state"])
            assert steps[-1]["to_state"] == row["status"]
            assert len(steps) == row["version"]
