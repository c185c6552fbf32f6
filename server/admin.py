"""Operator tasks (``python -m server admin TASK``) that run beside, or without, live servers.

They work through the same services as the server and coordinate with it only through the
database, so they are safe to run while servers are up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta

from server import logs
from server.crypto import key_id
from server.embedded_db import EmbeddedDatabase
from server.errors import ApiError
from server.models import rfc3339, utcnow
from server.rotation import reseal_all
from server.services import Services
from server.settings import Settings
from server.views import audit_view, provider_view

Task = Callable[[Services, argparse.Namespace], Awaitable[int]]


async def providers(services: Services, args: argparse.Namespace) -> int:
    found = await services.store.providers.all()
    for provider in found:
        view = provider_view(provider)
        if args.json:
            print(json.dumps(view))
        else:
            print(
                f"{view['name']:<32} {view['card']:<10} {view['created_at']}  "
                f"{view['status']:<9} {view['endpoint']}"
            )
    if not args.json:
        print(f"{len(found)} providers", file=sys.stderr)
    return 0


async def rotate_keys(services: Services, args: argparse.Namespace) -> int:
    report = await reseal_all(services.store, services.keys)
    print(
        f"re-encrypted {report.resealed} values to key {services.keys.primary!r}; "
        f"{report.remaining} still under other keys"
    )
    return 0 if report.remaining == 0 else 1


async def reconcile(services: Services, args: argparse.Namespace) -> int:
    looked = 0
    for _ in range(max(1, args.rounds)):
        looked += await services.payouts.reconcile_once(include_unknown=True)
        await services.payouts.background.stop(services.settings.grace + 5)
    figures = await services.store.figures(utcnow())
    print(
        f"looked at {looked} claims; {figures.claims_by_status['processing']} still "
        f"processing ({figures.reconcile_backlog} due)"
    )
    return 0


async def redeliver(services: Services, args: argparse.Namespace) -> int:
    if not (args.event or args.provider or args.since or args.until or args.status or args.all):
        print(
            "cashout: name events with --event, --provider, --since/--until or --status, "
            "or pass --all",
            file=sys.stderr,
        )
        return 2
    count = await services.store.events.redeliver_matching(
        utcnow(),
        event_id=args.event,
        provider=args.provider,
        since=args.since,
        until=args.until,
        status=args.status,
    )
    print(f"{count} events queued for delivery")
    return 0 if count or not args.event else 1


async def expire(services: Services, args: argparse.Namespace) -> int:
    total = 0
    while done := await services.payouts.expire_once():
        total += done
    print(f"expired {total} claims")
    return 0


# -- production controls (docs/DESIGN.md section 12) --------------------------------------


async def invite(services: Services, args: argparse.Namespace) -> int:
    """Print a single-use registration code (once; only its hash is kept)."""
    code, made = await services.invites.create(args.note, timedelta(seconds=args.expires_in))
    print(code)
    print(
        f"invite {made.invite_id} expires {rfc3339(made.expires_at)} "
        f"(registration is {services.settings.registration_mode})",
        file=sys.stderr,
    )
    return 0


async def suspend(services: Services, args: argparse.Namespace) -> int:
    done = await services.providers.suspend(args.name, args.reason)
    print(f"{args.name}: suspended" if done else f"{args.name}: was already suspended")
    return 0


async def resume(services: Services, args: argparse.Namespace) -> int:
    done = await services.providers.resume(args.name)
    print(f"{args.name}: resumed" if done else f"{args.name}: was not suspended")
    return 0


async def revoke_key(services: Services, args: argparse.Namespace) -> int:
    """A new API key (printed once) replaces the old one at once."""
    creds, updated = await services.providers.revoke_key(
        args.name, webhook_secret=args.webhook_secret
    )
    print(creds.api_key)
    if creds.webhook_secret:
        print(creds.webhook_secret)
    print(
        f"{args.name}: the old API key no longer works; new key {key_id(updated.key_hash)}"
        + ("; every older webhook secret is dropped" if creds.webhook_secret else ""),
        file=sys.stderr,
    )
    return 0


async def cancel_pending(services: Services, args: argparse.Namespace) -> int:
    await services.providers.get_existing(args.name)
    count = await services.claims.cancel_pending(args.name)
    print(f"{args.name}: cancelled {count} pending claims")
    return 0


async def audit(services: Services, args: argparse.Namespace) -> int:
    """The audit log, newest first: one provider's, the entries of no provider (card-check
    refusals at registration, invites made), or everyone's."""
    entries = await services.audit.recent(
        args.provider, everyone=args.provider is None and not args.unattached, limit=args.limit
    )
    for entry in entries:
        view = {"provider": entry.provider, **audit_view(entry)}
        print(json.dumps(view, ensure_ascii=False))
    return 0


TASKS: dict[str, Task] = {
    "providers": providers,
    "rotate-keys": rotate_keys,
    "reconcile": reconcile,
    "redeliver": redeliver,
    "expire": expire,
    "invite": invite,
    "suspend": suspend,
    "resume": resume,
    "revoke-key": revoke_key,
    "cancel-pending": cancel_pending,
    "audit": audit,
}


async def _run(settings: Settings, task: str, args: argparse.Namespace) -> int:
    embedded = None
    uri = settings.mongodb_uri
    if not uri:
        # Share the running server's embedded database, or start one for the task.
        embedded = EmbeddedDatabase(settings.data_dir, settings.embedded_db_port)
        uri = embedded.running_uri()
        if uri is None:
            uri = embedded.start()
        else:
            embedded = None
    services = await Services.open(settings, uri)
    try:
        return await TASKS[task](services, args)
    except ApiError as exc:  # e.g. no such provider: the service's own words
        print(f"cashout: {task}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        # Finish what the task started (a transfer it retried, a webhook it owes) before
        # leaving, or its leases would hold that work back from the servers for a while.
        await services.payouts.stop(settings.grace + 5)
        await services.webhooks.stop(settings.webhook_timeout + 5)
        await services.close()
        if embedded is not None:
            embedded.stop()


def run(task: str, settings: Settings, args: argparse.Namespace) -> int:
    logs.setup("warning", settings.log_format)
    try:
        return asyncio.run(_run(settings, task, args))
    except Exception as exc:
        print(logs.mask(f"cashout: {task} failed: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return 1
