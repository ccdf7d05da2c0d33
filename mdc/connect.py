"""Where MDC lives: one Redis (``REDIS_URL``) or a Redis Cluster (``REDIS_CLUSTER_NODES`` set), and the
clients that talk to either.

``Target(url, seeds)`` is what every component is given instead of a bare URL. ``target.cluster`` says
the mode; ``target.client(...)`` is a redis-py asyncio client of that mode (``Redis`` or ``RedisCluster``,
the same calls for single-key commands and same-slot pipelines); ``target.publish_command`` is the verb
updates go out with (``SPUBLISH`` on a cluster: a message only reaches the shard owning its slot, see
docs/cluster.md; classic ``PUBLISH`` on one Redis, where pattern subscriptions keep working). A
cluster's user, password and TLS come from the URL; its nodes from the seeds and then from the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

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
        parts = urlsplit(self.url)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.seeds],
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ssl=parts.scheme == "rediss",
            **kwargs,
        )
