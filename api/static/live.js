// What the dashboard pages share: DOM helpers, the operator API with the tab's API key, and a
// live feed on the gateway that stays gapless across reconnects (resume by seq).
// Plain ES module, no build step. Protocol: gateway/protocol.py.

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30000;
const INSUFFICIENT_STATE = 3010;  // the gateway cannot resume us gaplessly: resync first

export const $ = (id) => document.getElementById(id);
export const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
};

// Makes parent's children render(item) for items, in order, each known by keyOf(item). Only
// what changed is touched: a child whose key is unchanged stays in place, and with it the
// keyboard focus on its buttons.
export function reconcile(parent, items, keyOf, render) {
  const old = new Map([...parent.children].map((node) => [node.dataset.key, node]));
  let at = parent.firstElementChild;
  for (const item of items) {
    const key = keyOf(item);
    let node = old.get(key);
    old.delete(key);
    if (!node) { node = render(item); node.dataset.key = key; }
    if (node === at) at = at.nextElementSibling;
    else parent.insertBefore(node, at);
  }
  for (const node of old.values()) node.remove();
}

// Shows the feed's connection state (connecting, live, ...) in the page's #conn pill and keeps
// it in state.connState, which window.switchboard.connState() reports.
export function showConnState(state, kind, text) {
  state.connState = kind;
  const pill = $("conn");
  pill.className = `pill pill-${kind}`;
  pill.dataset.state = kind;
  pill.textContent = text || kind;
}

// Money is integer minor units: an ISO 4217 currency has the digits Intl knows for it (JPY 0,
// EUR 2, BHD 3); any other code (e.g. USDT) shows two, as the emails do (activities/email.py).
export const money = (minor, currency) => {
  let format;
  try { format = new Intl.NumberFormat(undefined, { style: "currency", currency }); }
  catch { return `${(minor / 100).toFixed(2)} ${currency}`; }
  return format.format(minor / 10 ** format.resolvedOptions().maximumFractionDigits);
};

// The operator API, authenticated with the API key apiKey() returns (kept in session storage,
// never in a URL). A failure throws an Error carrying status, detail and the problem's body.
export function operatorApi(apiKey) {
  return async function api(path, options = {}) {
    const response = await fetch(path, {
      ...options,
      headers: { authorization: `Bearer ${apiKey()}`, "content-type": "application/json", ...(options.headers || {}) },
    });
    if (!response.ok) {
      let problem = {};
      try { problem = await response.json(); } catch { /* not JSON */ }
      const detail = problem.detail || response.statusText;
      throw Object.assign(new Error(`${response.status}: ${detail}`), { status: response.status, detail, problem });
    }
    return response.json();
  };
}

// One topic's events, in seq order, none twice and none missed, across reconnects:
// * tokenPath: where the api issues this topic's dashboard token (a fresh one per connection);
// * resync(): loads the page's state and returns the seq it is exact at, or null to start from
//   the gateway's head (the page then reads its state in onWelcome); called before the first
//   connection and again whenever the gateway cannot resume (3010);
// * onWelcome(message, resynced), onEvent(event), onState(kind, text), onRefused(error) (the
//   api refused a token: 401, 403 or 404).
export class Feed {
  constructor({ api, tokenPath, resync, onWelcome = () => {}, onEvent, onState = () => {}, onRefused }) {
    Object.assign(this, { api, tokenPath, resync, onWelcome, onEvent, onState, onRefused });
    this.lastSeq = null;
    this.socket = null;
    this.attempt = 0;
    this.stopped = false;
    this.needsSync = true;
    this.resynced = false;
  }

  async start() {
    this.stopped = false;
    await this.sync();
    this.connect();
  }

  stop() {
    this.stopped = true;
    this.socket?.close(1000, "signed out");
    this.socket = null;
  }

  async sync() {
    this.lastSeq = await this.resync();
    this.needsSync = false;
    this.resynced = true;
  }

  backoffMs() {
    // Exponential backoff with full jitter, so pages dropped together do not return together.
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    this.attempt += 1;
    return Math.round(cap / 2 + Math.random() * cap / 2);
  }

  reconnect(reason) {
    if (this.stopped) return;
    const delay = this.backoffMs();
    this.onState("reconnecting", `reconnecting in ${(delay / 1000).toFixed(1)} s`);
    console.info(`switchboard: ${reason}; reconnecting in ${delay} ms from seq ${this.lastSeq}`);
    setTimeout(() => this.connect(), delay);
  }

  async connect() {
    if (this.stopped) return;
    this.onState("connecting", "connecting");
    if (this.needsSync) {
      try { await this.sync(); }
      catch (error) { return this.reconnect(`sync failed (${error.message})`); }
    }
    let grant;
    try {
      grant = await this.api(this.tokenPath, { method: "POST" });  // tokens are short-lived, never reused
    } catch (error) {
      if (error.status === 401 || error.status === 403 || error.status === 404) return this.onRefused(error);
      return this.reconnect(`token request failed (${error.message})`);
    }
    const socket = new WebSocket(grant.gateway_url);
    this.socket = socket;
    socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token: grant.token, since_seq: this.lastSeq }));
    socket.onmessage = (message) => this.receive(socket, JSON.parse(message.data));
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (event.code === INSUFFICIENT_STATE) this.needsSync = true;
      this.reconnect(`closed with ${event.code} ${event.reason || ""}`.trim());
    };
  }

  receive(socket, message) {
    if (message.control === "welcome") {
      if (this.lastSeq === null) this.lastSeq = message.head_seq;  // started from now
      this.onState("replaying", "catching up");
      this.onWelcome(message, this.resynced);
      this.resynced = false;
    } else if (message.control === "live") {
      this.onState("live", "live");
      this.attempt = 0;
    } else if ("seq" in message) {
      if (message.seq <= this.lastSeq) return;                                      // a repeat
      if (message.seq !== this.lastSeq + 1) { socket.close(4000, "gap"); return; }  // resume
      this.lastSeq = message.seq;
      this.onEvent(message);
    }
  }
}
