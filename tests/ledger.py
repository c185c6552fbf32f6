"""The bank's ledger as tests read it: the simulator's ``Bank`` plus the inspection helpers
only tests need (accounts, counts, sums, opening an account with a chosen balance), so the
bank itself carries nothing that only a test calls."""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.bank import FUNDED_BALANCE, Bank, TransferRecord, ipin_digest, mask


@dataclass(frozen=True)
class Account:
    """A ledger account; the IPIN digest stays in the file."""

    pan: str = field(repr=False)
    exp_date: str | None
    balance: int
    opened_with: int
    has_ipin: bool

    def __repr__(self) -> str:
        return f"Account({mask(self.pan)}, balance={self.balance})"


class Ledger(Bank):
    """A ``Bank`` on the same file, with the reads tests use to check that money moved once."""

    def open_account(
        self, pan: str, exp_date: str, ipin: str, balance: int = FUNDED_BALANCE
    ) -> None:
        """Open a paying account with a chosen balance (e.g. to test real insufficient funds)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO accounts (pan, ipin, exp_date, balance, opened_with)"
                " VALUES (?, ?, ?, ?, ?)",
                (pan, ipin_digest(pan, ipin), exp_date, balance, balance),
            )

    def account(self, pan: str) -> Account | None:
        row = self._one(
            "SELECT pan, exp_date, balance, opened_with, ipin IS NOT NULL"
            " FROM accounts WHERE pan = ?",
            (pan,),
        )
        if row is None:
            return None
        return Account(row[0], row[1], row[2], row[3], bool(row[4]))

    def transfers_from(self, pan: str) -> list[TransferRecord]:
        return self._records("WHERE from_pan = ?", (pan,))

    def all_transfers(self) -> list[TransferRecord]:
        return self._records("", ())

    def applied_count(self, tran_uuid: str) -> int:
        """How many times money moved for this UUID: 0 or 1, never more."""
        return self._number(
            "SELECT COUNT(*) FROM transfers WHERE tran_uuid = ? AND applied = 1", (tran_uuid,)
        )

    def applied_total_to(self, pan: str) -> int:
        """Sum of applied transfers to a card: equals its balance if it never paid."""
        return self._number(
            "SELECT COALESCE(SUM(amount), 0) FROM transfers WHERE to_pan = ? AND applied = 1",
            (pan,),
        )

    def card_checks(self, pan: str) -> list[int]:
        """The codes of every check of ``pan`` that reached the bank, oldest first."""
        with self._lock:
            rows = (
                self._connect()
                .execute("SELECT code FROM card_checks WHERE pan = ? ORDER BY rowid", (pan,))
                .fetchall()
            )
        return [int(r[0]) for r in rows]
