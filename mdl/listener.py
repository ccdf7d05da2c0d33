"""The listener: the one vendor connection, supervised, feeding the publisher through a bounded hand-off.

Three tasks share one event loop:

- the feed: ``massive.WebSocketClient`` in raw mode. Its processor runs inline in the socket read loop,
  so it only stamps the frame, notes any status events, and puts the frame in the hand-off (which drops
  the oldest frames when full); it never waits. The client is told never to reconnect by itself
  (``max_reconnects=0``): its own counter is never reset and it gives up for good after a few drops.
  The supervisor here reconnects forever instead, with capped, jittered, resetting backoff, and makes a
  new client each time with the desired subscriptions, so none are lost across a drop.
- the publisher loop: takes frames from the hand-off, routes them (``mdl.router``), merges them per
  queue (``mdq.batching``) and publishes. Frames older than the queue TTL are dropped before
  publishing, since the queue would drop them anyway; while RabbitMQ is away frames wait in the
  hand-off until they expire or overflow, and publishing resumes by itself when it is back.
- the control loop (``mdl.control``): run-time subscription changes, pause, reconnect, status in Redis.
- the lease (``mdl.lease``), with Redis: of several replicas of a market only the holder connects to the
  vendor and publishes; the others are standbys (connected to RabbitMQ and Redis, ready) and take over
  when it dies or stops. The holder checks its local lease deadline before every message it publishes
  and closes its vendor connection when the deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from massive import WebSocketClient
from massive.exceptions import AuthError
from websockets.exceptions import ConnectionClosedError

from mdc.connect import Target
from mdpipe import __version__, massive
from mdpipe.backoff import Backoff
from mdpipe.observe import ObservabilityServer
from mdpipe.settings import MassiveSettings, MdlSettings, MdqSettings
from mdq.batching import Batcher
from mdq.publisher import BrokerUnavailable, Publisher

from . import metrics
from .control import ControlLoop, Desired, parse_subscriptions
from .handoff import Handoff, Received
from .lease import Change, Lease
from .router import FrameError, Router

log = logging.getLogger(__name__)

FRAMES_PER_ROUND = 512  # frames routed between two publishes: bounds how long the read loop waits
BUSY_LINGER_S = 0.001  # frames came in during a publish: the read loop runs alone this long first
STOP_TIMEOUT_S = 5.0
_STATUS_SNIFF = ('"status"', b'"status"')  # a frame without this text has no status event
_WARN_EVERY_S = 5.0

# Close causes, for the reconnect counter: statuses the vendor sends before closing win over codes.
_CLOSE_CODES = {1006: "dropped", 1011: "server_error", 1008: "policy", 1009: "too_big"}
_KICKS = (massive.MAX_CONNECTIONS, massive.SLOW_CONSUMER)


class FatalFeedError(Exception):
    """The vendor refused us for good (a wrong API key): retrying would not help."""


class Listener:
    def __init__(
        self,
        feed: MassiveSettings,
        mdq: MdqSettings,
        settings: MdlSettings,
        *,
        rabbitmq_url: str,
        redis_url: str | Target | None,
    ) -> None:
        """``redis_url``: one Redis's URL or a ``Target`` (a Redis Cluster: lease, control and status keys
        routed by slot); None: no lease, no run-time control."""
        if feed.massive_api_key is None:
            raise ValueError("MASSIVE_API_KEY is not set")
        self.feed, self.mdq, self.settings = feed, mdq, settings
        self.instance = settings.mdl_instance or f"{socket.gethostname()}:{os.getpid()}"
        self.desired = Desired(parse_subscriptions(feed.massive_subscriptions, feed.massive_market))
        self.router = Router(feed.massive_market, mdq.mdq_exchange, mdq.mdq_shards)
        self.handoff = Handoff(settings.mdl_handoff_frames, settings.mdl_handoff_bytes)
        self.batcher = Batcher(self.instance, settings.mdl_batch_events)
        self.publisher = Publisher(rabbitmq_url, mdq, self._backoff(), name=f"mdl {self.instance}")
        self.control = (
            ControlLoop(
                redis_url,
                feed.massive_market,
                apply=self.apply,
                reconnect=self.reconnect,
                status=self.status,
                on_result=lambda result: metrics.CONTROL.labels(result).inc(),
                backoff=self._backoff(),
            )
            if redis_url
            else None
        )
        self.lease = (
            Lease(
                redis_url,
                feed.massive_market,
                self.instance,
                ttl_s=settings.mdl_lease_ttl_s,
                retry_s=settings.mdl_lease_retry_s,
                on_change=self._role_changed,
            )
            if redis_url and settings.mdl_lease
            else None
        )
        self.role = "standby" if self.lease is not None else "leader"
        self._leading = asyncio.Event()  # set while leader: the feed may connect
        self._demoted = asyncio.Event()  # set when the lease is lost: the feed closes its connection
        if self.lease is None:
            self._leading.set()
        self.http = ObservabilityServer(
            settings.mdl_http_host, settings.mdl_http_port, readiness=self.readiness
        )
        self.state = "starting"
        self.client: WebSocketClient | None = None
        self.statuses: dict[str, dict[str, Any]] = {}
        self.reconnects: dict[str, int] = {}
        self.malformed = 0
        self._feed_backoff = self._backoff()
        self._wake = asyncio.Event()
        self._conn_frames = 0
        self._conn_status: str | None = None
        self._requested = False
        self._tap = None
        self._warned: dict[str, float] = {}
        self._event_counters: dict[str, Any] = {}

    def _backoff(self) -> Backoff:
        s = self.settings
        return Backoff(s.mdl_backoff_initial_s, s.mdl_backoff_max_s, s.mdl_healthy_s)

    # -- running --------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; raise FatalFeedError when the vendor refuses the API key."""
        if self.settings.mdl_tap_file:
            from sim.recorder import Tap

            self._tap = Tap(
                Path(self.settings.mdl_tap_file),
                {"market": self.feed.massive_market, "feed": self.feed.massive_feed,
                 "subscriptions": ",".join(self.desired.subscriptions), "started_ns": time.time_ns()},
            )  # fmt: skip
        await self.http.start()
        done = asyncio.Event()  # set when this run ends, whatever ended it
        tasks = [
            asyncio.create_task(self.publisher.run(done), name="mdl-broker"),
            asyncio.create_task(self._publish_loop(done), name="mdl-publish"),
        ]
        if self.control is not None:
            tasks.append(asyncio.create_task(self.control.run(done), name="mdl-control"))
        lease = None
        if self.lease is not None:
            metrics.LEADER.set(0)
            lease = asyncio.create_task(self.lease.run(done), name="mdl-lease")
        feed = asyncio.create_task(self._supervise(stop), name="mdl-feed")
        try:
            await feed
        finally:
            done.set()
            self._wake.set()
            if not feed.done():
                feed.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(feed, STOP_TIMEOUT_S)
            if lease is not None and self.lease is not None:
                # The vendor connection is closed: give the lease up so that a standby takes over now.
                lease.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await lease
                await self.lease.release()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, STOP_TIMEOUT_S)
            await self.http.stop()
            if self._tap is not None:
                await self._tap.close()
            self.state = "stopped"
            metrics.CONNECTED.set(0)
            metrics.BROKER_CONNECTED.set(0)

    async def _supervise(self, stop: asyncio.Event) -> None:
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if not self._leading.is_set():
                    self.state = "standby"
                    leading = asyncio.create_task(self._leading.wait())
                    await asyncio.wait({leading, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    leading.cancel()
                    continue
                cause = await self._connect_once(stopper)
                if cause is None:  # stopping
                    return
                if cause == "lease_lost":
                    metrics.CONNECTED.set(0)
                    continue
                metrics.CONNECTED.set(0)
                self.reconnects[cause] = self.reconnects.get(cause, 0) + 1
                metrics.RECONNECTS.labels(cause).inc()
                self._feed_backoff.down()
                if cause == "requested":
                    log.info("reconnecting on request")
                    continue
                delay = self._feed_backoff.next_delay()
                self.state = "backoff"
                log.warning("vendor connection lost", extra={"cause": cause, "retry_in_s": round(delay, 2)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stopper), delay)
        finally:
            stopper.cancel()

    async def _connect_once(self, stopper: asyncio.Task) -> str | None:
        """One client's life; returns why it ended (None when stopping) or raises FatalFeedError."""
        desired = self.desired
        client = WebSocketClient(
            api_key=self.feed.massive_api_key.get_secret_value(),  # type: ignore[union-attr]
            feed=self.feed.massive_feed,
            market=self.feed.massive_market,
            raw=True,
            subscriptions=[] if desired.paused else list(desired.subscriptions),
            max_reconnects=0,
            secure=self.feed.secure,
        )
        self.client, self.state = client, "connecting"
        self._conn_frames, self._conn_status, self._requested = 0, None, False
        log.info("connecting", extra={"url": client.url, "subscriptions": len(desired.subscriptions)})
        self._demoted.clear()
        task = asyncio.create_task(
            client.connect(
                self._on_frame, max_size=None, open_timeout=10, reconnect_delays=self._connect_delays
            ),
            name="mdl-client",
        )
        demoted = asyncio.create_task(self._demoted.wait())
        await asyncio.wait({task, stopper, demoted}, return_when=asyncio.FIRST_COMPLETED)
        demoted.cancel()
        if not task.done():  # stopping, or the lease was lost
            await self._close(client, task)
            return None if stopper.done() else "lease_lost"
        if self._demoted.is_set():
            self.client = None
            return "lease_lost"
        self.client = None
        exc = task.exception()
        if isinstance(exc, AuthError):
            self.state = "auth_failed"
            raise FatalFeedError(f"the vendor refused MASSIVE_API_KEY ({exc})")
        if self._requested:
            return "requested"
        if exc is None:
            return self._conn_status if self._conn_status in _KICKS else "closed"
        if self._conn_status in _KICKS:
            return self._conn_status
        if isinstance(exc, ConnectionClosedError):
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            return _CLOSE_CODES.get(code, "error")
        log.warning("vendor connection failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        return "error"

    def _connect_delays(self):
        """Delays between failed connection attempts, inside the client (websockets' reconnect loop)."""
        for delay in self._feed_backoff.delays():
            self.state = "backoff"
            self.reconnects["connect_failed"] = self.reconnects.get("connect_failed", 0) + 1
            metrics.RECONNECTS.labels("connect_failed").inc()
            self._warn("connect_failed", "cannot connect to the vendor", retry_in_s=round(delay, 2))
            yield delay
            self.state = "connecting"

    async def _close(self, client: WebSocketClient, task: asyncio.Task) -> None:
        # client.close() ends connect() cleanly; cancelling it mid-read can be swallowed on Python 3.11.
        if client.websocket is not None:
            with contextlib.suppress(Exception):
                await client.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
        if not task.done():
            task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, STOP_TIMEOUT_S)
        self.client = None

    def _role_changed(self, change: Change) -> None:
        """The lease says we lead, or no longer do (at the latest at the local deadline)."""
        metrics.LEADER.set(1 if change.leader else 0)
        if self.control is not None:
            self.control.report()
        if change.leader:
            self.role = "leader"
            metrics.TAKEOVERS.inc()
            self._demoted.clear()
            self._leading.set()
            log.warning("lease acquired: leader, connecting to the vendor", extra={"instance": self.instance})
            return
        self.role = "standby"
        metrics.LEASE_LOST.labels(change.cause).inc()
        self._leading.clear()
        self._demoted.set()  # the feed closes the vendor connection now
        self.state = "standby"
        stale = self.handoff.take(len(self.handoff))
        if stale:
            self._dropped(stale, "not_leader")
        log_ = log.info if change.cause == "released" else log.warning
        log_("lease lost: standby, vendor connection closed", extra={"cause": change.cause})

    async def reconnect(self) -> None:
        """Drop the vendor connection and connect again at once (a control-plane request)."""
        client = self.client
        if client is not None and client.websocket is not None:
            self._requested = True
            await client.close()

    def apply(self, desired: Desired) -> None:
        """Make ``desired`` the subscriptions (or pause) of the live client and of every later one."""
        changed = desired != self.desired
        self.desired = desired
        client = self.client
        if client is not None and changed:
            # The client reconciles scheduled_subs with what it has within a second (its read timeout).
            client.scheduled_subs = set() if desired.paused else set(desired.subscriptions)
            client.schedule_resub = True
        if changed:
            log.info(
                "subscriptions changed",
                extra={"subscriptions": ",".join(desired.subscriptions)[:500], "paused": desired.paused},
            )

    # -- the read loop's processor: never waits -------------------------------------------------------

    async def _on_frame(self, frame: str | bytes) -> None:
        recv_ns = time.time_ns()
        metrics.FRAMES.inc()
        if self._conn_frames == 0:
            self.state = "connected"
            metrics.CONNECTED.set(1)
            self._feed_backoff.up()
            # the processors see the new number in mdq-conn: what the feed said meanwhile is missing
            self.batcher.conn += 1
            log.info("vendor connected", extra={"connection": self.batcher.conn})
        self._conn_frames += 1
        if _STATUS_SNIFF[isinstance(frame, bytes)] in frame:
            self._statuses(frame)
        dropped = self.handoff.put(Received(recv_ns, frame))
        if dropped:
            self._dropped(dropped, "handoff_full")
        if self._tap is not None and not self._tap.put(recv_ns, frame):
            metrics.TAP_DROPPED.inc()
        self._wake.set()

    def _statuses(self, frame: str | bytes) -> None:
        try:
            statuses = self.router.route(frame).statuses
        except FrameError:
            return  # counted when the publisher routes it
        for event in statuses:
            status = str(event.get("status"))
            message = str(event.get("message", ""))[:200]
            label = status if status in _KNOWN_STATUSES else "other"
            metrics.STATUS.labels(label).inc()
            seen = self.statuses.setdefault(label, {"count": 0})
            seen.update(count=seen["count"] + 1, last=time.time(), message=message)
            if label in _KICKS or label == massive.ERROR:
                self._conn_status = label if label in _KICKS else self._conn_status
                log.warning("vendor status", extra={"status": label, "detail": message})
            else:
                log.info("vendor status", extra={"status": label, "detail": message})

    # -- publishing -----------------------------------------------------------------------------------

    async def _publish_loop(self, done: asyncio.Event) -> None:
        ttl_ns = self.mdq.mdq_message_ttl_ms * 1_000_000
        handoff, publisher = self.handoff, self.publisher
        while not done.is_set():
            metrics.HANDOFF_FRAMES.set(len(handoff))
            metrics.HANDOFF_BYTES.set(handoff.bytes)
            metrics.BROKER_CONNECTED.set(publisher.connected)
            if not handoff:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                continue
            expired = handoff.expire(time.time_ns() - ttl_ns)
            if expired:
                self._dropped(expired, "expired")
            if self.lease is not None and not self.lease.valid():
                self._dropped(handoff.take(len(handoff)), "not_leader")  # the fence: never after the deadline
                continue
            if not publisher.connected:
                with contextlib.suppress(TimeoutError):  # frames wait for the broker until they expire
                    await asyncio.wait_for(publisher.ready.wait(), 0.25)
                continue
            frames = handoff.take(FRAMES_PER_ROUND)
            try:
                messages = self._route(frames)
            except Exception:  # a bug in routing must cost these frames, not the listener
                log.exception("routing failed; frames dropped")
                metrics.DROPPED_FRAMES.labels("error").inc(len(frames))
                continue
            if not messages:
                await asyncio.sleep(0)
                continue
            # The publisher iterates the messages in order: with a lease, the fence is checked before each.
            fenced = messages if self.lease is None else _Fenced(messages, self.lease.valid)
            try:
                await publisher.publish(fenced)  # type: ignore[arg-type]
                sent = len(messages)
            except BrokerUnavailable as exc:
                sent = exc.sent
                lost = messages[sent:]
                metrics.DROPPED_EVENTS.labels("broker_down").inc(sum(m.count for m in lost))
                self._warn("broker_down", "publish failed, events dropped", error=str(exc))
            if isinstance(fenced, _Fenced) and fenced.passed < sent:
                sent = fenced.passed
                metrics.DROPPED_EVENTS.labels("not_leader").inc(sum(m.count for m in messages[sent:]))
            now = time.time_ns()
            for out in messages[:sent]:
                metrics.MESSAGES.labels(out.cls).inc()
                metrics.PUBLISHED.labels(out.cls).inc(out.count)
                metrics.PUBLISH_LATENCY.observe((now - out.recv_ns) / 1e9)
            if handoff and len(handoff) < FRAMES_PER_ROUND:
                # Frames came in while we published: the feed is busy or in a burst. Each await in publish()
                # lets the read loop in for about one frame, so without this pause a round holds a frame or
                # two and batching never engages (~1.5 messages per frame, each ~100 us of aiormq/pamqp CPU
                # here, and as much again in RabbitMQ). Pausing lets the next round merge what arrives; a
                # round that ends with the hand-off empty does not wait.
                await asyncio.sleep(BUSY_LINGER_S)

    def _route(self, frames: list[Received]):
        counts: dict[str, int] = {}
        batcher, router = self.batcher, self.router
        for recv_ns, frame in frames:
            try:
                routed = router.route(frame)
            except FrameError as exc:
                self.malformed += 1
                metrics.MALFORMED.inc()
                self._warn("malformed", "malformed frame", error=str(exc), start=str(frame[:120]))
                continue
            for queue, (cls, events) in routed.groups.items():
                batcher.add(queue, cls, events, recv_ns)
            if routed.invalid:
                metrics.MALFORMED_EVENTS.inc(routed.invalid)
                self._warn("malformed_events", "array elements that are not events left out")
            for label, n in routed.counts.items():
                counts[label] = counts.get(label, 0) + n
        for label, n in counts.items():
            counter = self._event_counters.get(label)
            if counter is None:
                self._event_counters[label] = counter = metrics.EVENTS.labels(label)
            counter.inc(n)
        return batcher.flush()

    def _dropped(self, frames: list[Received], cause: str) -> None:
        metrics.DROPPED_FRAMES.labels(cause).inc(len(frames))
        self._warn(cause, "frames dropped", frames=len(frames))

    def _warn(self, key: str, message: str, **fields: Any) -> None:
        """Log at most once per _WARN_EVERY_S per key: a broker outage must not flood the logs."""
        now = time.monotonic()
        if now - self._warned.get(key, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._warned[key] = now
            log.warning(message, extra={"cause": key, **fields})

    # -- reporting ------------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self.role == "leader":
            ready = self.state == "connected" and self.publisher.connected
        else:  # a standby is healthy when it could take over: the broker is there
            ready = self.publisher.connected
        lease = self.lease
        return ready, {
            "role": self.role,
            "leader": self.instance if lease is None or lease.leader else lease.holder,
            "lease": None if lease is None else ("connected" if lease.connected else "down"),
            "vendor": self.state,
            "broker": "connected"
            if self.publisher.connected
            else (self.publisher.last_error or "connecting"),
            "control": None if self.control is None else ("connected" if self.control.connected else "down"),
            "handoff_frames": len(self.handoff),
            "paused": self.desired.paused,
            "statuses": {k: v for k, v in self.statuses.items() if k != massive.SUCCESS},
            "reconnects": self.reconnects,
        }

    def status(self) -> dict[str, Any] | None:
        """What the control plane reads from the status key; only the leader writes it (None: standby)."""
        if self.role != "leader":
            return None
        ready, detail = self.readiness()
        return {
            "instance": self.instance,
            "version": __version__,
            "market": self.feed.massive_market,
            "ts": time.time(),
            "ready": ready,
            "subscriptions": list(self.desired.subscriptions),
            **detail,
        }


class _Fenced:
    """Messages handed to the publisher one at a time while ``valid()`` (the lease's fence) holds."""

    __slots__ = ("messages", "passed", "valid")

    def __init__(self, messages: list[Any], valid: Any) -> None:
        self.messages, self.valid, self.passed = messages, valid, 0

    def __iter__(self):
        for out in self.messages:
            if not self.valid():
                return
            self.passed += 1
            yield out


_KNOWN_STATUSES = frozenset(
    {
        massive.CONNECTED,
        massive.AUTH_SUCCESS,
        massive.AUTH_FAILED,
        massive.AUTH_TIMEOUT,
        massive.SUCCESS,
        massive.ERROR,
        massive.MAX_CONNECTIONS,
        massive.SLOW_CONSUMER,
    }
)
