"""SSRF protection: in production webhook endpoints must be public, checked at registration
and again, after DNS resolution, on every delivery, by one rule (``server/ssrf.py``) that
reads every way of writing an address."""

from __future__ import annotations

import asyncio
import socket

import pytest
from tornado.httpclient import HTTPRequest

from server.errors import ApiError
from server.settings import Settings
from server.ssrf import PublicOnlyResolver, host_problem, is_public_address
from server.validation import check_endpoint
from server.webhooks import WebhookSender
from tests.receiver import Receiver


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "https://localhost/x",
        "https://127.0.0.1/x",
        "https://10.1.2.3/x",
        "https://192.168.0.5/x",
        "https://169.254.169.254/latest",
        "https://[::1]/x",
        "https://[fe80::1]/x",
        "https://224.0.0.1/x",
        "https://0.0.0.0/x",
        "https://api.localhost/x",
    ],
)
def test_production_refuses_non_public_endpoints(url: str) -> None:
    with pytest.raises(ApiError) as refused:
        check_endpoint(url, production=True)
    assert refused.value.code == "invalid_endpoint"
    check_endpoint(url.replace("https://", "http://"), production=False)  # the sandbox allows


def test_public_endpoints_pass() -> None:
    assert check_endpoint("https://hooks.example.com/cashout", production=True)
    assert is_public_address("8.8.8.8") and not is_public_address("127.0.0.1")
    assert not is_public_address("::ffff:10.0.0.1") and not is_public_address("fd00::1")


def test_production_deliveries_never_reach_a_private_address(receiver: Receiver) -> None:
    """A public-looking name that resolves inside (here: localhost) is refused at connect."""

    async def attempt(production: bool) -> BaseException | int:
        settings = Settings(env="production" if production else "sandbox")
        sender = WebhookSender(settings, None, None)  # type: ignore[arg-type]
        try:
            response = await sender.client.fetch(
                HTTPRequest(receiver.url("/ssrf"), method="POST", body="{}"), raise_error=False
            )
            return response.code
        except OSError as exc:
            return exc
        finally:
            sender.client.close()

    refused = asyncio.run(attempt(production=True))
    assert isinstance(refused, OSError) and "non-public" in str(refused)
    assert receiver.calls_to("/ssrf") == []
    assert asyncio.run(attempt(production=False)) == 200
    assert len(receiver.calls_to("/ssrf")) == 1


def fullwidth(text: str) -> str:
    """``text`` in full-width characters (U+FF01-U+FF5E), dots included."""
    return "".join(chr(ord(c) + 0xFEE0) for c in text)


# (host as written in a URL, public?, resolvable here without DNS)
ADDRESSES = [
    # loopback, written every way a resolver or a browser reads it
    ("127.0.0.1", False, True),
    ("2130706433", False, True),  # decimal
    ("0x7f000001", False, True),  # hex
    ("0x7f.0.0.1", False, True),
    ("0177.0.0.1", False, True),  # octal
    ("017700000001", False, True),
    ("127.1", False, True),  # short
    ("127.0.1", False, True),
    ("127.0.0.1.", False, True),  # trailing dot
    ("localhost", False, True),
    ("localhost.", False, True),
    ("LOCALHOST", False, True),
    (fullwidth("localhost"), False, False),  # mapped to ASCII by IDNA, as resolvers do
    (fullwidth("127.0.0.1"), False, False),
    ("api.localhost", False, False),
    ("[::1]", False, True),
    ("[::ffff:127.0.0.1]", False, True),  # IPv4-mapped
    ("[::ffff:7f00:1]", False, True),
    ("[::127.0.0.1]", False, True),  # IPv4-compatible (deprecated)
    # private, shared, link-local, metadata
    ("10.1.2.3", False, True),
    ("0xa.1", False, True),
    ("192.168.0.5", False, True),
    ("172.16.0.1", False, True),
    ("100.64.0.1", False, True),  # carrier-grade NAT
    ("169.254.169.254", False, True),
    ("0251.0376.0251.0376", False, True),  # 169.254.169.254 in octal
    ("[fe80::1]", False, True),
    ("[fc00::1]", False, True),
    ("0.0.0.0", False, True),
    ("0", False, True),
    ("224.0.0.1", False, True),  # multicast
    ("255.255.255.255", False, True),
    ("[ff02::1]", False, True),
    ("[2001:db8::1]", False, True),  # documentation
    # IPv6 forms that lead to an IPv4 address: as public as what they lead to
    ("[64:ff9b::7f00:1]", False, True),  # NAT64 of 127.0.0.1
    ("[64:ff9b::a00:1]", False, True),  # NAT64 of 10.0.0.1
    ("[64:ff9b::808:808]", True, True),  # NAT64 of 8.8.8.8
    ("[64:ff9b:1::808:808]", False, True),  # local-use NAT64: cannot be checked
    ("[2002:7f00:1::1]", False, True),  # 6to4 of 127.0.0.1
    ("[2002:a9fe:a9fe::1]", False, True),  # 6to4 of 169.254.169.254
    ("[2002:808:808::1]", True, True),  # 6to4 of 8.8.8.8
    ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", False, True),  # Teredo: refused
    ("[::ffff:8.8.8.8]", True, True),
    # public
    ("8.8.8.8", True, True),
    ("134744072", True, True),  # 8.8.8.8 in decimal
    ("[2606:4700:4700::1111]", True, True),
    ("hooks.example.com", True, False),
    # not hosts at all
    ("1.2.3.4.5", False, False),
    ("999.1.1.1", False, False),
    ("0x1g.1", False, False),
    ("intranet", False, False),  # a single label is a local name
    ("printer.local", False, False),
    ("metadata.google.internal", False, False),
]


@pytest.mark.parametrize(("host", "public", "resolvable"), ADDRESSES, ids=[a[0] for a in ADDRESSES])
def test_one_rule_at_registration_and_at_connect_time(
    host: str, public: bool, resolvable: bool
) -> None:
    url = f"https://{host}/hook"
    if public:
        assert check_endpoint(url, production=True) == url
    else:
        with pytest.raises(ApiError) as refused:
            check_endpoint(url, production=True)
        assert refused.value.code == "invalid_endpoint"
    check_endpoint(url.replace("https://", "http://"), production=False)  # the sandbox allows
    if not resolvable:
        return
    bare = host.strip("[]")

    async def connect_time() -> list[str]:
        resolver = PublicOnlyResolver()
        try:
            return [addr[0] for _, addr in await resolver.resolve(bare, 443, socket.AF_UNSPEC)]
        finally:
            resolver.close()

    if public:
        assert all(is_public_address(a) for a in asyncio.run(connect_time()))
    else:
        with pytest.raises(OSError, match="non-public"):
            asyncio.run(connect_time())


def test_every_refusal_says_why() -> None:
    assert host_problem("2130706433") == "must be a public address"
    assert host_problem("1.2.3.4.5") == "is not a valid host"
    assert host_problem("hooks.example.com") is None
