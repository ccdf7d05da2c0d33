"""SCP's HTTP server under attack and under normal load: ``python -m bench.scp_attacks [--label L]``.

Starts ``mdpipe scp`` as the tests do (``tests/scp_support.py``: 2 workers, its own PostgreSQL database,
the local Redis), then, one after the other:

- ``load``: 8 client threads with kept-alive connections for ``--seconds`` each on ``GET /healthz``, then
  on ``GET /api/me`` with an API token: requests/s, p50 and p99 latency;
- ``slowloris``: ``--slow`` connections each sending a request head one header line every 7 s (opening
  again whenever the server closes one) for ``--attack`` seconds; meanwhile ``GET /healthz`` and
  ``GET /auth/login`` every 2 s on fresh connections (5 s timeout): the slowest probe and the failures;
- ``chunked``: 4 requests at once, ``POST /api/tokens`` with a chunked body of up to 32 MB sent as fast as
  the server takes it: bytes the server took before answering or closing, its answer, and the workers'
  RSS (sum) before and after;
- ``malformed``: 200 ``POST /auth/login`` with the JSON body ``[1]`` (60 s at most): their statuses and
  the bytes added under ``SCP_DATA_DIR`` (before ``chunked``, which can leave the workers stuck).

Prints a table and writes ``bench/results/scp_attacks-<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import requests

from tests.scp_support import ADMIN, Scp

RESULTS = Path(__file__).parent / "results"


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _workers(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        kids = [int(p) for p in fh.read().split()]
    found = []
    for kid in kids:  # mdpipe scp -> gunicorn master (same process) -> workers
        with open(f"/proc/{kid}/task/{kid}/children") as fh:
            found += [int(p) for p in fh.read().split()]
        found.append(kid)
    return found


def _data_bytes(folder: str) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def load(base: str, path: str, headers: dict[str, str], seconds: float, threads: int = 8) -> dict[str, Any]:
    latencies: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds

    def run() -> None:
        s = requests.Session()
        mine = []
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                ok = s.get(base + path, headers=headers, timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            mine.append(time.perf_counter() - t)
            errors[0] += not ok
        latencies.extend(mine)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    latencies.sort()
    return {
        "path": path,
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "errors": errors[0],
    }


def slowloris(port: int, base: str, connections: int, seconds: float) -> dict[str, Any]:
    stop = threading.Event()
    opened = [0]

    def slot() -> None:
        while not stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                opened[0] += 1
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: scp\r\n")
                while not stop.wait(7):
                    sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                time.sleep(0.5)  # closed by the server: open another

    pool = [threading.Thread(target=slot, daemon=True) for _ in range(connections)]
    for t in pool:
        t.start()
    probes: dict[str, list[float | None]] = {"/healthz": [], "/auth/login": []}
    deadline = time.monotonic() + seconds
    time.sleep(1.0)
    while time.monotonic() < deadline:
        for path, times in probes.items():
            t = time.perf_counter()
            try:
                ok = requests.get(base + path, timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            times.append(time.perf_counter() - t if ok else None)
        time.sleep(2.0)
    stop.set()
    out: dict[str, Any] = {"connections": connections, "seconds": seconds, "opened": opened[0]}
    for path, times in probes.items():
        good = [t for t in times if t is not None]
        out[path] = {
            "probes": len(times),
            "failed": len(times) - len(good),
            "median_ms": round(statistics.median(good) * 1000, 1) if good else None,
            "max_ms": round(max(good) * 1000, 1) if good else None,
        }
    return out


def chunked(port: int, scp_pid: int, at_once: int = 4, megabytes: int = 32) -> dict[str, Any]:
    workers = _workers(scp_pid)
    before = sum(_rss_kb(p) for p in workers)
    results: list[dict[str, Any]] = []

    def one() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /api/tokens HTTP/1.1\r\nHost: scp\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
        sent = 0
        try:
            while sent < megabytes << 20:
                sock.sendall(chunk)
                sent += 0x10000
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        try:
            answer = sock.recv(200).split(b"\r\n")[0].decode("latin-1")
        except OSError as exc:
            answer = type(exc).__name__
        sock.close()
        results.append({"sent_bytes": sent, "answer": answer or "(closed)"})

    pool = [threading.Thread(target=one) for _ in range(at_once)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    time.sleep(1.0)
    after = sum(_rss_kb(p) for p in workers)
    return {"requests": results, "workers_rss_mb_before": round(before / 1024, 1),
            "workers_rss_mb_after": round(after / 1024, 1)}  # fmt: skip


def malformed(base: str, data_dir: str, count: int = 200) -> dict[str, Any]:
    before = _data_bytes(data_dir)
    statuses: dict[str, int] = {}
    s = requests.Session()
    stop = time.monotonic() + 60
    for _ in range(count):
        if time.monotonic() > stop:
            statuses["(not sent: 60 s)"] = statuses.get("(not sent: 60 s)", 0) + 1
            continue
        try:
            r = s.post(base + "/auth/login", data=b"[1]", headers={"Content-Type": "application/json"},
                       timeout=10)  # fmt: skip
            key = f"{r.status_code} {r.headers.get('Content-Type', '').split(';')[0]}"
        except requests.RequestException as exc:
            key = type(exc).__name__
        statuses[key] = statuses.get(key, 0) + 1
    return {"requests": count, "answers": statuses, "data_dir_bytes_added": _data_bytes(data_dir) - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="run")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--slow", type=int, default=32)
    parser.add_argument("--attack", type=float, default=24.0)
    args = parser.parse_args()
    scp = Scp()
    try:
        admin = scp.login(*ADMIN)
        csrf = scp.api(admin, "GET", "/api/me").json()["csrf"]
        token = scp.api(admin, "POST", "/api/api-tokens", csrf, json={"name": "bench", "days": 1}).json()
        bearer = {"Authorization": f"Bearer {token['token']}"}
        report: dict[str, Any] = {"label": args.label, "workers": 2, "threads": 4}
        report["load"] = [load(scp.base, "/healthz", {}, args.seconds),
                          load(scp.base, "/api/me", bearer, args.seconds)]  # fmt: skip
        report["slowloris"] = slowloris(scp.port, scp.base, args.slow, args.attack)
        report["malformed"] = malformed(scp.base, scp.data)
        report["chunked"] = chunked(scp.port, scp.proc.pid)
        t = time.perf_counter()
        try:
            ok = requests.get(scp.base + "/healthz", timeout=30).status_code == 200
        except requests.RequestException:
            ok = False
        report["healthz_after_chunked"] = {"ok": ok, "ms": round((time.perf_counter() - t) * 1000, 1)}
    finally:
        scp.stop()
    print(f"SCP under attack and load ({args.label})")
    print(f"{'what':44} {'figure':>40}")
    for row in report["load"]:
        figure = f"{row['requests_per_s']}/s p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms"
        print(f"{'load GET ' + row['path'] + ' (8 clients)':44} {figure:>40}")
    slow = report["slowloris"]
    for path in ("/healthz", "/auth/login"):
        p = slow[path]
        figure = f"{p['failed']}/{p['probes']} failed, max {p['max_ms']} ms"
        print(f"{'slowloris x' + str(slow['connections']) + ' GET ' + path:44} {figure:>40}")
    for i, r in enumerate(report["chunked"]["requests"]):
        taken = f"{r['sent_bytes'] >> 10} KiB taken, {r['answer']}"
        print(f"{'chunked body ' + str(i):44} {taken:>40}")
    c = report["chunked"]
    rss = f"{c['workers_rss_mb_before']} MB / {c['workers_rss_mb_after']} MB"
    print(f"{'workers RSS before/after chunked':44} {rss:>40}")
    h = report["healthz_after_chunked"]
    after = f"{'ok' if h['ok'] else 'failed'} in {h['ms']} ms"
    print(f"{'GET /healthz after chunked':44} {after:>40}")
    m = report["malformed"]
    print(f"{'200 x POST /auth/login [1]':44} {json.dumps(m['answers']):>40}")
    print(f"{'  bytes added under SCP_DATA_DIR':44} {m['data_dir_bytes_added']:>40}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"scp_attacks-{args.label}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    main()
