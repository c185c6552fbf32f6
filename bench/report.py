"""The report: the table of figures against their targets, the machine it ran on, and the
JSON files in ``bench/results/``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.plan import Plan
from bench.processes import BENCH, PYTHON
from bench.wrk import wrk_version

RESULTS = BENCH / "results"


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


def write_report(plan: Plan, rows: list[Row], results: dict[str, Any]) -> None:
    """``latest.json`` is the last run, whatever its mode; ``latest-<mode>.json`` keeps the
    last run of each mode, so a quick run never hides the last full figures."""
    RESULTS.mkdir(exist_ok=True)
    report = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": plan.mode,
        "plan": asdict(plan),
        "machine": machine_info(),
        "table": [asdict(r) for r in rows],
        "results": results,
    }
    text = json.dumps(report, indent=2, default=str) + "\n"
    (RESULTS / "latest.json").write_text(text)
    (RESULTS / f"latest-{plan.mode}.json").write_text(text)
