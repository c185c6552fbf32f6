"""Concurrent generate calls: idempotency and the daily total hold under a race."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import random_pan, unique_name
from tests.harness import ServerProcess, auth, provider_body, register, wait_until


async def _burst(
    url: str, path: str, headers: dict[str, str], bodies: list[dict[str, Any]]
) -> list[httpx.Response]:
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=httpx.Limits(max_connections=len(bodies))
    ) as client:
        return list(
            await asyncio.gather(*[client.post(path, json=b, headers=headers) for b in bodies])
        )


def test_fifty_concurrent_generates_with_one_id_make_one_claim(
    server: ServerProcess, db: Any
) -> None:
    name = unique_name()
    headers = auth(register(server.client(), provider_body(name, random_pan()))["api_key"])
    responses = asyncio.run(
        _burst(
            server.url,
            f"/cashout/generate/{name}",
            headers,
            [{"amount": 700, "id": "same-order"}] * 50,
        )
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 49 + [201]
    assert len({r.json()["uuid"] for r in responses}) == 1
    assert db.claims.count_documents({"provider": name}) == 1
    totals = list(db.daily_totals.find({"provider": name}))
    assert [t["total"] for t in totals] == [700], "the daily total counted the claim once"


def test_concurrent_generates_never_pass_the_daily_total(server_factory: Any, mongo: Any) -> None:
    server = server_factory({"CASHOUT_MAX_CLAIM_AMOUNT": "1000", "CASHOUT_DAILY_LIMIT": "5000"})
    name = unique_name()
    headers = auth(register(server.client(), provider_body(name, random_pan()))["api_key"])
    responses = asyncio.run(
        _burst(
            server.url,
            f"/cashout/generate/{name}",
            headers,
            [{"amount": 1000, "id": f"r{i}"} for i in range(20)],
        )
    )

    created = [r for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code == 400]
    assert len(created) == 5 and len(refused) == 15
    assert {r.json()["code"] for r in refused} == {"amount_over_limit"}
    db = mongo[server.env["CASHOUT_DB_NAME"]]
    assert db.claims.count_documents({"provider": name}) == 5
    assert db.daily_totals.find_one({"provider": name})["total"] == 5000


async def _mixed_burst(
    urls: list[str], requests: list[tuple[str, dict[str, str], dict[str, Any]]]
) -> list[httpx.Response]:
    clients = [
        httpx.AsyncClient(base_url=u, timeout=60, limits=httpx.Limits(max_connections=100))
        for u in urls
    ]
    try:
        return list(
            await asyncio.gather(
                *[
                    clients[i % len(clients)].post(path, json=body, headers=headers)
                    for i, (path, headers, body) in enumerate(requests)
                ]
            )
        )
    finally:
        for c in clients:
            await c.aclose()


def test_batched_generates_keep_every_daily_total_exact(server_factory: Any, mongo: Any) -> None:
    """Generates are written in batches (one reservation and one insert per batch). Mix
    repeats, conflicting amounts, two providers and two server processes near the daily
    limit, then check the ledger: each id made at most one claim, answered 201 exactly once,
    and each day's total is exactly the sum of the claims made."""
    env = {"CASHOUT_MAX_CLAIM_AMOUNT": "1000", "CASHOUT_DAILY_LIMIT": "20000"}
    db_name = unique_name("batch").replace("-", "_")
    servers = [server_factory(env, db_name=db_name), server_factory(env, db_name=db_name)]
    rng = random.Random(5)
    providers = {}
    for _ in range(2):
        name = unique_name()
        providers[name] = auth(
            register(servers[0].client(), provider_body(name, random_pan()))["api_key"]
        )
    amounts = {
        (name, f"order-{k}"): rng.randrange(100, 1001, 50) for name in providers for k in range(40)
    }
    requests = []
    for _ in range(240):
        name, ref = rng.choice(list(amounts))
        amount = amounts[(name, ref)] if rng.random() < 0.9 else amounts[(name, ref)] + 1
        requests.append(
            (f"/cashout/generate/{name}", providers[name], {"amount": amount, "id": ref})
        )
    responses = asyncio.run(_mixed_burst([s.url for s in servers], requests))

    db = mongo[db_name]
    by_key: dict[tuple[str, str], list[tuple[int, httpx.Response]]] = {}
    for (path, _, body), response in zip(requests, responses, strict=True):
        by_key.setdefault((path.rsplit("/", 1)[1], body["id"]), []).append(
            (body["amount"], response)
        )
    codes = {r.json().get("code") for r in responses if r.status_code >= 400}
    assert {r.status_code for r in responses} <= {200, 201, 400, 409}
    assert codes <= {"amount_over_limit", "id_conflict"}
    assert "amount_over_limit" in codes, "the burst must reach the daily limit"
    for (name, ref), answers in by_key.items():
        claims = list(db.claims.find({"provider": name, "ref": ref}))
        assert len(claims) <= 1
        made = [r for _, r in answers if r.status_code == 201]
        if not claims:
            assert not made and {r.status_code for _, r in answers} == {400}
            continue
        claim = claims[0]
        assert len(made) == 1, f"{ref}: one 201 for the one claim"
        for amount, r in answers:
            if r.status_code in (200, 201):
                assert (r.json()["uuid"], r.json()["amount"]) == (claim["_id"], amount)
                assert amount == claim["amount"]
            elif r.status_code == 409:
                assert amount != claim["amount"]
    for name in providers:
        made_total = sum(c["amount"] for c in db.claims.find({"provider": name}))
        (day,) = db.daily_totals.find({"provider": name})
        assert day["total"] == made_total <= 20000


def test_kill_during_a_generate_burst_loses_nothing_and_never_under_counts(
    server_factory: Any, mongo: Any, tmp_path: Path
) -> None:
    """kill -9 while batches of generates are being written, then the provider retries
    every request: each id ends with exactly one claim, and the day's total is at least the
    claims made and over-counts only by requests that were in flight at the kill."""
    env = {
        "CASHOUT_DATA_DIR": str(tmp_path),
        "CASHOUT_DB_NAME": unique_name("genkill").replace("-", "_"),
    }
    server = server_factory(env)
    name = unique_name()
    headers = auth(register(server.client(), provider_body(name, random_pan()))["api_key"])
    bodies = [{"amount": 100 + i % 50, "id": f"k{i}"} for i in range(600)]
    path = f"/cashout/generate/{name}"
    db = mongo[env["CASHOUT_DB_NAME"]]
    answered: dict[str, int] = {}

    async def burst() -> None:
        async with httpx.AsyncClient(
            base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=64)
        ) as client:

            async def one(body: dict[str, Any]) -> None:
                try:
                    answered[body["id"]] = (
                        await client.post(path, json=body, headers=headers)
                    ).status_code
                except httpx.HTTPError:
                    pass  # cut off by the kill

            await asyncio.gather(*(one(b) for b in bodies))

    sender = threading.Thread(target=asyncio.run, args=(burst(),))
    sender.start()
    wait_until(
        lambda: db.claims.count_documents({"provider": name}) >= 100,
        60,
        interval=0.01,
        what="a few batches to be written",
    )
    server.kill()
    sender.join(60)
    at_kill = db.claims.count_documents({"provider": name})
    assert at_kill < len(bodies), "the kill must land in the middle of the burst"
    assert set(answered.values()) <= {201}
    unanswered = [b for b in bodies if b["id"] not in answered]
    assert unanswered, "some requests must have been in flight"

    restarted = server_factory(env)
    retried = asyncio.run(_mixed_burst([restarted.url], [(path, headers, b) for b in bodies]))
    claims = {c["ref"]: c for c in db.claims.find({"provider": name})}
    assert len(claims) == len(bodies)
    for body, response in zip(bodies, retried, strict=True):
        assert response.status_code in (200, 201), response.text
        assert response.json()["uuid"] == claims[body["id"]]["_id"]
        if body["id"] in answered:
            assert response.status_code == 200, "an answered request replays, never remakes"
    made = sum(c["amount"] for c in claims.values())
    total = db.daily_totals.find_one({"provider": name})["total"]
    assert made <= total <= made + sum(b["amount"] for b in unanswered)
