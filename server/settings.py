"""One settings object, built once at start-up from flags and ``CASHOUT_*`` variables.

Each setting is declared once, as a field of ``Settings``: its type (the annotation), its
default, its help and its own check. The flag (``--public-url``) and the variable
(``CASHOUT_PUBLIC_URL``) come from the field's name. A gateway declares its own options the
same way, as the fields of its ``Options`` dataclass; they are read from
``CASHOUT_<GATEWAY>_<FIELD>`` (``CASHOUT_EBS_URL``) and checked by the gateway itself, so a
gateway loaded by dotted path gets settings of its own with no change here.

Flags win over the environment. ``load`` reports every problem at once, one line each, so an
operator fixes a broken deployment in one go rather than one restart per mistake.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import ipaddress
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from gateways.base import BUILTIN_GATEWAYS, Gateway, load_gateway_class

ENVIRONMENTS = ("sandbox", "production")
LOG_LEVELS = ("debug", "info", "warning", "error")
REGISTRATION_MODES = ("open", "invite")
PREFIX = "CASHOUT_"

Check = Callable[[Any], "str | None"]


def setting(default: Any, help: str, check: Check | None = None, *, secret: bool = False) -> Any:
    """Declare one setting: default, help text (for ``--help``) and its own check."""
    return field(default=default, repr=not secret, metadata={"help": help, "check": check})


# -- checks of one value (cross-setting rules are in ``validate``) ----------------------------


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be at least {low:g}"


def between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be from {low:g} to {high:g}"


def positive(v: float) -> str | None:
    return None if v > 0 else "must be positive"


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"{v!r} must be {' or '.join(choices)}"


def tcp_port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else f"{v} is not a TCP port"


def absolute_url(v: str) -> str | None:
    parts = urlsplit(v)
    if parts.scheme in ("http", "https") and parts.hostname:
        return None
    return f"{v!r} must be an absolute http(s) URL"


def key_ring(v: str | None) -> str | None:
    if v is None:
        return None
    from server.crypto import KeyRing  # crypto needs no settings

    try:
        KeyRing.parse(v)
    except ValueError as exc:
        return str(exc)
    return None


def gateway_spec(v: str) -> str | None:
    try:
        load_gateway_class(v)
    except ValueError as exc:
        return str(exc)
    return None


def seconds_list(v: str) -> str | None:
    try:
        if all(d >= 0 for d in _seconds(v)):
            return None
    except ValueError:
        pass
    return "must be comma-separated seconds, e.g. 5,300"


def rate_limit(v: str) -> str | None:
    from server.ratelimit import rate_problem

    return rate_problem(v)


def networks(v: str) -> str | None:
    from server.ratelimit import networks_problem

    return networks_problem(v)


def card_key_check(v: str | None) -> str | None:
    if v is None:
        return None
    try:
        key = base64.b64decode(v, validate=True)
    except ValueError:
        return "must be base64"
    return None if len(key) == 32 else "must be 32 bytes (base64)"


def _seconds(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s.strip()]


# -- the settings ------------------------------------------------------------------------------

DAY = 24 * 3600


@dataclass(frozen=True)
class Settings:
    env: str = setting("sandbox", "sandbox or production", one_of(*ENVIRONMENTS))
    host: str = setting("127.0.0.1", "listen address")
    port: int = setting(8080, "listen port (0 picks a free one)", tcp_port)
    public_url: str = setting("http://localhost:8080", "base URL used in claim links", absolute_url)
    data_dir: str = setting("./var", "embedded database files, sandbox key file, mock ledger")
    mongodb_uri: str | None = setting(
        None, "external MongoDB; unset starts the embedded one", secret=True
    )
    db_name: str = setting("cashout", "database name")
    db_timeout_ms: int = setting(5000, "how long a database call waits for the server", at_least(1))
    db_batch: int = setting(
        256,
        "most requests sharing one database round trip (group commit); 1 turns batching off",
        between(1, 1000),
    )
    embedded_db_port: int = setting(
        0, "port of the embedded database (0 = any free port)", tcp_port
    )
    gateway: str = setting("mock", "mock, ebs, or package.module:Class", gateway_spec)
    keys: str | None = setting(
        None,
        "data-encryption key ring kid:base64key[;kid:base64key...]; the first encrypts",
        key_ring,
        secret=True,
    )
    reconcile_interval: float = setting(
        5.0, "seconds between reconciliation and expiry rounds", positive
    )
    attempt_lease: float = setting(
        10.0,
        "seconds a process's lease on a claim it is paying lasts; renewed every third of it "
        "while the gateway call runs, so a dead or frozen process's claims are taken over "
        "within one lease",
        at_least(1),
    )
    settle_grace: float | None = setting(
        None,
        "seconds after an attempt started before 'no such transaction' is believed; "
        "unset = the gateway's own (mock: 5, ebs: connect + request timeout)",
        at_least(0),
    )
    webhook_timeout: float = setting(10.0, "seconds a webhook endpoint has to answer", positive)
    webhook_retry_schedule: str = setting(
        "5,300,1800,7200,18000,36000,36000,86400,86400",
        "seconds between webhook attempts, comma-separated; then the event fails",
        seconds_list,
    )
    webhook_sweep_interval: float = setting(2.0, "seconds between outbox sweeps", positive)
    webhook_concurrency: int = setting(32, "webhook deliveries in flight, in all", at_least(1))
    webhook_per_provider: int = setting(
        4, "webhook deliveries in flight for one provider", at_least(1)
    )
    max_claim_amount: int = setting(100_000, "largest amount of one claim", at_least(1))
    daily_limit: int = setting(
        1_000_000, "largest total a provider may generate per UTC day", at_least(1)
    )
    claim_ttl: int = setting(7 * DAY, "default claim lifetime, seconds", at_least(1))
    max_claim_ttl: int = setting(30 * DAY, "largest claim lifetime, seconds", at_least(1))
    max_body_bytes: int = setting(64 * 1024, "largest request body (bigger gets 413)", at_least(1))
    # What an outsider can make the service spend (README "Limits").
    trusted_proxies: str = setting(
        "",
        "proxies (addresses or networks, comma-separated) whose X-Forwarded-For names the client",
        networks,
    )
    rate_limit_provider: str = setting(
        "100/s", "requests per provider on API-key routes (count/period, or off)", rate_limit
    )
    rate_limit_register: str = setting("10/h", "registrations per client address", rate_limit)
    rate_limit_card_check: str = setting(
        "20/h", "card checks (registration, card change) per client address", rate_limit
    )
    rate_limit_claim: str = setting(
        "120/min", "claim pages and JSON claim submissions per client address", rate_limit
    )
    rate_limit_webhook_sends: str = setting(
        "30/h", "test events and redeliveries per provider", rate_limit
    )
    webhook_disable_after: float = setting(
        5 * DAY, "seconds every delivery may fail before the endpoint is disabled", positive
    )
    ops_host: str = setting("127.0.0.1", "listen address of the operations port")
    ops_port: int | None = setting(
        None,
        "port for /metrics, /healthz and /readyz, then not served on the public port",
        tcp_port,
    )
    log_level: str = setting("info", "debug, info, warning or error", one_of(*LOG_LEVELS))
    log_format: str = setting(
        "text", "text or json (one JSON object per line)", one_of("text", "json")
    )
    processes: int = setting(1, "worker processes sharing the port (SO_REUSEPORT)", between(1, 64))
    shutdown_timeout: float = setting(
        20.0, "seconds SIGTERM waits for requests and transfers in flight", at_least(0)
    )
    # -- production controls against card fraud (docs/DESIGN.md section 12) ----------------
    registration: str | None = setting(
        None,
        "open or invite (a single-use code from 'admin invite'); unset: invite in production, "
        "open in sandbox",
        one_of(*REGISTRATION_MODES),
    )
    card_check_failures: int = setting(
        3,
        "failed checks of one paying card (any provider, any address) before the card is not "
        "sent to the switch for 24 hours",
        at_least(1),
    )
    card_check_source_failures: int = setting(
        10,
        "failed card checks from one client address, or by one provider, before that source's "
        "card checks stop for 24 hours",
        at_least(1),
    )
    card_key: str | None = setting(
        None,
        "base64 key (32 bytes) of the HMAC that names cards in counters; unset: derived from "
        "the first key of CASHOUT_KEYS",
        card_key_check,
        secret=True,
    )
    paying_card_daily_amount: int = setting(
        1_000_000,
        "largest total that may leave one paying card per UTC day, across every provider",
        at_least(1),
    )
    card_daily_claims: int = setting(
        10, "most claims one receiving card may be paid per UTC day, across providers", at_least(1)
    )
    card_daily_amount: int = setting(
        300_000,
        "largest total one receiving card may be paid per UTC day, across providers",
        at_least(1),
    )
    # The selected gateway's own options (an instance of its ``Options``), read from
    # ``CASHOUT_<GATEWAY>_*``; not a setting of its own.
    gateway_options: Any = field(default=None, compare=False, metadata={"internal": True})

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
    def registration_mode(self) -> str:
        """``CASHOUT_REGISTRATION``, or its default for the environment: production admits
        only invited providers, the sandbox anyone."""
        if self.registration is not None:
            return self.registration
        return "invite" if self.production else "open"

    @property
    def retry_schedule(self) -> list[float]:
        return _seconds(self.webhook_retry_schedule)

    @property
    def gateway_class(self) -> type[Gateway]:
        return load_gateway_class(self.gateway)

    @property
    def grace(self) -> float:
        """``settle_grace``, or the gateway's own when unset."""
        if self.settle_grace is not None:
            return self.settle_grace
        cls = self.gateway_class
        options = self.gateway_options if self.gateway_options is not None else cls.Options()
        return cls.settle_grace(options)


# -- declared options, as flags and variables ---------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One declared setting or gateway option, with its flag and variable."""

    name: str  # the field's name, prefixed by the gateway's for gateway options
    field: str
    type: Any
    default: Any
    help: str
    check: Check | None = None

    @property
    def env(self) -> str:
        return PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _options(cls: type[Any], prefix: str = "") -> Iterator[Option]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        yield Option(
            prefix + f.name,
            f.name,
            hints[f.name],
            f.default,
            f.metadata.get("help", ""),
            f.metadata.get("check"),
        )


OPTIONS: tuple[Option, ...] = tuple(_options(Settings))


@cache
def gateway_options(cls: type[Gateway]) -> tuple[Option, ...]:
    return tuple(_options(cls.Options, cls.name + "_"))


def all_options(extra: Sequence[type[Gateway]] = ()) -> list[Option]:
    """The service's settings and the options of the built-in gateways (and ``extra``)."""
    found = list(OPTIONS)
    for cls in [*(load_gateway_class(g) for g in BUILTIN_GATEWAYS), *extra]:
        found += [o for o in gateway_options(cls) if o not in found]
    return found


def _parse(option: Option, raw: str) -> Any:
    kind = option.type
    if isinstance(kind, types.UnionType):  # ``str | None``: empty means unset
        if not raw:
            return None
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    return kind(raw)


def add_arguments(parser: argparse.ArgumentParser, gateway: str | None = None) -> None:
    """A flag for every setting and every known gateway's options (``gateway``: a dotted
    path named on the command line or in the environment, whose options join them)."""
    extra = []
    if gateway and gateway not in BUILTIN_GATEWAYS:
        try:
            extra.append(load_gateway_class(gateway))
        except ValueError:
            pass  # reported by load()
    for opt in all_options(extra):
        parser.add_argument(
            opt.flag,
            dest=opt.name,
            default=argparse.SUPPRESS,
            metavar=opt.field.upper(),
            help=f"{opt.help} (${opt.env}, default {opt.default!r})".replace("%", "%%"),
        )


class SettingsError(Exception):
    """Raised with every problem found, one per line."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def _read(
    options: Sequence[Option], args: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Each option's value (flag, else variable, else default) and any problems."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for opt in options:
        raw, source = args.get(opt.name), opt.flag
        if raw is None:
            raw, source = environ.get(opt.env), opt.env
        if raw is None:
            value = opt.default
        else:
            try:
                value = _parse(opt, raw)
            except ValueError:
                problems.append(f"{source}: {raw!r} is not a valid {_type_name(opt.type)}")
                continue
        problem = opt.check(value) if opt.check and value is not None else None
        if problem:
            problems.append(f"{opt.env}: {problem}")
        values[opt.field] = value
    return values, problems


def _type_name(kind: Any) -> str:
    if isinstance(kind, types.UnionType):
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    return getattr(kind, "__name__", str(kind))


def load(
    args: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings (and the selected gateway's options) from parsed flags and the
    environment, or raise SettingsError with every problem."""
    environ = os.environ if environ is None else environ
    args = args or {}
    values, problems = _read(OPTIONS, args, environ)
    options = None
    if "gateway" in values and not gateway_spec(values["gateway"]):
        cls = load_gateway_class(values["gateway"])
        option_values, option_problems = _read(gateway_options(cls), args, environ)
        problems += option_problems
        if not option_problems:
            options = cls.Options(**option_values)
    if problems:
        raise SettingsError(problems)
    settings = Settings(**values, gateway_options=options)
    problems = validate(settings)
    if problems:
        raise SettingsError(problems)
    return settings


def replace(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)


def with_gateway(settings: Settings, **options: Any) -> Settings:
    """These settings with the gateway's options set (its defaults for the rest)."""
    return replace(settings, gateway_options=settings.gateway_class.Options(**options))


def validate(s: Settings) -> list[str]:
    """Every reason these settings cannot run together, one line each (empty when fine).
    Single values were checked as they were read; here are the rules between them."""
    p: list[str] = []
    if s.claim_ttl > s.max_claim_ttl:
        p.append("CASHOUT_CLAIM_TTL: must not exceed CASHOUT_MAX_CLAIM_TTL")
    if s.daily_limit < s.max_claim_amount:
        p.append("CASHOUT_DAILY_LIMIT: must be at least CASHOUT_MAX_CLAIM_AMOUNT")
    if s.processes > 1 and s.port == 0:
        p.append("CASHOUT_PORT: several processes need a fixed port to share")
    if s.ops_port is not None and s.ops_port == s.port and s.port != 0:
        p.append("CASHOUT_OPS_PORT: must differ from CASHOUT_PORT")
    if s.processes > 1 and s.ops_port == 0:
        p.append("CASHOUT_OPS_PORT: several processes need a fixed port to share")
    for name, value in (
        ("CASHOUT_PAYING_CARD_DAILY_AMOUNT", s.paying_card_daily_amount),
        ("CASHOUT_CARD_DAILY_AMOUNT", s.card_daily_amount),
    ):
        if value < s.max_claim_amount:
            p.append(f"{name}: must be at least CASHOUT_MAX_CLAIM_AMOUNT")
    if s.webhook_per_provider > s.webhook_concurrency:
        p.append("CASHOUT_WEBHOOK_PER_PROVIDER: must not exceed CASHOUT_WEBHOOK_CONCURRENCY")
    cls = s.gateway_class
    options = s.gateway_options if s.gateway_options is not None else cls.Options()
    for name, problem in cls.option_problems(options, s.production):
        p.append(f"{PREFIX}{cls.name.upper()}_{name.upper()}: {problem}")
    if s.production:
        p.extend(_production_problems(s, cls))
    return p


def _is_private_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return not addr.is_global


def _production_problems(s: Settings, gateway: type[Gateway]) -> list[str]:
    """Production refuses anything that is only safe on a developer's laptop."""
    p: list[str] = []
    url = urlsplit(s.public_url)
    if not s.keys:
        p.append("CASHOUT_KEYS: required in production (no generated key file)")
    if url.scheme != "https":
        p.append("CASHOUT_PUBLIC_URL: must be https in production")
    elif _is_private_host(url.hostname or ""):
        p.append("CASHOUT_PUBLIC_URL: must be a public host in production")
    if not s.mongodb_uri:
        p.append("CASHOUT_MONGODB_URI: required in production (no embedded database)")
    if gateway.sandbox_only:
        p.append(
            f"CASHOUT_GATEWAY: the {gateway.name} gateway moves no real money; not in production"
        )
    return p
