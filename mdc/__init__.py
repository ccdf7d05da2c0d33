"""MDC, the cache contract: Redis keys and pub/sub channels, their encoding, TTLs and bounds.

Today it holds the listener's control names (``mdc.names``); market state arrives with issue 4.
"""
