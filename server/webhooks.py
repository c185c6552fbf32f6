"""Webhooks: a durable outbox in MongoDB, Standard Webhooks signing, retries with backoff.

- Every claim that ends ``succeeded``, ``failed`` or ``expired`` owes exactly one event. The
  claim's terminal update sets ``notify`` in the same write; the event (whose id is derived
  from the claim) is inserted next and ``notify`` cleared. A crash in between leaves
  ``notify`` set, and the sweep writes the event later: none lost, none doubled.
- An event is sent at once, then by the periodic sweep, each attempt under a lease on the
  event so several processes never send the same attempt.
- Deliveries are bounded in all and per provider, so one slow endpoint cannot hold up
  another provider's webhooks.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import time
import uuid as uuidlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.netutil import DefaultExecutorResolver, Resolver

from server import metrics, validation
from server.background import Background
from server.errors import ApiError, not_found
from server.lifecycle import NOTIFIED
from server.models import (
    Claim,
    Delivery,
    EventStatus,
    OwedEvent,
    Provider,
    WebhookEvent,
    rfc3339,
    utcnow,
)
from server.providers import ProviderService
from server.settings import Settings
from server.store import Store
from server.views import webhook_payload

log = logging.getLogger("cashout.webhooks")

SWEEP_BATCH = 200
MAX_RETRY_AFTER = 24 * 3600.0


def event_id_for(claim_uuid: str) -> str:
    """One id per claim, so a second insert of its event is refused by the unique _id."""
    return "evt_" + claim_uuid.replace("-", "")


def sign(secrets: list[str], msg_id: str, timestamp: int, body: str) -> str:
    """``webhook-signature``: one ``v1,<base64 HMAC-SHA256>`` per live secret."""
    to_sign = f"{msg_id}.{timestamp}.{body}".encode()
    signatures = []
    for secret in secrets:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        digest = hmac.new(key, to_sign, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(digest).decode())
    return " ".join(signatures)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)


class PublicOnlyResolver(Resolver):
    """Resolves like the default resolver but drops loopback, private, link-local and
    multicast addresses, at connect time, so DNS rebinding cannot reach the inside."""

    def initialize(self) -> None:
        self._inner = DefaultExecutorResolver()

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        results = await self._inner.resolve(host, port, family)
        public = [(fam, addr) for fam, addr in results if is_public_address(addr[0])]
        if not public:
            raise OSError(f"{host} resolves only to non-public addresses")
        return public


def is_public_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return ip.is_global and not ip.is_multicast


class WebhookSender:
    def __init__(self, settings: Settings, store: Store, providers: ProviderService):
        self.settings = settings
        self.store = store
        self.providers = providers
        self.schedule = settings.retry_schedule
        self.client = AsyncHTTPClient(
            force_instance=True,
            max_clients=settings.webhook_concurrency,
            resolver=PublicOnlyResolver() if settings.production else None,
        )
        self._all = asyncio.Semaphore(settings.webhook_concurrency)
        self._per_provider: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(settings.webhook_per_provider)
        )
        self._in_flight: set[str] = set()
        self.background = Background("webhooks")

    # -- writing events --------------------------------------------------------------------

    async def claim_finished(self, claim: Claim) -> None:
        """The payouts engine's terminal hook: write the claim's event, then send it."""
        if claim.status not in NOTIFIED:
            return
        event = self._event(
            claim.provider, event_id_for(claim.uuid), claim.uuid, webhook_payload(claim)
        )
        await self.store.events.insert(event)
        await self.store.claims.event_written(claim.uuid)
        self.background.spawn(self.deliver(event.event_id, claim.provider))

    def _event(
        self, provider: str, event_id: str, claim: str | None, body: dict[str, Any]
    ) -> WebhookEvent:
        now = utcnow()
        return WebhookEvent(
            event_id=event_id,
            provider=provider,
            claim=claim,
            body=json.dumps(body, separators=(",", ":")),
            status=EventStatus.PENDING,
            created_at=now,
            next_attempt_at=now,
            tries=0,
        )

    # -- sending ---------------------------------------------------------------------------

    async def deliver(self, event_id: str, provider_name: str) -> None:
        """One attempt for one event, if it is due and no one else holds it."""
        if event_id in self._in_flight:
            return
        self._in_flight.add(event_id)
        try:
            async with self._per_provider[provider_name], self._all:
                now = utcnow()
                hold = timedelta(seconds=self.settings.webhook_timeout * 2 + 5)
                event = await self.store.events.take(event_id, now, now + hold)
                if event is None:
                    return
                provider = await self.store.providers.get(provider_name)
                if provider is None:
                    return
                attempt, retry_after = await self._send(provider, event)
                status, next_at = self._next(event, attempt, retry_after)
                if not await self.store.events.record_delivery(event, attempt, status, next_at):
                    log.warning("event %s: lease lost before the attempt was recorded", event_id)
                metrics.WEBHOOKS.labels(
                    "retry" if status is EventStatus.PENDING else str(status)
                ).inc()
                log.info(
                    "webhook %s attempt %d: %s %s",
                    event_id,
                    event.tries + 1,
                    attempt.http_status or "-",
                    status,
                )
        finally:
            self._in_flight.discard(event_id)

    async def _send(self, provider: Provider, event: WebhookEvent) -> tuple[Delivery, float | None]:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "cashout-webhooks/1",
            "webhook-id": event.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(
                self.providers.open_secrets(provider), event.event_id, timestamp, event.body
            ),
        }
        request = HTTPRequest(
            event.endpoint or provider.endpoint,  # security notices name their endpoint
            method="POST",
            headers=headers,
            body=event.body,
            connect_timeout=self.settings.webhook_timeout,
            request_timeout=self.settings.webhook_timeout,
            follow_redirects=False,
            validate_cert=True,
        )
        started = time.monotonic()
        at = utcnow()
        status: int | None = None
        error: str | None = None
        retry_after = None
        try:
            response = await self.client.fetch(request, raise_error=False)
            status = response.code if response.code != 599 else None
            if response.error is not None and status is None:
                error = _describe(response.error)
            retry_after = retry_after_seconds(response.headers.get("Retry-After"), time.time())
        except (TimeoutError, OSError, HTTPClientError) as exc:
            error = _describe(exc)
        latency = int((time.monotonic() - started) * 1000)
        return Delivery(at, status, latency, error), retry_after

    def _next(
        self, event: WebhookEvent, attempt: Delivery, retry_after: float | None
    ) -> tuple[EventStatus, datetime | None]:
        """2xx delivers; 410 stops; anything else waits for the next slot of the schedule
        (with jitter, and no sooner than Retry-After), until the schedule runs out."""
        code = attempt.http_status
        if code is not None and 200 <= code < 300:
            return EventStatus.DELIVERED, None
        if code == 410 or event.tries >= len(self.schedule):
            return EventStatus.FAILED, None
        delay = self.schedule[event.tries] * random.uniform(0.8, 1.2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return EventStatus.PENDING, attempt.at + timedelta(seconds=delay)

    # -- the sweep -------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Write events owed by finished claims, then send whatever is due."""
        for claim in await self.store.claims.owed_an_event(SWEEP_BATCH):
            await self.claim_finished(claim)
        await self.write_owed_notices()  # issue 11: security notices a crash left behind
        for event_id, provider in await self.store.events.due(utcnow(), SWEEP_BATCH):
            if event_id not in self._in_flight:
                self.background.spawn(self.deliver(event_id, provider))

    def start(self) -> None:
        self.background.every(self.settings.webhook_sweep_interval, self.sweep)

    async def stop(self, deadline: float = 10.0) -> None:
        await self.background.stop(deadline)
        self.client.close()

    # -- the provider's controls -----------------------------------------------------------

    async def list(
        self, provider: Provider, *, status: str | None, limit: str | None, after: str | None
    ) -> tuple[list[WebhookEvent], str | None]:
        """One page of the provider's events, newest first, and the cursor to the next."""
        request = validation.page_request(status, (s.value for s in EventStatus), limit, after)
        return await self.store.events.page(provider.name, request)

    async def redeliver(self, provider: Provider, event_id: str) -> WebhookEvent:
        event = await self.store.events.redeliver(provider.name, event_id, utcnow())
        if event is None:
            raise not_found("No such event.")
        self.background.spawn(self.deliver(event.event_id, provider.name))
        return event

    async def send_test(self, provider: Provider) -> WebhookEvent:
        event_id = "evt_test_" + uuidlib.uuid4().hex
        body = {
            "name": provider.name,
            "id": "test",
            "uuid": str(uuidlib.uuid4()),
            "status": "test",
            "details": {
                "response": "Test event",
                "code": 0,
                "time": rfc3339(utcnow()),
                "amount": 0,
            },
        }
        event = self._event(provider.name, event_id, None, body)
        if not await self.store.events.insert(event):  # pragma: no cover - random id
            raise ApiError(409, "conflict", "Try again.")
        self.background.spawn(self.deliver(event_id, provider.name))
        return event

    # -- security notices (docs/DESIGN.md section 12, server/notices.py) ------------------

    async def write_owed(self, provider_name: str, owed: Sequence[OwedEvent]) -> None:
        """Move ``provider.updated`` events from the provider's document (where the change
        wrote them) to the outbox, then send them. Idempotent: the ids are fixed."""
        for notice in owed:
            event = WebhookEvent(
                event_id=notice.event_id,
                provider=provider_name,
                claim=None,
                body=notice.body,
                status=EventStatus.PENDING,
                created_at=notice.created_at,
                next_attempt_at=notice.created_at,
                tries=0,
                endpoint=notice.endpoint,
            )
            await self.store.events.insert(event)
            await self.store.providers.event_written(provider_name, notice.event_id)
            self.background.spawn(self.deliver(event.event_id, provider_name))

    async def write_owed_notices(self) -> None:
        for name, owed in await self.store.providers.owing_events(SWEEP_BATCH):
            await self.write_owed(name, owed)


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a network failure."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]
