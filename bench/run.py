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

Results: a table on stdout and ``bench/results/latest.json``. This file is the entry point
(command line, clean-up); the work is in the modules next to it: ``plan`` (phase lengths),
``processes`` (the processes started, /proc readings), ``wrk`` (the throughput load
generator), ``client`` (the asyncio HTTP client), ``e2e`` (the end-to-end phases), ``phases``
(the run, in order) and ``report`` (table and JSON).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the repository is not on sys.path

from bench.phases import Bench  # noqa: E402
from bench.plan import FULL, QUICK  # noqa: E402
from bench.processes import SECANTUSD  # noqa: E402
from bench.report import RESULTS, build_rows, format_table, write_report  # noqa: E402


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
        write_report(plan, rows, results)
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
        bench.stack.procs.stop_all()
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
