"""Operator API authentication: API keys with scopes.

A key arrives as ``Authorization: Bearer <key>``. The bootstrap key from settings has every
scope; other keys live hashed (SHA-256) in ``api_keys`` with their scopes. Scopes: ``read``
(traces, events, lists), ``replay`` (dead-letter replays), ``admin`` (partners, merchants, keys).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.db import Connection
from core.errors import OperatorError

__all__ = ["SCOPES", "Scope", "create_api_key", "require"]

Scope = Literal["read", "replay", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "replay", "admin")

_bearer = HTTPBearer(auto_error=False, description="An operator API key.")


async def create_api_key(conn: Connection, name: str, scopes: list[Scope]) -> str:
    """Store a new key (hashed) and return it; it is shown only this once."""
    key = f"sb_{secrets.token_urlsafe(24)}"
    await conn.execute(
        "INSERT INTO api_keys (name, key_sha256, scopes) VALUES ($1, $2, $3)",
        name,
        hashlib.sha256(key.encode()).digest(),
        list(scopes),
    )
    return key


async def _scopes_of(request: Request, key: str) -> set[str]:
    admin_key: str = request.app.state.settings.admin_api_key.get_secret_value()
    if hmac.compare_digest(key.encode(), admin_key.encode()):
        return set(SCOPES)
    scopes = await request.app.state.pool.fetchval(
        "SELECT scopes FROM api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL",
        hashlib.sha256(key.encode()).digest(),
    )
    return set(scopes or ())


def require(scope: Scope) -> Callable[..., Awaitable[None]]:
    """A dependency refusing requests whose API key lacks ``scope`` (401 or 403)."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if credentials is None or not credentials.credentials:
            raise OperatorError(401, "send an operator API key as 'Authorization: Bearer <key>'")
        scopes = await _scopes_of(request, credentials.credentials)
        if not scopes:
            raise OperatorError(401, "unknown or revoked API key")
        if scope not in scopes:
            raise OperatorError(403, f"this API key lacks the {scope!r} scope")

    return check
