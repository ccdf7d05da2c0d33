"""MDC, the cache contract: Redis keys and pub/sub channels, their encoding, TTLs and bounds.

``names`` (every key and channel), ``envelope`` (the update format), ``reader`` (snapshots and state),
``subscriber`` (pub/sub for services inside the data plane), ``heartbeat``, and ``inspect``
(``mdpipe inspect``). See docs/mdc.md.
"""
