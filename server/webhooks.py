"""Webhooks: a durable outbox in MongoDB, Standard Webhooks signing, retries with backoff.

- Every claim that ends ``succeeded``, ``failed`` or ``expired`` owes exactly one event. The
  claim's terminal update sets ``notify`` in the same write; the event (whose id is derived
  from the claim) is inserted next and ``notify`` cleared. A crash in between leaves
  ``notify`` set, and the sweep writes the event later: none lost, none doubled.
- An event is sent at once, then by the periodic sweep, each attempt under a lease on the
  event so several processes never send the same attempt.
- Deliveries are bounded in all and per provider, and share the pool fairly
  (``server/delivery_pool.py``), so endpoints that hang cannot hold up another provider's
  webhooks; a sweep never lets one provider's backlog crowd out the others' events.
- An endpoint's answer is its status line; its body is dropped as it arrives and not read
  past ``RESPONSE_BODY_LIMIT`` bytes, so an endpoint cannot make the service hold or
  download a large body.
- Endpoint health: when every delivery has failed for ``CASHOUT_WEBHOOK_DISABLE_AFTER``,
  or the endpoint answers ``410 Gone``, the endpoint is disabled; its events are kept,
  unsent, until the provider sets the endpoint again.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import logging
import random
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from server import metrics, validation
from server.background import Background
from server.batching import Batcher
from server.delivery_pool import DeliveryPool
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
from server.ratelimit import Limiter, enforce, parse_rate
from server.settings import Settings
from server.ssrf import PublicOnlyResolver
from server.store import Recorded, Store
from server.views import webhook_payload

log = logging.getLogger("cashout.webhooks")

SWEEP_BATCH = 200
MAX_RETRY_AFTER = 24 * 3600.0
RESPONSE_BODY_LIMIT = 4096  # bytes of an endpoint's answer we read at most (and never keep)
HOLD_RECHECK = 3600.0  # a held event is looked at again after this long, in case a
# re-enabling was lost (a crash between setting the endpoint and releasing its events)


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


class _Answer:
    """What is kept of an endpoint's answer: the status and ``Retry-After`` from its head.
    The body goes to ``body`` chunk by chunk and is dropped; the client stops reading it
    after ``RESPONSE_BODY_LIMIT`` bytes."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.retry_after: str | None = None

    def header(self, line: str) -> None:
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        elif line[:12].lower() == "retry-after:":
            self.retry_after = line[12:].strip()

    def body(self, chunk: bytes) -> None:
        pass


def _duration(seconds: float) -> str:
    """``432000`` -> ``"5 days"``: the disabling reason in words."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}" + ("" if n == 1 else "s")
    return f"{seconds:g} seconds"


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
            max_body_size=RESPONSE_BODY_LIMIT,
            max_buffer_size=1024 * 1024,
        )
        self.pool = DeliveryPool(settings.webhook_concurrency, settings.webhook_per_provider)
        self._in_flight: set[str] = set()
        self._queued: Counter[str] = Counter()  # deliveries waiting or running, by provider
        self._sends = Limiter("webhook_sends", parse_rate(settings.rate_limit_webhook_sends))
        self.background = Background("webhooks")
        batch = settings.db_batch
        self._writes: Batcher[WebhookEvent, bool] = Batcher(
            "events", self._write_events, max_batch=batch, observe=metrics.observe_batch
        )
        self._records: Batcher[Recorded, None] = Batcher(
            "deliveries", self._record, max_batch=batch, observe=metrics.observe_batch
        )

    # -- writing events --------------------------------------------------------------------

    def _lease(self) -> timedelta:
        """How long one delivery attempt keeps its event from other processes."""
        return timedelta(seconds=self.settings.webhook_timeout * 2 + 5)

    async def claim_finished(self, claim: Claim) -> None:
        """The terminal hook: write the claim's event, already leased to this process, and
        make its first attempt at once (no second write to take it)."""
        if claim.status not in NOTIFIED:
            return
        event = self._event(
            claim.provider,
            event_id_for(claim.uuid),
            claim.uuid,
            webhook_payload(claim),
            lease=self._lease(),
        )
        # Ours from now on: the sweep must not start a second runner for it, which would
        # find it leased and give up while this one waits for a delivery slot.
        self._in_flight.add(event.event_id)
        try:
            written = await self._writes.submit(event)
        except BaseException:
            self._in_flight.discard(event.event_id)
            raise
        if written:
            self.background.spawn(self._deliver(event.event_id, event.provider, event))
        else:
            self._in_flight.discard(event.event_id)

    async def _write_events(self, events: list[WebhookEvent]) -> list[bool]:
        """Group commit of the outbox: one insert for the batch's events, then one update
        that clears what their claims owed (an event already there counts as written)."""
        written = await self.store.events.insert_many(events)
        await self.store.claims.events_written([e.claim for e in events if e.claim])
        return written

    def _event(
        self,
        provider: str,
        event_id: str,
        claim: str | None,
        body: dict[str, Any],
        lease: timedelta | None = None,
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
            lease_until=now + lease if lease else None,
        )

    # -- sending ---------------------------------------------------------------------------

    async def deliver(self, event_id: str, provider_name: str) -> None:
        """One attempt for one event, if it is due and no one else holds it."""
        await self._deliver(event_id, provider_name, None)

    async def _deliver(self, event_id: str, provider_name: str, taken: WebhookEvent | None) -> None:
        """One attempt: take the event's lease first, unless this process wrote it leased
        (``taken``, already marked in flight by its writer)."""
        if taken is None:
            if event_id in self._in_flight:
                return
            self._in_flight.add(event_id)
        self._queued[provider_name] += 1
        try:
            async with self.pool.slot(provider_name):
                now = utcnow()
                event = taken
                if event is not None and event.lease_until is not None:
                    left = (event.lease_until - now).total_seconds()
                    if left < self.settings.webhook_timeout:  # waited too long for a slot
                        event = None
                if event is None:
                    event = await self.store.events.take(event_id, now, now + self._lease())
                    if event is None:
                        return
                provider = await self.providers.by_name(event.provider)
                if provider is None:
                    return
                if not provider.endpoint_enabled:
                    await self._hold(event, provider_name, now)
                    return
                attempt, retry_after = await self._send(provider, event)
                status, next_at = self._next(event, attempt, retry_after)
                await self._records.submit(Recorded(event, attempt, status, next_at))
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
                if event.endpoint in (None, provider.endpoint):  # not a notice to an old one
                    await self._note_health(provider, attempt)
        finally:
            self._in_flight.discard(event_id)
            self._queued[provider_name] -= 1
            if self._queued[provider_name] <= 0:
                del self._queued[provider_name]

    async def _record(self, records: list[Recorded]) -> list[None]:
        """Group commit of the delivery log: one bulk write for the batch's attempts."""
        recorded = await self.store.events.record_many(records)
        if recorded < len(records):
            log.warning(
                "%d of %d webhook attempts not recorded: their lease passed to another process",
                len(records) - recorded,
                len(records),
            )
        return [None] * len(records)

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
        answer = _Answer()
        request = HTTPRequest(
            event.endpoint or provider.endpoint,  # security notices name their endpoint
            method="POST",
            headers=headers,
            body=event.body,
            connect_timeout=self.settings.webhook_timeout,
            request_timeout=self.settings.webhook_timeout,
            follow_redirects=False,
            validate_cert=True,
            decompress_response=False,
            header_callback=answer.header,
            streaming_callback=answer.body,
        )
        started = time.monotonic()
        at = utcnow()
        error: str | None = None
        try:
            response = await self.client.fetch(request, raise_error=False)
            # The status line is the answer: a body cut short (over RESPONSE_BODY_LIMIT, or
            # still arriving at the timeout) does not change it.
            if answer.status is None and response.error is not None:
                error = _describe(response.error)
        except (TimeoutError, OSError, HTTPClientError) as exc:
            if answer.status is None:
                error = _describe(exc)
        latency = int((time.monotonic() - started) * 1000)
        retry_after = retry_after_seconds(answer.retry_after, time.time())
        return Delivery(at, answer.status, latency, error), retry_after

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
        for claim in await self.store.claims.owed_an_event(utcnow(), SWEEP_BATCH):
            await self.claim_finished(claim)
        await self.write_owed_notices()  # issue 11: security notices a crash left behind
        # A provider with its share queued already waits; the query leaves its events out
        # so that the batch goes to the others.
        cap = self.settings.webhook_per_provider
        busy = [p for p, n in self._queued.items() if n >= cap]
        planned: Counter[str] = Counter()
        for event_id, provider in await self.store.events.due_except(utcnow(), SWEEP_BATCH, busy):
            if event_id in self._in_flight or self._queued[provider] + planned[provider] >= cap:
                continue
            planned[provider] += 1
            self.background.spawn(self.deliver(event_id, provider))

    def start(self) -> None:
        self.background.every(self.settings.webhook_sweep_interval, self.sweep)

    async def stop(self, deadline: float = 10.0) -> None:
        await self.background.stop(deadline)
        self.client.close()

    # -- endpoint health -------------------------------------------------------------------

    async def _note_health(self, provider: Provider, attempt: Delivery) -> None:
        """After an attempt: a success clears the endpoint's failing mark; a failure sets
        it, or disables the endpoint once every delivery has failed for
        ``CASHOUT_WEBHOOK_DISABLE_AFTER``; a ``410 Gone`` disables it at once."""
        name, endpoint, code = provider.name, provider.endpoint, attempt.http_status
        if code is not None and 200 <= code < 300:
            self.pool.mark(name, failing=False)
            if provider.endpoint_failing_since is not None:
                await self.store.providers.endpoint_working(name, endpoint)
            return
        self.pool.mark(name, failing=True)
        if code == 410:
            await self._disable(provider, attempt.at, "gone", "the endpoint answered 410 Gone")
            return
        since = provider.endpoint_failing_since
        if since is None:
            await self.store.providers.endpoint_failing(name, endpoint, attempt.at)
        elif attempt.at - since >= timedelta(seconds=self.settings.webhook_disable_after):
            reason = f"every delivery failed for {_duration(self.settings.webhook_disable_after)}"
            await self._disable(provider, attempt.at, "failing", reason)

    async def _disable(self, provider: Provider, at: datetime, kind: str, reason: str) -> None:
        if await self.store.providers.disable_endpoint(
            provider.name, provider.endpoint, at, reason
        ):
            metrics.ENDPOINTS_DISABLED.labels(kind).inc()
            log.warning("webhook endpoint of %s disabled: %s", provider.name, reason)

    async def _hold(self, event: WebhookEvent, provider_name: str, now: datetime) -> None:
        """The endpoint is disabled: keep the event unsent, and look at it again later."""
        await self.store.events.hold(event, now, now + timedelta(seconds=HOLD_RECHECK))
        provider = await self.store.providers.get(provider_name)
        if provider is not None and provider.endpoint_enabled:  # set again meanwhile
            await self.store.events.release_held(provider_name, utcnow())

    # -- the provider's controls -----------------------------------------------------------

    async def list(
        self, provider: Provider, *, status: str | None, limit: str | None, after: str | None
    ) -> tuple[list[WebhookEvent], str | None]:
        """One page of the provider's events, newest first, and the cursor to the next."""
        request = validation.page_request(status, (s.value for s in EventStatus), limit, after)
        return await self.store.events.page(provider.name, request)

    async def redeliver(self, provider: Provider, event_id: str) -> WebhookEvent:
        enforce(self._sends, provider.name)
        event = await self.store.events.redeliver(provider.name, event_id, utcnow())
        if event is None:
            raise not_found("No such event.")
        self.background.spawn(self.deliver(event.event_id, provider.name))
        return event

    async def send_test(self, provider: Provider) -> WebhookEvent:
        enforce(self._sends, provider.name)
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
