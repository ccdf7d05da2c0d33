"""Soak run of the whole pipeline at one steady rate: ``python -m bench.soak --help``.

The same processes as the end-to-end bench (``bench.e2e``: its ``Pipeline`` and ``Clients``): the
emulator (``SIM_SEND_TS=true``) at ``--rate`` for ``--minutes``, MDL, RabbitMQ, MDP, Redis, WDS and K
clients. Every ``--interval`` seconds a sample: RSS and open file descriptors per component (the clients
included), CPU, the hop rates and the end-to-end latency of the interval (differences of the clients'
shared histograms). After ``--warmup``, the samples are judged: memory growth per component (the
least-squares slope of RSS in MB/min, and last minus first), file descriptors (the range, and any steady
climb), and latency drift (p99 of the last quarter against the first). See bench/README.md.

Modules: ``judge`` (windows between samples, verdicts, tables, plot), ``run`` (options and the run).
"""

from __future__ import annotations

from .. import e2e  # noqa: F401 - puts bench/ on sys.path: procs, mdl_throughput... by plain name
