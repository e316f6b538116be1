"""Operator API authentication: API keys with scopes.

A key arrives as ``Authorization: Bearer <key>``. The bootstrap key from settings has every
scope; other keys live hashed (SHA-256) in ``api_keys`` with their scopes. Scopes: ``read``
(traces, events, lists), ``replay`` (dead-letter replays), ``admin`` (partners, merchants, keys).
Routes that change something take the :class:`Operator` the check returns and audit its
``actor``; creating and revoking keys are audited too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.audit import audit
from core.db import Connection
from core.errors import OperatorError

__all__ = [
    "BOOTSTRAP_ACTOR",
    "SCOPES",
    "Operator",
    "Scope",
    "authenticate",
    "create_api_key",
    "key_actor",
    "require",
    "revoke_api_key",
]

Scope = Literal["read", "replay", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "replay", "admin")

_bearer = HTTPBearer(auto_error=False, description="An operator API key.")


async def create_api_key(
    conn: Connection, name: str, scopes: list[Scope], *, actor: str = "switchboard"
) -> tuple[int, str]:
    """Store a new key (hashed, audited) and return its id and the key, shown only this once."""
    key = f"sb_{secrets.token_urlsafe(24)}"
    async with conn.transaction():
        key_id: int = await conn.fetchval(
            "INSERT INTO api_keys (name, key_sha256, scopes) VALUES ($1, $2, $3) RETURNING id",
            name,
            hashlib.sha256(key.encode()).digest(),
            list(scopes),
        )
        await audit(
            conn,
            "api_key",
            str(key_id),
            None,
            "active",
            actor=actor,
            reason=f"{name}: {', '.join(scopes)}",
        )
    return key_id, key


async def revoke_api_key(conn: Connection, key_id: int, *, actor: str) -> asyncpg.Record:
    """Revoke a key (audited); revoking a revoked key changes nothing. 404 if there is none."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL"
            " RETURNING id, name, scopes, created_at, revoked_at",
            key_id,
        )
        if row is not None:
            await audit(conn, "api_key", str(key_id), "active", "revoked", actor=actor, reason=None)
            return row
        row = await conn.fetchrow(
            "SELECT id, name, scopes, created_at, revoked_at FROM api_keys WHERE id = $1", key_id
        )
        if row is None:
            raise OperatorError(404, f"no API key {key_id}")
        return row


@dataclass(frozen=True)
class Operator:
    """Who is calling: the API key's audit name (``actor``) and its scopes."""

    actor: str
    scopes: frozenset[str]


BOOTSTRAP_ACTOR = "api-key:bootstrap"


async def authenticate(app_state: Any, key: str) -> Operator | None:
    """The operator an API key belongs to, or ``None`` if it is unknown or revoked."""
    admin_key: str = app_state.settings.admin_api_key.get_secret_value()
    if hmac.compare_digest(key.encode(), admin_key.encode()):
        return Operator(BOOTSTRAP_ACTOR, frozenset(SCOPES))
    row = await app_state.pool.fetchrow(
        "SELECT id, name, scopes FROM api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL",
        hashlib.sha256(key.encode()).digest(),
    )
    if row is None:
        return None
    return Operator(key_actor(row["id"], row["name"]), frozenset(row["scopes"]))


def key_actor(key_id: int, name: str) -> str:
    """How the audit log names what an API key did: ``api-key:7:ops-alice``."""
    return f"api-key:{key_id}:{name}"


def require(scope: Scope) -> Callable[..., Awaitable[Operator]]:
    """A dependency refusing requests whose API key lacks ``scope`` (401 or 403); it returns
    the :class:`Operator` so routes can audit who acted."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Operator:
        if credentials is None or not credentials.credentials:
            raise OperatorError(401, "send an operator API key as 'Authorization: Bearer <key>'")
        # A request with a body was authenticated before its body was read (api.limits).
        operator: Operator | None = getattr(request.state, "operator", None)
        if operator is None:
            operator = await authenticate(request.app.state, credentials.credentials)
        if operator is None:
            raise OperatorError(401, "unknown or revoked API key")
        if scope not in operator.scopes:
            raise OperatorError(403, f"this API key lacks the {scope!r} scope")
        return operator

    return check
