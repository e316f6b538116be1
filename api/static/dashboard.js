// Switchboard live dashboard: a merchant's events over the gateway WebSocket, gapless across
// reconnects (resume by seq), plus an operator view of alerts, dead letters and backlog.
// Plain ES module, no build step. Protocol: gateway/protocol.py.

const config = JSON.parse(document.getElementById("sb-config").textContent);
const RING_SIZE = 500;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30000;
const INSUFFICIENT_STATE = 3010;  // the gateway cannot resume us gaplessly: reload through sync

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
};

const state = {
  apiKey: sessionStorage.getItem("sb.apiKey") || config.devApiKey || "",
  merchant: new URLSearchParams(location.search).get("merchant") || sessionStorage.getItem("sb.merchant") || "",
  lastSeq: 0,
  ring: [],          // newest last; at most RING_SIZE events
  totals: new Map(), // currency -> {volume, refunded, succeeded, failed}
  balances: new Map(),
  received: 0,
  socket: null,
  attempt: 0,
  connState: "idle",
  queue: [],         // events waiting for the next animation frame
  stopped: false,
  needsSync: false,  // reload the state through sync before the next connection
  syncs: 0,          // snapshots loaded (the first, then one per 3010)
};
window.switchboard = {  // for tests and the curious: read-only views of the page state
  seqs: () => state.ring.map((e) => e.seq),
  merchants: () => [...new Set(state.ring.map((e) => e.merchant_id))],
  lastSeq: () => state.lastSeq,
  connState: () => state.connState,
  syncs: () => state.syncs,
};

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { authorization: `Bearer ${state.apiKey}`, "content-type": "application/json", ...(options.headers || {}) },
  });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch { /* not JSON */ }
    throw Object.assign(new Error(`${response.status}: ${detail}`), { status: response.status });
  }
  return response.json();
}

// -- connection ----------------------------------------------------------------------------

function setConn(kind, text) {
  state.connState = kind;
  const pill = $("conn");
  pill.className = `pill pill-${kind}`;
  pill.dataset.state = kind;
  pill.textContent = text || kind;
}

function backoffMs() {
  // Exponential backoff with full jitter, so dashboards dropped together do not return together.
  const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
  state.attempt += 1;
  return Math.round(cap / 2 + Math.random() * cap / 2);
}

function scheduleReconnect(reason) {
  if (state.stopped) return;
  const delay = backoffMs();
  setConn("reconnecting", `reconnecting in ${(delay / 1000).toFixed(1)} s`);
  console.info(`switchboard: ${reason}; reconnecting in ${delay} ms from seq ${state.lastSeq}`);
  setTimeout(connect, delay);
}

async function connect() {
  if (state.stopped) return;
  setConn("connecting", "connecting");
  if (state.needsSync) {
    // Closed with 3010 (e.g. too far behind to replay): start again from a fresh snapshot.
    try { await loadSnapshot(); }
    catch (error) { return scheduleReconnect(`sync failed (${error.message})`); }
  }
  let grant;
  try {
    // A fresh token per connection: tokens are short-lived and never reused.
    grant = await api(`/v1/merchants/${encodeURIComponent(state.merchant)}/dashboard-tokens`, { method: "POST" });
  } catch (error) {
    if (error.status === 401 || error.status === 403 || error.status === 404) return signOut(error.message);
    return scheduleReconnect(`token request failed (${error.message})`);
  }
  const socket = new WebSocket(grant.gateway_url);
  state.socket = socket;
  socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token: grant.token, since_seq: state.lastSeq }));
  socket.onmessage = (message) => onMessage(socket, JSON.parse(message.data));
  socket.onclose = (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    if (event.code === INSUFFICIENT_STATE) state.needsSync = true;
    scheduleReconnect(`closed with ${event.code} ${event.reason || ""}`.trim());
  };
}

function onMessage(socket, message) {
  if (message.control === "welcome") setConn("replaying", "catching up");
  else if (message.control === "live") { setConn("live", "live"); state.attempt = 0; }
  else if ("seq" in message) {
    if (message.merchant_id !== state.merchant || message.seq <= state.lastSeq) return; // repeat
    if (message.seq !== state.lastSeq + 1) { socket.close(4000, "gap"); return; }     // resume
    state.lastSeq = message.seq;
    accept(message, true);
  }
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
  state.received += 1;
  state.ring.push(event);
  if (state.ring.length > RING_SIZE) state.ring.splice(0, state.ring.length - RING_SIZE);
  state.queue.push(event);
  if (state.queue.length === 1) requestAnimationFrame(flush);
}

const money = (minor, currency) => {
  try { return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(minor / 100); }
  catch { return `${(minor / 100).toFixed(2)} ${currency}`; }
};

function flush() {
  // One DOM update per frame however fast events arrive; the table never exceeds the ring.
  const batch = state.queue.splice(0);
  const body = $("events");
  const fragment = document.createDocumentFragment();
  for (const event of batch.slice(-RING_SIZE).reverse()) fragment.append(row(event));
  body.prepend(fragment);
  while (body.rows.length > RING_SIZE) body.deleteRow(-1);
  $("empty").hidden = body.rows.length > 0;
  $("last-seq").textContent = state.lastSeq;
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
  // Replaces everything the page holds with the merchant's state as of the sync's head_seq.
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
  state.lastSeq = snapshot.head_seq;  // totals are exactly the effect of events up to here
  state.needsSync = false;
  state.syncs += 1;
  renderKpis();
  $("empty").hidden = snapshot.events.length > 0;
}

async function startMerchant() {
  await loadSnapshot();
  $("merchant-name").textContent = state.merchant;
  connect();
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

async function refreshOperator() {
  try {
    const [stats, alerts, dead] = await Promise.all([api("/v1/stats"), api("/v1/alerts"), api("/v1/dead-letters?limit=50")]);
    $("ops-kpis").replaceChildren(
      kpi("Inbox backlog", stats.inbox_depth.toLocaleString(), "recorded, workflow not started"),
      kpi("In flight", (stats.by_status.started || 0).toLocaleString(), `${(stats.by_status.waiting || 0)} waiting for a payment`),
      kpi("Processed", (stats.by_status.processed || 0).toLocaleString(), `${(stats.by_status.ignored || 0)} ignored`),
      kpi("Open alerts", stats.open_alerts.toLocaleString(), `${stats.dead_letters} dead letters`));
    $("alerts").replaceChildren(...alerts.map((a) => el("tr", {},
      el("td", { class: `sev-${a.severity}` }, a.severity), el("td", { title: a.dedup_key }, a.summary),
      el("td", { class: "num" }, a.occurrences), el("td", {}, new Date(a.last_seen_at).toLocaleString()))));
    $("alerts-empty").hidden = alerts.length > 0;
    $("dead-letters").replaceChildren(...dead.map((d) => el("tr", {},
      el("td", { class: "ref", title: d.event_id }, el("button", { class: "ghost", onclick: () => showTrace(d.event_id) }, d.event_id)),
      el("td", {}, d.reason), el("td", {}, new Date(d.created_at).toLocaleString()),
      el("td", { class: "num" }, el("button", { class: "ghost", onclick: (e) => replay(d.event_id, e.target) }, "replay")))));
    $("dead-empty").hidden = dead.length > 0;
  } catch (error) {
    $("ops-kpis").replaceChildren(kpi("Operator API", "unavailable", error.message));
  }
}

async function replay(eventId, button) {
  button.disabled = true;
  button.textContent = "replaying…";
  try { await api(`/v1/dead-letters/${encodeURIComponent(eventId)}/replay`, { method: "POST" }); button.textContent = "replayed"; }
  catch (error) { button.textContent = "failed"; button.title = error.message; }
  refreshOperator();
}

function show(view) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
  $("merchant-view").hidden = view !== "merchant";
  $("operator-view").hidden = view !== "operator";
  clearInterval(operatorTimer);
  if (view === "operator") { refreshOperator(); operatorTimer = setInterval(refreshOperator, 5000); }
}

// -- sign-in -------------------------------------------------------------------------------

function signOut(message) {
  state.stopped = true;
  setConn("error", "signed out");
  $("signin").hidden = false;
  $("merchant-view").hidden = $("operator-view").hidden = true;
  $("signin-error").textContent = message || "";
}

async function signIn(event) {
  event?.preventDefault();
  state.apiKey = $("api-key").value.trim();
  state.merchant = $("merchant-id").value.trim();
  state.stopped = false;
  try {
    await startMerchant();
  } catch (error) {
    return signOut(error.message);
  }
  sessionStorage.setItem("sb.apiKey", state.apiKey);
  sessionStorage.setItem("sb.merchant", state.merchant);
  $("signin").hidden = true;
  show("merchant");
  api("/v1/merchants?limit=200").then((merchants) =>
    $("merchant-list").replaceChildren(...merchants.map((m) => el("option", { value: m.id }))), () => {});
}

$("signin-form").addEventListener("submit", signIn);
$("drawer-close").addEventListener("click", () => { $("drawer").hidden = true; });
for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
$("api-key").value = state.apiKey;
$("merchant-id").value = state.merchant;
if (state.apiKey && state.merchant) signIn();
