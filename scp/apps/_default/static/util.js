// Small helpers shared by the dashboard's modules: number and time formats, DOM building, keyed rows.
// Everything that shows server data goes through textContent (never innerHTML).

export const SYMBOL_RE = /^[A-Za-z0-9.:/_^-]{1,64}$/;

const nf = new Map();
function numberFormat(min, max) {
  const key = `${min}:${max}`;
  let f = nf.get(key);
  if (!f) {
    f = new Intl.NumberFormat(undefined, { minimumFractionDigits: min, maximumFractionDigits: max });
    nf.set(key, f);
  }
  return f;
}
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

export const isNum = (x) => typeof x === "number" && Number.isFinite(x);

/** Decimals for prices near `ref`: 2, or 4 below 1 (penny stocks). */
function decimals(ref) {
  return isNum(ref) && Math.abs(ref) < 1 && ref !== 0 ? 4 : 2;
}

/** A price (decimals by its own size, or by `ref`'s), an en dash when unknown. */
export function price(x, ref = x) {
  if (!isNum(x)) return "–";
  const d = decimals(ref);
  return numberFormat(d, d).format(x);
}

/** A signed change of a price near `ref`: +1.23 / −0.05; no sign when it rounds to zero. */
export function change(x, ref) {
  if (!isNum(x)) return "–";
  const d = decimals(ref ?? x);
  return signed(x, d, numberFormat(d, d).format(Math.abs(x)), "");
}

/** A signed percentage: +1.23% (the value is already in percent). */
export function pct(x) {
  if (!isNum(x)) return "–";
  return signed(x, 2, numberFormat(2, 2).format(Math.abs(x)), "%");
}

function signed(x, d, abs, unit) {
  const zero = Math.round(Math.abs(x) * 10 ** d) === 0;
  return zero ? `${numberFormat(d, d).format(0)}${unit}` : `${x > 0 ? "+" : "−"}${abs}${unit}`;
}

export function volume(x) {
  return isNum(x) ? compact.format(x) : "–";
}

export function integer(x) {
  return isNum(x) ? numberFormat(0, 0).format(x) : "–";
}

/** Epoch milliseconds as local HH:MM:SS. */
export function clock(ms) {
  if (!isNum(ms)) return "–";
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

/** "now", "12 s", "3 min", "2 h" */
export function age(seconds) {
  if (!isNum(seconds)) return "–";
  if (seconds < 1) return "now";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

/** "up", "down" or "flat": a CSS class colouring a change (flat when it shows as zero). */
export function signClass(x, d = 2) {
  if (!isNum(x) || Math.round(Math.abs(x) * 10 ** d) === 0) return "flat";
  return x > 0 ? "up" : "down";
}

/** el("td", {class: "num", dataset: {sym: "X"}}, "text", child...) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

/** Set a node's text only when it changed (no layout work for nothing). */
export function setText(node, text) {
  const s = String(text);
  if (node.textContent !== s) node.textContent = s;
}

export function setClass(node, name, on) {
  if (node.classList.contains(name) !== Boolean(on)) node.classList.toggle(name, Boolean(on));
}

/**
 * Make `tbody` hold one row per item, in order, reusing rows by key: rows keep their identity (and
 * focus) across renders. make(item) builds a row; update(row, item) refreshes its cells.
 */
export function syncRows(tbody, items, key, make, update) {
  const old = new Map();
  for (const row of tbody.rows) old.set(row.dataset.key, row);
  let at = tbody.firstElementChild;
  for (const item of items) {
    const k = String(key(item));
    let row = old.get(k);
    if (row) old.delete(k);
    else {
      row = make(item);
      row.dataset.key = k;
    }
    update(row, item);
    if (row !== at) tbody.insertBefore(row, at);
    else at = at.nextElementSibling;
  }
  for (const row of old.values()) row.remove();
}

/** A button naming a symbol: clicking it charts the symbol (handled by one delegated listener). */
export function symButton(sym) {
  return el("button", { type: "button", class: "sym", dataset: { chart: sym }, title: `Chart ${sym}` }, sym);
}
