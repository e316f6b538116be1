// One exchange request as its customer sees it: status, amounts and timeline, live from the
// request's own feed on the gateway (replayed from its first event, then resumed by seq; see
// live.js). The customer has no API key: the page is opened with a request-scoped token in the
// URL's fragment (api/dashboard.py, request_page, says why and what that costs), keeps it in
// this tab's session storage only, and renews it before it expires.
// Plain ES module, no build step.

import { $, Feed, el, money, operatorApi, showConnState } from "./live.js";

const FINAL = new Set(["completed", "cancelled", "failed"]);
const SAYS = {               // what each status means to the customer (core/contracts.py)
  created: "received",
  pending: "waiting for an operator",
  assigned: "an operator has taken it",
  processing: "being processed",
  completed: "done",
  cancelled: "cancelled",
  failed: "could not be completed",
};
const RENEW_AT = 0.5;        // of a token's lifetime
const RENEW_RETRY_MS = 5000;
const NO_ACCESS = "This link has expired or is not for this request. Ask for a new link.";

const requestId = decodeURIComponent(location.pathname.split("/").pop());
const tokenPath = `/v1/exchange-requests/${encodeURIComponent(requestId)}/dashboard-tokens`;
const stored = `sb.requestToken.${requestId}`;

const state = {
  token: null,
  request: null,   // as of the latest event (the feed is in seq order)
  steps: [],       // {event, from, to, at}, oldest first
  feed: null,
  connState: "idle",
  renewTimer: null,
  connections: 0,  // welcomes from the gateway: one per connection
};
window.switchboard = {   // for tests and the curious: read-only views of the page state
  connState: () => state.connState,
  lastSeq: () => state.feed?.lastSeq ?? 0,
  status: () => state.request?.status ?? null,
  events: () => state.steps.map((s) => s.event),
  connections: () => state.connections,
};

// The token: taken from the link once, then out of the address bar (and this history entry).
function takeToken() {
  const fromLink = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromLink) {
    sessionStorage.setItem(stored, fromLink);
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem(stored);
}

const call = operatorApi(() => state.token);
async function api(path, options) {
  const answer = await call(path, options);
  if (path === tokenPath) keep(answer);  // every token fetched replaces the one held
  return answer;
}

function keep(grant) {
  state.token = grant.token;
  sessionStorage.setItem(stored, grant.token);
  clearTimeout(state.renewTimer);
  if (state.request && FINAL.has(state.request.status)) return;
  const life = new Date(grant.expires_at) - Date.now();
  state.renewTimer = setTimeout(renew, Math.max(0, life * RENEW_AT));
}

async function renew() {
  // Before the token ends (and the gateway closes its connection with it), so the reconnect
  // has a valid one to ask with.
  try {
    await api(tokenPath, { method: "POST" });
  } catch (error) {
    if (error.status === 401 || error.status === 403 || error.status === 404) return;  // the feed says so
    state.renewTimer = setTimeout(renew, RENEW_RETRY_MS);
  }
}

function setConn(kind, text) {
  showConnState(state, kind, text);
}

// -- the request, from its feed ----------------------------------------------------------

async function resync() {
  // Nothing to read but the feed: start it over from its first event.
  state.request = null;
  state.steps = [];
  $("timeline").replaceChildren();
  return 0;
}

function onEvent(event) {
  const { request, from, to } = event.data;
  state.request = request;
  state.steps.push({ event: event.event_id, from, to, at: event.occurred_at });
  paint();
  if (FINAL.has(request.status)) end();
}

function end() {
  // A final status is never left: nothing more will come.
  state.feed.stop();
  clearTimeout(state.renewTimer);
  setConn("ended", "request ended");
}

function paint() {
  const r = state.request;
  $("request").hidden = false;
  $("request-id").textContent = r.id;
  const badge = $("status");
  badge.className = `badge exr-${r.status}`;
  badge.dataset.status = r.status;
  badge.textContent = r.status;
  $("status-text").textContent = SAYS[r.status] || "";
  $("from-amount").textContent = money(r.from_amount, r.from_currency);
  $("to-currency").textContent = r.to_currency;
  $("quote").textContent = r.quote === null ? "" : `quoted: ${money(r.quote, r.to_currency)}`;
  $("created-at").textContent = new Date(r.created_at).toLocaleString();
  const list = $("timeline");
  for (const step of state.steps.slice(list.children.length)) {
    list.append(el("li", { "data-event": step.event, "data-to": step.to },
      el("strong", {}, step.to), ` ${SAYS[step.to] || ""}`,
      el("time", { datetime: step.at }, new Date(step.at).toLocaleString())));
  }
}

function refused(message) {
  state.feed?.stop();
  clearTimeout(state.renewTimer);
  setConn("error", "no access");
  $("view-error").textContent = message;
}

state.token = takeToken();
if (!state.token) {
  refused(NO_ACCESS);
} else {
  state.feed = new Feed({
    api,
    tokenPath,
    resync,
    onWelcome: () => { state.connections += 1; },
    onEvent,
    onState: setConn,
    onRefused: () => refused(NO_ACCESS),
  });
  state.feed.start().catch((error) => refused(`Could not follow this request: ${error.message}`));
}
