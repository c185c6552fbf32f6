"""Operator tasks that run beside (or without) a live server."""

from __future__ import annotations

import asyncio
import sys

from server import logs
from server.embedded_db import EmbeddedDatabase
from server.main import init_keys
from server.rotation import reseal_all
from server.settings import Settings
from server.store import Store


async def _with_store(settings: Settings, task: str) -> int:
    embedded = None
    uri = settings.mongodb_uri
    if not uri:
        # Share the running server's embedded database, or start one for the task.
        embedded = EmbeddedDatabase(settings.data_dir, settings.embedded_db_port)
        uri = embedded.running_uri()
        if uri is None:
            uri = embedded.start()
        else:
            embedded = None
    store = Store(uri, settings.db_name, settings.db_timeout_ms)
    try:
        if task == "rotate-keys":
            keys = init_keys(settings)
            report = await reseal_all(store, keys)
            print(f"re-encrypted {report.resealed} values to key {keys.primary!r}; "
                  f"{report.remaining} still under other keys")
            return 0 if report.remaining == 0 else 1
        print(f"unknown task {task!r}", file=sys.stderr)
        return 2
    finally:
        store.close()
        if embedded is not None:
            embedded.stop()


def run(task: str, settings: Settings) -> int:
    logs.setup("warning")
    return asyncio.run(_with_store(settings, task))
