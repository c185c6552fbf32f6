"""SSRF protection: in production webhook endpoints must be public, checked at registration
and again, after DNS resolution, on every delivery."""

from __future__ import annotations

import asyncio

import pytest
from tornado.httpclient import HTTPRequest

from server.errors import ApiError
from server.settings import Settings
from server.validation import check_endpoint
from server.webhooks import WebhookSender, is_public_address
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
