"""Registration by invitation (docs/DESIGN.md section 12): ``admin invite`` makes a
single-use code; without a valid one nothing is checked, stored or sent to the switch."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from server.settings import Settings, load
from tests.conftest import random_pan, unique_name
from tests.harness import PYTHON, ROOT, Provider, ServerProcess, provider_body, remember


def admin(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "server", "admin", *args],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def new_invite(server: ServerProcess, *args: str) -> str:
    made = admin(server, "invite", *args)
    assert made.returncode == 0, made.stderr[-500:]
    code = made.stdout.strip()
    remember(code)
    assert code.startswith("invite_") and len(code) > 30
    return code


@pytest.fixture(scope="module")
def invite_server(server_factory: Any) -> ServerProcess:
    return server_factory({"CASHOUT_REGISTRATION": "invite"})


def attempt(
    server: ServerProcess, invite: str | None, name: str | None = None, **changes: Any
) -> httpx.Response:
    pan = changes.pop("pan", None) or random_pan()
    remember(pan, changes.get("ipin", ""))
    body = provider_body(name or unique_name("inv"), pan, **changes)
    if invite is not None:
        body["invite"] = invite
    response = server.client().post("/cashout/register", json=body)
    if response.status_code == 200:
        remember(response.json()["api_key"], response.json()["webhook_secret"])
    return response


def ledger_checks(server: ServerProcess, pan: str) -> list[int]:
    return Provider(server, server.client(), "", "", {}).ledger.card_checks(pan)


def test_registration_mode_defaults_by_environment() -> None:
    assert Settings().registration_mode == "open"
    assert Settings(env="production").registration_mode == "invite"
    assert Settings(env="production", registration="open").registration_mode == "open"
    assert load(environ={"CASHOUT_REGISTRATION": "invite"}).registration_mode == "invite"
    with pytest.raises(Exception, match="CASHOUT_REGISTRATION"):
        load(environ={"CASHOUT_REGISTRATION": "closed"})


def test_without_a_code_nothing_is_checked_or_stored(
    invite_server: ServerProcess, mongo: Any
) -> None:
    db = mongo[invite_server.env["CASHOUT_DB_NAME"]]
    pan = random_pan()
    missing = attempt(invite_server, None, pan=pan)
    assert missing.status_code == 403 and missing.json()["code"] == "invite_required"
    unknown = attempt(invite_server, "invite_" + "x" * 32, pan=pan)
    assert unknown.status_code == 403 and unknown.json()["code"] == "invite_invalid"
    assert ledger_checks(invite_server, pan) == [], "no card check without an invitation"
    assert all(d["card"]["last4"] != pan[-4:] for d in db.providers.find())
    # Without a code, a taken name is not told apart from a free one (no 409 to list names).
    name = unique_name("taken")
    assert attempt(invite_server, new_invite(invite_server), name=name).status_code == 200
    again = attempt(invite_server, None, name=name)
    assert again.status_code == 403 and again.json()["code"] == "invite_required"


def test_a_code_is_used_once_and_a_failed_registration_keeps_it(
    invite_server: ServerProcess, mongo: Any
) -> None:
    code = new_invite(invite_server, "--note", "for shifa")
    db = mongo[invite_server.env["CASHOUT_DB_NAME"]]
    key = {"_id": hashlib.sha256(code.encode()).hexdigest()}
    stored = db.invites.find_one(key)
    assert stored and stored["note"] == "for shifa" and stored["used_by"] is None
    assert stored["expires_at"] - stored["created_at"] == timedelta(days=7), "the default"
    assert not any(code in str(doc) for doc in db.invites.find()), "only its hash is kept"

    # Refused for the card (someone else's, with a wrong IPIN), then for a taken name:
    # neither uses the code up.
    victim, name = random_pan(), unique_name("taken")
    assert (
        attempt(invite_server, new_invite(invite_server), name=name, pan=victim).status_code == 200
    )
    refused = attempt(invite_server, code, pan=victim, ipin="0101")
    assert refused.status_code == 400 and refused.json()["code"] == "card_rejected"
    exists = attempt(invite_server, code, name=name)
    assert exists.status_code == 409 and exists.json()["code"] == "provider_exists"
    assert db.invites.find_one(key)["used_by"] is None

    done = attempt(invite_server, code)
    assert done.status_code == 200
    again = attempt(invite_server, code)
    assert again.status_code == 403 and again.json()["code"] == "invite_invalid"
    used = db.invites.find_one(key)
    assert used["used_by"] is not None and used["used_at"] is not None
    entry = db.audit.find_one({"provider": used["used_by"], "action": "provider.registered"})
    assert entry["changes"]["invite"] == "inv_" + key["_id"][:12]
    assert entry["changes"]["registration"] == "invite"


def test_an_expired_code_is_refused(invite_server: ServerProcess, mongo: Any) -> None:
    code = new_invite(invite_server, "--expires-in", "3600")
    db = mongo[invite_server.env["CASHOUT_DB_NAME"]]
    key = {"_id": hashlib.sha256(code.encode()).hexdigest()}
    assert db.invites.find_one(key)["expires_at"] - db.invites.find_one(key)[
        "created_at"
    ] == timedelta(hours=1)
    db.invites.update_one(key, {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}})
    expired = attempt(invite_server, code)
    assert expired.status_code == 403 and expired.json()["code"] == "invite_invalid"


def test_two_registrations_racing_with_one_code_one_wins(
    invite_server: ServerProcess, mongo: Any
) -> None:
    db = mongo[invite_server.env["CASHOUT_DB_NAME"]]
    code = new_invite(invite_server)
    bodies = []
    for _ in range(8):
        pan = random_pan()
        remember(pan)
        bodies.append({**provider_body(unique_name("race"), pan), "invite": code})

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=invite_server.url, timeout=60) as client:
            return list(
                await asyncio.gather(*(client.post("/cashout/register", json=b) for b in bodies))
            )

    answers = asyncio.run(race())
    for answer in answers:
        if answer.status_code == 200:
            remember(answer.json()["api_key"], answer.json()["webhook_secret"])
    assert sorted(a.status_code for a in answers) == [200] + [403] * 7
    assert {a.json()["code"] for a in answers if a.status_code == 403} == {"invite_invalid"}
    registered = [b["name"] for b in bodies if db.providers.find_one({"_id": b["name"]})]
    assert len(registered) == 1
