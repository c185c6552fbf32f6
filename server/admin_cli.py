"""The ``admin`` sub-commands and their options (kept apart from the tasks themselves so
parsing the command line imports nothing heavy)."""

from __future__ import annotations

import argparse
from datetime import datetime

EVENT_STATUSES = ("pending", "delivered", "failed")


def add_tasks(
    tasks: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """The admin sub-commands and their own options."""
    listing = tasks.add_parser("providers", parents=[common], help="list providers (cards masked)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    tasks.add_parser(
        "rotate-keys",
        parents=[common],
        help="re-encrypt every stored secret to the first key of CASHOUT_KEYS",
    )
    tasks.add_parser(
        "new-key", parents=[common], help="print a fresh kid:base64key entry for CASHOUT_KEYS"
    )
    reconcile = tasks.add_parser(
        "reconcile",
        parents=[common],
        help="ask the gateway now about transfers whose outcome is "
        "unknown or whose lease ran out, and settle them",
    )
    reconcile.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="repeat N times (a lost transfer is retried in a new round)",
    )
    redeliver = tasks.add_parser(
        "redeliver",
        parents=[common],
        help="send webhook events again (running servers deliver them)",
        description="Pick events by id, provider and/or creation time; at least one filter, "
        "or --all.",
    )
    redeliver.add_argument("--event", metavar="EVENT_ID")
    redeliver.add_argument("--provider", metavar="NAME")
    redeliver.add_argument(
        "--since",
        type=_when,
        metavar="TIME",
        help="created at or after (ISO 8601, e.g. 2026-11-23T10:00Z)",
    )
    redeliver.add_argument("--until", type=_when, metavar="TIME", help="created before")
    redeliver.add_argument("--status", choices=EVENT_STATUSES, help="only events with this status")
    redeliver.add_argument("--all", action="store_true", help="no filter: every event")
    tasks.add_parser("expire", parents=[common], help="expire overdue pending claims now")

    # Production controls (docs/DESIGN.md section 12).
    invite = tasks.add_parser(
        "invite",
        parents=[common],
        help="print a single-use registration code (needed when CASHOUT_REGISTRATION=invite)",
    )
    invite.add_argument("--note", metavar="TEXT", help="who the code is for (kept, not secret)")
    invite.add_argument(
        "--expires-in",
        type=_positive_int,
        default=7 * 24 * 3600,
        metavar="SECONDS",
        help="lifetime of the code (default 7 days)",
    )
    suspend = tasks.add_parser(
        "suspend",
        parents=[common],
        help="stop a provider's new claims and payouts (reads, webhooks and transfers in "
        "flight go on)",
    )
    suspend.add_argument("name", metavar="NAME")
    suspend.add_argument("--reason", required=True, metavar="TEXT", help="shown to the provider")
    resume = tasks.add_parser("resume", parents=[common], help="undo suspend")
    resume.add_argument("name", metavar="NAME")
    revoke = tasks.add_parser(
        "revoke-key",
        parents=[common],
        help="replace a provider's API key at once and print the new one (once)",
    )
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument(
        "--webhook-secret",
        action="store_true",
        help="also replace the webhook secret, dropping every older one at once",
    )
    cancel = tasks.add_parser(
        "cancel-pending", parents=[common], help="cancel every pending claim of a provider"
    )
    cancel.add_argument("name", metavar="NAME")
    audit = tasks.add_parser(
        "audit", parents=[common], help="print the audit log, newest first, one JSON per line"
    )
    audit.add_argument("--provider", metavar="NAME", help="only this provider's entries")
    audit.add_argument(
        "--unattached",
        action="store_true",
        help="only entries of no provider (refused card checks at registration, invites)",
    )
    audit.add_argument("--limit", type=_positive_int, default=50, metavar="N")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone (add Z for UTC)")
    return value
