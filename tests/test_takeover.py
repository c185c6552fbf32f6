"""Paying at the pace of the database, and taking over from a process that died or froze, at
the default lease settings (docs/DESIGN.md section 6, "Timeliness"): a burst of submissions
is paid without any claim left to reconciliation; a process killed or frozen while its
transfers wait on a slow switch loses its claims to another process (or to itself restarted),
which settles them from the switch's own record; a frozen process that wakes up after losing
its leases sends nothing more. Each time the ledger shows every claim paid exactly once.
How fast all this is, is measured by the benchmark (``bench/run.py``: burst and crash)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateways.mock import LEDGER_FILE as MOCK_LEDGER
from simulator.ebs.state import LEDGER_FILE as SIM_LEDGER
from tests.conftest import random_pan, unique_name
from tests.harness import (
    Provider,
    ServerProcess,
    Simulator,
    auth,
    provider_body,
    register,
    remember,
    wait_until,
)
from tests.ledger import Ledger
from tests.receiver import Receiver

REPLY_DELAY = "6"  # the slow switch: every transfer is applied at once and answered late


@pytest.fixture
def slow_switch(tmp_path: Path, log_dir: Path) -> Iterator[Simulator]:
    sim = Simulator(
        tmp_path / "sim", log_dir / f"simulator-{tmp_path.name}.log", "--reply-delay", REPLY_DELAY
    ).start()
    yield sim
    sim.stop()


def ebs_env(sim: Simulator, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The ebs gateway against the simulator; every lease setting at its default."""
    return {
        "CASHOUT_GATEWAY": "ebs",
        "CASHOUT_EBS_URL": sim.url,
        "CASHOUT_EBS_APPLICATION_ID": "ACTSCon",
        "CASHOUT_DATA_DIR": str(tmp_path / "data"),
        "CASHOUT_DB_NAME": unique_name("takeover").replace("-", "_"),
        **extra,
    }


def public_key(sim: Simulator) -> str:
    return str(sim.get("/_sim/public-key")["pubKeyValue"])


def submit_all(server: ServerProcess, name: str, headers: dict[str, str], count: int) -> dict:
    """Generate ``count`` claims and submit each with a card of its own."""
    client = server.client()
    claims: dict[str, tuple[str, int]] = {}
    for i in range(count):
        amount = 50 + i
        made = client.post(
            f"/cashout/generate/{name}", headers=headers, json={"amount": amount, "id": f"t{i}"}
        )
        assert made.status_code == 201
        card = random_pan()
        remember(card)
        uuid = made.json()["uuid"]
        answer = client.post(f"/cashout/claim/{name}", json={"id": uuid, "pan": card})
        assert answer.status_code == 202
        claims[uuid] = (card, amount)
    return claims


def transfers_seen(sim: Simulator) -> list[str]:
    return [r["uuid"] for r in sim.requests() if r["endpoint"] == "doCardTransfer"]


def settled(server: ServerProcess, name: str, headers: dict[str, str], uuids: list[str]) -> dict:
    client = server.client()
    found = {u: client.get(f"/cashout/claims/{name}/{u}", headers=headers).json() for u in uuids}
    return found if all(c["status"] == "succeeded" for c in found.values()) else {}


def assert_paid_once(ledger: Ledger, claims: dict[str, tuple[str, int]]) -> None:
    for card, amount in claims.values():
        assert ledger.applied_total_to(card) == amount, "each claim paid exactly once"
    assert ledger.money_is_conserved()


def test_a_burst_is_paid_at_default_settings_none_left_to_reconciliation(
    server_factory: Any, receiver: Receiver, tmp_path: Path
) -> None:
    """500 claims submitted by 64 clients at once: every one paid once, one event each,
    and no claim waited for reconciliation (each has one attempt, settled by its sender)."""
    server = server_factory({"CASHOUT_DATA_DIR": str(tmp_path)})
    path = "/hook/burst"
    provider = Provider.register(server, endpoint=receiver.url(path))
    receiver.behave(path, secrets=[provider.webhook_secret])
    count = 500
    uuids = [provider.generate(7, ref=f"burst-{i}") for i in range(count)]
    cards = {u: random_pan() for u in uuids}
    remember(*cards.values())

    async def burst() -> list[int]:
        gate = asyncio.Semaphore(64)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def one(uuid: str) -> int:
                async with gate:
                    body = {"id": uuid, "pan": cards[uuid]}
                    answer = await client.post(f"/cashout/claim/{provider.name}", json=body)
                    return answer.status_code

            return await asyncio.gather(*(one(u) for u in uuids))

    assert asyncio.run(burst()) == [202] * count
    wait_until(
        lambda: len({c.webhook_id for c in receiver.calls_to(path)}) == count,
        120,
        what="a webhook for every claim of the burst",
    )
    calls = receiver.calls_to(path)
    assert {c.payload["uuid"] for c in calls} == set(uuids)
    assert all(c.payload["status"] == "succeeded" and c.verified_by == (0,) for c in calls)
    ledger = Ledger(tmp_path / MOCK_LEDGER)
    for uuid in uuids:
        assert ledger.applied_total_to(cards[uuid]) == 7
    assert "left to reconciliation" not in server.log()
    assert "reconciled attempt" not in server.log(), "load alone parked no claim"


def test_kill_while_the_switch_answers_late_is_settled_once_after_restart(
    server_factory: Any, slow_switch: Simulator, tmp_path: Path
) -> None:
    """kill -9 with every transfer sent and its answer pending, default settings: the
    restarted process takes the claims over once their leases run out and settles them from
    the switch's record (it has them all), each with its one attempt."""
    env = ebs_env(slow_switch, tmp_path, CASHOUT_EBS_PUBLIC_KEY=public_key(slow_switch))
    server = server_factory(env)
    name, payer = unique_name(), random_pan()
    headers = auth(register(server.client(), provider_body(name, payer))["api_key"])
    claims = submit_all(server, name, headers, 10)
    wait_until(
        lambda: len(transfers_seen(slow_switch)) >= len(claims),
        30,
        what="every transfer to reach the switch",
    )
    server.kill()

    restarted = server_factory(env)
    final = wait_until(
        lambda: settled(restarted, name, headers, list(claims)), 90, what="every claim settled"
    )
    assert all(len(c["attempts"]) == 1 for c in final.values()), "no second attempt"
    assert len(transfers_seen(slow_switch)) == len(claims), "nothing sent twice"
    assert_paid_once(Ledger(slow_switch.data_dir / SIM_LEDGER), claims)


def test_a_process_frozen_mid_transfer_is_taken_over_and_sends_nothing_after(
    server_factory: Any, slow_switch: Simulator, tmp_path: Path
) -> None:
    """SIGSTOP while the transfers wait for the slow switch, past the lease: the other
    process settles the claims; after SIGCONT the frozen one only finds them settled."""
    env = ebs_env(slow_switch, tmp_path, CASHOUT_EBS_PUBLIC_KEY=public_key(slow_switch))
    frozen, other = server_factory(env), server_factory(env)
    name, payer = unique_name(), random_pan()
    headers = auth(register(frozen.client(), provider_body(name, payer))["api_key"])
    claims = submit_all(frozen, name, headers, 8)
    wait_until(lambda: len(transfers_seen(slow_switch)) >= len(claims), 30, what="transfers sent")
    assert frozen.proc is not None
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        final = wait_until(
            lambda: settled(other, name, headers, list(claims)), 90, what="the takeover"
        )
        assert "reconciled attempt 1: approved" in other.log()
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    wait_until(
        lambda: frozen.log().count("attempt 1: approved") >= len(claims),
        30,
        what="the woken process to read the switch's late answers",
    )
    assert settled(other, name, headers, list(claims)) == final, "its answers changed nothing"
    assert len(transfers_seen(slow_switch)) == len(claims), "nothing sent after SIGCONT"
    assert_paid_once(Ledger(slow_switch.data_dir / SIM_LEDGER), claims)


def test_a_process_frozen_before_sending_never_sends_once_it_lost_its_leases(
    server_factory: Any, slow_switch: Simulator, tmp_path: Path
) -> None:
    """SIGSTOP while the transfers wait for the switch's public key (nothing sent yet): the
    other process finds no such transfer, makes a new attempt and pays; the frozen one, woken
    with the key in hand, sends none of its old attempts. (The grace before "not found" is
    believed is shortened here; its default, the gateway's timeouts, is the benchmark's.)"""
    grace = {"CASHOUT_SETTLE_GRACE": "3"}
    frozen = server_factory(ebs_env(slow_switch, tmp_path, **grace))  # fetches the key: slow
    key = {"CASHOUT_EBS_PUBLIC_KEY": public_key(slow_switch)}
    env = ebs_env(slow_switch, tmp_path, **grace, **key)
    env["CASHOUT_DB_NAME"] = frozen.env["CASHOUT_DB_NAME"]
    other = server_factory(env)
    name, payer = unique_name(), random_pan()
    headers = auth(register(other.client(), provider_body(name, payer))["api_key"])
    claims = submit_all(frozen, name, headers, 6)
    wait_until(
        lambda: any(r["endpoint"] == "getPublicKey" for r in slow_switch.requests()),
        30,
        what="the frozen process to ask for the key",
    )
    assert frozen.proc is not None
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        final = wait_until(
            lambda: settled(other, name, headers, list(claims)), 90, what="the takeover"
        )
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    first_attempts = {c["attempts"][0]["tran_uuid"] for c in final.values()}
    assert all(c["attempts"][0]["outcome"] == "not_found" for c in final.values())
    wait_until(
        lambda: frozen.log().count("attempt 1: unknown") >= len(claims),
        30,
        what="the woken process to give up its lost attempts",
    )
    assert not first_attempts & set(transfers_seen(slow_switch)), "a lost lease never sends"
    assert settled(other, name, headers, list(claims)) == final
    assert_paid_once(Ledger(slow_switch.data_dir / SIM_LEDGER), claims)
