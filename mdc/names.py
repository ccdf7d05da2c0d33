"""Every Redis key and pub/sub channel name mdpipe uses, defined once (see docs/mdc.md).

Values are JSON (orjson). Names carry the market (``stocks``, ``futures/cme``...) because one Redis may
serve several listeners, one per market.
"""

from __future__ import annotations


def mdl_desired(market: str) -> str:
    """Key, no TTL, written by the control plane: ``{"subscriptions": "T.*,Q.AAPL", "paused": false}``.

    The desired state of the listener of ``market``; it wins over MASSIVE_SUBSCRIPTIONS at start.
    """
    return f"mdl:{market}:desired"


def mdl_control(market: str) -> str:
    """Channel the listener of ``market`` listens on: ``{"action": "reload"}`` (re-read the desired
    state) or ``{"action": "reconnect"}`` (drop the vendor connection and connect again)."""
    return f"mdl:{market}:control"


def mdl_status(market: str) -> str:
    """Key, TTL ``MDL_STATUS_TTL_S``, refreshed by the running listener: what it applied and how it is."""
    return f"mdl:{market}:status"


MDL_STATUS_TTL_S = 10
