// mdpipe's dashboard: leaderboards, watchlist, minute chart, halts, alerts, signals and pipeline status,
// fed by one WebSocket to WDS (see wds.js) and the control plane's REST API (token refresh, status, the
// list of signals.* channels).
//
// The page (templates/index.html) carries the configuration as JSON in #mdpipe-config:
//   {user: {email, role}, wds: {url, token, expires, channels}, api: {base, csrf}, logout, symbols}
// The token is kept in memory only: never logged, never put in a URL or in storage.
//
// Hooks for browser tests: data-testid on every widget, data-sym on rows, data-bars on the chart,
// data-state on the connection indicator, data-stale on widgets, and window.mdpipe (counters, signals).
//
// Changes are the day stats' own (`change`, `change_pct`): against the previous close, or against the
// open where no previous close is known (`change_from: "open"`), which the page says.

import { Wds, SessionEnded, CONNECTED, RECONNECTING, DISCONNECTED } from "./wds.js";
import { BarChart } from "./chart.js";
import * as f from "./util.js";

const BOARDS = ["gainers", "losers", "volume", "gappers"];
const FEED_ROWS = 100; // halts and alerts kept, newest first
const MAX_WATCH = 50; // symbols in the watchlist (two channels each)
const WATCH_HZ = 4; // stats and quotes: at most this many updates per second per channel
const QUIET_S = 20; // connected, but no update at all for this long: everything is stale
const STATUS_EVERY_MS = 5000;
const STATUS_STALE_S = 15;
const RESNAPSHOT_EVERY_MS = 10_000; // at most one fresh snapshot per channel after gaps
const TOKEN_MARGIN_S = 20; // a token closer than this to its expiry is refreshed before use
const SIGNALS_EVERY_MS = 30_000; // the signals.* channels that exist, from GET /api/signals
const SIGNAL_CHANNELS = 20; // followed at most (the highest seq first)
const SIGNAL_ROWS = 50; // shown, newest first, across them
const SIGNAL_SUMMARY = 120; // characters of a signal's data shown
const SIGNAL_RE = /^signals\.[a-z0-9_]{1,40}(?:\.[A-Za-z0-9.:/_^-]{1,64})?$/;
const LS_WATCH = "mdpipe.watchlist";
const LS_CHART = "mdpipe.chart";
const LOGIN = "/auth/login";

const $ = (sel, root = document) => root.querySelector(sel);

// -- configuration --------------------------------------------------------------------------------

function readConfig() {
  try {
    const cfg = JSON.parse($("#mdpipe-config").textContent);
    if (!cfg || !cfg.wds || typeof cfg.wds.url !== "string" || typeof cfg.wds.token !== "string") return null;
    return cfg;
  } catch {
    return null;
  }
}

const cfg = readConfig();
const api = (cfg && cfg.api) || {};
const apiBase = String(api.base ?? "/api").replace(/\/+$/, "");

// -- banner (session ended, authentication failed, broken page) ----------------------------------

const banner = $("#banner");

function showBanner(text, actions = []) {
  banner.replaceChildren(f.el("span", {}, text), ...actions.map((a) => [" ", a]).flat());
  banner.hidden = false;
}

function loginLink() {
  return f.el("a", { href: LOGIN }, "Log in again");
}

// -- tokens ---------------------------------------------------------------------------------------

/** The seconds a JWT lives (exp - iat), from its payload; 0 when unreadable. Nothing is logged. */
function jwtLifetime(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
    const life = Number(claims.exp) - Number(claims.iat);
    return Number.isFinite(life) && life > 0 ? life : 0;
  } catch {
    return 0;
  }
}

class Tokens {
  constructor(wdsCfg) {
    this.skew = 0; // server clock - browser clock, seconds (from /status)
    this.pending = null;
    this.timer = 0;
    this.ended = false;
    this.lastError = null;
    this.onFresh = () => {};
    this.onEnded = () => {};
    this._set(wdsCfg.token, wdsCfg.expires);
  }

  _set(token, expires) {
    this.token = token;
    this.expires = Number(expires) || 0;
    this.lifetime = jwtLifetime(token);
    this.gotAt = Date.now() / 1000;
  }

  /** Seconds left, by the server's clock when known, and never more than the token's lifetime. */
  remaining() {
    const now = Date.now() / 1000;
    let left = this.expires ? this.expires - (now + this.skew) : Infinity;
    if (this.lifetime) left = Math.min(left, this.lifetime - (now - this.gotAt));
    return left;
  }

  /** A valid token: the current one, or a fresh one when asked or close to expiry. */
  async get({ force = false } = {}) {
    if (this.ended) throw new SessionEnded();
    if (!force && this.remaining() > TOKEN_MARGIN_S) return this.token;
    await this.refresh();
    return this.token;
  }

  refresh() {
    if (!this.pending) {
      this.pending = this._refresh().finally(() => {
        this.pending = null;
      });
    }
    return this.pending;
  }

  async _refresh() {
    let res;
    try {
      res = await fetch(`${apiBase}/tokens`, {
        method: "POST",
        credentials: "same-origin",
        cache: "no-store",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": api.csrf ?? "" },
        body: "{}",
      });
    } catch (err) {
      this._failed("the control plane is unreachable");
      throw err;
    }
    if (res.status === 401) {
      this.ended = true;
      clearTimeout(this.timer);
      this.onEnded();
      throw new SessionEnded();
    }
    let body = null;
    try {
      body = await res.json();
    } catch {
      /* not JSON */
    }
    if (!res.ok || !body || typeof body.token !== "string") {
      this._failed(`token refresh failed (HTTP ${res.status})`);
      throw new Error(`token refresh: HTTP ${res.status}`);
    }
    this._set(body.token, body.expires);
    this.lastError = null;
    this.schedule();
    this.onFresh(this.token);
    return this.token;
  }

  _failed(message) {
    this.lastError = message;
    // try again soon, well before the token runs out
    const left = this.remaining();
    this._at(Math.min(60, Math.max(5, left / 4)));
  }

  /** Refresh at 75% of the remaining lifetime. */
  schedule() {
    this._at(Math.max(15, this.remaining() * 0.75));
  }

  _at(seconds) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh().catch(() => {}), Math.min(seconds * 1000, 2 ** 31 - 1));
  }
}

// -- state ----------------------------------------------------------------------------------------

const model = {
  boards: Object.fromEntries(BOARDS.map((b) => [b, null])),
  stats: new Map(), // sym -> day stats
  quotes: new Map(), // sym -> quote
  halted: new Map(), // sym -> LULD
  haltFeed: [], // newest first
  alerts: [], // newest first
  signals: new Map(), // signals.* channel -> [{channel, seq, type, ts, data}], newest first
  signalChannels: [], // the signals.* channels followed, by name
  signalList: { listed: 0, truncated: false, fetched: false, error: null }, // the last GET /api/signals
  got: new Set(), // channels with a snapshot on this connection
  refused: new Map(), // channel -> error code (forbidden, unknown...)
  lastData: 0, // performance.now() of the newest snapshot or update
  status: { data: null, okAt: 0, error: null },
};

let watch = loadWatch();
let chartSym = loadChart();

function loadWatch() {
  try {
    const saved = JSON.parse(localStorage.getItem(LS_WATCH));
    if (Array.isArray(saved)) return [...new Set(saved.filter((s) => typeof s === "string" && f.SYMBOL_RE.test(s)))].slice(0, MAX_WATCH);
  } catch {
    /* storage disabled or garbled */
  }
  const defaults = cfg && Array.isArray(cfg.symbols) ? cfg.symbols : [];
  return [...new Set(defaults.filter((s) => typeof s === "string" && f.SYMBOL_RE.test(s)))].slice(0, MAX_WATCH);
}

function saveWatch() {
  try {
    localStorage.setItem(LS_WATCH, JSON.stringify(watch));
  } catch {
    /* storage disabled: the list lives as long as the page */
  }
}

function loadChart() {
  try {
    const s = localStorage.getItem(LS_CHART);
    if (s && f.SYMBOL_RE.test(s)) return s;
  } catch {
    /* storage disabled */
  }
  return watch[0] || "AAPL";
}

// -- rendering: dirty widgets are drawn on the next animation frame ----------------------------

const dirtySet = new Set();
let frame = 0;

function dirty(...names) {
  for (const n of names) dirtySet.add(n);
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  frame = 0;
  const names = [...dirtySet];
  dirtySet.clear();
  for (const n of names) {
    if (n.startsWith("board:")) renderBoard(n.slice(6));
    else if (n === "watchlist") renderWatch();
    else if (n === "chart") renderChartHead();
    else if (n === "halts") renderHalts();
    else if (n === "alerts") renderAlerts();
    else if (n === "status") renderStatus();
    else if (n === "signals") renderSignals();
  }
}

const widgets = {
  chart: $("#w-chart"),
  watchlist: $("#w-watchlist"),
  halts: $("#w-halts"),
  alerts: $("#w-alerts"),
  status: $("#w-status"),
  signals: $("#w-signals"),
  ...Object.fromEntries(BOARDS.map((b) => [`board:${b}`, $(`#w-${b}`)])),
};

function markCharted(row, sym) {
  f.setClass(row, "is-charted", sym === chartSym);
}

/** What day stats' change is measured against: "prev_close" or "open" (documents written before
 * `change_from` existed: the previous close when they carry one). */
function changeFrom(st) {
  if (st.change_from === "open" || st.change_from === "prev_close") return st.change_from;
  return f.isNum(st.prev_close) && st.prev_close > 0 ? "prev_close" : "open";
}

/** The reference of a change, for people: "vs prev close 185.00", "vs open 190.00". */
function changeBasis(from, ref) {
  return `${from === "open" ? "vs open" : "vs prev close"}${f.isNum(ref) ? ` ${f.price(ref)}` : ""}`;
}

// leaderboards

function renderBoard(board) {
  const sec = widgets[`board:${board}`];
  const data = model.boards[board];
  const rows = data && Array.isArray(data.rows) ? data.rows.filter((r) => r && typeof r.sym === "string") : [];
  f.syncRows(
    $("tbody", sec),
    rows,
    (r) => r.sym,
    (r) =>
      f.el(
        "tr",
        { dataset: { sym: r.sym } },
        f.el("td", { class: "num rank" }),
        f.el("th", { scope: "row" }, f.symButton(r.sym)),
        f.el("td", { class: "num last" }),
        f.el("td", { class: "num pct" }),
        f.el("td", { class: "num extra" }),
      ),
    (tr, r) => {
      const c = tr.cells;
      f.setText(c[0], f.isNum(r.rank) ? r.rank : "");
      f.setText(c[2], f.price(r.last));
      f.setText(c[3], f.pct(r.change_pct));
      c[3].className = `num pct ${f.signClass(r.change_pct)}`;
      const fromPrev = f.isNum(r.prev_close) && r.prev_close > 0;
      c[3].title = changeBasis(fromPrev ? "prev_close" : "open", fromPrev ? r.prev_close : r.open);
      if (board === "gappers") {
        f.setText(c[4], f.pct(r.gap_pct));
        c[4].className = `num extra ${f.signClass(r.gap_pct)}`;
      } else f.setText(c[4], f.volume(r.volume));
      markCharted(tr, r.sym);
    },
  );
  const empty = $(".empty", sec);
  empty.hidden = rows.length > 0;
  const channel = `leaders.${board}`;
  f.setText(empty, model.refused.has(channel) ? "Not allowed by your access token." : data === null && !model.got.has(channel) ? "Waiting for data…" : "No symbols on this board yet.");
}

// watchlist

function renderWatch() {
  const sec = widgets.watchlist;
  f.syncRows(
    $("tbody", sec),
    watch,
    (s) => s,
    (s) =>
      f.el(
        "tr",
        { dataset: { sym: s } },
        f.el("th", { scope: "row" }, f.symButton(s)),
        f.el("td", { class: "num last" }),
        f.el("td", { class: "num opt2 chg" }),
        f.el("td", { class: "num pct" }),
        f.el("td", { class: "num bid" }),
        f.el("td", { class: "num ask" }),
        f.el("td", { class: "num opt vol" }),
        f.el("td", { class: "act" }, f.el("button", { type: "button", class: "remove", "aria-label": `Remove ${s}`, title: `Remove ${s}`, dataset: { remove: s } }, "×")),
      ),
    (tr, s) => {
      const st = model.stats.get(s) || {};
      const q = model.quotes.get(s) || {};
      const c = tr.cells;
      const refused = model.refused.get(`stats.${s}`) || model.refused.get(`quotes.${s}`);
      f.setText(c[1], refused ? (refused === "forbidden_channel" ? "not allowed" : "refused") : f.price(st.last));
      const from = changeFrom(st);
      f.setText(c[2], f.change(st.change, st.last));
      // a change against the open is starred (the legend under the table says so)
      f.setText(c[3], f.pct(st.change_pct) + (from === "open" && f.isNum(st.change_pct) ? "*" : ""));
      c[2].title = c[3].title = f.isNum(st.change) ? changeBasis(from, from === "open" ? st.open : st.prev_close) : "";
      c[2].className = `num opt2 chg ${f.signClass(st.change, Math.abs(st.last) < 1 ? 4 : 2)}`;
      c[3].className = `num pct ${f.signClass(st.change_pct)}`;
      f.setText(c[4], f.price(q.bp, st.last ?? q.bp));
      f.setText(c[5], f.price(q.ap, st.last ?? q.ap));
      f.setText(c[6], f.volume(st.volume));
      c[4].title = f.isNum(q.bs) ? `size ${f.integer(q.bs)}` : "";
      c[5].title = f.isNum(q.as) ? `size ${f.integer(q.as)}` : "";
      c[1].title = f.isNum(st.t) ? `as of ${f.clock(st.t)}` : "";
      markCharted(tr, s);
    },
  );
  $(".empty", sec).hidden = watch.length > 0;
}

// chart

const chartHost = $(".chart-host", widgets.chart);
const LWC = window.LightweightCharts || null;
const chart = new BarChart(chartHost, widgets.chart, LWC);
if (!LWC) {
  const note = $(".chart-note", widgets.chart);
  note.textContent = "The chart library is missing (run scripts/build-spa).";
  note.hidden = false;
}

function renderChartHead() {
  const sec = widgets.chart;
  f.setText($(".chart-sym", sec), chartSym);
  const st = model.stats.get(chartSym);
  const bar = chart.last();
  const last = st && f.isNum(st.last) ? st.last : bar ? bar.c : null;
  f.setText($(".chart-last", sec), last === null ? "" : f.price(last));
  const chg = $(".chart-chg", sec);
  const moved = st && f.isNum(st.change);
  f.setText(chg, moved ? `${f.change(st.change, last)} (${f.pct(st.change_pct)})` : "");
  chg.className = `chart-chg num ${f.signClass(st && st.change_pct)}`;
  const from = moved ? changeFrom(st) : null;
  f.setText($(".chart-basis", sec), moved ? changeBasis(from) : "");
  chg.title = moved ? changeBasis(from, from === "open" ? st.open : st.prev_close) : "";
  const input = $("#chart-input");
  if (document.activeElement !== input) input.value = chartSym;
  const note = $(".chart-note", sec);
  if (LWC) {
    const ch = `bars.${chartSym}`;
    const text = model.refused.has(ch)
      ? "Not allowed by your access token."
      : model.got.has(ch) && chart.count === 0
        ? `No bars for ${chartSym} yet.`
        : "";
    note.textContent = text;
    note.hidden = !text;
  }
  chartHost.setAttribute("aria-label", `Minute candlestick chart of ${chartSym}`);
  document.title = last === null ? `${chartSym} · mdpipe` : `${chartSym} ${f.price(last)} · mdpipe`;
}

function setChart(sym) {
  sym = String(sym || "").trim().toUpperCase();
  if (!f.SYMBOL_RE.test(sym) || sym === chartSym) return;
  chartSym = sym;
  try {
    localStorage.setItem(LS_CHART, sym);
  } catch {
    /* storage disabled */
  }
  chart.reset(sym);
  syncChannels();
  for (const tr of document.querySelectorAll("tr[data-sym]")) markCharted(tr, tr.dataset.sym);
  dirty("chart");
  if (window.matchMedia("(max-width: 760px)").matches) widgets.chart.scrollIntoView({ behavior: "smooth", block: "start" });
}

// halts and alerts

const KIND = {
  new_high: "New high",
  new_low: "New low",
  volume_spike: "Volume spike",
  halt: "Halt",
  resume: "Resume",
};

const feedKey = (r) => `${r.kind}|${r.sym}|${r.t}`;

function feedRow(r) {
  return f.el(
    "tr",
    { dataset: { sym: r.sym }, class: `kind-${String(r.kind).replace(/[^a-z_]/g, "")}` },
    f.el("td", { class: "time" }, f.clock(r.t)),
    f.el("th", { scope: "row" }, f.symButton(r.sym)),
    f.el("td", { class: "kind" }, KIND[r.kind] || String(r.kind ?? "")),
    f.el("td", { class: "detail" }),
  );
}

function renderHalts() {
  const sec = widgets.halts;
  const chips = $(".chips", sec);
  const syms = [...model.halted.keys()].sort();
  chips.replaceChildren(...syms.map((s) => f.el("li", {}, f.symButton(s))));
  $(".halted-none", sec).hidden = syms.length > 0;
  f.syncRows($("tbody", sec), model.haltFeed, feedKey, feedRow, (tr, r) => {
    const l = r.luld || {};
    f.setText(tr.cells[3], f.isNum(l.lower) || f.isNum(l.upper) ? `${f.price(l.lower)} – ${f.price(l.upper)}` : "");
    tr.cells[3].className = "detail num";
    markCharted(tr, r.sym);
  });
  $(".empty", sec).hidden = model.haltFeed.length > 0;
}

function alertDetail(a) {
  switch (a.kind) {
    case "new_high":
    case "new_low":
      return f.isNum(a.prev) ? `${f.price(a.price)} (was ${f.price(a.prev)})` : f.price(a.price);
    case "volume_spike":
      return `${f.volume(a.volume)} in 1 min (avg ${f.volume(a.average)})`;
    case "halt":
    case "resume":
      return "";
    default:
      return Object.entries(a)
        .filter(([k]) => !["kind", "sym", "t"].includes(k))
        .map(([k, v]) => `${k}: ${typeof v === "number" ? f.price(v) : String(v)}`)
        .join(", ");
  }
}

function renderAlerts() {
  const sec = widgets.alerts;
  f.syncRows($("tbody", sec), model.alerts, feedKey, feedRow, (tr, a) => {
    f.setText(tr.cells[3], alertDetail(a));
    markCharted(tr, a.sym);
  });
  $(".empty", sec).hidden = model.alerts.length > 0;
}

function pushFeed(list, item) {
  if (!item || typeof item.sym !== "string") return list;
  const key = feedKey(item);
  if (list.some((r) => feedKey(r) === key)) return list;
  list.unshift(item);
  list.sort((a, b) => (b.t ?? 0) - (a.t ?? 0));
  if (list.length > FEED_ROWS) list.length = FEED_ROWS;
  return list;
}

function feedFromSnapshot(recent) {
  const items = Array.isArray(recent) ? recent.filter((r) => r && typeof r.sym === "string") : [];
  return items.sort((a, b) => (b.t ?? 0) - (a.t ?? 0)).slice(0, FEED_ROWS);
}

// signals: what services (mdc.publisher) and plug-ins publish on signals.*, shown as text only

const bySignalTime = (a, b) => (b.ts ?? 0) - (a.ts ?? 0) || (a.channel < b.channel ? -1 : a.channel > b.channel ? 1 : 0) || b.seq - a.seq;

/** A signal of `channel` from an envelope (a snapshot's `recent` item, or an update); null if not one. */
function signalOf(channel, e) {
  if (!e || typeof e !== "object" || !f.isNum(e.seq)) return null;
  return { channel, seq: e.seq, type: typeof e.type === "string" ? e.type : "", ts: f.isNum(e.ts) ? e.ts : null, data: e.data ?? null };
}

function signalsFromSnapshot(channel, recent) {
  const seen = new Set();
  const out = [];
  for (const e of Array.isArray(recent) ? recent : []) {
    const sig = signalOf(channel, e);
    if (sig && !seen.has(sig.seq)) {
      seen.add(sig.seq);
      out.push(sig);
    }
  }
  return out.sort(bySignalTime).slice(0, SIGNAL_ROWS);
}

function addSignal(channel, ev) {
  const sig = signalOf(channel, ev);
  if (!sig) return;
  const list = model.signals.get(channel) || [];
  if (list.some((s) => s.seq === sig.seq)) return; // seen (channel + seq)
  list.push(sig);
  list.sort(bySignalTime);
  if (list.length > SIGNAL_ROWS) list.length = SIGNAL_ROWS;
  model.signals.set(channel, list);
}

/** The newest SIGNAL_ROWS signals of every followed channel, newest first. */
function signalFeed() {
  return [...model.signals.values()].flat().sort(bySignalTime).slice(0, SIGNAL_ROWS);
}

function cut(s, n) {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

function compactJson(v) {
  try {
    const s = JSON.stringify(v);
    return s === undefined ? String(v) : s;
  } catch {
    return String(v);
  }
}

/** A signal's data in a line: its symbol then up to 4 other fields `k=v`; else its JSON, cut short. */
function signalSummary(data) {
  if (data && typeof data === "object" && !Array.isArray(data) && typeof data.sym === "string") {
    const fields = Object.entries(data)
      .filter(([k]) => k !== "sym")
      .slice(0, 4)
      .map(([k, v]) => `${k}=${typeof v === "string" ? v : compactJson(v)}`);
    return cut([data.sym, ...fields].join(" "), SIGNAL_SUMMARY);
  }
  return cut(compactJson(data), SIGNAL_SUMMARY);
}

function renderSignals() {
  const sec = widgets.signals;
  const list = signalFeed();
  f.syncRows(
    $("tbody", sec),
    list,
    (s) => `${s.channel}|${s.seq}`,
    () => f.el("tr", {}, f.el("td", { class: "time" }), f.el("td", { class: "sig-channel" }), f.el("td", { class: "kind" }), f.el("td", { class: "detail sig-data" })),
    (tr, s) => {
      const c = tr.cells;
      f.setText(c[0], f.clock(s.ts));
      c[0].title = f.isNum(s.ts) ? new Date(s.ts).toISOString() : "";
      f.setText(c[1], s.channel);
      c[1].title = `${s.channel} #${s.seq}`;
      f.setText(c[2], s.type);
      f.setText(c[3], signalSummary(s.data));
      // a signal about a symbol charts it when clicked, as the other feeds' rows do
      const sym = s.data && typeof s.data === "object" && typeof s.data.sym === "string" && f.SYMBOL_RE.test(s.data.sym) ? s.data.sym : "";
      if (sym) tr.dataset.sym = sym;
      else delete tr.dataset.sym;
      markCharted(tr, sym);
    },
  );
  const info = model.signalList;
  const followed = model.signalChannels;
  const empty = $(".empty", sec);
  empty.hidden = list.length > 0;
  let text = "No signals yet.";
  if (!info.fetched) text = info.error ? `Signals: ${info.error}` : "Waiting for the list of signals…";
  else if (!followed.length) text = "No signals published.";
  else if (followed.every((ch) => model.refused.has(ch))) text = "Not allowed by your access token.";
  f.setText(empty, text);
  f.setText($(".signals-count", sec), followed.length ? `${followed.length} channel${followed.length === 1 ? "" : "s"}` : "");
  const notes = [];
  if (info.fetched && info.error) notes.push(`The list of signal channels is not current: ${info.error}.`);
  if (info.listed > followed.length || info.truncated) {
    notes.push(`Following ${followed.length} of ${info.listed}${info.truncated ? "+" : ""} signal channels (the most active).`);
  }
  const note = $(".signals-note", sec);
  f.setText(note, notes.join(" "));
  note.hidden = !notes.length;
}

let signalsTimer = 0;
/** The signals.* channels to follow: the API's list (within the role), the highest seq first. */
async function pollSignals() {
  clearTimeout(signalsTimer);
  try {
    const res = await fetch(`${apiBase}/signals`, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
    if (res.status === 401) return sessionEnded();
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const doc = await res.json();
    if (!doc || !Array.isArray(doc.channels)) throw new Error("not a list of channels");
    const listed = doc.channels.filter((c) => c && typeof c.channel === "string" && SIGNAL_RE.test(c.channel) && f.isNum(c.seq));
    const chosen = [...listed]
      .sort((a, b) => b.seq - a.seq)
      .slice(0, SIGNAL_CHANNELS)
      .map((c) => c.channel)
      .sort();
    model.signalList = { listed: listed.length, truncated: doc.truncated === true, fetched: true, error: null };
    if (chosen.join(" ") !== model.signalChannels.join(" ")) {
      model.signalChannels = chosen;
      syncChannels();
    }
  } catch (err) {
    model.signalList.error = err instanceof SyntaxError ? "the answer is not JSON" : `unavailable (${err.message || "network error"})`;
  }
  dirty("signals");
  if (!tokens.ended) signalsTimer = setTimeout(pollSignals, SIGNALS_EVERY_MS);
}

// pipeline status

function figureText(v, key = "") {
  if (typeof v === "number" && /port|pid/i.test(key)) return String(v);
  if (typeof v === "number") return Number.isInteger(v) ? f.integer(v) : f.isNum(v) ? v.toFixed(2) : String(v);
  if (typeof v === "string" || typeof v === "boolean") return String(v);
  if (v === null || v === undefined) return "–";
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}…` : s;
}

function renderStatus() {
  const sec = widgets.status;
  const { data, error } = model.status;
  const err = $(".status-error", sec);
  const problems = [error, data && typeof data.error === "string" ? data.error : null].filter(Boolean);
  err.textContent = problems.length ? `Status: ${problems.join("; ")}` : "";
  err.hidden = !problems.length;
  f.setText($(".status-at", sec), data && f.isNum(data.time) ? `as of ${f.clock(data.time * 1000)}` : "");

  const redis = (data && data.redis) || null;
  const redisEl = $(".status-redis", sec);
  if (!redis || typeof redis !== "object") f.setText(redisEl, data ? "Redis: no report" : "Waiting for the status…");
  else if (redis.ok) f.setText(redisEl, `Redis: OK${f.isNum(redis.latency_ms) ? ` (${redis.latency_ms.toFixed(1)} ms)` : ""}`);
  else f.setText(redisEl, `Redis: DOWN${redis.error ? ` (${String(redis.error)})` : ""}`);
  f.setClass(redisEl, "bad", Boolean(redis && !redis.ok));

  const comps = data && Array.isArray(data.components) ? data.components.filter((c) => c && typeof c === "object") : [];
  f.syncRows(
    $(".status-components tbody", sec),
    comps,
    (c) => `${c.component}|${c.instance}`,
    () => f.el("tr", {}, f.el("th", { scope: "row" }), f.el("td", { class: "inst" }), f.el("td"), f.el("td", { class: "num" }), f.el("td", { class: "opt" }), f.el("td", { class: "figures" })),
    (tr, c) => {
      const cells = tr.cells;
      f.setText(cells[0], String(c.component ?? "?"));
      f.setText(cells[1], String(c.instance ?? ""));
      const up = c.up === true;
      f.setText(cells[2], c.up === undefined ? "?" : up ? "up" : "down");
      cells[2].className = up ? "ok" : "bad";
      f.setText(cells[3], f.age(c.age_s));
      f.setText(cells[4], String(c.version ?? ""));
      const figs = c.figures && typeof c.figures === "object" ? Object.entries(c.figures) : [];
      // a part with a status of its own (WDS's `rest`, MDP's `hydration`) shows as that status
      const scalars = figs
        .map(([k, v]) => [k, v && typeof v === "object" && typeof v.status === "string" ? v.status : v])
        .filter(([, v]) => v === null || typeof v !== "object");
      f.setText(cells[5], scalars.slice(0, 8).map(([k, v]) => `${k} ${figureText(v, k)}`).join(" · "));
      cells[5].title = figs.map(([k, v]) => `${k}: ${figureText(v, k)}`).join("\n");
      f.setClass(tr, "bad-row", !up);
    },
  );
  const queues = data && Array.isArray(data.queues) ? data.queues.filter((q) => q && typeof q === "object") : [];
  f.syncRows(
    $(".status-queues tbody", sec),
    queues,
    (q) => String(q.name),
    () => f.el("tr", {}, f.el("th", { scope: "row" }), f.el("td", { class: "num" }), f.el("td", { class: "num" })),
    (tr, q) => {
      f.setText(tr.cells[0], String(q.name ?? "?") + (q.error ? ` (${String(q.error)})` : ""));
      f.setText(tr.cells[1], f.integer(q.messages));
      f.setText(tr.cells[2], f.integer(q.consumers));
      // a queue nobody reads (the dead letters are read by people, not consumers)
      f.setClass(tr, "bad-row", Boolean(q.error) || (q.consumers === 0 && !/\.dead$/.test(String(q.name))));
    },
  );
}

let statusTimer = 0;
async function pollStatus() {
  clearTimeout(statusTimer);
  const t0 = Date.now();
  try {
    const res = await fetch(`${apiBase}/status`, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
    if (res.status === 401) return sessionEnded();
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const data = await res.json();
    if (!data || typeof data !== "object") throw new Error("not a status document");
    if (f.isNum(data.time)) tokens.skew = data.time - (t0 + Date.now()) / 2000;
    model.status = { data, okAt: performance.now(), error: null };
  } catch (err) {
    model.status.error = err instanceof SyntaxError ? "the answer is not JSON" : `unavailable (${err.message || "network error"})`;
  }
  dirty("status");
  statusTimer = setTimeout(pollStatus, STATUS_EVERY_MS);
}

// -- channels ---------------------------------------------------------------------------------------

/** channel -> max_hz of everything the page shows now. */
function wanted() {
  const want = new Map();
  for (const b of BOARDS) want.set(`leaders.${b}`, 0);
  want.set("halts", 0);
  want.set("alerts", 0);
  for (const s of watch) {
    want.set(`stats.${s}`, WATCH_HZ);
    want.set(`quotes.${s}`, WATCH_HZ);
  }
  want.set(`bars.${chartSym}`, 0); // every bar, never throttled
  want.set(`stats.${chartSym}`, WATCH_HZ); // the chart's header
  for (const ch of model.signalChannels) want.set(ch, 0); // every signal: each is an event
  return want;
}

function syncChannels() {
  const want = wanted();
  const gone = wds.channels().filter((ch) => !want.has(ch));
  wds.unsubscribe(gone);
  for (const ch of gone) {
    model.got.delete(ch);
    model.refused.delete(ch);
    const [kind, sym] = split(ch);
    if (kind === "stats") model.stats.delete(sym);
    if (kind === "quotes") model.quotes.delete(sym);
    if (kind === "signals" && model.signals.delete(ch)) dirty("signals");
  }
  const byHz = new Map();
  for (const [ch, hz] of want) {
    if (!byHz.has(hz)) byHz.set(hz, []);
    byHz.get(hz).push(ch);
  }
  for (const [hz, list] of byHz) wds.subscribe(list, hz);
}

function split(channel) {
  const i = channel.indexOf(".");
  return i < 0 ? [channel, ""] : [channel.slice(0, i), channel.slice(i + 1)];
}

function widgetsOf(channel) {
  const [kind, rest] = split(channel);
  switch (kind) {
    case "leaders":
      return [`board:${rest}`];
    case "stats":
      return ["watchlist", "chart"];
    case "quotes":
      return ["watchlist"];
    case "bars":
      return ["chart"];
    default:
      return [kind];
  }
}

// -- WDS events -------------------------------------------------------------------------------------

const resnapAt = new Map(); // channel -> time of the last fresh snapshot asked, or a timer
function resnapshot(channel) {
  const last = resnapAt.get(channel) || 0;
  if (last < 0) return; // one is already planned
  const wait = last + RESNAPSHOT_EVERY_MS - performance.now();
  const go = () => {
    resnapAt.set(channel, performance.now());
    wds.resnapshot(channel);
  };
  if (wait <= 0) go();
  else {
    resnapAt.set(channel, -1);
    setTimeout(go, wait);
  }
}

function onSnapshot(channel, data) {
  model.got.add(channel);
  model.refused.delete(channel);
  model.lastData = performance.now();
  const [kind, rest] = split(channel);
  switch (kind) {
    case "leaders":
      model.boards[rest] = data && typeof data === "object" ? data : null;
      break;
    case "stats":
      if (data) model.stats.set(rest, data);
      else model.stats.delete(rest);
      break;
    case "quotes":
      if (data) model.quotes.set(rest, data);
      else model.quotes.delete(rest);
      break;
    case "bars":
      if (rest === chartSym) chart.snapshot(data);
      break;
    case "halts":
      model.halted = new Map(Object.entries((data && data.halted) || {}));
      model.haltFeed = feedFromSnapshot(data && data.recent);
      break;
    case "alerts":
      model.alerts = feedFromSnapshot(data && data.recent);
      break;
    case "signals": // a fresh snapshot (a resync too) replaces the channel's signals
      model.signals.set(channel, signalsFromSnapshot(channel, data && data.recent));
      break;
    default:
      return;
  }
  dirty(...widgetsOf(channel));
}

function onUpdate(channel, ev, { gap }) {
  model.lastData = performance.now();
  const [kind, rest] = split(channel);
  const data = ev.data;
  // feeds and bars lose items when updates are skipped (conflated, or a gap): read them again
  const lossy = gap || ev.conflated;
  switch (kind) {
    case "leaders":
      if (data && typeof data === "object") model.boards[rest] = data;
      break;
    case "stats":
      if (data && typeof data === "object") model.stats.set(rest, data);
      break;
    case "quotes":
      if (data && typeof data === "object") model.quotes.set(rest, data);
      break;
    case "bars":
      if (rest === chartSym) {
        if (ev.resync) chart.merge(data);
        else chart.update(ev.type, data);
      }
      if (lossy) resnapshot(channel);
      break;
    case "halts":
      if (data && typeof data.sym === "string") {
        if ((data.kind ?? ev.type) === "halt") model.halted.set(data.sym, data.luld || {});
        else model.halted.delete(data.sym);
        pushFeed(model.haltFeed, data);
      }
      if (lossy) resnapshot(channel);
      break;
    case "alerts":
      pushFeed(model.alerts, data);
      if (lossy) resnapshot(channel);
      break;
    case "signals":
      addSignal(channel, ev);
      if (lossy) resnapshot(channel);
      break;
    default:
      return;
  }
  dirty(...widgetsOf(channel));
}

function onServerError(ev) {
  const channels = Array.isArray(ev.channels) ? ev.channels : [];
  if (["forbidden_channel", "unknown_channel", "too_many_subscriptions"].includes(ev.code)) {
    for (const ch of channels) {
      model.refused.set(ch, ev.code);
      dirty(...widgetsOf(ch));
    }
  }
  if (ev.code === "auth_failed" && ev.id === "reauth") {
    showBanner("The data service refused the refreshed access token; the connection ends when the current one expires.", [loginLink()]);
  }
  console.warn("mdpipe: WDS error", ev.code, ev.message || "", channels.length ? channels.slice(0, 10) : "");
}

// -- connection indicator and staleness ---------------------------------------------------------------

const conn = $('[data-testid="connection"]');
const connText = $(".conn-text", conn);
const connAge = $(".conn-age", conn);
const retryBtn = $(".conn-retry", conn);

function onState(state, detail) {
  conn.dataset.state = state;
  if (state !== CONNECTED) model.got.clear();
  if (state === DISCONNECTED && detail.reason === "auth_failed") {
    const retry = f.el("button", { type: "button" }, "Retry");
    retry.addEventListener("click", () => {
      banner.hidden = true;
      tokens.refresh().then(
        () => wds.reconnectNow(),
        () => wds.reconnectNow(),
      );
    });
    showBanner("The data service refused the access token (authentication failed).", [retry, loginLink()]);
  } else if (state === CONNECTED && !tokens.ended) {
    if (!banner.hidden && !banner.dataset.sticky) banner.hidden = true;
  }
  tick();
}

function connectionText(now) {
  const d = wds.detail || {};
  switch (wds.state) {
    case CONNECTED:
      return "Live";
    case RECONNECTING:
      if (d.refreshing) return "Refreshing the access token…";
      if (d.connecting) return d.attempt ? `Reconnecting… (attempt ${d.attempt + 1})` : "Connecting…";
      if (d.retryAt) return `Reconnecting in ${Math.max(1, Math.ceil((d.retryAt - now) / 1000))} s`;
      return "Reconnecting…";
    case DISCONNECTED:
      return (
        {
          auth_failed: "Disconnected: authentication failed",
          session_ended: "Disconnected: session ended",
          bad_url: "Disconnected: bad data service address",
        }[d.reason] || "Disconnected"
      );
    default:
      return "Connecting…";
  }
}

function widgetChannels(name) {
  if (name.startsWith("board:")) return [`leaders.${name.slice(6)}`];
  if (name === "watchlist") return watch.flatMap((s) => [`stats.${s}`, `quotes.${s}`]);
  if (name === "chart") return [`bars.${chartSym}`];
  if (name === "signals") return model.signalChannels;
  return [name];
}

function tick() {
  const now = Date.now();
  const live = wds.state === CONNECTED;
  const quietS = model.lastData ? (performance.now() - model.lastData) / 1000 : Infinity;
  f.setText(connText, connectionText(now));
  f.setText(connAge, live && model.lastData && quietS >= 3 ? `· last update ${f.age(quietS)} ago` : "");
  retryBtn.hidden = !(wds.state === RECONNECTING && !wds.detail.connecting && !wds.detail.refreshing);
  const quiet = !live || quietS > QUIET_S;
  for (const [name, sec] of Object.entries(widgets)) {
    let stale;
    if (name === "status") stale = !model.status.okAt || performance.now() - model.status.okAt > STATUS_STALE_S * 1000;
    else stale = quiet || !widgetChannels(name).every((ch) => model.got.has(ch) || model.refused.has(ch));
    const v = stale ? "true" : "false";
    if (sec.dataset.stale !== v) sec.dataset.stale = v;
  }
}

function sessionEnded() {
  tokens.ended = true;
  clearTimeout(tokens.timer);
  clearTimeout(statusTimer);
  clearTimeout(signalsTimer);
  wds.stop({ reason: "session_ended" });
  banner.dataset.sticky = "1";
  showBanner("Your session has ended.", [loginLink()]);
  tick();
}

// -- user actions ------------------------------------------------------------------------------------

const watchMsg = $(".form-msg", widgets.watchlist);

function addSymbol(raw) {
  const sym = String(raw || "").trim().toUpperCase();
  if (!f.SYMBOL_RE.test(sym)) return say(`"${sym.slice(0, 20)}" is not a symbol.`), false;
  if (watch.includes(sym)) return say(`${sym} is already in the watchlist.`), false;
  if (watch.length >= MAX_WATCH) return say(`At most ${MAX_WATCH} symbols.`), false;
  watch.push(sym);
  saveWatch();
  syncChannels();
  say("");
  dirty("watchlist");
  return true;
}

function removeSymbol(sym) {
  const i = watch.indexOf(sym);
  if (i < 0) return false;
  watch.splice(i, 1);
  saveWatch();
  syncChannels();
  dirty("watchlist");
  return true;
}

function say(text) {
  watchMsg.textContent = text;
}

function wireUi() {
  $(".watch-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#watch-input");
    if (addSymbol(input.value)) input.value = "";
  });
  $(".chart-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#chart-input");
    setChart(input.value);
    input.blur();
  });
  document.addEventListener("click", (e) => {
    const target = e.target instanceof Element ? e.target : null;
    if (!target) return;
    const remove = target.closest("[data-remove]");
    if (remove) {
      const sym = remove.dataset.remove;
      const row = remove.closest("tr");
      const next = row && (row.nextElementSibling || row.previousElementSibling);
      removeSymbol(sym);
      // keep the keyboard focus in the list
      const btn = next && next.querySelector(".remove");
      if (btn) requestAnimationFrame(() => btn.focus());
      return;
    }
    if (target.closest("a, input, label, form")) return;
    const hit = target.closest("[data-chart], tr[data-sym]");
    if (hit) setChart(hit.dataset.chart || hit.dataset.sym);
  });
  retryBtn.addEventListener("click", () => wds.reconnectNow());
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) dirty("chart", "watchlist", "halts", "alerts", "signals", "status", ...BOARDS.map((b) => `board:${b}`));
  });
}

function showUser() {
  const user = (cfg && cfg.user) || {};
  f.setText($(".user-email"), user.email ?? "");
  const role = $(".user-role");
  f.setText(role, user.role ?? "");
  role.hidden = !user.role;
  // logging out is a POST with the page's CSRF token: a link elsewhere cannot log the user out
  const logout = $(".logout-form");
  if (cfg && typeof cfg.logout === "string") logout.action = cfg.logout;
  const csrf = cfg && cfg.api && cfg.api.csrf;
  if (typeof csrf === "string") logout.elements._csrf.value = csrf;
}

// -- start ---------------------------------------------------------------------------------------------

let tokens;
let wds;

if (!cfg) {
  conn.dataset.state = DISCONNECTED;
  connText.textContent = "Disconnected";
  showBanner("This page has no valid configuration: reload it, or log in again.", [loginLink()]);
} else {
  showUser();
  tokens = new Tokens(cfg.wds);
  tokens.onEnded = sessionEnded;
  wds = new Wds({
    url: cfg.wds.url,
    token: (opts) => tokens.get(opts),
    onSnapshot,
    onUpdate,
    onState,
    onError: onServerError,
  });
  tokens.onFresh = (token) => wds.reauth(token);
  tokens.schedule();
  syncChannels();
  wireUi();
  chart.reset(chartSym);
  dirty("chart", "watchlist", "halts", "alerts", "signals", "status", ...BOARDS.map((b) => `board:${b}`));
  wds.start();
  pollStatus();
  pollSignals();
  setInterval(tick, 1000);

  // for browser tests and the curious: counters and a few actions; never the token
  window.mdpipe = Object.freeze({
    get updates() {
      return wds.counts.updates;
    },
    get snapshots() {
      return wds.counts.snapshots;
    },
    get dropped() {
      return wds.counts.dropped;
    },
    get gaps() {
      return wds.counts.gaps;
    },
    get gapsBy() {
      return Object.fromEntries(wds.gapsBy);
    },
    get connects() {
      return wds.counts.connects;
    },
    get state() {
      return wds.state;
    },
    get channels() {
      return wds.channels();
    },
    get watchlist() {
      return [...watch];
    },
    get chartSymbol() {
      return chartSym;
    },
    get bars() {
      return chart.count;
    },
    get tokenExpiresIn() {
      return Math.round(tokens.remaining());
    },
    get signals() {
      return signalFeed().map((s) => ({ ...s }));
    },
    get signalChannels() {
      return [...model.signalChannels];
    },
    chart: setChart,
    add: addSymbol,
    remove: removeSymbol,
    reconnect: () => wds.reconnectNow(),
    refreshSignals: () => pollSignals(),
  });
}
