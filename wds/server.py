"""The gateway (``mdpipe wds``): the thin async adapter around the sans-I/O protocol and sessions.

- One Redis pub/sub subscription per channel for the whole process (``mdc.subscriber``, raw mode),
  counted across clients; each update is parsed just enough to route it (``protocol.update_frame``)
  and its bytes are shared by every client.
- Fan-out never waits: an update goes into each subscribed client's ``Outbox`` (conflated per channel)
  and marks the client for the ``Writer``, which sends what is queued as one message at the end of the
  loop turn. A client that falls behind only conflates; past its buffer, or taking nothing for
  ``WDS_SLOW_CLOSE_S``, it is closed 4008.
- Subscribing: the channel is registered, WDS waits for Redis to confirm the subscription, then reads
  the snapshot (MULTI/EXEC with its ``seq``): updates from then on are stitched to it by ``seq``.
- Chart history (``wds.history``): a ``bars.SYM`` snapshot carries the vendor's minute bars of the day and
  the day before. A symbol without them has them fetched (by the processors, asked through Redis; or by
  WDS itself when given the vendor key); its snapshot waits at most ``WDS_HISTORY_WAIT_S`` in a task of
  its own (the client's other channels and actions go on), and a fresh one follows if they come later.
- Redis lost and back: the subscriber resubscribes; every client gets fresh snapshots (``resync``).
- One Redis or a Redis Cluster (``REDIS_CLUSTER_NODES``, ``mdc.connect.Target``): on a cluster the
  subscriber holds one sharded subscription per slot owner and resyncs the clients after a topology
  change as after a reconnect; snapshots are read one MULTI/EXEC per slot.
- Stateless: any number of replicas behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from mdc.clusterpipe import ClusterPipeline
from mdc.connect import Target
from mdc.heartbeat import Heartbeat
from mdc.historyfetch import HistoryFetcher
from mdc.names import Names
from mdc.reader import Reader, Snapshot
from mdc.subscriber import Subscriber
from mdc.tradingday import TradingDay
from mdc.wire import KEEPALIVE
from mdpipe.observe import ObservabilityServer
from mdpipe.rest import VendorRest
from mdpipe.settings import MdcSettings, WdsSettings, mask_url

from . import metrics
from .history import History
from .protocol import (
    CLOSE_AUTH,
    CLOSE_EXPIRED,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_SLOW,
    CLOSE_TOO_MANY,
    Action,
    ProtocolError,
    encode_authenticated,
    encode_channels,
    encode_error,
    encode_pong,
    encode_snapshot,
    message,
    parse,
    update_frame,
)
from .session import Session
from .tokens import Grant, TokenError, Verifier
from .writer import WRITE_LIMIT, Writer, limit_kernel_buffer, usable

log = logging.getLogger(__name__)

HARD_MAX_FRAME = 1_048_576  # above: websockets closes with 1009; below, WDS_MAX_FRAME_BYTES answers
SNAPSHOT_BATCH = 200  # channels per snapshot read on resync
SWEEP_EVERY_S = 1.0
CONFIRM_TIMEOUT_S = 5.0
REDIS_TIMEOUT_S = 5.0
REDIS_CONNECTIONS = 16  # snapshot reads at once
CLOSE_TIMEOUT_S = 2.0
HANDSHAKE_DONE = Request("/ws", Headers())  # stands for each connection's request once authenticated


class Client:
    """One connection: its session and timers. It holds no task of its own (the gateway's ``Writer``
    writes to it), so an idle connection costs only its websockets objects and its session."""

    __slots__ = ("closing", "expiry", "mark", "message_bytes", "progress", "session", "ws")

    def __init__(
        self, ws: ServerConnection, session: Session, now: float, message_bytes: int, writer: Writer
    ) -> None:
        self.ws, self.session, self.message_bytes = ws, session, message_bytes
        self.progress = now  # the last time a message was written to it
        self.closing = False
        self.mark = writer.mark
        self.expiry: asyncio.TimerHandle | None = None

    def kick(self) -> None:
        """Data waits: it goes out at the end of this loop turn."""
        if not self.closing:
            self.mark(self)


class Gateway:
    def __init__(
        self,
        settings: WdsSettings,
        mdc: MdcSettings,
        *,
        redis_url: str | Target,
        rest: VendorRest | None = None,
        days: TradingDay | None = None,
    ) -> None:
        """``redis_url``: one Redis's URL, or a ``Target`` (a cluster when ``REDIS_CLUSTER_NODES`` is set);
        ``rest``: the vendor's REST API when WDS holds the key (chart history fetched here; else it asks
        the processors); ``days``: the trading day (``MDP_TIMEZONE``, ``MDP_DAY_START``)."""
        self.settings, self.mdc = settings, mdc
        self.names = Names(mdc.mdc_prefix)
        self.instance = settings.wds_instance or f"{socket.gethostname()}:{os.getpid()}"
        self.verifier = Verifier(settings)
        target = redis_url if isinstance(redis_url, Target) else Target(redis_url)
        self.redis_url = target.url
        client_name = f"wds-{self.instance}"[:60].replace(" ", "_")
        self.redis: Redis | RedisCluster
        if target.cluster:
            # per master; redis-py's cluster pool has no blocking wait, so a burst beyond it fails its
            # snapshots (the client is told "unavailable") rather than waiting
            self.redis = target.client(
                max_connections=REDIS_CONNECTIONS * 4,
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
                socket_keepalive=True,
                client_name=client_name,
            )
        else:
            # Snapshot reads share a bounded pool: a thousand clients subscribing at once wait their turn
            # instead of opening a thousand connections.
            pool = BlockingConnectionPool.from_url(
                target.url,
                max_connections=REDIS_CONNECTIONS,
                timeout=REDIS_TIMEOUT_S,
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
                socket_keepalive=True,
                health_check_interval=10,
                client_name=client_name,
                retry=RedisRetry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            )
            self.redis = Redis(connection_pool=pool)
        # on a cluster, snapshots go through mdc.wire pipelines, one per master: redis-py 8.2's cluster
        # transactions run each command in a thread joined on the loop, stalling every client meanwhile
        # (bench/cluster_snapshots.py)
        snapshots = (
            ClusterPipeline(target, client_name + "-snap", REDIS_TIMEOUT_S, KEEPALIVE)
            if target.cluster
            else None
        )
        self.reader = Reader(self.redis, self.names, cluster=snapshots)
        fetcher = None
        if rest is not None and rest.enabled:
            fetcher = HistoryFetcher(
                self.redis, self.names, rest, mdc, days or TradingDay(), instance=self.instance
            )
        self.history = History(self.redis, self.names, fetcher)
        self._late: set[str] = set()  # bars channels whose snapshot went out before their history came
        self.subscriber = Subscriber(
            target,
            mdc.mdc_prefix,
            max_pending=100_000,
            conflate=True,  # behind on Redis: a channel's newest update only (marked conflated to clients)
            on_resubscribed=self._resubscribed,
            client_name=f"wds-sub-{self.instance}"[:60].replace(" ", "_"),
        )
        self.channels: dict[str, tuple[Any, dict[Client, None]]] = {}  # channel -> (handle, clients)
        self.clients: set[Client] = set()
        self.per_token: dict[str, int] = {}
        self.http = ObservabilityServer(
            settings.wds_http_host, settings.wds_http_port, readiness=self.readiness
        )
        self.heartbeat = Heartbeat(self.redis, self.names, "wds", self.instance, self.figures)
        self.server: Server | None = None
        self.port = settings.wds_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self.writer: Writer | None = None  # made on start, in the running loop
        self._tasks: set[asyncio.Future[Any]] = set()
        self._limits = {
            "subscriptions": settings.wds_max_subscriptions,
            "actions_per_s": settings.wds_actions_per_s,
            "frame_bytes": settings.wds_max_frame_bytes,
        }

    # -- running --------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.writer = Writer(self._loop)
        await self.http.start()
        s = self.settings
        quiet = logging.getLogger("wds.websockets")  # its INFO lines carry request paths (tokens)
        quiet.setLevel(logging.WARNING)
        self.server = await serve(
            self._handle,
            s.wds_host,
            s.wds_port,
            process_request=self._check_request,
            compression=None,  # a compressor per client would undo "encode once" (and wds.writer's frames)
            max_size=HARD_MAX_FRAME,
            max_queue=4,
            write_limit=WRITE_LIMIT,
            ping_interval=s.wds_ping_interval_s,
            ping_timeout=s.wds_ping_timeout_s,
            close_timeout=CLOSE_TIMEOUT_S,
            server_header="mdpipe-wds",
            logger=quiet,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("wds listening", extra={"host": s.wds_host, "port": self.port, "instance": self.instance,
                                         "redis": mask_url(self.redis_url)})  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        tasks = [
            asyncio.create_task(self.subscriber.run(stop), name="wds-subscriber"),
            asyncio.create_task(self.heartbeat.run(stop), name="wds-heartbeat"),
            asyncio.create_task(self._sweep(stop), name="wds-sweep"),
        ]
        if self.history.fetcher is None:
            tasks.append(asyncio.create_task(self.history.watch(stop), name="wds-history"))
        try:
            await stop.wait()
        finally:
            await self.close()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                    await asyncio.wait_for(task, 5)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close(close_connections=False)
            await asyncio.gather(
                *(self._close(c, CLOSE_GOING_AWAY, "server shutting down") for c in list(self.clients)),
                return_exceptions=True,
            )
            await self.server.wait_closed()
            self.server = None
        await self.history.close()
        await self.http.stop()
        if self.reader.cluster is not None:
            await self.reader.cluster.close()
        await self.redis.aclose()
        if isinstance(self.redis, Redis):
            await self.redis.connection_pool.disconnect()

    # -- handshake and connection ---------------------------------------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != "/ws":
            return connection.respond(404, "Not found: connect to /ws\n")
        origin = request.headers.get("Origin")
        allowed = self.settings.origins
        if origin is not None and allowed is not None and origin.rstrip("/") not in allowed:
            return connection.respond(403, "Origin not allowed\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        if not usable(ws):  # never with compression=None: a safety net for the writer's raw frames
            log.error("connection with an extension refused", extra={"remote": _remote(ws)})
            await ws.close(CLOSE_INTERNAL, "unsupported extension")
            return
        limit_kernel_buffer(ws)
        grant = await self._authenticate(ws)
        if grant is None:
            return
        grant, ident = grant
        # The handshake's request holds the headers and the token (in the URL): some 4 KB per
        # connection, and a secret. Nothing reads them after authentication.
        ws.request, ws.response = HANDSHAKE_DONE, None
        count = self.per_token.get(grant.token_id, 0)
        if count >= self.settings.wds_connections_per_token:
            metrics.CONNECTS.labels("too_many").inc()
            await self._refuse(
                ws, "too_many_connections", "too many connections with this token", CLOSE_TOO_MANY
            )
            return
        self.per_token[grant.token_id] = count + 1
        loop = asyncio.get_running_loop()
        s = self.settings
        session = Session(grant, s.wds_max_subscriptions, s.wds_actions_per_s, s.wds_client_buffer_bytes)
        assert self.writer is not None  # started
        client = Client(ws, session, loop.time(), s.wds_message_bytes, self.writer)
        self.clients.add(client)
        metrics.CONNECTS.labels("accepted").inc()
        metrics.CONNECTIONS.inc()
        log.info("client connected", extra={"sub": grant.subject, "remote": _remote(ws)})
        try:
            self._authenticated(client, grant, ident)
            async for frame in ws:
                metrics.FRAMES_IN.inc()
                await self._on_frame(client, frame)
        except ConnectionClosed:
            pass
        finally:
            await self._gone(client)

    async def _authenticate(self, ws: ServerConnection) -> tuple[Grant, str | int | None] | None:
        """The token from ``?token=`` or the first frame; None when refused (then closed)."""
        tokens = parse_qs(urlsplit(ws.request.path).query).get("token") if ws.request else None
        ident: str | int | None = None
        if tokens:
            token = tokens[0]
        else:
            try:
                async with asyncio.timeout(self.settings.wds_auth_timeout_s):
                    frame = await ws.recv()
            except TimeoutError:
                metrics.CONNECTS.labels("auth_timeout").inc()
                await self._refuse(ws, "auth_required", "send the auth action first", CLOSE_AUTH)
                return None
            except ConnectionClosed:
                return None
            try:
                action = parse(frame, self.settings.wds_max_frame_bytes)
            except ProtocolError as exc:
                metrics.CONNECTS.labels("auth_failed").inc()
                await self._refuse(ws, exc.code, exc.message, CLOSE_AUTH)
                return None
            if action.name != "auth":
                metrics.CONNECTS.labels("auth_failed").inc()
                await self._refuse(ws, "auth_required", "send the auth action first", CLOSE_AUTH)
                return None
            token, ident = action.token, action.id
        try:
            return self.verifier.verify(token), ident
        except TokenError as exc:
            metrics.CONNECTS.labels(exc.code).inc()
            code = CLOSE_EXPIRED if exc.code == "token_expired" else CLOSE_AUTH
            await self._refuse(ws, exc.code, str(exc), code)
            return None

    async def _refuse(self, ws: ServerConnection, code: str, text: str, close_code: int) -> None:
        metrics.ERRORS.labels(code).inc()
        metrics.CLOSES.labels(str(close_code)).inc()
        with contextlib.suppress(ConnectionClosed):
            await ws.send(message([encode_error(code, text)]), text=True)
            await ws.close(close_code, code)

    def _authenticated(self, client: Client, grant: Grant, ident: str | int | None) -> None:
        client.session.grant = grant
        client.session.outbox.control(encode_authenticated(grant.subject, grant.expires, self._limits, ident))
        client.kick()
        if client.expiry is not None:
            client.expiry.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, grant.expires - time.time())
        client.expiry = loop.call_later(delay, self._expire, client)

    def _expire(self, client: Client) -> None:
        self._error(client, "token_expired", "the token expired: connect again with a fresh one")
        self._spawn(self._close(client, CLOSE_EXPIRED, "token_expired"))

    async def _gone(self, client: Client) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        metrics.CONNECTIONS.dec()
        if client.expiry is not None:
            client.expiry.cancel()
        if self.writer is not None:
            self.writer.forget(client)
        session = client.session
        token_id = session.grant.token_id
        left = self.per_token.get(token_id, 1) - 1
        if left > 0:
            self.per_token[token_id] = left
        else:
            self.per_token.pop(token_id, None)
        for channel in list(session.subscriptions):
            self._unsubscribe(client, channel)
        waiting = session.outbox.clear()
        if waiting:
            metrics.DROPPED.inc(waiting)
        log.info("client disconnected", extra={"sub": session.grant.subject, "code": client.ws.close_code})

    async def _close(self, client: Client, code: int, reason: str) -> None:
        if client.closing:
            return
        client.closing = True
        metrics.CLOSES.labels(str(code)).inc()
        if code == CLOSE_SLOW:
            extra = {"sub": client.session.grant.subject, "queued_bytes": client.session.outbox.bytes}
            log.warning("slow client closed", extra=extra)
        # close() waits for the socket to drain before its own timeout starts: a client that reads
        # nothing would hold it forever, so the connection is aborted after CLOSE_TIMEOUT_S.
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await client.ws.close(code, reason)
        except TimeoutError:
            client.ws.transport.abort()
        except Exception:  # noqa: S110 - closing a connection that is going anyway
            pass

    # -- actions --------------------------------------------------------------------------------------

    async def _on_frame(self, client: Client, frame: str | bytes) -> None:
        session = client.session
        loop = asyncio.get_running_loop()
        if not session.allow_action(loop.time()):
            client.kick()
            return
        try:
            action = parse(frame, self.settings.wds_max_frame_bytes)
        except ProtocolError as exc:
            self._error(client, exc.code, exc.message, exc.id)
            return
        if action.name == "ping":
            session.outbox.control(encode_pong(action.id, int(time.time() * 1000)))
            client.kick()
        elif action.name == "auth":
            self._reauth(client, action)
        elif action.name == "subscribe":
            await self._subscribe(client, action)
        else:
            self._unsubscribe_action(client, action)

    def _reauth(self, client: Client, action: Action) -> None:
        try:
            grant = self.verifier.verify(action.token)
        except TokenError as exc:
            self._error(client, exc.code, str(exc), action.id)
            return
        if grant.subject != client.session.grant.subject:
            self._error(client, "auth_failed", "a fresh token must be for the same subject", action.id)
            return
        # channels the new token no longer allows are dropped
        gone = [c for c in client.session.subscriptions if not grant.allows(c)]
        for channel in gone:
            self._unsubscribe(client, channel)
        if gone:
            client.session.outbox.control(encode_channels("unsubscribed", gone, action.id))
        self._authenticated(client, grant, action.id)

    async def _subscribe(self, client: Client, action: Action) -> None:
        session = client.session
        ok, refused = session.check_subscribe(action.channels)
        for code, text, channels in refused:
            self._error(client, code, text, action.id, channels)
        if not ok:
            return
        for channel in ok:
            if session.subscribe(channel, action.max_hz):
                metrics.SUBSCRIPTIONS.inc()
                self._watch(client, channel)
        session.outbox.control(encode_channels("subscribed", ok, action.id))
        client.kick()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT_S):
                await self.subscriber.confirmed()
            fetches = await self._history_fetches(ok)
            now = [c for c in ok if c not in fetches]
            snapshots = await self._snapshots(now) if now else []
        except (RedisError, OSError, TimeoutError) as exc:
            self._unavailable(client, ok, action.id, exc)
            return
        metrics.SNAPSHOT_SECONDS.observe(time.perf_counter() - started)
        self._deliver(client, snapshots)
        if fetches:
            self._spawn(self._after_history(client, fetches, action.id))

    async def _snapshots(self, channels: list[str]) -> list[Snapshot]:
        return await self.reader.snapshots(channels, minute_bars=self.settings.wds_snapshot_minute_bars)

    def _deliver(self, client: Client, snapshots: list[Snapshot]) -> None:
        now = asyncio.get_running_loop().time()
        for snap in snapshots:
            frame = encode_snapshot(snap.channel, snap.seq, snap.data, False)
            client.session.snapshot(snap.channel, snap.seq, frame, now)
        metrics.SNAPSHOTS.labels("subscribe").inc(len(snapshots))
        client.kick()

    def _unavailable(
        self, client: Client, channels: list[str], ident: str | int | None, exc: Exception
    ) -> None:
        log.warning("snapshots unavailable", extra={"error": repr(exc), "channels": len(channels)})
        for channel in channels:
            self._unsubscribe(client, channel)
        self._error(client, "unavailable", "the market state cannot be read now: subscribe again later",
                    ident, channels)  # fmt: skip

    # -- chart history --------------------------------------------------------------------------------

    async def _history_fetches(self, channels: list[str]) -> dict[str, asyncio.Task[bool]]:
        """The ``bars.SYM`` channels among ``channels`` whose history is being fetched, with the fetch."""
        history = self.history
        syms = [c[5:] for c in channels if c.startswith("bars.")]
        if not syms or (history.fetcher is None and history.server is None):
            return {}  # nobody to fetch them
        fetches = {}
        for sym in await history.missing(syms):
            task = history.fetch(sym)
            if task is not None:
                fetches[f"bars.{sym}"] = task
        return fetches

    async def _after_history(
        self, client: Client, fetches: dict[str, asyncio.Task[bool]], ident: str | int | None
    ) -> None:
        """The snapshots of channels whose history is on its way: once it is stored, or after
        ``WDS_HISTORY_WAIT_S`` without it (and a fresh one to every client of the channel when it comes).
        They are read after the wait, so the live updates held meanwhile are only those of the read."""
        _, late = await asyncio.wait(set(fetches.values()), timeout=self.settings.wds_history_wait_s)
        for channel, task in fetches.items():
            if task in late:
                self._when_late(channel, task)
        if client not in self.clients:
            return
        channels = [c for c in fetches if c in client.session.subscriptions]
        if not channels:
            return
        try:
            snapshots = await self._snapshots(channels)
        except (RedisError, OSError) as exc:
            self._unavailable(client, channels, ident, exc)
            return
        self._deliver(client, snapshots)

    def _when_late(self, channel: str, task: asyncio.Task[bool]) -> None:
        if channel in self._late:
            return
        self._late.add(channel)
        metrics.HISTORY.labels("late").inc()

        def done(task: asyncio.Task[bool]) -> None:
            self._late.discard(channel)
            if task.cancelled() or task.exception() is not None or not task.result():
                return
            entry = self.channels.get(channel)
            if entry is None or self.server is None:
                return
            # the clients that have a snapshot get a fresh one; those still waiting get theirs anyway
            for client in entry[1]:
                client.session.resync(channel)
            self._spawn(self._resync([channel]))

        task.add_done_callback(done)

    def _unsubscribe_action(self, client: Client, action: Action) -> None:
        removed = [c for c in action.channels if self._unsubscribe(client, c)]
        client.session.outbox.control(encode_channels("unsubscribed", removed, action.id))
        client.kick()

    def _watch(self, client: Client, channel: str) -> None:
        entry = self.channels.get(channel)
        if entry is None:
            handle = self.subscriber.on(channel, self._on_update, raw=True)
            entry = self.channels[channel] = (handle, {})
            metrics.CHANNELS.inc()
        entry[1][client] = None

    def _unsubscribe(self, client: Client, channel: str) -> bool:
        if not client.session.unsubscribe(channel):
            return False
        metrics.SUBSCRIPTIONS.dec()
        entry = self.channels.get(channel)
        if entry is not None:
            entry[1].pop(client, None)
            if not entry[1]:
                self.subscriber.off(entry[0])
                del self.channels[channel]
                metrics.CHANNELS.dec()
        return True

    def _error(
        self,
        client: Client,
        code: str,
        text: str,
        ident: str | int | None = None,
        channels: list[str] | None = None,
    ) -> None:
        metrics.ERRORS.labels(code).inc()
        client.session.outbox.control(encode_error(code, text, ident, channels))
        client.kick()

    # -- updates --------------------------------------------------------------------------------------

    def _on_update(self, channel: str, data: bytes, skipped: int = 0) -> None:
        """The subscriber's raw callback: fan one update out to every client of its channel. ``skipped``:
        older updates of the channel this one replaced while WDS was behind on its Redis input."""
        metrics.UPDATES_IN.inc(1 + skipped)
        if skipped:
            metrics.INPUT_CONFLATED.inc(skipped)
        update = update_frame(data)
        if update is None or update.channel != channel:
            metrics.MALFORMED.inc()
            return
        entry = self.channels.get(channel)
        if entry is None:
            return
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        conflated = 0
        input_skipped = skipped > 0
        writer = self.writer
        assert writer is not None  # started
        dirty = writer.dirty  # marked inline: no call per client
        for client in entry[1]:
            session = client.session
            replaced, release_at = session.offer(update, now, input_skipped)
            if release_at:
                loop.call_at(release_at, self._release, client, channel)
            outbox = session.outbox
            if outbox.bytes:  # something waits (this update, or what was there)
                conflated += replaced
                if client.closing:
                    continue
                if outbox.bytes > outbox.max_bytes and outbox.over:
                    self._spawn(self._close(client, CLOSE_SLOW, "too slow"))
                dirty[client] = None
        if dirty:
            writer.schedule()
        if conflated:
            metrics.CONFLATED.inc(conflated)

    def _release(self, client: Client, channel: str) -> None:
        if client in self.clients and client.session.release(channel, self._loop.time()):  # type: ignore[union-attr]
            client.kick()

    async def _sweep(self, stop: asyncio.Event) -> None:
        """Close the clients that take nothing while data waits for them."""
        loop = asyncio.get_running_loop()
        limit = self.settings.wds_slow_close_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SWEEP_EVERY_S)
            now = loop.time()
            metrics.REDIS_CONNECTED.set(1 if self.subscriber.connected else 0)
            for client in list(self.clients):
                if client.session.outbox and not client.closing and now - client.progress > limit:
                    self._spawn(self._close(client, CLOSE_SLOW, "too slow"))

    # -- Redis came back ------------------------------------------------------------------------------

    def _resubscribed(self) -> None:
        """Called by the subscriber, in order with the updates, after it subscribed everything again:
        hold every client's live updates until its fresh snapshot is out."""
        if not self.channels:
            return
        for client in self.clients:
            client.session.resyncing()
        self._spawn(self._resync(list(self.channels)))

    async def _resync(self, channels: list[str]) -> None:
        for start in range(0, len(channels), SNAPSHOT_BATCH):
            batch = [c for c in channels[start : start + SNAPSHOT_BATCH] if c in self.channels]
            attempt = 0
            while True:  # until read: the clients of these channels hold their updates meanwhile
                try:
                    snapshots = await self.reader.snapshots(
                        batch, minute_bars=self.settings.wds_snapshot_minute_bars
                    )
                    break
                except (RedisError, OSError) as exc:
                    attempt += 1
                    log.warning("resync snapshots failed", extra={"error": repr(exc), "attempt": attempt})
                    await asyncio.sleep(min(5.0, 0.5 * attempt))
                if self.server is None:  # shutting down
                    return
            now = asyncio.get_running_loop().time()
            for snap in snapshots:
                entry = self.channels.get(snap.channel)
                if entry is None:
                    continue
                frame = encode_snapshot(snap.channel, snap.seq, snap.data, True)
                for client in entry[1]:
                    client.session.snapshot(snap.channel, snap.seq, frame, now)
                    client.kick()
                metrics.SNAPSHOTS.labels("resync").inc(len(entry[1]))
        log.info("clients resynced", extra={"channels": len(channels), "clients": len(self.clients)})

    def _spawn(self, work: Any) -> None:
        """Run ``work`` in the background, holding a reference until it is done."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reporting ------------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready = self.server is not None and self.subscriber.connected
        return ready, {
            "redis": "subscribed" if self.subscriber.connected else "connecting",
            "clients": len(self.clients),
            "channels": len(self.channels),
            # chart history's REST side: `degraded` after a failed call (the stream is unaffected), `off`
            # when nobody fetches it (no key here, no processor serving)
            "rest": self.history.readiness(),
        }

    def figures(self) -> dict[str, Any]:
        ready, detail = self.readiness()
        return {"ready": ready, **detail, "port": self.port}


def _remote(ws: ServerConnection) -> str:
    with contextlib.suppress(Exception):
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    return "?"
