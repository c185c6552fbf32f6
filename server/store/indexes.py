"""Every index the store's queries rely on, created at start-up (idempotent)."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING

# (collection, keys, options): one entry for every query the store makes.
INDEXES: tuple[tuple[str, list[tuple[str, int]], dict[str, Any]], ...] = (
    ("providers", [("key_hash", ASCENDING)], {"unique": True, "name": "key_hash_unique"}),
    (
        "claims",
        [("provider", ASCENDING), ("ref", ASCENDING)],
        {"unique": True, "name": "provider_ref_unique"},
    ),
    (
        "claims",
        [("provider", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
        {"name": "provider_newest"},
    ),
    (
        "claims",
        [
            ("provider", ASCENDING),
            ("status", ASCENDING),
            ("created_at", DESCENDING),
            ("_id", DESCENDING),
        ],
        {"name": "provider_status_newest"},
    ),
    # One index for everything the service must do next to a claim (lifecycle.Transition.
    # next_at): expire it (pending), reconcile it (processing), write its webhook event
    # (finished). SecantusDB rewrites every index of a document on each update, so each
    # index on claims costs every write on the pay path: keep them few.
    ("claims", [("status", ASCENDING), ("next_at", ASCENDING)], {"name": "status_next"}),
    ("events", [("status", ASCENDING), ("next_attempt_at", ASCENDING)], {"name": "due"}),
    (
        "events",
        [("provider", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
        {"name": "provider_newest"},
    ),
    (
        "events",
        [
            ("provider", ASCENDING),
            ("status", ASCENDING),
            ("created_at", DESCENDING),
            ("_id", DESCENDING),
        ],
        {"name": "provider_status_newest"},
    ),
    # Production controls (docs/DESIGN.md section 12).
    ("providers", [("owed_events.id", ASCENDING)], {"name": "owed_events"}),
    (
        "audit",
        [("provider", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
        {"name": "provider_newest"},
    ),
    ("audit", [("created_at", DESCENDING), ("_id", DESCENDING)], {"name": "newest"}),
    ("card_holds", [("claim", ASCENDING), ("released", ASCENDING)], {"name": "claim_live"}),
)
