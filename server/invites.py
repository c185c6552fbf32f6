"""Registration by invitation (``CASHOUT_REGISTRATION=invite``, the production default).

The operator makes a single-use code with ``python -m server admin invite``; only its hash is
stored. A registration must carry it; the code is taken (one compare-and-set, so of two
registrations racing with one code exactly one wins) only once everything else about the
registration has been checked, and given back if the registration fails after all.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from server.audit import AuditLog
from server.errors import ApiError
from server.models import ADMIN, Caller, Invite, rfc3339, utcnow
from server.settings import Settings
from server.store import Store

CODE_PREFIX = "invite_"
DEFAULT_LIFETIME = timedelta(days=7)


def hash_code(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def required() -> ApiError:
    return ApiError(
        403,
        "invite_required",
        'Registration is by invitation: send the invite code you were given as "invite".',
        [{"field": "invite", "problem": "is required"}],
    )


def invalid() -> ApiError:
    return ApiError(
        403,
        "invite_invalid",
        "The invite code is not valid: it is unknown, already used or expired.",
        [{"field": "invite", "problem": "is not valid"}],
    )


class Invites:
    def __init__(self, settings: Settings, store: Store, audit: AuditLog) -> None:
        self.settings = settings
        self.store = store
        self.audit = audit

    @property
    def required(self) -> bool:
        return self.settings.registration_mode == "invite"

    async def create(
        self,
        note: str | None = None,
        lifetime: timedelta = DEFAULT_LIFETIME,
        caller: Caller = ADMIN,
    ) -> tuple[str, Invite]:
        """A new code (shown once) and what is stored of it."""
        code = CODE_PREFIX + secrets.token_urlsafe(24)
        now = utcnow()
        invite = Invite(hash_code(code), note, now, now + lifetime)
        await self.store.invites.insert(invite)
        await self.audit.record(
            None,
            caller,
            "invite.created",
            {"invite": invite.invite_id, "note": note, "expires_at": rfc3339(invite.expires_at)},
        )
        return code, invite

    async def check(self, code: Any) -> Invite | None:
        """The invite a registration names, when invites are required (403 otherwise);
        None when registration is open."""
        if not self.required:
            return None
        if not code:
            raise required()
        invite = await self.store.invites.get(hash_code(str(code)))
        if invite is None or invite.used_by is not None or invite.expires_at <= utcnow():
            raise invalid()
        return invite

    async def take(self, invite: Invite, name: str) -> Invite:
        taken = await self.store.invites.take(invite.code_hash, name, utcnow())
        if taken is None:  # used (or expired) since it was checked
            raise invalid()
        return taken

    async def give_back(self, invite: Invite, name: str) -> None:
        await self.store.invites.give_back(invite.code_hash, name)
