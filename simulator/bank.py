"""A simulated bank: card accounts in a persistent SQLite ledger, with magic cards.

It is a sandbox, not a gateway: the in-process ``mock`` gateway and the EBS simulator both sit
on it, so the two sandboxes follow the same rules, and tests read the same file
(``tests/ledger.py``) to check that money is conserved and moved at most once. It imports the
standard library (the ledger is ``sqlite3``) and ``gateways.base`` only: no web framework, no
MongoDB driver, so any process can open it.

The ledger is one SQLite file in WAL mode: every transfer is one ``BEGIN IMMEDIATE``
transaction (debit, credit and the ``transfers`` row together), so a ``kill -9`` of the process
leaves either all of it or none of it, and several processes can share the file.

Rules (docs/DESIGN.md section 8):

* A card first seen as a *paying* card (``verify_card`` or ``transfer``) opens an account
  funded with ``FUNDED_BALANCE``; its IPIN and expiry are the ones given that first time.
  A card first seen as a *receiving* card opens with balance 0 (and is funded, with its IPIN
  and expiry fixed, the first time it pays).
* Every ``verify_card`` is recorded in ``card_checks`` (card, code, time): tests count
  the checks that reached the switch.
* Magic receiving cards, by last four digits: ``0052`` -> 52, ``0072`` -> 72, ``0051`` -> 51,
  ``0053`` -> 53 (all recorded declines, nothing moves); ``0091`` -> applied and recorded as
  approved, but the caller must be told nothing (``unanswered``); ``0092`` -> nothing applied
  or recorded, and the caller must be told nothing.
* A reused ``tran_uuid`` -> 613 ``DUPLICATE_TRANSACTION``; the earlier record is untouched.
* Card numbers must be 16 or 19 digits and Luhn-valid (else 52), the amount a positive
  integer of whole SDG (else 13), the expiry ``YYmm``, not past and equal to the registered
  one (else 54).
* ``transfer`` checks in this order: reused UUID (613, not recorded), amount (13), paying
  card (52 invalid, 53 wrong IPIN, 54 expiry), receiving card (52), magic receiving cards,
  real balance (51), then moves the money. Every outcome except 613 and 0092 is recorded in
  ``transfers`` so ``status`` can answer.

Money is created only when a paying account is opened; ``opened_with`` keeps that amount per
account so ``money_is_conserved`` can compare it with the sum of balances.

Only what the gateways and the simulator's inspection routes use lives here; the read helpers
only tests need are in ``tests/ledger.py``.

Card numbers are never logged (only their last four digits). IPINs are stored as SHA-256
digests bound to the card number, not in clear (a sandbox ledger, not a vault).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from gateways.base import luhn_ok, mask_pan

log = logging.getLogger(__name__)

FUNDED_BALANCE = 1_000_000_000

# Response codes and messages the bank uses.
APPROVED = 0
INVALID_AMOUNT = 13
INSUFFICIENT_FUNDS = 51
INVALID_CARD = 52
WRONG_IPIN = 53
EXPIRED_CARD = 54
ROUTING_ERROR = 72
DUPLICATE_TRANSACTION = 613

TRANSFER_COLUMNS = "tran_uuid, from_pan, to_pan, amount, code, message, applied, created_at"

MESSAGES: dict[int, str] = {
    APPROVED: "Approved",
    INVALID_AMOUNT: "Invalid amount",
    INSUFFICIENT_FUNDS: "Insufficient funds",
    INVALID_CARD: "Invalid card",
    WRONG_IPIN: "Wrong IPIN",
    EXPIRED_CARD: "Expired card",
    ROUTING_ERROR: "Routing error",
    DUPLICATE_TRANSACTION: "DUPLICATE_TRANSACTION",
}

# Magic receiving cards (last four digits) that decline with a fixed code.
MAGIC_DECLINES: dict[str, int] = {
    "0052": INVALID_CARD,
    "0072": ROUTING_ERROR,
    "0051": INSUFFICIENT_FUNDS,
    "0053": WRONG_IPIN,
}
MAGIC_APPLIED_UNANSWERED = "0091"
MAGIC_NEVER_HAPPENED = "0092"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    pan TEXT PRIMARY KEY,
    ipin TEXT,
    exp_date TEXT,
    balance INTEGER NOT NULL,
    opened_with INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS transfers (
    tran_uuid TEXT PRIMARY KEY,
    from_pan TEXT NOT NULL,
    to_pan TEXT NOT NULL,
    amount INTEGER NOT NULL,
    code INTEGER NOT NULL,
    message TEXT NOT NULL,
    applied INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_to_pan ON transfers (to_pan);
CREATE INDEX IF NOT EXISTS transfers_from_pan ON transfers (from_pan);
CREATE TABLE IF NOT EXISTS card_checks (
    pan TEXT NOT NULL,
    code INTEGER NOT NULL,
    checked_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS card_checks_pan ON card_checks (pan);
"""


mask = mask_pan


def valid_pan(pan: object) -> bool:
    """16 or 19 digits with a good check digit, as a real bank would insist."""
    return isinstance(pan, str) and len(pan) in (16, 19) and luhn_ok(pan)


def reference_for(tran_uuid: str) -> str:
    """A stable 12-digit retrieval reference, derived so it needs no extra column."""
    digest = hashlib.sha256(tran_uuid.encode()).digest()
    return f"{int.from_bytes(digest[:8], 'big') % 10**12:012d}"


def approval_code_for(tran_uuid: str) -> str:
    """A stable 6-digit approval code, derived like the reference."""
    digest = hashlib.sha256(b"approval:" + tran_uuid.encode()).digest()
    return f"{int.from_bytes(digest[:4], 'big') % 10**6:06d}"


def ipin_digest(pan: str, ipin: str) -> str:
    """How the ledger stores an IPIN: bound to its card, never in clear."""
    return hashlib.sha256(f"{pan}:{ipin}".encode()).hexdigest()


def _expiry_problem(exp_date: object, now: datetime) -> bool:
    """True when ``exp_date`` is not ``YYmm`` or lies before the current month."""
    if not (isinstance(exp_date, str) and len(exp_date) == 4 and exp_date.isdigit()):
        return True
    year, month = 2000 + int(exp_date[:2]), int(exp_date[2:])
    if not 1 <= month <= 12:
        return True
    return (year, month) < (now.year, now.month)


@dataclass(frozen=True)
class TransferRecord:
    """One row of ``transfers``: what the bank decided for a transaction UUID."""

    tran_uuid: str
    from_pan: str = field(repr=False)
    to_pan: str = field(repr=False)
    amount: int
    code: int
    message: str
    applied: bool
    created_at: str

    @property
    def approved(self) -> bool:
        return self.code == APPROVED

    @property
    def reference(self) -> str:
        return reference_for(self.tran_uuid)


@dataclass(frozen=True)
class TransferReply:
    """What ``transfer`` decided.

    ``unanswered`` means the caller must not learn the result (magic 0091/0092): a gateway
    turns it into a timeout / unknown outcome. ``recorded`` says whether ``status`` will know
    this UUID afterwards (False for 0092 and for a 613 duplicate, whose UUID keeps its
    earlier record).
    """

    tran_uuid: str
    code: int | None  # None only for an unanswered transfer that never happened (0092)
    message: str
    applied: bool
    recorded: bool
    unanswered: bool = False

    @property
    def approved(self) -> bool:
        return self.code == APPROVED

    @property
    def reference(self) -> str | None:
        return reference_for(self.tran_uuid) if self.applied else None


@dataclass(frozen=True)
class CardCheck:
    """The answer to ``verify_card``: code 0 when card, expiry and IPIN are good."""

    code: int
    message: str
    balance: int | None = None

    @property
    def ok(self) -> bool:
        return self.code == APPROVED


class Bank:
    """The ledger in one SQLite file, safe to share between processes.

    Each process (and each ``Bank``) has its own connection; it is reopened after a fork so
    a child never uses its parent's handle. Calls are serialised by a lock so the object may
    be used from several threads.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 30_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._connect()

    # -- connection handling -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        # Switching to WAL needs a moment of exclusive access; another process may be
        # opening the same file, so retry briefly instead of failing.
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            log.warning("bank ledger %s is not in WAL mode (%s)", self.path, mode)
        # WAL with NORMAL: a commit survives the process being killed (the tests' crashes);
        # only a power cut could lose the last ones, which a sandbox ledger may. FULL would
        # fsync on every transfer, inside the mock gateway's event loop.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._conn = conn
        self._pid = os.getpid()
        return conn

    def _write(self) -> _WriteTxn:
        return _WriteTxn(self)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the bank ------------------------------------------------------------------------

    def verify_card(self, pan: str, exp_date: str, ipin: str) -> CardCheck:
        """Check a paying card, opening a funded account the first time it is seen."""
        with self._write() as conn:
            code = self._check_payer(conn, pan, exp_date, ipin, _now())
            # Every check is recorded, so a test can count what reached the switch.
            conn.execute(
                "INSERT INTO card_checks (pan, code, checked_at) VALUES (?, ?, ?)",
                (pan, code, _now().isoformat()),
            )
            balance = None
            if code == APPROVED:
                balance = conn.execute(
                    "SELECT balance FROM accounts WHERE pan = ?", (pan,)
                ).fetchone()[0]
        log.info("verify %s -> %d", mask(pan), code)
        return CardCheck(code, MESSAGES[code], balance)

    def transfer(
        self,
        tran_uuid: str,
        from_pan: str,
        exp_date: str,
        ipin: str,
        to_pan: str,
        amount: int,
    ) -> TransferReply:
        """Move ``amount`` once, or record why not; see the module docstring for the rules."""
        now = _now()
        with self._write() as conn:
            reply = self._transfer(conn, tran_uuid, from_pan, exp_date, ipin, to_pan, amount, now)
        log.info(
            "transfer %s %s -> %s amount=%s code=%s applied=%s unanswered=%s",
            tran_uuid,
            mask(from_pan),
            mask(to_pan),
            amount,
            reply.code,
            reply.applied,
            reply.unanswered,
        )
        return reply

    def _transfer(
        self,
        conn: sqlite3.Connection,
        tran_uuid: str,
        from_pan: str,
        exp_date: str,
        ipin: str,
        to_pan: str,
        amount: int,
        now: datetime,
    ) -> TransferReply:
        if conn.execute("SELECT 1 FROM transfers WHERE tran_uuid = ?", (tran_uuid,)).fetchone():
            return TransferReply(
                tran_uuid,
                DUPLICATE_TRANSACTION,
                MESSAGES[DUPLICATE_TRANSACTION],
                applied=False,
                recorded=False,
            )

        def record(code: int, applied: bool = False, unanswered: bool = False) -> TransferReply:
            conn.execute(
                "INSERT INTO transfers (tran_uuid, from_pan, to_pan, amount, code, message,"
                " applied, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tran_uuid,
                    from_pan,
                    to_pan,
                    amount if isinstance(amount, int) else 0,
                    code,
                    MESSAGES[code],
                    int(applied),
                    now.isoformat(),
                ),
            )
            return TransferReply(
                tran_uuid,
                code,
                MESSAGES[code],
                applied=applied,
                recorded=True,
                unanswered=unanswered,
            )

        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            return record(INVALID_AMOUNT)
        code = self._check_payer(conn, from_pan, exp_date, ipin, now)
        if code != APPROVED:
            return record(code)
        if not valid_pan(to_pan):
            return record(INVALID_CARD)
        last4 = to_pan[-4:]
        if last4 in MAGIC_DECLINES:
            return record(MAGIC_DECLINES[last4])
        if last4 == MAGIC_NEVER_HAPPENED:
            return TransferReply(
                tran_uuid, None, "no reply", applied=False, recorded=False, unanswered=True
            )
        balance = conn.execute(
            "SELECT balance FROM accounts WHERE pan = ?", (from_pan,)
        ).fetchone()[0]
        if balance < amount:
            return record(INSUFFICIENT_FUNDS)
        conn.execute("UPDATE accounts SET balance = balance - ? WHERE pan = ?", (amount, from_pan))
        conn.execute(
            "INSERT INTO accounts (pan, balance, opened_with) VALUES (?, 0, 0)"
            " ON CONFLICT (pan) DO NOTHING",
            (to_pan,),
        )
        conn.execute("UPDATE accounts SET balance = balance + ? WHERE pan = ?", (amount, to_pan))
        return record(APPROVED, applied=True, unanswered=last4 == MAGIC_APPLIED_UNANSWERED)

    def _check_payer(
        self, conn: sqlite3.Connection, pan: str, exp_date: str, ipin: str, now: datetime
    ) -> int:
        if not valid_pan(pan):
            return INVALID_CARD
        if not (isinstance(ipin, str) and ipin.isdigit() and 4 <= len(ipin) <= 12):
            return WRONG_IPIN
        row = conn.execute("SELECT ipin, exp_date FROM accounts WHERE pan = ?", (pan,)).fetchone()
        if row is None or row[0] is None:
            # First time this card pays: it becomes a funded account with these credentials.
            if _expiry_problem(exp_date, now):
                return EXPIRED_CARD
            digest = ipin_digest(pan, ipin)
            if row is None:
                conn.execute(
                    "INSERT INTO accounts (pan, ipin, exp_date, balance, opened_with)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (pan, digest, exp_date, FUNDED_BALANCE, FUNDED_BALANCE),
                )
            else:
                conn.execute(
                    "UPDATE accounts SET ipin = ?, exp_date = ?, balance = balance + ?,"
                    " opened_with = opened_with + ? WHERE pan = ?",
                    (digest, exp_date, FUNDED_BALANCE, FUNDED_BALANCE, pan),
                )
            return APPROVED
        if not hmac.compare_digest(row[0], ipin_digest(pan, ipin)):
            return WRONG_IPIN
        if exp_date != row[1] or _expiry_problem(exp_date, now):
            return EXPIRED_CARD
        return APPROVED

    def status(self, tran_uuid: str) -> TransferRecord | None:
        """The recorded result of a transaction, or None when the bank never saw it."""
        found = self._records("WHERE tran_uuid = ?", (tran_uuid,))
        return found[0] if found else None

    def ipin_matches(self, pan: str, ipin: str) -> bool | None:
        """Whether ``ipin`` is the account's IPIN; None when the card has none registered."""
        row = self._one("SELECT ipin FROM accounts WHERE pan = ?", (pan,))
        if row is None or row[0] is None:
            return None
        return hmac.compare_digest(row[0], ipin_digest(pan, ipin))

    # -- reads for the EBS simulator's inspection routes (tests/ledger.py adds its own) ----

    def balance(self, pan: str) -> int | None:
        """The card's balance, or None when the bank has no account for it."""
        return self._optional_number("SELECT balance FROM accounts WHERE pan = ?", (pan,))

    def transfers_to(self, pan: str) -> list[TransferRecord]:
        return self._records("WHERE to_pan = ?", (pan,))

    def total_money(self) -> int:
        """Sum of all balances."""
        return self._number("SELECT COALESCE(SUM(balance), 0) FROM accounts")

    def money_created(self) -> int:
        """Money brought into the system by opening paying accounts."""
        return self._number("SELECT COALESCE(SUM(opened_with), 0) FROM accounts")

    def money_is_conserved(self) -> bool:
        """Transfers only move money: balances must add up to what opening accounts created."""
        row = self._one(
            "SELECT COALESCE(SUM(balance), 0), COALESCE(SUM(opened_with), 0) FROM accounts"
        )
        return row is not None and int(row[0]) == int(row[1])

    def _number(self, query: str, args: tuple[Any, ...] = ()) -> int:
        row = self._one(query, args)
        return int(row[0]) if row else 0

    def _optional_number(self, query: str, args: tuple[Any, ...] = ()) -> int | None:
        row = self._one(query, args)
        return int(row[0]) if row else None

    def _one(self, query: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._connect().execute(query, args).fetchone()
        return row

    def _records(self, where: str, args: tuple[Any, ...]) -> list[TransferRecord]:
        """Transfers in the order the bank recorded them; ``where`` is one of ours."""
        query = f"SELECT {TRANSFER_COLUMNS} FROM transfers {where} ORDER BY rowid"  # noqa: S608
        with self._lock:
            rows = self._connect().execute(query, args).fetchall()
        return [_record(r) for r in rows]


def _record(row: tuple[Any, ...]) -> TransferRecord:
    return TransferRecord(
        tran_uuid=row[0],
        from_pan=row[1],
        to_pan=row[2],
        amount=row[3],
        code=row[4],
        message=row[5],
        applied=bool(row[6]),
        created_at=row[7],
    )


def _now() -> datetime:
    return datetime.now(UTC)


class _WriteTxn:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: takes the write lock up front so two processes
    never both read a balance and then both debit it."""

    def __init__(self, bank: Bank) -> None:
        self._bank = bank
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        self._bank._lock.acquire()
        try:
            conn = self._bank._connect()
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._bank._lock.release()
            raise
        self._conn = conn
        return conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._conn is not None
        try:
            self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._bank._lock.release()


def iter_masked(records: list[TransferRecord]) -> Iterator[dict[str, Any]]:
    """Records as dicts safe to print or serve (card numbers masked)."""
    for r in records:
        yield {
            "tran_uuid": r.tran_uuid,
            "from_pan": mask(r.from_pan),
            "to_pan": mask(r.to_pan),
            "amount": r.amount,
            "code": r.code,
            "message": r.message,
            "applied": r.applied,
            "created_at": r.created_at,
        }
