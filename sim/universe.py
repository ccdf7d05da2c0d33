"""The synthetic US-stocks universe: which symbols exist, where they list, how busy and volatile they are.

Built from a seeded ``random.Random`` so that a seed always gives the same universe. The first symbols
are familiar tickers (with plausible, not real, prices) so that demos look familiar; the rest are
made-up tickers of 2 to 4 letters. Activity follows a Zipf law: a few names carry most of the flow,
as in the real tape.
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass, field

# Exchange ids as the vendor numbers them: 10 NYSE, 11 NYSE Arca, 12 Nasdaq, 1 NYSE American.
NYSE, ARCA, NASDAQ, AMERICAN = 10, 11, 12, 1
TAPE_OF_LISTING = {NYSE: 1, AMERICAN: 2, ARCA: 2, NASDAQ: 3}

# (symbol, typical price, listing exchange) for the head of the Zipf distribution.
FAMILIAR: tuple[tuple[str, float, int], ...] = (
    ("SPY", 560.0, ARCA),
    ("QQQ", 480.0, NASDAQ),
    ("NVDA", 130.0, NASDAQ),
    ("TSLA", 240.0, NASDAQ),
    ("AAPL", 190.0, NASDAQ),
    ("AMD", 150.0, NASDAQ),
    ("MSFT", 420.0, NASDAQ),
    ("AMZN", 185.0, NASDAQ),
    ("META", 520.0, NASDAQ),
    ("IWM", 215.0, ARCA),
    ("GOOGL", 170.0, NASDAQ),
    ("PLTR", 40.0, NASDAQ),
    ("SOFI", 9.5, NASDAQ),
    ("F", 11.0, NYSE),
    ("BAC", 39.0, NYSE),
    ("INTC", 22.0, NASDAQ),
    ("NFLX", 680.0, NASDAQ),
    ("AVGO", 165.0, NASDAQ),
    ("JPM", 210.0, NYSE),
    ("XLF", 45.0, ARCA),
    ("MU", 105.0, NASDAQ),
    ("SMCI", 42.0, NASDAQ),
    ("COIN", 210.0, NASDAQ),
    ("NIO", 4.8, NYSE),
    ("T", 21.0, NYSE),
    ("PFE", 29.0, NYSE),
    ("WMT", 80.0, NYSE),
    ("XOM", 115.0, NYSE),
    ("DIS", 92.0, NYSE),
    ("BA", 165.0, NYSE),
    ("UBER", 72.0, NYSE),
    ("KO", 70.0, NYSE),
)

ZIPF_EXPONENT = 1.1


@dataclass(slots=True)
class Instrument:
    """One symbol: static properties, then the evolving state of its trading day."""

    sym: str
    listing: int
    tape: int
    tier: int  # LULD tier: 1 (large, +-5% bands) or 2 (+-10%)
    weight: float  # share of the universe's event flow
    daily_vol: float  # daily volatility of returns
    half_spread_bps: float
    mid: float
    # trading-day state
    bid: float = 0.0
    ask: float = 0.0
    seq: int = 0
    trade_id: int = 0
    sigma: float = 0.0  # per-quote log-return volatility, set by the market from the rate
    day_open: float | None = None
    day_high: float = 0.0
    day_low: float = math.inf
    day_volume: int = 0
    day_value: float = 0.0  # sum of price * size, for the day VWAP
    day_trades: int = 0
    day_close: float = 0.0  # the day's last trade price
    last_trade: str = ""  # the JSON of the newest trade emitted ("" when none yet today)
    luld_ref: float | None = None
    bars: dict[str, list] = field(default_factory=dict)  # "A"/"AM" -> [o, h, l, c, v, value, n]
    # parts of its events' JSON, kept by the market (see sim.market)
    quote_head: str = ""
    quote_end: str = ""
    bid_json: str = ""  # rendered when the bid changes
    ask_json: str = ""
    quote_low: float = 0.0  # the mids that give the quote in force: [quote_low, quote_high)
    quote_high: float = 0.0


def build_universe(rng: random.Random, count: int) -> list[Instrument]:
    names = [f[0] for f in FAMILIAR[:count]]
    taken = set(names)
    while len(names) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=rng.choice((2, 3, 3, 4, 4, 4))))
        if name not in taken:
            taken.add(name)
            names.append(name)
    raw_weights = [1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(count)]
    total = sum(raw_weights)
    universe = []
    for rank, (name, raw) in enumerate(zip(names, raw_weights, strict=True)):
        if rank < len(FAMILIAR):
            _, price, listing = FAMILIAR[rank]
            price *= math.exp(rng.gauss(0, 0.05))
        else:
            price = math.exp(rng.uniform(math.log(0.5), math.log(400.0)))
            listing = rng.choice((NYSE, NASDAQ, NASDAQ, ARCA, AMERICAN))
        large = rank < 500
        universe.append(
            Instrument(
                sym=name,
                listing=listing,
                tape=TAPE_OF_LISTING[listing],
                tier=1 if large else 2,
                weight=raw / total,
                daily_vol=rng.uniform(0.01, 0.025) if large else rng.uniform(0.02, 0.08),
                half_spread_bps=rng.uniform(0.05, 1.0) if large else rng.uniform(3.0, 40.0),
                mid=round(price, 2 if price >= 1 else 4),
            )
        )
    return universe
