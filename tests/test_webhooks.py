"""Webhooks end to end: a real receiver verifies every call with the `standardwebhooks`
package; retries, Retry-After, 410, exhaustion, redelivery, test events, secret rotation."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from server.validation import SCHEMA_DIR
from tests.cards import luhn_card
from tests.conftest import random_pan
from tests.harness import (
    FAST_RECONCILE,
    Provider,
    ServerProcess,
    make_overdue,
    remember,
    wait_until,
)
from tests.receiver import Call, Receiver

FAST_WEBHOOKS = {
    **FAST_RECONCILE,
    "CASHOUT_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2,0.2,0.2",
    "CASHOUT_WEBHOOK_SWEEP_INTERVAL": "0.1",
    "CASHOUT_WEBHOOK_TIMEOUT": "2",
}
PAYLOAD = Draft202012Validator(json.loads((SCHEMA_DIR / "webhook.json").read_text()))
_paths = iter(range(1, 10**6))


@pytest.fixture(scope="module")
def hook_server(server_factory: Any) -> ServerProcess:
    return server_factory(FAST_WEBHOOKS)


def hooked(server: ServerProcess, receiver: Receiver, **behaviour: Any) -> tuple[Provider, str]:
    path = f"/hook/{next(_paths)}"
    provider = Provider.register(server, endpoint=receiver.url(path))
    receiver.behave(path, secrets=[provider.webhook_secret], **behaviour)
    return provider, path


def wait_calls(receiver: Receiver, path: str, count: int, timeout: float = 20) -> list[Call]:
    return wait_until(
        lambda: (c := receiver.calls_to(path)) and len(c) >= count and c,
        timeout,
        what=f"{count} webhook calls to {path}",
    )


def events(provider: Provider, **params: str) -> list[dict[str, Any]]:
    answer = provider.client.get(
        f"/cashout/webhooks/{provider.name}", params=params, headers=provider.headers
    )
    assert answer.status_code == 200
    return answer.json()["events"]


@pytest.mark.parametrize(
    ("last4", "status", "code"),
    [("4242", "succeeded", 0), ("0051", "failed", 51), (None, "expired", None)],
)
def test_every_outcome_is_signed_and_matches_the_claim(
    hook_server: ServerProcess,
    receiver: Receiver,
    mongo: Any,
    last4: str | None,
    status: str,
    code: int | None,
) -> None:
    provider, path = hooked(hook_server, receiver)
    uuid = provider.generate(321, ref=f"order-{status}")
    if last4:
        provider.claim(uuid, luhn_card(last4))
    else:
        make_overdue(mongo[hook_server.env["CASHOUT_DB_NAME"]], uuid)
    claim = provider.wait(uuid, status)

    (call,) = wait_calls(receiver, path, 1)
    assert call.verified_by == (0,), "standardwebhooks verifies the signature"
    body = call.payload
    assert not list(PAYLOAD.iter_errors(body))
    assert body == {
        "name": provider.name,
        "id": f"order-{status}",
        "uuid": uuid,
        "status": status,
        "details": {
            "response": body["details"]["response"],
            "code": code,
            "time": claim["completed_at"],
            "amount": 321 if status == "succeeded" else 0,
        },
    }
    assert call.webhook_id == "evt_" + uuid.replace("-", "")
    assert abs(int(call.headers["webhook-timestamp"]) - call.at) < 60
    (logged,) = events(provider)
    assert logged["id"] == call.webhook_id and logged["status"] == "delivered"
    assert logged["attempts"][0]["http_status"] == 200 and logged["payload"] == body


def test_failures_are_retried_with_the_same_webhook_id(
    hook_server: ServerProcess, receiver: Receiver
) -> None:
    provider, path = hooked(hook_server, receiver, fail_first=3)
    uuid = provider.generate(50)
    provider.claim(uuid, random_pan())
    calls = wait_calls(receiver, path, 4)
    assert [c.answered for c in calls] == [500, 500, 500, 200]
    assert len({c.webhook_id for c in calls}) == 1 and all(c.verified_by for c in calls)
    wait_until(lambda: events(provider)[0]["status"] == "delivered", 10, what="delivered")
    (event,) = events(provider)
    assert [a["http_status"] for a in event["attempts"]] == [500, 500, 500, 200]
    assert all(a["latency_ms"] >= 0 and a["at"] for a in event["attempts"])
    assert len(receiver.calls_to(path)) == 4, "nothing is sent after it was accepted"


def test_retry_after_is_honoured(hook_server: ServerProcess, receiver: Receiver) -> None:
    provider, path = hooked(hook_server, receiver, fail_first=1, fail_status=503, retry_after="3")
    provider.claim(provider.generate(5), random_pan())
    wait_calls(receiver, path, 1)
    event = wait_until(
        lambda: (e := events(provider)) and e[0]["attempts"] and e[0],
        10,
        what="the first attempt to be logged",
    )
    first = datetime.fromisoformat(event["attempts"][0]["at"])
    planned = datetime.fromisoformat(event["next_attempt_at"])
    assert planned - first >= timedelta(seconds=3), "the 0.2 s schedule waits for Retry-After"
    calls = wait_calls(receiver, path, 2)
    assert calls[1].answered == 200


def test_410_stops_and_exhaustion_fails(hook_server: ServerProcess, receiver: Receiver) -> None:
    gone, gone_path = hooked(hook_server, receiver, status=410)
    broken, broken_path = hooked(hook_server, receiver, status=500)
    gone.claim(gone.generate(5), random_pan())
    broken.claim(broken.generate(5), random_pan())
    wait_until(lambda: events(broken, status="failed"), 20, what="the retries to run out")
    assert len(receiver.calls_to(broken_path)) == 6, "1 attempt + 5 retries of the schedule"
    wait_until(lambda: events(gone, status="failed"), 10, what="410 to stop the event")
    assert len(receiver.calls_to(gone_path)) == 1


def test_redeliver_and_test_events(hook_server: ServerProcess, receiver: Receiver) -> None:
    provider, path = hooked(hook_server, receiver)
    provider.claim(provider.generate(5), random_pan())
    (first,) = wait_calls(receiver, path, 1)
    again = provider.client.post(
        f"/cashout/webhooks/{provider.name}/{first.webhook_id}/redeliver", headers=provider.headers
    )
    assert again.status_code == 202
    calls = wait_calls(receiver, path, 2)
    assert calls[1].webhook_id == first.webhook_id and calls[1].body == first.body
    test = provider.client.post(f"/cashout/webhooks/{provider.name}/test", headers=provider.headers)
    assert test.status_code == 202
    calls = wait_calls(receiver, path, 3)
    assert calls[2].payload["status"] == "test" and calls[2].verified_by == (0,)
    assert not list(PAYLOAD.iter_errors(calls[2].payload))
    unknown = provider.client.post(
        f"/cashout/webhooks/{provider.name}/evt_nope/redeliver", headers=provider.headers
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    delivered = events(provider, status="delivered")
    assert {e["id"] for e in delivered} == {first.webhook_id, test.json()["id"]}


def test_old_and_new_secrets_both_sign_after_rotation(
    hook_server: ServerProcess, receiver: Receiver
) -> None:
    provider, path = hooked(hook_server, receiver)
    rotated = provider.client.post(
        f"/cashout/keys/{provider.name}/rotate",
        json={"webhook_secret": True},
        headers=provider.headers,
    )
    new_secret = rotated.json()["webhook_secret"]
    remember(new_secret)
    receiver.behave(path, secrets=[provider.webhook_secret, new_secret])
    provider.claim(provider.generate(5), random_pan())
    (call,) = wait_calls(receiver, path, 1)
    assert call.verified_by == (0, 1), "each secret alone verifies the call"
    assert len(call.headers["webhook-signature"].split(" ")) == 2


def test_a_slow_endpoint_does_not_delay_other_providers(
    server_factory: Any, receiver: Receiver
) -> None:
    server = server_factory(
        {
            **FAST_WEBHOOKS,
            "CASHOUT_WEBHOOK_CONCURRENCY": "4",
            "CASHOUT_WEBHOOK_PER_PROVIDER": "2",
            "CASHOUT_WEBHOOK_TIMEOUT": "30",
        }
    )
    slow, slow_path = hooked(server, receiver, hang=True)
    fast, fast_path = hooked(server, receiver)
    for _ in range(8):
        slow.claim(slow.generate(5), random_pan())
    wait_until(
        lambda: len([e for e in events(slow) if e["status"] == "pending"]) == 8,
        10,
        what="the slow provider's events to be written",
    )
    wait_until(
        lambda: receiver.hanging.get(slow_path) == 2,
        10,
        what="the slow endpoint to hold its provider's two delivery slots",
    )
    uuid = fast.generate(5)
    fast.claim(uuid, random_pan())
    (call,) = wait_calls(receiver, fast_path, 1, timeout=10)
    assert call.payload["uuid"] == uuid
    assert receiver.calls_to(slow_path) == [], "the slow endpoint is still holding its calls"
    assert receiver.hanging[slow_path] == 2, "never more than the per-provider bound"
    receiver.release.set()
    wait_until(
        lambda: all(e["status"] == "delivered" for e in events(slow)),
        30,
        what="the slow provider's events after release",
    )
