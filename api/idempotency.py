"""Stripe-style idempotency for operator requests that move money: one mechanism every such
route calls (wallet top-ups and transfers now, escrows and exchange requests later).

A request carries an ``Idempotency-Key`` header (1-255 visible ASCII characters). Its
fingerprint is the method, path, query, validated body and a hash of the caller's API key.

* The first request with a key claims it (one ``INSERT … ON CONFLICT``, committed at once) and
  runs; its response, success or refusal (a 4xx problem), is stored in the same transaction as
  its effect and replayed, with ``Idempotent-Replayed: true``, to every repeat with the same
  fingerprint until the key expires (``SWITCHBOARD_IDEMPOTENCY_KEY_RETENTION_SECONDS``, 24 h).
* The same key with another fingerprint is a 422 problem (``/problems/idempotency-key-reused``);
  nothing runs.
* A repeat while the first is still running is a 409 problem
  (``/problems/idempotency-key-in-use``, ``Retry-After: 1``): safe to retry.
* Requests refused before they run (validation, auth) are not stored. One that fails
  unexpectedly or is refused with a 5xx (Postgres gone, Temporal unreachable) rolled its effect
  back, so its key is released for a retry; if the process died instead, the key is free again
  after :data:`LEASE_SECONDS`.

So concurrent requests with one key run once. Expired keys are taken over by a new request and
purged a few at a time by each new claim.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.deps import AdminOperator, Config, Pool
from api.problems import PROBLEM_JSON, problem
from core.db import DATABASE_UNREACHABLE, Connection
from core.errors import IdempotencyKeyInUse, IdempotencyKeyReused, OperatorError
from core.money import RETRIED, RETRIES

__all__ = [
    "IDEMPOTENCY_PROBLEMS",
    "IDEMPOTENCY_WHY",
    "LEASE_SECONDS",
    "IdempotencyKey",
    "Idempotent",
    "IdempotentRequest",
    "OptionalIdempotencyKey",
    "Work",
    "idempotent",
]

LEASE_SECONDS = 30.0
"""How long a claimed key stays in use without an answer before a repeat may take it over (the
process that claimed it died). Longer than any request: statements time out far sooner."""

PURGE_BATCH = 20
"""Expired keys each new claim deletes (amortized purge; see :func:`_purge`)."""

_KEY = "Idempotency-Key"
_KEY_DOC = (
    "Makes the request safe to retry: 1-255 visible ASCII characters, unique per request "
    "(a UUID). A repeat gets the first response; the same key with other parameters, a 422."
)
IdempotencyKey = Annotated[
    str, Header(alias=_KEY, min_length=1, max_length=255, pattern=r"^[!-~]+$", description=_KEY_DOC)
]
OptionalIdempotencyKey = Annotated[
    str | None,
    Header(alias=_KEY, min_length=1, max_length=255, pattern=r"^[!-~]+$", description=_KEY_DOC),
]

IDEMPOTENCY_WHY = {
    409: "The request conflicts with the current state, or the first request with this "
    "Idempotency-Key is still running (type /problems/idempotency-key-in-use; retry).",
    422: "The request is invalid, or its Idempotency-Key was used with other parameters "
    "(type /problems/idempotency-key-reused).",
}
IDEMPOTENCY_PROBLEMS = (409, 422)

Work = Callable[[Connection], Awaitable[tuple[int, BaseModel]]]
"""A request's effect: runs in the transaction that stores its answer; returns the status and
body. Raising :class:`~core.errors.OperatorError` is an answer too (stored and replayed)."""


@dataclass(frozen=True)
class IdempotentRequest:
    """A money request with its key, ready to run once: what :data:`Idempotent` gives a route."""

    request: Request
    pool: asyncpg.Pool
    key: str
    actor: str
    retention_seconds: float

    async def run(self, params: BaseModel | None, work: Work) -> JSONResponse:
        """:func:`idempotent` for this request, ``params`` being its validated body."""
        return await idempotent(
            self.request,
            self.pool,
            key=self.key,
            actor=self.actor,
            params=params,
            retention_seconds=self.retention_seconds,
            work=work,
        )


async def _idempotent_request(
    request: Request, pool: Pool, settings: Config, operator: AdminOperator, key: IdempotencyKey
) -> IdempotentRequest:
    return IdempotentRequest(
        request, pool, key, operator.actor, settings.idempotency_key_retention_seconds
    )


Idempotent = Annotated[IdempotentRequest, Depends(_idempotent_request)]
"""An admin's money request with its required ``Idempotency-Key``."""


class _LeaseLost(Exception):
    """The key was taken over while this request ran: its effect must not commit."""


async def idempotent(
    request: Request,
    pool: asyncpg.Pool,
    *,
    key: str,
    actor: str,
    params: BaseModel | None,
    retention_seconds: float,
    work: Work,
) -> JSONResponse:
    """Run ``work`` once for ``key`` and answer with its stored response (see the module)."""
    fingerprint = _fingerprint(request, params)
    token = uuid.uuid4()
    async with pool.acquire() as conn:
        for _ in range(3):  # a key purged between the claim and the read is claimed again
            if await _claim(conn, key, fingerprint, request, actor, token, retention_seconds):
                break
            row = await conn.fetchrow(
                "SELECT fingerprint, status, response_status, response_body"
                " FROM idempotency_keys WHERE key = $1",
                key,
            )
            if row is None:
                continue
            if row["fingerprint"] != fingerprint:
                return _problem_response(
                    IdempotencyKeyReused(
                        f"Idempotency-Key {key!r} was used with other parameters (or by another"
                        " API key); use a new key for a new request"
                    )
                )
            if row["status"] == "running":
                return _in_use(key)
            return _response(row["response_status"], row["response_body"], replayed=True)
        else:
            return _in_use(key)
        await _purge(conn)
        try:
            status, body = await _run(conn, key, token, work)
        except _LeaseLost:
            return _in_use(key)
        except OperatorError as error:
            if error.status >= 500:  # not an answer: the service could not act right now
                await _release(conn, key, token)
                raise
            status, body = error.status, _problem_body(error)
            try:
                await _finish(conn, key, token, status, body)
            except _LeaseLost:
                return _in_use(key)
        except BaseException:
            await _release(conn, key, token)
            raise
    return _response(status, body, replayed=False)


async def _run(
    conn: Connection, key: str, token: uuid.UUID, work: Work
) -> tuple[int, dict[str, Any]]:
    """Run ``work`` and store its answer in one transaction, retried whole on a deadlock or
    serialization failure (which therefore never reaches the client)."""
    for attempt in range(1, RETRIES + 1):
        try:
            async with conn.transaction():
                status, model = await work(conn)
                body = model.model_dump(mode="json")
                await _finish(conn, key, token, status, body)
            return status, body
        except RETRIED:
            if attempt == RETRIES:
                raise
    raise AssertionError("unreachable")


async def _claim(
    conn: Connection,
    key: str,
    fingerprint: bytes,
    request: Request,
    actor: str,
    token: uuid.UUID,
    retention_seconds: float,
) -> bool:
    """Take the key: new, expired, or abandoned by a request that died with it (same
    fingerprint, lease over). One statement, so two claims never both win."""
    claimed = await conn.fetchval(
        "INSERT INTO idempotency_keys AS k (key, fingerprint, method, path, caller, token,"
        " lease_until, expires_at) VALUES ($1, $2, $3, $4, $5, $6,"
        " now() + make_interval(secs => $7), now() + make_interval(secs => $8))"
        " ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,"
        " method = excluded.method, path = excluded.path, caller = excluded.caller,"
        " token = excluded.token, status = 'running', response_status = NULL,"
        " response_body = NULL, created_at = now(), lease_until = excluded.lease_until,"
        " expires_at = excluded.expires_at"
        " WHERE k.expires_at <= now() OR (k.status = 'running' AND k.lease_until <= now()"
        " AND k.fingerprint = excluded.fingerprint)"
        " RETURNING true",
        key,
        fingerprint,
        request.method,
        request.url.path,
        actor,
        token,
        LEASE_SECONDS,
        retention_seconds,
    )
    return bool(claimed)


async def _finish(
    conn: Connection, key: str, token: uuid.UUID, status: int, body: dict[str, Any]
) -> None:
    stored = await conn.fetchval(
        "UPDATE idempotency_keys SET status = 'done', response_status = $3, response_body = $4"
        " WHERE key = $1 AND token = $2 RETURNING true",
        key,
        token,
        status,
        body,
    )
    if not stored:
        raise _LeaseLost(key)


async def _release(conn: Connection, key: str, token: uuid.UUID) -> None:
    """Free the key this request claimed (its effect rolled back) for a retry."""
    with contextlib.suppress(*DATABASE_UNREACHABLE):
        await conn.execute("DELETE FROM idempotency_keys WHERE key = $1 AND token = $2", key, token)


async def _purge(conn: Connection) -> None:
    """Delete a few expired keys. Every claim of a new key does this, so the table holds at most
    the live keys plus a backlog that shrinks faster than keys are created."""
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE key IN (SELECT key FROM idempotency_keys"
        " WHERE expires_at <= now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)",
        PURGE_BATCH,
    )


def _fingerprint(request: Request, params: BaseModel | None) -> bytes:
    caller = hashlib.sha256(request.headers.get("authorization", "").encode()).hexdigest()
    parts = [
        request.method,
        request.url.path,
        request.url.query,
        params.model_dump(mode="json") if params is not None else None,
        caller,
    ]
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


def _problem_body(error: OperatorError) -> dict[str, Any]:
    return {
        "type": error.problem_type,
        "title": HTTPStatus(error.status).phrase,
        "status": error.status,
        "detail": error.detail,
    }


def _problem_response(error: OperatorError) -> JSONResponse:
    body = _problem_body(error)
    return problem(error.status, body["title"], error.detail, type_=error.problem_type)


def _in_use(key: str) -> JSONResponse:
    error = IdempotencyKeyInUse(
        f"the first request with Idempotency-Key {key!r} is still running; retry shortly"
    )
    return problem(
        error.status,
        HTTPStatus(error.status).phrase,
        error.detail,
        type_=error.problem_type,
        headers={"Retry-After": "1"},
    )


def _response(status: int, body: Any, *, replayed: bool) -> JSONResponse:
    return JSONResponse(
        body,
        status_code=status,
        media_type=PROBLEM_JSON if status >= 400 else None,
        headers={"Idempotent-Replayed": "true"} if replayed else None,
    )
