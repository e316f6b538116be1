"""Desk-live benchmark (issue 10): from an exchange request's transition to every client watching
it through the gateway, at a steady rate, beside a bare Redis PUBLISH → subscriber round trip at
the same rate on the same Redis.

Switchboard side: ``plan.desk_live_requests`` exchange requests, each taken through
``create → claim → processing → completed`` by one operator (an API key of its own, ``read`` and
``replay``) through the real api: ``POST /v1/exchange-requests``, ``…/claim``, ``…/advance``.
Transitions are due at ``plan.desk_live_rate``/s, evenly spaced, spread over many requests: a
request's next step is due :data:`LAG_REQUESTS` requests' creates after its previous one
(:func:`slot`), so about ``LAG_REQUESTS * 3`` requests are in flight at once. Open loop
(:func:`benchmarks.pacing.burst_loop`): a step waits for its request's previous step to be
answered, and a late answer counts against the steps behind it.

Watching clients connect to the gateway (its own process) with tokens from the api, as the desk
page does: :data:`DESK_CLIENTS` on the desk topic (``POST /v1/exchange-desk/dashboard-tokens``,
resuming from the desk's head), and each request's own client
(``POST /v1/exchange-requests/{id}/dashboard-tokens``, ``since_seq`` 0), which connects once the
create is answered; its two creation events therefore come by replay and are not timed, every
later transition is. For every transition and every client that should see it: the time from
the transition's due time, and separately from the api's answer, to the event's arrival.

Every client's events are checked against Postgres (``feed_events``, the topic's seqs and event
ids since it connected): every event exactly once, in seq order; misses, repeats, disorder and
mismatches are counted.

Baseline: the same schedule and the same number of clients, each a Redis connection of this
process subscribed to a channel of its own kind (one desk channel; one per request, subscribed
once its creation was published), and each transition a pipeline of PUBLISH of events of the same
shape and size (:func:`core.feeds.encode_feed_event`): what Redis itself costs on this machine,
so the ratio is what the api's transaction and the gateway add.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from api.auth import create_api_key
from benchmarks.harness import Harness, Pairs, progress
from benchmarks.pacing import burst_loop
from benchmarks.report import Row, Section, Target
from benchmarks.stack import HOST
from benchmarks.stats import Latency
from core.exchange import CUSTOMER_FIELDS, DESK_FIELDS
from core.feeds import TOPIC_EVENTS, Topic, encode_feed_event
from core.settings import DEV_ADMIN_API_KEY
from core.tenancy import create_merchant

__all__ = ["measure_desk_live", "slot"]

STEPS = ("create", "claim", "processing", "completed")
LAG_REQUESTS = 5
"""A request's next step is due this many requests' creates after its previous one (1.05 s at
20 transitions/s): time for its own client to connect in between."""
DESK_CLIENTS = 5
LATENCY_TARGET_MS = 100.0
GRACE = 30.0
"""Seconds after the last due time within which every transition must be answered."""
ARRIVAL_TIMEOUT = 15.0
"""Seconds after the last answer within which every client must have every event of its topic."""
CONNECT_TIMEOUT = 10.0
ARRIVAL_POLL = 0.05
HTTP_CONNECTIONS = 32
WARM_UP_REQUESTS = 3
ACTOR = "bench"
ADMIN = {"authorization": f"Bearer {DEV_ADMIN_API_KEY}"}
DESK_CHANNEL = "bench:baseline:desk"
GAP_FILLS = "switchboard_gateway_gap_fills_total"
EVENTS_IN = "switchboard_gateway_events_in_total"
FILLED = "filled"


def slot(request: int, step: int) -> int:
    """The schedule position of ``request``'s ``step``: one transition per slot, every slot of
    the run's middle taken, the steps of one request :data:`LAG_REQUESTS` creates apart."""
    return len(STEPS) * (request + LAG_REQUESTS * step) + step


# -- what both sides record --------------------------------------------------------------------


@dataclass
class Transition:
    """One step of one request: when it was due and answered (``perf_counter``), its events."""

    request: int
    step: int
    due: float = math.nan
    answered: float = math.nan
    event_ids: tuple[str, ...] = ()
    outcome: str = "not made"
    """``ok``, or what stopped it (an HTTP status, a transport error, its previous step)."""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass
class Watcher:
    """One watching client: what it received, in order (seq, event id, ``perf_counter``)."""

    topic: str
    """``desk``, or the request's index (as text) on either side."""
    request: int | None = None
    received: list[tuple[int, str, float]] = field(default_factory=list)
    live_at: float | None = None
    closed: int | None = None


@dataclass(frozen=True)
class Check:
    """Every watcher's events against what its topic holds: each once, in seq order."""

    expected: int
    missed: int
    repeated: int
    out_of_order: int
    mismatched: int
    """Events whose (seq, event id) is not the topic's: another topic's, or a wrong seq."""


@dataclass(frozen=True)
class DeskLiveRun:
    """One run of either side."""

    to_client: Latency
    """Due time → arrival, one sample per transition and client that should see it."""
    after_answer: Latency
    """The api's answer (baseline: the PUBLISH reply) → arrival, the same samples."""
    to_last_client: Latency
    """Due time → arrival at the last of the transition's watchers, per transition."""
    answered: Latency
    """Due time → the api's answer (baseline: the PUBLISH reply), per transition."""
    answered_by_step: dict[str, Latency]
    """The same, by step (:data:`STEPS`)."""
    transitions: int
    not_ok: Counter[str]
    check: Check
    replayed: int
    """Timed events that reached a request's client by replay (it connected after them)."""
    closed: int
    """Clients the gateway closed during the run."""
    gap_fills: float = math.nan
    """The gateway's reads from Postgres to fill a gap in a live feed during the run (an event
    published before the one below it: held back up to ``gateway_gap_grace_seconds``)."""
    filled: float = math.nan
    """Events the gateway fanned out from Postgres rather than Redis: its gap fills, and its
    position check (every ``gateway_position_check_seconds``) when that read an event between
    its commit and its publish."""


class Side(Protocol):
    """What the driver needs of either side."""

    async def step(self, request: int, step: int) -> tuple[str, tuple[str, ...]]:
        """Make ``request``'s ``step``; ``("ok", its event ids)`` or (why not, ())."""
        ...


# -- the driver ----------------------------------------------------------------------------------


async def drive(side: Side, requests: int, rate: float) -> list[Transition]:
    """Every step of ``requests`` requests on the :func:`slot` schedule at ``rate``/s."""
    transitions = {(r, s): Transition(r, s) for r in range(requests) for s in range(len(STEPS))}
    done = {key: asyncio.Event() for key in transitions}
    last_slot = slot(requests - 1, len(STEPS) - 1)
    bursts: list[list[tuple[int, int]]] = [[] for _ in range(last_slot + 1)]
    for key in transitions:
        bursts[slot(*key)].append(key)

    async def call(key: tuple[int, int]) -> float:
        request, step = key
        transition = transitions[(request, step)]
        try:
            if step and not await _previous_ok(transitions, done, request, step):
                transition.outcome = f"{STEPS[step - 1]} not made"
                return time.perf_counter()
            transition.outcome, transition.event_ids = await side.step(request, step)
            transition.answered = time.perf_counter()
            return transition.answered
        finally:
            done[(request, step)].set()

    paced = await burst_loop(bursts, rate, call, grace=GRACE)
    # The outcomes are in schedule order; a finished one's value is when it returned, so the
    # schedule's start follows from any of them.
    keys = [key for burst in bursts for key in burst]
    start = next(
        (
            outcome.value - outcome.latency - slot(*key) / rate
            for key, outcome in zip(keys, paced.outcomes, strict=True)
            if outcome.finished and outcome.value is not None
        ),
        math.nan,
    )
    for key, transition in transitions.items():
        transition.due = start + slot(*key) / rate
    unanswered = [
        transitions[key] for key, o in zip(keys, paced.outcomes, strict=True) if not o.finished
    ]
    for transition in unanswered:
        transition.outcome = f"no answer within {GRACE:g} s"
    return [transitions[key] for key in keys]


async def _previous_ok(
    transitions: dict[tuple[int, int], Transition],
    done: dict[tuple[int, int], asyncio.Event],
    request: int,
    step: int,
) -> bool:
    await done[(request, step - 1)].wait()
    return transitions[(request, step - 1)].ok


# -- Switchboard: the api and the gateway -------------------------------------------------------


class _Switchboard:
    """Requests worked through the api; watchers on the gateway."""

    def __init__(self, h: Harness, http: httpx.AsyncClient, merchant: str, key: str) -> None:
        self.h = h
        self.http = http
        self.merchant = merchant
        self.operator = {"authorization": f"Bearer {key}"}
        self.ids: dict[int, str] = {}
        self.watchers: list[Watcher] = []
        self.connections: list[ClientConnection] = []
        self.readers: list[asyncio.Task[None]] = []
        self.joining: list[asyncio.Task[None]] = []

    async def run(self, requests: int) -> DeskLiveRun:
        desk_head = await TOPIC_EVENTS.head(self.h.pool, Topic.desk())
        self.ids, self.watchers = {}, []
        try:
            for _ in range(DESK_CLIENTS):
                token = await self._token("/v1/exchange-desk/dashboard-tokens")
                await self._watch(Watcher("desk"), token, desk_head)
            await _all_live(self.watchers)
            before = await self._gateway_counters()
            transitions = await drive(self, requests, self.h.plan.desk_live_rate)
            await _joined(self.joining)
            expected = await self._expected(desk_head)
            await _arrived(self.watchers, expected)
            after = await self._gateway_counters()
        finally:
            await self._close()
        run = _run_of(transitions, self.watchers, expected)
        return dataclasses.replace(
            run,
            gap_fills=after[GAP_FILLS] - before[GAP_FILLS],
            filled=after[FILLED] - before[FILLED],
        )

    async def _gateway_counters(self) -> dict[str, float]:
        """The gateway's gap-fill counters, from its ``/metrics``."""
        port = self.h.stack.gateway_port
        answer = await self.http.get(f"http://{HOST}:{port}/metrics")
        answer.raise_for_status()
        found = dict.fromkeys((GAP_FILLS, FILLED), 0.0)
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                if sample.name == GAP_FILLS:
                    found[GAP_FILLS] = sample.value
                elif sample.name == EVENTS_IN and sample.labels.get("source") == "postgres":
                    found[FILLED] = sample.value
        return found

    async def step(self, request: int, step: int) -> tuple[str, tuple[str, ...]]:
        try:
            answer = await self._send(request, step)
        except httpx.HTTPError as error:
            return type(error).__name__, ()
        if answer.status_code not in (200, 201):
            return str(answer.status_code), ()
        row = answer.json()
        if step == 0:
            self.ids[request] = row["id"]
            self.joining.append(asyncio.create_task(self._join(request, row["id"])))
            return "ok", (f"{row['id']}.v1", f"{row['id']}.v2")
        return "ok", (f"{row['id']}.v{row['version']}",)

    async def _send(self, request: int, step: int) -> httpx.Response:
        if step == 0:
            body = {
                "merchant_id": self.merchant,
                "customer_id": f"c-{uuid.uuid4().hex[:12]}",
                "from_amount": 25_000,
                "from_currency": "EUR",
                "to_currency": "USDT",
                "quote": 26_900,
            }
            headers = {**self.operator, "idempotency-key": uuid.uuid4().hex}
            return await self.http.post("/v1/exchange-requests", json=body, headers=headers)
        path = f"/v1/exchange-requests/{self.ids[request]}"
        if step == 1:
            return await self.http.post(f"{path}/claim", headers=self.operator)
        return await self.http.post(
            f"{path}/advance", json={"to": STEPS[step]}, headers=self.operator
        )

    async def _join(self, request: int, request_id: str) -> None:
        """The request's own client: a token for its topic, then the gateway from seq 0."""
        token = await self._token(f"/v1/exchange-requests/{request_id}/dashboard-tokens")
        await self._watch(Watcher(request_id, request), token, 0)

    async def _token(self, path: str) -> str:
        answer = await self.http.post(path, headers=ADMIN)
        answer.raise_for_status()
        token: str = answer.json()["token"]
        return token

    async def _watch(self, watcher: Watcher, token: str, since_seq: int) -> None:
        connection = await connect(
            self.h.stack.gateway_url, compression=None, open_timeout=CONNECT_TIMEOUT
        )
        self.connections.append(connection)
        self.watchers.append(watcher)
        await connection.send(json.dumps({"type": "auth", "token": token, "since_seq": since_seq}))
        self.readers.append(asyncio.create_task(_read_gateway(connection, watcher)))

    async def _expected(self, desk_head: int) -> dict[str, dict[int, str]]:
        """Each watched topic's events since its watcher's position: seq → event id."""
        keys = [Topic.request(request_id).key for request_id in self.ids.values()]
        rows = await self.h.pool.fetch(
            "SELECT topic, seq, event_id FROM feed_events"
            " WHERE (topic = 'desk' AND seq > $1) OR topic = ANY($2::text[])",
            desk_head,
            keys,
        )
        expected: dict[str, dict[int, str]] = {}
        for row in rows:
            topic = Topic.parse(row["topic"])
            expected.setdefault(topic.id or "desk", {})[row["seq"]] = row["event_id"]
        return expected

    async def _close(self) -> None:
        for task in self.joining:
            task.cancel()
        for connection in self.connections:
            await connection.close()
        for task in [*self.readers, *self.joining]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.connections, self.readers, self.joining = [], [], []


async def _read_gateway(connection: ClientConnection, watcher: Watcher) -> None:
    try:
        async for raw in connection:
            arrived = time.perf_counter()
            message = json.loads(raw)
            if "seq" in message:
                watcher.received.append((message["seq"], message["event_id"], arrived))
            elif message.get("control") == "live":
                watcher.live_at = arrived
    except ConnectionClosed:
        pass
    if connection.close_code not in (1000, 1001):
        watcher.closed = connection.close_code or 1006


# -- baseline: bare Redis PUBLISH → subscriber --------------------------------------------------


class _BareRedis:
    """The same schedule as PUBLISH pipelines, each watcher a subscribed Redis connection."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.publisher = Redis.from_url(h.stack.redis.url)
        # One connection per subscriber: every request's of a run, and the desk's.
        self.subscribers = Redis.from_url(
            h.stack.redis.url, max_connections=h.plan.desk_live_requests + DESK_CLIENTS + 10
        )
        self.watchers: list[Watcher] = []
        self.pubsubs: list[PubSub] = []
        self.readers: list[asyncio.Task[None]] = []
        self.joining: list[asyncio.Task[None]] = []
        self.desk_seq = 0
        self.published: dict[str, dict[int, str]] = {}
        self.run_tag = ""
        self.template = _event_data()

    async def run(self, requests: int) -> DeskLiveRun:
        self.watchers, self.desk_seq, self.published = [], 0, {"desk": {}}
        self.run_tag = uuid.uuid4().hex[:8]
        try:
            for _ in range(DESK_CLIENTS):
                await self._subscribe(Watcher("desk"), DESK_CHANNEL)
            await _all_live(self.watchers)
            transitions = await drive(self, requests, self.h.plan.desk_live_rate)
            await _joined(self.joining)
            expected = {
                topic: {
                    seq: event_id
                    for seq, event_id in events.items()
                    # Published before its subscriber was: Redis keeps nothing to replay.
                    if topic == "desk" or not event_id.endswith((".v1", ".v2"))
                }
                for topic, events in self.published.items()
            }
            await _arrived(self.watchers, expected)
        finally:
            await self._close()
        return _run_of(transitions, self.watchers, expected)

    async def step(self, request: int, step: int) -> tuple[str, tuple[str, ...]]:
        topic = str(request)
        versions = (1, 2) if step == 0 else (step + 2,)
        messages = []
        event_ids = []
        for version in versions:
            event_id = f"{self.run_tag}-{request}.v{version}"
            event_ids.append(event_id)
            self.desk_seq += 1
            self.published["desk"][self.desk_seq] = event_id
            self.published.setdefault(topic, {})[version] = event_id
            messages.append((DESK_CHANNEL, self._message("desk", self.desk_seq, event_id)))
            messages.append((self._channel(request), self._message(topic, version, event_id)))
        async with self.publisher.pipeline(transaction=False) as pipe:
            for channel, message in messages:
                pipe.publish(channel, message)
            await pipe.execute()
        if step == 0:
            watcher = Watcher(topic, request)
            self.joining.append(
                asyncio.create_task(self._subscribe(watcher, self._channel(request)))
            )
        return "ok", tuple(event_ids)

    def _channel(self, request: int) -> str:
        return f"bench:baseline:request:{self.run_tag}:{request}"

    def _message(self, topic: str, seq: int, event_id: str) -> str:
        return encode_feed_event(
            {
                "topic": topic,
                "seq": seq,
                "event_id": event_id,
                "type": "exchange_request.assigned",
                "data": self.template if topic == "desk" else _customer_view(self.template),
                "created_at": datetime.now(UTC),
            }
        )

    async def _subscribe(self, watcher: Watcher, channel: str) -> None:
        pubsub = self.subscribers.pubsub()
        self.pubsubs.append(pubsub)
        self.watchers.append(watcher)
        await pubsub.subscribe(channel)
        self.readers.append(asyncio.create_task(_read_redis(pubsub, watcher)))

    async def _close(self) -> None:
        for task in self.joining:
            task.cancel()
        for task in self.readers:
            task.cancel()
        for task in [*self.readers, *self.joining]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for pubsub in self.pubsubs:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        self.pubsubs, self.readers, self.joining = [], [], []

    async def aclose(self) -> None:
        await self.publisher.aclose()
        await self.subscribers.aclose()


async def _read_redis(pubsub: PubSub, watcher: Watcher) -> None:
    async for message in pubsub.listen():
        arrived = time.perf_counter()
        if message["type"] == "subscribe":
            watcher.live_at = arrived
        elif message["type"] == "message":
            event = json.loads(message["data"])
            watcher.received.append((event["seq"], event["event_id"], arrived))


def _event_data() -> dict[str, Any]:
    """A desk event's data as :mod:`core.exchange` writes it, with typical values."""
    now = datetime.now(UTC).isoformat()
    values: dict[str, Any] = {
        "id": f"exr_{uuid.uuid4().hex}",
        "merchant_id": "bench-desk-live-000000",
        "customer_id": "c-000000000000",
        "from_amount": 25_000,
        "from_currency": "EUR",
        "to_currency": "USDT",
        "quote": 26_900,
        "status": "assigned",
        "created_at": now,
        "updated_at": now,
        "version": 3,
        "assignee": "api-key:12:desk-live-000000",
        "created_by": "api-key:12:desk-live-000000",
    }
    request = {name: values[name] for name in DESK_FIELDS}
    return {
        "request": request,
        "from": "pending",
        "to": "assigned",
        "actor": values["assignee"],
        "reason": None,
    }


def _customer_view(desk: dict[str, Any]) -> dict[str, Any]:
    request = {name: desk["request"][name] for name in CUSTOMER_FIELDS}
    return {"request": request, "from": desk["from"], "to": desk["to"]}


# -- shared by both sides -----------------------------------------------------------------------


async def _all_live(watchers: Iterable[Watcher]) -> None:
    async with asyncio.timeout(CONNECT_TIMEOUT):
        while not all(w.live_at is not None or w.closed is not None for w in watchers):
            await asyncio.sleep(ARRIVAL_POLL)
    closed = [w.closed for w in watchers if w.closed is not None]
    if closed:
        raise RuntimeError(f"watchers closed before they went live: {closed}")


async def _joined(joining: list[asyncio.Task[None]]) -> None:
    """Wait for every request's client to have connected (bounded); a failure is a bug here."""
    if joining:
        done, late = await asyncio.wait(joining, timeout=CONNECT_TIMEOUT)
        for task in done:
            task.result()
        if late:
            raise RuntimeError(f"{len(late)} request clients did not connect in time")


async def _arrived(watchers: list[Watcher], expected: dict[str, dict[int, str]]) -> None:
    """Wait (at most :data:`ARRIVAL_TIMEOUT`) until every watcher has every expected seq."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while time.monotonic() < deadline:
        if all(
            w.closed is not None
            or set(expected.get(w.topic, {})) <= {seq for seq, _, _ in w.received}
            for w in watchers
        ):
            return
        await asyncio.sleep(ARRIVAL_POLL)


def _check(watchers: list[Watcher], expected: dict[str, dict[int, str]]) -> Check:
    totals = Counter[str]()
    for watcher in watchers:
        events = expected.get(watcher.topic, {})
        seqs = [seq for seq, _, _ in watcher.received]
        totals["expected"] += len(events)
        totals["missed"] += len(set(events) - set(seqs))
        totals["repeated"] += len(seqs) - len(set(seqs))
        totals["out_of_order"] += sum(b < a for a, b in itertools.pairwise(seqs))
        totals["mismatched"] += sum(
            events.get(seq) != event_id
            for seq, event_id, _ in watcher.received
            if seq in events or seq > max(events, default=0)
        )
    return Check(
        totals["expected"],
        totals["missed"],
        totals["repeated"],
        totals["out_of_order"],
        totals["mismatched"],
    )


def _run_of(
    transitions: list[Transition],
    watchers: list[Watcher],
    expected: dict[str, dict[int, str]],
) -> DeskLiveRun:
    by_event = {event_id: t for t in transitions for event_id in t.event_ids}
    to_client: list[float] = []
    after_answer: list[float] = []
    last: dict[tuple[int, int], float] = {}
    seen: Counter[tuple[int, int]] = Counter()
    replayed = 0
    for watcher in watchers:
        kept: set[str] = set()
        for _, event_id, arrived in watcher.received:
            transition = by_event.get(event_id)
            # A request's own client connects after its creation: those two come by replay.
            if (
                transition is None
                or event_id in kept
                or (watcher.request is not None and not transition.step)
            ):
                continue
            kept.add(event_id)
            if watcher.live_at is None or arrived < watcher.live_at:
                replayed += 1
            to_client.append(arrived - transition.due)
            after_answer.append(arrived - transition.answered)
            key = (transition.request, transition.step)
            last[key] = max(last.get(key, -math.inf), arrived)
            seen[key] += 1
    desks = sum(w.request is None for w in watchers)
    per_event = {(t.request, t.step): len(t.event_ids) for t in transitions}
    complete = [
        last[key] - t.due
        for t in transitions
        if (key := (t.request, t.step)) in last
        and seen[key] == per_event[key] * desks + (1 if t.step else 0)
    ]
    ok = [t for t in transitions if t.ok]
    return DeskLiveRun(
        to_client=Latency.of(to_client),
        after_answer=Latency.of(after_answer),
        to_last_client=Latency.of(complete),
        answered=Latency.of([t.answered - t.due for t in ok]),
        answered_by_step={
            name: Latency.of([t.answered - t.due for t in ok if t.step == step])
            for step, name in enumerate(STEPS)
        },
        transitions=len(transitions),
        not_ok=Counter(t.outcome for t in transitions if not t.ok),
        check=_check(watchers, expected),
        replayed=replayed,
        closed=sum(w.closed is not None for w in watchers),
    )


# -- the measurement -----------------------------------------------------------------------------


async def measure_desk_live(h: Harness) -> Section:
    """The desk-live benchmark (see the module docstring); one report section."""
    plan = h.plan
    tag = uuid.uuid4().hex[:6]
    merchant = f"bench-desk-live-{tag}"
    async with h.pool.acquire() as conn:
        await create_merchant(conn, merchant, name=None, email=None, partner_ids=[], actor=ACTOR)
        _, key = await create_api_key(conn, f"desk-live-{tag}", ["read", "replay"], actor=ACTOR)
    limits = httpx.Limits(
        max_connections=HTTP_CONNECTIONS, max_keepalive_connections=HTTP_CONNECTIONS
    )
    bare = _BareRedis(h)
    try:
        async with httpx.AsyncClient(
            base_url=h.stack.api_url, limits=limits, timeout=GRACE
        ) as http:
            switchboard = _Switchboard(h, http, merchant, key)
            with progress("warming up the desk and the gateway"):
                await bare.run(WARM_UP_REQUESTS)
                await switchboard.run(WARM_UP_REQUESTS)
            pairs: Pairs[DeskLiveRun, DeskLiveRun] = await h.alternate(
                f"desk live, {plan.desk_live_rate:g} transitions/s",
                lambda: bare.run(plan.desk_live_requests),
                lambda: switchboard.run(plan.desk_live_requests),
            )
    finally:
        await bare.aclose()
    return _section(h, pairs)


def _section(h: Harness, pairs: Pairs[DeskLiveRun, DeskLiveRun]) -> Section:
    plan = h.plan
    rate = f"{plan.desk_live_rate:g}/s"

    def both(figure: Callable[[DeskLiveRun], float]) -> tuple[list[float], list[float]]:
        return (
            [float(figure(run)) for run in pairs.subject],
            [float(figure(run)) for run in pairs.baseline],
        )

    def cpu(process: str | None = None) -> tuple[list[float], list[float]]:
        return (
            [
                use.ms_per(process, run.transitions)
                for use, run in zip(pairs.subject_cpu, pairs.subject, strict=True)
            ],
            [
                use.ms_per(process, run.transitions)
                for use, run in zip(pairs.baseline_cpu, pairs.baseline, strict=True)
            ],
        )

    rows = [
        Row(
            f"Transition due → watching client p50 at {rate}",
            "ms",
            *both(lambda r: r.to_client.p50_ms),
        ),
        Row(
            f"Transition due → watching client p99 at {rate}",
            "ms",
            *both(lambda r: r.to_client.p99_ms),
            Target("<=", LATENCY_TARGET_MS, "ms"),
        ),
        Row("…worst", "ms", *both(lambda r: r.to_client.max_ms)),
        Row(
            "Transition due → the last of its watchers p99",
            "ms",
            *both(lambda r: r.to_last_client.p99_ms),
        ),
        Row(
            "API answer → watching client p99 (baseline: PUBLISH reply → subscriber)",
            "ms",
            *both(lambda r: r.after_answer.p99_ms),
        ),
        Row("…worst", "ms", *both(lambda r: r.after_answer.max_ms)),
        Row(
            "Transition due → API answer p50 (baseline: PUBLISH reply)",
            "ms",
            *both(lambda r: r.answered.p50_ms),
        ),
        Row("…p99", "ms", *both(lambda r: r.answered.p99_ms)),
        Row(
            "Deliveries timed per run (transition and watcher pairs)",
            "",
            *both(lambda r: r.to_client.count),
        ),
        Row(
            "Events a watcher missed (of its topic's, since it connected)",
            "",
            *both(lambda r: r.check.missed),
            Target("<=", 0),
        ),
        Row(
            "Events received twice, out of seq order, or not its topic's",
            "",
            *both(lambda r: r.check.repeated + r.check.out_of_order + r.check.mismatched),
            Target("<=", 0),
        ),
        Row(
            "Transitions not answered 2xx in time",
            "",
            *both(lambda r: sum(r.not_ok.values())),
            Target("<=", 0),
        ),
        Row(
            "Gateway gap fills from Postgres per run (no baseline)",
            "",
            *both(lambda r: r.gap_fills),
        ),
        Row(
            "…events it delivered from Postgres (those reads and its position check)",
            "",
            *both(lambda r: r.filled),
        ),
        Row("CPU per transition, all stack processes", "ms", *cpu()),
        Row("CPU per transition, api", "ms", *cpu("api")),
        Row("CPU per transition, gateway", "ms", *cpu("gateway")),
        Row("CPU per transition, Temporal server", "ms", *cpu("temporal")),
        Row("CPU per transition, worker", "ms", *cpu("worker")),
    ]
    subject = pairs.subject
    expected = [run.check.expected for run in subject]
    notes = [
        f"{plan.repeats} runs (medians shown), each {plan.desk_live_requests} exchange requests"
        f" taken create → claim → processing → completed by one operator through the api:"
        f" {plan.desk_live_requests * len(STEPS)} transitions due {1 / plan.desk_live_rate:g} s"
        f" apart (open loop), a request's next step due {LAG_REQUESTS} creates after its"
        f" previous one ({(len(STEPS) * LAG_REQUESTS + 1) / plan.desk_live_rate:g} s), so about"
        f" {LAG_REQUESTS * (len(STEPS) - 1)} requests are open at once. A step waits for its"
        " request's previous answer; latency runs from its due time, so that wait counts.",
        f"Watchers: {DESK_CLIENTS} desk clients (resuming from the desk's head) and each"
        " request's own client (its token asked for once the create is answered, then from seq"
        " 0), `websockets` in the benchmark process, through the gateway (its own process)."
        " A create is two events (created, pending) on each topic; the request's client gets"
        " those by replay, so they are timed on the desk clients only. Every later transition"
        " is timed on every client.",
        "Checked against Postgres (`feed_events`): every client's events of its topic since it"
        f" connected, once each, in seq order (events per run, all clients: "
        f"{', '.join(f'{n:,}' for n in expected)}).",
        "Baseline: the same schedule, each transition a PUBLISH pipeline (desk and request"
        " channel, events of the same shape and size) from this process to the same Redis, and"
        f" the same number of subscribers ({DESK_CLIENTS} on one desk channel, one per request"
        " subscribed once its creation was published), each its own redis-py connection in"
        " this process: so the ratio is what the api's transaction, its read-back of the events"
        " and the gateway hop add to a bare PUBLISH → subscriber.",
        "API answer → client p50 (runs): "
        + ", ".join(f"{run.after_answer.p50_ms:.2f}" for run in subject)
        + " ms; baseline PUBLISH reply → subscriber: "
        + ", ".join(f"{run.after_answer.p50_ms:.2f}" for run in pairs.baseline)
        + " ms. Negative: the api publishes right after its commit, before it writes the answer,"
        " so a client usually has the event before the operator has the answer.",
        "Each create starts the request's workflow and every later transition tells it (after"
        " the commit, in the background): the Temporal server's and the worker's CPU is that.",
    ]
    notes.append(
        "Due → API answer p99 by step, ms (create / claim / processing / completed), per run: "
        + "; ".join(
            " / ".join(f"{run.answered_by_step[name].p99_ms:.0f}" for name in STEPS)
            for run in subject
        )
        + "."
    )
    replayed = sum(run.replayed for run in subject)
    closed = sum(run.closed for run in subject)
    failures = sum((run.not_ok for run in subject), Counter[str]())
    if replayed or closed or failures:
        notes.append(
            f"⚠ Over all runs: {replayed} timed events reached a request's client by replay"
            f" (it connected after them), {closed} clients closed by the gateway, transitions"
            " not made: "
            + (", ".join(f"{why}: {n}" for why, n in failures.most_common()) or "none")
            + "."
        )
    for side, runs in (("Switchboard", subject), ("Baseline", pairs.baseline)):
        checks = [run.check for run in runs]
        if any(c.missed or c.repeated or c.out_of_order or c.mismatched for c in checks):
            notes.append(
                f"{side}, per run (missed / repeated / out of order / not its topic's): "
                + "; ".join(
                    f"{c.missed} / {c.repeated} / {c.out_of_order} / {c.mismatched}" for c in checks
                )
                + "."
                + (
                    " The baseline keeps no order: two PUBLISH pipelines in flight on separate"
                    " connections reach Redis either way round (the api's publishes can too;"
                    " the gateway puts them back in seq order)."
                    if side == "Baseline"
                    else ""
                )
            )
    return Section(
        title="Exchange desk live — transition to every watching client",
        baseline=(
            "a bare Redis PUBLISH → subscriber round trip through the same Redis, same schedule"
            " and number of subscribers"
        ),
        rows=rows,
        notes=notes,
    )
