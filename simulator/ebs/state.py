"""What the simulator's handlers share: the bank, the key, the configured checks, the record
of requests received and the UUIDs already used. One per server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from simulator.bank import Bank
from simulator.ebs import protocol
from simulator.ebs.keys import KeyState

# The files in --data-dir.
LEDGER_FILE = "simulator-switch.sqlite3"
KEY_FILE = "simulator-key.pem"

MAX_RECORDED_REQUESTS = 10_000  # /_sim/requests keeps the most recent ones


@dataclass
class SimState:
    """Everything the handlers share; one per server."""

    bank: Bank
    keys: KeyState
    application_ids: frozenset[str]
    slow_seconds: float
    max_clock_skew: float
    datetime_format: str
    zone: ZoneInfo
    # Every getPublicKey and doCardTransfer answer waits this long (a transfer is applied at
    # once, answered late): a switch under load, for tests of processes that die or freeze
    # while they wait.
    reply_delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    request_count: int = 0
    seen_uuids: set[str] = field(default_factory=set)
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)

    def record_request(self, endpoint: str) -> dict[str, Any]:
        """A new entry in the request record, which keeps the latest ones only."""
        self.request_count += 1
        entry: dict[str, Any] = {"seq": self.request_count, "endpoint": endpoint}
        self.requests.append(entry)
        if len(self.requests) > MAX_RECORDED_REQUESTS:
            del self.requests[: len(self.requests) - MAX_RECORDED_REQUESTS]
        return entry

    def uuid_used(self, request_uuid: str) -> bool:
        return request_uuid in self.seen_uuids or self.bank.status(request_uuid) is not None

    def tran_date_time_ok(self, value: object) -> bool:
        return protocol.tran_date_time_ok(
            value, self.datetime_format, self.zone, self.max_clock_skew
        )
