"""A gateway wrapper that times every call and reports it to an observer (metrics).

It lives with the gateways so the engine stays unaware of metrics, and knows nothing of
Prometheus itself: the server passes the observer in.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateways.base import Card, Gateway, TransferRequest, TransferResult, VerifyResult

Observer = Callable[[str, str, str, "int | None", float], None]


class InstrumentedGateway(Gateway):
    def __init__(self, inner: Gateway, observe: Observer):
        self.inner = inner
        self.label = inner.name
        self.observe = observe

    async def transfer(self, request: TransferRequest) -> TransferResult:
        started = time.monotonic()
        result = await self.inner.transfer(request)
        self.observe(
            self.label, "transfer", str(result.outcome), result.code, time.monotonic() - started
        )
        return result

    async def status(self, tran_uuid: str) -> TransferResult:
        started = time.monotonic()
        result = await self.inner.status(tran_uuid)
        self.observe(
            self.label, "status", str(result.outcome), result.code, time.monotonic() - started
        )
        return result

    async def verify_card(self, card: Card) -> VerifyResult | None:
        started = time.monotonic()
        result = await self.inner.verify_card(card)
        if result is not None:
            self.observe(
                self.label,
                "verify",
                "ok" if result.ok else "rejected",
                result.code,
                time.monotonic() - started,
            )
        return result

    async def is_alive(self) -> bool | None:
        return await self.inner.is_alive()

    async def close(self) -> None:
        await self.inner.close()
