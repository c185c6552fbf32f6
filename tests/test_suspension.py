"""Suspension and the operator's other controls (docs/DESIGN.md section 12): ``admin
suspend`` stops generate and claim submissions (API and pages) while reads, webhooks and
transfers already in flight go on; ``admin resume`` restores everything;
``admin cancel-pending`` cancels what is still open."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import httpx
import pytest

from tests.cards import luhn_card
from tests.conftest import random_pan
from tests.harness import PYTHON, ROOT, Provider, ServerProcess, remember, wait_until
from tests.receiver import Receiver
from tests.test_webhooks import FAST_WEBHOOKS


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
def suspend_server(server_factory: Any) -> ServerProcess:
    # A transfer whose answer is lost (magic card 0091) stays processing until the next
    # reconciliation round (every 10 s here) asks the switch: an in-flight transfer that
    # certainly outlives the suspension.
    return server_factory({**FAST_WEBHOOKS, "CASHOUT_RECONCILE_INTERVAL": "10"})


def form_post(client: httpx.Client, path: str, pan: str) -> httpx.Response:
    page = client.get(path)
    token = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert token, page.text[:300]
    return client.post(path, data={"pan": pan, "_xsrf": token.group(1)})


def test_suspend_stops_new_claims_and_payouts_and_resume_restores_them(
    suspend_server: ServerProcess, receiver: Receiver
) -> None:
    server = suspend_server
    provider = Provider.register(server, endpoint=receiver.url("/suspend"))
    receiver.behave("/suspend", secrets=[provider.webhook_secret])
    name, headers, client = provider.name, provider.headers, provider.client
    in_flight = provider.generate(70)
    waiting = provider.generate(80)
    slow_card = luhn_card("0091")
    remember(slow_card)
    assert provider.claim(in_flight, slow_card).status_code == 202

    done = admin(server, "suspend", name, "--reason", "suspected stolen key")
    assert done.returncode == 0 and "suspended" in done.stdout, done.stderr[-500:]
    assert provider.status(in_flight)["status"] == "processing", "still in flight"

    # No new claims, no submissions: API, JSON claim route and the claim page.
    generate = client.post(
        f"/cashout/generate/{name}", headers=headers, json={"amount": 5, "id": "s1"}
    )
    assert generate.status_code == 403 and generate.json()["code"] == "provider_suspended"
    card = random_pan()
    submitted = provider.claim(waiting, card)
    assert submitted.status_code == 403 and submitted.json()["code"] == "provider_suspended"
    page = client.get(f"/cashout/claim/{name}/{waiting}")
    assert page.status_code == 403 and "Temporarily unavailable" in page.text
    assert "text/html" in page.headers["content-type"]
    assert "80" not in re.sub(r"<[^>]+>", "", page.text), "nothing of the claim is shown"
    # The form, posted anyway (with a token from another provider's claim page).
    other = Provider.register(server)
    other_page = client.get(f"/cashout/claim/{other.name}/{other.generate(5)}")
    token = re.search(r'name="_xsrf" value="([^"]+)"', other_page.text)
    assert token
    posted = client.post(
        f"/cashout/claim/{name}/{waiting}", data={"pan": card, "_xsrf": token.group(1)}
    )
    assert posted.status_code == 403 and "Temporarily unavailable" in posted.text
    assert provider.status(waiting)["status"] == "pending"
    # Nor changes the provider's key could make.
    rotate = client.post(f"/cashout/keys/{name}/rotate", headers=headers, json={"api_key": True})
    assert rotate.status_code == 403 and rotate.json()["code"] == "provider_suspended"
    endpoint = client.post(
        f"/cashout/profile/{name}", headers=headers, json={"endpoint": receiver.url("/x")}
    )
    assert endpoint.status_code == 403

    # Reads and webhooks go on; the profile says why.
    profile = client.get(f"/cashout/profile/{name}", headers=headers).json()
    assert profile["status"] == "suspended"
    assert profile["suspended_reason"] == "suspected stolen key" and profile["suspended_at"]
    assert client.get(f"/cashout/claims/{name}", headers=headers).status_code == 200
    assert client.post(f"/cashout/webhooks/{name}/test", headers=headers).status_code == 202
    # The transfer in flight finishes (reconciliation settles it) and its webhook is sent.
    assert provider.wait(in_flight, "succeeded")["amount"] == 70
    calls = wait_until(
        lambda: [c for c in receiver.calls_to("/suspend") if c.payload.get("uuid") == in_flight],
        30,
        what="the in-flight claim's webhook",
    )
    assert calls[0].payload["status"] == "succeeded" and calls[0].verified_by == (0,)
    notice = [c for c in receiver.calls_to("/suspend") if c.payload.get("type")]
    assert notice and notice[0].verified_by == (0,)
    assert notice[0].payload["data"]["changes"] == [
        {"field": "status", "old": "active", "new": "suspended", "reason": "suspected stolen key"}
    ]
    assert notice[0].payload["data"]["actor"] == "admin"

    again = admin(server, "suspend", name, "--reason", "twice")
    assert again.returncode == 0 and "already suspended" in again.stdout
    resumed = admin(server, "resume", name)
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    assert client.get(f"/cashout/claim/{name}/{waiting}").status_code == 200
    assert provider.claim(waiting, card).status_code == 202
    assert provider.wait(waiting, "succeeded")["amount"] == 80
    assert provider.generate(6)
    assert client.get(f"/cashout/profile/{name}", headers=headers).json()["status"] == "active"

    audit = client.get(f"/cashout/audit/{name}", headers=headers).json()["entries"]
    by_admin = [e["action"] for e in audit if e["actor"] == "admin"]
    assert by_admin == ["provider.resumed", "provider.suspended"]


def test_admin_cancel_pending_and_unknown_names(suspend_server: ServerProcess, mongo: Any) -> None:
    server = suspend_server
    provider = Provider.register(server)
    pending = [provider.generate(10 + i) for i in range(3)]
    paid = provider.generate(9)
    assert provider.claim(paid, random_pan()).status_code == 202
    provider.wait(paid, "succeeded")

    result = admin(server, "cancel-pending", provider.name)
    assert result.returncode == 0 and "cancelled 3 pending claims" in result.stdout
    assert [provider.status(u)["status"] for u in pending] == ["cancelled"] * 3
    assert provider.status(paid)["status"] == "succeeded"
    totals = mongo[server.env["CASHOUT_DB_NAME"]].daily_totals
    assert totals.find_one({"provider": provider.name})["total"] == 9, "amounts given back"
    audit = provider.client.get(f"/cashout/audit/{provider.name}", headers=provider.headers).json()[
        "entries"
    ]
    assert audit[0]["action"] == "claims.cancelled_pending" and audit[0]["changes"] == {"count": 3}
    for task in ("suspend", "resume", "revoke-key", "cancel-pending"):
        extra = ("--reason", "x") if task == "suspend" else ()
        missing = admin(server, task, "nobody-here", *extra)
        assert missing.returncode == 1 and "No provider named" in missing.stderr, task
