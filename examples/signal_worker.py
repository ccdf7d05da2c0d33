"""An example service outside the pipeline: minute-bar breakouts, published on ``signals.breakouts``.

It reads every symbol's minute bars with ``mdc.subscriber`` (``bars.*``, type ``bar.1m``), and when a
bar closes above the highest high (or below the lowest low) of the symbol's previous ``BREAKOUT_BARS``
bars, publishes a signal with ``mdc.publisher``::

    {"type": "breakout", "channel": "signals.breakouts", "seq": 7, "ts": <bar end, ms>, ...,
     "data": {"sym": "AAPL", "side": "up", "close": 191.2, "level": 190.9, "bars": 5, "t": <bar start>}}

WDS relays it to every client whose token allows ``signals.breakouts``; the dashboard's Signals card
lists it. Run it beside the pipeline (``UP_EXAMPLES=1 mdpipe up`` does), with:

- ``REDIS_URL``, ``MDC_PREFIX``: where the market is (read-only use: subscribe);
- ``REDIS_CLUSTER_NODES``: the cluster's seed nodes when the market is on a Redis Cluster, the same
  setting as every component's (it subscribes and publishes there; the URLs then give only the users,
  passwords and TLS);
- ``BREAKOUT_SYMBOLS``: the symbols to follow, comma-separated (all of them, ``bars.*``, when unset);
  needed on a cluster, whose sharded pub/sub has no patterns;
- ``SIGNALS_REDIS_URL``: the credential it publishes with, the Redis user ``mdc.acl`` declares for
  ``breakouts`` (``REDIS_URL`` when not set);
- ``BREAKOUT_BARS`` (5, 2-100): how many previous bars make the range;
- ``SIGNALS_INSTANCE``: its name in its heartbeat (``<prefix>:hb:signals.breakouts:<instance>``);
- ``SIGNALS_HTTP_PORT`` (none when unset): ``/metrics`` (the publisher's ``mdpipe_signals_*``),
  ``/healthz`` and ``/readyz`` (ready while its subscriber is subscribed and its last send succeeded).

It is not part of the image: an example of the pattern, to copy. ``Breakouts`` is the computation alone
(no I/O), tested directly; ``main`` wires it to Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import OrderedDict, deque
from typing import Any
from urllib.parse import urlsplit

from mdc.connect import Target
from mdc.envelope import Update
from mdc.names import valid_symbol
from mdc.publisher import Publisher
from mdc.subscriber import Subscriber
from mdpipe import logs
from mdpipe.observe import ObservabilityServer
from mdpipe.runtime import serve
from mdpipe.settings import CommonSettings, ConfigError, MdcSettings, load

NAME = "breakouts"
MAX_SYMBOLS = 20_000  # symbols followed at once; beyond, the least recently seen is forgotten

log = logging.getLogger("examples.signal_worker")


class Breakouts:
    """Per symbol, the previous ``bars`` minute bars (highs and lows); ``bar()`` says whether the newest
    one broke out of their range. A corrected bar (same start) replaces the one it corrects. Memory:
    at most ``max_symbols`` x ``bars`` bars."""

    def __init__(self, bars: int = 5, max_symbols: int = MAX_SYMBOLS) -> None:
        if not 2 <= bars <= 100:
            raise ValueError("bars must be 2-100")
        self.bars, self.max_symbols = bars, max_symbols
        self._seen: OrderedDict[str, deque[tuple[int, float, float]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def bar(self, sym: str, bar: dict[str, Any]) -> dict[str, Any] | None:
        """The signal of ``sym``'s minute ``bar`` (``{"t","h","l","c",...}``), or None."""
        try:
            start, high, low, close = int(bar["t"]), float(bar["h"]), float(bar["l"]), float(bar["c"])
        except (KeyError, TypeError, ValueError):
            return None
        window = self._seen.get(sym)
        if window is None:
            window = self._seen[sym] = deque(maxlen=self.bars + 1)
            if len(self._seen) > self.max_symbols:
                self._seen.popitem(last=False)
        self._seen.move_to_end(sym)
        if window and start < window[-1][0]:
            return None  # older than what we have: out of order
        if window and start == window[-1][0]:
            window.pop()  # a correction: judged again against the same previous bars
        previous = list(window)[-self.bars :]
        window.append((start, high, low))
        if len(previous) < self.bars:
            return None
        top, bottom = max(b[1] for b in previous), min(b[2] for b in previous)
        if close > top:
            return {"sym": sym, "side": "up", "close": close, "level": top, "bars": self.bars, "t": start}
        if close < bottom:
            return {
                "sym": sym,
                "side": "down",
                "close": close,
                "level": bottom,
                "bars": self.bars,
                "t": start,
            }
        return None


async def main(stop: asyncio.Event) -> int:
    try:
        common, mdc = load(CommonSettings), load(MdcSettings)
        bars = int(os.environ.get("BREAKOUT_BARS", "5"))
        breakouts = Breakouts(bars)
        http_port = int(os.environ.get("SIGNALS_HTTP_PORT") or -1)
        symbols = [s.strip() for s in os.environ.get("BREAKOUT_SYMBOLS", "").split(",") if s.strip()]
        if not all(valid_symbol(s) for s in symbols):
            raise ValueError("BREAKOUT_SYMBOLS must be symbols, comma-separated")
        target = Target.from_settings(common)  # REDIS_CLUSTER_NODES: a cluster
        if target.cluster and not symbols:
            raise ValueError("on a Redis Cluster (REDIS_CLUSTER_NODES) name the symbols: BREAKOUT_SYMBOLS")
    except (ConfigError, ValueError) as exc:
        print(f"signal_worker: {exc}", file=sys.stderr)
        return 2
    logs.setup("signals." + NAME, common.log_level, common.log_format)
    publish_url = os.environ.get("SIGNALS_REDIS_URL") or target.url
    logs.register_secret(urlsplit(publish_url).password)  # never in a log line
    instance = os.environ.get("SIGNALS_INSTANCE") or None
    publish_to = Target(publish_url, target.seeds)  # the same Redis or cluster, its own user

    async with Publisher(publish_to, NAME, prefix=mdc.mdc_prefix, instance=instance) as publisher:

        def on_bar(update: Update) -> None:
            sym = update.channel.partition(".")[2]
            signal = breakouts.bar(sym, update.data) if isinstance(update.data, dict) else None
            if signal is not None:
                publisher.publish(signal, type="breakout", ts=update.ts)

        subscriber = Subscriber(target, mdc.mdc_prefix, client_name="signals-" + NAME)
        for channel in [f"bars.{s}" for s in symbols] or ["bars.*"]:
            subscriber.on(channel, on_bar, types=("bar.1m",))
        http = None
        if http_port >= 0:

            def readiness() -> tuple[bool, dict[str, Any]]:
                ok = subscriber.connected and (publisher.connected or not publisher.stats["batches"])
                return ok, {"subscriber": subscriber.connected, **publisher.figures()}

            http = ObservabilityServer("0.0.0.0", http_port, readiness)  # noqa: S104 - probes come from outside
            await http.start()
        log.info("following minute bars", extra={"bars": bars, "prefix": mdc.mdc_prefix})
        try:
            await subscriber.run(stop)
        finally:
            if http is not None:
                await http.stop()
    return 0


if __name__ == "__main__":
    sys.exit(serve(main))
