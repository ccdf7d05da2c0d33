"""MDP, the processors: raw events from MDQ into market state in Redis, published on pub/sub.

Not built yet (issue 4).
"""
