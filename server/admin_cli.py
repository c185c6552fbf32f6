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


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone (add Z for UTC)")
    return value
