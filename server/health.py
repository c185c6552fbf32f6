"""What the operator's endpoints report: readiness and the system's figures."""

from __future__ import annotations

from dataclasses import dataclass

from gateways.base import Gateway
from server.models import SystemFigures, utcnow
from server.store import Store


@dataclass(frozen=True)
class Readiness:
    database: bool
    gateway: bool | None  # None: this gateway cannot tell

    @property
    def ready(self) -> bool:
        return self.database and self.gateway is not False


class Health:
    def __init__(self, store: Store, gateway: Gateway) -> None:
        self.store = store
        self.gateway = gateway

    async def readiness(self) -> Readiness:
        return Readiness(await self.store.ping(), await self.gateway.is_alive())

    async def figures(self) -> SystemFigures:
        return await self.store.figures(utcnow())
