"""Concurrent generate calls: idempotency and the daily total hold under a race."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import random_pan, unique_name
from tests.harness import ServerProcess, auth, provider_body, register


async def _burst(url: str, path: str, headers: dict[str, str],
                 bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=len(bodies))) as client:
        return list(await asyncio.gather(*[client.post(path, json=b, headers=headers)
                                           for b in bodies]))


def test_fifty_concurrent_generates_with_one_id_make_one_claim(server: ServerProcess,
                                                                 db: Any) -> None:
    name = unique_name()
    headers = auth(register(server.client(), provider_body(name, random_pan()))["api_key"])
    responses = asyncio.run(_burst(server.url, f"/cashout/generate/{name}", headers,
                                   [{"amount": 700, "id": "same-order"}] * 50))

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
    responses = asyncio.run(_burst(server.url, f"/cashout/generate/{name}", headers,
                                   [{"amount": 1000, "id": f"r{i}"} for i in range(20)]))

    created = [r for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code == 400]
    assert len(created) == 5 and len(refused) == 15
    assert {r.json()["code"] for r in refused} == {"amount_over_limit"}
    db = mongo[server.env["CASHOUT_DB_NAME"]]
    assert db.claims.count_documents({"provider": name}) == 5
    assert db.daily_totals.find_one({"provider": name})["total"] == 5000
