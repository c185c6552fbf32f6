"""One settings object, built once at start-up from flags and ``CASHOUT_*`` variables.

Flags win over the environment. ``validate`` returns every problem at once, one line each,
so an operator fixes a broken deployment in one go rather than one restart per mistake.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

ENVIRONMENTS = ("sandbox", "production")


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its variable, how to parse it and what it means (for --help)."""

    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str

    @property
    def env(self) -> str:
        return "CASHOUT_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def _optional(text: str) -> str | None:
    return text or None


OPTIONS: tuple[Option, ...] = (
    Option("env", "sandbox", str, "sandbox or production"),
    Option("host", "127.0.0.1", str, "listen address"),
    Option("port", 8080, int, "listen port (0 picks a free one)"),
    Option("public_url", "http://localhost:8080", str, "base URL used in claim links"),
    Option("data_dir", "./var", str, "embedded database files and the sandbox key file"),
    Option("mongodb_uri", None, _optional, "external MongoDB; unset starts the embedded one"),
    Option("db_name", "cashout", str, "database name"),
    Option("gateway", "mock", str, "mock, ebs, or package.module:Class"),
    Option("keys", None, _optional, "data-encryption key ring kid:base64key[;kid:base64key]"),
    Option("ebs_url", None, _optional, "EBS consumer API base URL, ending with /"),
    Option("ebs_application_id", None, _optional, "applicationId issued by EBS"),
    Option("ebs_public_key", None, _optional, "EBS RSA key, base64 DER; unset = getPublicKey"),
    Option("ebs_ca_file", None, _optional, "CA bundle that verifies the EBS TLS certificate"),
    Option("ebs_connect_timeout", 10.0, float, "seconds to connect to EBS"),
    Option("ebs_request_timeout", 60.0, float, "seconds to wait for an EBS reply"),
    Option("ebs_datetime_format", "%d%m%y%H%M%S", str, "strftime format of tranDateTime"),
    Option("ebs_timezone", "Africa/Khartoum", str, "zone of tranDateTime"),
    Option("mock_latency_ms", 0, int, "delay the mock gateway adds to each transfer"),
    Option("max_claim_amount", 100_000, int, "largest amount of one claim"),
    Option("daily_limit", 1_000_000, int, "largest total a provider may generate per UTC day"),
    Option("claim_ttl", 7 * 24 * 3600, int, "default seconds before a pending claim expires"),
    Option("max_claim_ttl", 30 * 24 * 3600, int, "largest expires_in a provider may ask for"),
    Option("max_body_bytes", 64 * 1024, int, "largest request body accepted"),
    Option("reconcile_interval", 30.0, float, "seconds between reconciliation and expiry runs"),
    Option(
        "attempt_lease",
        300.0,
        float,
        "seconds a transfer attempt may run before reconciliation asks the gateway",
    ),
    Option(
        "settle_grace",
        60.0,
        float,
        "seconds after an attempt started before 'no such transaction' is believed",
    ),
    Option("webhook_timeout", 10.0, float, "seconds a webhook endpoint has to answer"),
    Option(
        "webhook_retry_schedule",
        "5,300,1800,7200,18000,36000,36000,86400,86400",
        str,
        "seconds between webhook attempts (comma-separated); then the event fails",
    ),
    Option("webhook_sweep_interval", 2.0, float, "seconds between webhook outbox sweeps"),
    Option("webhook_concurrency", 32, int, "webhook deliveries in flight at once, in all"),
    Option("webhook_per_provider", 4, int, "webhook deliveries in flight for one provider"),
    Option("embedded_db_port", 0, int, "port of the embedded database (0 picks a free one)"),
    Option("db_timeout_ms", 5000, int, "how long a database call may wait for the server"),
    Option(
        "db_batch",
        256,
        int,
        "most requests that share one database round trip (group commit); 1 = none",
    ),
    Option("log_level", "info", str, "debug, info, warning or error"),
    Option("log_format", "text", str, "text or json (one JSON object per line)"),
    Option("processes", 1, int, "server processes sharing the port (reuse_port)"),
    Option(
        "shutdown_timeout",
        20.0,
        float,
        "seconds SIGTERM waits for in-flight requests and transfers",
    ),
)


@dataclass(frozen=True)
class Settings:
    env: str = "sandbox"
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://localhost:8080"
    data_dir: str = "./var"
    mongodb_uri: str | None = None
    db_name: str = "cashout"
    gateway: str = "mock"
    keys: str | None = field(default=None, repr=False)
    ebs_url: str | None = None
    ebs_application_id: str | None = None
    ebs_public_key: str | None = None
    ebs_ca_file: str | None = None
    ebs_connect_timeout: float = 10.0
    ebs_request_timeout: float = 60.0
    ebs_datetime_format: str = "%d%m%y%H%M%S"
    ebs_timezone: str = "Africa/Khartoum"
    mock_latency_ms: int = 0
    max_claim_amount: int = 100_000
    daily_limit: int = 1_000_000
    claim_ttl: int = 7 * 24 * 3600
    max_claim_ttl: int = 30 * 24 * 3600
    max_body_bytes: int = 64 * 1024
    reconcile_interval: float = 30.0
    attempt_lease: float = 300.0
    settle_grace: float = 60.0
    webhook_timeout: float = 10.0
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000,86400,86400"
    webhook_sweep_interval: float = 2.0
    webhook_concurrency: int = 32
    webhook_per_provider: int = 4
    embedded_db_port: int = 0
    db_timeout_ms: int = 5000
    db_batch: int = 256
    log_level: str = "info"
    log_format: str = "text"
    processes: int = 1
    shutdown_timeout: float = 20.0

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def key_prefix(self) -> str:
        """API keys say which mode they belong to, so a test key never works live."""
        return "ck_live_" if self.production else "ck_test_"

    def public_base(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def retry_schedule(self) -> list[float]:
        return [float(s) for s in self.webhook_retry_schedule.split(",") if s.strip()]


class SettingsError(Exception):
    """Raised with every problem found, one per line."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for opt in OPTIONS:
        parser.add_argument(
            opt.flag,
            dest=opt.name,
            default=argparse.SUPPRESS,
            metavar=opt.name.upper(),
            help=f"{opt.help} (${opt.env}, default {opt.default!r})".replace("%", "%%"),
        )


def load(
    args: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings from parsed flags and the environment, or raise SettingsError."""
    environ = os.environ if environ is None else environ
    args = args or {}
    values: dict[str, Any] = {}
    problems: list[str] = []
    for opt in OPTIONS:
        raw = args.get(opt.name)
        source = opt.flag
        if raw is None:
            raw = environ.get(opt.env)
            source = opt.env
        if raw is None:
            values[opt.name] = opt.default
            continue
        try:
            values[opt.name] = opt.parse(raw)
        except ValueError:
            problems.append(f"{source}: {raw!r} is not a valid {opt.parse.__name__}")
    if problems:
        raise SettingsError(problems)
    settings = Settings(**values)
    problems = validate(settings)
    if problems:
        raise SettingsError(problems)
    return settings


def replace(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)


def _is_private_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return not addr.is_global


def validate(s: Settings) -> list[str]:
    """Every reason these settings cannot run, as one line each (empty when fine)."""
    p: list[str] = []
    if s.env not in ENVIRONMENTS:
        p.append(f"CASHOUT_ENV: {s.env!r} must be 'sandbox' or 'production'")
    if not 0 <= s.port <= 65535:
        p.append(f"CASHOUT_PORT: {s.port} is not a TCP port")
    if not 0 <= s.embedded_db_port <= 65535:
        p.append(f"CASHOUT_EMBEDDED_DB_PORT: {s.embedded_db_port} is not a TCP port")
    url = urlsplit(s.public_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        p.append(f"CASHOUT_PUBLIC_URL: {s.public_url!r} must be an absolute http(s) URL")
    for name in (
        "max_claim_amount",
        "daily_limit",
        "claim_ttl",
        "max_claim_ttl",
        "max_body_bytes",
        "db_timeout_ms",
    ):
        if getattr(s, name) < 1:
            p.append(f"CASHOUT_{name.upper()}: must be at least 1")
    if not 1 <= s.db_batch <= 1000:
        p.append("CASHOUT_DB_BATCH: must be from 1 to 1000")
    if s.mock_latency_ms < 0:
        p.append("CASHOUT_MOCK_LATENCY_MS: must not be negative")
    if s.claim_ttl > s.max_claim_ttl:
        p.append("CASHOUT_CLAIM_TTL: must not exceed CASHOUT_MAX_CLAIM_TTL")
    if s.daily_limit < s.max_claim_amount:
        p.append("CASHOUT_DAILY_LIMIT: must be at least CASHOUT_MAX_CLAIM_AMOUNT")
    if s.log_format not in ("text", "json"):
        p.append(f"CASHOUT_LOG_FORMAT: {s.log_format!r} must be text or json")
    if not 1 <= s.processes <= 64:
        p.append("CASHOUT_PROCESSES: must be from 1 to 64")
    elif s.processes > 1 and s.port == 0:
        p.append("CASHOUT_PORT: several processes need a fixed port to share")
    if s.shutdown_timeout < 0:
        p.append("CASHOUT_SHUTDOWN_TIMEOUT: must not be negative")
    if s.log_level.lower() not in ("debug", "info", "warning", "error"):
        p.append(f"CASHOUT_LOG_LEVEL: {s.log_level!r} must be debug, info, warning or error")
    if s.keys is not None:
        from server.crypto import KeyRing  # local import: crypto needs no settings

        try:
            KeyRing.parse(s.keys)
        except ValueError as exc:
            p.append(f"CASHOUT_KEYS: {exc}")
    from gateways.base import load_gateway_class  # gateways never import settings

    try:
        load_gateway_class(s.gateway)
    except ValueError as exc:
        p.append(f"CASHOUT_GATEWAY: {exc}")
    if s.gateway == "ebs":
        if not s.ebs_url:
            p.append("CASHOUT_EBS_URL: required with CASHOUT_GATEWAY=ebs")
        elif urlsplit(s.ebs_url).scheme not in ("http", "https") or not s.ebs_url.endswith("/"):
            p.append(f"CASHOUT_EBS_URL: {s.ebs_url!r} must be an http(s) URL ending with /")
        if not s.ebs_application_id:
            p.append("CASHOUT_EBS_APPLICATION_ID: required with CASHOUT_GATEWAY=ebs")
        if s.ebs_ca_file and not os.path.isfile(s.ebs_ca_file):
            p.append(f"CASHOUT_EBS_CA_FILE: {s.ebs_ca_file!r} is not a readable file")
    try:
        if any(d < 0 for d in s.retry_schedule):
            raise ValueError
    except ValueError:
        p.append("CASHOUT_WEBHOOK_RETRY_SCHEDULE: must be comma-separated seconds, e.g. 5,300")
    if s.webhook_timeout <= 0 or s.webhook_sweep_interval <= 0:
        p.append("CASHOUT_WEBHOOK_TIMEOUT / _SWEEP_INTERVAL: must be positive")
    if s.webhook_concurrency < 1 or not 1 <= s.webhook_per_provider <= s.webhook_concurrency:
        p.append("CASHOUT_WEBHOOK_PER_PROVIDER: must be from 1 to CASHOUT_WEBHOOK_CONCURRENCY")
    if s.reconcile_interval <= 0 or s.settle_grace < 0:
        p.append("CASHOUT_RECONCILE_INTERVAL / CASHOUT_SETTLE_GRACE: must be positive")
    # An EBS transfer may take four requests: fetch the key, send, and after a PIN-block
    # error fetch the key again and resend.
    call_time = (
        4 * (s.ebs_connect_timeout + s.ebs_request_timeout)
        if s.gateway == "ebs"
        else s.mock_latency_ms / 1000
    )
    if s.attempt_lease <= call_time + 1:
        p.append(
            f"CASHOUT_ATTEMPT_LEASE: must be longer than a gateway call can take "
            f"({call_time:.0f}s) plus a second, or reconciliation could race a live call"
        )
    if s.ebs_connect_timeout <= 0 or s.ebs_request_timeout <= 0:
        p.append("CASHOUT_EBS_*_TIMEOUT: must be positive")
    if s.production:
        p.extend(_production_problems(s, url.scheme, url.hostname or ""))
    return p


def _production_problems(s: Settings, scheme: str, host: str) -> list[str]:
    """Production refuses anything that is only safe on a developer's laptop."""
    p: list[str] = []
    if not s.keys:
        p.append("CASHOUT_KEYS: required in production (no generated key file)")
    if scheme != "https":
        p.append("CASHOUT_PUBLIC_URL: must be https in production")
    elif _is_private_host(host):
        p.append("CASHOUT_PUBLIC_URL: must be a public host in production")
    if not s.mongodb_uri:
        p.append("CASHOUT_MONGODB_URI: required in production (no embedded database)")
    if s.gateway == "mock":
        p.append("CASHOUT_GATEWAY: the mock gateway moves no real money; not in production")
    if s.gateway == "ebs":
        if s.ebs_url and not s.ebs_url.startswith("https://"):
            p.append("CASHOUT_EBS_URL: must be https in production")
        if not s.ebs_ca_file:
            p.append("CASHOUT_EBS_CA_FILE: required in production to verify EBS's TLS")
    if s.mock_latency_ms:
        p.append("CASHOUT_MOCK_LATENCY_MS: only for the sandbox")
    return p
