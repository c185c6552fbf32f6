"""What the operator relies on: health, metrics, logs, several processes, graceful shutdown
and the admin commands."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.logs import JsonFormatter, MaskingFormatter
from tests.cards import luhn_card
from tests.conftest import random_pan, unique_name
from tests.harness import (
    FAST_RECONCILE,
    PYTHON,
    ROOT,
    Provider,
    ServerProcess,
    free_port,
    make_overdue,
    remember,
    wait_until,
)
from tests.receiver import Receiver
from tests.test_webhooks import FAST_WEBHOOKS

SLOW_ROUNDS = {
    "CASHOUT_RECONCILE_INTERVAL": "3600",
    "CASHOUT_SETTLE_GRACE": "0",
    "CASHOUT_ATTEMPT_LEASE": "3",
    "CASHOUT_WEBHOOK_SWEEP_INTERVAL": "0.2",
}


def admin(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "server", "admin", *args],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- health and metrics -------------------------------------------------------------------


def test_health_and_readiness(server: ServerProcess) -> None:
    health = httpx.get(server.url + "/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["database"] is True
    assert set(ready.json()) == {"status", "database", "gateway"}


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample, or None."""
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


def test_metrics_cover_requests_claims_payments_and_webhooks(
    server_factory: Any, receiver: Receiver
) -> None:
    server = server_factory(FAST_WEBHOOKS)
    provider = Provider.register(server, endpoint=receiver.url("/metrics-hook"))
    receiver.behave("/metrics-hook", secrets=[provider.webhook_secret])
    uuid = provider.generate(40)
    provider.claim(uuid, luhn_card("0051"))
    provider.wait(uuid, "failed")
    wait_until(lambda: receiver.calls_to("/metrics-hook"), 10, what="the webhook")

    def scraped() -> str | None:
        text = httpx.get(server.url + "/metrics").text
        done = sample(text, "cashout_webhook_attempts_total", result="delivered")
        return text if done else None

    text = wait_until(scraped, 10, what="the webhook to be counted")
    assert (
        sample(
            text,
            "cashout_http_requests_total",
            method="POST",
            route="/cashout/generate/{name}",
            status="201",
        )
        == 1
    )
    assert (
        sample(
            text, "cashout_http_request_duration_seconds_count", route="/cashout/generate/{name}"
        )
        == 1
    )
    assert sample(text, "cashout_claims", status="failed") == 1
    assert (
        sample(
            text,
            "cashout_payment_attempts_total",
            gateway="mock",
            call="transfer",
            outcome="declined",
            code="51",
        )
        == 1
    )
    assert (
        sample(
            text,
            "cashout_payment_attempts_total",
            gateway="mock",
            call="verify",
            outcome="ok",
            code="0",
        )
        == 1
    )
    assert sample(text, "cashout_reconcile_backlog") == 0
    assert sample(text, "cashout_webhook_outbox_lag_seconds") == 0
    assert sample(text, "cashout_webhook_events", status="delivered") == 1
    assert sample(text, "cashout_db_batch_size_count", batch="generate") == 1
    assert sample(text, "cashout_db_batch_size_sum", batch="generate") == 1
    assert (sample(text, "cashout_db_batch_size_count", batch="authenticate") or 0) >= 1
    assert provider.name not in text and uuid not in text and provider.pan not in text


# -- logs --------------------------------------------------------------------------------


def test_request_lines_name_the_route_never_the_claim(server_factory: Any) -> None:
    server = server_factory({"CASHOUT_LOG_FORMAT": "json"})
    provider = Provider.register(server)
    uuid = provider.generate(5)
    assert httpx.get(f"{server.url}/cashout/claim/{provider.name}/{uuid}").status_code == 200
    provider.claim(uuid, random_pan())
    provider.wait(uuid, "succeeded")
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    requests = [e for e in lines if e["logger"] == "cashout.access"]
    assert {"method", "route", "status", "duration_ms"} <= set(requests[-1])
    assert {"GET", "/cashout/claim/{name}/{uuid}", 200} <= {
        v for e in requests for v in (e["method"], e["route"], e["status"])
    }
    assert uuid not in server.log(), "the claim URL is a bearer secret"


@pytest.mark.parametrize("formatter", [MaskingFormatter(), JsonFormatter()], ids=["text", "json"])
def test_the_log_formatter_masks_what_slips_through(formatter: logging.Formatter) -> None:
    pan19, pan16 = random_pan(length=19), random_pan()
    key, secret = "ck_live_" + "A1b2" * 10, "whsec_" + "Qk9PT0s=" * 4
    record = logging.LogRecord(
        "x",
        logging.ERROR,
        __file__,
        1,
        "cards %s and %s, key %s, secret %s, ref 12345678901 ok",
        (pan19, pan16, key, secret),
        None,
    )
    text = formatter.format(record)
    for leaked in (pan19, pan16, key, secret, secret.removeprefix("whsec_")):
        assert leaked not in text
    assert pan19[-4:] in text and pan16[-4:] in text
    assert "12345678901" in text, "11 digits is not a card number: left alone"


# -- several processes -------------------------------------------------------------------


def test_several_processes_share_the_port_and_shut_down_together(
    log_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "CASHOUT_MONGODB_URI"},
        "CASHOUT_PROCESSES": "2",
        "CASHOUT_DATA_DIR": str(tmp_path),
        "CASHOUT_PORT": str(port),
    }
    server = ServerProcess(log_dir, env, name="processes")
    server.env = env | {"CASHOUT_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    server.start(timeout=60)
    try:

        def both_answer() -> bool:
            pids = {
                httpx.get(server.url + "/healthz", headers={"Connection": "close"}).json()["pid"]
                for _ in range(20)
            }
            return len(pids) == 2

        wait_until(both_answer, 30, what="both workers to answer on the shared port")
        provider = Provider.register(server)
        for i in range(6):
            provider.generate(5, ref=f"p{i}")
        text = httpx.get(server.url + "/metrics").text
        assert (
            sample(
                text,
                "cashout_http_requests_total",
                method="POST",
                route="/cashout/generate/{name}",
                status="201",
            )
            == 6
        ), "counters add up across the workers"
    finally:
        assert server.stop(signal.SIGTERM) == 0
    assert "supervising 2 workers" in server.log()
    assert server.log().count("stopped") >= 2


# -- graceful shutdown -------------------------------------------------------------------


def test_sigterm_lets_an_in_flight_transfer_finish(server_factory: Any, mongo: Any) -> None:
    server = server_factory(
        {"CASHOUT_MOCK_LATENCY_MS": "2000", **FAST_RECONCILE, "CASHOUT_ATTEMPT_LEASE": "5"}
    )
    provider = Provider.register(server)
    uuid = provider.generate(60)
    card = random_pan()
    assert provider.claim(uuid, card).status_code == 202
    assert server.stop(signal.SIGTERM) == 0
    claim = mongo[server.env["CASHOUT_DB_NAME"]].claims.find_one({"_id": uuid})
    assert claim["status"] == "succeeded", "the transfer finished before the process left"
    assert provider.ledger.applied_total_to(card) == 60


def test_past_the_deadline_the_transfer_is_left_to_reconciliation(
    server_factory: Any, mongo: Any
) -> None:
    env = {
        "CASHOUT_MOCK_LATENCY_MS": "4000",
        **FAST_RECONCILE,
        "CASHOUT_ATTEMPT_LEASE": "6",
        "CASHOUT_SHUTDOWN_TIMEOUT": "0.5",
        "CASHOUT_DB_NAME": unique_name("shut").replace("-", "_"),
    }
    server = server_factory(env)
    env["CASHOUT_DATA_DIR"] = server.env["CASHOUT_DATA_DIR"]
    provider = Provider.register(server)
    uuid = provider.generate(70)
    card = random_pan()
    provider.claim(uuid, card)
    assert server.stop(signal.SIGTERM) == 0
    db = mongo[env["CASHOUT_DB_NAME"]]
    assert db.claims.find_one({"_id": uuid})["status"] == "processing"
    again = server_factory(env)
    provider.client = again.client()
    assert provider.wait(uuid, "succeeded", "failed")["status"] == "succeeded"
    assert provider.ledger.applied_total_to(card) == 70, "paid exactly once"


# -- admin commands ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "task", ["providers", "rotate-keys", "reconcile", "redeliver", "expire", "new-key"]
)
def test_every_admin_task_has_help(task: str) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "server", "admin", task, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "usage:" in result.stdout


def test_admin_errors_are_clear(server: ServerProcess) -> None:
    unknown = subprocess.run(
        [PYTHON, "-m", "server", "admin", "explode"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
    unfiltered = admin(server, "redeliver")
    assert unfiltered.returncode == 2 and "--all" in unfiltered.stderr
    bad_time = admin(server, "redeliver", "--since", "yesterday")
    assert bad_time.returncode == 2 and "ISO 8601" in bad_time.stderr
    for result in (unknown, unfiltered, bad_time):
        assert "Traceback" not in result.stderr


def test_admin_providers_lists_masked_cards(server: ServerProcess) -> None:
    provider = Provider.register(server)
    result = admin(server, "providers", "--json")
    assert result.returncode == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    mine = [r for r in rows if r["name"] == provider.name]
    assert mine and mine[0]["card"] == "****" + provider.pan[-4:]
    assert provider.pan not in result.stdout + result.stderr


def test_admin_reconcile_settles_unknown_outcomes_now(server_factory: Any) -> None:
    server = server_factory(SLOW_ROUNDS)
    provider = Provider.register(server)
    uuid = provider.generate(30)
    card = luhn_card("0091")  # times out at the switch, but the money moved
    remember(card)
    provider.claim(uuid, card)
    wait_until(
        lambda: provider.status(uuid)["attempts"][0]["outcome"] == "unknown",
        10,
        what="the transfer to come back unknown",
    )
    assert provider.status(uuid)["status"] == "processing"
    result = admin(server, "reconcile")
    assert result.returncode == 0, result.stderr[-300:]
    assert provider.status(uuid)["status"] == "succeeded"
    assert provider.ledger.applied_total_to(card) == 30


def test_admin_expire_and_redeliver(server_factory: Any, receiver: Receiver, mongo: Any) -> None:
    server = server_factory(SLOW_ROUNDS)
    path = "/admin-hook"
    provider = Provider.register(server, endpoint=receiver.url(path))
    receiver.behave(path, secrets=[provider.webhook_secret])
    uuid = provider.generate(30)
    make_overdue(mongo[server.env["CASHOUT_DB_NAME"]], uuid)
    assert provider.status(uuid)["status"] == "pending", "no sweep ran in this server"

    expired = admin(server, "expire")
    assert expired.returncode == 0 and "expired 1 claims" in expired.stdout
    assert provider.status(uuid)["status"] == "expired"
    (first,) = wait_until(lambda: receiver.calls_to(path), 10, what="the expiry webhook")
    assert first.payload["status"] == "expired"

    again = admin(server, "redeliver", "--provider", provider.name)
    assert again.returncode == 0 and "1 events queued" in again.stdout
    calls = wait_until(
        lambda: (c := receiver.calls_to(path)) and len(c) == 2 and c, 10, what="the redelivery"
    )
    assert calls[1].webhook_id == first.webhook_id and calls[1].verified_by == (0,)
    wait_until(
        lambda: provider.client.get(
            f"/cashout/webhooks/{provider.name}",
            params={"status": "delivered"},
            headers=provider.headers,
        ).json()["events"],
        10,
        what="the redelivery to be recorded",
    )
    now = datetime.now(UTC)
    window = admin(
        server,
        "redeliver",
        "--status",
        "delivered",
        "--since",
        (now - timedelta(minutes=5)).isoformat(),
        "--until",
        (now + timedelta(minutes=5)).isoformat(),
    )
    assert window.returncode == 0 and "1 events queued" in window.stdout
    wait_until(lambda: len(receiver.calls_to(path)) == 3, 10, what="the time-range redelivery")
    past = admin(server, "redeliver", "--until", (now - timedelta(days=1)).isoformat())
    assert past.returncode == 0 and "0 events queued" in past.stdout
    none = admin(server, "redeliver", "--event", "evt_missing")
    assert none.returncode == 1 and "0 events" in none.stdout
