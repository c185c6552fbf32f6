"""Start-up and shutdown of ``python -m server``, as small ``init_*`` steps."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from gateways.base import Gateway, create_gateway
from server import logs
from server.app import Services, gateway_config, make_app
from server.crypto import KeyRing, load_or_create_key_file
from server.embedded_db import EmbeddedDatabase
from server.settings import Settings
from server.store import Store

log = logging.getLogger("cashout")
HARD_BODY_LIMIT = 2 * 1024 * 1024  # beyond this the connection is dropped unread


def init_keys(settings: Settings) -> KeyRing:
    if settings.keys:
        return KeyRing.parse(settings.keys)
    return load_or_create_key_file(settings.data_dir)


def init_database(settings: Settings) -> tuple[str, EmbeddedDatabase | None]:
    if settings.mongodb_uri:
        return settings.mongodb_uri, None
    db = EmbeddedDatabase(settings.data_dir, settings.embedded_db_port)
    return db.start(), db


async def init_store(settings: Settings, uri: str) -> Store:
    store = Store(uri, settings.db_name, settings.db_timeout_ms)
    await store.create_indexes()
    return store


def init_gateway(settings: Settings) -> Gateway:
    return create_gateway(settings.gateway, gateway_config(settings))


def init_http(services: Services) -> tuple[HTTPServer, int]:
    settings = services.settings
    server = HTTPServer(
        make_app(services),
        max_body_size=max(HARD_BODY_LIMIT, settings.max_body_bytes),
        idle_connection_timeout=60,
        body_timeout=30,
    )
    sockets = bind_sockets(settings.port, settings.host)
    server.add_sockets(sockets)
    return server, int(sockets[0].getsockname()[1])


async def serve(settings: Settings) -> None:
    uri, embedded = init_database(settings)
    store = None
    gateway = None
    try:
        keys = init_keys(settings)
        store = await init_store(settings, uri)
        gateway = init_gateway(settings)
        services = Services.build(settings, store, keys, gateway)
        server, port = init_http(services)
        log.info("cashout %s listening on http://%s:%d (gateway %s, database %s)",
                 settings.env, settings.host, port, settings.gateway,
                 "embedded" if embedded else "external")
        services.payouts.start()
        services.webhooks.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        server.stop()
        await services.payouts.stop(deadline=10)
        await services.webhooks.stop(deadline=5)
        try:
            await asyncio.wait_for(server.close_all_connections(), timeout=10)
        except TimeoutError:
            log.warning("connections still open after 10s; closing anyway")
    finally:
        if gateway is not None:
            await gateway.close()
        if store is not None:
            store.close()
        if embedded is not None:
            embedded.stop()
        log.info("stopped")


def main(settings: Settings) -> int:
    logs.setup(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except Exception as exc:  # start-up failed: say why in one line, details at debug
        log.debug("start-up failed", exc_info=True)
        print(logs.mask(f"cashout: could not start: {type(exc).__name__}: {exc}"),
              file=sys.stderr)
        return 1
    return 0
