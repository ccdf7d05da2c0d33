"""WDS, the widget data service: the authenticated WebSocket gateway for browsers and bots.

``protocol`` (frames and events), ``outbox`` (a client's conflating queue) and ``session`` (a client's
subscriptions and stitching) are sans I/O; ``tokens`` verifies and mints JWTs; ``server`` is the async
adapter (``mdpipe wds``); ``client`` is the Python client for bots. Protocol: docs/wds-protocol.md.
"""
