"""Dashboard tokens: short-lived HS256 JWTs that let one browser watch one merchant's live feed.

The api issues them (``POST /v1/merchants/{id}/dashboard-tokens``) to holders of an operator key
with the ``read`` scope; the gateway and the api's sync endpoint verify them. A token names
exactly one merchant (``sub``), the gateway audience and an expiry; nothing else grants access.
The clock is injected so expiry needs no time tricks in tests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import jwt

from core.errors import InvalidDashboardToken

__all__ = ["AUDIENCE", "SCOPE", "DashboardGrant", "issue_dashboard_token", "verify_dashboard_token"]

AUDIENCE = "switchboard-gateway"
SCOPE = "dashboard:read"
ALGORITHM = "HS256"
# Longer than any real token: HS256 over a few claims is ~250 bytes.
MAX_TOKEN_CHARS = 2048


@dataclass(frozen=True)
class DashboardGrant:
    """What a valid token allows: reading ``merchant_id``'s events until ``expires_at``."""

    merchant_id: str
    expires_at: float
    token_id: str


def issue_dashboard_token(
    secret: str, merchant_id: str, *, ttl_seconds: float, now: float
) -> tuple[str, DashboardGrant]:
    """A signed token for ``merchant_id`` valid for ``ttl_seconds`` from ``now``."""
    grant = DashboardGrant(merchant_id, now + ttl_seconds, uuid.uuid4().hex)
    claims = {
        "sub": merchant_id,
        "aud": AUDIENCE,
        "scope": SCOPE,
        "iat": int(now),
        "exp": int(grant.expires_at),
        "jti": grant.token_id,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM), grant


def verify_dashboard_token(secret: str, token: object, *, now: float) -> DashboardGrant:
    """The grant a token carries; raises :class:`InvalidDashboardToken` for anything else.

    Only HS256 is accepted (never ``none`` or an algorithm named by the token), the audience and
    scope must be ours, and expiry is checked against ``now`` with no leeway.
    """
    if not isinstance(token, str) or not token:
        raise InvalidDashboardToken("no token")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidDashboardToken("token too long")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["sub", "aud", "exp", "iat"], "verify_exp": False},
        )
    except jwt.InvalidSignatureError as error:
        raise InvalidDashboardToken("bad token signature") from error
    except jwt.PyJWTError as error:
        raise InvalidDashboardToken(f"malformed token: {error}") from error
    merchant_id, expires_at = claims.get("sub"), claims.get("exp")
    if not isinstance(merchant_id, str) or not merchant_id:
        raise InvalidDashboardToken("token names no merchant")
    if claims.get("scope") != SCOPE:
        raise InvalidDashboardToken("token lacks the dashboard scope")
    if not isinstance(expires_at, int) or expires_at <= now:
        raise InvalidDashboardToken("token expired")
    return DashboardGrant(merchant_id, float(expires_at), str(claims.get("jti", "")))
