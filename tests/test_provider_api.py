"""The provider API end to end: real server, real database, real HTTP."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.conftest import random_pan, unique_name
from tests.harness import ServerProcess, auth, provider_body, register, remember

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpx.Client:
    return server.client()


@pytest.fixture()
def provider(client: httpx.Client) -> dict[str, Any]:
    body = provider_body(unique_name(), random_pan())
    creds = register(client, body)
    return {"name": body["name"], "pan": body["pan"], **creds, "headers": auth(creds["api_key"])}


def test_register_answers_ok_with_credentials_shown_once(client: httpx.Client) -> None:
    body = provider_body(unique_name(), random_pan())
    creds = register(client, body)
    assert creds["result"] == "ok"
    assert creds["api_key"].startswith("ck_test_") and len(creds["api_key"]) > 40
    assert creds["webhook_secret"].startswith("whsec_")
    profile = client.get(f"/cashout/profile/{body['name']}", headers=auth(creds["api_key"]))
    assert profile.status_code == 200
    shown = profile.text
    assert creds["api_key"] not in shown and creds["webhook_secret"] not in shown
    assert body["pan"] not in shown and profile.json()["card"] == "****" + body["pan"][-4:]
    again = client.post("/cashout/register", json=body)
    assert again.status_code == 409 and again.json()["code"] == "provider_exists"


def test_generate_shape_and_idempotency(
    client: httpx.Client, server: ServerProcess, provider: dict[str, Any]
) -> None:
    name, headers = provider["name"], provider["headers"]
    first = client.post(
        f"/cashout/generate/{name}", json={"amount": 100, "id": "order-1"}, headers=headers
    )
    assert first.status_code == 201
    body = first.json()
    assert body["result"] == body["uuid"] and UUID4.match(body["uuid"])
    assert body["url"] == f"{server.url}/cashout/claim/{name}/{body['uuid']}"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", body["expires_at"])
    replay = client.post(
        f"/cashout/generate/{name}", json={"amount": 100, "id": "order-1"}, headers=headers
    )
    assert replay.status_code == 200 and replay.json() == body
    conflict = client.post(
        f"/cashout/generate/{name}", json={"amount": 101, "id": "order-1"}, headers=headers
    )
    assert conflict.status_code == 409 and conflict.json()["code"] == "id_conflict"
    other = client.post(
        f"/cashout/generate/{name}", json={"amount": 100, "id": "order-2"}, headers=headers
    )
    assert other.status_code == 201 and other.json()["uuid"] != body["uuid"]


def test_claim_lookup_by_uuid_and_id(client: httpx.Client, provider: dict[str, Any]) -> None:
    name, headers = provider["name"], provider["headers"]
    made = client.post(
        f"/cashout/generate/{name}",
        json={"amount": 250, "id": "ref/with spaces & ü", "expires_in": 3600},
        headers=headers,
    ).json()
    by_uuid = client.get(f"/cashout/claims/{name}/{made['uuid']}", headers=headers)
    assert by_uuid.status_code == 200
    claim = by_uuid.json()
    assert claim["uuid"] == made["uuid"] and claim["id"] == "ref/with spaces & ü"
    assert claim["amount"] == 250 and claim["status"] == "pending"
    assert claim["card"] is None and claim["attempts"] == [] and claim["claimed_at"] is None
    by_id = client.get(
        f"/cashout/claims/{name}", params={"id": "ref/with spaces & ü"}, headers=headers
    )
    assert by_id.status_code == 200 and by_id.json() == claim
    missing = client.get(f"/cashout/claims/{name}", params={"id": "nope"}, headers=headers)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_list_is_newest_first_and_paginates(client: httpx.Client, provider: dict[str, Any]) -> None:
    name, headers = provider["name"], provider["headers"]
    made = [
        client.post(
            f"/cashout/generate/{name}", json={"amount": 10 + i, "id": f"l{i}"}, headers=headers
        ).json()["uuid"]
        for i in range(7)
    ]
    client.post(f"/cashout/claims/{name}/{made[0]}/cancel", headers=headers)
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": "3", **({"after": after} if after else {})}
        page = client.get(f"/cashout/claims/{name}", params=params, headers=headers).json()
        assert len(page["claims"]) <= 3
        seen += [c["uuid"] for c in page["claims"]]
        after = page["next"]
        if not after:
            break
    assert seen == list(reversed(made))
    cancelled = client.get(
        f"/cashout/claims/{name}", params={"status": "cancelled"}, headers=headers
    ).json()
    assert [c["uuid"] for c in cancelled["claims"]] == [made[0]]
    assert cancelled["next"] is None


def test_cancel_only_while_pending(client: httpx.Client, provider: dict[str, Any]) -> None:
    name, headers = provider["name"], provider["headers"]
    uuid = client.post(
        f"/cashout/generate/{name}", json={"amount": 5, "id": "c1"}, headers=headers
    ).json()["uuid"]
    done = client.post(f"/cashout/claims/{name}/{uuid}/cancel", headers=headers)
    assert done.status_code == 200 and done.json()["status"] == "cancelled"
    assert done.json()["completed_at"] is not None
    again = client.post(f"/cashout/claims/{name}/{uuid}/cancel", headers=headers)
    assert again.status_code == 409 and again.json()["code"] == "not_cancellable"
    unknown = client.post(
        f"/cashout/claims/{name}/00000000-0000-4000-8000-000000000000/cancel", headers=headers
    )
    assert unknown.status_code == 404


def test_profile_changes_endpoint_and_card(client: httpx.Client, provider: dict[str, Any]) -> None:
    name, headers = provider["name"], provider["headers"]
    changed = client.post(
        f"/cashout/profile/{name}",
        json={"endpoint": "https://hooks.example.com/cashout"},
        headers=headers,
    )
    assert changed.status_code == 200
    assert changed.json()["endpoint"] == "https://hooks.example.com/cashout"
    pan = random_pan()
    remember(pan)
    card = client.post(
        f"/cashout/profile/{name}",
        headers=headers,
        json={"pan": pan, "expDate": "3105", "ipin": "8642", "consent": True},
    )
    assert card.status_code == 200 and card.json()["card"] == "****" + pan[-4:]
    partial = client.post(f"/cashout/profile/{name}", json={"pan": pan}, headers=headers)
    assert partial.status_code == 400 and partial.json()["code"] == "invalid_request"


def test_rotating_the_api_key_retires_the_old_one(
    client: httpx.Client, provider: dict[str, Any]
) -> None:
    name, headers = provider["name"], provider["headers"]
    rotated = client.post(f"/cashout/keys/{name}/rotate", json={"api_key": True}, headers=headers)
    assert rotated.status_code == 200
    new_key = rotated.json()["api_key"]
    remember(new_key)
    assert new_key != provider["api_key"] and "webhook_secret" not in rotated.json()
    old = client.get(f"/cashout/profile/{name}", headers=headers)
    assert old.status_code == 401 and old.json()["code"] == "unauthorized"
    assert client.get(f"/cashout/profile/{name}", headers=auth(new_key)).status_code == 200


def test_rotating_the_webhook_secret_keeps_the_old_one_for_a_day(
    client: httpx.Client, provider: dict[str, Any]
) -> None:
    name, headers = provider["name"], provider["headers"]
    rotated = client.post(
        f"/cashout/keys/{name}/rotate", json={"webhook_secret": True}, headers=headers
    )
    assert rotated.status_code == 200
    body = rotated.json()
    remember(body["webhook_secret"])
    assert body["webhook_secret"] != provider["webhook_secret"] and "api_key" not in body
    secrets = body["webhook_secrets"]
    assert len(secrets) == 2 and secrets[0]["expires_at"] is None
    assert secrets[1]["expires_at"] is not None
    empty = client.post(f"/cashout/keys/{name}/rotate", json={}, headers=headers)
    assert empty.status_code == 400


def test_per_claim_maximum_and_daily_total(server_factory: Any) -> None:
    server = server_factory({"CASHOUT_MAX_CLAIM_AMOUNT": "1000", "CASHOUT_DAILY_LIMIT": "2500"})
    client = server.client()
    name = unique_name()
    headers = auth(register(client, provider_body(name, random_pan()))["api_key"])

    def generate(amount: int, ref: str) -> httpx.Response:
        return client.post(
            f"/cashout/generate/{name}", json={"amount": amount, "id": ref}, headers=headers
        )

    over = generate(1001, "big")
    assert over.status_code == 400 and over.json()["code"] == "amount_over_limit"
    first, second = generate(1000, "d0"), generate(1000, "d1")
    assert (first.status_code, second.status_code) == (201, 201)
    third = generate(1000, "d2")
    assert third.status_code == 400 and third.json()["code"] == "amount_over_limit"
    assert generate(500, "d3").status_code == 201
    # Cancelling gives the amount back to the day's total.
    client.post(f"/cashout/claims/{name}/{first.json()['uuid']}/cancel", headers=headers)
    assert generate(1000, "d2").status_code == 201
    assert generate(1, "d4").json()["code"] == "amount_over_limit"
