"""Rate limits: token buckets per provider and per client address, kept in the process.

Each limit is written ``<count>/<period>`` (``100/s``, ``10/h``, ``3/2s``; ``off`` turns it
off): a bucket holds ``count`` tokens, a request takes one, and tokens come back at
``count`` per ``period``, so a caller may burst ``count`` requests and then keeps the
average rate. Over the limit the caller gets 429 ``rate_limited`` with ``Retry-After``.

Per process, deliberately: a shared counter would cost a database round trip on every
request, on the very path a flood is hitting, and the database is the scarcest resource
(a few hundred writes a second for the embedded one). The limits protect each process's CPU,
the switch and the webhook endpoints; with ``N`` processes behind a load balancer a caller
gets at most ``N`` times a limit, which the README says.

Buckets are bounded: at most ``MAX_KEYS`` per limit, the least recently used forgotten
first, and IPv6 clients share a bucket per /64 (one subscriber's network), so a flood of
made-up addresses cannot grow memory without bound.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.errors import RateLimited

if TYPE_CHECKING:
    from server.settings import Settings

MAX_KEYS = 100_000
_UNITS = {"": 1.0, "s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(s|min|m|h|d)?\s*$")


@dataclass(frozen=True)
class Rate:
    """``count`` requests per ``period`` seconds, ``count`` of them at once."""

    count: int
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


def parse_rate(text: str) -> Rate | None:
    """``"100/s"`` -> Rate(100, 1); ``"off"`` -> None. Raises ValueError otherwise."""
    if text.strip().lower() in ("off", "0", "none"):
        return None
    match = _RATE.match(text.lower())
    if not match or not (match.group(2) or match.group(3)):
        raise ValueError(text)
    count = int(match.group(1))
    period = float(match.group(2) or 1) * _UNITS[match.group(3) or ""]
    if count < 1 or period <= 0:
        raise ValueError(text)
    return Rate(count, period)


def rate_problem(text: str) -> str | None:
    """The settings check of a rate limit."""
    try:
        parse_rate(text)
    except ValueError:
        return f"{text!r} must be <count>/<period> (e.g. 100/s, 10/h, 3/2s) or off"
    return None


class Limiter:
    """One limit: a token bucket per key."""

    def __init__(
        self,
        name: str,
        rate: Rate | None,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.rate = rate
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float | None:
        """Take a token for ``key``: None if allowed, else the seconds until one is back."""
        rate = self.rate
        if rate is None:
            return None
        now = self.clock()
        tokens, at = self._buckets.pop(key, (float(rate.count), now))
        tokens = min(float(rate.count), tokens + (now - at) * rate.per_second)
        wait = None
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / rate.per_second
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(wait: float) -> int:
    """Whole seconds for ``Retry-After``: never 0, so a client that obeys it gets a token."""
    return max(1, math.ceil(wait))


# -- who is asking --------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` -> networks; raises ValueError on a bad entry."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()
    )


def networks_problem(text: str) -> str | None:
    try:
        parse_networks(text)
    except ValueError:
        return f"{text!r} must be comma-separated addresses or networks (10.0.0.0/8, ::1)"
    return None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_address(peer: str, forwarded_for: Iterable[str], trusted: tuple[Network, ...]) -> str:
    """The address of whoever sent the request.

    ``peer`` is the TCP peer. Only when it is one of the ``trusted`` proxies is
    ``X-Forwarded-For`` read, from the right: each trusted proxy appends the address it got
    the request from, so the first address from the right that is not a trusted proxy is
    the client. Anything a client writes into the header itself sits to the left of that
    and is never reached.
    """
    ip = _ip(peer)
    if ip is None or not any(ip in net for net in trusted):
        return str(ip) if ip is not None else peer
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    last = ip
    for hop in reversed(hops):
        hop_ip = _ip(hop)
        if hop_ip is None:
            break  # a trusted proxy would not write this: stop at the last hop we can name
        last = hop_ip
        if not any(hop_ip in net for net in trusted):
            break
    return str(last)


def bucket_key(address: str) -> str:
    """IPv6 clients share a bucket per /64, the block one subscriber usually holds."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip) if ip is not None else address


class RateLimits:
    """Every limit of the service, built once from the settings (``Services.limits``)."""

    def __init__(self, settings: Settings) -> None:
        self.provider = Limiter("provider", parse_rate(settings.rate_limit_provider))
        self.register = Limiter("register", parse_rate(settings.rate_limit_register))
        self.card_check = Limiter("card_check", parse_rate(settings.rate_limit_card_check))
        self.claim = Limiter("claim", parse_rate(settings.rate_limit_claim))
        self.trusted_proxies = parse_networks(settings.trusted_proxies)

    def check(self, limiter: Limiter, key: str) -> None:
        """Take a token or raise 429 ``rate_limited`` (with the seconds to wait)."""
        enforce(limiter, key)

    def client(self, peer: str, forwarded_for: Iterable[str]) -> str:
        return client_address(peer, forwarded_for, self.trusted_proxies)


def enforce(limiter: Limiter, key: str) -> None:
    """Take a token or raise 429 ``rate_limited`` (with the seconds to wait)."""
    wait = limiter.take(key)
    if wait is not None:
        # Imported late: the settings checks import this module before the multiprocess
        # metrics switch is set (prometheus_client decides at its first import).
        from server import metrics

        metrics.RATE_LIMITED.labels(limiter.name).inc()
        raise RateLimited(retry_after(wait))
