"""The live dashboard's api side: dashboard tokens, the sync endpoint and the page itself.

* ``POST /v1/merchants/{id}/dashboard-tokens``, ``/v1/exchange-desk/dashboard-tokens`` and
  ``/v1/exchange-requests/{id}/dashboard-tokens`` (API key with ``read``) issue a short-lived
  token for the gateway (``core.dashboard_tokens``) scoped to one topic: a merchant's feed, the
  operators' exchange desk, or one exchange request (its customer's view). A request's token
  also renews itself there (see :func:`create_request_token`), so its customer's page, which
  has no API key, stays live as long as the request is open.
* ``GET /v1/merchants/{id}/sync`` answers a merchant's current state (payment, refund and
  balance totals) and its events, as one consistent snapshot at ``head_seq``, from the read
  replica when one is set (saying how fresh it is); it accepts an API key with ``read`` or a
  dashboard token for that merchant.
* ``GET /dashboard`` serves the page (``api/templates/dashboard.html`` and ``api/static/``),
  ``GET /dashboard/desk`` the exchange desk (``api/templates/desk.html``), and
  ``GET /dashboard/exchange-requests/{id}`` one request's customer view
  (``api/templates/request.html``; see :func:`request_page`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Path as PathParam, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, Field

from api.auth import require
from api.deps import OPERATOR_PROBLEMS, Config, Reads, single_valued_query
from api.problems import problems
from api.schemas import FreshRead
from core.contracts import EXCHANGE_TRANSITIONS, ExchangeStatus
from core.dashboard_tokens import DashboardGrant, issue_topic_token, verify_dashboard_token
from core.errors import InvalidDashboardToken, OperatorError
from core.feeds import Topic, TopicKind
from core.merchant_events import events_after
from core.settings import DEV_ADMIN_API_KEY, Settings

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
_bearer = HTTPBearer(auto_error=False, description="An operator API key or a dashboard token.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
RequestId = Annotated[str, PathParam(pattern=r"^exr_[0-9a-f]{32}$")]

router = APIRouter(
    tags=["dashboard"], dependencies=[Depends(single_valued_query)], responses=OPERATOR_PROBLEMS
)


class DashboardToken(BaseModel):
    token: str
    topic: str = Field(description="The one feed it opens: merchant:<id>, desk or request:<id>.")
    merchant_id: str | None = Field(description="The merchant, for a merchant's feed; else null.")
    expires_at: datetime
    gateway_url: str
    view_url: str | None = Field(
        None,
        description="For an exchange request's token: its customer's page, the token in the"
        " URL's fragment (never sent to a server). Hand it to the customer.",
    )


class CurrencyTotals(BaseModel):
    currency: str
    payments_succeeded: int
    volume: int
    refunded: int
    payments_failed: int


class Balance(BaseModel):
    partner_id: str = Field(description="The partner reporting it: each keeps its own.")
    currency: str
    available: int
    pending: int
    as_of: datetime


class SyncEvent(BaseModel):
    merchant_id: str
    seq: int
    event_id: str
    type: str
    data: dict[str, Any]
    occurred_at: datetime


class SyncOut(FreshRead):
    merchant_id: str
    head_seq: int
    """Totals and balances are exactly the effect of events up to this seq."""
    totals: list[CurrencyTotals]
    balances: list[Balance]
    events: list[SyncEvent]
    has_more: bool
    """More events lie between the last one returned and ``head_seq``: ask again after it."""


@router.post(
    "/v1/merchants/{merchant_id}/dashboard-tokens",
    dependencies=[Depends(require("read"))],
    response_model=DashboardToken,
    status_code=201,
    responses=problems(404),
)
async def create_dashboard_token(
    merchant_id: str, request: Request, settings: Config
) -> DashboardToken:
    """A token that lets one browser follow this merchant's live feed on the gateway."""
    pool: asyncpg.Pool = request.app.state.pool
    if not await pool.fetchval("SELECT 1 FROM merchants WHERE id = $1", merchant_id):
        raise OperatorError(404, f"no merchant {merchant_id!r}")
    return _token(settings, Topic.merchant(merchant_id))


@router.post(
    "/v1/exchange-desk/dashboard-tokens",
    dependencies=[Depends(require("read"))],
    response_model=DashboardToken,
    status_code=201,
)
async def create_desk_token(settings: Config) -> DashboardToken:
    """A token that lets one browser follow the operators' exchange desk live: every
    transition of every exchange request, with who made it and why."""
    return _token(settings, Topic.desk())


def _presented_grant(settings: Settings, credentials: Credentials) -> DashboardGrant | None:
    """The dashboard token the caller presents, verified; None for an API key (or nothing)."""
    if credentials is None or credentials.credentials.count(".") != 2:
        return None  # API keys (sb_…) never contain a dot; JWTs have exactly two
    try:
        return verify_dashboard_token(
            settings.dashboard_token_secret.get_secret_value(),
            credentials.credentials,
            now=time.time(),
        )
    except InvalidDashboardToken as error:
        raise OperatorError(401, str(error)) from error


async def _request_token_holder(
    request_id: RequestId, request: Request, settings: Config, credentials: Credentials
) -> DashboardGrant | None:
    """This request's own dashboard token (returned: a renewal), or an operator key with
    ``read`` (None)."""
    grant = _presented_grant(settings, credentials)
    if grant is None:
        await require("read")(request, credentials)
        return None
    if grant.topic != Topic.request(request_id):
        raise OperatorError(403, "this dashboard token is for another feed")
    return grant


@router.post(
    "/v1/exchange-requests/{request_id}/dashboard-tokens",
    response_model=DashboardToken,
    status_code=201,
    responses=problems(404, why={404: "No such exchange request."}),
)
async def create_request_token(
    request_id: RequestId,
    request: Request,
    settings: Config,
    renewing: Annotated[DashboardGrant | None, Depends(_request_token_holder)],
) -> DashboardToken:
    """A token for one exchange request's live feed, its customer's view: each transition's
    status and amounts, never the operator working it. ``view_url`` is the customer's page.

    An operator key with ``read`` gets one (an operator, or the merchant's backend, hands it to
    the customer). So does a valid token for this same request, which is how the customer's
    page, holding no API key, renews its token before it expires: while the request is open,
    for the full lifetime; once it has ended, never past the presented token's own expiry, so
    a token leaked from a page outlives its request by one lifetime at most. A token never
    opens another request (403) and says nothing about whether one exists.
    """
    pool: asyncpg.Pool = request.app.state.pool
    status = await pool.fetchval("SELECT status FROM exchange_requests WHERE id = $1", request_id)
    if status is None:
        raise OperatorError(404, f"no exchange request {request_id!r}")
    ended = ExchangeStatus(status) in EXCHANGE_TRANSITIONS.final
    return _token(
        settings,
        Topic.request(request_id),
        not_after=renewing.expires_at if renewing is not None and ended else None,
    )


def _token(settings: Settings, topic: Topic, *, not_after: float | None = None) -> DashboardToken:
    now = time.time()
    ttl = settings.dashboard_token_ttl_seconds
    token, grant = issue_topic_token(
        settings.dashboard_token_secret.get_secret_value(),
        topic,
        ttl_seconds=ttl if not_after is None else min(ttl, not_after - now),
        now=now,
    )
    return DashboardToken(
        token=token,
        topic=topic.key,
        merchant_id=grant.merchant_id,
        expires_at=datetime.fromtimestamp(grant.expires_at, UTC),
        gateway_url=f"{settings.gateway_public_url}/ws",
        view_url=(
            f"{settings.public_base_url}/dashboard/exchange-requests/{topic.id}#token={token}"
            if topic.kind is TopicKind.REQUEST
            else None
        ),
    )


async def _merchant_reader(
    merchant_id: str, request: Request, settings: Config, credentials: Credentials
) -> None:
    """A dashboard token for this merchant, or an operator key with ``read``."""
    grant = _presented_grant(settings, credentials)
    if grant is None:
        await require("read")(request, credentials)
    elif grant.merchant_id != merchant_id:
        raise OperatorError(403, "this dashboard token is for another merchant")


@router.get(
    "/v1/merchants/{merchant_id}/sync",
    dependencies=[Depends(_merchant_reader)],
    response_model=SyncOut,
    responses=problems(503, why={503: "The read replica cannot answer right now."}),
)
async def sync(
    merchant_id: str,
    reads: Reads,
    since_seq: Annotated[
        int | None,
        Query(ge=0, le=2**63 - 1, description="Events after this seq; omit for the latest ones."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> SyncOut:
    """The merchant's state and events, consistent with each other at ``head_seq``.

    Safe from a lagging replica: the answer is one snapshot, so totals and balances are exactly
    the effect of the events up to ``head_seq``, and those events have no gap, because the
    ledger allocates each seq under the merchant row's lock (seq *n* commits before seq *n + 1*
    can begin) and a replica makes transactions visible in the primary's commit order. A lag
    only makes ``head_seq`` older; the client then resumes the gateway's feed from it, and the
    gateway replays what follows from the primary, so nothing is missed. ``as_of`` and
    ``replica_lag_seconds`` say how old the snapshot is until the feed has caught up.
    """
    async with reads.snapshot() as (conn, fresh):
        head = await conn.fetchval(
            "SELECT coalesce(max(seq), 0) FROM events WHERE merchant_id = $1", merchant_id
        )
        totals = await conn.fetch(
            "SELECT currency,"
            " count(*) FILTER (WHERE status = 'succeeded') AS payments_succeeded,"
            " coalesce(sum(amount) FILTER (WHERE status = 'succeeded'), 0) AS volume,"
            " coalesce(sum(refunded_amount), 0) AS refunded,"
            " count(*) FILTER (WHERE status = 'failed') AS payments_failed"
            " FROM payments WHERE merchant_id = $1 GROUP BY currency ORDER BY currency",
            merchant_id,
        )
        balances = await conn.fetch(
            "SELECT partner_id, currency, available, pending, as_of FROM balances"
            " WHERE merchant_id = $1 ORDER BY partner_id, currency",
            merchant_id,
        )
        after = max(0, head - limit) if since_seq is None else since_seq
        rows = await events_after(conn, merchant_id, after, up_to=head, limit=limit)
    last = rows[-1]["seq"] if rows else after
    return SyncOut(
        **FreshRead.freshness_of(fresh),
        merchant_id=merchant_id,
        head_seq=head,
        totals=[CurrencyTotals(**dict(row)) for row in totals],
        balances=[Balance(**dict(row)) for row in balances],
        events=[
            SyncEvent(
                **{k: row[k] for k in ("merchant_id", "seq", "event_id", "type", "data")},
                occurred_at=row["created_at"],
            )
            for row in rows
        ],
        has_more=last < head,
    )


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page(settings: Config) -> HTMLResponse:
    """The live dashboard (merchant view, escrows and operator view)."""
    return _page("dashboard.html", settings)


@router.get("/dashboard/desk", response_class=HTMLResponse, include_in_schema=False)
async def desk_page(settings: Config) -> HTMLResponse:
    """The exchange desk: the live queue with Claim, my requests, timelines, aggregates."""
    return _page("desk.html", settings)


@router.get(
    "/dashboard/exchange-requests/{request_id}",
    response_class=HTMLResponse,
    include_in_schema=False,
)
async def request_page(request_id: RequestId, settings: Config) -> HTMLResponse:
    """One exchange request as its customer sees it: status, amounts and timeline, live.

    The customer has no API key, so the page is opened with a request token in its URL:
    ``view_url`` of ``POST /v1/exchange-requests/{id}/dashboard-tokens``, which an operator or
    the merchant's backend obtains and hands over. The trade-off, and how it is kept small:

    * The token rides in the fragment (``#token=…``), which browsers never send to a server,
      so it reaches no access log, proxy or ``Referer`` (the page also sends no referrer); the
      page moves it to the tab's session storage and takes it out of the address bar at once.
      It can still be seen where the link itself travels (the message carrying it, the
      browser's history of that first visit), so it is short-lived
      (``dashboard_token_ttl_seconds``) and opens nothing but this request's own feed: its
      status and amounts, never the operator working it, never another request (403).
    * The page renews its token before it expires from the same route; renewal stops extending
      it once the request has ended. A link found later than one lifetime after it was issued
      opens nothing (ask the merchant for a new one).

    The page is served by the api and talks only to the api and the gateway, so its Origin is
    the api's, the one the gateway's ``gateway_allowed_origins`` already admits for the
    dashboard; it renders nothing about the request itself (everything comes from the feed, to
    the token's holder), so serving it says nothing about whether the request exists.
    """
    return _page("request.html", settings, operator=False)


def _page(template: str, settings: Settings, *, operator: bool = True) -> HTMLResponse:
    """A dashboard page: API keys are typed into it (never put in its URL), and it may talk
    only to the api and the gateway. A page that is not an operator's (the customer's request
    view) gets no configuration at all: never the development admin key."""
    dev_key = (
        DEV_ADMIN_API_KEY
        if settings.environment == "development"
        and settings.admin_api_key.get_secret_value() == DEV_ADMIN_API_KEY
        else ""
    )
    page = _templates.get_template(template).render(
        config={
            "temporalUiUrl": settings.temporal_ui_url,
            "temporalNamespace": settings.temporal_namespace,
            "devApiKey": dev_key,
        }
        if operator
        else {}
    )
    return HTMLResponse(
        page,
        headers={
            "Content-Security-Policy": f"default-src 'self'; connect-src 'self'"
            f" {settings.gateway_public_url}; img-src 'self' data:; style-src 'self';"
            " script-src 'self'; frame-ancestors 'none'",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )
