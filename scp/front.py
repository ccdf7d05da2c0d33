"""SCP's gunicorn worker: Tornado's HTTP server in front, the WSGI app (py4web) on a thread pool.

gunicorn's ``gthread`` worker gives a connection to a thread before its request is read, with no deadline
for the head or the body: a few clients sending a header line every few seconds hold every thread, and
a chunked body is read without bound. Here each worker reads requests in its event loop instead, where a
slow connection costs a socket and no thread, and hands a thread only a complete request:

- the whole request head within ``header_timeout`` seconds (also the idle time of a kept-alive connection),
  at most ``MAX_HEAD_BYTES``;
- the whole body within ``body_timeout`` seconds, at most ``MAX_BODY_BYTES`` whether sent with a
  Content-Length or chunked; past that the connection is answered 400 and closed.

gunicorn still runs the master (``SCP_WORKERS`` processes, restarts, signals); each worker has
``SCP_THREADS`` threads for the app.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
from gunicorn.workers.gtornado import TornadoWorker
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.wsgi import WSGIContainer

MAX_HEAD_BYTES = 16 * 1024
# larger than the API's own limit (64 KiB), so that a body between the two gets the API's JSON 413
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    threads: int = 4


LIMITS = Limits()  # set by ``scp.server.serve`` in the master, inherited by the forked workers


class Container(WSGIContainer):
    """Tornado has decoded a chunked body already: the app sees it with its length, not as chunked."""

    def environ(self, request: Any) -> dict[str, Any]:
        environ = super().environ(request)
        if environ.pop("HTTP_TRANSFER_ENCODING", None) is not None or "CONTENT_LENGTH" not in environ:
            environ["CONTENT_LENGTH"] = str(len(request.body))
        return environ


class BoundedWorker(TornadoWorker):
    """gunicorn's Tornado worker with deadlines, bounds and a thread pool (its own runs the app in the
    event loop, where one slow request would stall every connection)."""

    def run(self) -> None:
        self.ioloop = IOLoop.current()
        self.alive = True
        self.server_alive = False
        self.callbacks = [PeriodicCallback(self.watchdog, 1000), PeriodicCallback(self.heartbeat, 1000)]
        for callback in self.callbacks:
            callback.start()
        limits = LIMITS
        # no access log, as with gunicorn's before: request lines carry query strings, a flood of bad
        # requests would flood the log, and the API logs what matters
        logging.getLogger("tornado.access").disabled = True
        pool = ThreadPoolExecutor(limits.threads, thread_name_prefix="scp")
        worker = self

        class Server(tornado.httpserver.HTTPServer):
            def on_close(self, server_conn: Any) -> None:
                worker.handle_request()
                super().on_close(server_conn)

        self.server = Server(
            Container(self.wsgi, executor=pool),
            max_header_size=MAX_HEAD_BYTES,
            max_body_size=MAX_BODY_BYTES,
            idle_connection_timeout=limits.header_timeout,
            body_timeout=limits.body_timeout,
            xheaders=False,  # the client address is the socket's: SCP decides which proxies to trust
        )
        self.server_alive = True
        for sock in self.sockets:
            sock.setblocking(False)
            self.server.add_socket(sock)
        self.ioloop.start()
        pool.shutdown(wait=False, cancel_futures=True)


def worker_class() -> str:
    """The dotted name gunicorn loads."""
    return f"{__name__}.{BoundedWorker.__name__}"
