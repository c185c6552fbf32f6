"""Start-up and shutdown of ``python -m server``, as small ``init_*`` steps.

One process by default; ``--processes N`` forks N workers that each bind the port with
``reuse_port`` and share nothing but the database, exactly as N machines would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

from server import logs
from server.app import make_app, make_ops_app
from server.embedded_db import EmbeddedDatabase, die_with_parent
from server.http_server import bounded_server
from server.services import Services
from server.settings import Settings, replace

log = logging.getLogger("cashout")
MAX_RESTARTS = 20


def init_database(settings: Settings) -> tuple[str, EmbeddedDatabase | None]:
    if settings.mongodb_uri:
        return settings.mongodb_uri, None
    db = EmbeddedDatabase(settings.data_dir, settings.embedded_db_port)
    return db.start(), db


def _listen(app: Application, host: str, port: int, settings: Settings) -> tuple[HTTPServer, int]:
    """A server for ``app`` on ``host:port``, bodies bounded (``server/http_server.py``)."""
    server = bounded_server(
        app, settings.max_body_bytes, idle_connection_timeout=60, body_timeout=30
    )
    sockets = bind_sockets(port, host, reuse_port=settings.processes > 1)
    server.add_sockets(sockets)
    return server, int(sockets[0].getsockname()[1])


def init_http(services: Services) -> tuple[HTTPServer, int]:
    settings = services.settings
    return _listen(make_app(services), settings.host, settings.port, settings)


def init_ops(services: Services) -> tuple[HTTPServer, int] | None:
    """The operations port (``CASHOUT_OPS_PORT``), if one is set."""
    settings = services.settings
    if settings.ops_port is None:
        return None
    return _listen(make_ops_app(services), settings.ops_host, settings.ops_port, settings)


async def shutdown(
    server: HTTPServer, services: Services, timeout: float, *others: HTTPServer
) -> None:
    """Stop accepting, let requests and transfers in flight finish until ``timeout``; what
    is still open after that is left, safely, to reconciliation."""
    deadline = time.monotonic() + timeout
    server.stop()
    for other in others:
        other.stop()
    if not await services.inflight.wait_idle(timeout):
        log.warning("%d requests still running at the shutdown deadline", services.inflight.count)
    await services.payouts.stop(max(0.0, deadline - time.monotonic()))
    await services.webhooks.stop(max(0.0, deadline - time.monotonic()))
    for each in (server, *others):
        try:
            await asyncio.wait_for(each.close_all_connections(), timeout=5)
        except TimeoutError:
            log.warning("connections still open after the deadline; closing anyway")


async def serve(settings: Settings) -> None:
    uri, embedded = init_database(settings)
    services: Services | None = None
    try:
        services = await Services.open(settings, uri)
        server, port = init_http(services)
        ops = init_ops(services)
        log.info(
            "cashout %s listening on http://%s:%d (gateway %s, database %s, pid %d)",
            settings.env,
            settings.host,
            port,
            settings.gateway,
            "embedded" if embedded else "external",
            os.getpid(),
        )
        if ops is not None:
            log.info(
                "operations endpoints on http://%s:%d (not on the public port)",
                settings.ops_host,
                ops[1],
            )
        services.payouts.start()
        services.webhooks.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down (waiting up to %.0fs)", settings.shutdown_timeout)
        await shutdown(server, services, settings.shutdown_timeout, *([ops[0]] if ops else []))
    finally:
        if services is not None:
            await services.close()
        if embedded is not None:
            embedded.stop()
        log.info("stopped")


def supervise(settings: Settings) -> int:
    """The parent of ``--processes N``: owns the embedded database, forks the workers,
    forwards SIGTERM/SIGINT to them and restarts one that dies unexpectedly."""
    uri, embedded = init_database(settings)
    worker_settings = replace(settings, mongodb_uri=uri)
    workers: dict[int, int] = {}
    stopping = False
    restarts = 0

    def start_worker(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            die_with_parent()
            code = 0
            try:
                asyncio.run(serve(worker_settings))
            except Exception:
                log.exception("worker %d failed", index)
                code = 1
            os._exit(code)
        workers[pid] = index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(workers):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for index in range(settings.processes):
            start_worker(index)
        log.info("supervising %d workers on port %d", settings.processes, settings.port)
        while workers:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid not in workers:
                continue
            index = workers.pop(pid)
            _mark_dead(pid)
            if not stopping:
                restarts += 1
                log.error(
                    "worker %d (pid %d) exited with status %d; restarting", index, pid, status
                )
                if restarts > MAX_RESTARTS:
                    log.error("too many restarts; stopping")
                    forward(signal.SIGTERM, None)
                    continue
                start_worker(index)
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _mark_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def main(settings: Settings) -> int:
    logs.setup(settings.log_level, settings.log_format)
    if settings.processes > 1:
        return supervise(settings)
    try:
        asyncio.run(serve(settings))
    except Exception as exc:  # start-up failed: say why in one line, details at debug
        log.debug("start-up failed", exc_info=True)
        print(logs.mask(f"cashout: could not start: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return 1
    return 0
