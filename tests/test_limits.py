"""What an outsider can make the service spend (docs/DESIGN.md section 12): bodies over the
limit answered with a JSON 413 without being read, absurd bodies refused cheaply, rate
limits per client address and per provider, and the operations port."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis

from server.settings import Settings
from tests.conftest import random_pan, unique_name
from tests.harness import (
    DEFAULT,
    Provider,
    ServerProcess,
    auth,
    free_port,
    provider_body,
    register,
    remember,
    wait_until,
)
from tests.receiver import Receiver
from tests.test_openapi import CONFORMANCE

LIMIT = Settings().max_body_bytes
MIB = 1024 * 1024


# -- bodies over the limit -------------------------------------------------------------------


def read_answer(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from a raw socket: status, headers (lower-case), body."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def assert_413(status: int, content_type: str, body: bytes) -> None:
    assert status == 413, body[:200]
    assert content_type.startswith("application/json")
    assert json.loads(body) == {
        "message": f"The body is larger than {LIMIT} bytes.",
        "code": "payload_too_large",
    }


def still_serving(server: ServerProcess) -> None:
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        name, pan = unique_name(), random_pan()
        register(client, provider_body(name, pan))


@pytest.mark.parametrize(
    "size", [LIMIT + 1, 2 * MIB + 1, 3 * MIB], ids=["limit+1", "2MiB+1", "3MiB"]
)
def test_bodies_over_the_limit_get_a_json_413(server: ServerProcess, size: int) -> None:
    with server.client() as client:
        answer = client.post(
            "/cashout/register",
            content=b"{" + b" " * (size - 2) + b"}",
            headers={"Content-Type": "application/json"},
        )
    assert_413(answer.status_code, answer.headers["content-type"], answer.content)
    still_serving(server)


def test_a_chunked_body_is_refused_as_it_passes_the_limit(server: ServerProcess) -> None:
    """No length announced: the server counts, and answers as soon as the count passes the
    limit, without waiting for the rest (this client never sends it)."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    with sock:
        sock.sendall(
            b"POST /cashout/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b" " * 16384
        for _ in range(LIMIT // len(piece) + 1):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        status, headers, body = read_answer(sock)
    assert_413(status, headers["content-type"], body)
    assert headers["connection"] == "close"

    def chunks() -> Iterator[bytes]:  # the same through an HTTP client, 3 MiB in all
        for _ in range(3 * 64):
            yield b" " * 16384

    with server.client() as client:
        answer = client.post(
            "/cashout/register", content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert_413(answer.status_code, answer.headers["content-type"], answer.content)
    still_serving(server)


def test_a_lying_content_length_is_refused_before_the_body(server: ServerProcess) -> None:
    """``Content-Length: 999999999`` with ten bytes behind it: the answer comes at once,
    from the headers alone (the server waits for no body, nor asks for one with 100)."""
    for expect in (b"", b"Expect: 100-continue\r\n"):
        sock = socket.create_connection(("127.0.0.1", server.port))
        with sock:
            sock.sendall(
                b"POST /cashout/register HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 999999999\r\n"
                + expect
                + b"\r\n"
                + b'{"name": "'
            )
            status, headers, body = read_answer(sock)
            assert_413(status, headers["content-type"], body)
            sock.settimeout(5)
            assert sock.recv(1) == b"", "the connection is closed after the answer"
    still_serving(server)


def test_a_body_at_the_limit_is_read(server: ServerProcess) -> None:
    with server.client() as client:
        answer = client.post(
            "/cashout/register",
            content=b"{" + b" " * (LIMIT - 2) + b"}",
            headers={"Content-Type": "application/json"},
        )
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_request"


# -- absurd bodies cost little ---------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (clock ticks)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def many_keys_body() -> bytes:
    """A 64 KB JSON object of about 6,500 unknown keys (the issue's CPU attack)."""
    items = []
    size = 2
    while True:
        item = f'"x{len(items)}":0'
        if size + len(item) + 1 > LIMIT - 16:
            return ("{" + ",".join(items) + "}").encode()
        items.append(item)
        size += len(item) + 1


def test_a_body_of_thousands_of_unknown_keys_costs_little(server: ServerProcess) -> None:
    body = many_keys_body()
    assert 60_000 < len(body) <= LIMIT and body.count(b":") > 6_000
    assert server.proc is not None
    rounds = 5
    with server.client() as client:
        client.get("/healthz")  # a warm connection
        before = cpu_seconds(server.proc.pid)
        answers = [
            client.post(
                "/cashout/register", content=body, headers={"Content-Type": "application/json"}
            )
            for _ in range(rounds)
        ]
        spent = cpu_seconds(server.proc.pid) - before
    for answer in answers:
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_request"
        assert len(answer.content) < 1024, len(answer.content)
        assert answer.json()["details"] == [
            {"field": "(body)", "problem": "has more than 100 fields in one object"}
        ]
    # Before the bound each of these cost the server about 0.65 s of CPU.
    assert spent < 0.1 * rounds, f"{spent:.2f}s of server CPU for {rounds} bodies"


def test_error_details_list_at_most_ten_problems(server: ServerProcess) -> None:
    body = {f"extra_{i}": i for i in range(40)}
    with server.client() as client:
        answer = client.post("/cashout/register", json=body)
    assert answer.status_code == 400
    details = answer.json()["details"]
    assert len(details) == 10 and len({d["field"] for d in details}) == 10
    assert len(answer.content) < 2048


# -- rate limits -----------------------------------------------------------------------------


def xff(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def claim_page(client: httpx.Client, name: str, **headers: str) -> httpx.Response:
    uuid = "00000000-0000-4000-8000-000000000000"
    return client.post(f"/cashout/claim/{name}", json={"id": uuid, "pan": "x"}, headers=headers)


def test_claim_limit_per_client_address_behind_a_trusted_proxy(server_factory: Any) -> None:
    """3 per 2 s per address; the test's client is the trusted proxy (127.0.0.1) and names
    two customers in X-Forwarded-For. One customer's flood leaves the other alone; the
    flooder is let in again once the window has refilled a token."""
    server = server_factory(
        {"CASHOUT_RATE_LIMIT_CLAIM": "3/2s", "CASHOUT_TRUSTED_PROXIES": "127.0.0.0/8"}
    )
    provider = Provider.register(server)
    flooder, other = "203.0.113.7", "198.51.100.9"
    with server.client() as client:
        for _ in range(3):
            assert claim_page(client, provider.name, **xff(flooder)).status_code == 400
        refused = claim_page(client, provider.name, **xff(flooder))
        assert refused.status_code == 429
        assert refused.json() == {
            "message": "Too many requests; try again in 1 second.",
            "code": "rate_limited",
        }
        assert refused.headers["retry-after"] == "1"
        # The HTML claim page shares the bucket, and says when to come back too.
        uuid = provider.generate(5)
        page = client.get(f"/cashout/claim/{provider.name}/{uuid}", headers=xff(flooder))
        assert page.status_code == 429 and page.headers["retry-after"] == "1"
        assert page.headers["content-type"].startswith("text/html")
        # Someone else, meanwhile, is served.
        for _ in range(3):
            assert claim_page(client, provider.name, **xff(other)).status_code == 400
        # A client cannot pose as someone else: the proxy appends the address it saw, and
        # only the rightmost untrusted one counts.
        forged = claim_page(client, provider.name, **xff(f"{other}, {flooder}"))
        assert forged.status_code == 429
        wait_until(
            lambda: claim_page(client, provider.name, **xff(flooder)).status_code == 400,
            10,
            what="the flooder's bucket to refill",
        )
    text = httpx.get(server.url + "/metrics").text
    assert 'cashout_rate_limited_total{limit="claim"}' in text


def test_forwarded_for_from_an_untrusted_peer_is_ignored(server_factory: Any) -> None:
    server = server_factory({"CASHOUT_RATE_LIMIT_CLAIM": "2/10s"})
    provider = Provider.register(server)
    with server.client() as client:
        assert claim_page(client, provider.name, **xff("203.0.113.1")).status_code == 400
        assert claim_page(client, provider.name, **xff("203.0.113.2")).status_code == 400
        third = claim_page(client, provider.name, **xff("203.0.113.3"))
        assert third.status_code == 429 and int(third.headers["retry-after"]) in range(1, 6)


def test_clients_on_their_own_addresses_have_their_own_buckets(server_factory: Any) -> None:
    """No proxy: the TCP peer is the client (loopback has the whole of 127/8)."""
    server = server_factory({"CASHOUT_RATE_LIMIT_CLAIM": "2/10s", "CASHOUT_HOST": "0.0.0.0"})
    provider = Provider.register(server)

    def from_address(address: str) -> int:
        transport = httpx.HTTPTransport(local_address=address)
        with httpx.Client(base_url=server.url, transport=transport, timeout=10) as client:
            return claim_page(client, provider.name).status_code

    assert [from_address("127.0.0.2") for _ in range(3)] == [400, 400, 429]
    assert [from_address("127.0.0.3") for _ in range(2)] == [400, 400]


def test_provider_limit_counts_only_the_providers_own_requests(server_factory: Any) -> None:
    server = server_factory({"CASHOUT_RATE_LIMIT_PROVIDER": "4/10s"})
    busy, calm = Provider.register(server), Provider.register(server)
    with server.client() as client:
        # Strangers with wrong keys on busy's path spend nothing of busy's allowance.
        for _ in range(10):
            wrong = client.get(f"/cashout/claims/{busy.name}", headers=auth("ck_test_" + "x" * 43))
            assert wrong.status_code == 401
        codes = [
            client.get(f"/cashout/claims/{busy.name}", headers=busy.headers).status_code
            for _ in range(5)
        ]
        assert codes == [200, 200, 200, 200, 429]
        limited = client.post(
            f"/cashout/generate/{busy.name}", json={"amount": 5, "id": "x"}, headers=busy.headers
        )
        assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) in range(1, 4)
        assert client.get(f"/cashout/claims/{calm.name}", headers=calm.headers).status_code == 200
    # The 429 is the one the OpenAPI document describes (body and Retry-After header).
    config = schemathesis.Config.from_dict({"base-url": server.url})
    spec = schemathesis.openapi.from_url(server.url + "/openapi.json", config=config)
    operation = spec["/cashout/generate/{name}"]["POST"]
    case = operation.Case(path_parameters={"name": busy.name})
    case.validate_response(limited, checks=CONFORMANCE)


def test_test_events_and_redeliveries_are_limited_per_provider(
    server_factory: Any, receiver: Receiver
) -> None:
    server = server_factory({"CASHOUT_RATE_LIMIT_WEBHOOK_SENDS": "2/2s"})
    provider = Provider.register(server, endpoint=receiver.url("/limited"))
    receiver.behave("/limited", secrets=[provider.webhook_secret])
    other = Provider.register(server, endpoint=receiver.url("/limited-other"))
    with server.client() as client:

        def test_event(p: Provider) -> httpx.Response:
            return client.post(f"/cashout/webhooks/{p.name}/test", headers=p.headers)

        first = test_event(provider)
        assert first.status_code == 202
        event_id = first.json()["id"]
        again = client.post(
            f"/cashout/webhooks/{provider.name}/{event_id}/redeliver", headers=provider.headers
        )
        assert again.status_code == 202
        refused = test_event(provider)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert test_event(other).status_code == 202
        wait_until(lambda: test_event(provider).status_code == 202, 10, what="a token back")
        events = client.get(f"/cashout/webhooks/{provider.name}", headers=provider.headers)
    assert len(events.json()["events"]) == 2, "refused test events store nothing"


def test_limits_at_their_defaults(server_factory: Any, receiver: Receiver) -> None:
    """The defaults the README states: 10 registrations an hour per address (one back every
    6 minutes), 30 test events or redeliveries an hour per provider (one back every 2)."""
    server = server_factory(
        {
            "CASHOUT_RATE_LIMIT_REGISTER": DEFAULT,
            "CASHOUT_RATE_LIMIT_CARD_CHECK": DEFAULT,
            "CASHOUT_RATE_LIMIT_WEBHOOK_SENDS": DEFAULT,
            "CASHOUT_RATE_LIMIT_PROVIDER": DEFAULT,
        }
    )
    assert Settings().rate_limit_register == "10/h"
    assert Settings().rate_limit_webhook_sends == "30/h"
    with server.client() as client:
        names, keys = [], []
        for _ in range(10):
            name, pan = unique_name(), random_pan()
            keys.append(register(client, provider_body(name, pan))["api_key"])
            names.append(name)
        pan = random_pan()
        remember(pan)
        refused = client.post("/cashout/register", json=provider_body(unique_name(), pan))
        assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
        assert 300 < int(refused.headers["retry-after"]) <= 360
        assert client.get("/healthz").status_code == 200, "other routes are not limited"

        receiver.behave("/defaults", secrets=[])
        profile = client.post(
            f"/cashout/profile/{names[0]}",
            json={"endpoint": receiver.url("/defaults")},
            headers=auth(keys[0]),
        )
        assert profile.status_code == 200
        codes = [
            client.post(f"/cashout/webhooks/{names[0]}/test", headers=auth(keys[0])).status_code
            for _ in range(31)
        ]
        assert codes == [202] * 30 + [429]
        assert (
            client.post(f"/cashout/webhooks/{names[1]}/test", headers=auth(keys[1])).status_code
            == 202
        )


# -- the operations port ---------------------------------------------------------------------


def test_operations_endpoints_move_to_their_own_port(server_factory: Any) -> None:
    ops_port = free_port()
    server = server_factory({"CASHOUT_OPS_PORT": str(ops_port)})
    ops = f"http://127.0.0.1:{ops_port}"
    for path in ("/healthz", "/readyz", "/metrics"):
        public = httpx.get(server.url + path, timeout=10)
        assert public.status_code == 404 and public.json()["code"] == "not_found"
        assert httpx.get(ops + path, timeout=10).status_code == 200
    assert httpx.get(server.url + "/openapi.json", timeout=10).status_code == 200
    assert httpx.post(ops + "/cashout/register", json={}, timeout=10).status_code == 404
    assert "cashout_http_requests_total" in httpx.get(ops + "/metrics", timeout=10).text
    assert f"operations endpoints on http://127.0.0.1:{ops_port}" in server.log()
