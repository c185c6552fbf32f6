"""The benchmark's phases, in the order they run: throughput (fresh database, then steady
state, then without group commit), end to end, memory."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from bench.client import JSON_HEADERS, closed_loop, http, mean_batch
from bench.e2e import (
    e2e_max,
    e2e_open_loop,
    generate_claims,
    receiver_call,
    submit_body,
    wait_webhooks,
)
from bench.plan import Plan
from bench.processes import Stack, cpu_seconds, memory_kib
from bench.wrk import load_phase, run_wrk
from tests.cards import luhn_card


class Bench:
    """One run: the plan, the processes it started, and every figure measured."""

    def __init__(self, plan: Plan, work: Path) -> None:
        self.plan = plan
        self.stack = Stack(work)
        self.results: dict[str, Any] = {}
        self.baseline_pid = 0

    def throughput(self, rport: int) -> None:
        plan = self.plan
        b_port, b_pid = self.stack.start_baseline()
        c_port, c_pid = self.stack.start_cashout("cashout-throughput")
        name, api_key = self.stack.register(c_port, f"http://127.0.0.1:{rport}/hook")
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
        self.stack.restart_database()
        fbase = load_phase(
            "baseline POST /insert",
            b_url,
            "wrk_post.lua",
            plan.fresh_warmup,
            plan.fresh_phase,
            plan.connections,
            b_pid,
            self.stack.db_pid,
            headers,
        )
        self.stack.restart_database()
        fgen = load_phase(
            "cashout POST /cashout/generate/{name}",
            c_url,
            "wrk_post.lua",
            plan.fresh_warmup,
            plan.fresh_phase,
            plan.connections,
            c_pid,
            self.stack.db_pid,
            headers,
        )
        self.results["throughput_fresh_db"] = {"baseline": fbase, "generate": fgen}

        print(
            f"database steady state: {plan.prefill} retryable writes (baseline inserts) "
            "fill SecantusDB's retryable-write records to their 10,000 cap",
            flush=True,
        )
        self.stack.restart_database()
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
            self.stack.db_pid,
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
            self.stack.db_pid,
            headers,
        )
        gen["vm_kib"] = memory_kib(c_pid)
        gen["batch_mean"] = mean_batch(c_port, "generate")
        self.stack.procs.stop("cashout-throughput")
        # The same service with group commit off: what batching buys, measured in this run.
        u_port, u_pid = self.stack.start_cashout("cashout-unbatched", {"CASHOUT_DB_BATCH": "1"})
        u_name, u_key = self.stack.register(u_port, f"http://127.0.0.1:{rport}/hook")
        unbatched = load_phase(
            "cashout POST /cashout/generate/{name}, CASHOUT_DB_BATCH=1 (no group commit)",
            f"http://127.0.0.1:{u_port}/cashout/generate/{u_name}",
            "wrk_post.lua",
            plan.warmup,
            plan.phase,
            plan.connections,
            u_pid,
            self.stack.db_pid,
            {"Authorization": f"Bearer {u_key}", "Content-Type": "application/json"},
        )
        self.stack.procs.stop("cashout-unbatched")
        self.results["throughput"] = {
            "baseline": base,
            "generate": gen,
            "generate_unbatched": unbatched,
        }
        # The baseline stays up: its VmHWM is the memory reference, read at the end.
        self.baseline_pid = b_pid

    def end_to_end(self, rport: int) -> None:
        plan = self.plan
        port, pid = self.stack.start_cashout(
            "cashout-e2e", {"CASHOUT_WEBHOOK_SWEEP_INTERVAL": "0.5"}
        )
        name, api_key = self.stack.register(port, f"http://127.0.0.1:{rport}/hook")
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
        self.stack.procs.stop("cashout-e2e")

    def memory(self, rport: int) -> None:
        plan = self.plan
        port, pid = self.stack.start_cashout(
            "cashout-memory", {"CASHOUT_WEBHOOK_SWEEP_INTERVAL": "0.5"}
        )
        name, api_key = self.stack.register(port, f"http://127.0.0.1:{rport}/hook")
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
        self.stack.procs.stop("cashout-memory")

    def run(self) -> dict[str, Any]:
        started = time.time()
        self.results["loadavg_at_start"] = os.getloadavg()
        self.stack.start_database()
        rport = self.stack.start_receiver()
        self.throughput(rport)
        self.end_to_end(rport)
        self.memory(rport)
        self.results["memory"]["baseline_kib"] = memory_kib(self.baseline_pid)
        self.results["memory"]["database_kib"] = memory_kib(self.stack.db_pid)
        self.results["loadavg_at_end"] = os.getloadavg()
        self.results["seconds"] = time.time() - started
        return self.results
