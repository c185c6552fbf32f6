"""A table of bad requests: each gets the right status and a JSON {"message", "code"},
echoes no secret, writes nothing to the database, and the server keeps serving."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from bson import json_util

from tests.conftest import random_pan, unique_name
from tests.harness import ServerProcess, auth, provider_body, register, remember

PAN = random_pan()
LUHN_BAD = PAN[:-1] + str((int(PAN[-1]) + 1) % 10)
remember(PAN, LUHN_BAD)


def reg(**changes: Any) -> dict[str, Any]:
    body = provider_body("newcomer-" + unique_name(), PAN, ipin="4826")
    body.update(changes)
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    status: int
    code: str
    body: Any = None
    raw: bytes | None = None
    method: str = "POST"
    key: str = "own"  # own | other | none | wrong | basic
    content_type: str = "application/json"
    params: dict[str, str] = field(default_factory=dict)


GEN = "/cashout/generate/{name}"
CASES = [
    # registration: schema
    *[
        Case(
            f"register-missing-{f}",
            "/cashout/register",
            400,
            "invalid_request",
            reg(**{f: DROP}),
            key="none",
        )
        for f in ("name", "pan", "expDate", "ipin", "consent", "endpoint")
    ],
    Case(
        "register-name-int", "/cashout/register", 400, "invalid_request", reg(name=42), key="none"
    ),
    Case(
        "register-name-upper",
        "/cashout/register",
        400,
        "invalid_request",
        reg(name="Shop"),
        key="none",
    ),
    Case(
        "register-name-short",
        "/cashout/register",
        400,
        "invalid_request",
        reg(name="ab"),
        key="none",
    ),
    Case(
        "register-name-slash",
        "/cashout/register",
        400,
        "invalid_request",
        reg(name="a/b/c"),
        key="none",
    ),
    Case(
        "register-name-long",
        "/cashout/register",
        400,
        "invalid_request",
        reg(name="a" * 65),
        key="none",
    ),
    Case(
        "register-pan-number",
        "/cashout/register",
        400,
        "invalid_request",
        reg(pan=int(PAN)),
        key="none",
    ),
    Case(
        "register-pan-15",
        "/cashout/register",
        400,
        "invalid_request",
        reg(pan=PAN[:15]),
        key="none",
    ),
    Case(
        "register-pan-17",
        "/cashout/register",
        400,
        "invalid_request",
        reg(pan=PAN + "0"),
        key="none",
    ),
    Case(
        "register-pan-letters",
        "/cashout/register",
        400,
        "invalid_request",
        reg(pan=PAN[:12] + "abcd"),
        key="none",
    ),
    Case(
        "register-pan-spaces",
        "/cashout/register",
        400,
        "invalid_request",
        reg(pan=PAN[:8] + " " + PAN[8:]),
        key="none",
    ),
    Case(
        "register-pan-luhn",
        "/cashout/register",
        400,
        "invalid_request",
        reg(pan=LUHN_BAD),
        key="none",
    ),
    Case(
        "register-exp-past",
        "/cashout/register",
        400,
        "card_expired",
        reg(expDate="2001"),
        key="none",
    ),
    Case(
        "register-exp-month-13",
        "/cashout/register",
        400,
        "invalid_request",
        reg(expDate="3013"),
        key="none",
    ),
    Case(
        "register-exp-month-00",
        "/cashout/register",
        400,
        "invalid_request",
        reg(expDate="3000"),
        key="none",
    ),
    Case(
        "register-exp-slash",
        "/cashout/register",
        400,
        "invalid_request",
        reg(expDate="12/30"),
        key="none",
    ),
    Case(
        "register-ipin-3", "/cashout/register", 400, "invalid_request", reg(ipin="482"), key="none"
    ),
    Case(
        "register-ipin-int", "/cashout/register", 400, "invalid_request", reg(ipin=4826), key="none"
    ),
    Case(
        "register-consent-false",
        "/cashout/register",
        400,
        "consent_required",
        reg(consent=False),
        key="none",
    ),
    Case(
        "register-consent-string",
        "/cashout/register",
        400,
        "invalid_request",
        reg(consent="true"),
        key="none",
    ),
    Case(
        "register-endpoint-ftp",
        "/cashout/register",
        400,
        "invalid_endpoint",
        reg(endpoint="ftp://example.com/x"),
        key="none",
    ),
    Case(
        "register-endpoint-relative",
        "/cashout/register",
        400,
        "invalid_endpoint",
        reg(endpoint="/hook"),
        key="none",
    ),
    Case(
        "register-endpoint-credentials",
        "/cashout/register",
        400,
        "invalid_endpoint",
        reg(endpoint="https://user:pw@example.com/hook"),
        key="none",
    ),
    Case(
        "register-unknown-field",
        "/cashout/register",
        400,
        "invalid_request",
        reg(admin=True),
        key="none",
    ),
    Case(
        "register-existing-name",
        "/cashout/register",
        409,
        "provider_exists",
        "EXISTING",
        key="none",
    ),
    # body format
    Case("body-not-json", "/cashout/register", 400, "invalid_json", raw=b"{name: shop", key="none"),
    Case("body-empty", "/cashout/register", 400, "invalid_json", raw=b"", key="none"),
    Case("body-nan", GEN, 400, "invalid_json", raw=b'{"amount": NaN, "id": "x"}'),
    Case("body-array", "/cashout/register", 400, "invalid_request", raw=b"[1, 2]", key="none"),
    Case("body-string", GEN, 400, "invalid_request", raw=b'"hello"'),
    Case(
        "body-wrong-content-type",
        "/cashout/register",
        415,
        "unsupported_media_type",
        reg(),
        key="none",
        content_type="text/plain",
    ),
    Case(
        "body-form-encoded",
        GEN,
        415,
        "unsupported_media_type",
        raw=b"amount=5&id=x",
        content_type="application/x-www-form-urlencoded",
    ),
    Case(
        "body-1mb",
        "/cashout/register",
        413,
        "payload_too_large",
        raw=b'{"name": "' + b"a" * (1024 * 1024) + b'"}',
        key="none",
    ),
    Case("body-bad-utf8", GEN, 400, "invalid_json", raw=b'{"id": "\xff\xfe", "amount": 5}'),
    # generate
    Case("amount-string", GEN, 400, "invalid_request", {"amount": "100", "id": "g"}),
    Case("amount-fraction", GEN, 400, "invalid_request", {"amount": 100.5, "id": "g"}),
    Case("amount-true", GEN, 400, "invalid_request", {"amount": True, "id": "g"}),
    Case("amount-zero", GEN, 400, "invalid_request", {"amount": 0, "id": "g"}),
    Case("amount-negative", GEN, 400, "invalid_request", {"amount": -5, "id": "g"}),
    Case("amount-huge", GEN, 400, "amount_over_limit", {"amount": 10**30, "id": "g"}),
    Case("amount-null", GEN, 400, "invalid_request", {"amount": None, "id": "g"}),
    Case("amount-missing", GEN, 400, "invalid_request", {"id": "g"}),
    Case("id-missing", GEN, 400, "invalid_request", {"amount": 5}),
    Case("id-empty", GEN, 400, "invalid_request", {"amount": 5, "id": ""}),
    Case("id-too-long", GEN, 400, "invalid_request", {"amount": 5, "id": "x" * 129}),
    Case("id-number", GEN, 400, "invalid_request", {"amount": 5, "id": 7}),
    Case(
        "generate-unknown-field", GEN, 400, "invalid_request", {"amount": 5, "id": "g", "to": "me"}
    ),
    Case(
        "expires-in-too-short",
        GEN,
        400,
        "invalid_request",
        {"amount": 5, "id": "g", "expires_in": 10},
    ),
    Case(
        "expires-in-too-long",
        GEN,
        400,
        "invalid_request",
        {"amount": 5, "id": "g", "expires_in": 10**9},
    ),
    # authentication and provider names
    Case("auth-missing", GEN, 401, "unauthorized", {"amount": 5, "id": "g"}, key="none"),
    Case("auth-wrong", GEN, 401, "unauthorized", {"amount": 5, "id": "g"}, key="wrong"),
    Case("auth-basic", GEN, 401, "unauthorized", {"amount": 5, "id": "g"}, key="basic"),
    Case("auth-other-provider", GEN, 404, "not_found", {"amount": 5, "id": "g"}, key="other"),
    Case(
        "unknown-provider-with-key",
        "/cashout/generate/nobody-here",
        404,
        "not_found",
        {"amount": 5, "id": "g"},
    ),
    Case(
        "unknown-provider-no-key",
        "/cashout/generate/nobody-here",
        401,
        "unauthorized",
        {"amount": 5, "id": "g"},
        key="none",
    ),
    Case(
        "bad-provider-name",
        "/cashout/generate/Bad%20Name!",
        404,
        "not_found",
        {"amount": 5, "id": "g"},
    ),
    # claims, profile, keys
    Case(
        "list-bad-status",
        "/cashout/claims/{name}",
        400,
        "invalid_request",
        method="GET",
        params={"status": "paid"},
    ),
    Case(
        "list-limit-zero",
        "/cashout/claims/{name}",
        400,
        "invalid_request",
        method="GET",
        params={"limit": "0"},
    ),
    Case(
        "list-limit-text",
        "/cashout/claims/{name}",
        400,
        "invalid_request",
        method="GET",
        params={"limit": "ten"},
    ),
    Case(
        "list-bad-cursor",
        "/cashout/claims/{name}",
        400,
        "invalid_request",
        method="GET",
        params={"after": "%%%"},
    ),
    Case(
        "claim-unknown",
        "/cashout/claims/{name}/00000000-0000-4000-8000-000000000000",
        404,
        "not_found",
        method="GET",
    ),
    Case(
        "claim-other-provider",
        "/cashout/claims/{name}/x",
        404,
        "not_found",
        method="GET",
        key="other",
    ),
    Case(
        "cancel-with-fields",
        "/cashout/claims/{name}/{uuid}/cancel",
        400,
        "invalid_request",
        {"reason": "x"},
    ),
    Case("profile-empty", "/cashout/profile/{name}", 400, "invalid_request", {}),
    Case(
        "profile-endpoint-js",
        "/cashout/profile/{name}",
        400,
        "invalid_endpoint",
        {"endpoint": "javascript:alert(1)"},
    ),
    Case("profile-card-alone", "/cashout/profile/{name}", 400, "invalid_request", {"pan": PAN}),
    Case(
        "rotate-string-flag",
        "/cashout/keys/{name}/rotate",
        400,
        "invalid_request",
        {"api_key": "yes"},
    ),
    Case(
        "rotate-nothing", "/cashout/keys/{name}/rotate", 400, "invalid_request", {"api_key": False}
    ),
    # routing
    Case("unknown-route", "/cashout/withdraw", 404, "not_found", {}, key="none"),
    Case(
        "method-not-allowed",
        "/cashout/register",
        405,
        "method_not_allowed",
        method="DELETE",
        key="none",
    ),
    Case("get-on-generate", GEN, 405, "method_not_allowed", method="GET"),
]


@pytest.fixture(scope="module")
def world(server: ServerProcess) -> dict[str, Any]:
    client = server.client()
    own = provider_body(unique_name(), random_pan())
    other = provider_body(unique_name(), random_pan())
    own_creds, other_creds = register(client, own), register(client, other)
    claim = client.post(
        f"/cashout/generate/{own['name']}",
        json={"amount": 9, "id": "w"},
        headers=auth(own_creds["api_key"]),
    ).json()
    return {
        "client": client,
        "name": own["name"],
        "existing": own,
        "own": own_creds["api_key"],
        "other": other_creds["api_key"],
        "uuid": claim["uuid"],
    }


def snapshot(db: Any) -> str:
    """Every document of every collection, in a stable order."""
    dump = {
        name: sorted(json_util.dumps(d, sort_keys=True) for d in db[name].find())
        for name in sorted(db.list_collection_names())
    }
    return json.dumps(dump, sort_keys=True)


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request(case: Case, world: dict[str, Any], db: Any) -> None:
    client: httpx.Client = world["client"]
    headers = {"Content-Type": case.content_type}
    keys = {
        "own": f"Bearer {world['own']}",
        "other": f"Bearer {world['other']}",
        "wrong": "Bearer ck_test_" + "x" * 43,
        "basic": "Basic dXNlcjpwYXNz",
    }
    if case.key in keys:
        headers["Authorization"] = keys[case.key]
    body = world["existing"] if case.body == "EXISTING" else case.body
    content = (
        case.raw
        if case.raw is not None
        else (json.dumps(body).encode() if body is not None else None)
    )
    path = case.path.format(name=world["name"], uuid=world["uuid"])
    before = snapshot(db)

    response = client.request(
        case.method, path, content=content, headers=headers, params=case.params
    )

    assert response.status_code == case.status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert payload["code"] == case.code
    assert isinstance(payload["message"], str) and payload["message"]
    assert set(payload) <= {"message", "code", "details"}
    for secret in (PAN, LUHN_BAD, "4826", world["own"], world["other"]):
        assert secret not in response.text
    assert snapshot(db) == before, "a refused request changed the database"
    assert client.get("/healthz").status_code == 200
