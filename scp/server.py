"""``mdpipe scp``: the control plane under gunicorn (several worker processes, each reading requests in an
event loop with deadlines and running the app on its threads: ``scp.front``), and ``mdpipe scp
create-user``.

Before the workers fork, the master migrates the database and creates the first admin from
``SCP_ADMIN_EMAIL``/``SCP_ADMIN_PASSWORD`` when no admin exists. Each worker then imports the py4web app
on its own (database pool, Redis, bridge thread). py4web wants a writable apps folder (it keeps a
``.service`` folder there), so the app is linked into ``SCP_DATA_DIR/apps``: the installed package stays
read-only.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

from mdpipe import logs
from mdpipe.settings import ConfigError, mask_url

APP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps", "_default")


def apps_folder(data_dir: str) -> str:
    """``DATA_DIR/apps`` with the app linked in (made once, checked every start)."""
    folder = os.path.join(os.path.abspath(data_dir), "apps")
    os.makedirs(folder, exist_ok=True)
    os.chmod(folder, 0o700)  # py4web's .service folder below it, made by an older version, included
    init = os.path.join(folder, "__init__.py")
    if not os.path.exists(init):
        with open(init, "w") as fh:
            fh.write("")
    link = os.path.join(folder, "_default")
    if os.path.islink(link) and os.readlink(link) != APP_DIR:
        os.unlink(link)
    if not os.path.exists(link):
        os.symlink(APP_DIR, link)
    return folder


def wsgi_app(folder: str, secure: bool) -> Any:
    """py4web's WSGI application for ``folder`` behind ``scp.errors`` (JSON errors, no tickets on disk);
    ``secure``: the scheme is https (behind a TLS proxy)."""
    from py4web.core import wsgi

    from . import errors

    inner = errors.guard(wsgi(apps_folder=folder, yes=True, logging_level=30))
    errors.install()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if secure:
            environ["wsgi.url_scheme"] = "https"
        return inner(environ, start_response)

    return app


def metrics_folder(data_dir: str) -> str:
    """``DATA_DIR/metrics``, private and emptied: prometheus-client's multiprocess files of this run."""
    folder = os.path.join(os.path.abspath(data_dir), "metrics")
    shutil.rmtree(folder, ignore_errors=True)  # a previous run's files would be summed in
    os.makedirs(folder, mode=0o700)
    return folder


class DatabaseUnavailable(Exception):
    """The database did not answer within SCP_DB_WAIT_S (exit 1: worth a restart, unlike a bad setting)."""


def prepare(config: Any) -> str | None:
    """Migrate the database and create the first admin; returns that admin's e-mail when created.

    A database that does not answer yet (starting beside SCP, in compose or Kubernetes) is waited for
    up to ``SCP_DB_WAIT_S``, with a line on stderr per attempt (the URL's password masked)."""
    from .store import open_store

    deadline = time.monotonic() + config.scp.scp_db_wait_s
    delay = 1.0
    while True:
        try:
            # no pool: the workers fork from this process, and a pooled connection would be shared by
            # all of them (libpq then fails with "error with status PGRES_TUPLES_OK")
            store = open_store(config.scp, pool_size=0)
            break
        except RuntimeError as exc:  # pyDAL: "Failure to connect, tried 5 times: ..."
            if not str(exc).startswith("Failure to connect"):
                raise
            if time.monotonic() + delay > deadline:
                lines = [line for line in logs.scrub(str(exc)).splitlines() if line.strip()]
                raise DatabaseUnavailable(lines[-1].strip() if lines else "no answer") from None
            where = mask_url(config.scp.pydal_uri.get_secret_value())
            print(f"mdpipe scp: waiting for the database at {where}", file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    try:
        s = config.scp
        if s.scp_admin_email:
            created = store.ensure_admin(s.scp_admin_email, s.scp_admin_password.get_secret_value())
            return created.email if created else None
        return None
    finally:
        store.db.close()


def serve(config: Any, *, port: int | None = None) -> int:
    from gunicorn.app.base import BaseApplication

    from . import front

    s = config.scp
    os.umask(0o077)  # what SCP writes (py4web's working files, SQLite, metrics) is the service's alone
    try:
        created = prepare(config)
    except DatabaseUnavailable as exc:
        where = mask_url(s.pydal_uri.get_secret_value())
        print(
            f"mdpipe scp: the database at {where} did not answer in {s.scp_db_wait_s:g} s: {exc}",
            file=sys.stderr,
        )
        return 1
    if created:
        print(f"mdpipe scp: created the admin {created}", file=sys.stderr)
    folder = apps_folder(s.scp_data_dir)
    metrics_dir = metrics_folder(s.scp_data_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    front.LIMITS = front.Limits(threads=s.scp_threads)
    production = config.common.mdpipe_env == "production"
    secure = s.scp_secure_cookies == "true" or (s.scp_secure_cookies == "auto" and production)
    options = {
        "bind": f"{s.scp_host}:{s.scp_port if port is None else port}",
        "workers": s.scp_workers,
        "worker_class": front.worker_class(),  # requests read in an event loop, with deadlines
        "timeout": 30,
        "graceful_timeout": 10,
        "accesslog": None,  # request lines carry query strings; the API logs what matters
        "errorlog": "-",
        "loglevel": "warning",
        "preload_app": False,  # each worker opens its own connections after the fork
        "post_fork": _post_fork,
        "child_exit": _child_exit,
    }

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return wsgi_app(folder, secure)

    try:
        Server().run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _post_fork(server: Any, worker: Any) -> None:
    from . import metrics

    metrics.for_worker()


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def create_user(config: Any, email: str, password: str | None, admin: bool) -> int:
    """``mdpipe scp create-user``: the password from ``--password-stdin`` or a prompt."""
    import getpass

    from .store import StoreError, open_store

    if password is None:
        password = getpass.getpass("Password (at least 12 characters): ")
    store = open_store(config.scp)
    try:
        user = store.create_user(email, password, "admin" if admin else "viewer")
    except StoreError as exc:
        raise ConfigError(f"create-user: {exc}") from None
    finally:
        store.db.close()
    print(f"created {user.role} {user.email}")
    return 0
