"""The whole stack in ``ebs`` mode: the server talks to the EBS simulator over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.ebs.protocol import REQUIRED
from tests.cards import luhn_card
from tests.conftest import random_pan, unique_name
from tests.harness import (
    FAST_RECONCILE,
    ServerProcess,
    Simulator,
    auth,
    provider_body,
    register,
    remember,
    wait_for_status,
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[Simulator]:
    simulator = Simulator(
        tmp_path_factory.mktemp("sim"), log_dir / "simulator-stack.log", "--slow-seconds", "3"
    ).start()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def ebs_server(server_factory: Any, sim: Simulator) -> ServerProcess:
    return server_factory(
        {
            **FAST_RECONCILE,
            "CASHOUT_GATEWAY": "ebs",
            "CASHOUT_EBS_URL": sim.url,
            "CASHOUT_EBS_APPLICATION_ID": "ACTSCon",
            "CASHOUT_EBS_CONNECT_TIMEOUT": "1",
            "CASHOUT_EBS_REQUEST_TIMEOUT": "1",
            "CASHOUT_ATTEMPT_LEASE": "10",
        }
    )


@pytest.fixture(scope="module")
def provider(ebs_server: ServerProcess) -> dict[str, Any]:
    name, pan = unique_name(), random_pan()
    creds = register(ebs_server.client(), provider_body(name, pan, ipin="5823"))
    return {"name": name, "pan": pan, "headers": auth(creds["api_key"])}


def test_registration_verifies_the_card_with_get_balance(
    ebs_server: ServerProcess, provider: dict[str, Any], sim: Simulator, db: Any
) -> None:
    checks = [
        r
        for r in sim.requests()
        if r["endpoint"] == "getBalance" and r["pan"] == "****" + provider["pan"][-4:]
    ]
    assert checks and checks[0]["ipin_block_ok"] and checks[0]["response_code"] == 0
    # The same card with another IPIN: the switch says no, and nothing is stored.
    body = provider_body(unique_name(), provider["pan"], ipin="1357")
    remember("1357")
    refused = ebs_server.client().post("/cashout/register", json=body)
    assert refused.status_code == 400 and refused.json()["code"] == "card_rejected"
    assert "1357" not in refused.text and provider["pan"] not in refused.text
    assert db.providers.find_one({"_id": body["name"]}) is None


# last four -> final status, response code, attempts
CASES = [
    ("4321", "succeeded", 0, 1),
    ("0051", "failed", 51, 1),
    ("0053", "failed", 53, 1),
    ("0091", "succeeded", 0, 1),  # times out, getTransactionStatus says approved
    ("0092", "failed", None, 3),  # times out, never happened: retried, then failed
    ("0093", "failed", None, 3),  # HTML reply: unknown, settled as never happened
    ("0094", "failed", None, 3),  # wrong content type: unknown, likewise
]


@pytest.mark.parametrize(("last4", "final", "code", "attempts"), CASES, ids=[c[0] for c in CASES])
def test_claims_through_ebs(
    ebs_server: ServerProcess,
    provider: dict[str, Any],
    sim: Simulator,
    last4: str,
    final: str,
    code: int | None,
    attempts: int,
) -> None:
    client, name, headers = ebs_server.client(), provider["name"], provider["headers"]
    uuid = client.post(
        f"/cashout/generate/{name}", headers=headers, json={"amount": 75, "id": unique_name("e")}
    ).json()["uuid"]
    to_pan = luhn_card(last4)
    remember(to_pan)
    assert (
        client.post(f"/cashout/claim/{name}", json={"id": uuid, "pan": to_pan}).status_code == 202
    )
    claim = wait_for_status(client, name, uuid, headers, ("succeeded", "failed"), 45)
    assert (claim["status"], claim["response_code"], len(claim["attempts"])) == (
        final,
        code,
        attempts,
    )
    with sim.ledger() as ledger:
        assert ledger.applied_total_to(to_pan) == (75 if final == "succeeded" else 0)
        for attempt in claim["attempts"]:
            assert ledger.applied_count(attempt["tran_uuid"]) == (
                1 if attempt["outcome"] == "approved" else 0
            )


def test_every_request_the_server_sent_matches_ebs_md(
    sim: Simulator, provider: dict[str, Any]
) -> None:
    sent = [r for r in sim.requests() if r["endpoint"] != "getPublicKey"]
    assert {r["endpoint"] for r in sent} >= {"getBalance", "doCardTransfer", "getTransactionStatus"}
    for r in sent:
        assert r["content_type_ok"] and r["application_id_ok"] and r["uuid_ok"]
        assert set(r["fields"]) == set(REQUIRED[r["endpoint"]]) and not r["misspelt"]
        assert r["tran_date_time_ok"] and len(r["tran_date_time"]) == 12
        if "IPIN" in r["fields"] and r["pan"] == "****" + provider["pan"][-4:]:
            assert r["ipin_block_ok"] is True
    transfers = [r for r in sent if r["endpoint"] == "doCardTransfer"]
    # The simulator checks the IPIN on every transfer but its fault-injection cards (None).
    checked = [
        r["ipin_matches_account"] for r in transfers if r["ipin_matches_account"] is not None
    ]
    assert len(checked) >= 7 and all(checked), "every IPIN block carried the provider's IPIN"
    uuids = [r["uuid"] for r in sent]
    assert len(uuids) == len(set(uuids)), "every request has a fresh UUID"
