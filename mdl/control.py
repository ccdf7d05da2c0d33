"""Run-time control of the listener through Redis: the desired state, control messages, and status.

The control plane writes the desired state (subscriptions, paused) to ``mdc.names.mdl_desired`` and
then publishes ``{"action": "reload"}`` on ``mdc.names.mdl_control``; ``request()`` does both in one
transaction. The listener validates the state before applying it: an invalid one is refused, counted,
logged and reported in its status key, and the running subscriptions stay. Keeping the state in a key,
not only in the message, lets a restarted listener come back with what was asked last.

Redis is not on the data path: while it is unreachable the listener goes on with what it has.

On a Redis Cluster (a ``Target`` with seeds) the three names are plain keys of their own slots. The
control channel stays classic pub/sub: a ``PUBLISH`` there reaches every node over the cluster bus, so
the listener's ``SUBSCRIBE`` on whichever node hears it; it carries a few messages a day, where the
bus's cost does not matter, and ``mdc.names.mdl_control`` keeps one name for both modes. The request's
transaction watches and writes the desired state alone (one slot); on a cluster its ``PUBLISH`` follows
the ``EXEC`` (a transaction is one slot's, a channel has none): if that publish fails the caller gets
the error, the state is already written and a retry is harmless, and a restarted listener reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, WatchError

from mdc import names
from mdc.connect import Target
from mdpipe import massive
from mdpipe.backoff import Backoff

log = logging.getLogger(__name__)

MAX_CONTROL_BYTES = 64 * 1024
ACTIONS = ("reload", "reconnect")
REQUEST_ATTEMPTS = 20  # optimistic transaction retries of one request before giving up


class ControlError(ValueError):
    """A control message or desired state that cannot be applied; the message says why."""


@dataclass(frozen=True)
class Desired:
    subscriptions: tuple[str, ...]
    paused: bool = False


def parse_subscriptions(value: object, market: str) -> tuple[str, ...]:
    """``"T.*,Q.AAPL"`` or ``["T.*", "Q.AAPL"]`` -> ``("T.*", "Q.AAPL")``, validated for ``market``."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        raise ControlError("subscriptions must be a string or a list of strings")
    if len(value) > MAX_CONTROL_BYTES:
        raise ControlError("subscriptions too long")
    valid, invalid = massive.parse_subscriptions(value, market)
    if invalid:
        raise ControlError(f"invalid subscriptions for {market}: {', '.join(invalid[:5])}")
    return tuple(dict.fromkeys(f"{ev}.{sym}" for ev, sym in valid))


def parse_desired(raw: bytes | str, market: str) -> Desired:
    data = _json_object(raw)
    unknown = set(data) - {"subscriptions", "paused"}
    if unknown:
        raise ControlError(f"unknown fields: {', '.join(sorted(unknown))}")
    paused = data.get("paused", False)
    if not isinstance(paused, bool):
        raise ControlError("paused must be true or false")
    return Desired(parse_subscriptions(data.get("subscriptions"), market), paused)


def parse_action(raw: bytes | str) -> str:
    data = _json_object(raw)
    action = data.get("action")
    if action not in ACTIONS:
        raise ControlError(f"action must be one of {', '.join(ACTIONS)}")
    return action


def _json_object(raw: bytes | str) -> dict[str, Any]:
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > MAX_CONTROL_BYTES:
        raise ControlError(f"larger than {MAX_CONTROL_BYTES} bytes")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ControlError("not JSON") from None
    if not isinstance(data, dict):
        raise ControlError("not a JSON object")
    return data


async def request(
    client: Redis | RedisCluster,
    market: str,
    *,
    subscriptions: str | list[str] | None = None,
    paused: bool | None = None,
    reconnect: bool = False,
) -> Desired | None:
    """Ask the listener of ``market`` for new subscriptions, a pause or resume, or a reconnect.

    Validates first (ControlError), keeps what is not given from the current desired state (or, before
    anything was ever asked, from what the running listener reports), and returns the new desired
    state (None for a bare reconnect). Read and write are one optimistic transaction, so two callers
    at once never undo each other (a pause and a change of subscriptions both hold).
    """
    desired = None
    cluster = isinstance(client, RedisCluster)
    if subscriptions is not None or paused is not None:
        subs_given = parse_subscriptions(subscriptions, market) if subscriptions is not None else None
        key = names.mdl_desired(market)
        async with client.pipeline(transaction=True) as pipe:
            for _ in range(REQUEST_ATTEMPTS):
                try:
                    await pipe.watch(key)
                    base = await _current(pipe, client, market)
                    subs = subs_given if subs_given is not None else base.subscriptions
                    if not subs:
                        raise ControlError("no subscriptions known yet: give some")
                    desired = Desired(subs, base.paused if paused is None else paused)
                    body = {"subscriptions": ",".join(desired.subscriptions), "paused": desired.paused}
                    pipe.multi()
                    pipe.set(key, orjson.dumps(body))
                    if not cluster:
                        pipe.publish(names.mdl_control(market), b'{"action":"reload"}')
                    await pipe.execute()
                    break
                except WatchError:
                    continue  # another request changed it meanwhile: start again from its result
            else:
                raise ControlError("the desired state keeps changing under us: try again")
        if cluster:
            await client.publish(names.mdl_control(market), b'{"action":"reload"}')
    if reconnect:
        await client.publish(names.mdl_control(market), b'{"action":"reconnect"}')
    return desired


async def _current(pipe: Any, client: Redis | RedisCluster, market: str) -> Desired:
    """The desired state in Redis (read on the watching ``pipe``); without one, what the running listener
    reports it follows (its settings' subscriptions; read on ``client``: not watched, and on a cluster
    of another slot); with neither, nothing."""
    current = await pipe.get(names.mdl_desired(market))
    if current:
        return parse_desired(current, market)
    status = await client.get(names.mdl_status(market))
    try:
        reported = orjson.loads(status) if status else {}
        return Desired(
            parse_subscriptions(reported.get("subscriptions"), market), bool(reported.get("paused", False))
        )
    except (orjson.JSONDecodeError, AttributeError, ControlError):
        return Desired(())


class ControlLoop:
    """Listens for control messages and keeps the status key fresh, reconnecting to Redis by itself."""

    def __init__(
        self,
        target: str | Target,
        market: str,
        *,
        apply: Callable[[Desired], None],
        reconnect: Callable[[], Awaitable[None]],
        status: Callable[[], dict[str, Any] | None],
        on_result: Callable[[str], None],
        backoff: Backoff,
        interval: float = 2.0,
    ) -> None:
        self.target = Target(target) if isinstance(target, str) else target
        self.market = market
        self.apply, self.reconnect, self.status, self.on_result = apply, reconnect, status, on_result
        self.backoff = backoff
        self.interval = interval
        self.connected = False
        self.rejected: str | None = None  # why the last desired state was refused
        self._report = False  # write the status at the next turn, not at the next interval

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            client = self.target.client(socket_timeout=5, socket_connect_timeout=5)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(names.mdl_control(self.market))
                    self.connected = True
                    self.backoff.up()
                    await self._load(client)
                    await self._listen(client, pubsub, stop)
            except (RedisError, OSError) as exc:
                if self.connected:
                    log.warning("control: redis lost", extra={"error": str(exc)})
            finally:
                self.connected = False
                self.backoff.down()
                with contextlib.suppress(Exception):
                    await client.aclose()
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.backoff.next_delay())

    def report(self) -> None:
        """Write the status soon (within half the interval): it changed (a listener took the lease)."""
        self._report = True

    async def _listen(self, client: Redis | RedisCluster, pubsub: Any, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_status = 0.0
        while not stop.is_set():
            if self._report or loop.time() >= next_status:
                self._report = False
                status = self.status()  # None: not ours to write (a standby listener)
                if status is not None:
                    body = orjson.dumps({**status, "rejected": self.rejected})
                    await client.set(names.mdl_status(self.market), body, ex=names.MDL_STATUS_TTL_S)
                next_status = loop.time() + self.interval
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.interval / 2)
            if message is None:
                continue
            try:
                action = parse_action(message["data"])
            except ControlError as exc:
                self.on_result("invalid")
                log.warning("control: message refused", extra={"error": str(exc)})
                continue
            if action == "reload":
                await self._load(client)
            else:
                self.on_result("reconnect")
                log.info("control: reconnect requested")
                await self.reconnect()
            next_status = 0.0  # report what changed now

    async def _load(self, client: Redis | RedisCluster) -> None:
        raw = await client.get(names.mdl_desired(self.market))
        if raw is None:
            return
        try:
            desired = parse_desired(raw, self.market)
            if not desired.subscriptions:
                raise ControlError("no subscriptions")
        except ControlError as exc:
            self.rejected = str(exc)
            self.on_result("rejected")
            log.warning("control: desired state refused", extra={"error": self.rejected})
            return
        self.rejected = None
        self.on_result("applied")
        self.apply(desired)
