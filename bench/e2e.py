"""End to end, claim submitted -> webhook received: pre-generating claims, the closed loop
that finds the max sustainable rate, and the open loop at half of it (latency p50/p99)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from bench.client import JSON_HEADERS, Conn, auth_headers, closed_loop
from bench.plan import Plan


async def generate_claims(
    port: int, name: str, api_key: str, count: int, prefix: str, concurrency: int = 32
) -> tuple[list[str], dict[str, Any]]:
    uuids: list[str | None] = [None] * count
    headers = auth_headers(api_key)
    path = f"/cashout/generate/{name}"

    def make(i: int) -> tuple[str, str, bytes, bytes]:
        return "POST", path, headers, json.dumps({"amount": 1, "id": f"{prefix}-{i}"}).encode()

    def answered(i: int, status: int, data: bytes, sent: float) -> None:
        if status in (200, 201):
            uuids[i] = json.loads(data)["uuid"]

    stats = await closed_loop(port, concurrency, count, None, make, answered)
    return [u for u in uuids if u], stats


def submit_body(uuid: str, pan: str) -> bytes:
    return json.dumps({"id": uuid, "pan": pan}).encode()


async def receiver_stats(conn: Conn) -> dict[str, Any]:
    _, data = await conn.request("GET", "/stats")
    return json.loads(data)


async def wait_webhooks(rport: int, expected: int, timeout: float) -> dict[str, Any]:
    """Poll the receiver until ``expected`` webhooks arrived (or ``timeout``)."""
    conn = Conn(rport)
    deadline = time.monotonic() + timeout
    try:
        while True:
            stats = await receiver_stats(conn)
            if stats["count"] >= expected or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(0.2)
    finally:
        conn.close()


async def receiver_call(rport: int, method: str, path: str) -> Any:
    conn = Conn(rport)
    try:
        _, data = await conn.request(method, path)
        return json.loads(data) if data and data[:1] in b"{[" else data
    finally:
        conn.close()


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def e2e_max(
    port: int, rport: int, name: str, uuids: list[str], pan: str, plan: Plan
) -> dict[str, Any]:
    """Closed loop: submit claims as fast as ``e2e_concurrency`` clients can for
    ``e2e_max_seconds``, then wait for every webhook. Max sustainable claims/s = webhooks
    received / (last webhook - first submission): the rate the whole pipeline (submit,
    transfer, settle, outbox, delivery) can keep up, backlog drained included."""
    await receiver_call(rport, "POST", "/reset")
    accepted: list[int] = []
    path = f"/cashout/claim/{name}"

    def make(i: int) -> tuple[str, str, bytes, bytes]:
        return "POST", path, JSON_HEADERS, submit_body(uuids[i], pan)

    def answered(i: int, status: int, data: bytes, sent: float) -> None:
        if status == 202:
            accepted.append(i)

    t0 = time.time()
    stats = await closed_loop(
        port, plan.e2e_concurrency, len(uuids), plan.e2e_max_seconds, make, answered
    )
    submitted_at = time.time()
    received = await wait_webhooks(rport, len(accepted), timeout=300)
    span = (received["last"] or submitted_at) - t0
    result = {
        "submitted": stats["requests"],
        "accepted": len(accepted),
        "submit_statuses": stats["statuses"],
        "submit_errors": stats["errors"],
        "submit_seconds": stats["seconds"],
        "submit_rps": stats["rps"],
        "webhooks": received["count"],
        "webhook_calls": received["calls"],
        "first_submit_to_last_webhook_s": span,
        "max_claims_per_s": received["count"] / span if span > 0 else 0.0,
        "ran_out_of_claims": stats["requests"] >= len(uuids),
    }
    print(
        f"    submitted {len(accepted)} in {stats['seconds']:.1f}s "
        f"({stats['rps']:.0f}/s accepted), {received['count']} webhooks by "
        f"{span:.1f}s: max {result['max_claims_per_s']:.1f} claims/s",
        flush=True,
    )
    return result


async def e2e_open_loop(
    port: int, rport: int, name: str, uuids: list[str], pan: str, rate: float
) -> dict[str, Any]:
    """Open loop: claim i is submitted at t0 + i/rate whatever happened before (a pool of
    keep-alive connections, new ones opened when all are busy); latency = webhook arrival at
    the receiver - the submission's scheduled time (so client-side queueing counts too)."""
    await receiver_call(rport, "POST", "/reset")
    idle: list[Conn] = []
    opened = 0
    intended: dict[str, float] = {}
    sent_at: dict[str, float] = {}
    answered_at: dict[str, float] = {}
    statuses: dict[int, int] = {}
    errors = 0
    path = f"/cashout/claim/{name}"

    async def submit(uuid: str, when: float) -> None:
        nonlocal opened, errors
        conn = idle.pop() if idle else None
        if conn is None:
            opened += 1
            conn = Conn(port)
        intended[uuid] = when
        sent_at[uuid] = time.time()
        try:
            status, _ = await conn.request("POST", path, submit_body(uuid, pan), JSON_HEADERS)
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            return
        answered_at[uuid] = time.time()
        statuses[status] = statuses.get(status, 0) + 1
        idle.append(conn)

    tasks = []
    start_mono = time.monotonic() + 0.2
    start_wall = time.time() + 0.2
    for i, uuid in enumerate(uuids):
        delay = start_mono + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(submit(uuid, start_wall + i / rate)))
    await asyncio.gather(*tasks)
    submit_end = time.time()
    accepted = statuses.get(202, 0)
    await wait_webhooks(rport, accepted, timeout=120)
    arrivals: dict[str, float] = await receiver_call(rport, "GET", "/dump")
    for conn in idle:
        conn.close()
    lat = [arrivals[u] - intended[u] for u in uuids if u in arrivals and u in intended]
    lat_sent = [arrivals[u] - sent_at[u] for u in uuids if u in arrivals and u in sent_at]
    lag = [sent_at[u] - intended[u] for u in uuids if u in sent_at]
    submit_lat = [answered_at[u] - sent_at[u] for u in uuids if u in answered_at]
    first = min(intended.values())
    last_arrival = max(arrivals.values()) if arrivals else submit_end
    result = {
        "offered_rate": rate,
        "claims": len(uuids),
        "accepted": accepted,
        "submit_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "submit_errors": errors,
        "connections_opened": opened,
        "webhooks": len(lat),
        "missing_webhooks": accepted - len(lat),
        "claims_per_s": len(lat) / (last_arrival - first) if last_arrival > first else 0.0,
        "p50_ms": 1000 * percentile(lat, 50),
        "p90_ms": 1000 * percentile(lat, 90),
        "p99_ms": 1000 * percentile(lat, 99),
        "max_ms": 1000 * max(lat, default=float("nan")),
        "mean_ms": 1000 * statistics.fmean(lat) if lat else float("nan"),
        "p50_from_send_ms": 1000 * percentile(lat_sent, 50),
        "p99_from_send_ms": 1000 * percentile(lat_sent, 99),
        "submit_response_p50_ms": 1000 * percentile(submit_lat, 50),
        "submit_response_p99_ms": 1000 * percentile(submit_lat, 99),
        "client_send_lag_p99_ms": 1000 * percentile(lag, 99),
        "client_send_lag_max_ms": 1000 * max(lag, default=float("nan")),
    }
    result["p99_over_p50"] = result["p99_ms"] / result["p50_ms"] if result["p50_ms"] else None
    # Each claim as [scheduled second into the phase, latency ms], to see when a tail happens.
    result["timeline"] = [
        [round(intended[u] - first, 3), round(1000 * (arrivals[u] - intended[u]), 1)]
        for u in uuids
        if u in arrivals and u in intended
    ]
    print(
        f"    {result['claims_per_s']:.1f} claims/s offered {rate:.1f}/s: p50 "
        f"{result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, max "
        f"{result['max_ms']:.0f} ms; {result['missing_webhooks']} missing; client lag p99 "
        f"{result['client_send_lag_p99_ms']:.1f} ms",
        flush=True,
    )
    return result
