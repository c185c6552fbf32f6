"""The simulated bank's ledger rules, checked on a real SQLite file and real processes."""

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

from simulator.bank import FUNDED_BALANCE
from tests.cards import bad_luhn, luhn_card
from tests.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent
EXP = "3012"
IPIN = "1234"


def new_uuid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.sqlite3") as opened:
        yield opened


def test_approved_transfer_moves_money_once_and_conserves(ledger: Ledger) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    u = new_uuid()
    reply = ledger.transfer(u, payer, EXP, IPIN, payee, 250)
    assert (reply.code, reply.applied, reply.recorded, reply.unanswered) == (0, True, True, False)
    assert reply.reference and len(reply.reference) == 12
    assert ledger.balance(payer) == FUNDED_BALANCE - 250
    assert ledger.balance(payee) == 250
    record = ledger.status(u)
    assert record is not None and record.approved and record.applied and record.amount == 250
    assert [r.tran_uuid for r in ledger.transfers_to(payee)] == [u]
    assert ledger.applied_count(u) == 1
    assert ledger.total_money() == ledger.money_created() == FUNDED_BALANCE
    assert ledger.money_is_conserved()
    # Records never show a card in repr.
    assert payer not in repr(record) and payee not in repr(record)
    assert payer not in repr(ledger.account(payer))


def test_duplicate_uuid_is_613_and_nothing_moves(ledger: Ledger) -> None:
    payer, payee, other = luhn_card("1111"), luhn_card("2222"), luhn_card("3333")
    u = new_uuid()
    assert ledger.transfer(u, payer, EXP, IPIN, payee, 100).code == 0
    again = ledger.transfer(u, payer, EXP, IPIN, other, 999)
    assert (again.code, again.message, again.applied, again.recorded) == (
        613,
        "DUPLICATE_TRANSACTION",
        False,
        False,
    )
    assert ledger.balance(payee) == 100
    assert ledger.balance(other) is None
    assert ledger.balance(payer) == FUNDED_BALANCE - 100
    record = ledger.status(u)
    assert record is not None and record.code == 0 and record.amount == 100
    assert ledger.applied_count(u) == 1
    # A declined UUID cannot be reused either.
    d = new_uuid()
    assert ledger.transfer(d, payer, EXP, "9999", payee, 5).code == 53
    assert ledger.transfer(d, payer, EXP, IPIN, payee, 5).code == 613
    assert ledger.money_is_conserved()


def test_first_ipin_is_the_accounts_ipin(ledger: Ledger) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    assert ledger.verify_card(payer, EXP, IPIN).ok
    wrong = ledger.transfer(new_uuid(), payer, EXP, "4321", payee, 10)
    assert (wrong.code, wrong.message, wrong.applied, wrong.recorded) == (
        53,
        "Wrong IPIN",
        False,
        True,
    )
    assert ledger.verify_card(payer, EXP, "4321").code == 53
    assert ledger.ipin_matches(payer, IPIN) is True
    assert ledger.ipin_matches(payer, "4321") is False
    assert ledger.ipin_matches(payee, IPIN) is None
    assert ledger.transfer(new_uuid(), payer, EXP, IPIN, payee, 10).code == 0
    assert ledger.balance(payee) == 10


def test_verify_opens_a_funded_account(ledger: Ledger) -> None:
    card = luhn_card("1111")
    check = ledger.verify_card(card, EXP, IPIN)
    assert (check.ok, check.code, check.balance) == (True, 0, FUNDED_BALANCE)
    acct = ledger.account(card)
    assert acct is not None and acct.has_ipin and acct.exp_date == EXP
    # The IPIN is not stored in clear.
    raw = sqlite3.connect(ledger.path).execute("SELECT ipin FROM accounts").fetchall()
    assert all(IPIN not in str(row[0]) for row in raw)


@pytest.mark.parametrize(
    ("exp_date", "why"),
    [("2001", "expired"), ("3013", "no such month"), ("30-1", "malformed"), ("", "empty")],
)
def test_bad_expiry_declines_54(ledger: Ledger, exp_date: str, why: str) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    reply = ledger.transfer(new_uuid(), payer, exp_date, IPIN, payee, 10)
    assert reply.code == 54, why
    assert ledger.verify_card(payer, exp_date, IPIN).code == 54
    assert ledger.balance(payer) is None, "a card with a bad expiry opens no account"


def test_expiry_must_match_the_registered_one(ledger: Ledger) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    assert ledger.verify_card(payer, EXP, IPIN).ok
    reply = ledger.transfer(new_uuid(), payer, "3111", IPIN, payee, 10)
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
    ledger: Ledger, last4: str, code: int, message: str
) -> None:
    payer, payee = luhn_card("1111"), luhn_card(last4)
    u = new_uuid()
    reply = ledger.transfer(u, payer, EXP, IPIN, payee, 75)
    assert (reply.code, reply.message, reply.applied, reply.recorded, reply.unanswered) == (
        code,
        message,
        False,
        True,
        False,
    )
    assert reply.reference is None
    record = ledger.status(u)
    assert record is not None and (record.code, record.applied) == (code, False)
    assert ledger.balance(payee) is None
    assert ledger.balance(payer) == FUNDED_BALANCE
    assert ledger.applied_count(u) == 0
    assert ledger.money_is_conserved()


def test_magic_0091_applies_but_is_unanswered(ledger: Ledger) -> None:
    payer, payee = luhn_card("1111"), luhn_card("0091")
    u = new_uuid()
    reply = ledger.transfer(u, payer, EXP, IPIN, payee, 40)
    assert (reply.applied, reply.recorded, reply.unanswered) == (True, True, True)
    assert ledger.balance(payee) == 40
    record = ledger.status(u)
    assert record is not None and record.approved and record.applied
    assert ledger.applied_count(u) == 1
    assert ledger.money_is_conserved()


def test_magic_0092_never_happened(ledger: Ledger) -> None:
    payer, payee = luhn_card("1111"), luhn_card("0092")
    u = new_uuid()
    reply = ledger.transfer(u, payer, EXP, IPIN, payee, 40)
    assert (reply.code, reply.applied, reply.recorded, reply.unanswered) == (
        None,
        False,
        False,
        True,
    )
    assert ledger.status(u) is None
    assert ledger.balance(payee) is None
    assert ledger.balance(payer) == FUNDED_BALANCE
    assert ledger.all_transfers() == []


def test_real_insufficient_funds_is_51(ledger: Ledger) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    ledger.open_account(payer, EXP, IPIN, balance=100)
    assert ledger.transfer(new_uuid(), payer, EXP, IPIN, payee, 101).code == 51
    assert ledger.transfer(new_uuid(), payer, EXP, IPIN, payee, 100).code == 0
    assert ledger.transfer(new_uuid(), payer, EXP, IPIN, payee, 1).code == 51
    assert (ledger.balance(payer), ledger.balance(payee)) == (0, 100)
    assert ledger.money_is_conserved()


def test_card_numbers_are_checked(ledger: Ledger) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    assert ledger.transfer(new_uuid(), payer, EXP, IPIN, bad_luhn(payee), 1).code == 52
    assert ledger.transfer(new_uuid(), bad_luhn(payer), EXP, IPIN, payee, 1).code == 52
    assert ledger.transfer(new_uuid(), payer, EXP, IPIN, payee[:15], 1).code == 52
    long_payee = luhn_card("2222", length=19)
    assert ledger.transfer(new_uuid(), payer, EXP, IPIN, long_payee, 1).code == 0
    assert ledger.verify_card(bad_luhn(payer), EXP, IPIN).code == 52


@pytest.mark.parametrize("amount", [0, -5, True])
def test_invalid_amount_is_13(ledger: Ledger, amount: int) -> None:
    payer, payee = luhn_card("1111"), luhn_card("2222")
    reply = ledger.transfer(new_uuid(), payer, EXP, IPIN, payee, amount)
    assert (reply.code, reply.applied) == (13, False)
    assert ledger.money_is_conserved()


def test_receiving_card_that_later_pays_is_funded(ledger: Ledger) -> None:
    a, b, c = luhn_card("1111"), luhn_card("2222"), luhn_card("3333")
    assert ledger.transfer(new_uuid(), a, EXP, IPIN, b, 500).code == 0
    acct = ledger.account(b)
    assert acct is not None and acct.balance == 500 and not acct.has_ipin
    assert ledger.transfer(new_uuid(), b, EXP, "5555", c, 700).code == 0
    assert ledger.balance(b) == FUNDED_BALANCE + 500 - 700
    assert ledger.transfer(new_uuid(), b, EXP, IPIN, c, 1).code == 53
    assert ledger.money_created() == 2 * FUNDED_BALANCE
    assert ledger.money_is_conserved()


def test_ledger_survives_reopen_and_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    payer, payee = luhn_card("1111"), luhn_card("2222")
    u = new_uuid()
    with Ledger(path) as ledger:
        assert ledger.transfer(u, payer, EXP, IPIN, payee, 321).code == 0
    with Ledger(path) as ledger:
        assert ledger.balance(payee) == 321
        record = ledger.status(u)
        assert record is not None and record.approved
        assert ledger.transfer(u, payer, EXP, IPIN, payee, 321).code == 613
        assert ledger.verify_card(payer, EXP, "0000").code == 53
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


_WORKER = textwrap.dedent(
    """
    import sys, uuid
    from simulator.bank import Bank
    path, payer, payee, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    bank = Bank(path)
    for i in range(count):
        u = str(uuid.uuid4())
        reply = bank.transfer(u, payer, "3012", "1234", payee, i % 7 + 1)
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
    with Ledger(path) as ledger:
        expected_total = 0
        for payee, lines in zip(payees, outputs, strict=True):
            rows = [line.split() for line in lines if line]
            assert len(rows) == 30 and all(code == "0" for _, code in rows)
            assert ledger.balance(payee) == sum(i % 7 + 1 for i in range(30))
            assert len(ledger.transfers_to(payee)) == 30
            expected_total += ledger.applied_total_to(payee)
        assert ledger.balance(payer) == FUNDED_BALANCE - expected_total
        assert ledger.money_created() == FUNDED_BALANCE, "the payer was opened exactly once"
        assert ledger.money_is_conserved()


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
    with Ledger(path) as ledger:
        # Every transfer the worker saw committed is there; nothing is half-applied.
        assert all(ledger.applied_count(u) == 1 for u in seen)
        records = ledger.all_transfers()
        assert all(r.applied for r in records)
        assert ledger.balance(payee) == sum(r.amount for r in records)
        assert ledger.balance(payer) == FUNDED_BALANCE - sum(r.amount for r in records)
        assert ledger.money_is_conserved()
        # And the file is still writable after the crash.
        assert ledger.transfer(new_uuid(), payer, EXP, IPIN, payee, 1).code == 0
