"""Fixtures: one database for the session, servers as real processes, and leak checks on
every server log and on pytest's own failure output."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pymongo
import pytest

from server.logs import mask
from tests.cards import luhn_card
from tests.harness import ROOT, Database, ServerProcess, leaks_in
from tests.receiver import Receiver

ARTIFACTS = ROOT / "test-artifacts"
_names = itertools.count(1)


def random_pan(last4: str | None = None, length: int = 16) -> str:
    """A Luhn-valid card number no other test uses; its last four avoid the magic 00xx."""
    return luhn_card(last4 or str(1000 + secrets.randbelow(9000)), length=length)


def unique_name(prefix: str = "prov") -> str:
    return f"{prefix}-{next(_names)}-{secrets.token_hex(3)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """Failure output passes through the same mask as the server's logs."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.longrepr is not None:
        report.longrepr = mask(str(report.longrepr))


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def assert_no_leaks(paths: list[Path]) -> None:
    leaks = {p.name: leaks_in(p.read_text(errors="replace")) for p in paths if p.exists()}
    leaks = {name: found for name, found in leaks.items() if found}
    assert not leaks, f"secrets found in logs: {leaks}"


# What the service writes for people to read besides its logs: the audit log and webhook
# events (claim events and security notices). None may hold a secret the run created.
SCANNED_COLLECTIONS = ("audit", "events")


def assert_no_leaks_in_database(uri: str, db_names: set[str]) -> None:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(uri, tz_aware=True)
    found: dict[str, list[str]] = {}
    try:
        for name in sorted(db_names):
            for collection in SCANNED_COLLECTIONS:
                for doc in client[name][collection].find():
                    # Times as numbers after a colon, which no IPIN pattern can match.
                    text = json.dumps(
                        doc, default=_plain, separators=(",", ":"), ensure_ascii=False
                    )
                    if leaks := leaks_in(text):
                        found[f"{name}.{collection}/{doc['_id']}"] = leaks
    finally:
        client.close()
    assert not found, f"secrets found in the database's readable records: {found}"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


@pytest.fixture(scope="session")
def log_dir(artifacts: Path) -> Iterator[Path]:
    """Every process's output of the whole run; at the end no file may hold any card
    number, IPIN, expiry, API key or secret the run created."""
    root = artifacts / "logs"
    for old in root.glob("run-*"):  # earlier runs' logs; not those of a run still going
        pid = old.name.removeprefix("run-")
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    path = root / f"run-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path
    assert_no_leaks(sorted(path.iterdir()))


@pytest.fixture(scope="session")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    db = Database(tmp_path_factory.mktemp("database")).start()
    yield db
    db.stop()


@pytest.fixture(scope="session")
def mongo(database: Database) -> Iterator[pymongo.MongoClient[Any]]:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(database.uri, tz_aware=True)
    yield client
    client.close()


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def server_factory(
    database: Database, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Start servers on the shared database, each with its own database name; on teardown
    stop them and fail if a log holds any secret the run created."""
    started: list[ServerProcess] = []

    def start(
        env: dict[str, str] | None = None,
        *,
        db_name: str | None = None,
        wait: bool = True,
        args: tuple[str, ...] = (),
    ) -> ServerProcess:
        env = dict(env or {})
        env.setdefault("CASHOUT_MONGODB_URI", database.uri)
        env.setdefault("CASHOUT_DB_NAME", db_name or unique_name("db").replace("-", "_"))
        env.setdefault("CASHOUT_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        proc = ServerProcess(log_dir, env, name=env["CASHOUT_DB_NAME"], args=args)
        started.append(proc)
        return proc.start(wait=wait)

    yield start  # type: ignore[misc]
    for proc in started:
        proc.stop()
    assert_no_leaks([p.log_path for p in started])
    assert_no_leaks_in_database(
        database.uri,
        {p.env["CASHOUT_DB_NAME"] for p in started if p.env["CASHOUT_MONGODB_URI"] == database.uri},
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A real webhook receiver (each test gives its providers their own path)."""
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory()


@pytest.fixture(scope="module")
def db(server: ServerProcess, mongo: pymongo.MongoClient[Any]) -> Any:
    """The server's database, read directly (never through our store)."""
    return mongo[server.env["CASHOUT_DB_NAME"]]
