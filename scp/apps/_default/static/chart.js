// The minute-bar candlestick chart (TradingView Lightweight Charts, vendored by scripts/build-spa).
//
// A `bars.SYM` snapshot gives the minute bars (oldest first: those of the day and of the previous
// trading day, the vendor's history merged with the pipeline's own by WDS) and the newest second bar;
// then `bar.1m` updates add or correct minute bars, and `bar.1s` updates build the forming minute
// (drawn paler) until its minute bar comes. Bar times are epoch milliseconds (the bar's start); the
// chart gets seconds and shows them in the browser's time zone, with the date where a day begins and
// on bars of another day than today. The widget exposes the number of bars drawn as `data-bars` (and
// the newest bar drawn in `data-last`).

const UP = "#26a69a";
const DOWN = "#ef5350";
const UP_FORMING = "rgba(38, 166, 154, 0.45)";
const DOWN_FORMING = "rgba(239, 83, 80, 0.45)";
const MINUTE = 60_000;
const VISIBLE_BARS = 120;

const timeOfDay = (sec, seconds = false) =>
  new Date(sec * 1000).toLocaleTimeString([], {
    hour: "2-digit",
    minute: "2-digit",
    ...(seconds ? { second: "2-digit" } : {}),
    hour12: false,
  });

const dayOf = (sec) => new Date(sec * 1000).toLocaleDateString([], { month: "short", day: "numeric" });

// Lightweight Charts' TickMarkType: Year 0, Month 1, DayOfMonth 2, Time 3, TimeWithSeconds 4
const tickMark = (sec, type) => (type <= 2 ? dayOf(sec) : timeOfDay(sec));

/** The crosshair's time: "09:30" today, "Nov 19 15:59" on another day. */
const crosshairTime = (sec) => {
  const day = new Date(sec * 1000).toDateString() === new Date().toDateString() ? "" : `${dayOf(sec)} `;
  return day + timeOfDay(sec);
};

const valid = (b) =>
  b && typeof b.t === "number" && [b.o, b.h, b.l, b.c].every((x) => typeof x === "number" && Number.isFinite(x));

export class BarChart {
  /** `host` holds the canvas, `counter` gets `data-bars`; `LWC` is window.LightweightCharts (null:
   * the bars are kept, nothing is drawn). */
  constructor(host, counter, LWC) {
    this.host = host;
    this.counter = counter;
    this.bars = new Map(); // start ms -> {t, o, h, l, c, v, forming}
    this.lastFinal = -Infinity; // start of the newest minute bar received
    this.seconds = new Map(); // the forming minute's second bars: start ms -> bar
    this.formingAt = null; // start of the forming minute
    this.drawnLast = -Infinity; // time (ms) of the newest point given to the series
    this.sym = null;
    this.chart = null;
    if (!LWC) return;
    const css = getComputedStyle(document.documentElement);
    const fg = css.getPropertyValue("--fg-dim").trim() || "#9aa4b2";
    const grid = css.getPropertyValue("--grid").trim() || "#1f2630";
    this.chart = LWC.createChart(host, {
      autoSize: true,
      layout: { background: { type: "solid", color: "transparent" }, textColor: fg, attributionLogo: false },
      grid: { vertLines: { color: grid }, horzLines: { color: grid } },
      rightPriceScale: { borderColor: grid },
      timeScale: {
        borderColor: grid,
        timeVisible: true,
        secondsVisible: false,
        tickMarkFormatter: (t, type) => (typeof t === "number" ? tickMark(t, type) : null),
      },
      localization: { timeFormatter: (t) => (typeof t === "number" ? crosshairTime(t) : "") },
      crosshair: { mode: LWC.CrosshairMode ? LWC.CrosshairMode.Normal : 0 },
    });
    this.candles = this.chart.addSeries(LWC.CandlestickSeries, {
      upColor: UP,
      downColor: DOWN,
      borderUpColor: UP,
      borderDownColor: DOWN,
      wickUpColor: UP,
      wickDownColor: DOWN,
      priceLineVisible: true,
    });
    this.volume = this.chart.addSeries(LWC.HistogramSeries, {
      priceScaleId: "volume",
      priceFormat: { type: "volume" },
      lastValueVisible: false,
      priceLineVisible: false,
    });
    this.chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  }

  /** A new symbol: no bars until its snapshot. */
  reset(sym) {
    this.sym = sym;
    this.bars.clear();
    this.seconds.clear();
    this.formingAt = null;
    this.lastFinal = -Infinity;
    this._redraw(true);
  }

  /** The channel's snapshot (or resync): {"second": bar|null, "minute": [bar, ...]} or null. */
  snapshot(data) {
    const first = this.bars.size === 0;
    this.bars.clear();
    this.seconds.clear();
    this.formingAt = null;
    this.lastFinal = -Infinity;
    for (const b of (data && Array.isArray(data.minute) ? data.minute : [])) {
      if (!valid(b)) continue;
      this.bars.set(b.t, this._bar(b, false));
      this.lastFinal = Math.max(this.lastFinal, b.t);
    }
    if (data && valid(data.second)) this._second(data.second);
    this._redraw(first);
  }

  /** An update marked `resync` (a processor merged the vendor's state): its data is the channel's
   * state, as a snapshot's; its bars correct or add to those drawn (the history stays). */
  merge(data) {
    for (const b of (data && Array.isArray(data.minute) ? data.minute : [])) {
      if (!valid(b)) continue;
      this.bars.set(b.t, this._bar(b, false));
      this.lastFinal = Math.max(this.lastFinal, b.t);
    }
    if (this.formingAt !== null && this.formingAt <= this.lastFinal) {
      this.seconds.clear(); // its minute bar came (and took its place)
      this.formingAt = null;
    }
    if (data && valid(data.second)) this._second(data.second);
    this._redraw(false);
  }

  /** A `bars.SYM` update: `bar.1m` or `bar.1s`. */
  update(type, bar) {
    if (!valid(bar)) return;
    if (type === "bar.1m") {
      this.bars.set(bar.t, this._bar(bar, false));
      if (bar.t > this.lastFinal) this.lastFinal = bar.t;
      if (this.formingAt !== null && this.formingAt <= bar.t) {
        this.seconds.clear();
        this.formingAt = null;
      }
      this._draw(bar.t);
    } else if (type === "bar.1s") {
      const at = this._second(bar);
      if (at !== null) this._draw(at);
    }
  }

  get count() {
    return this.bars.size;
  }

  /** The newest bar (for the header): {t, o, h, l, c, v, forming} or null. */
  last() {
    let best = null;
    for (const b of this.bars.values()) if (!best || b.t > best.t) best = b;
    return best;
  }

  // -- internals -----------------------------------------------------------------------------------

  _bar(b, forming) {
    return { t: b.t, o: b.o, h: b.h, l: b.l, c: b.c, v: typeof b.v === "number" ? b.v : 0, forming };
  }

  /** Fold a second bar into the forming minute; returns that minute's start, or null if ignored. */
  _second(b) {
    const m = Math.floor(b.t / MINUTE) * MINUTE;
    if (m <= this.lastFinal) return null; // that minute's bar is already here
    if (this.formingAt !== m) {
      this.seconds.clear();
      this.formingAt = m;
    }
    this.seconds.set(b.t, b);
    const secs = [...this.seconds.values()].sort((x, y) => x.t - y.t);
    const agg = {
      t: m,
      o: secs[0].o,
      h: Math.max(...secs.map((s) => s.h)),
      l: Math.min(...secs.map((s) => s.l)),
      c: secs[secs.length - 1].c,
      v: secs.reduce((n, s) => n + (typeof s.v === "number" ? s.v : 0), 0),
    };
    this.bars.set(m, this._bar(agg, true));
    return m;
  }

  _points(b) {
    const time = Math.floor(b.t / 1000);
    const up = b.c >= b.o;
    const candle = { time, open: b.o, high: b.h, low: b.l, close: b.c };
    if (b.forming) {
      const color = up ? UP_FORMING : DOWN_FORMING;
      Object.assign(candle, { color, borderColor: color, wickColor: color });
    }
    const vol = { time, value: b.v, color: up ? "rgba(38, 166, 154, 0.35)" : "rgba(239, 83, 80, 0.35)" };
    return [candle, vol];
  }

  /** Draw the bar starting at `t` (ms): the newest is updated in place, an older one redraws all. */
  _draw(t) {
    this.counter.dataset.bars = String(this.chart ? this.bars.size : 0);
    if (!this.chart) return;
    const b = this.bars.get(t);
    if (!b) return;
    if (t >= this.drawnLast) {
      const [candle, vol] = this._points(b);
      this.candles.update(candle);
      this.volume.update(vol);
      this.drawnLast = t;
      this._mark(b);
    } else {
      this._redraw(false);
    }
  }

  /** `data-last` on the counter: the newest bar drawn ("t o h l c v"), so a test sees the chart move. */
  _mark(b) {
    this.counter.dataset.last = b ? `${b.t} ${b.o} ${b.h} ${b.l} ${b.c} ${b.v}` : "";
  }

  _redraw(fit) {
    this.counter.dataset.bars = String(this.chart ? this.bars.size : 0);
    if (!this.chart) return;
    const sorted = [...this.bars.values()].sort((a, b) => a.t - b.t);
    const candles = [];
    const vols = [];
    for (const b of sorted) {
      const [c, v] = this._points(b);
      candles.push(c);
      vols.push(v);
    }
    this.candles.setData(candles);
    this.volume.setData(vols);
    this.drawnLast = sorted.length ? sorted[sorted.length - 1].t : -Infinity;
    this._mark(sorted[sorted.length - 1]);
    if (fit && sorted.length) {
      const n = sorted.length;
      this.chart.timeScale().setVisibleLogicalRange({ from: Math.max(-2, n - VISIBLE_BARS), to: n + 2 });
    }
  }
}
