// The one WebSocket of the page to WDS (docs/wds-protocol.md).
//
// - The token goes in the first frame ({"action":"auth"}), never in the URL, and is never logged.
// - The wanted channels are kept here and subscribed again after every reconnect; a snapshot sets a
//   channel's state and seq, then only updates with a higher seq are applied (older ones are dropped).
//   A conflated update is the newest state. A seq jump without `conflated` is reported as a gap.
// - Reconnects with capped exponential backoff and jitter. Close 4002 (token expired) and 4009 (too
//   many connections with this token) get a fresh token first; 4001 (auth failed) stops.
// - A ping every 25 s: no answer within 10 s and the connection is dropped (half-open sockets after a
//   laptop sleeps), which also keeps WDS's idle timer happy.
// - Actions are paced below WDS's rate limit, and subscribe frames stay below its frame limit.

export const CONNECTED = "connected";
export const RECONNECTING = "reconnecting";
export const DISCONNECTED = "disconnected";

const BACKOFF_INITIAL_MS = 500;
const BACKOFF_MAX_MS = 30_000;
const STABLE_MS = 10_000; // a connection that lived this long resets the backoff
const PING_EVERY_MS = 25_000;
const PONG_TIMEOUT_MS = 10_000;
const OPEN_TIMEOUT_MS = 15_000; // connect + authenticate
const ACTIONS_PER_S = 8; // WDS allows 20 per second by default
const ACTION_BURST = 16;
const FRAME_BYTES = 12_000; // WDS refuses client frames above 16 KiB
const RETRY_UNAVAILABLE_MS = 3_000;

export class SessionEnded extends Error {}

/**
 * new Wds({url, token, onSnapshot, onUpdate, onState, onError})
 *   token({force}) -> Promise<string>: a valid token (a fresh one when force); throws SessionEnded
 *   onSnapshot(channel, data, event), onUpdate(channel, event, {gap}), onState(state, detail),
 *   onError(event): an `error` event of the server.
 */
export class Wds {
  constructor(opts) {
    this.opts = opts;
    this.subs = new Map(); // channel -> {seq: number|null (null: snapshot pending), maxHz}
    this.ws = null;
    this.state = null;
    this.detail = {};
    this.authed = false;
    this.attempt = 0;
    this.stopped = false;
    this.timers = {};
    this.queue = [];
    this.bucket = ACTION_BURST;
    this.refilled = performance.now();
    this.ids = 0;
    this.gen = 0; // connection attempts: a late answer of an older attempt is ignored
    this.counts = { updates: 0, snapshots: 0, dropped: 0, gaps: 0, connects: 0, messages: 0, errors: 0 };
    this.gapsBy = new Map(); // channel -> seq jumps without `conflated` (updates lost before WDS)
    this.lastMessageAt = 0;
    this.authedAt = 0;
    window.addEventListener("online", () => {
      if (this.state === RECONNECTING) this.reconnectNow();
    });
  }

  // -- the wanted channels ------------------------------------------------------------------------

  /** Subscribe to `channels` (kept across reconnects); `maxHz` throttles them server-side. */
  subscribe(channels, maxHz = 0) {
    const fresh = [];
    for (const ch of channels) {
      const sub = this.subs.get(ch);
      if (sub && sub.maxHz === maxHz) continue;
      this.subs.set(ch, { seq: null, maxHz });
      fresh.push(ch);
    }
    if (fresh.length && this.authed) this._subscribeFrames(fresh);
  }

  unsubscribe(channels) {
    const gone = channels.filter((ch) => this.subs.delete(ch));
    if (gone.length && this.authed) {
      for (const part of chunks(gone)) this._send({ action: "unsubscribe", channels: part });
    }
  }

  /** Ask again for a channel's snapshot (after a gap in a feed). */
  resnapshot(channel) {
    const sub = this.subs.get(channel);
    if (sub && this.authed) {
      this._send({ action: "subscribe", channels: [channel], ...(sub.maxHz ? { max_hz: sub.maxHz } : {}) });
    }
  }

  channels() {
    return [...this.subs.keys()];
  }

  // -- the connection ------------------------------------------------------------------------------

  start() {
    this.stopped = false;
    this._connect();
  }

  stop(detail = {}) {
    this.stopped = true;
    this.gen += 1;
    this._clearTimers();
    this._drop();
    this._setState(DISCONNECTED, detail);
  }

  /** Give up waiting for the backoff, or try again after a stop. */
  reconnectNow() {
    this.gen += 1;
    this.stopped = false;
    this.attempt = 0;
    this._clearTimers();
    this._drop();
    this._connect();
  }

  /** A fresh token for the open connection (WDS accepts re-auth by the same subject). */
  reauth(token) {
    if (this.ws && this.authed) this._send({ action: "auth", token, id: "reauth" }, true);
  }

  async _connect() {
    if (this.stopped) return;
    const gen = ++this.gen;
    this._setState(RECONNECTING, { attempt: this.attempt, connecting: true });
    let token;
    try {
      token = await this.opts.token({ force: false });
    } catch (err) {
      if (gen !== this.gen) return;
      if (err instanceof SessionEnded) return this.stop({ reason: "session_ended" });
      return this._retry({ reason: "token" });
    }
    if (this.stopped || gen !== this.gen) return;
    let ws;
    try {
      ws = new WebSocket(wsUrl(this.opts.url));
    } catch (err) {
      return this.stop({ reason: "bad_url", message: String(err && err.message) });
    }
    this.ws = ws;
    this.authed = false;
    this.queue = [];
    this.counts.connects += 1;
    this.timers.open = setTimeout(() => {
      if (this.ws === ws && !this.authed) this._lost(ws, { code: 0, reason: "timeout" });
    }, OPEN_TIMEOUT_MS);
    ws.onopen = () => {
      if (this.ws !== ws) return;
      ws.send(JSON.stringify({ action: "auth", token, id: "auth" }));
    };
    ws.onmessage = (ev) => {
      if (this.ws === ws) this._onMessage(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this._lost(ws, { code: ev.code, reason: ev.reason });
    };
    ws.onerror = () => {}; // a close event follows, with the code
  }

  _lost(ws, { code, reason }) {
    const lived = this.authed ? performance.now() - this.authedAt : 0;
    this._drop();
    if (this.stopped) return;
    if (lived >= STABLE_MS) this.attempt = 0;
    const detail = { code, reason };
    if (code === 4001) return this.stop({ ...detail, reason: "auth_failed" });
    if (code === 4002 || code === 4009) {
      // token expired, or too many connections with it: a fresh token (a new jti) first
      const gen = ++this.gen;
      this._setState(RECONNECTING, { ...detail, attempt: this.attempt, refreshing: true });
      this.opts.token({ force: true }).then(
        () => gen === this.gen && this._retry(detail),
        (err) => {
          if (gen !== this.gen) return;
          if (err instanceof SessionEnded) this.stop({ reason: "session_ended" });
          else this._retry(detail);
        },
      );
      return;
    }
    this._retry(detail);
  }

  _retry(detail) {
    if (this.stopped) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * 2 ** this.attempt);
    const delay = detail.code === 1001 && this.attempt === 0 ? 100 + Math.random() * 900 : base / 2 + (Math.random() * base) / 2;
    this.attempt += 1;
    const at = Date.now() + delay;
    this._setState(RECONNECTING, { ...detail, attempt: this.attempt, retryAt: at });
    clearTimeout(this.timers.retry);
    this.timers.retry = setTimeout(() => this._connect(), delay);
  }

  _drop() {
    const ws = this.ws;
    this.ws = null;
    this.authed = false;
    this.queue = [];
    clearTimeout(this.timers.open);
    clearTimeout(this.timers.ping);
    clearTimeout(this.timers.pong);
    clearTimeout(this.timers.pump);
    for (const sub of this.subs.values()) sub.seq = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
        try {
          ws.close(1000, "bye");
        } catch {
          /* already closing */
        }
      }
    }
  }

  _clearTimers() {
    for (const t of Object.values(this.timers)) clearTimeout(t);
    this.timers = {};
  }

  _setState(state, detail) {
    this.state = state;
    this.detail = detail || {};
    this.opts.onState(state, this.detail);
  }

  // -- frames in ----------------------------------------------------------------------------------

  _onMessage(raw) {
    this.lastMessageAt = performance.now();
    clearTimeout(this.timers.pong);
    this.counts.messages += 1;
    let events;
    try {
      events = JSON.parse(raw);
    } catch {
      return;
    }
    if (!Array.isArray(events)) events = [events];
    for (const ev of events) {
      if (ev && typeof ev === "object") this._onEvent(ev);
    }
  }

  _onEvent(ev) {
    switch (ev.event) {
      case "update":
        return this._onUpdate(ev);
      case "snapshot":
        return this._onSnapshot(ev);
      case "authenticated":
        return this._onAuthenticated(ev);
      case "error":
        return this._onServerError(ev);
      default:
        return; // subscribed, unsubscribed, pong
    }
  }

  _onAuthenticated(ev) {
    if (this.authed) return; // the answer to a re-auth
    this.authed = true;
    this.authedAt = performance.now();
    clearTimeout(this.timers.open);
    this._setState(CONNECTED, { sub: ev.sub, expires: ev.expires });
    this._schedulePing();
    const byHz = new Map();
    for (const [ch, sub] of this.subs) {
      sub.seq = null;
      if (!byHz.has(sub.maxHz)) byHz.set(sub.maxHz, []);
      byHz.get(sub.maxHz).push(ch);
    }
    for (const [hz, channels] of byHz) this._subscribeFrames(channels, hz);
  }

  _onSnapshot(ev) {
    const sub = this.subs.get(ev.channel);
    if (!sub) return; // unsubscribed meanwhile
    sub.seq = typeof ev.seq === "number" ? ev.seq : 0;
    this.counts.snapshots += 1;
    this.opts.onSnapshot(ev.channel, ev.data ?? null, ev);
  }

  _onUpdate(ev) {
    const sub = this.subs.get(ev.channel);
    if (!sub || sub.seq === null || typeof ev.seq !== "number" || ev.seq <= sub.seq) {
      this.counts.dropped += 1;
      return;
    }
    const gap = !ev.conflated && ev.seq > sub.seq + 1;
    if (gap) {
      this.counts.gaps += 1;
      this.gapsBy.set(ev.channel, (this.gapsBy.get(ev.channel) || 0) + 1);
    }
    sub.seq = ev.seq;
    this.counts.updates += 1;
    this.opts.onUpdate(ev.channel, ev, { gap });
  }

  _onServerError(ev) {
    this.counts.errors += 1;
    const channels = Array.isArray(ev.channels) ? ev.channels : [];
    if (ev.code === "unavailable" && channels.length) {
      // Redis is away: WDS dropped these subscriptions; ask again a bit later
      setTimeout(() => {
        const again = channels.filter((ch) => this.subs.has(ch) && this.subs.get(ch).seq === null);
        if (again.length && this.authed) this._subscribeFrames(again, this.subs.get(again[0]).maxHz);
      }, RETRY_UNAVAILABLE_MS + Math.random() * 1000);
    } else if (ev.code === "rate_limited") {
      // an action was ignored (which one is not said): ask again for the snapshots still missing
      setTimeout(() => {
        const again = [...this.subs].filter(([, s]) => s.seq === null).map(([ch]) => ch);
        if (again.length && this.authed) this._subscribeFrames(again);
      }, 2000);
    }
    this.opts.onError(ev);
  }

  // -- frames out ---------------------------------------------------------------------------------

  _subscribeFrames(channels, maxHz) {
    const groups = new Map();
    for (const ch of channels) {
      const hz = maxHz ?? this.subs.get(ch)?.maxHz ?? 0;
      if (!groups.has(hz)) groups.set(hz, []);
      groups.get(hz).push(ch);
    }
    for (const [hz, list] of groups) {
      for (const part of chunks(list)) {
        this._send({ action: "subscribe", channels: part, id: `s${++this.ids}`, ...(hz ? { max_hz: hz } : {}) });
      }
    }
  }

  _send(action, urgent = false) {
    if (!this.ws) return;
    if (urgent) this.queue.unshift(action);
    else this.queue.push(action);
    this._pump();
  }

  _pump() {
    clearTimeout(this.timers.pump);
    const now = performance.now();
    this.bucket = Math.min(ACTION_BURST, this.bucket + ((now - this.refilled) / 1000) * ACTIONS_PER_S);
    this.refilled = now;
    while (this.queue.length && this.bucket >= 1) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      this.ws.send(JSON.stringify(this.queue.shift()));
      this.bucket -= 1;
    }
    if (this.queue.length) {
      this.timers.pump = setTimeout(() => this._pump(), ((1 - this.bucket) / ACTIONS_PER_S) * 1000 + 5);
    }
  }

  _schedulePing() {
    clearTimeout(this.timers.ping);
    this.timers.ping = setTimeout(() => {
      if (!this.ws || !this.authed) return;
      const ws = this.ws;
      this._send({ action: "ping", id: "hb" });
      clearTimeout(this.timers.pong);
      this.timers.pong = setTimeout(() => {
        if (this.ws === ws) this._lost(ws, { code: 0, reason: "no answer to ping" });
      }, PONG_TIMEOUT_MS);
      this._schedulePing();
    }, PING_EVERY_MS);
  }
}

/** The WebSocket URL: absolute ws(s)://, or relative to the page (http -> ws, https -> wss). */
function wsUrl(url) {
  const u = new URL(url, window.location.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.href;
}

/** Split channel names into lists whose JSON stays below FRAME_BYTES. */
function chunks(channels) {
  const out = [];
  let part = [];
  let size = 0;
  for (const ch of channels) {
    const n = ch.length + 4;
    if (part.length && size + n > FRAME_BYTES) {
      out.push(part);
      part = [];
      size = 0;
    }
    part.push(ch);
    size += n;
  }
  if (part.length) out.push(part);
  return out;
}
