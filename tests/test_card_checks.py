"""Card checks are not an oracle (docs/DESIGN.md section 12): one answer for every refusal,
failed checks counted per card, per client address and per provider, and a card locked out
is no longer sent to the switch, whoever asks. What reached the switch is counted where the
switch keeps it: the mock bank's ledger, and the EBS simulator's request log."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.crypto import CardNamer, KeyRing
from tests.conftest import random_pan, unique_name
from tests.harness import (
    Provider,
    ServerProcess,
    Simulator,
    auth,
    provider_body,
    register,
    remember,
)
from tests.ledger import Ledger

WRONG_IPIN, EXPIRED = 53, 54
_hosts = itertools.count(10)


def from_address(server: ServerProcess, address: str | None = None) -> httpx.Client:
    """A client whose requests come from their own loopback address (127.0.0.0/8 is all
    ours), so a test can be a different client address without any proxy header."""
    address = address or f"127.1.{next(_hosts)}.1"
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.url, timeout=30, transport=transport)


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def register_answer(client: httpx.Client, pan: str, ipin: str, exp: str = "3012") -> bytes:
    remember(pan, ipin, exp)
    response = client.post(
        "/cashout/register", json=provider_body(unique_name("try"), pan, ipin=ipin, exp=exp)
    )
    assert response.status_code == 400, response.text
    return response.content


def audit(provider: Provider) -> list[dict[str, Any]]:
    answer = provider.client.get(
        f"/cashout/audit/{provider.name}", headers=provider.headers, params={"limit": "100"}
    )
    assert answer.status_code == 200
    return answer.json()["entries"]


@pytest.fixture(scope="module")
def checks_server(server_factory: Any) -> ServerProcess:
    # The echoing gateway is the mock switch, plus a card it does not know: IPIN 0000 is
    # refused with code 14 ("no such card") and the card number in the switch's words.
    return server_factory({"CASHOUT_GATEWAY": "tests.echo_gateway:EchoingGateway"})


def ledger_of(server: ServerProcess) -> Ledger:
    return Provider(server, server.client(), "", "", {}).ledger


def test_every_refusal_is_one_answer_and_a_locked_card_is_not_sent(
    checks_server: ServerProcess, mongo: Any
) -> None:
    """The IPIN guess of the issue, from several names, providers and addresses: after the
    allowed failures (3) the card is no longer checked at the switch, and a wrong IPIN, an
    expired card, a locked card and an unknown card get the very same bytes."""
    server, ledger = checks_server, ledger_of(checks_server)
    victim = Provider.register(server)  # the card (IPIN 7391, expiry 3012) is verified once
    attacker = Provider.register(server)
    assert ledger.card_checks(victim.pan) == [0]

    wrong_ipin = register_answer(from_address(server), victim.pan, "1111")
    expired = register_answer(from_address(server), victim.pan, "7391", exp="3105")
    remember("2222")
    third = attacker.client.post(  # by another provider, changing its own card
        f"/cashout/profile/{attacker.name}",
        headers=attacker.headers,
        json={"pan": victim.pan, "expDate": "3012", "ipin": "2222", "consent": True},
    )
    assert third.status_code == 400
    assert ledger.card_checks(victim.pan) == [0, WRONG_IPIN, EXPIRED, WRONG_IPIN]

    # Locked out: even the right IPIN, from a new name and address, is not sent.
    locked = register_answer(from_address(server), victim.pan, "7391")
    assert ledger.card_checks(victim.pan) == [0, WRONG_IPIN, EXPIRED, WRONG_IPIN]
    unknown_pan = random_pan()
    unknown = register_answer(from_address(server), unknown_pan, "0000")
    assert ledger.card_checks(unknown_pan) == [0]  # the bank saw it; the gateway refused it

    assert wrong_ipin == expired == third.content == locked == unknown
    assert third.json() == {
        "message": "The card could not be verified.",
        "code": "card_rejected",
        "details": [{"field": "pan", "problem": "could not be verified"}],
    }
    assert metric(server, "cashout_card_checks_total", result="locked") >= 1
    assert metric(server, "cashout_card_check_lockouts_total", scope="card") >= 1
    # The victim's own card change is refused too, without a switch call: locked is locked.
    again = victim.client.post(
        f"/cashout/profile/{victim.name}",
        headers=victim.headers,
        json={"pan": victim.pan, "expDate": "3012", "ipin": "7391", "consent": True},
    )
    assert again.content == locked
    assert len(ledger.card_checks(victim.pan)) == 4

    # The switch's codes are for the provider whose key asked, in its audit log.
    entries = [e for e in audit(attacker) if e["action"].startswith("card_check.")]
    assert [e["action"] for e in entries] == ["card_check.locked", "card_check.rejected"]
    assert entries[1]["changes"]["code"] == WRONG_IPIN
    assert entries[1]["changes"]["card"] == "****" + victim.pan[-4:]
    assert entries[0]["changes"] == {
        "scope": "card",
        "card": "****" + victim.pan[-4:],
        "failures": 3,
    }
    assert entries[0]["actor"].startswith("key_") and entries[0]["address"] == "127.0.0.1"

    # The lockout lasts 24 hours from the last failure; once over, the card is checked again.
    keys = KeyRing.parse((Path(server.env["CASHOUT_DATA_DIR"]) / "keys").read_text())
    counter = {"_id": "card:" + CardNamer.for_settings(None, keys).name(victim.pan)}
    failures = mongo[server.env["CASHOUT_DB_NAME"]].card_check_failures
    locked_until = failures.find_one(counter)["until"]
    last_failure = datetime.fromisoformat(entries[0]["at"].replace("Z", "+00:00"))
    assert abs(locked_until - last_failure - timedelta(hours=24)) < timedelta(seconds=5)
    assert victim.pan not in str(list(failures.find()))
    failures.update_one(counter, {"$set": {"until": datetime.now(UTC) - timedelta(seconds=1)}})
    assert len(register_answer(from_address(server), victim.pan, "3333")) > 0
    assert ledger.card_checks(victim.pan) == [0, WRONG_IPIN, EXPIRED, WRONG_IPIN, WRONG_IPIN]


def test_concurrent_guesses_send_at_most_the_limit_to_the_switch(
    checks_server: ServerProcess,
) -> None:
    """Thirty wrong guesses at once for one card: the failure count takes its place before
    the switch is asked, so exactly three checks reach it, and the card is locked."""
    server, ledger = checks_server, ledger_of(checks_server)
    pan = random_pan()
    register(server.client(), provider_body(unique_name(), pan))  # the card guessed at
    guesses = [f"{n:04d}" for n in range(8100, 8130)]
    remember(*guesses)

    async def burst() -> list[httpx.Response]:
        transport = httpx.AsyncHTTPTransport(local_address="127.0.9.1")
        async with httpx.AsyncClient(base_url=server.url, timeout=60, transport=transport) as c:
            return list(
                await asyncio.gather(
                    *(
                        c.post(
                            "/cashout/register",
                            json=provider_body(unique_name("guess"), pan, ipin=g),
                        )
                        for g in guesses
                    )
                )
            )

    answers = asyncio.run(burst())
    assert {r.status_code for r in answers} == {400}
    assert len({r.content for r in answers}) == 1
    assert ledger.card_checks(pan) == [0, WRONG_IPIN, WRONG_IPIN, WRONG_IPIN]


def test_a_client_address_with_too_many_failures_is_not_checked_for(
    checks_server: ServerProcess,
) -> None:
    """Ten failures from one address, each on another card (so no card is locked): the
    address's next check is not sent, even for a good card; other addresses go on."""
    server, ledger = checks_server, ledger_of(checks_server)
    victims = [random_pan() for _ in range(11)]
    for pan in victims:
        register(server.client(), provider_body(unique_name(), pan))
    noisy = from_address(server, "127.0.20.1")
    for pan in victims[:10]:
        register_answer(noisy, pan, "0001")
    assert all(ledger.card_checks(pan) == [0, WRONG_IPIN] for pan in victims[:10])
    good = random_pan()
    refused = register_answer(noisy, good, "7391")
    assert ledger.card_checks(good) == [], "the address is locked out: nothing was sent"
    assert refused == register_answer(noisy, victims[10], "0001")
    assert ledger.card_checks(victims[10]) == [0]
    # Another address registers the same good card at once.
    remember(good)
    fine = from_address(server).post("/cashout/register", json=provider_body(unique_name(), good))
    assert fine.status_code == 200
    remember(fine.json()["api_key"], fine.json()["webhook_secret"])
    assert ledger.card_checks(good) == [0]
    assert metric(server, "cashout_card_check_lockouts_total", scope="address") >= 1


def test_a_provider_with_too_many_failures_is_not_checked_for(
    checks_server: ServerProcess,
) -> None:
    """A stolen API key used to test cards through card changes, from ever new addresses:
    after ten failures the provider's card changes are not sent to the switch."""
    server, ledger = checks_server, ledger_of(checks_server)
    thief = Provider.register(server)
    victims = [random_pan() for _ in range(10)]
    for pan in victims:
        register(server.client(), provider_body(unique_name(), pan))
    remember("0002")

    def change_card(pan: str, ipin: str) -> httpx.Response:
        return from_address(server).post(
            f"/cashout/profile/{thief.name}",
            headers=thief.headers,
            json={"pan": pan, "expDate": "3012", "ipin": ipin, "consent": True},
        )

    for pan in victims:
        assert change_card(pan, "0002").status_code == 400
    fresh = random_pan()
    remember(fresh)
    refused = change_card(fresh, "7391")
    assert refused.status_code == 400 and refused.json()["code"] == "card_rejected"
    assert ledger.card_checks(fresh) == []
    locks = [e for e in audit(thief) if e["action"] == "card_check.locked"]
    assert locks and locks[0]["changes"]["scope"] == "provider"
    assert (
        thief.client.get(f"/cashout/profile/{thief.name}", headers=thief.headers).json()["card"]
        == "****" + thief.pan[-4:]
    ), "nothing changed"


# -- the same against the EBS simulator, counted in its own request log ---------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[Simulator]:
    simulator = Simulator(tmp_path_factory.mktemp("sim"), log_dir / "simulator-checks.log").start()
    yield simulator
    simulator.stop()


def test_ebs_locked_card_is_not_sent_and_refusals_look_alike(
    server_factory: Any, sim: Simulator
) -> None:
    server = server_factory(
        {
            "CASHOUT_GATEWAY": "ebs",
            "CASHOUT_EBS_URL": sim.url,
            "CASHOUT_EBS_APPLICATION_ID": "ACTSCon",
        }
    )
    name, pan = unique_name(), random_pan()
    creds = register(server.client(), provider_body(name, pan, ipin="5823"))
    assert creds["result"] == "ok"

    def balance_checks() -> list[int]:
        return [
            r["response_code"]
            for r in sim.requests()
            if r["endpoint"] == "getBalance" and r.get("pan") == "****" + pan[-4:]
        ]

    answers = [
        register_answer(from_address(server), pan, "1357"),  # wrong IPIN
        register_answer(from_address(server), pan, "5823", exp="3105"),  # not its expiry
        register_answer(from_address(server), pan, "2468"),
    ]
    checks = balance_checks()
    assert len(checks) == 4 and checks[0] == 0 and 0 not in checks[1:]
    answers.append(register_answer(from_address(server), pan, "5823"))  # locked
    answers.append(
        from_address(server)
        .post(
            f"/cashout/profile/{name}",
            headers=auth(creds["api_key"]),
            json={"pan": pan, "expDate": "3012", "ipin": "5823", "consent": True},
        )
        .content
    )
    assert len(balance_checks()) == 4, "a locked card is not sent to the switch"
    assert len(set(answers)) == 1
