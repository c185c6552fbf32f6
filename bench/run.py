#!/usr/bin/env python
"""Benchmark of the cashout server against a bare Tornado + motor baseline, in one run.

    .venv/bin/python bench/run.py            # full run, about 5-8 minutes
    .venv/bin/python bench/run.py --quick    # short phases, under 2 minutes

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install wrk``); it stops with a clear message if
wrk is missing. It installs nothing. Every process it starts (database, baseline, servers,
webhook receiver, wrk) is stopped at the end, also on Ctrl-C or an error.

What it measures (bench/README.md explains each figure):

1. throughput of ``POST /cashout/generate/{name}`` vs the baseline's one-``insert_one``
   handler, wrk at a fixed concurrency, after a warm-up;
2. server CPU time per request (utime+stime from /proc/<pid>/stat) in the same phases;
3. end to end, claim submitted -> webhook received (mock gateway): the max sustainable
   claims/s, then open-loop at half of it: claims/s, p50, p99;
4. peak server memory (VmHWM) after N claims generated, then submitted and paid;
5. that the load generators are not the bottleneck.

Results: a table on stdout and ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
SECANTUSD = str(Path(PYTHON).parent / "secantusd-py")
CLK_TCK = os.sysconf("SC_CLK_TCK")

sys.path.insert(0, str(ROOT))
from tests.cards import luhn_card  # noqa: E402  (Luhn-valid cards, magic-free endings)

# -- configuration --------------------------------------------------------------------------


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


# -- processes ------------------------------------------------------------------------------


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Processes:
    """Every child the benchmark starts, so that all of them are stopped whatever happens."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs)[::-1]:  # servers before the database
            try:
                self.stop(name, timeout=10.0)
            except Exception as exc:  # keep going: every process must be stopped
                print(f"bench: could not stop {name}: {exc}", file=sys.stderr)

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={
            **({"Content-Type": "application/json"} if data is not None else {}),
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_up(
    url: str,
    proc: subprocess.Popen[bytes],
    what: str,
    procs: Processes,
    name: str,
    timeout: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{procs.log_tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f}s")


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:.0f}s")


# -- wrk ------------------------------------------------------------------------------------


def wrk_version() -> str | None:
    path = shutil.which("wrk")
    if path is None:
        return None
    out = subprocess.run([path, "-v"], capture_output=True, text=True)
    return (
        (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else path
    )


def run_wrk(
    url: str,
    script: str,
    seconds: int,
    connections: int,
    headers: dict[str, str] | None = None,
    args: list[str] | None = None,
) -> dict[str, Any]:
    """One wrk run; returns its WRKJSON summary plus wrk's own CPU seconds."""
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / script),
    ]
    for key, value in (headers or {}).items():
        argv += ["-H", f"{key}: {value}"]
    argv.append(url)
    if args:
        argv += ["--", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
    if out.returncode != 0 or match is None:
        raise RuntimeError(
            f"wrk failed ({out.returncode}): {out.stdout[-1500:]}{out.stderr[-1500:]}"
        )
    result = json.loads(match.group(1))
    duration = result["duration_us"] / 1e6
    result["rps"] = result["requests"] / duration
    result["wrk_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["wrk_cpu_pct_of_core"] = 100.0 * result["wrk_cpu_s"] / wall
    result["errors"] = sum(result[k] for k in result if k.startswith("errors_"))
    return result


def load_phase(
    label: str,
    url: str,
    script: str,
    warmup: int,
    seconds: int,
    connections: int,
    server_pid: int,
    db_pid: int,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Warm up, then measure: throughput and the server's (and database's) CPU per request."""
    tag = f"{label.split()[0]}-{secrets.token_hex(3)}"
    print(f"  {label}: warm-up {warmup}s, then {seconds}s at {connections} connections", flush=True)
    run_wrk(url, script, warmup, connections, headers, [tag + "-warm"])
    cpu0, db0 = cpu_seconds(server_pid), cpu_seconds(db_pid)
    result = run_wrk(url, script, seconds, connections, headers, [tag])
    cpu1, db1 = cpu_seconds(server_pid), cpu_seconds(db_pid)
    n = max(result["requests"], 1)
    result["server_cpu_s"] = cpu1 - cpu0
    result["server_cpu_ms_per_req"] = 1000.0 * (cpu1 - cpu0) / n
    result["server_cpu_pct_of_core"] = 100.0 * (cpu1 - cpu0) / (result["duration_us"] / 1e6)
    result["db_cpu_s"] = db1 - db0
    result["db_cpu_ms_per_req"] = 1000.0 * (db1 - db0) / n
    result["db_cpu_pct_of_core"] = 100.0 * (db1 - db0) / (result["duration_us"] / 1e6)
    print(
        f"    {result['rps']:.0f} req/s, server {result['server_cpu_ms_per_req']:.2f} ms "
        f"CPU/req ({result['server_cpu_pct_of_core']:.0f}% of a core), database "
        f"{result['db_cpu_ms_per_req']:.2f} ms/req ({result['db_cpu_pct_of_core']:.0f}%), "
        f"wrk {result['wrk_cpu_pct_of_core']:.0f}%, errors {result['errors']}",
        flush=True,
    )
    return result


# -- a small asyncio HTTP/1.1 client (keep-alive), for the end-to-end phases -----------------


class Conn:
    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: bytes = b""
    ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (
            (
                f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Length: {len(body)}\r\n"
            ).encode()
            + headers
            + b"\r\n"
        )
        try:
            self.writer.write(head + body)
            raw = await self.reader.readuntil(b"\r\n\r\n")
            status = int(raw[9:12])
            length, close = 0, False
            for line in raw.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                key = key.strip().lower()
                if key == b"content-length":
                    length = int(value)
                elif key == b"connection" and value.strip().lower() == b"close":
                    close = True
            data = await self.reader.readexactly(length) if length else b""
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


JSON_HEADERS = b"Content-Type: application/json\r\n"


def auth_headers(api_key: str) -> bytes:
    return f"Authorization: Bearer {api_key}\r\n".encode() + JSON_HEADERS


async def closed_loop(
    port: int,
    concurrency: int,
    count: int | None,
    seconds: float | None,
    make: Callable[[int], tuple[str, str, bytes, bytes]],
    on_answer: Callable[[int, int, bytes, float], None] | None = None,
) -> dict[str, Any]:
    """``concurrency`` workers send requests ``make(i)`` back to back, until ``count`` are
    sent or ``seconds`` have passed; returns the rate and the status counts."""
    counter = iter(range(count if count is not None else 10**12))
    deadline = time.monotonic() + seconds if seconds else None
    statuses: dict[int, int] = {}
    errors = 0

    async def worker() -> None:
        nonlocal errors
        conn = Conn(port)
        try:
            for i in counter:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                method, path, headers, body = make(i)
                sent = time.time()
                try:
                    status, data = await conn.request(method, path, body, headers)
                except (OSError, asyncio.IncompleteReadError):
                    errors += 1
                    continue
                statuses[status] = statuses.get(status, 0) + 1
                if on_answer is not None:
                    on_answer(i, status, data, sent)
        finally:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.monotonic() - started
    done = sum(statuses.values())
    return {
        "requests": done,
        "seconds": wall,
        "rps": done / wall if wall else 0.0,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
    }


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


def mean_batch(port: int, batch: str) -> float | None:
    """Mean requests per database round trip, from the server's own histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    figures = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f'cashout_db_batch_size_{part}{{batch="{batch}"}}'):
                figures[part] = float(line.rsplit(" ", 1)[1])
    if not figures.get("count"):
        return None
    return figures["sum"] / figures["count"]


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


# -- the run --------------------------------------------------------------------------------


class Bench:
    def __init__(self, plan: Plan, work: Path):
        self.plan = plan
        self.work = work
        self.procs = Processes(work / "logs")
        self.results: dict[str, Any] = {}
        self.db_uri = ""
        self.db_pid = 0

    # processes -----------------------------------------------------------------------------

    def start_database(self, port: int | None = None) -> None:
        """Start SecantusDB (again on the same port and data folder when restarting)."""
        port = port or free_port()
        self.db_port = port
        proc = self.procs.start(
            "secantusdb",
            [
                SECANTUSD,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--storage-path",
                str(self.work / "db"),
                "--log-level",
                "WARNING",
            ],
        )
        wait_port(port, proc, "SecantusDB")
        self.db_uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        self.db_pid = proc.pid

    def restart_database(self) -> None:
        """Same data, same port, a new process: its in-memory retryable-write records (see
        bench/README.md) start empty. Clients reconnect on their own."""
        self.procs.stop("secantusdb")
        self.start_database(self.db_port)

    def start_receiver(self) -> int:
        port = free_port()
        proc = self.procs.start(
            "receiver", [PYTHON, str(BENCH / "webhook_receiver.py"), "--port", str(port)]
        )
        wait_up(f"http://127.0.0.1:{port}/stats", proc, "webhook receiver", self.procs, "receiver")
        return port

    def start_baseline(self) -> tuple[int, int]:
        port = free_port()
        proc = self.procs.start(
            "baseline",
            [
                PYTHON,
                str(BENCH / "baseline_server.py"),
                "--port",
                str(port),
                "--mongodb-uri",
                self.db_uri,
                "--db-name",
                "bench_baseline",
            ],
        )
        wait_up(f"http://127.0.0.1:{port}/hello", proc, "baseline server", self.procs, "baseline")
        return port, proc.pid

    def start_cashout(self, name: str, extra: dict[str, str] | None = None) -> tuple[int, int]:
        port = free_port()
        data_dir = self.work / name
        data_dir.mkdir()
        env = {
            "CASHOUT_PORT": str(port),
            "CASHOUT_HOST": "127.0.0.1",
            "CASHOUT_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "CASHOUT_DATA_DIR": str(data_dir),
            "CASHOUT_MONGODB_URI": self.db_uri,
            "CASHOUT_DB_NAME": f"bench_{name.replace('-', '_')}",
            "CASHOUT_GATEWAY": "mock",
            "CASHOUT_LOG_LEVEL": "warning",
            "CASHOUT_MAX_CLAIM_AMOUNT": str(10**9),
            "CASHOUT_DAILY_LIMIT": str(10**15),
            **(extra or {}),
        }
        proc = self.procs.start(name, [PYTHON, "-m", "server"], env)
        wait_up(
            f"http://127.0.0.1:{port}/healthz", proc, f"cashout server {name}", self.procs, name
        )
        return port, proc.pid

    def register(self, port: int, endpoint: str) -> tuple[str, str]:
        name = f"bench-{secrets.token_hex(3)}"
        status, body = http(
            "POST",
            f"http://127.0.0.1:{port}/cashout/register",
            {
                "name": name,
                "pan": luhn_card(f"{1000 + secrets.randbelow(9000)}"),
                "expDate": "3012",
                "ipin": "1234",
                "consent": True,
                "endpoint": endpoint,
            },
        )
        if status != 200:
            raise RuntimeError(f"register answered {status}: {body}")
        return name, body["api_key"]

    # phases --------------------------------------------------------------------------------

    def throughput(self, rport: int) -> None:
        plan = self.plan
        b_port, b_pid = self.start_baseline()
        c_port, c_pid = self.start_cashout("cashout-throughput")
        name, api_key = self.register(c_port, f"http://127.0.0.1:{rport}/hook")
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        probe = http(
            "POST",
            f"http://127.0.0.1:{c_port}/cashout/generate/{name}",
            {"amount": 1, "id": "probe"},
            headers={"Authorization": headers["Authorization"]},
        )
        if probe[0] != 201:
            raise RuntimeError(f"generate probe answered {probe}")

        print("load generator ceiling (wrk -> baseline GET /hello):", flush=True)
        ceiling = run_wrk(
            f"http://127.0.0.1:{b_port}/hello", "wrk_get.lua", plan.ceiling, plan.connections
        )
        print(
            f"    {ceiling['rps']:.0f} req/s, wrk {ceiling['wrk_cpu_pct_of_core']:.0f}% of a core",
            flush=True,
        )
        print("asyncio client ceiling (GET /hello, 32 connections):", flush=True)
        aio = asyncio.run(
            closed_loop(
                b_port, 32, None, float(plan.ceiling), lambda i: ("GET", "/hello", b"", b"")
            )
        )
        print(f"    {aio['rps']:.0f} req/s", flush=True)
        self.results["load_generator"] = {"wrk_hello": ceiling, "asyncio_hello": aio}

        b_url = f"http://127.0.0.1:{b_port}/insert"
        c_url = f"http://127.0.0.1:{c_port}/cashout/generate/{name}"

        print(
            "throughput and CPU per request, fresh database (below SecantusDB's 10,000 "
            "retryable-write records):",
            flush=True,
        )
        self.restart_database()
        fbase = load_phase(
            "baseline POST /insert",
            b_url,
            "wrk_post.lua",
            plan.fresh_warmup,
            plan.fresh_phase,
            plan.connections,
            b_pid,
            self.db_pid,
            headers,
        )
        self.restart_database()
        fgen = load_phase(
            "cashout POST /cashout/generate/{name}",
            c_url,
            "wrk_post.lua",
            plan.fresh_warmup,
            plan.fresh_phase,
            plan.connections,
            c_pid,
            self.db_pid,
            headers,
        )
        self.results["throughput_fresh_db"] = {"baseline": fbase, "generate": fgen}

        print(
            f"database steady state: {plan.prefill} retryable writes (baseline inserts) "
            "fill SecantusDB's retryable-write records to their 10,000 cap",
            flush=True,
        )
        self.restart_database()
        fill = asyncio.run(
            closed_loop(
                b_port,
                32,
                plan.prefill,
                None,
                lambda i: ("POST", "/insert", JSON_HEADERS, b'{"amount":1,"id":"fill"}'),
            )
        )
        print(f"    {fill['requests']} inserts in {fill['seconds']:.1f}s", flush=True)
        self.results["prefill"] = fill
        print("throughput and CPU per request, steady state:", flush=True)
        base = load_phase(
            "baseline POST /insert",
            b_url,
            "wrk_post.lua",
            plan.warmup,
            plan.phase,
            plan.connections,
            b_pid,
            self.db_pid,
            headers,
        )
        base["vm_kib"] = memory_kib(b_pid)
        gen = load_phase(
            "cashout POST /cashout/generate/{name}",
            c_url,
            "wrk_post.lua",
            plan.warmup,
            plan.phase,
            plan.connections,
            c_pid,
            self.db_pid,
            headers,
        )
        gen["vm_kib"] = memory_kib(c_pid)
        gen["batch_mean"] = mean_batch(c_port, "generate")
        self.procs.stop("cashout-throughput")
        # The same service with group commit off: what batching buys, measured in this run.
        u_port, u_pid = self.start_cashout("cashout-unbatched", {"CASHOUT_DB_BATCH": "1"})
        u_name, u_key = self.register(u_port, f"http://127.0.0.1:{rport}/hook")
        unbatched = load_phase(
            "cashout POST /cashout/generate/{name}, CASHOUT_DB_BATCH=1 (no group commit)",
            f"http://127.0.0.1:{u_port}/cashout/generate/{u_name}",
            "wrk_post.lua",
            plan.warmup,
            plan.phase,
            plan.connections,
            u_pid,
            self.db_pid,
            {"Authorization": f"Bearer {u_key}", "Content-Type": "application/json"},
        )
        self.procs.stop("cashout-unbatched")
        self.results["throughput"] = {
            "baseline": base,
            "generate": gen,
            "generate_unbatched": unbatched,
        }
        # The baseline stays up: its VmHWM is the memory reference, read at the end.
        self.baseline_pid = b_pid

    def end_to_end(self, rport: int) -> None:
        plan = self.plan
        port, pid = self.start_cashout("cashout-e2e", {"CASHOUT_WEBHOOK_SWEEP_INTERVAL": "0.5"})
        name, api_key = self.register(port, f"http://127.0.0.1:{rport}/hook")
        pan = luhn_card("4242")
        print("end to end (submit -> webhook), mock gateway:", flush=True)
        print(f"  pre-generating {plan.e2e_max_claims} claims", flush=True)
        uuids, gen = asyncio.run(
            generate_claims(port, name, api_key, plan.e2e_max_claims, "e2e-max")
        )
        print(
            f"  max sustainable rate: closed loop, {plan.e2e_concurrency} clients, "
            f"{plan.e2e_max_seconds:.0f}s, then drain",
            flush=True,
        )
        cpu0 = cpu_seconds(pid)
        maximum = asyncio.run(e2e_max(port, rport, name, uuids, pan, plan))
        maximum["server_cpu_ms_per_claim"] = (
            1000 * (cpu_seconds(pid) - cpu0) / max(maximum["webhooks"], 1)
        )
        rate = max(maximum["max_claims_per_s"] / 2, 1.0)
        count = max(int(rate * plan.e2e_open_seconds), 10)
        print(f"  pre-generating {count} claims for the open-loop phase", flush=True)
        uuids, _ = asyncio.run(generate_claims(port, name, api_key, count, "e2e-open"))
        print(
            f"  open loop at {rate:.1f} claims/s (50% of max) for {plan.e2e_open_seconds:.0f}s",
            flush=True,
        )
        cpu0 = cpu_seconds(pid)
        t0 = time.monotonic()
        open_loop = asyncio.run(e2e_open_loop(port, rport, name, uuids, pan, rate))
        wall = time.monotonic() - t0
        open_loop["server_cpu_pct_of_core"] = 100 * (cpu_seconds(pid) - cpu0) / wall
        self.results["end_to_end"] = {
            "pregenerate": gen,
            "max": maximum,
            "open_loop": open_loop,
            "vm_kib": memory_kib(pid),
        }
        self.procs.stop("cashout-e2e")

    def memory(self, rport: int) -> None:
        plan = self.plan
        port, pid = self.start_cashout("cashout-memory", {"CASHOUT_WEBHOOK_SWEEP_INTERVAL": "0.5"})
        name, api_key = self.register(port, f"http://127.0.0.1:{rport}/hook")
        fresh = memory_kib(pid)
        print(f"memory: generating {plan.mem_claims} claims on a fresh server", flush=True)
        uuids, gen = asyncio.run(generate_claims(port, name, api_key, plan.mem_claims, "mem"))
        after_generate = memory_kib(pid)
        print(
            f"    {len(uuids)} claims at {gen['rps']:.0f}/s; VmHWM "
            f"{after_generate['VmHWM'] / 1024:.1f} MiB",
            flush=True,
        )
        result: dict[str, Any] = {
            "claims": len(uuids),
            "generate": gen,
            "fresh_kib": fresh,
            "after_generate_kib": after_generate,
        }
        if plan.mem_pay_seconds > 0:
            print(
                f"memory: submitting claims for {plan.mem_pay_seconds:.0f}s (closed loop, 32 "
                "clients), then waiting for their webhooks",
                flush=True,
            )
            asyncio.run(receiver_call(rport, "POST", "/reset"))
            pan = luhn_card("4343")
            path = f"/cashout/claim/{name}"
            submit = asyncio.run(
                closed_loop(
                    port,
                    32,
                    len(uuids),
                    plan.mem_pay_seconds,
                    lambda i: ("POST", path, JSON_HEADERS, submit_body(uuids[i], pan)),
                )
            )
            received = asyncio.run(
                wait_webhooks(rport, submit["statuses"].get("202", 0), timeout=600)
            )
            result["submit"] = submit
            result["paid"] = received["count"]
            result["after_paid_kib"] = memory_kib(pid)
            print(
                f"    {received['count']} claims paid and notified; VmHWM "
                f"{result['after_paid_kib']['VmHWM'] / 1024:.1f} MiB",
                flush=True,
            )
        result["peak_kib"] = max(v["VmHWM"] for k, v in result.items() if k.endswith("_kib"))
        self.results["memory"] = result
        self.procs.stop("cashout-memory")

    def run(self) -> dict[str, Any]:
        started = time.time()
        self.results["loadavg_at_start"] = os.getloadavg()
        self.start_database()
        rport = self.start_receiver()
        self.throughput(rport)
        self.end_to_end(rport)
        self.memory(rport)
        self.results["memory"]["baseline_kib"] = memory_kib(self.baseline_pid)
        self.results["memory"]["database_kib"] = memory_kib(self.db_pid)
        self.results["loadavg_at_end"] = os.getloadavg()
        self.results["seconds"] = time.time() - started
        return self.results


# -- report ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    py = subprocess.run(
        [
            PYTHON,
            "-c",
            "import sys, tornado, motor, pymongo; print(sys.version"
            ".split()[0], tornado.version, motor.version, pymongo.version)",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": py[0] if py else platform.python_version(),
        "tornado": py[1] if len(py) > 1 else None,
        "motor": py[2] if len(py) > 2 else None,
        "pymongo": py[3] if len(py) > 3 else None,
        "wrk": wrk_version(),
        "memory_total_kib": _meminfo_total(),
    }


def _meminfo_total() -> int | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return None


@dataclass
class Row:
    metric: str
    cashout: str
    baseline: str
    ratio: str
    target: str
    result: str


def build_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    tp = r["throughput"]
    gen, base = tp["generate"], tp["baseline"]
    ratio = gen["rps"] / base["rps"]
    rows.append(
        Row(
            "throughput, req/s (32 conns)",
            f"{gen['rps']:.0f}",
            f"{base['rps']:.0f}",
            f"{ratio:.2f}",
            ">= 0.80",
            "PASS" if ratio >= 0.8 else "FAIL",
        )
    )
    cpu = gen["server_cpu_ms_per_req"] / base["server_cpu_ms_per_req"]
    rows.append(
        Row(
            "server CPU, ms/request",
            f"{gen['server_cpu_ms_per_req']:.2f}",
            f"{base['server_cpu_ms_per_req']:.2f}",
            f"{cpu:.2f}",
            "<= 1.30",
            "PASS" if cpu <= 1.3 else "FAIL",
        )
    )
    rows.append(
        Row(
            "  server CPU, % of a core",
            f"{gen['server_cpu_pct_of_core']:.0f}",
            f"{base['server_cpu_pct_of_core']:.0f}",
            "",
            "",
            "info",
        )
    )
    rows.append(
        Row(
            "  database CPU, ms/request",
            f"{gen['db_cpu_ms_per_req']:.2f}",
            f"{base['db_cpu_ms_per_req']:.2f}",
            f"{gen['db_cpu_ms_per_req'] / base['db_cpu_ms_per_req']:.2f}",
            "",
            "info",
        )
    )
    rows.append(
        Row(
            "  latency p50 / p99, ms (wrk)",
            f"{gen['lat_p50_us'] / 1000:.1f} / {gen['lat_p99_us'] / 1000:.1f}",
            f"{base['lat_p50_us'] / 1000:.1f} / {base['lat_p99_us'] / 1000:.1f}",
            "",
            "",
            "info",
        )
    )
    rows.append(
        Row(
            "  errors (non-2xx, socket)",
            str(gen["errors"]),
            str(base["errors"]),
            "",
            "0",
            "PASS" if gen["errors"] == 0 and base["errors"] == 0 else "FAIL",
        )
    )
    if gen.get("batch_mean"):
        rows.append(
            Row(
                "  generates per database batch (mean)",
                f"{gen['batch_mean']:.1f}",
                "1",
                "",
                "",
                "info",
            )
        )
    unb = tp.get("generate_unbatched")
    if unb:
        rows.append(
            Row(
                "  no group commit: throughput, req/s",
                f"{unb['rps']:.0f}",
                f"{base['rps']:.0f}",
                f"{unb['rps'] / base['rps']:.2f}",
                "",
                "info",
            )
        )
        rows.append(
            Row(
                "  no group commit: server CPU, ms/request",
                f"{unb['server_cpu_ms_per_req']:.2f}",
                f"{base['server_cpu_ms_per_req']:.2f}",
                f"{unb['server_cpu_ms_per_req'] / base['server_cpu_ms_per_req']:.2f}",
                "",
                "info",
            )
        )
    fr = r["throughput_fresh_db"]
    fgen, fbase = fr["generate"], fr["baseline"]
    ratio = fgen["rps"] / fbase["rps"]
    rows.append(
        Row(
            "fresh DB: throughput, req/s",
            f"{fgen['rps']:.0f}",
            f"{fbase['rps']:.0f}",
            f"{ratio:.2f}",
            ">= 0.80",
            "PASS" if ratio >= 0.8 else "FAIL",
        )
    )
    cpu = fgen["server_cpu_ms_per_req"] / fbase["server_cpu_ms_per_req"]
    rows.append(
        Row(
            "fresh DB: server CPU, ms/request",
            f"{fgen['server_cpu_ms_per_req']:.2f}",
            f"{fbase['server_cpu_ms_per_req']:.2f}",
            f"{cpu:.2f}",
            "<= 1.30",
            "PASS" if cpu <= 1.3 else "FAIL",
        )
    )
    rows.append(
        Row(
            "  fresh DB: database CPU, ms/request",
            f"{fgen['db_cpu_ms_per_req']:.2f}",
            f"{fbase['db_cpu_ms_per_req']:.2f}",
            f"{fgen['db_cpu_ms_per_req'] / fbase['db_cpu_ms_per_req']:.2f}",
            "",
            "info",
        )
    )
    e2e = r["end_to_end"]
    mx, ol = e2e["max"], e2e["open_loop"]
    rows.append(
        Row("e2e max sustainable, claims/s", f"{mx['max_claims_per_s']:.1f}", "-", "", "", "info")
    )
    rows.append(
        Row("e2e at 50% of max, claims/s", f"{ol['claims_per_s']:.1f}", "-", "", "", "info")
    )
    rows.append(Row("e2e latency p50, ms", f"{ol['p50_ms']:.0f}", "-", "", "", "info"))
    rows.append(Row("e2e latency p99, ms", f"{ol['p99_ms']:.0f}", "-", "", "", "info"))
    p = ol["p99_over_p50"] or float("inf")
    ok = p < 10 and ol["missing_webhooks"] == 0
    rows.append(Row("e2e p99 / p50", f"{p:.1f}", "-", f"{p:.1f}", "< 10", "PASS" if ok else "FAIL"))
    mem = r["memory"]
    peak = mem["peak_kib"] / 1024
    label = (
        f"VmHWM, {mem['claims']} claims generated"
        + (f", {mem['paid']} paid" if "paid" in mem else "")
        + ", MiB"
    )
    base_mem = mem["baseline_kib"]["VmHWM"] / 1024
    rows.append(
        Row(
            label,
            f"{peak:.1f}",
            f"{base_mem:.1f}",
            f"{peak / base_mem:.2f}",
            "< 150 MiB",
            "PASS" if peak < 150 else "FAIL",
        )
    )
    rows.append(
        Row(
            "  VmHWM after generating only, MiB",
            f"{mem['after_generate_kib']['VmHWM'] / 1024:.1f}",
            "",
            "",
            "",
            "info",
        )
    )
    lg = r["load_generator"]
    phases = [gen, base, fgen, fbase]
    top = max(p["rps"] for p in phases)
    wrk_cpu = max(p["wrk_cpu_pct_of_core"] for p in phases)
    ok = lg["wrk_hello"]["rps"] >= 2 * top and wrk_cpu < 50
    rows.append(
        Row(
            "wrk: GET /hello req/s (ceiling)",
            f"{lg['wrk_hello']['rps']:.0f}",
            f"{top:.0f}",
            f"{lg['wrk_hello']['rps'] / top:.1f}x",
            ">= 2x",
            "PASS" if ok else "FAIL",
        )
    )
    rows.append(
        Row(
            "  wrk CPU during load, % core (max)",
            f"{max(gen['wrk_cpu_pct_of_core'], fgen['wrk_cpu_pct_of_core']):.0f}",
            f"{max(base['wrk_cpu_pct_of_core'], fbase['wrk_cpu_pct_of_core']):.0f}",
            "",
            "< 50",
            "PASS" if wrk_cpu < 50 else "FAIL",
        )
    )
    aio = lg["asyncio_hello"]["rps"]
    needed = max(mx["submit_rps"], ol["offered_rate"])
    rows.append(
        Row(
            "asyncio client: GET /hello req/s",
            f"{aio:.0f}",
            f"{needed:.0f}",
            f"{aio / needed:.1f}x",
            ">= 2x",
            "PASS" if aio >= 2 * needed else "FAIL",
        )
    )
    return rows


def format_table(rows: list[Row]) -> str:
    head = Row("metric", "cashout", "baseline", "ratio", "target", "result")
    cols = [max(len(getattr(x, f)) for x in [head, *rows]) for f in asdict(head)]
    lines = []
    for i, row in enumerate([head, *rows]):
        cells = [getattr(row, f).ljust(w) for f, w in zip(asdict(head), cols, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in cols) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (< 2 minutes)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (database, logs) for inspection",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print(
            "bench: wrk is not installed; install it first (Debian/Ubuntu: "
            "apt-get install wrk) and run again.",
            file=sys.stderr,
        )
        return 2
    if not Path(SECANTUSD).exists():
        print(
            f"bench: {SECANTUSD} not found; run ./test or ./serve once to create .venv",
            file=sys.stderr,
        )
        return 2
    plan = QUICK if args.quick else FULL

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="cashout-bench-"))
    (work / "logs").mkdir()
    bench = Bench(plan, work)
    print(f"cashout benchmark ({plan.mode}), work folder {work}", flush=True)
    code = 0
    try:
        results = bench.run()
        rows = build_rows(results)
        table = format_table(rows)
        print()
        print(table)
        RESULTS.mkdir(exist_ok=True)
        report = {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": plan.mode,
            "plan": asdict(plan),
            "machine": machine_info(),
            "table": [asdict(r) for r in rows],
            "results": results,
        }
        # latest.json is the last run, whatever its mode; latest-<mode>.json keeps the last
        # run of each mode, so a quick run never hides the last full figures.
        text = json.dumps(report, indent=2, default=str) + "\n"
        (RESULTS / "latest.json").write_text(text)
        (RESULTS / f"latest-{plan.mode}.json").write_text(text)
        print(f"\nresults written to bench/results/latest.json (and latest-{plan.mode}.json)")
        code = 0 if all(r.result != "FAIL" for r in rows) else 1
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything", file=sys.stderr)
        code = 130
    except Exception as exc:
        print(f"\nbench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        bench.procs.stop_all()
        logs = RESULTS / "logs"
        try:
            RESULTS.mkdir(exist_ok=True)
            shutil.rmtree(logs, ignore_errors=True)
            shutil.copytree(work / "logs", logs)
        except OSError:
            pass
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
