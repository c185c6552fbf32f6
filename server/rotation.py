"""Re-encrypt every sealed value to the first key of the ring (``admin rotate-keys``)."""

from __future__ import annotations

from dataclasses import dataclass

from server.crypto import KeyRing, aad
from server.store import Store

MAX_PASSES = 5


@dataclass(frozen=True)
class RotationReport:
    resealed: int
    remaining: int


async def reseal_all(store: Store, keys: KeyRing) -> RotationReport:
    """Swap values one by one with compare-and-set, so a live server can keep writing;
    a value changed under us is simply picked up by the next pass."""
    resealed = 0
    for _ in range(MAX_PASSES):
        remaining = 0
        async for field in store.sealed.not_sealed_by(keys.primary):
            if field.value.kid == keys.primary:
                continue
            associated = aad(field.collection, field.doc_id, field.aad_field)
            fresh = keys.seal(keys.open(field.value, associated), associated)
            if await store.sealed.swap(field, fresh):
                resealed += 1
            else:
                remaining += 1
        if remaining == 0:
            return RotationReport(resealed, 0)
    return RotationReport(resealed, remaining)
