"""wrk, the load generator of the throughput phases: one run, and a measured phase (warm-up,
then throughput and the CPU the server and the database spent per request)."""

from __future__ import annotations

import json
import re
import resource
import secrets
import shutil
import subprocess
import time
from typing import Any

from bench.processes import BENCH, cpu_seconds


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
