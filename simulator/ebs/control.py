"""Test-only control routes under ``/_sim/``: what the simulator received, the bank's ledger,
the current key and its rotation. No reply carries a card number or an IPIN."""

from __future__ import annotations

import logging

from simulator.bank import iter_masked, mask
from simulator.ebs.handlers import JsonHandler
from simulator.ebs.protocol import PUB_KEY_VALUE

log = logging.getLogger(__name__)


class RequestsHandler(JsonHandler):
    """``GET``: the latest requests, as checked; ``DELETE``: forget them."""

    def get(self) -> None:
        self.send_json({"requests": self.state.requests})

    def delete(self) -> None:
        self.state.requests.clear()
        self.send_json({"cleared": True})


class LedgerHandler(JsonHandler):
    """One card's balance and received transfers, or the totals and whether they add up."""

    def get(self) -> None:
        bank = self.state.bank
        pan = self.get_query_argument("pan", None)
        if pan is None:
            self.send_json(
                {
                    "total": bank.total_money(),
                    "created": bank.money_created(),
                    "conserved": bank.money_is_conserved(),
                }
            )
            return
        self.send_json(
            {
                "pan": mask(pan),
                "balance": bank.balance(pan),
                "transfers_to": list(iter_masked(bank.transfers_to(pan))),
            }
        )


class TransferHandler(JsonHandler):
    """The bank's record of one transfer (masked), or 404."""

    def get(self, tran_uuid: str) -> None:
        record = self.state.bank.status(tran_uuid)
        if record is None:
            self.send_json({"found": False}, 404)
            return
        self.send_json({"found": True, **next(iter_masked([record]))})


class PublicKeyHandler(JsonHandler):
    def get(self) -> None:
        keys = self.state.keys
        self.send_json({PUB_KEY_VALUE: keys.public_key_value(), "bits": keys.bits})


class RotateKeyHandler(JsonHandler):
    """``POST ?bits=N``: a new key, so clients holding the old one get 81."""

    def check_xsrf_cookie(self) -> None:
        """Test control endpoint: no cookies."""

    def post(self) -> None:
        keys = self.state.keys
        bits = int(self.get_query_argument("bits", str(keys.bits)))
        keys.rotate(bits)
        log.info("simulator key rotated (%d bits)", bits)
        self.send_json({"bits": keys.bits, PUB_KEY_VALUE: keys.public_key_value()})
