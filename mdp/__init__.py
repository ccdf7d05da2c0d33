"""MDP, the processors: raw events from MDQ into market state in Redis, published on pub/sub.

Sans-I/O folds (``trades``, ``quotes``, ``aggregates``, ``halts``, ``raw``, plug-ins) turn one MDQ
message into per-symbol records; ``plan`` chunks them into Lua script calls (``lua/``) that merge them
into Redis atomically; ``service`` is the thin async adapter (consumer, pipeline, leaderboards,
heartbeat, metrics). See docs/mdp.md.
"""
