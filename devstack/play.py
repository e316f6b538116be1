"""The play endpoint: a real HTTP receiver for the demo merchant's outbound webhooks, so a
newcomer sees signed deliveries arrive without writing a receiver of their own.

``switchboard dev`` runs it (``SWITCHBOARD_PLAY_ENDPOINT_PORT``, 58027) and registers it as an
endpoint of ``merchant_demo`` through the operator API (:func:`register_play_endpoint`, the same
``POST /v1/endpoints`` as ``switchboard endpoints add``), keeping the endpoint's secret in its
dev state. Every POST is kept (the newest 500) with whether its Standard Webhooks signature
verified under that secret: checked with the ``standardwebhooks`` reference package when it is
installed (it is a development dependency), else with :func:`core.signing.verify`, so what a
merchant using the reference library would see is what is shown. It answers 200 either way: a
wrong secret shows up here, not as retries and a tripped circuit.

``GET /`` is a page of what arrived (``switchboard dev`` prints its URL); ``GET /_received`` is
the same as JSON, oldest first (``switchboard play list``).
"""

from __future__ import annotations

import html
import importlib.util
import json
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from core.errors import InvalidSignature, StaleTimestamp
from core.signing import parse_secret, verify
from devstack.threaded import ThreadedServer

__all__ = [
    "PLAY_DESCRIPTION",
    "PlayEndpoint",
    "PlayReceiver",
    "check_signature",
    "register_play_endpoint",
]

PLAY_DESCRIPTION = "switchboard dev play endpoint"
"""How the dev stack recognises its own play endpoints among a merchant's endpoints."""
KEPT = 500
BODY_SHOWN = 4096
_SHOWN_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type")


def check_signature(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, *, now: float
) -> tuple[bool, str]:
    """Whether one of ``secrets`` signed ``body`` with ``headers``, and what checked it (or why
    it did not verify)."""
    if not secrets:
        return False, "no secret yet: the play endpoint is not registered"
    if importlib.util.find_spec("standardwebhooks") is not None:
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError

        reason = ""
        for secret in secrets:
            try:
                Webhook(secret).verify(body, dict(headers), json_parse=False)
            # The reference library raises ValueError (binascii.Error) on some malformed headers.
            except (WebhookVerificationError, ValueError) as error:
                reason = f"standardwebhooks: {error}"
                continue
            return True, "standardwebhooks"
        return False, reason
    try:
        verify([parse_secret(s) for s in secrets], headers, body, now=now)
    except (InvalidSignature, StaleTimestamp) as error:
        return False, f"core.signing: {error.detail}"
    return True, "core.signing"


@dataclass
class _Received:
    """What the receiver got, and the secrets it checks signatures with."""

    secrets: list[str] = field(default_factory=list)
    items: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=KEPT))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keep(self, request_path: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        with self.lock:
            secrets = list(self.secrets)
        verified, detail = check_signature(secrets, headers, body, now=time.time())
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = body[:BODY_SHOWN].decode("utf-8", "replace")
        item = {
            "at": time.time(),
            "path": request_path,
            "webhook_id": headers.get("webhook-id"),
            "type": payload.get("type") if isinstance(payload, dict) else None,
            "verified": verified,
            "detail": detail,
            "headers": {name: headers[name] for name in _SHOWN_HEADERS if name in headers},
            "body": payload,
        }
        with self.lock:
            self.items.append(item)
        return item

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.items)


def _app(state: _Received) -> Starlette:
    async def receive(request: Request) -> Response:
        item = state.keep(request.url.path, request.headers, await request.body())
        return JSONResponse({"received": True, "verified": item["verified"]})

    async def received(_: Request) -> Response:
        return JSONResponse(state.snapshot())

    async def page(_: Request) -> Response:
        return HTMLResponse(_page(state.snapshot()[::-1]))

    return Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/_received", received, methods=["GET"]),
            Route("/{path:path}", receive, methods=["POST"]),
        ]
    )


def _page(items: list[dict[str, Any]]) -> str:
    rows = "".join(
        "<tr><td>{at}</td><td>{type}</td><td><code>{id}</code></td><td class={cls}>{ok}</td>"
        "<td><pre>{body}</pre></td></tr>".format(
            at=time.strftime("%H:%M:%S", time.localtime(item["at"])),
            type=html.escape(str(item["type"] or "")),
            id=html.escape(str(item["webhook_id"] or "")),
            cls="ok" if item["verified"] else "bad",
            ok="verified" if item["verified"] else html.escape(f"not verified ({item['detail']})"),
            body=html.escape(json.dumps(item["body"], indent=1)[:BODY_SHOWN]),
        )
        for item in items
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="2"><title>Play endpoint</title><style>
body{{font:14px system-ui,sans-serif;margin:2em}} td{{vertical-align:top;padding:.3em .6em}}
pre{{margin:0;max-height:12em;overflow:auto}} .ok{{color:#176b2c}} .bad{{color:#b3261e}}
</style></head><body><h1>Play endpoint</h1>
<p>Signed webhooks Switchboard delivered here, newest first ({len(items)} kept; this page
refreshes itself). <code>./run switchboard play list</code> shows the same.</p>
<table><tr><th>at</th><th>type</th><th>webhook-id</th><th>signature</th><th>body</th></tr>
{rows or '<tr><td colspan="5">Nothing yet: send a payment for merchant_demo.</td></tr>'}
</table></body></html>"""


class PlayReceiver(ThreadedServer):
    """The receiver served in a background thread on ``host:port`` (a context manager);
    :meth:`use_secrets` tells it the endpoint's secrets once they are known."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._state = _Received()
        super().__init__(_app(self._state), port, host, name="play endpoint")

    @property
    def endpoint_url(self) -> str:
        """Where deliveries go (the page is at :attr:`url`)."""
        return f"{self.url}/webhooks"

    def use_secrets(self, secrets: Sequence[str]) -> None:
        with self._state.lock:
            self._state.secrets = list(secrets)

    def received(self) -> list[dict[str, Any]]:
        """What arrived, oldest first."""
        return self._state.snapshot()


@dataclass(frozen=True)
class PlayEndpoint:
    """The registered play endpoint: its id and the whsec_ secret it signs with."""

    endpoint_id: str
    secret: str


def register_play_endpoint(
    operator: httpx.Client, merchant_id: str, url: str, known: PlayEndpoint | None
) -> PlayEndpoint:
    """Make ``url`` the one play endpoint of ``merchant_id``, through the operator API.

    Idempotent: the ``known`` endpoint is kept (its URL updated if the port moved); a play
    endpoint whose secret is not known (a dev state that was lost) is deleted and a new one
    created, so one receiver never gets deliveries it cannot verify. Raises
    :class:`httpx.HTTPStatusError` if the api refuses.
    """
    listed = operator.get("/v1/endpoints", params={"merchant_id": merchant_id, "limit": 1000})
    ours = [ep for ep in listed.raise_for_status().json() if ep["description"] == PLAY_DESCRIPTION]
    kept = next((ep for ep in ours if known and ep["id"] == known.endpoint_id), None)
    for ep in ours:
        if ep is not kept:
            operator.delete(f"/v1/endpoints/{ep['id']}").raise_for_status()
    if kept is not None and known is not None:
        if kept["url"] != url:
            operator.patch(f"/v1/endpoints/{kept['id']}", json={"url": url}).raise_for_status()
        return known
    created = operator.post(
        "/v1/endpoints",
        json={"merchant_id": merchant_id, "url": url, "description": PLAY_DESCRIPTION},
    )
    body = created.raise_for_status().json()
    return PlayEndpoint(body["id"], body["secret"])
