"""Prometheus metrics. Counters and histograms live in the process that counts them
(multiprocess mode aggregates them across ``--processes``); the figures that describe the
whole system (claims by status, reconciliation backlog, outbox lag) are read from MongoDB
at scrape time, so every process reports the same truth."""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from server.models import SystemFigures

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "cashout_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram("cashout_http_request_duration_seconds", "Time to answer a request", ["route"])
PAYMENTS = Counter(
    "cashout_payment_attempts_total",
    "Gateway calls for transfers and status queries, by outcome and code",
    ["gateway", "call", "outcome", "code"],
)
PAYMENT_LATENCY = Histogram(
    "cashout_payment_duration_seconds",
    "Time a gateway call took",
    ["gateway", "call"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
WEBHOOKS = Counter(
    "cashout_webhook_attempts_total",
    "Webhook delivery attempts by result (delivered, retry, failed)",
    ["result"],
)
BATCH_SIZE = Histogram(
    "cashout_db_batch_size",
    "Requests sharing one database round trip (group commit)",
    ["batch"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
RATE_LIMITED = Counter(
    "cashout_rate_limited_total",
    "Requests refused with 429 by a rate limit (provider, register, card_check, claim, "
    "webhook_sends)",
    ["limit"],
)
ENDPOINTS_DISABLED = Counter(
    "cashout_webhook_endpoints_disabled_total",
    "Webhook endpoints disabled, by reason (gone: answered 410; failing: every delivery failed "
    "for CASHOUT_WEBHOOK_DISABLE_AFTER)",
    ["reason"],
)

# Production controls (docs/DESIGN.md section 12).
CARD_CHECKS = Counter(
    "cashout_card_checks_total",
    "Paying-card checks at registration and card changes, by result (verified, rejected, "
    "locked: refused without asking the switch, unavailable)",
    ["result"],
)
CARD_CHECK_LOCKOUTS = Counter(
    "cashout_card_check_lockouts_total",
    "Card-check lockouts begun, by what is locked out (card, address, provider)",
    ["scope"],
)
CARD_LIMIT_REFUSALS = Counter(
    "cashout_card_limit_refusals_total",
    "Claim submissions refused by a card's daily limit (receiving, paying)",
    ["card"],
)


def observe_batch(name: str, size: int) -> None:
    BATCH_SIZE.labels(name).observe(size)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(route).observe(seconds)


def observe_payment(
    gateway: str, call: str, outcome: str, code: int | None, seconds: float
) -> None:
    PAYMENTS.labels(gateway, call, outcome, "none" if code is None else str(code)).inc()
    PAYMENT_LATENCY.labels(gateway, call).observe(seconds)


class _Figures:
    def __init__(self, figures: SystemFigures):
        self.figures = figures

    def collect(self):  # type: ignore[no-untyped-def]
        f = self.figures
        claims = GaugeMetricFamily("cashout_claims", "Claims by status", labels=["status"])
        for status, count in sorted(f.claims_by_status.items()):
            claims.add_metric([status], count)
        yield claims
        yield GaugeMetricFamily(
            "cashout_reconcile_backlog",
            "Processing claims whose attempt lease has run out",
            value=f.reconcile_backlog,
        )
        events = GaugeMetricFamily(
            "cashout_webhook_events", "Outbox events by status", labels=["status"]
        )
        for status, count in sorted(f.events_by_status.items()):
            events.add_metric([status], count)
        yield events
        yield GaugeMetricFamily(
            "cashout_webhook_outbox_lag_seconds",
            "Age of the oldest undelivered webhook event",
            value=f.outbox_lag_seconds,
        )


def render(figures: SystemFigures) -> bytes:
    """The exposition text: this process's (or every process's) counters, then the
    system figures."""
    if os.environ.get(MULTIPROC_ENV):
        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)  # type: ignore[no-untyped-call]
        text = generate_latest(counted)
    else:
        from prometheus_client import REGISTRY

        text = generate_latest(REGISTRY)
    system = CollectorRegistry()
    system.register(_Figures(figures))
    return text + generate_latest(system)
