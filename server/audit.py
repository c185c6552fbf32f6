"""The audit log (docs/DESIGN.md section 12): every change a provider or the operator makes,
with when, who (an API key's id, never the key; or ``admin``), from which address and what
changed. Nothing secret goes in: callers pass masked cards and ids, and every text is masked
once more here as a last line of defence."""

from __future__ import annotations

import logging
import uuid as uuidlib
from typing import Any

from server import validation
from server.crypto import key_id
from server.logs import mask
from server.models import AuditEntry, Caller, Provider, utcnow
from server.store import Store

log = logging.getLogger("cashout.audit")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def api_caller(provider: Provider | None, address: str | None) -> Caller:
    """A caller of the API: its key's id (``anonymous`` before it has one) and address."""
    return Caller(key_id(provider.key_hash) if provider else "anonymous", address)


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(
        self, provider: str | None, caller: Caller, action: str, changes: dict[str, Any]
    ) -> AuditEntry:
        entry = AuditEntry(
            entry_id="aud_" + uuidlib.uuid4().hex,
            provider=provider,
            at=utcnow(),
            actor=caller.actor,
            address=caller.address,
            action=action,
            changes=_clean(changes),
        )
        await self.store.audit.insert(entry)
        log.info("audit %s %s by %s", action, provider or "-", caller.actor)
        return entry

    async def page(
        self, provider: Provider, *, limit: str | None, after: str | None
    ) -> tuple[list[AuditEntry], str | None]:
        """One page of the provider's entries, newest first, and the cursor to the next."""
        request = validation.page_request(None, (), limit, after)
        return await self.store.audit.page(provider.name, request)

    async def recent(
        self, provider: str | None, *, everyone: bool = False, limit: int = 50
    ) -> list[AuditEntry]:
        return await self.store.audit.recent(provider, everyone, limit)
