"""Which webhook hosts may be reached in production: one rule for registration and connect time.

A webhook endpoint is a URL a stranger chooses, so it must never lead the service to its own
network. The same rule runs twice: on the host written in the URL when the endpoint is set
(so a refusal is immediate and clear), and on every address that host resolves to, at connect
time, on every delivery (so DNS rebinding cannot reach inside either).

Address forms are read the way resolvers and browsers read them, not only the dotted quad:
decimal (``2130706433``), hex (``0x7f000001``), octal (``0177.0.0.1``), short (``127.1``),
with a trailing dot, and IPv6 forms that carry an IPv4 address (IPv4-mapped and -compatible,
NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``); such an address is public only if the IPv4
address it carries is. Teredo (``2001::/32``) and local-use NAT64 (``64:ff9b:1::/48``) are
refused: the address they lead to cannot be checked.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from tornado.netutil import DefaultExecutorResolver, Resolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
# Special-use and private suffixes (RFC 6761, RFC 8375, mDNS, common private zones).
LOCAL_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".home.arpa")

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")


class Invalid(ValueError):
    """A host that looks like an IPv4 address but is not a valid one."""


def _number(part: str) -> int:
    """One part of an IPv4 address as the WHATWG URL standard (and ``inet_aton``) read it:
    decimal, ``0x`` hex, or octal with a leading zero."""
    text, radix = part, 10
    if text[:2].lower() == "0x":
        text, radix = text[2:], 16
        if not text:
            return 0
    elif len(text) > 1 and text[0] == "0":
        text, radix = text[1:], 8
    if not text or not text.isascii() or not text.isalnum():
        raise Invalid(part)
    try:
        return int(text, radix)
    except ValueError:
        raise Invalid(part) from None


def _ends_in_a_number(parts: list[str]) -> bool:
    last = parts[-1]
    if last.isascii() and last.isdigit():
        return True
    if last[:2].lower() == "0x":
        rest = last[2:]
        return all(c in "0123456789abcdefABCDEF" for c in rest)
    return False


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``host`` as an IPv4 address in any of its forms; None when it is a name.

    Raises ``Invalid`` for something that must be an address but is not (``1.2.3.4.5``,
    ``999.1``), as a browser would refuse it.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # one trailing dot
    if not parts or not parts[-1] or not _ends_in_a_number(parts):
        return None
    if len(parts) > 4 or any(not p for p in parts):
        raise Invalid(host)
    numbers = [_number(p) for p in parts]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise Invalid(host)
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n * 256 ** (3 - i)
    return ipaddress.IPv4Address(value)


def parse_address(host: str) -> IPAddress | None:
    """``host`` (as in a URL, IPv6 without brackets, maybe with a zone) as an address, or
    None for a name. Raises ``Invalid`` for a malformed numeric host."""
    text = host.strip("[]")
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            raise Invalid(host) from None
    return parse_ipv4(text)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to, for the forms that carry one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or ip in _IPV4_TRANSLATED or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    return None


def is_public_address(address: str | IPAddress) -> bool:
    """True only for an address on the public internet: never loopback, private, shared,
    link-local, multicast, reserved or documentation space, in any of their forms."""
    if isinstance(address, str):
        try:
            ip = parse_address(address)
        except Invalid:
            return False
        if ip is None:
            return False
    else:
        ip = address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _TEREDO or ip in _NAT64_LOCAL:
            return False
        inner = embedded_ipv4(ip)
        if inner is not None:
            return inner.is_global and not inner.is_multicast
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def normalise_host(host: str) -> str:
    """The host as a resolver sees it: IDNA-mapped (full-width letters and digits become
    ASCII), lower case. Raises ``Invalid`` when it cannot be a host name at all."""
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise Invalid(host) from None
    return ascii_host.lower()


def host_problem(host: str) -> str | None:
    """Why a webhook may not go to ``host`` (as written in a URL), or None if it may be tried.

    Names that are public-looking pass here; their addresses are checked when they are
    resolved, at connect time (``PublicOnlyResolver``)."""
    try:
        name = normalise_host(host)
        ip = parse_address(name)
    except Invalid:
        return "is not a valid host"
    if ip is not None:
        return None if is_public_address(ip) else "must be a public address"
    bare = name[:-1] if name.endswith(".") else name
    if not bare or any(not label for label in bare.split(".")):
        return "is not a valid host"
    if bare in LOCAL_NAMES or bare.endswith(LOCAL_SUFFIXES) or "." not in bare:
        return "must be a public address"
    return None


class PublicOnlyResolver(Resolver):
    """Resolves like the default resolver, then keeps only public addresses, on every
    connection, so a name that points (or is re-pointed) inside is never connected to."""

    def initialize(self) -> None:
        self._inner = DefaultExecutorResolver()

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        problem = host_problem(host)
        if problem:
            raise OSError(f"webhook host {problem}: non-public address refused")
        results = await self._inner.resolve(host, port, family)
        public = [(fam, addr) for fam, addr in results if is_public_address(addr[0])]
        if not public:
            raise OSError(f"{host} resolves only to non-public addresses")
        return public
