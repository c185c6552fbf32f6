"""The OpenAPI document (``schemas/openapi.yaml``, served at ``GET /openapi.json``) against the
real server.

- The served document is the file with its request schemas inlined, and it is valid
  OpenAPI 3.1 (the structure, and every schema in it as JSON Schema 2020-12).
- A scripted walk sends every route the answers it documents (successes, each error code,
  401/404/413/415, 503 with the database stopped) and checks each answer against the document.
- schemathesis fuzzes every operation against the live server, as the provider (its API key,
  its name, its real claims and events) and as strangers: no 5xx, every status documented,
  every body and content type as documented, every error ``{"message", "code"}`` JSON.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.definitions import OPENAPI_31

from server.validation import SCHEMA_DIR, openapi_document
from tests.conftest import random_pan, unique_name
from tests.harness import (
    Database,
    Provider,
    ServerProcess,
    auth,
    make_overdue,
    provider_body,
    remember,
    wait_until,
)
from tests.receiver import Receiver

FUZZ_EXAMPLES = 100  # per operation and generation mode; the whole file stays well under 90 s
SEED = 20261124
DOCUMENTED = {  # every route of server.app.routes() but the HTML claim page, as (path, method)
    ("/cashout/register", "post"),
    ("/cashout/generate/{name}", "post"),
    ("/cashout/claims/{name}", "get"),
    ("/cashout/claims/{name}/{uuid}", "get"),
    ("/cashout/claims/{name}/{uuid}/cancel", "post"),
    ("/cashout/profile/{name}", "get"),
    ("/cashout/profile/{name}", "post"),
    ("/cashout/keys/{name}/rotate", "post"),
    ("/cashout/claim/{name}", "post"),
    ("/cashout/webhooks/{name}", "get"),
    ("/cashout/webhooks/{name}/{event_id}/redeliver", "post"),
    ("/cashout/webhooks/{name}/test", "post"),
    ("/cashout/audit/{name}", "get"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}
FUZZED: Counter[tuple[str, int]] = Counter()  # (operation, status) of every fuzzed answer
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


# -- the document on its own ---------------------------------------------------------------


def _schemas(node: Any, key: str = "") -> Iterator[Any]:
    """Every schema object in an OpenAPI document (components, parameters, bodies, answers)."""
    if isinstance(node, dict):
        if key == "schema":
            yield node
            return
        if key == "schemas":
            yield from node.values()
            return
        for k, v in node.items():
            yield from _schemas(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _schemas(v)


def test_served_document_is_the_file_and_valid_openapi_31(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert doc == openapi_document()
    assert doc["openapi"].startswith("3.1.")
    errors = sorted(Draft202012Validator(OPENAPI_31).iter_errors(doc), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]
    for schema in _schemas(doc):
        Draft202012Validator.check_schema(schema)
    # Request schemas are the files in schemas/, inlined: nothing points outside the document.
    refs = re.findall(r'"\$ref": "([^"]*)"', json.dumps(doc))
    assert refs and all(r.startswith("#/") for r in refs)
    for path, method, name in [
        ("/cashout/register", "post", "register"),
        ("/cashout/generate/{name}", "post", "generate"),
        ("/cashout/claim/{name}", "post", "claim"),
        ("/cashout/keys/{name}/rotate", "post", "rotate_keys"),
    ]:
        body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]
        on_disk = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
        assert body["schema"]["properties"] == on_disk["properties"]
    webhook = doc["components"]["schemas"]["WebhookPayload"]
    assert (
        webhook["properties"] == json.loads((SCHEMA_DIR / "webhook.json").read_text())["properties"]
    )
    # Every JSON route of the app is described, and nothing else (not the HTML claim page).
    described = {(p, m) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    assert described == DOCUMENTED
    loaded = schemathesis.openapi.from_dict(doc)
    loaded.validate()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, answer in operation["responses"].items():
                if int(status) < 400 or (path, status) == ("/readyz", "503"):
                    continue
                if "$ref" in answer:
                    answer = doc["components"]["responses"][answer["$ref"].split("/")[-1]]
                schema = answer["content"]["application/json"]["schema"]
                assert ERROR_REF in (schema, schema.get("allOf", [None])[0]), (path, status)


def test_every_route_of_the_app_is_in_the_document() -> None:
    """Each method a handler of server.app.routes() implements, but the HTML claim pages."""
    from tornado.web import RequestHandler

    from server.app import routes

    implemented = {
        (template, method)
        for template, handler in routes()
        for method in ("get", "post", "put", "patch", "delete")
        if getattr(handler, method) is not getattr(RequestHandler, method)
    }
    html = {  # the customer's pages, and near misses of their links (the not-found page)
        ("/cashout/claim/{name}/{uuid}", "get"),
        ("/cashout/claim/{name}/{uuid}", "post"),
        ("/cashout/claim/{name}/{uuid}/.*", "get"),
        ("/cashout/claim/{name}/", "get"),
    }
    assert implemented - html == DOCUMENTED


# -- the world the scripted walk and the fuzzer use ----------------------------------------


@dataclass
class World:
    server: ServerProcess
    receiver: Receiver
    main: Provider
    other: Provider
    claims: dict[str, str] = field(default_factory=dict)  # state -> claim uuid (main's)
    other_claim: str = ""
    pool: list[str] = field(default_factory=list)  # pending claims the fuzzer may submit
    cards: list[str] = field(default_factory=list)  # valid receiving cards for the fuzzer
    events: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return self.main.headers

    def use_key(self, api_key: str) -> None:
        remember(api_key)
        self.main.headers = auth(api_key)

    def events_of(self, provider: Provider) -> list[dict[str, Any]]:
        answer = provider.client.get(
            f"/cashout/webhooks/{provider.name}", headers=provider.headers, params={"limit": "100"}
        )
        assert answer.status_code == 200
        return answer.json()["events"]


@pytest.fixture(scope="module")
def world(server: ServerProcess, receiver: Receiver, mongo: Any) -> World:
    main = Provider.register(server, endpoint=receiver.url("/main"))
    receiver.behave("/main", secrets=[main.webhook_secret])
    other = Provider.register(server, endpoint=receiver.url("/other"))
    receiver.behave("/other", status=500)
    w = World(server, receiver, main, other)
    w.claims["pending"] = main.generate(100)
    w.claims["cancelled"] = main.generate(101)
    cancelled = main.client.post(
        f"/cashout/claims/{main.name}/{w.claims['cancelled']}/cancel", headers=main.headers
    )
    assert cancelled.status_code == 200
    outcomes = {
        "succeeded": random_pan(),
        "failed": random_pan("0051"),
        "retry": random_pan("0052"),
        "processing": random_pan("0091"),
    }
    for state, pan in outcomes.items():
        uuid = main.generate(102)
        assert main.claim(uuid, pan).status_code == 202
        w.claims[state] = uuid
    main.wait(w.claims["succeeded"], "succeeded")
    main.wait(w.claims["failed"], "failed")
    wait_until(
        lambda: main.status(w.claims["retry"])["status"] == "pending",
        20,
        what="the 0052 claim back to pending",
    )
    wait_until(
        lambda: main.status(w.claims["processing"])["attempts"][0]["outcome"] == "unknown",
        20,
        what="the 0091 attempt to be unknown",
    )
    w.claims["expired"] = main.generate(103)
    make_overdue(mongo[server.env["CASHOUT_DB_NAME"]], w.claims["expired"])
    w.other_claim = other.generate(5)
    w.pool = [main.generate(7) for _ in range(8)]
    w.cards = [random_pan(), random_pan(length=19), random_pan("0052")]
    remember(*w.cards)
    assert (
        other.client.post(f"/cashout/webhooks/{other.name}/test", headers=other.headers).status_code
        == 202
    )
    wait_until(lambda: len(w.events_of(main)) >= 2, 20, what="main's claim events")
    w.events = [e["id"] for e in w.events_of(main)]
    return w


@pytest.fixture(scope="module")
def spec(server: ServerProcess) -> Any:
    config = schemathesis.Config.from_dict({"base-url": server.url})
    return schemathesis.openapi.from_url(server.url + "/openapi.json", config=config)


# -- the scripted walk: every documented answer, checked against the document ---------------

NOBODY = object()


@dataclass
class Walk:
    spec: Any
    client: httpx.Client
    keys: Callable[[], dict[str, dict[str, str]]]  # "main"/"other" -> Authorization header
    seen: set[tuple[str, str, int]] = field(default_factory=set)

    def __call__(
        self,
        method: str,
        template: str,
        status: int,
        code: str | None = None,
        *,
        params: dict[str, str] | None = None,
        body: Any = NOBODY,
        raw: bytes | None = None,
        content_type: str = "application/json",
        key: str | None = "main",
        raw_query: str = "",
        **path: str,
    ) -> Any:
        """Send one request, check its status (and error code), and validate the answer
        against the operation's documented responses."""
        headers: dict[str, str] = {}
        known = self.keys()
        if key in known:
            headers.update(known[key])
        elif key is not None:
            headers["Authorization"] = key
        content: bytes | None = raw
        if body is not NOBODY:
            content = json.dumps(body).encode()
        if content is not None:
            headers["Content-Type"] = content_type
        url = template.format(**path) + (f"?{raw_query}" if raw_query else "")
        response = self.client.request(method, url, params=params, content=content, headers=headers)
        where = f"{method} {url} -> {response.status_code} {response.text[:300]}"
        assert response.status_code == status, where
        operation = self.spec[template][method]
        case = operation.Case(path_parameters=path or None, query=params or None)
        expected_5xx = status >= 500  # the outage test asks for 503s on purpose
        case.validate_response(response, checks=CONFORMANCE[expected_5xx:])
        self.seen.add((template, method.lower(), status))
        if not response.headers["content-type"].startswith("application/json"):
            return response.text
        answer = response.json()
        if code is not None:
            check_error_body(answer, where)
            assert answer["code"] == code, where
        return answer


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for a schema of the document whose ``#/components/...`` refs resolve."""
    return Draft202012Validator(
        {**schema, "components": doc["components"]},
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def check_error_body(body: Any, where: str = "") -> None:
    assert isinstance(body, dict), where
    assert set(body) <= {"message", "code", "details"}, where
    assert isinstance(body.get("message"), str) and body["message"], where
    assert isinstance(body.get("code"), str) and re.fullmatch(r"[a-z][a-z0-9_]*", body["code"])
    for detail in body.get("details", []):
        assert set(detail) == {"field", "problem"}, where


def test_every_documented_answer_matches_the_document(world: World, spec: Any, mongo: Any) -> None:
    w = world
    main, other = w.main, w.other
    walk = Walk(spec, w.server.client(), lambda: {"main": w.headers, "other": other.headers})
    me = {"name": main.name}

    walk("GET", "/healthz", 200, key=None)
    walk(
        "GET", "/healthz", 400, "bad_request", raw=b"", content_type="multipart/form-data", key=None
    )
    walk("GET", "/readyz", 200, key=None)
    walk("GET", "/openapi.json", 200, key=None)
    assert "cashout_claims" in walk("GET", "/metrics", 200, key=None)

    # Registration: every refusal, then a new provider.
    pan = random_pan()
    remember(pan)
    fresh = provider_body(unique_name("walk"), pan, ipin="2468")
    walk("POST", "/cashout/register", 400, "invalid_request", body={**fresh, "pan": "12"})
    walk(
        "POST",
        "/cashout/register",
        400,
        "invalid_request",
        body={**fresh, "pan": pan[:-1] + str((int(pan[-1]) + 1) % 10)},
    )
    walk("POST", "/cashout/register", 400, "invalid_request", body={**fresh, "extra": 1})
    walk("POST", "/cashout/register", 400, "invalid_request", body=[fresh])
    walk("POST", "/cashout/register", 400, "invalid_json", raw=b'{"name": ')
    walk("POST", "/cashout/register", 400, "consent_required", body={**fresh, "consent": False})
    walk("POST", "/cashout/register", 400, "card_expired", body={**fresh, "expDate": "2001"})
    walk(
        "POST",
        "/cashout/register",
        400,
        "invalid_endpoint",
        body={**fresh, "endpoint": "ftp://example.com/hook"},
    )
    walk(
        "POST",
        "/cashout/register",
        400,
        "card_rejected",  # main's card with another IPIN
        body={**fresh, "pan": main.pan, "ipin": "9999"},
    )
    walk(
        "POST",
        "/cashout/register",
        415,
        "unsupported_media_type",
        body=fresh,
        content_type="text/plain",
    )
    walk(
        "POST",
        "/cashout/register",
        413,
        "payload_too_large",
        body={**fresh, "endpoint": "http://127.0.0.1/" + "a" * 70_000},
    )
    made = walk("POST", "/cashout/register", 200, body=fresh)
    remember(made["api_key"], made["webhook_secret"])
    walk("POST", "/cashout/register", 409, "provider_exists", body=fresh)

    # Generate: created, replayed, refused.
    ref = unique_name("order")
    first = walk("POST", "/cashout/generate/{name}", 201, body={"amount": 40, "id": ref}, **me)
    again = walk("POST", "/cashout/generate/{name}", 200, body={"amount": 40, "id": ref}, **me)
    assert first == again
    w.pool.append(first["uuid"])
    walk(
        "POST", "/cashout/generate/{name}", 409, "id_conflict", body={"amount": 41, "id": ref}, **me
    )
    walk(
        "POST",
        "/cashout/generate/{name}",
        400,
        "amount_over_limit",
        body={"amount": 10**9, "id": unique_name("big")},
        **me,
    )
    for bad in (
        {"amount": "100", "id": "x"},
        {"amount": 100.5, "id": "x"},
        {"amount": True, "id": "x"},
        {"amount": 0, "id": "x"},
        {"amount": 5, "id": ""},
        {"amount": 5, "id": "x", "expires_in": 30},
        {"amount": 5, "id": "x", "expires_in": 10**9},
        {"amount": 5},
    ):
        walk("POST", "/cashout/generate/{name}", 400, "invalid_request", body=bad, **me)
    walk("POST", "/cashout/generate/{name}", 400, "invalid_json", raw=b"NaN", **me)
    walk(
        "POST",
        "/cashout/generate/{name}",
        415,
        "unsupported_media_type",
        raw=b"amount=5",
        content_type="application/x-www-form-urlencoded",
        **me,
    )
    walk(
        "POST",
        "/cashout/generate/{name}",
        413,
        "payload_too_large",
        body={"amount": 5, "id": "x" * 70_000},
        **me,
    )
    walk(
        "POST",
        "/cashout/generate/{name}",
        401,
        "unauthorized",
        body={"amount": 5, "id": "x"},
        key=None,
        **me,
    )
    walk(
        "POST",
        "/cashout/generate/{name}",
        401,
        "unauthorized",
        body={"amount": 5, "id": "x"},
        key="Bearer ck_test_not-a-key",
        **me,
    )
    walk(
        "POST",
        "/cashout/generate/{name}",
        404,
        "not_found",
        body={"amount": 5, "id": "x"},
        key="other",
        **me,
    )

    # The provider's claims: one by uuid in every state, by id, pages, refusals.
    for state, uuid in w.claims.items():
        if state == "expired":
            continue
        claim = walk("GET", "/cashout/claims/{name}/{uuid}", 200, uuid=uuid, **me)
        assert claim["status"] == {"retry": "pending"}.get(state, state)
    walk(
        "GET",
        "/cashout/claims/{name}/{uuid}",
        404,
        "not_found",
        uuid="00000000-0000-4000-8000-000000000000",
        **me,
    )
    walk("GET", "/cashout/claims/{name}/{uuid}", 404, "not_found", uuid=w.other_claim, **me)
    walk(
        "GET",
        "/cashout/claims/{name}/{uuid}",
        404,
        "not_found",
        uuid=w.other_claim,
        key="other",
        **me,
    )
    walk(
        "GET",
        "/cashout/claims/{name}/{uuid}",
        401,
        "unauthorized",
        uuid=w.other_claim,
        key=None,
        **me,
    )
    walk("GET", "/cashout/claims/{name}/{uuid}", 400, "bad_request", uuid="%FF", **me)
    walk("GET", "/cashout/claims/{name}", 400, "bad_request", raw_query="status=%FF", **me)
    walk("GET", "/cashout/claims/{name}", 200, params={"id": ref}, **me)
    walk("GET", "/cashout/claims/{name}", 404, "not_found", params={"id": "nobody's"}, **me)
    page = walk("GET", "/cashout/claims/{name}", 200, params={"limit": "3"}, **me)
    assert len(page["claims"]) == 3 and page["next"]
    page = walk(
        "GET", "/cashout/claims/{name}", 200, params={"limit": "3", "after": page["next"]}, **me
    )
    walk("GET", "/cashout/claims/{name}", 200, params={"status": "succeeded"}, **me)
    walk("GET", "/cashout/claims/{name}", 200, params={"limit": "100"}, **me)
    for params in (
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"status": "paid"},
        {"after": "not-a-cursor"},
    ):
        walk("GET", "/cashout/claims/{name}", 400, "invalid_request", params=params, **me)
    walk("GET", "/cashout/claims/{name}", 401, "unauthorized", key="Bearer", **me)
    walk("GET", "/cashout/claims/{name}", 404, "not_found", name=other.name)

    # Cancel.
    uuid = main.generate(9)
    walk(
        "POST",
        "/cashout/claims/{name}/{uuid}/cancel",
        400,
        "invalid_request",
        body={"reason": "x"},
        uuid=uuid,
        **me,
    )
    walk(
        "POST",
        "/cashout/claims/{name}/{uuid}/cancel",
        415,
        "unsupported_media_type",
        raw=b"now",
        content_type="text/plain",
        uuid=uuid,
        **me,
    )
    walk("POST", "/cashout/claims/{name}/{uuid}/cancel", 200, body={}, uuid=uuid, **me)
    walk("POST", "/cashout/claims/{name}/{uuid}/cancel", 409, "not_cancellable", uuid=uuid, **me)
    walk(
        "POST",
        "/cashout/claims/{name}/{uuid}/cancel",
        409,
        "not_cancellable",
        uuid=w.claims["succeeded"],
        **me,
    )
    walk("POST", "/cashout/claims/{name}/{uuid}/cancel", 404, "not_found", uuid=w.other_claim, **me)
    walk(
        "POST",
        "/cashout/claims/{name}/{uuid}/cancel",
        401,
        "unauthorized",
        uuid=uuid,
        key=None,
        **me,
    )

    # The customer's JSON claim route.
    claim_path = "/cashout/claim/{name}"
    target = w.pool.pop()
    walk("POST", claim_path, 400, "invalid_card", body={"id": target, "pan": "1234"}, **me)
    walk(
        "POST",
        claim_path,
        400,
        "invalid_card",
        body={"id": target, "pan": pan[:-1] + str((int(pan[-1]) + 1) % 10)},
        **me,
    )
    walk("POST", claim_path, 400, "invalid_request", body={"id": "nope", "pan": pan}, **me)
    walk("POST", claim_path, 400, "invalid_request", body={"id": target}, **me)
    walk("POST", claim_path, 400, "invalid_json", raw=b"{'id': 1}", **me)
    form = b'--xx\r\nContent-Disposition: form-data; name="id"\r\n\r\n1\r\n--xx--\r\n'
    walk(
        "POST",
        claim_path,
        415,
        "unsupported_media_type",
        raw=form,
        content_type="multipart/form-data; boundary=xx",
        **me,
    )
    walk("POST", claim_path, 400, "bad_request", raw=form, content_type="multipart/form-data", **me)
    walk(
        "POST",
        claim_path,
        404,
        "not_found",
        body={"id": "00000000-0000-4000-8000-000000000000", "pan": pan},
        **me,
    )
    walk("POST", claim_path, 404, "not_found", body={"id": target, "pan": pan}, name=other.name)
    card = random_pan()
    remember(card)
    answer = walk(
        "POST", claim_path, 202, body={"id": target, "pan": card[:4] + " " + card[4:]}, **me
    )
    assert answer["card"] == "****" + card[-4:]
    walk("POST", claim_path, 409, "already_claimed", body={"id": target, "pan": card}, **me)
    walk(
        "POST",
        claim_path,
        410,
        "claim_cancelled",
        body={"id": w.claims["cancelled"], "pan": card},
        **me,
    )
    walk(
        "POST",
        claim_path,
        410,
        "claim_expired",
        body={"id": w.claims["expired"], "pan": card},
        **me,
    )
    expired = walk("GET", "/cashout/claims/{name}/{uuid}", 200, uuid=w.claims["expired"], **me)
    assert expired["status"] == "expired"
    main.wait(target, "succeeded")

    # Profile.
    walk("GET", "/cashout/profile/{name}", 200, **me)
    walk("GET", "/cashout/profile/{name}", 401, "unauthorized", key="Basic abc", **me)
    walk("GET", "/cashout/profile/{name}", 404, "not_found", key="other", **me)
    walk("POST", "/cashout/profile/{name}", 200, body={"endpoint": w.receiver.url("/main")}, **me)
    walk(
        "POST",
        "/cashout/profile/{name}",
        200,
        body={"pan": main.pan, "expDate": "3012", "ipin": "7391", "consent": True},
        **me,
    )
    for bad, code in [
        ({}, "invalid_request"),
        ({"pan": main.pan}, "invalid_request"),
        ({"endpoint": "mailto:x@example.com"}, "invalid_endpoint"),
        ({"pan": main.pan, "expDate": "2001", "ipin": "7391", "consent": True}, "card_expired"),
        (
            {"pan": main.pan, "expDate": "3012", "ipin": "7391", "consent": False},
            "consent_required",
        ),
        ({"pan": main.pan, "expDate": "3012", "ipin": "1111", "consent": True}, "card_rejected"),
    ]:
        walk("POST", "/cashout/profile/{name}", 400, code, body=bad, **me)
    walk(
        "POST",
        "/cashout/profile/{name}",
        415,
        "unsupported_media_type",
        raw=b"{}",
        content_type="text/json",
        **me,
    )

    # Webhooks: the log, redelivery, a test event.
    log = walk("GET", "/cashout/webhooks/{name}", 200, params={"limit": "100"}, **me)
    assert {e["payload"].get("status") for e in log["events"]} >= {"succeeded", "failed", "expired"}
    assert any(e["payload"].get("type") == "provider.updated" for e in log["events"])
    assert any(a["http_status"] == 200 for e in log["events"] for a in e["attempts"])
    walk("GET", "/cashout/webhooks/{name}", 200, params={"status": "delivered", "limit": "1"}, **me)
    walk("GET", "/cashout/webhooks/{name}", 200, key="other", name=other.name)
    walk("GET", "/cashout/webhooks/{name}", 400, "invalid_request", params={"status": "sent"}, **me)
    walk("GET", "/cashout/webhooks/{name}", 404, "not_found", name=other.name)
    walk("POST", "/cashout/webhooks/{name}/test", 202, **me)
    walk("POST", "/cashout/webhooks/{name}/test", 400, "invalid_request", body={"x": 1}, **me)
    walk("POST", "/cashout/webhooks/{name}/{event_id}/redeliver", 202, event_id=w.events[0], **me)
    walk(
        "POST",
        "/cashout/webhooks/{name}/{event_id}/redeliver",
        202,
        body={},
        event_id=w.events[0],
        **me,
    )
    walk(
        "POST",
        "/cashout/webhooks/{name}/{event_id}/redeliver",
        404,
        "not_found",
        event_id="evt_" + "0" * 32,
        **me,
    )
    walk(
        "POST",
        "/cashout/webhooks/{name}/{event_id}/redeliver",
        413,
        "payload_too_large",
        body={"x": "y" * 70_000},
        event_id=w.events[0],
        **me,
    )
    walk(
        "POST",
        "/cashout/webhooks/{name}/{event_id}/redeliver",
        401,
        "unauthorized",
        event_id=w.events[0],
        key=None,
        **me,
    )

    # Rotation, last: a new webhook secret, then a new key (the old one stops at once).
    walk("POST", "/cashout/keys/{name}/rotate", 400, "invalid_request", body={}, **me)
    walk(
        "POST", "/cashout/keys/{name}/rotate", 400, "invalid_request", body={"api_key": False}, **me
    )
    walk(
        "POST", "/cashout/keys/{name}/rotate", 400, "invalid_request", body={"api_key": "yes"}, **me
    )
    rotated = walk("POST", "/cashout/keys/{name}/rotate", 200, body={"webhook_secret": True}, **me)
    remember(rotated["webhook_secret"])
    w.receiver.behave("/main", secrets=[rotated["webhook_secret"], main.webhook_secret])
    old = dict(main.headers)
    rotated = walk("POST", "/cashout/keys/{name}/rotate", 200, body={"api_key": True}, **me)
    w.use_key(rotated["api_key"])
    walk("GET", "/cashout/profile/{name}", 401, "unauthorized", key=old["Authorization"], **me)
    walk("GET", "/cashout/profile/{name}", 200, **me)

    # The audit log of everything above.
    audit = walk("GET", "/cashout/audit/{name}", 200, params={"limit": "100"}, **me)
    actions = {e["action"] for e in audit["entries"]}
    assert {"provider.registered", "profile.updated", "credentials.rotated"} <= actions
    assert {"claim.cancelled", "card_check.rejected"} <= actions
    page = walk("GET", "/cashout/audit/{name}", 200, params={"limit": "2"}, **me)
    walk("GET", "/cashout/audit/{name}", 200, params={"after": page["next"]}, **me)
    walk("GET", "/cashout/audit/{name}", 400, "invalid_request", params={"limit": "0"}, **me)
    walk("GET", "/cashout/audit/{name}", 401, "unauthorized", key=None, **me)
    walk("GET", "/cashout/audit/{name}", 404, "not_found", key="other", **me)

    # Every webhook the receiver got is the documented payload with the documented headers:
    # claim events, and the security notices the profile changes and rotations sent.
    doc = spec.raw_schema
    kinds = {}
    for kind in ("claimFinished", "providerUpdated"):
        hook = doc["webhooks"][kind]["post"]
        kinds[kind] = (
            validator(doc, hook["requestBody"]["content"]["application/json"]["schema"]),
            {p["name"]: validator(doc, p["schema"]) for p in hook["parameters"]},
        )
    calls = w.receiver.calls_to("/main") + w.receiver.calls_to("/other")
    claim_calls = [c for c in calls if "type" not in c.payload]
    assert {c.payload["status"] for c in claim_calls} >= {"succeeded", "failed", "expired", "test"}
    notices = [c for c in calls if c.payload.get("type") == "provider.updated"]
    assert {ch["field"] for c in notices for ch in c.payload["data"]["changes"]} >= {
        "card",
        "webhook_secret",
        "api_key",
    }
    for call in calls:
        payload, headers = kinds["providerUpdated" if "type" in call.payload else "claimFinished"]
        payload.validate(call.payload)
        for name, check in headers.items():
            check.validate(call.headers[name])

    # Unknown routes and methods answer the Error shape too.
    for method, url, status in [
        ("GET", "/cashout/nothing-here", 404),
        ("GET", "/", 404),
        ("PUT", "/cashout/register", 405),
        ("DELETE", f"/cashout/profile/{main.name}", 405),
        ("GET", f"/cashout/claim/{main.name}", 405),
    ]:
        response = walk.client.request(method, url)
        assert response.status_code == status
        assert response.headers["content-type"].startswith("application/json")
        check_error_body(response.json(), url)
        assert response.json()["code"] == {404: "not_found", 405: "method_not_allowed"}[status]
    assert spec.raw_schema["components"]["responses"]["MethodNotAllowed"]

    # Every operation had at least one answer checked, and every 2xx it documents.
    for path, item in spec.raw_schema["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status in operation["responses"]:
                if status.startswith("2"):
                    assert (path, method, int(status)) in walk.seen, (path, method, status)


def test_method_not_allowed_names_the_allowed_methods(server: ServerProcess) -> None:
    response = httpx.put(server.url + "/cashout/register", timeout=10)
    assert response.status_code == 405
    assert response.headers.get("allow") == "POST"


def test_unavailable_database_answers_503_as_documented(
    server_factory: Any, tmp_path_factory: Any
) -> None:
    """With its database stopped, the server answers 503: readiness with its report, every
    other route with the Error body (code ``unavailable``)."""
    db = Database(tmp_path_factory.mktemp("outage")).start()
    try:
        server = server_factory({"CASHOUT_MONGODB_URI": db.uri, "CASHOUT_DB_TIMEOUT_MS": "300"})
        provider = Provider.register(server)
        config = schemathesis.Config.from_dict({"base-url": server.url})
        spec = schemathesis.openapi.from_url(server.url + "/openapi.json", config=config)
        walk = Walk(spec, server.client(), lambda: {"main": provider.headers})
        db.stop()
        me = {"name": provider.name}
        ready = walk("GET", "/readyz", 503, key=None)
        assert ready == {"status": "unavailable", "database": False, "gateway": True}
        walk("GET", "/healthz", 200, key=None)
        walk("GET", "/metrics", 503, "unavailable", key=None)
        walk("GET", "/cashout/profile/{name}", 503, "unavailable", **me)
        walk(
            "POST",
            "/cashout/generate/{name}",
            503,
            "unavailable",
            body={"amount": 5, "id": "x"},
            **me,
        )
        walk(
            "POST",
            "/cashout/claim/{name}",
            503,
            "unavailable",
            body={"id": "00000000-0000-4000-8000-000000000000", "pan": random_pan()},
            **me,
        )
        body = provider_body(unique_name("down"), random_pan())
        walk("POST", "/cashout/register", 503, "unavailable", body=body)
    finally:
        db.stop()


# -- server bugs found while describing the server (fixed; kept as regression tests) -------


@pytest.mark.parametrize(
    ("route", "raw"),
    [
        ("generate", b'{"amount": 5, "id": "\\ud800"}'),
        ("profile", b'{"endpoint": "http://example.com/\\ud800"}'),
    ],
)
def test_lone_surrogates_are_refused_not_500(world: World, route: str, raw: bytes) -> None:
    response = world.main.client.post(
        f"/cashout/{route}/{world.main.name}",
        content=raw,
        headers={**world.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_request"


@pytest.mark.parametrize("route", ["claims", "webhooks"])
def test_unicode_digit_limit_is_refused_not_500(world: World, route: str) -> None:
    response = world.main.client.get(
        f"/cashout/{route}/{world.main.name}", params={"limit": "\u00b2"}, headers=world.headers
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_request"


def test_provider_name_with_a_trailing_newline_is_refused(server: ServerProcess) -> None:
    pan = random_pan()
    remember(pan)
    body = provider_body(unique_name("nl") + "\n", pan, ipin="5182")
    response = server.client().post("/cashout/register", json=body)
    if response.status_code == 200:
        remember(response.json()["api_key"], response.json()["webhook_secret"])
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_request"


def test_whole_number_float_amount_is_refused_or_kept_an_integer(world: World) -> None:
    response = world.main.client.post(
        f"/cashout/generate/{world.main.name}",
        headers=world.headers,
        json={"amount": 100.0, "id": unique_name("float")},
    )
    if response.status_code == 400:
        assert response.json()["code"] == "invalid_request"
    else:
        assert response.status_code == 201
        assert isinstance(response.json()["amount"], int), response.text


# -- schemathesis: every operation, fuzzed against the live server -------------------------


def error_is_json_message_and_code(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx answer is ``{"message", "code"[, "details"]}`` JSON (docs/DESIGN.md 4)."""
    if response.status_code < 400 or (case.path, response.status_code) == ("/readyz", 503):
        return None  # a not-ready /readyz answers its readiness report (documented)
    ctype = response.headers.get("content-type", [""])[0]
    assert ctype.startswith("application/json"), f"error answered as {ctype!r}"
    check_error_body(json.loads(response.content), f"{case.method} {case.path}")
    return None


# The document on disk (the test above proves the server serves exactly this). A provider name
# or card the fuzzer makes up still gets a 400 or 404, and a schema-valid body can be refused
# for what a schema cannot say (Luhn, expiry, consent, URL syntax, limits, a claim already
# claimed or gone): those are accepted answers to valid data. Every answer is still checked
# against the document.
FUZZ = schemathesis.openapi.from_dict(
    openapi_document(),
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": FUZZ_EXAMPLES, "deterministic": True},
            "phases": {"stateful": {"enabled": False}},
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "400", "401", "404", "409", "410", "422"]
                },
            },
            "suppress-health-check": ["all"],
        }
    ),
)


def steer(world: World, case: Any) -> None:
    """Point many generated requests at the provider's own name, real claims and events, and
    some claim submissions at a real pending claim with a valid card; the rest stay as the
    fuzzer made them (strangers' names, unknown ids). The choices are drawn from the case
    itself, so a run is reproducible (and schemathesis's coverage phase stays on)."""
    rng = random.Random(zlib.crc32(repr(case).encode()))
    meta = case.meta

    def positive(location: ParameterLocation) -> bool:  # never repair what a case negates
        return meta is None or not meta.is_negative_at(location)

    path = dict(case.path_parameters or {})
    if "name" in path and positive(ParameterLocation.PATH) and rng.random() < 0.75:
        path["name"] = rng.choice([world.main.name] * 3 + [world.other.name])
        if "uuid" in path and rng.random() < 0.6:
            path["uuid"] = rng.choice([*world.claims.values(), world.other_claim])
        if "event_id" in path and rng.random() < 0.6:
            path["event_id"] = rng.choice(world.events)
        case.path_parameters = path
    if (
        case.operation.label == "GET /cashout/claims/{name}"
        and "id" in (case.query or {})
        and positive(ParameterLocation.QUERY)
        and rng.random() < 0.5
    ):
        case.query = {k: v for k, v in case.query.items() if k != "id"}  # a page, not one claim
    if (
        case.operation.path == "/cashout/claim/{name}"
        and isinstance(case.body, dict)
        and positive(ParameterLocation.BODY)
        and positive(ParameterLocation.PATH)
        and rng.random() < 0.5
    ):
        uuid = world.pool.pop() if world.pool else rng.choice(list(world.claims.values()))
        case.body = {"id": uuid, "pan": rng.choice(world.cards)}
        case.path_parameters = {"name": world.main.name}


def observe(world: World, case: Any, response: Any) -> None:
    """Keep the world's key current after a rotation the fuzzer made."""
    if case.operation.path == "/cashout/keys/{name}/rotate" and response.status_code == 200:
        answer = json.loads(response.content)
        remember(answer.get("webhook_secret", ""))
        if "api_key" in answer:
            world.use_key(answer["api_key"])


@FUZZ.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzz_every_operation_conforms(case: Any, world: World) -> None:
    steer(world, case)
    # The provider's current key, unless this case is about the Authorization header itself
    # (missing or malformed: it must get 401). Passed as an explicit header, so schemathesis's
    # ignored_auth check knows it is a real key and probes the route without it.
    headers = None
    if "Authorization" in (case.headers or {}) and not case.meta.is_negative_at(
        ParameterLocation.HEADER
    ):
        headers = world.headers
    response = case.call_and_validate(
        base_url=world.server.url,
        headers=headers,
        additional_checks=[error_is_json_message_and_code],
    )
    observe(world, case, response)
    FUZZED[(case.operation.label, response.status_code)] += 1


def test_fuzzing_reached_every_operation_as_the_provider() -> None:
    """The fuzzer did not just collect 401s and 404s: each operation was answered past
    authentication, and (but for registration and profile changes, whose random bodies fail
    the card and URL checks) successfully at least once."""
    if not FUZZED:
        pytest.skip("the fuzz test did not run")
    statuses: dict[str, set[int]] = {}
    for (label, status), _count in FUZZED.items():
        statuses.setdefault(label, set()).add(status)
    assert set(statuses) == {f"{m.upper()} {p}" for p, m in DOCUMENTED}
    for label, seen in statuses.items():
        assert any(s not in (401, 404, 405) for s in seen), (label, seen)
        if label not in ("POST /cashout/register", "POST /cashout/profile/{name}"):
            assert any(200 <= s < 300 for s in seen), (label, seen)
