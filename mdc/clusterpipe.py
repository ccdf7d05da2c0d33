"""The processors' write path on a Redis Cluster: commands already encoded in RESP, routed by key slot to
the master serving it, one ``mdc.wire.Pipeline`` per master, every master at once.

Pure core: ``command_key`` (the key a command is routed by: its first argument, or an EVAL's first key),
``split_commands`` (a payload of several commands into one bytes object each) and ``transactions`` (one
master's slots, each its own ``MULTI/EXEC``, then ``WAIT``). Thin I/O: ``ClusterPipeline`` keeps the
topology (``mdc.topology.discover``), found again after a ``MOVED``, ``ASK``, ``CLUSTERDOWN`` or
``TRYAGAIN`` reply or a lost node connection, and the pipelines of the masters it names.

``execute(payload, n)`` routes each command and puts the replies back in the order sent (a processor's
loads). ``write(slots, last)`` is a group's writes: per slot one ``MULTI/EXEC`` (a cluster refuses a
transaction across slots), a master's slots concatenated into one payload, all masters concurrently;
``last`` (the redelivery markers) is sent only once every slot's ``EXEC`` has succeeded, so that a
message delivered again is skipped only when all of its writes landed (docs/mdp.md). ``transact(slots)``
is ``mdc.reader``'s snapshot reads: the same per-slot transactions, no ``WAIT``, and each slot's
``EXEC`` reply (the list of its commands' replies) handed back by slot. A topology change
or a lost node raises ``ClusterChanged``, a ``redis.exceptions.ConnectionError``: the caller retries.

Durability across a master's ``kill -9``: Redis replicates asynchronously, so a write the master
acknowledged may be missing on the replica promoted in its place. ``WAIT`` after a master's transactions
returns once ``REPLICA_WAIT[0]`` replicas hold them, or after ``REPLICA_WAIT[1]`` ms; only then does the
caller acknowledge its messages. A master that answered with fewer replicas (none attached, or a slow
one) is reported (``Written.unreplicated``), not failed: the write is on the master, and failing it
would only stall the stream behind a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from .connect import Target
from .topology import Node, Topology, discover, node_url
from .wire import Pipeline, command

#: WAIT after each master's transactions: (replicas, milliseconds). One replica is what a failover
#: promotes; 200 ms bounds what a slow replica costs a group (it is then counted, not failed). A module
#: constant rather than a setting: the trade-off is the design's, not a deployment's.
REPLICA_WAIT = (1, 200)
#: How often a master's attached replicas are counted again (ROLE): WAIT asks for no more than there are.
ROLE_EVERY_S = 5.0
#: Replies saying the topology moved on (or is moving): discover again, then retry.
REDIRECTS = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "MASTERDOWN", "LOADING")

_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"
_EVALS = frozenset((b"EVAL", b"EVALSHA", b"FCALL", b"eval", b"evalsha", b"fcall"))


class ClusterChanged(RedisConnectionError):
    """The cluster's topology changed under a request (a node lost, a slot moved or unserved)."""


# -- pure core ----------------------------------------------------------------------------------------


def _bulk(data: bytes, at: int) -> tuple[bytes, int]:
    """The bulk string at ``at`` (``$L\\r\\n...\\r\\n``) and where the next one starts."""
    end = data.index(b"\r\n", at)
    start = end + 2
    stop = start + int(data[at + 1 : end])
    return data[start:stop], stop + 2


def command_key(cmd: bytes) -> bytes:
    """The key ``cmd`` (one command in RESP) is routed by: its first argument (a key, or a channel for
    PUBLISH/SPUBLISH), or, for EVAL, EVALSHA and FCALL, its first key. ValueError for a command without."""
    at = cmd.index(b"\r\n") + 2  # past *N
    verb, at = _bulk(cmd, at)
    first, at = _bulk(cmd, at)
    if verb in _EVALS:  # EVAL script numkeys key ..., FCALL function numkeys key ...
        numkeys, at = _bulk(cmd, at)
        if int(numkeys) < 1:
            raise ValueError(f"{verb.decode()} without a key cannot be routed")
        first = _bulk(cmd, at)[0]
    return first


def split_commands(payload: bytes) -> list[bytes]:
    """``payload`` (commands in RESP, one after the other) as one bytes object per command."""
    out, at, size = [], 0, len(payload)
    while at < size:
        end = payload.index(b"\r\n", at)
        nxt = end + 2
        for _ in range(int(payload[at + 1 : end])):
            nxt = _bulk(payload, nxt)[1]
        out.append(payload[at:nxt])
        at = nxt
    return out


def by_slot(commands: Iterable[bytes]) -> dict[int, list[bytes]]:
    """``commands`` by the slot of their key, in the order given within a slot."""
    out: dict[int, list[bytes]] = {}
    for cmd in commands:
        slot = key_slot(command_key(cmd))
        group = out.get(slot)
        if group is None:
            group = out[slot] = []
        group.append(cmd)
    return out


def transactions(slots: Iterable[list[bytes]], wait: tuple[int, int] | None) -> tuple[bytes, int]:
    """One master's payload: each slot's commands in one MULTI/EXEC, then ``WAIT`` (``wait``: replicas,
    ms; None: none); with how many replies it gets."""
    out: list[bytes] = []
    n = 0
    for cmds in slots:
        out.append(_MULTI)
        out += cmds
        out.append(_EXEC)
        n += len(cmds) + 2
    if wait is not None:
        out.append(command("WAIT", *wait))
        n += 1
    return b"".join(out), n


_SLOT_TAGS: list[str] = []


def slot_tag(slot: int) -> str:
    """A short text whose slot is ``slot``: as a ``{hash tag}`` it puts a key on that slot (a marker
    written in that slot's transaction). The table of all 16384 is built on first use (about 0.1 s)."""
    if not _SLOT_TAGS:
        table: list[str | None] = [None] * 16384
        left, i = 16384, 0
        while left:
            text = str(i)
            s = key_slot(text.encode())
            if table[s] is None:
                table[s] = text
                left -= 1
            i += 1
        _SLOT_TAGS.extend(table)  # type: ignore[arg-type]
    return _SLOT_TAGS[slot]


def redirected(replies: Iterable[Any]) -> str | None:
    """The first reply (or reply inside an EXEC's) saying the topology moved on, else None."""
    for reply in replies:
        items = reply if isinstance(reply, list) else (reply,)
        for item in items:
            if isinstance(item, hiredis.ReplyError) and str(item).startswith(REDIRECTS):
                return str(item)
    return None


# -- I/O ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Written:
    """A group's writes on the cluster: every reply (each slot's MULTI..EXEC, the markers), and how many
    masters' ``WAIT`` found fewer replicas than ``REPLICA_WAIT`` asks."""

    replies: list[Any]
    unreplicated: int


class ClusterPipeline:
    def __init__(
        self,
        target: Target,
        client_name: str,
        timeout: float,
        keepalive: dict[int, int],
        *,
        replica_wait: tuple[int, int] = REPLICA_WAIT,
    ) -> None:
        self.target, self.client_name, self.timeout, self.keepalive = target, client_name, timeout, keepalive
        self.replica_wait = replica_wait
        self.topology: Topology | None = None
        self.discoveries = 0  # topologies discovered (the first, then one per change noticed)
        self._pipes: dict[Node, Pipeline] = {}
        self._replicas: dict[Node, tuple[int, float]] = {}  # attached replicas, monotonic when counted
        self._discovering = asyncio.Lock()

    async def _current(self) -> Topology:
        topology = self.topology
        if topology is not None:
            return topology
        async with self._discovering:
            if self.topology is None:
                found = await discover(self.target, client_name=self.client_name + "-topology")
                if not found.complete:
                    raise ClusterChanged("some slots have no master now (a failover under way)")
                for node in set(self._pipes) - found.masters:  # no longer a master: its pipeline goes
                    await self._pipes.pop(node).close()
                    self._replicas.pop(node, None)
                self.topology = found
                self.discoveries += 1
            return self.topology

    def changed(self, why: str) -> ClusterChanged:
        """Forget the topology (the next call discovers it again); the error to raise."""
        self.topology = None
        return ClusterChanged(why)

    def _pipe(self, node: Node) -> Pipeline:
        pipe = self._pipes.get(node)
        if pipe is None:
            url = node_url(self.target.url, node)
            pipe = self._pipes[node] = Pipeline(url, self.client_name, self.timeout, self.keepalive)
        return pipe

    async def _send(self, node: Node, payload: bytes, n: int) -> list[Any]:
        try:
            return await self._pipe(node).execute(payload, n)
        except RedisConnectionError as exc:  # a node lost: maybe failed over
            raise self.changed(f"{node[0]}:{node[1]}: {exc}") from None

    def _route(self, topology: Topology, slots: Iterable[int]) -> dict[Node, list[int]]:
        out: dict[Node, list[int]] = {}
        for slot in slots:
            node = topology.master(slot)
            if node is None:
                raise self.changed(f"slot {slot} has no master now")
            out.setdefault(node, []).append(slot)
        return out

    async def execute(self, payload: bytes, n: int) -> list[Any]:
        """The ``n`` commands of ``payload``, each on its key's master (no transaction), replies in
        order. Raises ``ClusterChanged`` when the topology moved on."""
        topology = await self._current()
        commands = split_commands(payload)
        if len(commands) != n:
            raise ValueError(f"{len(commands)} commands in the payload, {n} expected")
        per_node: dict[Node, list[int]] = {}
        for i, cmd in enumerate(commands):
            node = topology.master_of(command_key(cmd))
            if node is None:
                raise self.changed("a slot has no master now")
            per_node.setdefault(node, []).append(i)
        nodes = list(per_node)
        answers = await asyncio.gather(
            *(self._send(node, b"".join(commands[i] for i in per_node[node]), len(per_node[node]))
              for node in nodes)
        )  # fmt: skip
        replies: list[Any] = [None] * n
        for node, answer in zip(nodes, answers, strict=True):
            for i, reply in zip(per_node[node], answer, strict=True):
                replies[i] = reply
        if (why := redirected(replies)) is not None:
            raise self.changed(why)
        return replies

    async def write(self, slots: dict[int, list[bytes]], last: list[bytes]) -> Written:
        """``slots`` (slot -> its commands) as one MULTI/EXEC per slot, every master at once, each
        followed by WAIT; then ``last`` (commands of any slots, no transaction), once all succeeded."""
        topology = await self._current()
        routes = self._route(topology, slots)
        nodes = list(routes)
        waits = await asyncio.gather(*(self._wait_for(node) for node in nodes))
        payloads = [
            transactions((slots[s] for s in routes[node]), wait)
            for node, wait in zip(nodes, waits, strict=True)
        ]
        answers = await asyncio.gather(
            *(self._send(node, payload, n) for node, (payload, n) in zip(nodes, payloads, strict=True))
        )
        replies: list[Any] = []
        unreplicated = 0
        for wait, answer in zip(waits, answers, strict=True):
            if wait is None:
                unreplicated += 1  # no replica attached: nothing to wait for, and not replicated
            else:
                got = answer.pop()
                if not isinstance(got, int) or got < wait[0]:
                    unreplicated += 1
            replies += answer
        if (why := redirected(replies)) is not None:
            raise self.changed(why)
        if last and not any(isinstance(r, hiredis.ReplyError) for r in _flat(replies)):
            replies += await self.execute(b"".join(last), len(last))
        return Written(replies, unreplicated)

    async def transact(self, slots: dict[int, list[bytes]]) -> dict[int, list[Any]]:
        """``slots`` (slot -> its commands) as one MULTI/EXEC per slot, a master's slots in one payload,
        every master at once; each slot's EXEC reply: its commands' replies in order, an error among them
        as a ``hiredis.ReplyError``. Raises ``ClusterChanged`` when the topology moved on, and
        ``ResponseError`` when a transaction was refused as a whole (EXECABORT)."""
        topology = await self._current()
        routes = self._route(topology, slots)
        nodes = list(routes)
        answers = await asyncio.gather(
            *(self._send(node, *transactions((slots[s] for s in routes[node]), None)) for node in nodes)
        )
        if (why := redirected(r for answer in answers for r in answer)) is not None:
            raise self.changed(why)
        out: dict[int, list[Any]] = {}
        for node, answer in zip(nodes, answers, strict=True):
            at = 0
            for slot in routes[node]:
                at += len(slots[slot]) + 2  # MULTI's OK, a QUEUED per command, then EXEC's reply
                reply = answer[at - 1]
                if not isinstance(reply, list):
                    queued = answer[at - len(slots[slot]) - 2 : at - 1]
                    why = next((str(r) for r in queued if isinstance(r, hiredis.ReplyError)), str(reply))
                    raise ResponseError(f"slot {slot}: transaction refused: {why}")
                out[slot] = reply
        return out

    async def _wait_for(self, node: Node) -> tuple[int, int] | None:
        """The WAIT to send after ``node``'s transactions: no more replicas than are attached (ROLE,
        counted every ``ROLE_EVERY_S``); None when none is."""
        replicas, counted = self._replicas.get(node, (0, -ROLE_EVERY_S))
        if time.monotonic() - counted >= ROLE_EVERY_S:
            (role,) = await self._send(node, command("ROLE"), 1)
            if not isinstance(role, list) or role[0] != b"master":
                raise self.changed(f"{node[0]}:{node[1]} is no master now")
            replicas = len(role[2])
            self._replicas[node] = (replicas, time.monotonic())
        wanted = min(self.replica_wait[0], replicas)
        return (wanted, self.replica_wait[1]) if wanted else None

    async def close(self) -> None:
        pipes, self._pipes = self._pipes, {}
        for pipe in pipes.values():
            with contextlib.suppress(Exception):
                await pipe.close()


def _flat(replies: list[Any]) -> Iterable[Any]:
    for reply in replies:
        if isinstance(reply, list):
            yield from reply
        else:
            yield reply
