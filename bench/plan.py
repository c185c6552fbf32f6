"""How long and how hard each phase runs: the full plan and the quick one (``--quick``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    mode: str
    connections: int = 32  # wrk connections for the throughput phases
    warmup: int = 5  # seconds of load before each measured phase (not measured)
    phase: int = 20  # seconds of each measured throughput phase
    ceiling: int = 5  # seconds of the load-generator ceiling check (GET /hello)
    fresh_warmup: int = 1  # the short phases on a freshly restarted database
    fresh_phase: int = 5
    prefill: int = 10_500  # retryable writes that bring SecantusDB to its steady state
    e2e_max_seconds: float = 10.0  # closed-loop submissions when finding the max rate
    e2e_max_claims: int = 1000  # pre-generated claims for that phase (upper bound)
    e2e_open_seconds: float = 20.0  # open-loop phase at half the max rate
    e2e_concurrency: int = 32
    mem_claims: int = 10_000
    mem_pay_seconds: float = 60.0  # then submit (and pay) claims for this long; 0 = skip


FULL = Plan("full")
QUICK = Plan(
    "quick",
    warmup=2,
    phase=5,
    ceiling=2,
    e2e_max_seconds=4.0,
    e2e_max_claims=300,
    e2e_open_seconds=6.0,
    mem_claims=2000,
    mem_pay_seconds=0.0,
)
