// Switchboard exchange desk: the live queue of pending exchange requests with Claim buttons, the
// operator's own requests with their next steps, each request's audited timeline, and the
// desk's aggregates. Live from the gateway's desk feed (resume by seq, see live.js).
// Plain ES module, no build step.

import { $, Feed, el, money, operatorApi, reconcile, showConnState } from "./live.js";

const config = JSON.parse(document.getElementById("sb-config").textContent);
const STATS_EVERY_MS = 5000;
const STATS_AFTER_EVENT_MS = 1000;  // the desk moved: read the aggregates again, at most this often
const ACTIVITY_SHOWN = 50;
const NEXT_STEPS = {         // what the assignee may do in each status (core/exchange.py)
  assigned: [["processing", "Start processing"], ["release", "Release"]],
  processing: [["completed", "Complete"], ["failed", "Fail"]],
};

const state = {
  apiKey: sessionStorage.getItem("sb.apiKey") || config.devApiKey || "",
  me: null,              // {actor, can_work, admin}: who this key works the desk as
  requests: new Map(),   // id -> every request on the desk (pending, or mine), as last seen
  versions: new Map(),   // id -> the latest version seen of any request, on the desk or not
  touched: null,         // while the queue is read: what the feed moved meanwhile (it outranks the read)
  activity: [],          // newest first
  feed: null,
  connState: "idle",
  paintQueued: false,
  timeline: null,        // {id, steps, request} of the open drawer
  statsTimer: null,
  statsSoon: null,
};
window.switchboard = {   // for tests and the curious: read-only views of the page state
  connState: () => state.connState,
  lastSeq: () => state.feed?.lastSeq ?? 0,
  me: () => state.me?.actor,
  queue: () => queue().map((r) => r.id),
  mine: () => mine().map((r) => r.id),
};

const api = operatorApi(() => state.apiKey);
const enc = encodeURIComponent;
const byAge = (a, b) => a.updated_at.localeCompare(b.updated_at) || a.id.localeCompare(b.id);
const isMine = (r) => r.assignee === state.me?.actor && (r.status === "assigned" || r.status === "processing");
const onDesk = (r) => r.status === "pending" || isMine(r);
const queue = () => [...state.requests.values()].filter((r) => r.status === "pending").sort(byAge);
const mine = () => [...state.requests.values()].filter(isMine).sort(byAge);

function setConn(kind, text) {
  showConnState(state, kind, text);
}

function notice(kind, text, attrs = {}) {
  const line = $("desk-notice");
  line.className = `notice ${kind}`;
  for (const name of line.getAttributeNames()) if (name.startsWith("data-")) line.removeAttribute(name);
  for (const [name, value] of Object.entries(attrs)) line.setAttribute(`data-${name}`, value);
  line.textContent = text;
}

// -- requests: one map, merged by version ----------------------------------------------------

function merge(request, into = state.requests) {
  // A request's version goes up by one per transition: the higher one is the truth, whichever
  // way it came (the feed, a read, an action's answer). One that leaves the desk (claimed by
  // someone else, finished) is dropped; its version stays, so a late answer cannot bring it back.
  if (into !== state.requests) {
    if (!(into.get(request.id)?.version >= request.version)) into.set(request.id, request);
    return;
  }
  if (state.versions.get(request.id) >= request.version) return;
  state.versions.set(request.id, request.version);
  if (onDesk(request)) into.set(request.id, request);
  else into.delete(request.id);
}

async function loadRequests() {
  // After the feed's welcome: whatever commits later arrives on the feed, and what it moved
  // while this read was under way (touched) outranks the read.
  state.touched = new Map();
  try {
    const who = enc(state.me.actor);
    const lists = await Promise.all([
      api("/v1/exchange-requests?status=pending&limit=500"),
      api(`/v1/exchange-requests?status=assigned&assignee=${who}&limit=500`),
      api(`/v1/exchange-requests?status=processing&assignee=${who}&limit=500`),
    ]);
    const read = new Map();
    for (const { items } of lists) for (const request of items) merge(request, read);
    for (const request of state.touched.values()) merge(request, read);
    state.requests = new Map();
    state.versions = new Map();
    for (const request of read.values()) merge(request);
  } finally {
    state.touched = null;
  }
  paintSoon();
}

function onWelcome(message, resynced) {
  if (!resynced) return;  // resumed gaplessly: the map is exact
  loadRequests().catch((error) => notice("bad", `Could not read the queue: ${error.message}`));
}

function onEvent(event) {
  const { request, from, to, actor, reason } = event.data;
  merge(request);
  if (state.touched) merge(request, state.touched);
  state.activity.unshift({ id: request.id, event: event.event_id, version: request.version, from, to, actor, reason, at: event.occurred_at, assignee: request.assignee });
  state.activity.length = Math.min(state.activity.length, ACTIVITY_SHOWN);
  if (state.timeline?.id === request.id) extendTimeline(request, { from_state: from, to_state: to, actor, reason, at: event.occurred_at });
  paintSoon();
  state.statsSoon ??= setTimeout(() => { state.statsSoon = null; refreshStats(); }, STATS_AFTER_EVENT_MS);
}

// -- painting: at most once per animation frame -------------------------------------------

function paintSoon() {
  if (state.paintQueued) return;
  state.paintQueued = true;
  requestAnimationFrame(paint);
}

function paint() {
  state.paintQueued = false;
  const version = (r) => `${r.id}.v${r.version}`;
  const pending = queue();
  reconcile($("queue"), pending, version, queueRow);
  $("queue-empty").hidden = pending.length > 0;
  $("queue-count").textContent = pending.length ? `· ${pending.length}` : "";
  const own = mine();
  reconcile($("mine"), own, version, mineRow);
  $("mine-empty").hidden = own.length > 0;
  $("mine-count").textContent = own.length ? `· ${own.length}` : "";
  reconcile($("activity"), state.activity, (t) => t.event, activityItem);
}

function requestCell(r) {
  return el("td", { class: "ref", title: r.id },
    el("button", { class: "ghost", onclick: () => showTimeline(r.id), "aria-label": `Timeline of ${r.id}` }, r.id.slice(0, 12)),
    ` ${r.merchant_id} · ${r.customer_id}`);
}

function queueRow(r) {
  const claim = el("button", { class: "ghost", "data-action": "claim", onclick: (e) => claimRequest(r.id, e.target),
    ...(state.me?.can_work ? {} : { disabled: "", title: "this API key lacks the replay scope" }) }, "Claim");
  return el("tr", { "data-request": r.id, "data-status": r.status },
    requestCell(r), el("td", { class: "num" }, money(r.from_amount, r.from_currency)), el("td", {}, r.to_currency),
    el("td", {}, new Date(r.updated_at).toLocaleTimeString()), el("td", { class: "num" }, claim));
}

function mineRow(r) {
  const actions = (NEXT_STEPS[r.status] || []).map(([step, label]) =>
    el("button", { class: "ghost", "data-action": step, onclick: (e) => work(r.id, step, e.target) }, label));
  return el("tr", { "data-request": r.id, "data-status": r.status, "data-assignee": r.assignee },
    requestCell(r), el("td", { class: "num" }, money(r.from_amount, r.from_currency)), el("td", {}, r.to_currency),
    el("td", {}, el("span", { class: `badge exr-${r.status}` }, r.status)),
    el("td", { class: "num group-actions" }, ...actions));
}

function moveText(t) {
  if (t.to === "assigned") return t.from === "pending" ? `claimed by ${t.assignee}` : `assigned to ${t.assignee}`;
  return t.from ? `${t.from} → ${t.to} by ${t.actor}` : `${t.to} by ${t.actor}`;
}

function activityItem(t) {
  return el("li", { "data-event": t.event, "data-request": t.id, "data-to": t.to },
    el("time", {}, new Date(t.at).toLocaleTimeString()), " ",
    el("button", { class: "ghost", onclick: () => showTimeline(t.id) }, t.id.slice(0, 12)), ` ${moveText(t)}`,
    t.reason ? el("span", { class: "muted" }, ` · ${t.reason}`) : "");
}

// -- actions -------------------------------------------------------------------------------

async function claimRequest(id, button) {
  button.disabled = true;
  button.textContent = "claiming…";
  try {
    merge(await api(`/v1/exchange-requests/${enc(id)}/claim`, { method: "POST" }));
    notice("ok", `You claimed ${id}.`, { request: id, outcome: "won" });
  } catch (error) {
    // 409: someone claimed it first; the problem names them.
    if (error.status === 409) notice("info", `${id}: ${error.detail}`, { request: id, outcome: "lost", assignee: error.problem.assignee || "" });
    else notice("bad", `Claim failed: ${error.message}`, { request: id, outcome: "error" });
    button.disabled = false;
    button.textContent = "Claim";
  }
  paintSoon();
}

async function work(id, step, button) {
  for (const b of button.parentElement.querySelectorAll("button")) b.disabled = true;
  const [path, body] = step === "release" ? ["release", {}] : ["advance", { to: step }];
  try {
    merge(await api(`/v1/exchange-requests/${enc(id)}/${path}`, { method: "POST", body: JSON.stringify(body) }));
    notice("ok", `${id}: ${step === "release" ? "released to the queue" : step}.`, { request: id, outcome: step });
  } catch (error) {
    notice(error.status === 409 ? "info" : "bad", `${id}: ${error.detail}`, { request: id, outcome: "error" });
    for (const b of button.parentElement.querySelectorAll("button")) b.disabled = false;
  }
  paintSoon();
}

// -- timeline drawer -----------------------------------------------------------------------

async function showTimeline(id) {
  $("drawer").hidden = false;
  $("drawer-title").textContent = `Timeline · ${id}`;
  $("drawer-body").replaceChildren(el("p", { class: "muted" }, "Loading…"));
  state.timeline = { id, steps: [], request: null };
  try {
    const detail = await api(`/v1/exchange-requests/${enc(id)}`);
    if (state.timeline?.id !== id) return;
    Object.assign(state.timeline, { steps: detail.timeline, request: detail });
    paintTimeline();
  } catch (error) {
    $("drawer-body").replaceChildren(el("p", { class: "error" }, error.message));
  }
}

function extendTimeline(request, step) {
  // The timeline holds versions 1..n in order: the next one extends it; a later one means the
  // drawer missed some (it was loading), so read it again.
  const steps = state.timeline.steps;
  if (request.version === steps.length + 1) { steps.push(step); state.timeline.request = request; paintTimeline(); }
  else if (request.version > steps.length + 1) showTimeline(request.id);
}

function paintTimeline() {
  const { steps, request } = state.timeline;
  $("drawer-body").replaceChildren(
    request ? el("p", { class: "muted small" }, `${money(request.from_amount, request.from_currency)} → ${request.to_currency}`,
      ` · ${request.status}${request.assignee ? ` · ${request.assignee}` : ""}`) : "",
    el("ol", { class: "steps timeline", id: "timeline", "aria-live": "polite" }, ...steps.map((t) =>
      el("li", { "data-to": t.to_state },
        el("strong", {}, t.from_state ? `${t.from_state} → ${t.to_state}` : t.to_state),
        el("time", {}, new Date(t.at).toLocaleString()), `${t.actor}${t.reason ? ` · ${t.reason}` : ""}`))));
}

// -- aggregates (read replica) -------------------------------------------------------------

async function refreshStats() {
  try {
    const stats = await api("/v1/desk/stats");
    const avg = stats.handling.average_seconds;
    $("desk-kpis").replaceChildren(
      kpi("Pending", stats.queue.pending, stats.oldest_pending_since ? `oldest since ${new Date(stats.oldest_pending_since).toLocaleTimeString()}` : "queue empty"),
      kpi("Assigned", stats.queue.assigned, `${stats.queue.processing} processing`),
      kpi("Completed", stats.handling.completed, avg === null ? "no handling time yet" : `${avg.toFixed(1)} s on average`),
      ...stats.volumes.map((v) => kpi(`Volume ${v.currency}`, money(v.completed_amount, v.currency), `${v.completed} completed · ${v.created} created`)));
    // 0 means caught up (or the primary); otherwise the lag is an upper bound, or unknown.
    const lagging = stats.replica_lag_seconds !== 0;
    const freshness = $("desk-freshness");
    freshness.hidden = !lagging;
    freshness.dataset.lag = stats.replica_lag_seconds ?? "";
    freshness.textContent = stats.as_of === null
      ? "Aggregates: the replica cannot tell yet how fresh its data is."
      : `Aggregates: data as of ${new Date(stats.as_of).toLocaleTimeString()} (at most ${Math.ceil(stats.replica_lag_seconds)} s behind); the queue itself is live.`;
  } catch (error) {
    $("desk-kpis").replaceChildren(kpi("Aggregates", "unavailable", error.message));
  }
}

function kpi(label, value, sub = "") {
  return el("div", { class: "kpi" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value),
    el("div", { class: "sub" }, sub));
}

// -- sign-in -------------------------------------------------------------------------------

function signOut(message) {
  state.feed?.stop();
  clearInterval(state.statsTimer);
  setConn("error", "signed out");
  $("signin").hidden = false;
  $("desk-view").hidden = true;
  $("signin-error").textContent = message || "";
}

async function signIn(event) {
  event?.preventDefault();
  state.apiKey = $("api-key").value.trim();
  try {
    state.me = await api("/v1/desk/operator");
    state.feed?.stop();
    state.feed = new Feed({
      api,
      tokenPath: "/v1/exchange-desk/dashboard-tokens",
      resync: async () => null,  // start from the feed's head, then read the queue (onWelcome)
      onWelcome,
      onEvent,
      onState: setConn,
      onRefused: (error) => signOut(error.message),
    });
    await state.feed.start();
  } catch (error) {
    return signOut(error.message);
  }
  sessionStorage.setItem("sb.apiKey", state.apiKey);
  $("operator-name").textContent = state.me.actor;
  $("signin").hidden = true;
  $("desk-view").hidden = false;
  refreshStats();
  clearInterval(state.statsTimer);
  state.statsTimer = setInterval(refreshStats, STATS_EVERY_MS);
}

$("signin-form").addEventListener("submit", signIn);
$("drawer-close").addEventListener("click", () => { $("drawer").hidden = true; state.timeline = null; });
$("api-key").value = state.apiKey;
if (state.apiKey) signIn();
