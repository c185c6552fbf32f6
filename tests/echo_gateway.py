"""A badly behaved switch for tests: the mock gateway, but its messages quote the card numbers
(some switches echo fields back). Loaded by dotted path, as any third-party gateway would be."""

from __future__ import annotations

from dataclasses import replace

from gateways.base import Card, TransferRequest, TransferResult, VerifyResult
from gateways.mock import MockGateway


class EchoingGateway(MockGateway):
    name = "echo"

    async def transfer(self, request: TransferRequest) -> TransferResult:
        result = await super().transfer(request)
        return replace(
            result, message=f"{result.message} from {request.from_card.pan} to {request.to_pan}"
        )

    async def verify_card(self, card: Card) -> VerifyResult | None:
        result = await super().verify_card(card)
        if card.ipin == "0000" and result is not None:  # a rejection that quotes the card
            return VerifyResult(False, 14, f"card {card.pan} refused")
        return result
