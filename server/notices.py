"""Security notifications (docs/DESIGN.md section 12): a ``provider.updated`` event for every
credential, endpoint, card or status change, to the endpoint in force before the change and
to the new one, so a thief who holds the API key cannot take over a provider silently.

The events are built here and written in the same update as the change they report
(``OwedEvent``, the first half of the outbox); ``WebhookSender.write_owed`` then moves them
to the outbox, and its sweep does it for any a crash left behind. They are signed and
retried like every webhook. They say what changed, never a secret.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from typing import Any

from server.models import Caller, OwedEvent, rfc3339, utcnow

EVENT_TYPE = "provider.updated"


def provider_updated(
    name: str,
    changes: list[dict[str, Any]],
    caller: Caller,
    old_endpoint: str | None,
    new_endpoint: str | None = None,
) -> list[OwedEvent]:
    """The events reporting ``changes`` (one per endpoint: the old one, and the new one when
    the endpoint changes). The body follows Standard Webhooks' ``type``/``timestamp``/``data``
    shape; claim events keep their noebs shape."""
    now = utcnow()
    body = json.dumps(
        {
            "type": EVENT_TYPE,
            "timestamp": rfc3339(now),
            "data": {
                "name": name,
                "changes": changes,
                "actor": caller.actor,
                "address": caller.address,
            },
        },
        separators=(",", ":"),
    )
    endpoints = dict.fromkeys(e for e in (old_endpoint, new_endpoint) if e)
    return [
        OwedEvent("evt_sec_" + uuidlib.uuid4().hex, endpoint, body, now) for endpoint in endpoints
    ]
