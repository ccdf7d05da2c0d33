"""SCP on a Redis Cluster (``REDIS_CLUSTER_NODES``): a real ``mdpipe scp`` (tests/scp_support.py) whose
every Redis use is on a local cluster (``tests/cluster_support.py``): sessions and the login limiter
(a login, a refused one), /api/status with the listener's status key and the heartbeats read across
slots, a pause request (the desired state written, the reload heard on the control channel), and
/api/signals listing channels ``mdc.publisher`` published on the cluster (a SCAN of every master)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest

from mdc import names as mdc_names
from mdc.connect import Target
from mdc.publisher import BlockingPublisher

from .scp_support import ADMIN, Scp
from .test_mdl_cluster import local_cluster

_cluster = pytest.fixture(scope="module", name="redis_cluster")(local_cluster)


@pytest.fixture(scope="module")
def scp(redis_cluster) -> Iterator[Scp]:
    seeds = ",".join(f"{h}:{p}" for h, p in redis_cluster.startup_nodes)
    running = Scp(REDIS_URL=redis_cluster.url, REDIS_CLUSTER_NODES=seeds)
    try:
        yield running
    finally:
        running.stop()


def test_scp_on_a_cluster_logs_in_reports_status_controls_mdl_and_lists_signals(redis_cluster, scp):
    target = Target(redis_cluster.url, tuple(redis_cluster.startup_nodes))
    prefix, market = scp.env["MDC_PREFIX"], "stocks"
    client = target.sync_client()
    wrong = scp.post_login(scp.anonymous(), ADMIN[0], "not-the-password")
    assert wrong.status_code != 303, wrong.status_code  # refused: the limiter counted it on the cluster
    admin = scp.login(*ADMIN)  # the session lives on the cluster, shared by both workers
    for _ in range(4):  # requests land on either worker: each finds the session
        assert scp.api(admin, "GET", "/api/me").status_code == 200

    # the listener's status key as a running leader writes it; then a pause through SCP
    status_doc = {"ts": time.time(), "market": market, "instance": "mdl-1", "subscriptions": "T.*"}
    client.set(mdc_names.mdl_status(market), orjson.dumps(status_doc), ex=60)
    control = client.pubsub()
    control.subscribe(mdc_names.mdl_control(market))
    csrf = scp.api(admin, "GET", "/api/me").json()["csrf"]
    r = scp.api(admin, "POST", "/api/mdl/pause", csrf)
    assert r.status_code == 200, r.text
    assert r.json() == {"market": market, "subscriptions": ["T.*"], "paused": True}
    assert orjson.loads(client.get(mdc_names.mdl_desired(market))) == {"subscriptions": "T.*", "paused": True}
    heard = [control.get_message(ignore_subscribe_messages=True, timeout=0.5) for _ in range(4)]
    assert {"action": "reload"} in [orjson.loads(m["data"]) for m in heard if m], heard
    control.close()

    channels = ("signals.clustered", "signals.clustered.AAPL", "signals.clustered.MSFT")
    with BlockingPublisher(target, "clustered", prefix=prefix, instance="c1") as pub:
        pub.publish({"n": 1})
        pub.publish({"n": 2})
        pub.publish({"sym": "AAPL"}, suffix="AAPL")
        pub.publish({"sym": "MSFT"}, suffix="MSFT")
        pub.flush(5)

        deadline = time.monotonic() + 15
        while True:  # the channel list is cached 5 s; the heartbeat is written at the publisher's start
            signals = scp.api(admin, "GET", "/api/signals")
            status = scp.api(admin, "GET", "/api/status")
            assert signals.status_code == 200 and status.status_code == 200, (signals.text, status.text)
            listed = {c["channel"]: c["seq"] for c in signals.json()["channels"]}
            components = status.json().get("components", [])
            beat = [c for c in components if c.get("component") == "signals.clustered"]
            if (set(channels) <= set(listed) and beat) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    assert listed == {"signals.clustered": 2, "signals.clustered.AAPL": 1, "signals.clustered.MSFT": 1}
    doc = status.json()
    assert doc["redis"]["ok"] is True and doc["mdl"]["instance"] == "mdl-1", doc
    assert beat and beat[0]["instance"] == "c1" and beat[0]["up"], components
    assert [c["instance"] for c in components if c["component"] == "mdl"] == ["mdl-1"]

    # sessions and the login counters are on the cluster (SCAN of every master)
    assert any(True for _ in client.scan_iter(match="scp:session:*"))
    assert any(True for _ in client.scan_iter(match="scp:login:*"))
    client.close()
