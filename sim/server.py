"""The emulator's network side: a ``websockets`` server that runs a ``Session`` per client.

Each authenticated client gets a pump task that reads frames from the source and sends the ones its
subscriptions match. Around that, the vendor's behaviours and the fault switches:

- ``max_connections``: past ``SIM_MAX_CONNECTIONS`` authenticated clients, the oldest gets the status
  and a 1008 close, as the vendor does when a second consumer logs in with the same key;
- ``slow_consumer``: a client more than ``SIM_BUFFER_FRAMES`` frames behind gets the status and a
  1008 close;
- faults injected on demand (``Emulator.inject`` or ``POST /faults``), listed in ``FAULTS``: into the
  WebSocket clients, into the REST API (``sim.resthttp``), and the market's ``pause`` and ``resume``.

The HTTP server also serves the vendor's REST API (``sim.restapi``) from the source's ledger: the day as
the tape has shown it (``sim.ledger``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import math
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
from .ledger import Ledger
from .market import TRADE_SHARE, TRADING_DAY_S, SyntheticMarket
from .markets import MARKETS as SYNTHETIC_MARKETS
from .markets import AssetMarket
from .prevday import Reference
from .protocol import CLOSE_POLICY, Session, State
from .recording import RecordingReader
from .restapi import RestApi
from .resthttp import MAX_DELAY_S, REST_FAULTS, RestServer
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
    "rest_error": "every REST request answers `status` (default 503) for `seconds` (default 5)",
    "rest_slow": "every REST answer is delayed `delay` seconds (default 2) for `seconds` (default 5)",
    "rest_down": "REST connections are aborted without an answer for `seconds` (default 5)",
    "rest_429": "every REST request answers 429 (rate limited) for `seconds` (default 5)",
    "pause": "the paced market stops: nothing generated or sent; until `resume`, or for `seconds` if given",
    "resume": "the paced market goes on from where it stopped (no burst, no time skipped)",
}
MAX_CONNECTIONS_MESSAGE = (
    "Maximum number of websocket connections exceeded. You have been disconnected. "
    "Update your subscription plan for more connections."
)
SLOW_CONSUMER_MESSAGE = "consumer is too slow; disconnecting"
OVERSIZE_BYTES = 1024 * 1024 + 64 * 1024
MALFORMED = b'[{"ev":"T","sym":"AAPL","p":187.3,"s":'
MAX_STALL_S = 3600.0  # longest stall, REST fault or timed pause
DEFAULT_FAULT_S = 5.0
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
    """The source the settings describe, with its ledger, and the market path it serves.

    The ledger of a replay learns each symbol's reference price from the recording; a replay played
    flat-out feeds no ledger (its REST answers stay empty)."""
    seed, paused = settings.sim_seed, settings.sim_start_paused
    if settings.sim_replay:
        path = Path(settings.sim_replay)
        with RecordingReader(path) as reader:  # fail at start on a file that is not a recording
            market = str(reader.header.get("market", settings.sim_market))
            started = reader.header.get("started_ns")
        if market not in massive.MARKETS:
            market = settings.sim_market
        ledger = Ledger(start_ms=started // 1_000_000 if type(started) is int else now_ms, seed=seed)
        if settings.sim_replay_speed == 0:
            source: Source = FileSource(path)
            source.ledger = ledger
            return source, market
        replay = ReplayPaced(path, speed=settings.sim_replay_speed, capacity=settings.sim_buffer_frames,
                             ledger=ledger, paused=paused)  # fmt: skip
        return replay, market
    synthetic: SyntheticMarket | AssetMarket
    if settings.sim_market in SYNTHETIC_MARKETS:
        # crypto, forex, indices, options: their own events and symbols; the REST ledger stays empty
        synthetic = AssetMarket(
            settings.sim_market, seed=seed, symbols=settings.sim_symbols, rate=settings.sim_rate,
            tick_ms=settings.sim_tick_ms, start_ms=settings.start_ms(now_ms),
        )  # fmt: skip
        ledger = Ledger(start_ms=synthetic.now_ms, seed=seed)
    else:  # stocks (and the futures paths, which have no synthetic market of their own yet)
        synthetic = SyntheticMarket(
            seed=seed, symbols=settings.sim_symbols, rate=settings.sim_rate,
            tick_ms=settings.sim_tick_ms, start_ms=settings.start_ms(now_ms),
        )  # fmt: skip
        ledger = Ledger(start_ms=synthetic.now_ms, seed=seed, references=references(synthetic))
    if settings.sim_rate == 0:
        source = PoolSource(
            synthetic, events=settings.sim_pool_events, frame_events=settings.sim_frame_events,
            send_ts=settings.sim_send_ts, ledger=ledger,
        )  # fmt: skip
    else:
        source = SyntheticPaced(
            synthetic, capacity=settings.sim_buffer_frames, frame_events=settings.sim_frame_events,
            send_ts=settings.sim_send_ts, speed=settings.sim_speed, ledger=ledger, paused=paused,
        )  # fmt: skip
    return source, settings.sim_market


def references(market: SyntheticMarket) -> dict[str, Reference]:
    """What each symbol's previous day is made from, before the market has moved: its starting mid, its
    daily volatility and its trades in a 6.5-hour day at the market's rate."""
    trades_per_day = market.effective_rate * TRADE_SHARE * TRADING_DAY_S
    return {i.sym: Reference(i.mid, i.daily_vol, trades_per_day * i.weight) for i in market.instruments}


class Emulator:
    def __init__(self, settings: SimSettings, *, now_ms: int | None = None) -> None:
        self.settings = settings
        self.source, self.market = build_source(settings, now_ms or time.time_ns() // 1_000_000)
        self.clients: list[Client] = []  # authenticated, oldest first
        # Authenticated connections at once: the most ever, and each change (monotonic time, count), so a
        # test can see that no two listeners were ever connected together.
        self.peak_clients = 0
        self.client_counts: collections.deque[tuple[float, int]] = collections.deque(maxlen=10_000)
        self.stalled_until = 0.0
        self._resume: asyncio.TimerHandle | None = None
        self._api_key = settings.sim_api_key.get_secret_value()
        self._server: Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.ledger = self.source.ledger or Ledger(start_ms=now_ms or time.time_ns() // 1_000_000, seed=0)
        self.rest = RestServer(
            RestApi(self.ledger), key=self._api_key, rate=settings.sim_rest_rate,
            address=f"{settings.sim_host}:{settings.sim_http_port}",
        )  # fmt: skip
        self.http = ObservabilityServer(
            settings.sim_host, settings.sim_http_port, readiness=self.readiness,
            routes={("GET", "/faults"): self._list_faults, ("POST", "/faults"): self._post_fault},
            fallback=self.rest.handle,
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
        self.rest.address = f"{self.settings.sim_host}:{self.http.port}"  # the port chosen, if 0
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
        if self._resume is not None:
            self._resume.cancel()
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

    @property
    def rest_url(self) -> str:
        """What a ``massive.RESTClient`` takes as ``base``."""
        return f"http://{self.settings.sim_host}:{self.http.port}"

    def readiness(self) -> tuple[bool, dict]:
        ready = self._server is not None and self.source.ready
        paused = isinstance(self.source, PacedSource) and self.source.paused
        return ready, {
            "mode": self.source.mode, "market": self.market, "clients": len(self.clients), "paused": paused,
            "clock_ms": self.ledger.clock_ms,  # market time released so far
        }  # fmt: skip

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
        self._count_clients()

    async def _forget(self, client: Client) -> None:
        self._detach(client)
        metrics.CONNECTIONS.labels(client.ended).inc()

    def _count_clients(self) -> None:
        n = len(self.clients)
        metrics.CLIENTS.set(n)
        self.client_counts.append((time.monotonic(), n))
        if n > self.peak_clients:
            self.peak_clients = n
            metrics.CLIENTS_PEAK.set(n)

    def _detach(self, client: Client) -> None:
        """Stop serving ``client``: out of the list of clients, its pump stopped."""
        if client in self.clients:
            self.clients.remove(client)
            self._count_clients()
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

    async def inject(
        self, fault: str, seconds: float | None = None, *, status: int = 503, delay: float = 2.0
    ) -> int:
        """Inject ``fault`` (see ``FAULTS``); returns how many WebSocket clients it reached (all of them for
        the REST faults and the market's pause and resume, which reach no client in particular).

        ``seconds``: how long a stall or a REST fault lasts (default 5), or a pause (default: until
        ``resume``); ``status``: the answer of ``rest_error`` (400-599); ``delay``: ``rest_slow``'s."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        if fault == "rest_error" and not 400 <= status <= 599:
            raise ValueError("status must be from 400 to 599")
        if fault in ("pause", "resume") and not isinstance(self.source, PacedSource):
            raise ValueError(f"{fault} needs a paced source (SIM_RATE > 0, or a replay at a speed)")
        length = min(max(DEFAULT_FAULT_S if seconds is None else seconds, 0.0), MAX_STALL_S)
        metrics.FAULTS.labels(fault).inc()
        targets = list(self.clients)
        log.info("injecting fault", extra={"fault": fault, "clients": len(targets)})
        if fault == "stall":
            self.stalled_until = asyncio.get_running_loop().time() + length
            return len(targets)
        if fault in REST_FAULTS:
            delay = min(max(delay, 0.0), MAX_DELAY_S)
            self.rest.faults.switch(fault, time.monotonic(), length, status=status, delay=delay)
            return len(targets)
        if fault in ("pause", "resume"):
            self._market(fault, seconds)
            return len(targets)
        if fault in (massive.MAX_CONNECTIONS, massive.SLOW_CONSUMER):
            message = "injected by the emulator"
            await asyncio.gather(*(self._kick(c, fault, message) for c in targets))
            return len(targets)
        for client in targets:
            with contextlib.suppress(ConnectionClosed):
                await self._fault_one(client, fault)
        return len(targets)

    def _market(self, fault: str, seconds: float | None) -> None:
        source = self.source
        assert isinstance(source, PacedSource)
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if fault == "resume":
            source.resume()
            return
        source.pause()
        if seconds is not None and seconds > 0:
            self._resume = asyncio.get_running_loop().call_later(min(seconds, MAX_STALL_S), source.resume)

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
        if name not in FAULTS:
            return Response.json(400, {"error": f"unknown fault {name[:40]!r}", "faults": sorted(FAULTS)})
        try:
            seconds = _number(request, "seconds", None)
            delay = _number(request, "delay", 2.0)
            status = int(_number(request, "status", 503) or 0)
            reached = await self.inject(name, seconds, status=status, delay=delay)
        except ValueError as exc:
            return Response.json(400, {"error": str(exc)})
        return Response.json(200, {"fault": name, "clients": reached})


def _number(request: Request, name: str, default: float | None) -> float | None:
    values = request.query.get(name)
    if not values:
        return default
    try:
        value = float(values[0])
    except ValueError:
        raise ValueError(f"{name} must be a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    return value


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
