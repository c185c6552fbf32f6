"""Webhooks against endpoints that misbehave: huge answers, endpoints that hang, endpoints
that fail for good (disabled, then re-enabled with their held events delivered once), and
the fair share of the delivery pool (docs/DESIGN.md sections 7 and 12)."""

from __future__ import annotations

import asyncio as aio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.delivery_pool import DeliveryPool
from server.settings import Settings
from tests.conftest import random_pan, unique_name
from tests.harness import Provider, ServerProcess, remember, wait_until
from tests.receiver import Receiver
from tests.test_webhooks import FAST_WEBHOOKS, events, hooked, wait_calls

MB = 1024 * 1024


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def profile(provider: Provider) -> dict[str, Any]:
    answer = provider.client.get(f"/cashout/profile/{provider.name}", headers=provider.headers)
    assert answer.status_code == 200
    return answer.json()


def set_endpoint(provider: Provider, url: str) -> dict[str, Any]:
    answer = provider.client.post(
        f"/cashout/profile/{provider.name}", json={"endpoint": url}, headers=provider.headers
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


# -- a huge answer ---------------------------------------------------------------------------


@pytest.mark.parametrize("length_known", [True, False], ids=["content-length", "until-close"])
def test_a_90_mb_answer_is_not_read(
    server_factory: Any, receiver: Receiver, length_known: bool
) -> None:
    """The endpoint answers 200 with 90 MB: the delivery counts (the status line is the
    answer), and the server's peak memory stays where it was. (A server of its own for
    each case: the peak of one would hide the other's.)"""
    hook_server = server_factory(FAST_WEBHOOKS)
    assert hook_server.proc is not None
    pid = hook_server.proc.pid
    warm, warm_path = hooked(hook_server, receiver)  # one ordinary delivery first
    warm.claim(warm.generate(5), random_pan())
    wait_calls(receiver, warm_path, 1)
    wait_until(lambda: events(warm)[0]["status"] == "delivered", 10, what="the warm-up")

    provider, path = hooked(hook_server, receiver, body_size=90 * MB, length_known=length_known)
    before = peak_rss_kib(pid)
    provider.claim(provider.generate(5), random_pan())
    wait_calls(receiver, path, 1)
    event = wait_until(
        lambda: (e := events(provider)) and e[0]["status"] == "delivered" and e[0],
        20,
        what="the event to be delivered",
    )
    grown = peak_rss_kib(pid) - before
    assert event["attempts"][0]["http_status"] == 200
    assert event["attempts"][0]["error"] is None
    assert grown < 8 * 1024, f"peak memory grew by {grown} KiB"
    assert len(receiver.calls_to(path)) == 1


# -- hanging endpoints and the fair share ----------------------------------------------------


def test_hanging_endpoints_do_not_hold_back_an_honest_providers_webhook(
    server_factory: Any, receiver: Receiver
) -> None:
    """Eight providers whose endpoints never answer, four events each (32, the size of the
    default pool), with a 30 s timeout: they never get the whole pool, and an honest
    provider's webhook is sent while every one of theirs is still hanging, before the
    first of them could time out."""
    settings = Settings()
    assert (settings.webhook_concurrency, settings.webhook_per_provider) == (32, 4)
    timeout = 30
    server = server_factory({**FAST_WEBHOOKS, "CASHOUT_WEBHOOK_TIMEOUT": str(timeout)})
    hanging = []
    for i in range(8):
        path = f"/hang/{i}/{unique_name()}"
        provider = Provider.register(server, endpoint=receiver.url(path))
        receiver.behave(path, hang=True)
        hanging.append((provider, path))
    paths = {path for _, path in hanging}
    try:
        for provider, _ in hanging:
            for _ in range(4):
                provider.claim(provider.generate(5), random_pan())

        def held() -> int:
            return sum(receiver.hanging.get(path, 0) for path in paths)

        wait_until(
            lambda: all(receiver.hanging.get(p) for p in paths) and held() >= 24,
            30,
            what="every hanging endpoint to hold a slot, and the pool to fill to its reserve",
        )
        honest, honest_path = hooked(server, receiver)
        uuid = honest.generate(5)
        honest.claim(uuid, random_pan())
        (call,) = wait_calls(receiver, honest_path, 1, timeout=timeout + 10)
        first_hang = min(at for path, _, at in receiver.arrived if path in paths)
        assert call.payload["uuid"] == uuid
        assert call.at < first_hang + timeout, "it did not wait for a hanging attempt to end"
        assert not any(receiver.calls_to(path) for path in paths), "they are all still hanging"
        assert held() < 32, "the hanging endpoints never had the whole pool"
    finally:
        receiver.release.set()
    wait_until(
        lambda: all(all(e["status"] == "delivered" for e in events(p)) for p, _ in hanging),
        60,
        what="the hanging providers' events after release",
    )
    receiver.release.clear()


def run(coro: Any) -> Any:
    return aio.run(coro)


def test_pool_keeps_a_reserve_for_providers_with_nothing_in_flight() -> None:
    async def scenario() -> tuple[int, bool]:
        pool = DeliveryPool(total=8, per_provider=4)  # reserve 2
        holding: list[Any] = []
        for provider in ("a", "b"):
            for _ in range(4):
                cm = pool.slot(provider)
                task = aio.ensure_future(cm.__aenter__())
                await aio.sleep(0)
                holding.append((cm, task))
        running = pool.in_use
        newcomer = pool.slot("c")
        await aio.wait_for(newcomer.__aenter__(), 1)  # at once: the reserve is kept for it
        started = pool.running["c"] == 1
        await newcomer.__aexit__(None, None, None)
        for _, task in holding:
            task.cancel()
        return running, started

    running, started = run(scenario())
    assert running == 6, "a and b stop at 6 of 8 slots: 2 stay for newcomers"
    assert started


def test_pool_gives_failing_endpoints_one_slot_each_and_half_the_pool() -> None:
    async def scenario() -> tuple[int, int, int]:
        pool = DeliveryPool(total=8, per_provider=4)  # failing share 4
        for name in "abcdef":
            pool.mark(name, failing=True)
        tasks = []
        for name in "abcdef":
            for _ in range(2):
                cm = pool.slot(name)
                tasks.append(aio.ensure_future(cm.__aenter__()))
        await aio.sleep(0)
        failing_running = pool.in_use
        most_for_one = max(pool.running.values())
        healthy = pool.slot("ok")
        await aio.wait_for(healthy.__aenter__(), 1)
        healthy_running = pool.running["ok"]
        for task in tasks:
            task.cancel()
        return failing_running, most_for_one, healthy_running

    failing_running, most_for_one, healthy_running = run(scenario())
    assert failing_running == 4 and most_for_one == 1 and healthy_running == 1


def test_pool_hands_a_freed_slot_to_the_least_served_provider() -> None:
    async def scenario() -> list[str]:
        pool = DeliveryPool(total=2, per_provider=2)  # reserve 0
        order: list[str] = []
        first = pool.slot("big")
        await first.__aenter__()
        second = pool.slot("big")
        await second.__aenter__()

        async def wait(name: str) -> None:
            async with pool.slot(name):
                order.append(name)
                await aio.sleep(0)

        waiters = [aio.ensure_future(wait(n)) for n in ("big", "big", "small")]
        await aio.sleep(0)
        await first.__aexit__(None, None, None)
        await aio.sleep(0)
        await second.__aexit__(None, None, None)
        await aio.gather(*waiters)
        return order

    order = run(scenario())
    assert order[0] == "small", "the provider with nothing running goes first"
    assert sorted(order) == ["big", "big", "small"]


def test_a_cancelled_waiter_gives_its_place_back() -> None:
    async def scenario() -> int:
        pool = DeliveryPool(total=1, per_provider=1)
        holder = pool.slot("a")
        await holder.__aenter__()
        waiter = aio.ensure_future(pool.slot("b").__aenter__())
        await aio.sleep(0)
        waiter.cancel()
        await aio.sleep(0)
        await holder.__aexit__(None, None, None)
        return pool.in_use + pool.waiting

    assert run(scenario()) == 0


# -- endpoint health -------------------------------------------------------------------------

HEALTH = {
    **FAST_WEBHOOKS,
    "CASHOUT_WEBHOOK_RETRY_SCHEDULE": ",".join(["0.3"] * 20),
    "CASHOUT_WEBHOOK_DISABLE_AFTER": "1",
}


@pytest.fixture(scope="module")
def health_server(server_factory: Any) -> ServerProcess:
    return server_factory(HEALTH)


def hold_and_release(
    server: ServerProcess, receiver: Receiver, provider: Provider, old_path: str
) -> None:
    """With the endpoint disabled: new events are recorded but not sent, even after the
    sweep has come by; setting the endpoint again sends each of them once."""
    before = len(receiver.calls_to(old_path))
    held = [provider.generate(7) for _ in range(3)]
    for uuid in held:
        provider.claim(uuid, random_pan())
    wait_until(
        lambda: {e["claim"] for e in events(provider)} >= set(held),
        20,
        what="the held events to be written",
    )
    # A witness: another provider's retry, which only the sweep sends, sent after the held
    # events were due. The sweep has come by, and sent none of them.
    witness, witness_path = hooked(server, receiver, fail_first=1)
    witness.claim(witness.generate(5), random_pan())
    wait_calls(receiver, witness_path, 2)
    assert len(receiver.calls_to(old_path)) == before
    for event in events(provider):
        if event["claim"] in held:
            assert event["status"] == "pending" and event["attempts"] == []

    new_path = f"/revived/{unique_name()}"
    receiver.behave(new_path, secrets=[provider.webhook_secret])
    updated = set_endpoint(provider, receiver.url(new_path))
    assert updated["endpoint_status"] == "enabled"
    assert updated["endpoint_disabled_at"] is None and updated["endpoint_failing_since"] is None
    wanted = {"evt_" + u.replace("-", "") for u in held}
    wait_until(
        lambda: wanted <= {c.webhook_id for c in receiver.calls_to(new_path)},
        20,
        what="the held events after the endpoint was set again",
    )
    wait_until(
        lambda: all(e["status"] != "pending" for e in events(provider)),
        20,
        what="every event to be settled",
    )
    counts = Counter(c.webhook_id for c in receiver.calls_to(new_path))
    assert all(counts[w] == 1 for w in wanted), "each held event is delivered once"
    assert all(c.verified_by == (0,) for c in receiver.calls_to(new_path))
    for event in events(provider):
        if event["claim"] in held:
            assert [a["http_status"] for a in event["attempts"]] == [200]


def test_an_endpoint_failing_for_the_whole_window_is_disabled_then_revived(
    health_server: ServerProcess, receiver: Receiver
) -> None:
    provider, path = hooked(health_server, receiver, status=500)
    provider.claim(provider.generate(5), random_pan())
    shown = wait_until(
        lambda: (p := profile(provider))["endpoint_status"] == "disabled" and p,
        20,
        what="the endpoint to be disabled",
    )
    assert shown["endpoint_disabled_reason"] == "every delivery failed for 1 second"
    disabled_at = datetime.fromisoformat(shown["endpoint_disabled_at"])
    failing_since = datetime.fromisoformat(shown["endpoint_failing_since"])
    assert disabled_at - failing_since >= timedelta(seconds=1)
    calls = receiver.calls_to(path)
    assert len(calls) >= 2 and all(c.answered == 500 for c in calls)
    hold_and_release(health_server, receiver, provider, path)
    text = httpx.get(health_server.url + "/metrics", timeout=10).text
    assert 'cashout_webhook_endpoints_disabled_total{reason="failing"}' in text


def test_an_endpoint_answering_410_is_disabled_at_once(
    health_server: ServerProcess, receiver: Receiver
) -> None:
    provider, path = hooked(health_server, receiver, status=410)
    provider.claim(provider.generate(5), random_pan())
    shown = wait_until(
        lambda: (p := profile(provider))["endpoint_status"] == "disabled" and p,
        20,
        what="the endpoint to be disabled",
    )
    assert shown["endpoint_disabled_reason"] == "the endpoint answered 410 Gone"
    (gone,) = events(provider)
    assert gone["status"] == "failed" and len(receiver.calls_to(path)) == 1
    hold_and_release(health_server, receiver, provider, path)


def test_a_success_clears_the_failing_mark(
    health_server: ServerProcess, receiver: Receiver
) -> None:
    provider, path = hooked(health_server, receiver, fail_first=1)
    provider.claim(provider.generate(5), random_pan())
    wait_calls(receiver, path, 2)
    wait_until(lambda: events(provider)[0]["status"] == "delivered", 10, what="delivered")
    shown = profile(provider)
    assert shown["endpoint_status"] == "enabled" and shown["endpoint_failing_since"] is None


def test_at_the_default_a_few_failures_do_not_disable_but_five_days_do(
    server_factory: Any, receiver: Receiver, mongo: Any
) -> None:
    """CASHOUT_WEBHOOK_DISABLE_AFTER at its default (5 days): failures for a moment leave
    the endpoint enabled; a failure once the first failure is 5 days old disables it."""
    assert Settings().webhook_disable_after == 5 * 24 * 3600
    server = server_factory({k: v for k, v in HEALTH.items() if "DISABLE" not in k})
    provider, path = hooked(server, receiver, status=500)
    provider.claim(provider.generate(5), random_pan())
    wait_calls(receiver, path, 3)
    shown = profile(provider)
    assert shown["endpoint_status"] == "enabled" and shown["endpoint_failing_since"]
    db = mongo[server.env["CASHOUT_DB_NAME"]]
    almost = datetime.now(UTC) - timedelta(days=5) + timedelta(minutes=10)
    db.providers.update_one({"_id": provider.name}, {"$set": {"endpoint_failing_since": almost}})
    calls = len(receiver.calls_to(path))
    wait_calls(receiver, path, calls + 2)
    assert profile(provider)["endpoint_status"] == "enabled", "4 days 23 h 50 min: not yet"
    five_days = datetime.now(UTC) - timedelta(days=5, seconds=1)
    db.providers.update_one({"_id": provider.name}, {"$set": {"endpoint_failing_since": five_days}})
    shown = wait_until(
        lambda: (p := profile(provider))["endpoint_status"] == "disabled" and p,
        20,
        what="the endpoint to be disabled",
    )
    assert shown["endpoint_disabled_reason"] == "every delivery failed for 5 days"


def test_two_processes_release_held_events_once_and_pay_once(
    server_factory: Any, receiver: Receiver, mongo: Any, tmp_path: Path
) -> None:
    """Two processes share the outbox; the endpoint is disabled while 12 claims are paid,
    then set again through one process while both sweep: every held event reaches the new
    endpoint exactly once, and each claim moved its money once."""
    env = {
        **HEALTH,
        "CASHOUT_DATA_DIR": str(tmp_path),
        "CASHOUT_DB_NAME": unique_name("held").replace("-", "_"),
    }
    first, second = server_factory(env), server_factory(env)
    provider, path = hooked(first, receiver, status=410)
    provider.claim(provider.generate(5), random_pan())
    wait_until(
        lambda: profile(provider)["endpoint_status"] == "disabled", 20, what="disabled (410)"
    )
    cards = [random_pan() for _ in range(12)]
    remember(*cards)
    uuids = [provider.generate(11 + i) for i in range(len(cards))]
    with httpx.Client(base_url=second.url, timeout=30) as other:
        for i, (uuid, card) in enumerate(zip(uuids, cards, strict=True)):
            client = provider.client if i % 2 else other
            answer = client.post(f"/cashout/claim/{provider.name}", json={"id": uuid, "pan": card})
            assert answer.status_code == 202
    for uuid in uuids:
        provider.wait(uuid, "succeeded")
    db = mongo[env["CASHOUT_DB_NAME"]]
    wait_until(
        lambda: db.events.count_documents({"claim": {"$in": uuids}}) == len(uuids),
        20,
        what="every held event to be written",
    )
    new_path = f"/two-revived/{unique_name()}"
    receiver.behave(new_path, secrets=[provider.webhook_secret])
    set_endpoint(provider, receiver.url(new_path))
    wanted = {"evt_" + u.replace("-", "") for u in uuids}
    wait_until(
        lambda: wanted <= {c.webhook_id for c in receiver.calls_to(new_path)},
        30,
        what="every held event at the new endpoint",
    )
    wait_until(
        lambda: (
            db.events.count_documents({"claim": {"$in": uuids}, "status": "delivered"})
            == len(uuids)
        ),
        20,
        what="every held event marked delivered",
    )
    counts = Counter(c.webhook_id for c in receiver.calls_to(new_path))
    assert all(counts[w] == 1 for w in wanted), counts
    assert len(receiver.calls_to(path)) == 1, "nothing more went to the gone endpoint"
    ledger = provider.ledger
    for uuid in uuids:
        attempts = provider.status(uuid)["attempts"]
        assert len(attempts) == 1
        assert ledger.applied_count(attempts[0]["tran_uuid"]) == 1
    for i, card in enumerate(cards):
        assert ledger.applied_total_to(card) == 11 + i
