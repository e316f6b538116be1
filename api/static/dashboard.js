// Switchboard live dashboard: a merchant's events over the gateway WebSocket, gapless across
// reconnects (resume by seq), its escrows moved live by their events (and released or refunded
// from the page with an admin key), plus an operator view: the
// On-call panel (alert groups, their timelines, acknowledge / resolve / silence), dead letters
// and backlog.
// Plain ES module, no build step. Protocol: gateway/protocol.py.

import { $, Feed, el, money, operatorApi, reconcile, showConnState } from "./live.js";

const config = JSON.parse(document.getElementById("sb-config").textContent);
const RING_SIZE = 500;

const state = {
  apiKey: sessionStorage.getItem("sb.apiKey") || config.devApiKey || "",
  merchant: new URLSearchParams(location.search).get("merchant") || sessionStorage.getItem("sb.merchant") || "",
  ring: [],          // newest last; at most RING_SIZE events
  totals: new Map(), // currency -> {volume, refunded, succeeded, failed}
  balances: new Map(),
  received: 0,
  feed: null,
  connState: "idle",
  queue: [],         // events waiting for the next animation frame
  syncs: 0,          // snapshots loaded (the first, then one per 3010)
  admin: false,      // the API key has the admin scope: it may release and refund escrows
};
window.switchboard = {  // for tests and the curious: read-only views of the page state
  seqs: () => state.ring.map((e) => e.seq),
  merchants: () => [...new Set(state.ring.map((e) => e.merchant_id))],
  lastSeq: () => state.feed?.lastSeq ?? 0,
  connState: () => state.connState,
  syncs: () => state.syncs,
};

const api = operatorApi(() => state.apiKey);

function setConn(kind, text) {
  showConnState(state, kind, text);
}

function onEvent(event) {
  if (event.merchant_id !== state.merchant) return;  // the gateway sends one merchant's feed
  accept(event, true);
}

// -- merchant view -------------------------------------------------------------------------

function totalsFor(currency) {
  if (!state.totals.has(currency)) state.totals.set(currency, { volume: 0, refunded: 0, succeeded: 0, failed: 0 });
  return state.totals.get(currency);
}

function accept(event, live) {
  const data = event.data || {};
  if (live) {
    const t = data.currency ? totalsFor(data.currency) : null;
    if (event.type === "payment.succeeded" && t) { t.volume += data.amount || 0; t.succeeded += 1; }
    else if (event.type === "payment.failed" && t) t.failed += 1;
    else if (event.type === "refund.succeeded" && t) t.refunded += data.amount || 0;
    else if (event.type === "balance.updated" && data.currency) state.balances.set(balanceKey(data), data);
  }
  if (event.type.startsWith("escrow.")) escrowEvent(event, live);
  state.received += 1;
  state.ring.push(event);
  if (state.ring.length > RING_SIZE) state.ring.splice(0, state.ring.length - RING_SIZE);
  state.queue.push(event);
  if (state.queue.length === 1) requestAnimationFrame(flush);
}

function flush() {
  // One DOM update per frame however fast events arrive; the table never exceeds the ring.
  const batch = state.queue.splice(0);
  const body = $("events");
  const fragment = document.createDocumentFragment();
  for (const event of batch.slice(-RING_SIZE).reverse()) fragment.append(row(event));
  body.prepend(fragment);
  while (body.rows.length > RING_SIZE) body.deleteRow(-1);
  $("empty").hidden = body.rows.length > 0;
  $("last-seq").textContent = state.feed?.lastSeq ?? "–";
  $("event-count").textContent = `· ${state.received.toLocaleString()} received`;
  renderKpis();
}

function row(event) {
  const data = event.data || {};
  const amount = data.amount !== undefined && data.currency ? money(data.amount, data.currency) : "";
  const reference = data.refund_id || data.payment_id || (data.currency ? `balance ${data.currency}` : "");
  return el("tr", { class: "fresh", "data-seq": event.seq, "data-merchant": event.merchant_id },
    el("td", { class: "seq" }, event.seq),
    el("td", {}, new Date(event.occurred_at).toLocaleTimeString()),
    el("td", {}, el("span", { class: `badge ${event.type.replace(".", "-")}` }, event.type)),
    el("td", { class: "num" }, amount),
    el("td", { class: "ref", title: event.event_id }, reference),
    el("td", { class: "num" },
      el("button", { class: "ghost", onclick: () => showTrace(event.event_id) }, "trace"), " ",
      el("button", { class: "ghost", onclick: () => openWorkflow(event.event_id) }, "workflow")));
}

function kpi(label, value, sub = "") {
  return el("div", { class: "kpi" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value),
    el("div", { class: "sub" }, sub));
}

// Each partner of the merchant reports its own balance per currency.
function balanceKey(b) { return `${b.partner_id} ${b.currency}`; }

function renderKpis() {
  const cards = [];
  for (const [currency, t] of [...state.totals].sort()) {
    cards.push(kpi(`Volume ${currency}`, money(t.volume, currency), `${t.succeeded.toLocaleString()} payments`));
    cards.push(kpi(`Refunded ${currency}`, money(t.refunded, currency), `${t.failed.toLocaleString()} failed payments`));
  }
  for (const [, b] of [...state.balances].sort()) {
    const where = state.balances.size > 1 ? ` · ${b.partner_id}` : "";
    cards.push(kpi(`Balance ${b.currency}${where}`, money(b.available, b.currency), `${money(b.pending, b.currency)} pending`));
  }
  if (!cards.length) cards.push(kpi("Volume", "–", "no payments yet"));
  $("kpis").replaceChildren(...cards);
}

async function loadSnapshot() {
  // Replaces everything the page holds with the merchant's state as of the sync's head_seq,
  // which it returns: the feed resumes from there.
  const snapshot = await api(`/v1/merchants/${encodeURIComponent(state.merchant)}/sync`);
  state.totals.clear();
  state.balances.clear();
  state.ring = [];
  state.queue = [];
  $("events").replaceChildren();
  for (const t of snapshot.totals) {
    state.totals.set(t.currency, { volume: t.volume, refunded: t.refunded, succeeded: t.payments_succeeded, failed: t.payments_failed });
  }
  for (const b of snapshot.balances) state.balances.set(balanceKey(b), b);
  for (const event of snapshot.events) accept(event, false);
  state.syncs += 1;
  renderKpis();
  $("empty").hidden = snapshot.events.length > 0;
  await loadEscrows();  // after head_seq: whatever commits later arrives on the feed
  return snapshot.head_seq;  // totals are exactly the effect of events up to here
}

// -- escrows view --------------------------------------------------------------------------
// The merchant's newest escrows, read through the api after each snapshot, then moved by their
// escrow.* events. Every transition is known by its event id ("{escrow}:{version}"), so one read
// from the api, from sync or from the feed is applied once, in whichever order they arrive.

const ESCROWS_SHOWN = 20;
const ESCROW_ACTIONS = {   // what an admin may do with an escrow in each status (api/escrows.py)
  funded: [["release", "Release"], ["refund", "Refund"]],
  release_failed: [["release", "Retry release"], ["refund", "Refund"]],
};
const escrows = {
  byId: new Map(),     // escrow id -> {id, amount, currency, reference, status, createdAt, sources, beneficiary, steps}
  details: new Set(),  // escrow ids whose sources and beneficiary were asked for
  busy: new Set(),     // escrow ids with a release or refund from this page under way
  queued: false,
};
Object.assign(window.switchboard, {
  escrows: () => shownEscrows().map((e) => ({ id: e.id, status: e.status, transitions: steps(e).map((t) => t.to) })),
});

const version = (eventId) => Number(String(eventId).split(":").pop());
const steps = (e) => [...e.steps.values()].sort((a, b) => a.version - b.version);

function escrowEntry(id, fields) {
  let e = escrows.byId.get(id);
  if (!e) escrows.byId.set(id, (e = { id, sources: null, beneficiary: null, steps: new Map(), createdAt: "" }));
  Object.assign(e, fields);
  return e;
}

function addStep(e, step) {
  if (e.steps.has(step.eventId)) return false;
  e.steps.set(step.eventId, step);
  const last = steps(e).at(-1);
  e.status = last.to;
  if (step.to === "created") e.createdAt = step.at;
  return true;
}

function mergeEscrow(detail) {
  const e = escrowEntry(detail.id, {
    amount: detail.amount, currency: detail.currency, reference: detail.reference,
    sources: detail.sources, beneficiary: detail.beneficiary, createdAt: detail.created_at,
  });
  for (const t of detail.transitions) {
    if (t.event_id) addStep(e, { eventId: t.event_id, version: version(t.event_id), from: t.from_status, to: t.to_status, actor: t.actor, reason: t.reason, at: t.at });
  }
  if (!e.status) e.status = detail.status;
  escrows.details.add(detail.id);
}

function escrowEvent(event, live) {
  const data = event.data || {};
  const e = escrowEntry(data.escrow_id, { amount: data.amount, currency: data.currency, reference: data.reference });
  const added = addStep(e, { eventId: event.event_id, version: version(event.event_id), from: data.from_status, to: data.status, actor: data.actor, reason: data.reason, at: event.occurred_at });
  if (added && live) $("escrow-live").textContent = `Escrow ${data.reference} (${data.escrow_id}) is ${data.status}.`;
  paintEscrowsSoon();
}

async function loadEscrows() {
  try {
    const { escrows: list } = await api(`/v1/escrows?merchant_id=${encodeURIComponent(state.merchant)}&limit=${ESCROWS_SHOWN}`);
    await Promise.all(list.map((summary) => escrowDetails(summary.id)));
    $("escrow-error").textContent = "";
  } catch (error) {
    $("escrow-error").textContent = `· not loaded: ${error.message}`;
  }
  paintEscrowsSoon();
}

async function escrowDetails(id) {
  // Sources and beneficiary never change: read once per escrow (then its events move it).
  escrows.details.add(id);
  try { mergeEscrow(await api(`/v1/escrows/${encodeURIComponent(id)}`)); }
  catch (error) { escrows.details.delete(id); throw error; }
  paintEscrowsSoon();
}

function shownEscrows() {
  return [...escrows.byId.values()].sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.id.localeCompare(a.id))
    .slice(0, ESCROWS_SHOWN);
}

function paintEscrowsSoon() {
  // At most one repaint per frame, as for the transactions table.
  if (escrows.queued) return;
  escrows.queued = true;
  requestAnimationFrame(paintEscrows);
}

function paintEscrows() {
  escrows.queued = false;
  const shown = shownEscrows();
  for (const e of shown) if (!escrows.details.has(e.id)) escrowDetails(e.id).catch(() => {});
  // A row is drawn again only when its escrow moved: the focus on its buttons survives the rest.
  const key = (e) => [e.id, e.status, e.steps.size, Boolean(e.sources), escrows.busy.has(e.id), state.admin].join("|");
  reconcile($("escrows"), shown, key, escrowRow);
  $("escrows-empty").hidden = shown.length > 0;
  $("escrow-count").textContent = shown.length ? `· ${shown.length} shown` : "";
}

function escrowRow(e) {
  const beneficiary = e.beneficiary ? (e.beneficiary.wallet_id ? `wallet ${e.beneficiary.wallet_id}` : `account ${e.beneficiary.account}`) : "…";
  return el("tr", { "data-escrow": e.id, "data-status": e.status },
    el("td", { class: "ref", title: e.id }, el("div", {}, e.reference), el("code", {}, e.id)),
    el("td", { class: "num" }, money(e.amount, e.currency)),
    el("td", {}, e.sources
      ? el("ul", { class: "plain" }, ...e.sources.map((s) => el("li", { "data-wallet": s.wallet_id }, `${s.wallet_id} · ${money(s.amount, e.currency)}`)))
      : "…"),
    el("td", { class: "ref" }, beneficiary),
    el("td", {}, el("span", { class: `badge escrow-${e.status}`, "data-role": "status" }, e.status)),
    el("td", {}, el("ol", { class: "transitions" }, ...steps(e).map((t) => el("li", {
      "data-to": t.to, title: `${t.actor}${t.reason ? ` · ${t.reason}` : ""} · ${new Date(t.at).toLocaleString()}` }, t.to)))),
    el("td", { class: "num" }, escrowActions(e)));
}

function escrowActions(e) {
  // A held release is everyone's concern (shown, disabled without admin); a funded escrow's
  // buttons only to a key that may use them. The api is the judge either way (403, 409).
  const actions = ESCROW_ACTIONS[e.status];
  if (!actions || (e.status === "funded" && !state.admin)) return "";
  const why = !state.admin ? "needs an API key with the admin scope" : escrows.busy.has(e.id) ? "under way" : "";
  return el("div", { class: "group-actions" }, ...actions.map(([action, label]) => el("button", {
    class: "ghost", "data-action": action, "aria-label": `${label} ${e.reference}`,
    onclick: () => escrowAction(e, action), ...(why ? { disabled: "", title: why } : {}) }, label)));
}

function idempotencyKey() {
  // Fresh per click: the api replays a key's first answer, so a new decision needs a new key.
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function escrowNotice(kind, text, attrs) {
  const line = $("escrow-notice");
  line.className = `notice ${kind}`;
  line.dataset.escrow = attrs.escrow;
  line.dataset.outcome = attrs.outcome;
  line.textContent = text;
}

async function escrowAction(e, action) {
  escrows.busy.add(e.id);
  escrowNotice("info", `${e.reference}: ${action === "release" ? "releasing" : "refunding"}…`, { escrow: e.id, outcome: "pending" });
  paintEscrowsSoon();
  try {
    const escrow = await api(`/v1/escrows/${encodeURIComponent(e.id)}/${action}`,
      { method: "POST", body: "{}", headers: { "Idempotency-Key": idempotencyKey() } });
    mergeEscrow(escrow);
    escrowNotice(escrow.status === "release_failed" ? "bad" : "ok", `Escrow ${e.reference} (${e.id}) is ${escrow.status}.`,
      { escrow: e.id, outcome: escrow.status });
  } catch (error) {
    // 409: the escrow moved on meanwhile (or another release or refund is under way).
    escrowNotice("bad", `${e.reference}: ${error.detail}`, { escrow: e.id, outcome: `refused-${error.status}` });
    escrowDetails(e.id).catch(() => {});  // show where it is now, even if the feed missed it
  } finally {
    escrows.busy.delete(e.id);
    paintEscrowsSoon();
  }
}

async function startMerchant() {
  state.feed?.stop();
  state.feed = new Feed({
    api,
    tokenPath: `/v1/merchants/${encodeURIComponent(state.merchant)}/dashboard-tokens`,
    resync: loadSnapshot,
    onEvent,
    onState: setConn,
    onRefused: (error) => signOut(error.message),
  });
  await state.feed.start();
  $("merchant-name").textContent = state.merchant;
}

// -- trace and workflow links --------------------------------------------------------------

async function showTrace(eventId) {
  const drawer = $("drawer");
  drawer.hidden = false;
  $("drawer-body").replaceChildren(el("p", { class: "muted" }, "Loading…"));
  try {
    const trace = await api(`/v1/webhooks/${encodeURIComponent(eventId)}`);
    const steps = el("ol", { class: "steps" }, ...trace.steps.map((s) =>
      el("li", {}, el("strong", {}, s.step), el("time", {}, new Date(s.at).toISOString()), s.detail || "")));
    const links = trace.workflow_url
      ? el("p", {}, el("a", { class: "link", href: trace.workflow_url, target: "_blank", rel: "noopener" }, "Open in Temporal Web UI ↗"))
      : el("p", { class: "muted" }, "No workflow yet.");
    $("drawer-body").replaceChildren(
      el("p", {}, el("code", {}, trace.event_id), " · ", trace.type, " · ", el("span", { class: "muted" }, trace.status)),
      links, steps);
  } catch (error) {
    $("drawer-body").replaceChildren(el("p", { class: "error" }, error.message));
  }
}

async function openWorkflow(eventId) {
  // Opened before the await so the browser counts it as the click's popup; "noopener" would make
  // window.open return null, so the opener is cut by hand instead.
  const tab = window.open("about:blank", "_blank");
  if (tab) tab.opener = null;
  try {
    const trace = await api(`/v1/webhooks/${encodeURIComponent(eventId)}`);
    const search = `${config.temporalUiUrl}/namespaces/${config.temporalNamespace}/workflows`;
    const target = trace.workflow_url || search;
    if (tab) tab.location = target; else window.open(target, "_blank", "noopener");
  } catch (error) {
    if (tab) tab.close();
    showTrace(eventId);
  }
}

// -- operator view -------------------------------------------------------------------------

let operatorTimer = null;
let operatorQueue = Promise.resolve();
let operatorPending = 0;

function refreshOperator() {
  // One refresh at a time, so an older answer never paints over a newer one; a call while one
  // runs and another waits is already covered by the waiting one.
  if (operatorPending > 1) return operatorQueue;
  operatorPending += 1;
  operatorQueue = operatorQueue.then(loadOperator).finally(() => { operatorPending -= 1; });
  return operatorQueue;
}

async function loadOperator() {
  let alerts = null;
  try {
    const [stats, open, dead] = await Promise.all([api("/v1/stats"), api("/v1/alerts?limit=500"), api("/v1/dead-letters?limit=50")]);
    alerts = open;
    $("ops-kpis").replaceChildren(
      kpi("Inbox backlog", stats.inbox_depth.toLocaleString(), "recorded, workflow not started"),
      kpi("In flight", (stats.by_status.started || 0).toLocaleString(), `${(stats.by_status.waiting || 0)} waiting for a payment`),
      kpi("Processed", (stats.by_status.processed || 0).toLocaleString(), `${(stats.by_status.ignored || 0)} ignored`),
      kpi("Open alerts", stats.open_alerts.toLocaleString(), `${stats.dead_letters} dead letters`));
    $("dead-letters").replaceChildren(...dead.map((d) => el("tr", {},
      el("td", { class: "ref", title: d.event_id }, el("button", { class: "ghost", onclick: () => showTrace(d.event_id) }, d.event_id)),
      el("td", {}, d.reason), el("td", {}, new Date(d.created_at).toLocaleString()),
      el("td", { class: "num" }, el("button", { class: "ghost", onclick: (e) => replay(d.event_id, e.target) }, "replay")))));
    $("dead-empty").hidden = dead.length > 0;
  } catch (error) {
    $("ops-kpis").replaceChildren(kpi("Operator API", "unavailable", error.message));
  }
  try {
    if (alerts === null) throw new Error("the alerts could not be read");
    await Promise.all([refreshOncall(alerts), refreshSilences()]);
    $("oncall-error").textContent = "";
  } catch (error) {
    $("oncall-error").textContent = `· not refreshed: ${error.message}`;  // the panel keeps what it showed
  }
  oncall.refreshes += 1;
}

async function replay(eventId, button) {
  button.disabled = true;
  button.textContent = "replaying…";
  try { await api(`/v1/dead-letters/${encodeURIComponent(eventId)}/replay`, { method: "POST" }); button.textContent = "replayed"; }
  catch (error) { button.textContent = "failed"; button.title = error.message; }
  refreshOperator();
}

// -- on-call panel -------------------------------------------------------------------------
// Alert groups (one escalation workflow each) with their alerts and timeline, and the actions
// on them. Acknowledge and resolve are updates of the escalation: a 409 means someone (an
// operator, Slack's button, the monitor seeing the condition clear) got there first.

const MAX_GROUPS = 25;      // unresolved groups read per refresh
const RESOLVED_SHOWN = 5;   // recently resolved groups left on the panel
const SEVERITY_RANK = { critical: 0, error: 1, warning: 2, info: 3 };
const oncall = {
  shown: [],           // the groups on the panel (the API's), in order
  routing: 0,          // open alerts the worker has not put in a group yet
  expanded: new Map(), // group id -> details open or closed, as the operator left them
  notices: new Map(),  // group id -> the answer to the last action on it
  focus: new URLSearchParams(location.search).get("alert_group"),  // Slack's "On-call view" link
  focused: false,
  painted: "",
  refreshes: 0,
  silences: [],
};
Object.assign(window.switchboard, {
  oncallGroups: () => oncall.shown.map((g) => ({
    id: g.id, status: g.status, acknowledged_by: g.acknowledged_by, resolved_by: g.resolved_by, pages: g.pages,
    timeline: g.timeline.map((t) => (t.channel ? `${t.action} ${t.channel}` : t.action)),
  })),
  oncallRefreshes: () => oncall.refreshes,
  silences: () => oncall.silences.map((s) => s.id),
});

const groupIds = (alerts) => [...new Map(alerts.filter((a) => a.group_id).map((a) => [a.group_id, a.id]))];

async function refreshOncall(openAlerts) {
  const recent = await api(`/v1/alerts?status=resolved&limit=${RESOLVED_SHOWN * 20}`);
  const unresolved = groupIds(openAlerts).slice(0, MAX_GROUPS);
  const known = new Set(unresolved.map(([id]) => id));
  const resolved = groupIds(recent).filter(([id]) => !known.has(id)).slice(0, RESOLVED_SHOWN);
  // The API shows a group by any of its alerts' ids. Resolved groups are read again too: the
  // escalation adds to their timeline after the resolution (Slack and PagerDuty told).
  const groups = await Promise.all([...unresolved, ...resolved].map(([, alertId]) => api(`/v1/alerts/${alertId}`)));
  const rank = (g) => [g.status === "resolved" ? 2 : g.status === "acknowledged" ? 1 : 0, SEVERITY_RANK[g.severity] ?? 9];
  oncall.shown = groups.sort((a, b) => {
    const [ra, rb] = [rank(a), rank(b)];
    if (ra[0] !== rb[0]) return ra[0] - rb[0];
    if (a.status === "resolved") return (b.resolved_at || "").localeCompare(a.resolved_at || "");
    return ra[1] - rb[1] || b.opened_at.localeCompare(a.opened_at);
  });
  oncall.routing = openAlerts.filter((a) => !a.group_id).length;
  paintOncall();
}

function paintOncall() {
  // Repainted only when something changed, so an open <details> or a hovered button survives polls.
  const painted = JSON.stringify([oncall.shown, oncall.routing, [...oncall.notices]]);
  if (painted === oncall.painted) return;
  oncall.painted = painted;
  $("oncall-groups").replaceChildren(...oncall.shown.map(groupCard));
  const open = oncall.shown.filter((g) => g.status !== "resolved").length;
  $("oncall-count").textContent = oncall.shown.length ? `· ${open} open group${open === 1 ? "" : "s"}` : "";
  $("oncall-empty").hidden = oncall.shown.length > 0 || oncall.routing > 0;
  $("oncall-routing").hidden = oncall.routing === 0;
  $("oncall-routing").textContent = `${oncall.routing} new alert(s) being put into their group…`;
  const focus = oncall.focus && !oncall.focused && document.querySelector(`[data-group="${CSS.escape(oncall.focus)}"]`);
  if (focus) { oncall.focused = true; focus.scrollIntoView({ block: "center" }); }
}

function stateText(g) {
  if (g.status === "acknowledged") return `acknowledged by ${g.acknowledged_by}`;
  if (g.status === "resolved") return `resolved by ${g.resolved_by}`;
  return "open · not acknowledged";
}

function groupCard(g) {
  const occurrences = g.alerts.reduce((n, a) => n + a.occurrences, 0);
  const notified = [...new Set(g.timeline.filter((t) => t.action === "notified").map((t) => t.channel))];
  const notice = oncall.notices.get(g.id);
  const details = el("details", { class: "group-body" },
    el("summary", {}, `${g.alerts.length} alert${g.alerts.length === 1 ? "" : "s"} · timeline`),
    alertsTable(g), timeline(g));
  details.open = oncall.expanded.get(g.id) ?? (g.status !== "resolved" || g.id === oncall.focus);
  details.addEventListener("toggle", () => oncall.expanded.set(g.id, details.open));
  const busy = (button, text) => {
    for (const b of button.parentElement.querySelectorAll("button")) b.disabled = true;
    button.textContent = text;
  };
  return el("article", { class: `group group-${g.status}${g.id === oncall.focus ? " focus" : ""}`, "data-group": g.id, "data-status": g.status },
    el("div", { class: "group-head" },
      el("span", { class: `badge sev-${g.severity}` }, g.severity),
      el("strong", { class: "group-summary" }, g.summary),
      el("span", { class: `pill state-${g.status}`, "data-role": "state" }, stateText(g))),
    el("div", { class: "group-meta muted small" },
      el("code", {}, g.id), ` · route ${g.route} · kind ${g.kind} · opened ${new Date(g.opened_at).toLocaleString()}`,
      ` · ${occurrences.toLocaleString()} occurrence${occurrences === 1 ? "" : "s"}`,
      ` · ${notified.length ? `notified ${notified.join(", ")}` : "nobody notified yet"}`,
      ` · ${g.pages} page${g.pages === 1 ? "" : "s"} sent `,
      g.workflow_url ? el("a", { class: "link", href: g.workflow_url, target: "_blank", rel: "noopener" }, "escalation in Temporal ↗") : ""),
    el("div", { class: "group-actions" },
      el("button", { class: "ghost", "data-action": "acknowledge", ...(g.status === "open" ? {} : { disabled: "" }),
        onclick: (e) => { busy(e.target, "acknowledging…"); groupAction(g, "acknowledge"); } }, "Acknowledge"),
      el("button", { class: "ghost", "data-action": "resolve", ...(g.status === "resolved" ? { disabled: "" } : {}),
        onclick: (e) => { busy(e.target, "resolving…"); groupAction(g, "resolve"); } }, "Resolve"),
      el("button", { class: "ghost", "data-action": "silence", onclick: () => prefillSilence(g) }, "Silence…"),
      el("span", { class: `notice ${notice ? notice.kind : ""}`, role: "status" }, notice ? notice.text : "")),
    details);
}

function alertsTable(g) {
  return el("table", { class: "group-alerts" },
    el("thead", {}, el("tr", {}, el("th", {}, "Alert"), el("th", {}, "Status"), el("th", { class: "num" }, "Seen"),
      el("th", {}, "Last"), el("th", {}))),
    el("tbody", {}, ...g.alerts.map((a) => el("tr", { "data-alert": a.id },
      el("td", { class: "wrap", title: a.dedup_key }, a.summary), el("td", {}, a.status),
      el("td", { class: "num" }, a.occurrences.toLocaleString()), el("td", {}, new Date(a.last_seen_at).toLocaleString()),
      el("td", { class: "num" }, a.event_id ? el("button", { class: "ghost", onclick: () => showTrace(a.event_id) }, "trace") : "")))));
}

function timelineLabel(t) {
  const step = /^step (\d+)$/.exec(t.detail || "");
  switch (t.action) {
    case "opened": return ["raised", t.detail];
    case "notified": return step && Number(step[1]) > 1 ? [`escalated to ${t.channel}`, t.detail] : [`notified ${t.channel}`, t.detail];
    case "held": return ["held back (silenced or inhibited)", t.detail];
    case "acknowledged":
    case "resolved": return t.channel ? [`${t.channel} told: ${t.action}`, null] : [`${t.action} by ${t.actor}`, t.detail];
    default: return [t.channel ? `${t.action} ${t.channel}` : t.action, t.detail];
  }
}

function timeline(g) {
  return el("ol", { class: "steps timeline" }, ...g.timeline.map((t) => {
    const [label, detail] = timelineLabel(t);
    return el("li", { "data-action": t.action, "data-channel": t.channel || "" },
      el("strong", {}, label), el("time", {}, new Date(t.at).toLocaleString()), detail || "");
  }));
}

async function groupAction(g, action) {
  const body = action === "resolve" ? JSON.stringify({ reason: "resolved from the dashboard" }) : undefined;
  try {
    const group = await api(`/v1/alerts/${g.alerts[0].id}/${action}`, { method: "POST", body });
    oncall.shown = oncall.shown.map((shown) => (shown.id === group.id ? group : shown));
    oncall.notices.set(g.id, { kind: "ok", text: action === "acknowledge" ? "Acknowledged: escalation stopped." : "Resolved." });
  } catch (error) {
    // 409: already acknowledged or resolved elsewhere; say so, the refresh below shows by whom.
    oncall.notices.set(g.id, error.status === 409
      ? { kind: "info", text: error.detail }
      : { kind: "bad", text: `${action} failed: ${error.message}` });
  }
  oncall.painted = "";
  paintOncall();
  await refreshOperator();
}

// -- silences ------------------------------------------------------------------------------

function prefillSilence(g) {
  $("silence-matchers").value = `kind=${g.kind}`;
  $("silence-message").textContent = "";
  $("silences-card").scrollIntoView({ block: "nearest" });
  $("silence-comment").focus();
}

function parseMatchers(text) {
  const matchers = {};
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const at = part.indexOf("=");
    if (at < 1) throw new Error(`"${part}" is not label=value`);
    matchers[part.slice(0, at).trim()] = part.slice(at + 1).trim();
  }
  if (!Object.keys(matchers).length) throw new Error("give at least one label=value");
  return matchers;
}

async function addSilence(event) {
  event.preventDefault();
  const message = $("silence-message");
  const say = (kind, text) => { message.className = `${kind} wide`; message.textContent = text; };
  let matchers;
  try { matchers = parseMatchers($("silence-matchers").value); } catch (error) { return say("error", error.message); }
  const button = $("silence-form").querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const silence = await api("/v1/silences", { method: "POST", body: JSON.stringify({
      matchers, duration_seconds: Number($("silence-duration").value), comment: $("silence-comment").value.trim() }) });
    say("ok", `Silence ${silence.id} holds matching pages back until ${new Date(silence.ends_at).toLocaleString()}.`);
    $("silence-comment").value = "";
  } catch (error) {
    say("error", error.detail || error.message);
  } finally {
    button.disabled = false;
  }
  await refreshOperator();
}

async function expireSilence(id, button) {
  button.disabled = true;
  button.textContent = "expiring…";
  try { await api(`/v1/silences/${id}`, { method: "DELETE" }); }
  catch (error) { button.textContent = "failed"; button.title = error.message; return; }
  await refreshOperator();
}

async function refreshSilences() {
  const silences = await api("/v1/silences");
  oncall.silences = silences;
  const labels = (matchers) => Object.entries(matchers).map(([k, v]) => `${k}=${v}`).join(", ");
  $("silences").replaceChildren(...silences.map((s) => el("tr", { "data-silence": s.id },
    el("td", {}, el("code", {}, labels(s.matchers))),
    el("td", { title: `from ${new Date(s.starts_at).toLocaleString()}` }, new Date(s.ends_at).toLocaleString()),
    el("td", {}, s.created_by), el("td", { class: "wrap" }, s.comment),
    el("td", { class: "num" }, el("button", { class: "ghost", onclick: (e) => expireSilence(s.id, e.target) }, "expire")))));
  $("silences-empty").hidden = silences.length > 0;
}

const VIEWS = ["merchant", "escrows", "operator"];

function show(view) {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.classList.toggle("active", tab.dataset.view === view);
    tab.setAttribute("aria-selected", String(tab.dataset.view === view));
  }
  for (const name of VIEWS) $(`${name}-view`).hidden = view !== name;
  clearInterval(operatorTimer);
  if (view === "operator") { refreshOperator(); operatorTimer = setInterval(refreshOperator, 5000); }
}

// -- sign-in -------------------------------------------------------------------------------

function signOut(message) {
  state.feed?.stop();
  setConn("error", "signed out");
  $("signin").hidden = false;
  for (const name of VIEWS) $(`${name}-view`).hidden = true;
  $("signin-error").textContent = message || "";
}

async function signIn(event) {
  event?.preventDefault();
  state.apiKey = $("api-key").value.trim();
  state.merchant = $("merchant-id").value.trim();
  state.admin = false;
  try {
    await startMerchant();
  } catch (error) {
    return signOut(error.message);
  }
  api("/v1/desk/operator").then((me) => { state.admin = me.admin; paintEscrowsSoon(); }, () => {});
  sessionStorage.setItem("sb.apiKey", state.apiKey);
  sessionStorage.setItem("sb.merchant", state.merchant);
  $("signin").hidden = true;
  const view = new URLSearchParams(location.search).get("view");
  show(view === "operations" || view === "operator" ? "operator" : view === "escrows" ? "escrows" : "merchant");
  api("/v1/merchants?limit=200").then((merchants) =>
    $("merchant-list").replaceChildren(...merchants.map((m) => el("option", { value: m.id }))), () => {});
}

$("signin-form").addEventListener("submit", signIn);
$("drawer-close").addEventListener("click", () => { $("drawer").hidden = true; });
$("silence-form").addEventListener("submit", addSilence);
for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
$("api-key").value = state.apiKey;
$("merchant-id").value = state.merchant;
if (state.apiKey && state.merchant) signIn();
