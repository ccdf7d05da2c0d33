"""Standby listeners on a Redis Cluster (``REDIS_CLUSTER_NODES``): two ``mdpipe mdl`` processes share the
lease ``mdl:<market>:lease`` on a real local cluster (``tests/cluster_support.py``), one leads, and after
a ``kill -9`` of the leader the standby takes over within the promised time, the emulator never seeing
two vendor connections at once. The processes, the emulator and the consumer are test_mdl_standby's."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator

import pytest
from redis.cluster import ClusterNode, RedisCluster

from mdc import names
from mdpipe.settings import MdqSettings
from tests.cluster_support import LocalCluster
from tests.conftest import delete_mdq
from tests.test_mdl_standby import TAKEOVER_S, TAKEOVER_SLACK_S, Cluster, logs


def local_cluster() -> Iterator[LocalCluster]:
    """A local cluster of 3 masters without replicas, for the cluster tests of the components (they test
    the components' use of a cluster; a master's failover is test_mdc_cluster's and test_mdp_cluster's)."""
    started = LocalCluster(masters=3, replicas=0).start()
    try:
        yield started
    finally:
        started.stop()


redis_cluster = pytest.fixture(scope="module", name="redis_cluster")(local_cluster)


async def test_kill_9_of_the_leader_on_a_cluster_the_standby_takes_over_within_2_s(
    redis_cluster, make_emulator
):
    mdq = MdqSettings(mdq_exchange=f"test-{uuid.uuid4().hex[:10]}")
    emulator = await make_emulator(sim_rate=500, sim_symbols=50, sim_max_connections=0)
    c = Cluster(emulator, mdq.mdq_exchange)
    seeds = ",".join(f"{h}:{p}" for h, p in redis_cluster.startup_nodes)
    c.env.update(REDIS_URL=redis_cluster.url, REDIS_CLUSTER_NODES=seeds)
    try:
        a, b = await c.pair()
        client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster.startup_nodes])
        try:
            assert client.get(names.mdl_lease(emulator.market)).endswith(b" a")  # on the cluster
        finally:
            client.close()
        takeover = await c.takeover(a, b, signal.SIGKILL)
        assert takeover < TAKEOVER_S + TAKEOVER_SLACK_S, logs(a, b)
        assert emulator.peak_clients == 1, list(emulator.client_counts)  # never two connections at once
        detail = await b.readyz()
        assert detail["role"] == "leader" and detail["leader"] == "b" and detail["ready"], logs(a, b)
        assert detail["lease"] == "connected" and detail["control"] == "connected", detail
    finally:
        await c.close()
        for replica in c.replicas:
            replica.close()
        await delete_mdq(mdq)
