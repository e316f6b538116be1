"""Dashboard tokens: short-lived HS256 JWTs that let one browser watch one live feed (a topic).

The api issues them to holders of an operator key with the ``read`` scope (``POST
/v1/merchants/{id}/dashboard-tokens``, ``/v1/exchange-desk/dashboard-tokens``,
``/v1/exchange-requests/{id}/dashboard-tokens``); the gateway and the api's sync endpoint verify
them. A token names exactly one :class:`core.feeds.Topic`, the gateway audience and an expiry;
nothing else grants access. A merchant's token is what it always was (``sub`` the merchant,
scope ``dashboard:read``); any other topic's has scope ``feed:read`` and ``sub`` the topic's
key, which a verifier that knows only merchants refuses instead of reading as a merchant id.
The clock is injected so expiry needs no time tricks in tests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import jwt

from core.errors import InvalidDashboardToken
from core.feeds import Topic, TopicKind

__all__ = [
    "AUDIENCE",
    "SCOPE",
    "TOPIC_SCOPE",
    "DashboardGrant",
    "issue_dashboard_token",
    "issue_topic_token",
    "verify_dashboard_token",
]

AUDIENCE = "switchboard-gateway"
SCOPE = "dashboard:read"
"""A merchant topic's scope (``sub`` is the merchant id)."""
TOPIC_SCOPE = "feed:read"
"""Any other topic's scope (``sub`` is the topic's key)."""
ALGORITHM = "HS256"
# Longer than any real token: HS256 over a few claims is ~250 bytes.
MAX_TOKEN_CHARS = 2048


@dataclass(frozen=True)
class DashboardGrant:
    """What a valid token allows: reading ``topic``'s events until ``expires_at``."""

    topic: Topic
    expires_at: float
    token_id: str

    @property
    def merchant_id(self) -> str | None:
        """The merchant whose feed this is; None for any other topic."""
        return self.topic.id if self.topic.kind is TopicKind.MERCHANT else None


def issue_dashboard_token(
    secret: str, merchant_id: str, *, ttl_seconds: float, now: float
) -> tuple[str, DashboardGrant]:
    """A signed token for ``merchant_id``'s feed valid for ``ttl_seconds`` from ``now``."""
    return issue_topic_token(secret, Topic.merchant(merchant_id), ttl_seconds=ttl_seconds, now=now)


def issue_topic_token(
    secret: str, topic: Topic, *, ttl_seconds: float, now: float
) -> tuple[str, DashboardGrant]:
    """A signed token for ``topic`` valid for ``ttl_seconds`` from ``now`` (to the whole second:
    a JWT's ``exp`` is one, so the grant says the expiry the gateway will enforce)."""
    grant = DashboardGrant(topic, float(int(now + ttl_seconds)), uuid.uuid4().hex)
    merchant = topic.kind is TopicKind.MERCHANT
    claims = {
        "sub": topic.id if merchant else topic.key,
        "aud": AUDIENCE,
        "scope": SCOPE if merchant else TOPIC_SCOPE,
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
    subject, scope, expires_at = claims.get("sub"), claims.get("scope"), claims.get("exp")
    if not isinstance(subject, str) or not subject:
        raise InvalidDashboardToken("token names no feed")
    if scope == SCOPE:
        topic = Topic.merchant(subject)
    elif scope == TOPIC_SCOPE:
        try:
            topic = Topic.parse(subject)
        except ValueError as error:
            raise InvalidDashboardToken("token names no feed") from error
        if topic.kind is TopicKind.MERCHANT:
            # One way to name a merchant's feed: its own scope.
            raise InvalidDashboardToken("token names no feed")
    else:
        raise InvalidDashboardToken("token lacks the dashboard scope")
    if not isinstance(expires_at, int) or expires_at <= now:
        raise InvalidDashboardToken("token expired")
    return DashboardGrant(topic, float(expires_at), str(claims.get("jti", "")))
