"""Who owns what on a Redis Cluster: the slot of a name, the master serving a slot, and how to ask.

Pure core: ``key_slot(name)`` (CRC16 of the name or of its ``{hash tag}``, as Redis computes it), and
``Topology``, the master ``(host, port)`` of every slot, built from a ``CLUSTER SHARDS`` or ``CLUSTER
SLOTS`` reply (``Topology.from_shards``, ``from_slots``); ``topology.group(names)`` splits names per
master and per slot, the unit of one ``SSUBSCRIBE`` or one ``MULTI/EXEC``. Thin I/O: ``discover(target)``
asks the seed nodes in turn (with the URL's user, password and TLS) and returns the first answer;
``node_url(url, node)`` is the URL of one node with the URL's credentials.

A topology is a snapshot: a failover or a resharding changes it, which its users notice (a connection
refused or lost, a ``MOVED`` reply, a ``sunsubscribe`` nobody asked for) and answer by discovering again.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hiredis
from redis.crc import key_slot as _crc_key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .connect import Target
from .wire import KEEPALIVE, Wire, command

SLOTS = 16384
DISCOVER_TIMEOUT_S = 5.0  # per seed: connect and answer

Node = tuple[str, int]  # a master's (host, port)


def key_slot(name: bytes | str) -> int:
    """The cluster slot of a key or a sharded channel name (its ``{hash tag}`` only, when it has one)."""
    return _crc_key_slot(name.encode() if isinstance(name, str) else name)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Topology:
    """The master of every slot. ``ranges``: ``(first, last, node)``, sorted, not overlapping; a slot in
    no range has no master now (a failover under way): ``master`` returns None for it."""

    ranges: tuple[tuple[int, int, Node], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", tuple(sorted(self.ranges)))
        object.__setattr__(self, "_starts", [r[0] for r in self.ranges])

    @classmethod
    def from_slots(cls, reply: Sequence[Any], default_host: str = "127.0.0.1") -> Topology:
        """From ``CLUSTER SLOTS`` (RESP2): ``[[first, last, [host, port, id, ...], replica, ...], ...]``.
        An empty host means the node that answered (``default_host``)."""
        ranges = []
        for entry in reply:
            first, last, master = int(entry[0]), int(entry[1]), entry[2]
            ranges.append((first, last, (_text(master[0]) or default_host, int(master[1]))))
        return cls(tuple(ranges))

    @classmethod
    def from_shards(cls, reply: Sequence[Any], default_host: str = "127.0.0.1") -> Topology:
        """From ``CLUSTER SHARDS`` (RESP2): per shard ``["slots", [first, last, ...], "nodes", [node
        fields as flat key/value lists]]``; the shard's master is its node of role ``master`` and health
        ``online`` (a shard whose master failed and has no successor yet serves no slot)."""
        ranges = []
        for shard in reply:
            fields = dict(zip(map(_text, shard[::2]), shard[1::2], strict=True))
            bounds = [int(s) for s in fields.get("slots", [])]
            for node in fields.get("nodes", []):
                info = dict(zip(map(_text, node[::2]), node[1::2], strict=True))
                if _text(info.get("role")) == "master" and _text(info.get("health")) == "online":
                    host = _text(info.get("ip") or info.get("endpoint") or "") or default_host
                    port = int(info.get("port") or info.get("tls-port"))
                    ranges.extend((bounds[i], bounds[i + 1], (host, port)) for i in range(0, len(bounds), 2))
                    break
        return cls(tuple(ranges))

    def master(self, slot: int) -> Node | None:
        """The master serving ``slot``; None when none does now."""
        i = bisect.bisect_right(self._starts, slot) - 1  # type: ignore[attr-defined]
        if i >= 0:
            first, last, node = self.ranges[i]
            if first <= slot <= last:
                return node
        return None

    def master_of(self, name: bytes | str) -> Node | None:
        """The master serving the slot of key or channel ``name``."""
        return self.master(key_slot(name))

    @property
    def masters(self) -> frozenset[Node]:
        return frozenset(node for _, _, node in self.ranges)

    @property
    def complete(self) -> bool:
        """Every slot has a master."""
        return sum(last - first + 1 for first, last, _ in self.ranges) == SLOTS

    def group(self, names: Iterable[str]) -> dict[Node, dict[int, list[str]]]:
        """``names`` by master, then by slot (in the order given). Raises ``SlotUncovered`` when a name's
        slot has no master now."""
        out: dict[Node, dict[int, list[str]]] = {}
        for name in names:
            slot = key_slot(name)
            node = self.master(slot)
            if node is None:
                raise SlotUncovered(f"slot {slot} ({name}) has no master now")
            out.setdefault(node, {}).setdefault(slot, []).append(name)
        return out


class SlotUncovered(RedisError):
    """A slot has no master in the topology (a failover under way): discover again a little later."""


def node_url(url: str, node: Node) -> str:
    """``url`` (``redis://`` or ``rediss://`` with user and password) pointed at ``node``, database 0."""
    parts = urlsplit(url)
    host, port = node
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit((parts.scheme or "redis", f"{userinfo}@{netloc}" if userinfo else netloc, "", "", ""))


async def discover(
    target: Target | Sequence[Node],
    *,
    url: str = "redis://",
    per_seed_s: float = DISCOVER_TIMEOUT_S,
    client_name: str = "mdc-topology",
) -> Topology:
    """The cluster's topology, as the first seed that answers ``CLUSTER SHARDS`` sees it. ``target``: a
    cluster ``Target`` (its seeds, its URL's credentials and TLS), or seed nodes with ``url`` giving those.
    Raises ``redis.exceptions.ConnectionError`` naming each seed's failure when none answers."""
    if isinstance(target, Target):
        seeds, url = target.seeds, target.url
    else:
        seeds = tuple(target)
    if not seeds:
        raise ValueError("no seed nodes: discover needs a cluster Target or (host, port) seeds")
    failures = []
    for node in seeds:
        wire = Wire(node_url(url, node), client_name, per_seed_s, per_seed_s, KEEPALIVE)
        try:
            await wire.connect()
            reply = await wire.request(command("CLUSTER", "SHARDS"), per_seed_s)
            if isinstance(reply, hiredis.ReplyError):
                raise RedisError(str(reply))
            return Topology.from_shards(reply, default_host=node[0])
        except (RedisError, OSError, TimeoutError) as exc:
            failures.append(f"{node[0]}:{node[1]}: {type(exc).__name__}: {exc}")
        finally:
            await wire.close()
    raise RedisConnectionError("no seed node answered CLUSTER SHARDS: " + "; ".join(failures))
