"""Security notices, safe rotations and the audit log (docs/DESIGN.md section 12).

A stolen API key must not be a silent takeover: every credential, endpoint, card and status
change sends a signed ``provider.updated`` event to the endpoint in force before it (and to
the new one); ``admin revoke-key`` locks the thief out; concurrent rotations never answer a
secret that does not sign; and every change is in the audit log, with nothing secret."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import random_pan
from tests.harness import PYTHON, ROOT, Provider, ServerProcess, auth, remember, wait_until
from tests.receiver import Call, Receiver
from tests.test_webhooks import FAST_WEBHOOKS

_paths = iter(range(1, 10**6))


def admin(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "server", "admin", *args],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def hook_server(server_factory: Any) -> ServerProcess:
    return server_factory(FAST_WEBHOOKS)


def hooked(server: ServerProcess, receiver: Receiver) -> tuple[Provider, str]:
    path = f"/sec/{next(_paths)}"
    provider = Provider.register(server, endpoint=receiver.url(path))
    receiver.behave(path, secrets=[provider.webhook_secret])
    return provider, path


def notices(receiver: Receiver, path: str, count: int) -> list[Call]:
    return wait_until(
        lambda: (
            (c := [x for x in receiver.calls_to(path) if "type" in x.payload])
            and len(c) >= count
            and c
        ),
        20,
        what=f"{count} security notices at {path}",
    )


def changes(call: Call) -> list[dict[str, Any]]:
    assert call.payload["type"] == "provider.updated"
    return list(call.payload["data"]["changes"])


def test_a_thief_with_the_key_is_seen_and_locked_out(
    hook_server: ServerProcess, receiver: Receiver
) -> None:
    owner, home = hooked(hook_server, receiver)
    client, name = owner.client, owner.name
    first_key_id = client.get(f"/cashout/profile/{name}", headers=owner.headers).json()["key_id"]

    # The thief rotates the key: the owner's endpoint hears of it, signed with its secret.
    stolen = owner.headers
    rotated = client.post(f"/cashout/keys/{name}/rotate", headers=stolen, json={"api_key": True})
    assert rotated.status_code == 200
    thief = auth(rotated.json()["api_key"])
    remember(rotated.json()["api_key"])
    (notice,) = notices(receiver, home, 1)
    assert notice.verified_by == (0,), "signed with the owner's secret"
    (change,) = changes(notice)
    assert change["field"] == "api_key" and change["previous_key_id"] == first_key_id
    assert notice.payload["data"]["actor"] == first_key_id
    assert notice.payload["data"]["address"] == "127.0.0.1"
    assert client.get(f"/cashout/profile/{name}", headers=stolen).status_code == 401

    # ... then the webhook secret, then moves the endpoint to its own receiver.
    secret = client.post(
        f"/cashout/keys/{name}/rotate", headers=thief, json={"webhook_secret": True}
    ).json()["webhook_secret"]
    remember(secret)
    elsewhere = f"/thief/{next(_paths)}"
    receiver.behave(elsewhere, secrets=[secret])
    moved = client.post(
        f"/cashout/profile/{name}", headers=thief, json={"endpoint": receiver.url(elsewhere)}
    )
    assert moved.status_code == 200
    calls = notices(receiver, home, 3)
    assert all(c.verified_by == (0,) for c in calls), "the owner's secret still signs (24 h)"
    assert [changes(c)[0]["field"] for c in calls] == ["api_key", "webhook_secret", "endpoint"]
    assert changes(calls[2])[0] == {
        "field": "endpoint",
        "old": receiver.url(home),
        "new": receiver.url(elsewhere),
    }
    (at_thief,) = notices(receiver, elsewhere, 1)
    assert at_thief.body == calls[2].body and at_thief.webhook_id != calls[2].webhook_id

    # The operator revokes the key: the thief is out, the new key (given to the owner) works.
    revoked = admin(hook_server, "revoke-key", name)
    assert revoked.returncode == 0, revoked.stderr[-500:]
    new_key = revoked.stdout.strip()
    remember(new_key)
    assert new_key.startswith("ck_test_") and len(revoked.stdout.splitlines()) == 1
    assert client.get(f"/cashout/profile/{name}", headers=thief).status_code == 401
    assert client.get(f"/cashout/profile/{name}", headers=auth(new_key)).status_code == 200
    assert new_key not in revoked.stderr

    entries = client.get(f"/cashout/audit/{name}", headers=auth(new_key)).json()["entries"]
    assert [(e["action"], e["actor"]) for e in entries][:4] == [
        ("credentials.rotated", "admin"),
        ("profile.updated", entries[2]["actor"]),
        ("credentials.rotated", entries[2]["actor"]),
        ("credentials.rotated", first_key_id),
    ]
    assert entries[2]["actor"] != first_key_id and entries[2]["address"] == "127.0.0.1"
    assert entries[-1]["action"] == "provider.registered" and entries[-1]["actor"] == first_key_id


def test_concurrent_secret_rotations_answer_only_secrets_that_sign(
    hook_server: ServerProcess, receiver: Receiver
) -> None:
    provider, path = hooked(hook_server, receiver)

    async def rotate_all(body: dict[str, bool], n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=hook_server.url, timeout=60) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            f"/cashout/keys/{provider.name}/rotate",
                            headers=provider.headers,
                            json=body,
                        )
                        for _ in range(n)
                    )
                )
            )

    answers = asyncio.run(rotate_all({"webhook_secret": True}, 10))
    won = [a.json()["webhook_secret"] for a in answers if a.status_code == 200]
    remember(*won)
    assert won and {a.status_code for a in answers} <= {200, 409}
    assert {a.json()["code"] for a in answers if a.status_code == 409} <= {"conflict"}
    # A test event now: each answered secret verifies its signature.
    receiver.behave(path, secrets=won)
    sent = provider.client.post(f"/cashout/webhooks/{provider.name}/test", headers=provider.headers)
    assert sent.status_code == 202
    test_call = wait_until(
        lambda: [c for c in receiver.calls_to(path) if c.payload.get("status") == "test"],
        20,
        what="the test event",
    )[0]
    assert test_call.verified_by == tuple(range(len(won)))

    # Keys: of concurrent rotations with one key, one wins and its key is the one that works.
    answers = asyncio.run(rotate_all({"api_key": True}, 10))
    keys = [a.json()["api_key"] for a in answers if a.status_code == 200]
    remember(*keys)
    assert len(keys) == 1 and {a.status_code for a in answers} <= {200, 401, 409}
    profile = provider.client.get(f"/cashout/profile/{provider.name}", headers=auth(keys[0]))
    assert profile.status_code == 200


def test_a_notice_left_owed_by_a_crash_is_still_sent(
    hook_server: ServerProcess, receiver: Receiver, mongo: Any
) -> None:
    """The change and its notice are one write (the notice waits in the provider's
    document); a crash before the notice reached the outbox leaves it there, and the
    sweep of any process sends it, once."""
    provider, path = hooked(hook_server, receiver)
    db = mongo[hook_server.env["CASHOUT_DB_NAME"]]
    body = json.dumps(
        {
            "type": "provider.updated",
            "timestamp": "2026-01-01T00:00:00.000Z",
            "data": {
                "name": provider.name,
                "changes": [{"field": "endpoint", "old": "a", "new": "b"}],
                "actor": "key_000000000000",
                "address": "127.0.0.1",
            },
        }
    )
    event_id = "evt_sec_" + "ab" * 16
    owed = {
        "id": event_id,
        "endpoint": receiver.url(path),
        "body": body,
        "created_at": datetime.now(UTC),
    }
    db.providers.update_one({"_id": provider.name}, {"$push": {"owed_events": owed}})
    (call,) = notices(receiver, path, 1)
    assert call.webhook_id == event_id and call.verified_by == (0,)
    wait_until(
        lambda: not db.providers.find_one({"_id": provider.name}).get("owed_events"),
        10,
        what="the owed notice to leave the provider's document",
    )
    assert db.events.count_documents({"_id": event_id}) == 1
    assert len([c for c in receiver.calls_to(path) if c.webhook_id == event_id]) == 1


def test_the_audit_log_pages_newest_first_and_holds_nothing_secret(
    hook_server: ServerProcess, receiver: Receiver
) -> None:
    provider, _ = hooked(hook_server, receiver)
    name, headers, client = provider.name, provider.headers, provider.client
    pan = random_pan()
    remember(pan)
    assert (
        client.post(
            f"/cashout/profile/{name}",
            headers=headers,
            json={"pan": pan, "expDate": "3105", "ipin": "8642", "consent": True},
        ).status_code
        == 200
    )
    uuid = provider.generate(5)
    assert client.post(f"/cashout/claims/{name}/{uuid}/cancel", headers=headers).status_code == 200
    secret = client.post(
        f"/cashout/keys/{name}/rotate", headers=headers, json={"webhook_secret": True}
    ).json()["webhook_secret"]
    remember(secret)

    seen, after = [], None
    while True:
        params = {"limit": "2", **({"after": after} if after else {})}
        page = client.get(f"/cashout/audit/{name}", headers=headers, params=params).json()
        seen += page["entries"]
        after = page["next"]
        if not after:
            break
    assert [e["action"] for e in seen] == [
        "credentials.rotated",
        "claim.cancelled",
        "profile.updated",
        "provider.registered",
    ]
    key_id = client.get(f"/cashout/profile/{name}", headers=headers).json()["key_id"]
    assert {e["actor"] for e in seen} == {key_id}
    assert seen[2]["changes"]["changes"] == [
        {"field": "card", "old": "****" + provider.pan[-4:], "new": "****" + pan[-4:]}
    ]
    assert seen[1]["changes"] == {"claim": uuid, "id": seen[1]["changes"]["id"], "amount": 5}
    times = [e["at"] for e in seen]
    assert times == sorted(times, reverse=True)
    text = json.dumps(seen)
    for secret_value in (pan, provider.pan, secret, provider.headers["Authorization"][7:]):
        assert secret_value not in text
    other = Provider.register(hook_server)
    assert client.get(f"/cashout/audit/{name}", headers=other.headers).status_code == 404
