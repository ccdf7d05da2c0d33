"""WDS, the widget data service: the authenticated WebSocket gateway for browsers and bots.

``protocol`` (client frames and server events), ``frames`` (server WebSocket frames, built once),
``outbox`` (a client's conflating queue), ``conflation`` (what a waiting update becomes when a newer one
comes) and ``session`` (a client's subscriptions and stitching) are sans I/O; ``tokens`` verifies and
mints JWTs; ``server`` is the async adapter (``mdpipe wds``) and ``writer`` its flush to the clients;
``client`` is the Python client for bots. Protocol: docs/wds-protocol.md.
"""
