"""The synthetic markets other than stocks: crypto, forex, indices and options, with no I/O.

``AssetMarket`` has the interface of ``sim.market.SyntheticMarket`` that the sources use (``tick_json``,
``tick``, ``summary``, ``now_ms``, ``tick_ms``, ``event_types``), for one market each, with the event
types, field names and symbol forms of that market as the ``massive`` client's models read them (see
docs/massive-protocol.md, which also says which details are the emulator's own choices):

- crypto (``X:BTC-USD``): trades ``XT`` and quotes ``XQ``, second ``XAS`` and minute ``XA`` aggregates of
  the trades, with ``pair``; open at all hours;
- forex (``C:EUR-USD``): quotes ``C`` (``p`` the pair, ``x``, ``a`` ask, ``b`` bid, ``t``) and second
  ``CAS`` and minute ``CA`` aggregates of the quotes' mids, with ``pair``; no trades; open from Sunday
  17:00 to Friday 17:00 New York time;
- indices (``I:SPX``): one value ``V`` (``T``, ``val``, ``t``) per index per second, second ``A`` and
  minute ``AM`` aggregates of the values, with ``sym``; during the stocks' regular session only;
- options (``O:SPY251219C00650000``): trades ``T`` (sparse), quotes ``Q``, aggregates ``A`` and ``AM``
  with ``sym``, as stocks; prices from Black-Scholes on a random walk of each underlying; at all hours,
  as the stocks market of ``sim.market`` (which has no session either).

The same seed, universe size, rate, tick and start always give the same events. Events are flat JSON
objects whose type comes first and symbol second, as ``sim.frames`` needs to filter them. This market
feeds no REST ledger (``summary`` is empty): the REST API is the stocks market's.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from .calendar import EASTERN, day_bounds, eastern, session, trading_day
from .market import FLATOUT_NOMINAL_RATE, TickSummary

MARKETS: tuple[str, ...] = ("crypto", "forex", "indices", "options")
EVENT_TYPES: dict[str, frozenset[str]] = {
    "crypto": frozenset({"XT", "XQ", "XA", "XAS"}),
    "forex": frozenset({"C", "CA", "CAS"}),
    "indices": frozenset({"V", "A", "AM"}),
    "options": frozenset({"T", "Q", "A", "AM"}),
}
# (second bar, minute bar) event types of each market
BAR_TYPES: dict[str, tuple[str, str]] = {
    "crypto": ("XAS", "XA"),
    "forex": ("CAS", "CA"),
    "indices": ("A", "AM"),
    "options": ("A", "AM"),
}
TRADE_SHARE = {"crypto": 0.25, "forex": 0.0, "options": 0.05}  # of trades and quotes
DAY_S = {"crypto": 86_400, "forex": 86_400, "options": 23_400}  # seconds of activity a day, for the vol
FOREX_OPEN = dt.time(17, 0)  # Sunday 17:00 New York; closes Friday 17:00

# Emulator choices (docs/massive-protocol.md): exchange ids the references do not list.
CRYPTO_EXCHANGES = (1, 2, 6, 23)  # Coinbase, Bitfinex, Bitstamp, Kraken, as the emulator numbers them
CRYPTO_SELL, CRYPTO_BUY = 1, 2  # trade conditions: sell side, buy side
FOREX_EXCHANGE = 48  # the one forex quote venue
OPTIONS_EXCHANGES = (300, 301, 302, 303, 308, 312, 313, 322)  # OPRA participants, as numbered here
OPTIONS_TRADE_CONDITION = 209  # regular trade

# (pair, price, daily volatility, share of the flow, decimals)
CRYPTO: tuple[tuple[str, float, float, float, int], ...] = (
    ("X:BTC-USD", 90_000.0, 0.03, 30, 2),
    ("X:ETH-USD", 3_000.0, 0.04, 20, 2),
    ("X:SOL-USD", 180.0, 0.05, 10, 3),
    ("X:XRP-USD", 2.2, 0.05, 8, 5),
    ("X:DOGE-USD", 0.32, 0.06, 6, 6),
    ("X:ADA-USD", 0.9, 0.05, 4, 5),
    ("X:LTC-USD", 100.0, 0.04, 3, 3),
    ("X:BTC-EUR", 83_000.0, 0.03, 6, 2),
    ("X:ETH-BTC", 0.033, 0.03, 3, 6),
    ("X:AVAX-USD", 35.0, 0.06, 2, 4),
)
FOREX: tuple[tuple[str, float, float, float, int], ...] = (
    ("C:EUR-USD", 1.08, 0.005, 30, 5),
    ("C:USD-JPY", 150.0, 0.006, 20, 3),
    ("C:GBP-USD", 1.27, 0.006, 12, 5),
    ("C:AUD-USD", 0.66, 0.007, 8, 5),
    ("C:USD-CAD", 1.36, 0.005, 7, 5),
    ("C:USD-CHF", 0.88, 0.006, 6, 5),
    ("C:NZD-USD", 0.60, 0.007, 4, 5),
    ("C:EUR-GBP", 0.85, 0.004, 4, 5),
    ("C:EUR-JPY", 162.0, 0.007, 4, 3),
    ("C:USD-MXN", 17.2, 0.009, 3, 4),
    ("C:USD-CNH", 7.2, 0.003, 2, 4),
)
INDICES: tuple[tuple[str, float, float, float, int], ...] = (
    ("I:SPX", 6_000.0, 0.01, 1, 2),
    ("I:NDX", 21_000.0, 0.013, 1, 2),
    ("I:DJI", 44_000.0, 0.009, 1, 2),
    ("I:RUT", 2_300.0, 0.015, 1, 2),
    ("I:VIX", 15.0, 0.08, 1, 2),
    ("I:COMP", 19_500.0, 0.013, 1, 2),
    ("I:SOX", 5_000.0, 0.02, 1, 2),
    ("I:XSP", 600.0, 0.01, 1, 2),
)
# Options: (underlying, spot, strike step, implied volatility, share of the flow)
UNDERLYINGS: tuple[tuple[str, float, float, float, float], ...] = (
    ("SPY", 600.0, 5.0, 0.15, 35),
    ("QQQ", 520.0, 5.0, 0.20, 20),
    ("NVDA", 180.0, 5.0, 0.45, 18),
    ("TSLA", 350.0, 10.0, 0.55, 15),
    ("AAPL", 230.0, 5.0, 0.25, 12),
)
OPTION_EXPIRIES = 3  # monthly expiries (third Fridays) after the start date, per underlying
OPTION_STRIKES = 10  # strikes each side of the money, per expiry: 21 strikes x 2 rights
RATE = 0.04  # risk-free rate of the options model


@dataclass(slots=True)
class Asset:
    """One pair, index or option contract, and its state."""

    sym: str
    mid: float
    daily_vol: float
    weight: float
    decimals: int
    half_spread: float  # relative to the mid
    sigma: float = 0.0  # per-event log step
    seq: int = 0
    trade_id: int = 0
    price: float = 0.0  # the last trade (or value)
    bars: dict[str, list] = field(default_factory=dict)  # bar type -> [o, h, l, c, v, value, n]
    day_open: float | None = None
    day_volume: float = 0.0
    day_value: float = 0.0
    # options only
    underlying: Underlying | None = None
    strike: float = 0.0
    expiry_ms: int = 0
    call: bool = True


@dataclass(slots=True)
class Underlying:
    sym: str
    spot: float
    vol: float
    sigma: float = 0.0


class AssetMarket:
    def __init__(
        self, market: str, *, seed: int, symbols: int, rate: int, tick_ms: int, start_ms: int
    ) -> None:
        if market not in EVENT_TYPES:
            raise ValueError(f"no synthetic {market} market")
        if tick_ms <= 0 or 1000 % tick_ms:
            raise ValueError("tick_ms must divide 1000")
        self.market = market
        self.event_types = EVENT_TYPES[market]
        self.rng = random.Random(seed)
        self.tick_ms = tick_ms
        self.rate = rate
        self.now_ms = start_ms - start_ms % 1000
        self.effective_rate = rate or FLATOUT_NOMINAL_RATE
        self.second_bar, self.minute_bar = BAR_TYPES[market]
        self.trade_share = TRADE_SHARE.get(market, 0.0)
        self.instruments = build_assets(market, self.rng, symbols, self.now_ms)
        total = math.fsum(a.weight for a in self.instruments)
        self._cum: list[float] = []
        acc = 0.0
        for a in self.instruments:
            acc += a.weight / total
            self._cum.append(acc)
            per_day = max(1.0, self.effective_rate * a.weight / total * DAY_S.get(market, 86_400))
            a.sigma = a.daily_vol / math.sqrt(per_day)
        for u in {a.underlying.sym: a.underlying for a in self.instruments if a.underlying}.values():
            per_day = max(1.0, self.effective_rate * DAY_S["options"] / len(UNDERLYINGS))
            u.sigma = u.vol / math.sqrt(252 * per_day)
        self._expected_per_tick = self.effective_rate * tick_ms / 1000
        self._dirty: dict[str, dict[str, Asset]] = {self.second_bar: {}, self.minute_bar: {}}
        self._day_end = day_bounds(trading_day(self.now_ms))[1]

    # -- the stream -------------------------------------------------------------------------------

    def is_open(self, t_ms: int) -> bool:
        return market_open(self.market, t_ms)

    def tick(self) -> list[dict[str, Any]]:
        return [orjson.loads(text) for text in self.tick_json()]

    def tick_json(self) -> list[str]:
        t0 = self.now_ms
        t1 = t0 + self.tick_ms
        if t0 >= self._day_end:
            self._new_day(t0)
        events: list[str] = []
        if self.market == "indices":
            if t1 % 1000 == 0 and self.is_open(t0):
                for asset in self.instruments:
                    self._value(asset, t1 - 1, events)
        elif self.is_open(t0):
            self._flow(t0, events)
        self.now_ms = t1
        if t1 % 1000 == 0:
            self._close_bars(self.second_bar, 1000, t1, events)
        if t1 % 60_000 == 0:
            self._close_bars(self.minute_bar, 60_000, t1, events)
        return events

    def summary(self) -> TickSummary:
        """Nothing for the REST ledger: its answers are the stocks market's."""
        return TickSummary(self.now_ms - self.tick_ms, self.now_ms, {}, {}, [])

    def _flow(self, t0: int, events: list[str]) -> None:
        rng = self.rng
        expected = self._expected_per_tick
        count = (
            max(0, round(rng.gauss(expected, math.sqrt(expected))))
            if expected >= 1
            else int(rng.random() < expected)
        )
        picks = rng.choices(self.instruments, cum_weights=self._cum, k=count)
        times = sorted(t0 + int(rng.random() * self.tick_ms) for _ in range(count))
        quote = {"crypto": self._crypto_quote, "forex": self._forex_quote, "options": self._option_quote}[
            self.market
        ]
        trade = self._crypto_trade if self.market == "crypto" else self._option_trade
        for asset, t in zip(picks, times, strict=True):
            self._move(asset)
            if rng.random() < self.trade_share:
                events.append(trade(asset, t))
            else:
                events.append(quote(asset, t))

    def _move(self, asset: Asset) -> None:
        step = self.rng.gauss(0.0, 1.0)
        u = asset.underlying
        if u is None:
            asset.mid *= math.exp(asset.sigma * step)
        else:
            u.spot *= math.exp(u.sigma * step)
            years = max(asset.expiry_ms - self.now_ms, 3_600_000) / (365.25 * 86_400_000)
            asset.mid = max(0.01, black_scholes(u.spot, asset.strike, years, u.vol, asset.call))

    # -- events -----------------------------------------------------------------------------------

    def _sides(self, asset: Asset) -> tuple[float, float]:
        d = asset.decimals
        step = 10.0**-d
        half = max(step / 2, asset.mid * asset.half_spread)
        bid = round(max(step, asset.mid - half), d)
        ask = round(max(bid + step, asset.mid + half), d)
        return bid, ask

    def _crypto_quote(self, asset: Asset, t: int) -> str:
        rng = self.rng
        bid, ask = self._sides(asset)
        bs, as_ = round(rng.uniform(0.001, 5.0), 8), round(rng.uniform(0.001, 5.0), 8)
        x = CRYPTO_EXCHANGES[rng.getrandbits(2)]
        return (
            f'{{"ev":"XQ","pair":"{asset.sym}","bp":{bid!r},"bs":{bs!r},"ap":{ask!r},"as":{as_!r},'
            f'"t":{t},"x":{x},"r":{t + 1 + rng.getrandbits(5)}}}'
        )

    def _crypto_trade(self, asset: Asset, t: int) -> str:
        rng = self.rng
        bid, ask = self._sides(asset)
        buy = rng.random() < 0.5
        price = ask if buy else bid
        size = round(math.exp(rng.uniform(math.log(1e-4), math.log(2.0))) * 1000 / max(asset.mid, 1), 8)
        size = max(size, 1e-8)
        asset.trade_id += 1
        self._account(asset, price, size)
        x = CRYPTO_EXCHANGES[rng.getrandbits(2)]
        return (
            f'{{"ev":"XT","pair":"{asset.sym}","x":{x},"i":"{asset.trade_id}","p":{price!r},"s":{size!r},'
            f'"c":[{CRYPTO_BUY if buy else CRYPTO_SELL}],"t":{t},"r":{t + 1 + rng.getrandbits(5)}}}'
        )

    def _forex_quote(self, asset: Asset, t: int) -> str:
        bid, ask = self._sides(asset)
        mid = round((bid + ask) / 2, asset.decimals + 1)
        self._account(asset, mid, 1)  # the bars are of the quotes' mids; volume counts quotes
        return f'{{"ev":"C","p":"{asset.sym}","x":{FOREX_EXCHANGE},"a":{ask!r},"b":{bid!r},"t":{t}}}'

    def _option_quote(self, asset: Asset, t: int) -> str:
        rng = self.rng
        bid, ask = self._sides(asset)
        asset.seq += 1
        bx = OPTIONS_EXCHANGES[rng.getrandbits(3)]
        ax = OPTIONS_EXCHANGES[rng.getrandbits(3)]
        return (
            f'{{"ev":"Q","sym":"{asset.sym}","bx":{bx},"ax":{ax},"bp":{bid!r},"ap":{ask!r},'
            f'"bs":{1 + rng.getrandbits(7)},"as":{1 + rng.getrandbits(7)},"t":{t},"q":{asset.seq}}}'
        )

    def _option_trade(self, asset: Asset, t: int) -> str:
        rng = self.rng
        bid, ask = self._sides(asset)
        price = (bid, ask)[rng.getrandbits(1)]
        size = int(math.exp(rng.uniform(0.0, math.log(200.0))))  # 1 to 199 contracts
        asset.seq += 1
        self._account(asset, price, size)
        x = OPTIONS_EXCHANGES[rng.getrandbits(3)]
        return (
            f'{{"ev":"T","sym":"{asset.sym}","x":{x},"p":{price!r},"s":{size},'
            f'"c":[{OPTIONS_TRADE_CONDITION}],"t":{t},"q":{asset.seq}}}'
        )

    def _value(self, asset: Asset, t: int, events: list[str]) -> None:
        self._move(asset)
        value = round(asset.mid, asset.decimals)
        self._account(asset, value, 0)
        events.append(f'{{"ev":"V","T":"{asset.sym}","val":{value!r},"t":{t}}}')

    # -- bars and the day -------------------------------------------------------------------------

    def _account(self, asset: Asset, price: float, size: float) -> None:
        if asset.day_open is None:
            asset.day_open = price
        asset.price = price
        asset.day_volume += size
        asset.day_value += price * size
        for kind, dirty in self._dirty.items():
            bar = asset.bars.get(kind)
            if bar is None:
                asset.bars[kind] = [price, price, price, price, size, price * size, 1]
                dirty[asset.sym] = asset
                continue
            bar[1] = max(bar[1], price)
            bar[2] = min(bar[2], price)
            bar[3] = price
            bar[4] += size
            bar[5] += price * size
            bar[6] += 1

    def _close_bars(self, kind: str, span: int, end: int, events: list[str]) -> None:
        dirty = self._dirty[kind]
        for asset in dirty.values():
            o, h, low, c, v, value, n = asset.bars.pop(kind)
            events.append(self._bar(kind, asset, o, h, low, c, v, value, n, end - span, end))
        dirty.clear()

    def _bar(self, kind: str, a: Asset, o, h, low, c, v, value, n: int, s: int, e: int) -> str:
        d = a.decimals
        if self.market == "crypto":
            v = round(v, 8)
            vw = round(value / v, d) if v else c
            return (
                f'{{"ev":"{kind}","pair":"{a.sym}","v":{v!r},"vw":{vw!r},"z":{round(v / n, 8)!r},'
                f'"o":{o!r},"c":{c!r},"h":{h!r},"l":{low!r},"s":{s},"e":{e}}}'
            )
        if self.market == "forex":
            return (
                f'{{"ev":"{kind}","pair":"{a.sym}","o":{o!r},"c":{c!r},"h":{h!r},"l":{low!r},"v":{v},'
                f'"s":{s},"e":{e}}}'
            )
        if self.market == "indices":
            return (
                f'{{"ev":"{kind}","sym":"{a.sym}","op":{a.day_open!r},"o":{o!r},"c":{c!r},"h":{h!r},'
                f'"l":{low!r},"s":{s},"e":{e}}}'
            )
        vw, day_vw = round(value / v, 4), round(a.day_value / a.day_volume, 4)
        return (
            f'{{"ev":"{kind}","sym":"{a.sym}","v":{v},"av":{int(a.day_volume)},"op":{a.day_open!r},'
            f'"vw":{vw!r},"o":{o!r},"c":{c!r},"h":{h!r},"l":{low!r},"a":{day_vw!r},"z":{v // n},'
            f'"s":{s},"e":{e}}}'
        )

    def _new_day(self, t: int) -> None:
        """A new trading day (04:00 New York, as for stocks): the day's open, volume and VWAP restart."""
        for asset in self.instruments:
            asset.day_open, asset.day_volume, asset.day_value = None, 0.0, 0.0
        self._day_end = day_bounds(trading_day(t))[1]


# -- calendars and universes -------------------------------------------------------------------------


def market_open(market: str, t_ms: int) -> bool:
    """Whether ``market`` publishes at ``t_ms``: crypto always; forex from Sunday 17:00 to Friday 17:00
    New York time; index values in the stocks' regular session; options as the stocks market (always)."""
    if market == "forex":
        local = eastern(t_ms)
        day, now = local.weekday(), local.time()  # Monday is 0, Sunday 6
        if day == 5:
            return False
        if day == 6:
            return now >= FOREX_OPEN
        return day < 4 or now < FOREX_OPEN
    if market == "indices":
        return session(t_ms) == "regular"
    return True


def build_assets(market: str, rng: random.Random, count: int, start_ms: int) -> list[Asset]:
    """The first ``count`` instruments of ``market`` (busiest first), prices drawn around the table's."""
    if market == "options":
        return build_options(rng, count, start_ms)
    table = {"crypto": CRYPTO, "forex": FOREX, "indices": INDICES}[market]
    spreads = {"crypto": (0.5, 3.0), "forex": (0.3, 1.5), "indices": (0.0, 0.0)}[market]
    assets = []
    for sym, price, vol, weight, decimals in table[:count]:
        mid = round(price * math.exp(rng.gauss(0, 0.01)), decimals)
        half = rng.uniform(*spreads) / 10_000
        assets.append(Asset(sym, mid, vol, weight, decimals, half))
    return assets


def third_fridays(after: dt.date, count: int) -> list[dt.date]:
    """The next ``count`` monthly expiries (third Friday of the month) strictly after ``after``."""
    out: list[dt.date] = []
    year, month = after.year, after.month
    while len(out) < count:
        first = dt.date(year, month, 1)
        friday = first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14)
        if friday > after:
            out.append(friday)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def option_symbol(underlying: str, expiry: dt.date, call: bool, strike: float) -> str:
    """The OCC symbol with the vendor's ``O:`` prefix: ``O:SPY251219C00650000``."""
    return f"O:{underlying}{expiry:%y%m%d}{'C' if call else 'P'}{round(strike * 1000):08d}"


def build_options(rng: random.Random, count: int, start_ms: int) -> list[Asset]:
    """Contracts of ``UNDERLYINGS``: ``OPTION_EXPIRIES`` expiries x 2 ``OPTION_STRIKES`` + 1 strikes x
    calls and puts each; the busiest ``count`` (near the money, near expiry) are kept."""
    expiries = third_fridays(eastern(start_ms).date(), OPTION_EXPIRIES)
    contracts: list[Asset] = []
    for name, spot, step, vol, share in UNDERLYINGS:
        spot = round(spot * math.exp(rng.gauss(0, 0.01)), 2)
        u = Underlying(name, spot, vol)
        atm = round(spot / step) * step
        for e, expiry in enumerate(expiries):
            expiry_ms = int(dt.datetime.combine(expiry, dt.time(16), tzinfo=EASTERN).timestamp() * 1000)
            years = max(expiry_ms - start_ms, 3_600_000) / (365.25 * 86_400_000)
            for k in range(-OPTION_STRIKES, OPTION_STRIKES + 1):
                strike = atm + k * step
                if strike <= 0:
                    continue
                for call in (True, False):
                    mid = max(0.01, black_scholes(spot, strike, years, vol, call))
                    weight = share * math.exp(-abs(k) / 4) / (e + 1)
                    asset = Asset(option_symbol(name, expiry, call, strike), mid, 0.0, weight, 2, 0.02)
                    asset.underlying, asset.strike, asset.expiry_ms, asset.call = u, strike, expiry_ms, call
                    contracts.append(asset)
    contracts.sort(key=lambda a: -a.weight)  # stable: ties keep the table's order
    return contracts[:count]


def black_scholes(spot: float, strike: float, years: float, vol: float, call: bool) -> float:
    """The Black-Scholes price of a European option (no dividends, ``RATE`` risk-free)."""
    sd = vol * math.sqrt(years)
    d1 = (math.log(spot / strike) + (RATE + vol * vol / 2) * years) / sd
    d2 = d1 - sd
    discount = strike * math.exp(-RATE * years)
    if call:
        return spot * _cdf(d1) - discount * _cdf(d2)
    return discount * _cdf(-d2) - spot * _cdf(-d1)


def _cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


__all__ = ["MARKETS", "AssetMarket", "black_scholes", "market_open", "option_symbol", "third_fridays"]
