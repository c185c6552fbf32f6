"""kill -9 in the middle of transfers: after a restart every claim reaches its right final
state and the ledger pays each exactly once, unknown outcomes included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateways.mock import LEDGER_FILE
from tests.cards import luhn_card
from tests.conftest import random_pan, unique_name
from tests.harness import (
    FAST_RECONCILE,
    auth,
    provider_body,
    register,
    remember,
    wait_for_status,
    wait_until,
)
from tests.ledger import Ledger

LATENCY = {"CASHOUT_MOCK_LATENCY_MS": "1500", **FAST_RECONCILE}


def test_kill_during_transfers_pays_each_claim_exactly_once(
    server_factory: Any, mongo: Any, tmp_path: Path
) -> None:
    env = {
        **LATENCY,
        "CASHOUT_DATA_DIR": str(tmp_path),
        "CASHOUT_DB_NAME": unique_name("crash").replace("-", "_"),
    }
    server = server_factory(env)
    client = server.client()
    name, payer = unique_name(), random_pan()
    headers = auth(register(client, provider_body(name, payer))["api_key"])
    ledger = Ledger(tmp_path / LEDGER_FILE)
    start_balance = ledger.balance(payer)

    def make(cards: list[str]) -> dict[str, tuple[str, int]]:
        made = {}
        for i, card in enumerate(cards):
            amount = 100 + i
            uuid = client.post(
                f"/cashout/generate/{name}",
                headers=headers,
                json={"amount": amount, "id": unique_name("c")},
            ).json()["uuid"]
            made[uuid] = (card, amount)
        return made

    # Wave A will be past the ledger write when the server dies; wave B will not.
    wave_a = make([random_pan() for _ in range(6)] + [luhn_card("0091"), luhn_card("0092")])
    wave_b = make([random_pan() for _ in range(6)] + [luhn_card("0091")])
    remember(*(card for card, _ in [*wave_a.values(), *wave_b.values()]))
    for uuid, (card, _) in wave_a.items():
        assert (
            client.post(f"/cashout/claim/{name}", json={"id": uuid, "pan": card}).status_code == 202
        )
    wait_until(
        lambda: len(ledger.all_transfers()) >= 7, 10, what="wave A's transfers to reach the ledger"
    )
    for uuid, (card, _) in wave_b.items():
        assert (
            client.post(f"/cashout/claim/{name}", json={"id": uuid, "pan": card}).status_code == 202
        )
    server.kill()

    claims = {**wave_a, **wave_b}
    recorded = {t.tran_uuid for t in ledger.all_transfers()}
    found = mongo[server.env["CASHOUT_DB_NAME"]].claims.find({"_id": {"$in": list(claims)}})
    at_kill = {d["_id"]: d for d in found}
    in_flight = [u for u, d in at_kill.items() if d["status"] == "processing"]
    applied_unanswered = [
        u for u in in_flight if at_kill[u]["attempts"][-1]["tran_uuid"] in recorded
    ]
    never_reached = [u for u in in_flight if u not in applied_unanswered]
    assert applied_unanswered and never_reached, "the kill must catch both kinds of attempt"

    restarted = server_factory(env)
    rclient = restarted.client()
    final = {
        uuid: wait_for_status(rclient, name, uuid, headers, ("succeeded", "failed"), 60)
        for uuid in claims
    }

    paid_total = 0
    for uuid, (card, amount) in claims.items():
        claim = final[uuid]
        expected = "failed" if card.endswith("0092") else "succeeded"
        assert claim["status"] == expected, (uuid, claim["status"], card[-4:])
        moved = ledger.applied_total_to(card)
        assert moved == (amount if expected == "succeeded" else 0)
        assert len([t for t in ledger.transfers_to(card) if t.applied]) == (
            1 if expected == "succeeded" else 0
        ), "paid exactly once"
        paid_total += moved
    assert ledger.balance(payer) == start_balance - paid_total
    assert ledger.money_is_conserved()
