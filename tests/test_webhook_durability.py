"""The outbox under crashes and several processes: no terminal claim without its one event,
no event delivered twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.cards import luhn_card
from tests.conftest import random_pan, unique_name
from tests.harness import Provider, make_overdue, remember, wait_until
from tests.receiver import Receiver
from tests.test_webhooks import FAST_WEBHOOKS

TERMINAL = ("succeeded", "failed", "expired")


def delivered_ids(receiver: Receiver, path: str) -> Counter[str]:
    return Counter(c.webhook_id for c in receiver.calls_to(path) if c.answered == 200)


def test_kill_9_with_undelivered_events(
    server_factory: Any, receiver: Receiver, mongo: Any, tmp_path: Path
) -> None:
    env = {
        **FAST_WEBHOOKS,
        "CASHOUT_DATA_DIR": str(tmp_path),
        "CASHOUT_DB_NAME": unique_name("hookcrash").replace("-", "_"),
    }
    first = server_factory(env)
    db = mongo[env["CASHOUT_DB_NAME"]]
    path = "/hook/crash"
    provider = Provider.register(first, endpoint=receiver.url(path))
    receiver.behave(path, secrets=[provider.webhook_secret], status=500)
    cards = [random_pan() for _ in range(8)] + [luhn_card("0051"), luhn_card("0053")]
    uuids = [provider.generate(10 + i) for i in range(len(cards) + 1)]
    for uuid, card in zip(uuids, cards, strict=False):
        provider.claim(uuid, card)
    make_overdue(db, uuids[-1])
    wait_until(
        lambda: (
            db.claims.count_documents({"_id": {"$in": uuids}, "status": {"$in": TERMINAL}})
            == len(uuids)
        ),
        20,
        what="every claim to finish",
    )
    wait_until(
        lambda: db.events.count_documents({"provider": provider.name}) == len(uuids),
        20,
        what="every event to be written",
    )
    # The crash window between a claim's final update and its event: recreate it for two.
    for uuid in uuids[:2]:
        db.events.delete_one({"claim": uuid})
        db.claims.update_one({"_id": uuid}, {"$set": {"next_at": datetime.now(UTC)}})
    first.kill()
    assert not any(delivered_ids(receiver, path).values())

    receiver.behave(path, status=200)
    second = server_factory(env)
    wait_until(
        lambda: len(delivered_ids(receiver, path)) == len(uuids),
        30,
        what="every event to be delivered after the restart",
    )
    assert all(n == 1 for n in delivered_ids(receiver, path).values())
    for uuid in uuids:
        assert db.events.count_documents({"claim": uuid}) == 1, "exactly one event per claim"
    assert db.claims.count_documents({"status": {"$in": TERMINAL}, "next_at": {"$ne": None}}) == 0
    ids = {c.webhook_id for c in receiver.calls_to(path)}
    assert ids == {"evt_" + u.replace("-", "") for u in uuids}
    assert all(c.verified_by == (0,) for c in receiver.calls_to(path))
    assert second.client().get("/healthz").status_code == 200


def test_two_processes_deliver_every_event_once(
    server_factory: Any, receiver: Receiver, mongo: Any, tmp_path: Path
) -> None:
    env = {
        **FAST_WEBHOOKS,
        "CASHOUT_DATA_DIR": str(tmp_path),
        "CASHOUT_DB_NAME": unique_name("twoproc").replace("-", "_"),
    }
    servers = [server_factory(env), server_factory(env)]
    path = "/hook/two"
    provider = Provider.register(servers[0], endpoint=receiver.url(path))
    receiver.behave(path, secrets=[provider.webhook_secret])
    count = 200
    cards = [random_pan() for _ in range(count)]
    remember(*cards)

    async def run() -> None:
        clients = [httpx.AsyncClient(base_url=s.url, timeout=60) for s in servers]
        gate = asyncio.Semaphore(40)

        async def one(i: int) -> None:
            async with gate:
                client = clients[i % 2]
                made = await client.post(
                    f"/cashout/generate/{provider.name}",
                    headers=provider.headers,
                    json={"amount": 5, "id": f"two-{i}"},
                )
                uuid = made.json()["uuid"]
                other = clients[(i + 1) % 2]
                answer = await other.post(
                    f"/cashout/claim/{provider.name}", json={"id": uuid, "pan": cards[i]}
                )
                assert answer.status_code == 202

        await asyncio.gather(*(one(i) for i in range(count)))
        for client in clients:
            await client.aclose()

    asyncio.run(run())
    db = mongo[env["CASHOUT_DB_NAME"]]
    wait_until(
        lambda: db.events.count_documents({"status": "delivered"}) == count,
        60,
        what="all 200 events to be delivered",
    )
    seen = delivered_ids(receiver, path)
    assert len(seen) == count
    assert max(Counter(c.webhook_id for c in receiver.calls_to(path)).values()) == 1, (
        "no event was sent twice"
    )
    assert all(c.verified_by == (0,) for c in receiver.calls_to(path))
    for server in servers:  # both processes took part, so the leases were really tested
        assert "webhook evt_" in server.log()
