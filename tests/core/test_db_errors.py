"""Which Postgres errors are permanent (park the event) and which are worth retrying, each
provoked for real on the test server rather than constructed by hand."""

from __future__ import annotations

import datetime

import asyncpg
import pytest

from core.db import is_permanent

# (what provokes it, its SQLSTATE, whether a retry could ever succeed)
PROVOKED = [
    ("SELECT '294277-01-01 00:00:00+00'::timestamptz", "22008", False),  # date out of range
    ("SELECT 2147483647::int + 1", "22003", False),  # numeric out of range
    ("SELECT 1 / 0", "22012", False),  # division by zero
    ("SELECT 'x'::int", "22P02", False),  # invalid text representation
    ("INSERT INTO t (n) VALUES (-1)", "23514", False),  # check violation
    ("INSERT INTO t (n) VALUES (NULL)", "23502", False),  # not null violation
    ("INSERT INTO child (parent) VALUES (42)", "23503", False),  # foreign key violation
    ("INSERT INTO t (n) VALUES (1), (1)", "23505", True),  # unique violation: a lost race
    ("SELECT * FROM no_such_table", "42P01", True),  # a deploy running ahead of migrations
    ("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$", "40001", True),
    ("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$", "40P01", True),
    ("SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)", "57014", True),  # query canceled
]


@pytest.mark.parametrize(("sql", "sqlstate", "retryable"), PROVOKED)
async def test_postgres_errors_are_classified_by_class(
    pool: asyncpg.Pool, sql: str, sqlstate: str, retryable: bool
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE t (n int UNIQUE CHECK (n >= 0) NOT NULL) ON COMMIT DROP;"
            " CREATE TEMP TABLE parent (id int PRIMARY KEY) ON COMMIT DROP;"
            " CREATE TEMP TABLE child (parent int REFERENCES parent (id)) ON COMMIT DROP"
        )
        with pytest.raises(asyncpg.PostgresError) as raised:
            async with conn.transaction():
                await conn.execute(sql)
    assert raised.value.sqlstate == sqlstate
    assert is_permanent(raised.value) is not retryable


async def test_a_nul_in_text_is_permanent(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.PostgresError) as raised:
        await pool.fetchval("SELECT $1::text", "a\x00b")
    assert raised.value.sqlstate == "22021"
    assert is_permanent(raised.value)


async def test_connection_trouble_is_never_permanent(postgres_admin_url: str) -> None:
    base, _, _ = postgres_admin_url.rpartition("/")
    with pytest.raises(asyncpg.PostgresError) as raised:
        await asyncpg.connect(f"{base}/no_such_database_here")
    assert not is_permanent(raised.value)
    assert not is_permanent(ConnectionRefusedError())
    assert not is_permanent(TimeoutError())
    assert not is_permanent(OverflowError(datetime.date.max))
