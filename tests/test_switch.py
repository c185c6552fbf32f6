"""The simulated switch's ledger rules, checked on a real SQLite file and real processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateways.switch import FUNDED_BALANCE, Switch
from tests.cards import bad_luhn, luhn_card

ROOT = Path(__file__).resolve().parent.parent
EXP = "3012"
IPIN = "1234"


def new_uuid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[Switch]:
    sw = Switch(tmp_path / "ledger.sqlite3")
    yield sw
    sw.close()


def test_approved_transfer_moves_money_once_and_conserves(switch: Switch) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    u = new_uuid()
    reply = switch.transfer(u, payer, EXP, IPIN, payee, 250)
    assert (reply.code, reply.applied, reply.recorded, reply.unanswered) == (0, True, True, False)
    assert reply.reference and len(reply.reference) == 12
    assert switch.balance(payer) == FUNDED_BALANCE - 250
    assert switch.balance(payee) == 250
    record = switch.status(u)
    assert record is not None and record.approved and record.applied and record.amount == 250
    assert [r.tran_uuid for r in switch.transfers_to(payee)] == [u]
    assert switch.applied_count(u) == 1
    assert switch.total_money() == switch.money_created() == FUNDED_BALANCE
    assert switch.money_is_conserved()
    # Records never show a card in repr.
    assert payer not in repr(record) and payee not in repr(record)
    assert payer not in repr(switch.account(payer))


def test_duplicate_uuid_is_613_and_nothing_moves(switch: Switch) -> None:
    payer, payee, other = luhn_card("1111"), luhn_card("2222"), luhn_card("3333")
    u = new_uuid()
    assert switch.transfer(u, payer, EXP, IPIN, payee, 100).code == 0
    again = switch.transfer(u, payer, EXP, IPIN, other, 999)
    assert (again.code, again.message, again.applied, again.recorded) == (
        613,
        "DUPLICATE_TRANSACTION",
        False,
        False,
    )
    assert switch.balance(payee) == 100
    assert switch.balance(other) is None
    assert switch.balance(payer) == FUNDED_BALANCE - 100
    record = switch.status(u)
    assert record is not None and record.code == 0 and record.amount == 100
    assert switch.applied_count(u) == 1
    # A declined UUID cannot be reused either.
    d = new_uuid()
    assert switch.transfer(d, payer, EXP, "9999", payee, 5).code == 53
    assert switch.transfer(d, payer, EXP, IPIN, payee, 5).code == 613
    assert switch.money_is_conserved()


def test_first_ipin_is_the_accounts_ipin(switch: Switch) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    assert switch.verify_card(payer, EXP, IPIN).ok
    wrong = switch.transfer(new_uuid(), payer, EXP, "4321", payee, 10)
    assert (wrong.code, wrong.message, wrong.applied, wrong.recorded) == (
        53,
        "Wrong IPIN",
        False,
        True,
    )
    assert switch.verify_card(payer, EXP, "4321").code == 53
    assert switch.ipin_matches(payer, IPIN) is True
    assert switch.ipin_matches(payer, "4321") is False
    assert switch.ipin_matches(payee, IPIN) is None
    assert switch.transfer(new_uuid(), payer, EXP, IPIN, payee, 10).code == 0
    assert switch.balance(payee) == 10


def test_verify_opens_a_funded_account(switch: Switch) -> None:
    card = luhn_card("1111")
    check = switch.verify_card(card, EXP, IPIN)
    assert (check.ok, check.code, check.balance) == (True, 0, FUNDED_BALANCE)
    acct = switch.account(card)
    assert acct is not None and acct.has_ipin and acct.exp_date == EXP
    # The IPIN is not stored in clear.
    raw = sqlite3.connect(switch.path).execute("SELECT ipin FROM accounts").fetchall()
    assert all(IPIN not in str(row[0]) for row in raw)


@pytest.mark.parametrize(
    ("exp_date", "why"),
    [("2001", "expired"), ("3013", "no such month"), ("30-1", "malformed"), ("", "empty")],
)
def test_bad_expiry_declines_54(switch: Switch, exp_date: str, why: str) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    reply = switch.transfer(new_uuid(), payer, exp_date, IPIN, payee, 10)
    assert reply.code == 54, why
    assert switch.verify_card(payer, exp_date, IPIN).code == 54
    assert switch.balance(payer) is None, "a card with a bad expiry opens no account"


def test_expiry_must_match_the_registered_one(switch: Switch) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    assert switch.verify_card(payer, EXP, IPIN).ok
    reply = switch.transfer(new_uuid(), payer, "3111", IPIN, payee, 10)
    assert (reply.code, reply.message, reply.applied) == (54, "Expired card", False)


@pytest.mark.parametrize(
    ("last4", "code", "message"),
    [
        ("0052", 52, "Invalid card"),
        ("0072", 72, "Routing error"),
        ("0051", 51, "Insufficient funds"),
        ("0053", 53, "Wrong IPIN"),
    ],
)
def test_magic_declines_are_recorded_and_move_nothing(
    switch: Switch, last4: str, code: int, message: str
) -> None:
    payer, payee = luhn_card("1111"), luhn_card(last4)
    u = new_uuid()
    reply = switch.transfer(u, payer, EXP, IPIN, payee, 75)
    assert (reply.code, reply.message, reply.applied, reply.recorded, reply.unanswered) == (
        code,
        message,
        False,
        True,
        False,
    )
    assert reply.reference is None
    record = switch.status(u)
    assert record is not None and (record.code, record.applied) == (code, False)
    assert switch.balance(payee) is None
    assert switch.balance(payer) == FUNDED_BALANCE
    assert switch.applied_count(u) == 0
    assert switch.money_is_conserved()


def test_magic_0091_applies_but_is_unanswered(switch: Switch) -> None:
    payer, payee = luhn_card("1111"), luhn_card("0091")
    u = new_uuid()
    reply = switch.transfer(u, payer, EXP, IPIN, payee, 40)
    assert (reply.applied, reply.recorded, reply.unanswered) == (True, True, True)
    assert switch.balance(payee) == 40
    record = switch.status(u)
    assert record is not None and record.approved and record.applied
    assert switch.applied_count(u) == 1
    assert switch.money_is_conserved()


def test_magic_0092_never_happened(switch: Switch) -> None:
    payer, payee = luhn_card("1111"), luhn_card("0092")
    u = new_uuid()
    reply = switch.transfer(u, payer, EXP, IPIN, payee, 40)
    assert (reply.code, reply.applied, reply.recorded, reply.unanswered) == (
        None,
        False,
        False,
        True,
    )
    assert switch.status(u) is None
    assert switch.balance(payee) is None
    assert switch.balance(payer) == FUNDED_BALANCE
    assert switch.all_transfers() == []


def test_real_insufficient_funds_is_51(switch: Switch) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    switch.open_account(payer, EXP, IPIN, balance=100)
    assert switch.transfer(new_uuid(), payer, EXP, IPIN, payee, 101).code == 51
    assert switch.transfer(new_uuid(), payer, EXP, IPIN, payee, 100).code == 0
    assert switch.transfer(new_uuid(), payer, EXP, IPIN, payee, 1).code == 51
    assert (switch.balance(payer), switch.balance(payee)) == (0, 100)
    assert switch.money_is_conserved()


def test_card_numbers_are_checked(switch: Switch) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    assert switch.transfer(new_uuid(), payer, EXP, IPIN, bad_luhn(payee), 1).code == 52
    assert switch.transfer(new_uuid(), bad_luhn(payer), EXP, IPIN, payee, 1).code == 52
    assert switch.transfer(new_uuid(), payer, EXP, IPIN, payee[:15], 1).code == 52
    long_payee = luhn_card("2222", length=19)
    assert switch.transfer(new_uuid(), payer, EXP, IPIN, long_payee, 1).code == 0
    assert switch.verify_card(bad_luhn(payer), EXP, IPIN).code == 52


@pytest.mark.parametrize("amount", [0, -5, True])
def test_invalid_amount_is_13(switch: Switch, amount: int) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    reply = switch.transfer(new_uuid(), payer, EXP, IPIN, payee, amount)
    assert (reply.code, reply.applied) == (13, False)
    assert switch.money_is_conserved()


def test_receiving_card_that_later_pays_is_funded(switch: Switch) -> None:
    a, b, c = luhn_card("1111"), luhn_card("2222"), luhn_card("3333")
    assert switch.transfer(new_uuid(), a, EXP, IPIN, b, 500).code == 0
    acct = switch.account(b)
    assert acct is not None and acct.balance == 500 and not acct.has_ipin
    assert switch.transfer(new_uuid(), b, EXP, "5555", c, 700).code == 0
    assert switch.balance(b) == FUNDED_BALANCE + 500 - 700
    assert switch.transfer(new_uuid(), b, EXP, IPIN, c, 1).code == 53
    assert switch.money_created() == 2 * FUNDED_BALANCE
    assert switch.money_is_conserved()


def test_ledger_survives_reopen_and_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    payer, payee = luhn_card("1111"), luhn_card("2222")
    u = new_uuid()
    with Switch(path) as sw:
        assert sw.transfer(u, payer, EXP, IPIN, payee, 321).code == 0
    with Switch(path) as sw:
        assert sw.balance(payee) == 321
        record = sw.status(u)
        assert record is not None and record.approved
        assert sw.transfer(u, payer, EXP, IPIN, payee, 321).code == 613
        assert sw.verify_card(payer, EXP, "0000").code == 53
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


_WORKER = textwrap.dedent(
    """
    import sys, uuid
    from gateways.switch import Switch
    path, payer, payee, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sw = Switch(path)
    for i in range(count):
        u = str(uuid.uuid4())
        reply = sw.transfer(u, payer, "3012", "1234", payee, i % 7 + 1)
        print(u, reply.code, flush=True)
    """
)


def _worker(path: Path, payer: str, payee: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(path), payer, payee, str(count)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_several_processes_share_one_ledger(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    payer = luhn_card("1111")
    payees = [luhn_card("2222") for _ in range(4)]
    procs = [_worker(path, payer, p, 30) for p in payees]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(out.split("\n"))
    with Switch(path) as sw:
        expected_total = 0
        for payee, lines in zip(payees, outputs, strict=True):
            rows = [line.split() for line in lines if line]
            assert len(rows) == 30 and all(code == "0" for _, code in rows)
            assert sw.balance(payee) == sum(i % 7 + 1 for i in range(30))
            assert len(sw.transfers_to(payee)) == 30
            expected_total += sw.applied_total_to(payee)
        assert sw.balance(payer) == FUNDED_BALANCE - expected_total
        assert sw.money_created() == FUNDED_BALANCE, "the payer was opened exactly once"
        assert sw.money_is_conserved()


def test_kill_9_mid_stream_leaves_a_consistent_ledger(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite3"
    payer, payee = luhn_card("1111"), luhn_card("2222")
    proc = _worker(path, payer, payee, 100_000)
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while len(seen) < 50 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.split()[0])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert len(seen) == 50
    with Switch(path) as sw:
        # Every transfer the worker saw committed is there; nothing is half-applied.
        assert all(sw.applied_count(u) == 1 for u in seen)
        records = sw.all_transfers()
        assert all(r.applied for r in records)
        assert sw.balance(payee) == sum(r.amount for r in records)
        assert sw.balance(payer) == FUNDED_BALANCE - sum(r.amount for r in records)
        assert sw.money_is_conserved()
        # And the file is still writable after the crash.
        assert sw.transfer(new_uuid(), payer, EXP, IPIN, payee, 1).code == 0
