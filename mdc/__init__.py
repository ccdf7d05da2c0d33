"""MDC, the cache contract: Redis keys and pub/sub channels, their encoding, TTLs and bounds.

Not built yet (issue 4).
"""
