"""Where MDC lives: one Redis (``REDIS_URL``) or a Redis Cluster (``REDIS_CLUSTER_NODES`` set), and the
clients that talk to either.

``Target(url, seeds)`` is what every component is given instead of a bare URL. ``target.cluster`` says
the mode; ``target.client(...)`` is a redis-py asyncio client of that mode (``Redis`` or ``RedisCluster``,
the same calls for single-key commands and same-slot pipelines), ``target.sync_client(...)`` the same in
redis-py's blocking API (for synchronous code: SCP's WSGI handlers); ``target.publish_command`` is the verb
updates go out with (``SPUBLISH`` on a cluster: a message only reaches the shard owning its slot, see
docs/cluster.md; classic ``PUBLISH`` on one Redis, where pattern subscriptions keep working). A
cluster's user, password and TLS come from the URL; its nodes from the seeds and then from the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.cluster
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster


@dataclass(frozen=True)
class Target:
    url: str
    seeds: tuple[tuple[str, int], ...] = field(default=())

    @classmethod
    def from_settings(cls, settings: Any) -> Target:
        """From a settings group with ``redis_url`` and ``redis_seeds()`` (``CommonSettings``)."""
        return cls(settings.redis_url.get_secret_value(), tuple(settings.redis_seeds()))

    @property
    def cluster(self) -> bool:
        return bool(self.seeds)

    @property
    def publish_command(self) -> str:
        return "SPUBLISH" if self.cluster else "PUBLISH"

    def client(self, **kwargs: Any) -> Redis | RedisCluster:
        """An asyncio client of the mode; ``kwargs`` are redis-py connection options (timeouts, name)."""
        if not self.cluster:
            return Redis.from_url(self.url, **kwargs)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.seeds], **self._auth(), **kwargs
        )

    def sync_client(self, **kwargs: Any) -> redis.Redis | redis.cluster.RedisCluster:
        """A blocking client of the mode (``redis.Redis`` or ``redis.cluster.RedisCluster``); ``kwargs`` as
        for ``client``. On a cluster, keys of several slots need ``mget_nonatomic``, not ``mget``."""
        if not self.cluster:
            return redis.Redis.from_url(self.url, **kwargs)
        nodes = [redis.cluster.ClusterNode(host, port) for host, port in self.seeds]
        return redis.cluster.RedisCluster(startup_nodes=nodes, **self._auth(), **kwargs)

    def _auth(self) -> dict[str, Any]:
        """A cluster's user, password and TLS, from the URL (its host and database are not used)."""
        parts = urlsplit(self.url)
        return {
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "ssl": parts.scheme == "rediss",
        }
