"""End-to-end benchmark of the whole pipeline on one machine: ``python -m bench.e2e --help``.

The emulator (``mdpipe sim``, ``SIM_SEND_TS=true``) feeds MDL, which publishes into RabbitMQ; one MDP
applies the queues to Redis; one WDS serves K WebSocket clients (client processes of their own), each
subscribed to a few symbols (quotes, trades and stats channels) and the four leaderboards. The input
rate is swept (one emulator per step, restarted with the step's ``SIM_RATE``; MDL reconnects to it);
per step, after a warm-up, a steady window gives the throughput at each hop (from each component's
``/metrics`` and the clients' counters), the end-to-end latency (emulator send stamp ``_st``, carried by
the trade and quote documents, to the client's receive time), CPU and RSS per component, and the drops
by cause. The knee is the first step where a hop delivers less than it is offered (by more than
``--tolerance`` %) or p99 exceeds ``--latency-target-ms``. See bench/README.md.

Modules: ``clients`` (the client processes and their shared counters), ``wire`` (the clients' WebSocket
handshake and frames), ``pipeline`` (the components and how they are read), ``report`` (figures, knee,
tables, plot), ``run`` (options and the sweep), ``compare`` (this tree's clients against a baseline's, in
one run: ``python -m bench.e2e.compare``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The other benchmarks are scripts that import their shared modules (procs, pyspy, ...) by plain name:
# make the same names importable here, so the helpers are shared rather than copied.
_BENCH = str(Path(__file__).resolve().parent.parent)
if _BENCH not in sys.path:
    sys.path.insert(0, _BENCH)
