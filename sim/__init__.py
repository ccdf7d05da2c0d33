"""The Massive emulator: a local WebSocket server that speaks the vendor's protocol.

The real ``massive`` client, pointed at it with ``feed="127.0.0.1:PORT", secure=False``, cannot tell
the difference. It serves a deterministic synthetic US-stocks market or replays a recording, and
injects the vendor's failure modes on demand. See docs/emulator.md.

It also serves the vendor's REST API, from a ledger of what the stream has shown.

Sans-I/O core: ``universe``, ``market``, ``frames``, ``protocol``, ``recording``, ``calendar``,
``prevday`` (previous days), ``ledger`` (the day as the tape showed it), ``restapi`` (requests and
answers). I/O adapters: ``sources``, ``server``, ``resthttp``, ``recorder``.
"""
