"""The ``mock`` sandbox gateway: the simulated bank of ``simulator/bank.py``, in process.

The ledger lives in ``<data_dir>/mock-switch.sqlite3`` so it survives restarts and ``kill -9``
and is shared by every server process using the same data directory; tests read it through
``tests/ledger.py`` to check that money moved once.

``mock_latency_ms`` is split around the ledger write (half before, half after) so a crash
during a transfer sometimes lands before and sometimes after the money moved, which is what
reconciliation has to cope with.

A reused ``tran_uuid`` (613) is reported as UNKNOWN, not DECLINED: the UUID already has an
outcome at the switch, which only ``status`` can tell, and failing the claim could hide money
that did move.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateways.base import (
    Card,
    Gateway,
    GatewayHost,
    Outcome,
    Problems,
    TransferRequest,
    TransferResult,
    VerifyResult,
    mask_pan,
    not_sent,
)
from simulator.bank import DUPLICATE_TRANSACTION, Bank, TransferRecord, reference_for

log = logging.getLogger(__name__)

LEDGER_FILE = "mock-switch.sqlite3"


@dataclass(frozen=True)
class MockOptions:
    latency_ms: int = field(
        default=0, metadata={"help": "delay the mock gateway adds to each transfer"}
    )

    def problems(self, production: bool) -> Problems:
        return [("latency_ms", "must not be negative")] if self.latency_ms < 0 else []


class MockGateway(Gateway):
    """In-process sandbox switch with a persistent, shared ledger."""

    name = "mock"
    Options = MockOptions
    sandbox_only = True

    def __init__(self, data_dir: str | Path = "./var", latency_ms: int = 0) -> None:
        self.ledger_path = Path(data_dir) / LEDGER_FILE
        self.latency_ms = max(0, int(latency_ms))
        self._bank: Bank | None = None

    @classmethod
    def create(cls, options: MockOptions, host: GatewayHost) -> MockGateway:
        return cls(host.data_dir, options.latency_ms)

    @classmethod
    def settle_grace(cls, options: MockOptions) -> float:
        """The switch is in this process: a transfer it has not recorded once the process
        that sent it is gone never will be. A few seconds cover the added latency."""
        return options.latency_ms / 1000 + 5.0

    @property
    def bank(self) -> Bank:
        """Opened lazily so constructing the gateway never touches the disk."""
        if self._bank is None:
            self._bank = Bank(self.ledger_path)
        return self._bank

    async def transfer(self, request: TransferRequest) -> TransferResult:
        half = self.latency_ms / 2000
        if half:
            await asyncio.sleep(half)
        if not request.may_send():
            return not_sent(request)
        card = request.from_card
        reply = self.bank.transfer(
            request.tran_uuid, card.pan, card.exp_date, card.ipin, request.to_pan, request.amount
        )
        if half:
            await asyncio.sleep(self.latency_ms / 1000 - half)
        raw: dict[str, Any] = {
            "tranUUID": request.tran_uuid,
            "PAN": mask_pan(card.pan),
            "toCard": mask_pan(request.to_pan),
            "tranAmount": request.amount,
        }
        if reply.unanswered:
            return TransferResult(
                Outcome.UNKNOWN,
                request.tran_uuid,
                None,
                "the switch did not answer (timeout)",
                raw={**raw, "error": "timeout"},
            )
        raw.update(responseCode=reply.code, responseMessage=reply.message)
        if reply.code == DUPLICATE_TRANSACTION:
            return TransferResult(
                Outcome.UNKNOWN,
                request.tran_uuid,
                reply.code,
                f"{reply.message}: this UUID already has an outcome; ask status",
                raw=raw,
            )
        if reply.approved:
            reference = reply.reference
            raw["referenceNumber"] = reference
            return TransferResult(
                Outcome.APPROVED, request.tran_uuid, 0, reply.message, reference, raw
            )
        return TransferResult(
            Outcome.DECLINED, request.tran_uuid, reply.code, reply.message, raw=raw
        )

    async def status(self, tran_uuid: str) -> TransferResult:
        record = self.bank.status(tran_uuid)
        if record is None:
            return TransferResult(
                Outcome.NOT_FOUND,
                tran_uuid,
                None,
                "no such transaction",
                raw={"tranUUID": tran_uuid, "found": False},
            )
        return _from_record(record)

    async def verify_card(self, card: Card) -> VerifyResult:
        check = self.bank.verify_card(card.pan, card.exp_date, card.ipin)
        return VerifyResult(check.ok, check.code, check.message)

    async def is_alive(self) -> bool:
        return True

    async def close(self) -> None:
        if self._bank is not None:
            self._bank.close()
            self._bank = None


def _from_record(record: TransferRecord) -> TransferResult:
    raw: dict[str, Any] = {
        "tranUUID": record.tran_uuid,
        "found": True,
        "PAN": mask_pan(record.from_pan),
        "toCard": mask_pan(record.to_pan),
        "tranAmount": record.amount,
        "responseCode": record.code,
        "responseMessage": record.message,
        "applied": record.applied,
        "createdAt": record.created_at,
    }
    if record.applied:
        reference = reference_for(record.tran_uuid)
        raw["referenceNumber"] = reference
        return TransferResult(
            Outcome.APPROVED, record.tran_uuid, record.code, record.message, reference, raw
        )
    return TransferResult(Outcome.DECLINED, record.tran_uuid, record.code, record.message, raw=raw)
