"""The ``mock`` gateway over its SQLite ledger: every row of the magic-card table, status
settling unknown outcomes, card verification, latency, and crashes mid-transfer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateways.base import (
    Card,
    GatewayHost,
    Outcome,
    TransferRequest,
    TransferResult,
    create_gateway,
)
from gateways.mock import LEDGER_FILE, MockGateway
from simulator.bank import FUNDED_BALANCE
from tests.cards import luhn_card
from tests.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def payer() -> Card:
    return Card(luhn_card("1111"), "3012", "1234")


def request(card: Card, to_pan: str, amount: int = 100) -> TransferRequest:
    return TransferRequest(str(uuid.uuid4()), card, to_pan, amount)


async def transfer_and_status(
    data_dir: Path, req: TransferRequest, latency_ms: int = 0
) -> tuple[TransferResult, TransferResult]:
    gw = MockGateway(data_dir, latency_ms)
    try:
        return await gw.transfer(req), await gw.status(req.tran_uuid)
    finally:
        await gw.close()


@pytest.mark.parametrize(
    ("last4", "outcome", "code", "fixable", "moved"),
    [
        ("0052", Outcome.DECLINED, 52, True, False),
        ("0072", Outcome.DECLINED, 72, True, False),
        ("0051", Outcome.DECLINED, 51, False, False),
        ("0053", Outcome.DECLINED, 53, False, False),
        ("4321", Outcome.APPROVED, 0, False, True),
    ],
)
def test_magic_table_answers(
    tmp_path: Path, last4: str, outcome: Outcome, code: int, fixable: bool, moved: bool
) -> None:
    card, to_pan = payer(), luhn_card(last4)
    req = request(card, to_pan, 150)
    result, status = run(transfer_and_status(tmp_path, req))
    assert (result.outcome, result.code, result.customer_fixable) == (outcome, code, fixable)
    assert result.tran_uuid == req.tran_uuid
    assert (status.outcome, status.code) == (outcome, code), "status agrees with the answer"
    with Ledger(tmp_path / LEDGER_FILE) as ledger:
        assert ledger.balance(to_pan) == (150 if moved else None)
        assert ledger.balance(card.pan) == FUNDED_BALANCE - (150 if moved else 0)
        assert ledger.applied_count(req.tran_uuid) == int(moved)
        assert ledger.money_is_conserved()
    if moved:
        assert result.reference and result.reference == status.reference
    for res in (result, status):
        text = repr(dict(res.raw))
        assert card.pan not in text and to_pan not in text and card.ipin not in text


def test_0091_is_unknown_then_status_approved(tmp_path: Path) -> None:
    card, to_pan = payer(), luhn_card("0091")
    req = request(card, to_pan, 80)
    result, status = run(transfer_and_status(tmp_path, req, latency_ms=20))
    assert (result.outcome, result.code) == (Outcome.UNKNOWN, None)
    assert (status.outcome, status.code) == (Outcome.APPROVED, 0)
    with Ledger(tmp_path / LEDGER_FILE) as ledger:
        assert ledger.balance(to_pan) == 80
        assert ledger.applied_count(req.tran_uuid) == 1
        assert ledger.money_is_conserved()


def test_0092_is_unknown_then_status_not_found(tmp_path: Path) -> None:
    card, to_pan = payer(), luhn_card("0092")
    req = request(card, to_pan, 80)
    result, status = run(transfer_and_status(tmp_path, req, latency_ms=20))
    assert (result.outcome, result.code) == (Outcome.UNKNOWN, None)
    assert (status.outcome, status.code) == (Outcome.NOT_FOUND, None)
    with Ledger(tmp_path / LEDGER_FILE) as ledger:
        assert ledger.balance(to_pan) is None
        assert ledger.balance(card.pan) == FUNDED_BALANCE
        assert ledger.status(req.tran_uuid) is None


def test_reused_uuid_is_unknown_613_and_moves_nothing_more(tmp_path: Path) -> None:
    card, to_pan = payer(), luhn_card("4321")
    req = request(card, to_pan, 60)

    async def scenario() -> tuple[TransferResult, TransferResult, TransferResult]:
        gw = MockGateway(tmp_path)
        try:
            return await gw.transfer(req), await gw.transfer(req), await gw.status(req.tran_uuid)
        finally:
            await gw.close()

    first, second, status = run(scenario())
    assert first.outcome is Outcome.APPROVED
    assert (second.outcome, second.code) == (Outcome.UNKNOWN, 613)
    assert status.outcome is Outcome.APPROVED
    with Ledger(tmp_path / LEDGER_FILE) as ledger:
        assert ledger.balance(to_pan) == 60
        assert ledger.applied_count(req.tran_uuid) == 1


def test_unknown_uuid_status_is_not_found(tmp_path: Path) -> None:
    async def scenario() -> TransferResult:
        gw = MockGateway(tmp_path)
        try:
            return await gw.status(str(uuid.uuid4()))
        finally:
            await gw.close()

    assert run(scenario()).outcome is Outcome.NOT_FOUND


def test_verify_card_and_ipin(tmp_path: Path) -> None:
    card = payer()

    async def scenario() -> list[Any]:
        gw = create_gateway("mock", None, GatewayHost(data_dir=str(tmp_path)))
        assert isinstance(gw, MockGateway)
        try:
            return [
                await gw.verify_card(card),
                await gw.verify_card(Card(card.pan, card.exp_date, "9999")),
                await gw.verify_card(Card(luhn_card("1111"), "2001", "1234")),
                await gw.transfer(
                    request(Card(card.pan, card.exp_date, "9999"), luhn_card("4321"))
                ),
                await gw.transfer(request(card, luhn_card("4321"))),
                await gw.is_alive(),
            ]
        finally:
            await gw.close()

    good, wrong, expired, wrong_transfer, good_transfer, alive = run(scenario())
    assert (good.ok, good.code) == (True, 0)
    assert (wrong.ok, wrong.code) == (False, 53)
    assert (expired.ok, expired.code) == (False, 54)
    assert (wrong_transfer.outcome, wrong_transfer.code) == (Outcome.DECLINED, 53)
    assert good_transfer.outcome is Outcome.APPROVED
    assert alive is True


def test_latency_is_split_around_the_ledger_write(tmp_path: Path) -> None:
    """Money moves half-way through, so a crash can land on either side of it."""
    card, to_pan = payer(), luhn_card("4321")
    req = request(card, to_pan, 10)

    async def scenario() -> tuple[bool, float]:
        gw = MockGateway(tmp_path, latency_ms=600)
        watcher = Ledger(tmp_path / LEDGER_FILE)
        try:
            started = time.monotonic()
            task = asyncio.create_task(gw.transfer(req))
            deadline = started + 5
            while watcher.status(req.tran_uuid) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            done_when_applied = task.done()
            result = await task
            assert result.outcome is Outcome.APPROVED
            assert watcher.status(req.tran_uuid) is not None
            return done_when_applied, time.monotonic() - started
        finally:
            watcher.close()
            await gw.close()

    done_when_applied, elapsed = run(scenario())
    assert not done_when_applied, "the answer comes only after the second half of the latency"
    assert elapsed >= 0.6


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from gateways.base import Card, TransferRequest
    from gateways.mock import MockGateway

    async def main():
        data_dir, tran_uuid, pan, to_pan = sys.argv[1:5]
        gw = MockGateway(data_dir, latency_ms=4000)
        print("started", flush=True)
        await gw.transfer(TransferRequest(tran_uuid, Card(pan, "3012", "1234"), to_pan, 55))
        print("finished", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("kill_after_apply", [False, True])
def test_kill_9_mid_transfer_is_settled_by_status(tmp_path: Path, kill_after_apply: bool) -> None:
    card, to_pan = payer(), luhn_card("4321")
    tran_uuid = str(uuid.uuid4())
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), tran_uuid, card.pan, to_pan],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    ledger = Ledger(tmp_path / LEDGER_FILE)
    try:
        if kill_after_apply:
            deadline = time.monotonic() + 10
            while ledger.status(tran_uuid) is None and time.monotonic() < deadline:
                time.sleep(0.02)  # polling the ledger, not waiting blind
            assert ledger.status(tran_uuid) is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stdout.read() == "", "killed before it could answer"

        async def settle() -> TransferResult:
            gw = MockGateway(tmp_path)
            try:
                return await gw.status(tran_uuid)
            finally:
                await gw.close()

        status = run(settle())
        if kill_after_apply:
            assert status.outcome is Outcome.APPROVED
            assert ledger.balance(to_pan) == 55
        else:
            assert status.outcome is Outcome.NOT_FOUND
            assert ledger.balance(to_pan) is None
        assert ledger.money_is_conserved()
    finally:
        ledger.close()
        if proc.poll() is None:
            proc.kill()
