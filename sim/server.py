"""The emulator's network side: a ``websockets`` server that runs a ``Session`` per client.

Each authenticated client gets a pump task that reads frames from the source and sends the ones its
subscriptions match. Around that, the vendor's behaviours and the fault switches:

- ``max_connections``: past ``SIM_MAX_CONNECTIONS`` authenticated clients, the oldest gets the status
  and a 1008 close, as the vendor does when a second consumer logs in with the same key;
- ``slow_consumer``: a client more than ``SIM_BUFFER_FRAMES`` frames behind gets the status and a
  1008 close;
- faults injected on demand (``Emulator.inject`` or ``POST /faults``), listed in ``FAULTS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from mdpipe import massive
from mdpipe.massive import status_event
from mdpipe.observe import ObservabilityServer, Request, Response
from mdpipe.settings import SimSettings

from . import metrics
from .frames import status_frame
from .market import SyntheticMarket
from .protocol import CLOSE_POLICY, Session, State
from .recording import RecordingReader
from .sources import (
    FileSource,
    Lagged,
    PacedSource,
    PoolSource,
    ReplayPaced,
    Source,
    SyntheticPaced,
    TapeReader,
)

log = logging.getLogger(__name__)

FAULTS: dict[str, str] = {
    "max_connections": "every client gets the max_connections status, then a 1008 close",
    "slow_consumer": "every client gets the slow_consumer status, then a 1008 close",
    "drop": "the TCP connection is aborted, with no close frame (the client sees 1006)",
    "close_1000": "the server closes with 1000 (normal closure; the massive client then gives up)",
    "close_1011": "the server closes with 1011 (internal error)",
    "oversize": "one frame of valid events, over 1 MiB",
    "malformed": "one frame that is not valid JSON",
    "unknown_event": "one frame with an event type the vendor does not have",
    "stall": "nothing is sent for `seconds` (default 5); paced sources keep producing meanwhile",
}
MAX_CONNECTIONS_MESSAGE = (
    "Maximum number of websocket connections exceeded. You have been disconnected. "
    "Update your subscription plan for more connections."
)
SLOW_CONSUMER_MESSAGE = "consumer is too slow; disconnecting"
OVERSIZE_BYTES = 1024 * 1024 + 64 * 1024
MALFORMED = b'[{"ev":"T","sym":"AAPL","p":187.3,"s":'
MAX_STALL_S = 3600.0
WATCH_INTERVAL_S = 0.25
KICK_SEND_TIMEOUT_S = 2.0


@dataclass(eq=False)
class Client:
    ws: ServerConnection
    session: Session
    opened: float = field(default_factory=time.monotonic)
    pump: asyncio.Task[None] | None = None
    reader: object = None
    ended: str = "closed"  # outcome label for the connections metric


def build_source(settings: SimSettings, now_ms: int) -> tuple[Source, str]:
    """The source the settings describe, and the market path it serves."""
    if settings.sim_replay:
        path = Path(settings.sim_replay)
        with RecordingReader(path) as reader:  # fail at start on a file that is not a recording
            market = str(reader.header.get("market", settings.sim_market))
        if market not in massive.MARKETS:
            market = settings.sim_market
        if settings.sim_replay_speed == 0:
            return FileSource(path), market
        return ReplayPaced(path, speed=settings.sim_replay_speed, capacity=settings.sim_buffer_frames), market
    synthetic = SyntheticMarket(
        seed=settings.sim_seed, symbols=settings.sim_symbols, rate=settings.sim_rate,
        tick_ms=settings.sim_tick_ms, start_ms=settings.start_ms(now_ms),
    )  # fmt: skip
    if settings.sim_rate == 0:
        source: Source = PoolSource(
            synthetic, events=settings.sim_pool_events, frame_events=settings.sim_frame_events,
            send_ts=settings.sim_send_ts,
        )  # fmt: skip
    else:
        source = SyntheticPaced(
            synthetic, capacity=settings.sim_buffer_frames, frame_events=settings.sim_frame_events,
            send_ts=settings.sim_send_ts,
        )  # fmt: skip
    return source, settings.sim_market


class Emulator:
    def __init__(self, settings: SimSettings, *, now_ms: int | None = None) -> None:
        self.settings = settings
        self.source, self.market = build_source(settings, now_ms or time.time_ns() // 1_000_000)
        self.clients: list[Client] = []  # authenticated, oldest first
        self.stalled_until = 0.0
        self._api_key = settings.sim_api_key.get_secret_value()
        self._server: Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.http = ObservabilityServer(
            settings.sim_host, settings.sim_http_port, readiness=self.readiness,
            routes={("GET", "/faults"): self._list_faults, ("POST", "/faults"): self._post_fault},
        )  # fmt: skip

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.source.start()
        self._server = await serve(
            self._handle, self.settings.sim_host, self.settings.sim_port,
            process_request=self._check_path, max_size=self.settings.sim_max_client_frame,
            compression=None, close_timeout=2, server_header="mdpipe-sim",
        )  # fmt: skip
        await self.http.start()
        self._watch = asyncio.create_task(self._watchdog(), name="sim-watchdog")
        log.info(
            "emulator listening",
            extra={
                "url": self.url,
                "http_port": self.http.port,
                "mode": self.source.mode,
                "market": self.market,
            },
        )

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.http.stop()
        await self.source.stop()
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def feed(self) -> str:
        """What a ``massive.WebSocketClient`` takes as ``feed`` (with ``secure=False``)."""
        return f"{self.settings.sim_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://{self.feed}/{self.market}"

    def readiness(self) -> tuple[bool, dict]:
        ready = self._server is not None and self.source.ready
        return ready, {"mode": self.source.mode, "market": self.market, "clients": len(self.clients)}

    # -- connections ------------------------------------------------------------------------------

    def _check_path(self, connection: ServerConnection, request: WsRequest) -> WsResponse | None:
        path = request.path.split("?", 1)[0].strip("/")
        if path == self.market:
            return None
        reason = "market not served by this emulator" if path in massive.MARKETS else "unknown market"
        return connection.respond(HTTPStatus.NOT_FOUND, f"{reason}: /{path}\n")

    async def _handle(self, ws: ServerConnection) -> None:
        client = Client(ws, Session(self.market, self._api_key))
        metrics.CONNECTIONS.labels("opened").inc()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.sim_auth_timeout
        try:
            await ws.send(client.session.greeting(), text=True)
            while client.session.state is not State.CLOSED:
                if client.session.state is State.AWAITING_AUTH:
                    try:
                        data = await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time()))
                    except TimeoutError:
                        client.ended = "auth_timeout"
                        await self._reply(client, client.session.timed_out())
                        break
                else:
                    data = await ws.recv()
                reply = client.session.receive(data)
                if reply.error:
                    metrics.CLIENT_ERRORS.labels(reply.error).inc()
                    if reply.error == "auth_failed":
                        client.ended = "auth_failed"
                await self._reply(client, reply)
                if reply.authenticated:
                    self._admit(client)
                if client.pump is None and client.session.subs and client in self.clients:
                    # data starts with the first subscription, as with the vendor; a replay played
                    # once must not run past a client that has not subscribed yet
                    client.pump = asyncio.create_task(self._pump(client), name="sim-pump")
        except ConnectionClosed:
            pass
        finally:
            await self._forget(client)

    async def _reply(self, client: Client, reply) -> None:
        for frame in reply.frames:
            await client.ws.send(frame, text=True)
        if reply.close:
            await client.ws.close(*reply.close)

    def _admit(self, client: Client) -> None:
        limit = self.settings.sim_max_connections
        if limit:
            for older in self.clients[: max(0, len(self.clients) - limit + 1)]:
                self._spawn(self._kick(older, massive.MAX_CONNECTIONS, MAX_CONNECTIONS_MESSAGE))
        self.clients.append(client)
        metrics.CLIENTS.set(len(self.clients))

    async def _forget(self, client: Client) -> None:
        self._detach(client)
        metrics.CONNECTIONS.labels(client.ended).inc()

    def _detach(self, client: Client) -> None:
        """Stop serving ``client``: out of the list of clients, its pump stopped."""
        if client in self.clients:
            self.clients.remove(client)
            metrics.CLIENTS.set(len(self.clients))
        if client.pump is not None and client.pump is not asyncio.current_task():
            client.pump.cancel()

    async def _pump(self, client: Client) -> None:
        reader = self.source.reader()
        client.reader = reader
        subs = client.session.subs
        ws = client.ws
        loop = asyncio.get_running_loop()
        try:
            async for frame in reader:
                if self.stalled_until > loop.time():
                    await asyncio.sleep(self.stalled_until - loop.time())
                    if isinstance(reader, TapeReader):
                        # the backlog of a stall is the emulator's doing, not the client's: resume no
                        # further back than half the ring, below the watchdog's limit
                        reader.cursor = max(reader.cursor, reader.tape.head - reader.tape.capacity // 2)
                data, count = frame.render(subs)
                if data is None:
                    continue
                if frame.stamped:
                    data = frame.stamp(data)
                await ws.send(data, text=True)
                metrics.FRAMES_SENT.inc()
                metrics.EVENTS_SENT.inc(count)
                metrics.BYTES_SENT.inc(len(data))
        except Lagged:
            self._spawn(self._kick(client, massive.SLOW_CONSUMER, SLOW_CONSUMER_MESSAGE))
        except ConnectionClosed:
            pass

    async def _kick(self, client: Client, status: str, message: str, code: int = CLOSE_POLICY) -> None:
        """Send ``status`` then close, as the vendor does; give up on a client that does not read."""
        if client.session.state is State.CLOSED:
            return
        client.session.state = State.CLOSED
        client.ended = status
        self._detach(client)
        log.info("closing client", extra={"status": status, "peer": _peer(client.ws)})
        try:
            await asyncio.wait_for(client.ws.send(status_frame(status_event(status, message)), text=True),
                                   KICK_SEND_TIMEOUT_S)  # fmt: skip
            await client.ws.close(code, status)
        except (TimeoutError, ConnectionClosed):
            client.ws.transport.abort()

    async def _watchdog(self) -> None:
        """Close clients that lag too far behind a paced source (a pump blocked in send cannot see it)."""
        if not isinstance(self.source, PacedSource):
            return
        limit = self.source.tape.capacity * 9 // 10
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if asyncio.get_running_loop().time() < self.stalled_until + WATCH_INTERVAL_S:
                continue  # pumps are held by a stall: their lag is the stall's, not the clients'
            for client in list(self.clients):
                if isinstance(client.reader, TapeReader) and client.reader.lag > limit:
                    self._spawn(self._kick(client, massive.SLOW_CONSUMER, SLOW_CONSUMER_MESSAGE))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- faults -----------------------------------------------------------------------------------

    async def inject(self, fault: str, seconds: float = 5.0) -> int:
        """Inject ``fault`` into every authenticated client; returns how many it reached."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        metrics.FAULTS.labels(fault).inc()
        targets = list(self.clients)
        log.info("injecting fault", extra={"fault": fault, "clients": len(targets)})
        if fault == "stall":
            self.stalled_until = asyncio.get_running_loop().time() + min(max(seconds, 0.0), MAX_STALL_S)
            return len(targets)
        if fault in (massive.MAX_CONNECTIONS, massive.SLOW_CONSUMER):
            message = "injected by the emulator"
            await asyncio.gather(*(self._kick(c, fault, message) for c in targets))
            return len(targets)
        for client in targets:
            with contextlib.suppress(ConnectionClosed):
                await self._fault_one(client, fault)
        return len(targets)

    async def _fault_one(self, client: Client, fault: str) -> None:
        ws = client.ws
        if fault == "drop":
            ws.transport.abort()
        elif fault == "close_1000":
            await ws.close(1000, "closed by the server")
        elif fault == "close_1011":
            await ws.close(1011, "internal error")
        elif fault == "oversize":
            await ws.send(oversize_frame(), text=True)
        elif fault == "malformed":
            await ws.send(MALFORMED, text=True)
        elif fault == "unknown_event":
            await ws.send(
                status_frame({"ev": "ZZ", "sym": "AAPL", "t": time.time_ns() // 1_000_000}), text=True
            )

    async def _list_faults(self, request: Request) -> Response:
        return Response.json(200, {"faults": FAULTS})

    async def _post_fault(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not hmac.compare_digest(auth.encode(), f"Bearer {self._api_key}".encode()):
            return Response.json(401, {"error": "send Authorization: Bearer <SIM_API_KEY>"})
        name = (request.query.get("name") or [""])[0]
        try:
            seconds = float((request.query.get("seconds") or ["5"])[0])
        except ValueError:
            return Response.json(400, {"error": "seconds must be a number"})
        if name not in FAULTS:
            return Response.json(400, {"error": f"unknown fault {name[:40]!r}", "faults": sorted(FAULTS)})
        reached = await self.inject(name, seconds)
        return Response.json(200, {"fault": name, "clients": reached})


def oversize_frame() -> bytes:
    """A frame of valid quotes, just over 1 MiB: the default client limit closes on it (1009)."""
    now = time.time_ns() // 1_000_000
    event = (b'{"ev":"Q","sym":"SPY","bx":12,"bp":560.01,"bs":100,"ax":11,"ap":560.02,"as":200,'
             b'"c":1,"i":[],"t":%d,"q":%d,"z":2}')  # fmt: skip
    parts, size, q = [], 2, 0
    while size < OVERSIZE_BYTES:
        q += 1
        part = event % (now, q)
        parts.append(part)
        size += len(part) + 1
    return b"[" + b",".join(parts) + b"]"


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    except (TypeError, ValueError):
        return "?"
