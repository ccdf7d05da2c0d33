"""MDP, the processors: raw events from MDQ into market state, cached in Redis, published on pub/sub.

Each processor owns the state of the symbols of the queues it is the active consumer of, in memory
(``book``). Sans-I/O folds (``trades``, ``quotes``, ``aggregates``, ``halts``, ``raw``, plug-ins) turn a
group of MDQ messages into per-symbol records (``plan``); ``merge`` merges them into the state and
writes what changed (``writes``: one MULTI/EXEC per group, encoded in RESP); ``service`` is the thin
async adapter (consumer, load on takeover, write connection, leaderboards, heartbeat, metrics). See
docs/mdp.md.
"""
