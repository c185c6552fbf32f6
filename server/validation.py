"""Request validation: JSON Schema files from ``schemas/`` plus the checks a schema cannot do.

Problems are written from the schema, never from the rejected value, so an error message can
never echo a card number or IPIN back into a response or a log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

from gateways.base import luhn_ok
from server import ssrf
from server.errors import MAX_DETAILS, ApiError, invalid
from server.models import PageRequest, decode_cursor

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{2,63}$")
DEFAULT_PAGE = 20
MAX_PAGE = 100
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_DIGIT_RUN = re.compile(r"\d{6,}")
# Bounds on the shape of any body, checked before its schema so that an absurd body costs
# little: no schema has more than a handful of fields, nor needs deep nesting.
MAX_KEYS = 100  # fields in one object
MAX_VALUES = 10_000  # values in the whole body
MAX_DEPTH = 16
_TYPE_WORDS = {
    "integer": "an integer",
    "string": "a string",
    "boolean": "true or false",
    "object": "a JSON object",
    "array": "a list",
    "number": "a number",
}


@lru_cache(maxsize=1)
def _registry() -> Registry:
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        contents = json.loads(path.read_text())
        resources.append((contents["$id"], Resource.from_contents(contents)))
    return Registry().with_resources(resources)


@lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str]:
    """JSON Schema patterns are ECMA-262 regular expressions, where ``$`` ends the string;
    in Python's ``re`` it also matches before a final newline, so make it ``\\Z``."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _pattern(pattern).search(instance):
        yield ValidationError("does not match the pattern")


def _strict_integer(checker: Any, instance: Any) -> bool:
    """``100.0`` is an integer to JSON Schema; an amount must be written as ``100``."""
    return isinstance(instance, int) and not isinstance(instance, bool)


StrictValidator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    validators={"pattern": _ecma_pattern},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)


@cache
def validator(name: str) -> Any:
    schema = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return StrictValidator(schema, registry=_registry())


def _safe_name(text: str) -> str:
    """A client-chosen field name, shortened and with digit runs hidden."""
    return _DIGIT_RUN.sub("***", text[:64])


def _problem(error: ValidationError) -> list[dict[str, str]]:
    path = "/".join(_safe_name(str(p)) for p in error.absolute_path)
    kind = error.validator
    value: Any = error.validator_value
    schema: Any = error.schema
    instance: Any = error.instance
    if kind == "required":
        missing = [r for r in value if isinstance(instance, dict) and r not in instance]
        return [
            {"field": "/".join(filter(None, [path, m])), "problem": "is required"} for m in missing
        ]
    if kind == "additionalProperties":
        known = set(schema.get("properties", {}))
        extra = (
            sorted(k for k in instance if k not in known)[:MAX_DETAILS]
            if isinstance(instance, dict)
            else []
        )
        return [
            {
                "field": "/".join(filter(None, [path, _safe_name(k)])),
                "problem": "is not a known field",
            }
            for k in extra
        ]
    if kind == "dependentRequired":
        return [
            {
                "field": path or "(body)",
                "problem": "pan, expDate, ipin and consent must be given together",
            }
        ]
    field = path or "(body)"
    if kind == "type":
        types = value if isinstance(value, list) else [value]
        problem = "must be " + " or ".join(_TYPE_WORDS.get(str(t), str(t)) for t in types)
    elif kind == "pattern":
        problem = schema.get("x-problem", "has the wrong format")
    elif kind == "minimum":
        problem = f"must be at least {value}"
    elif kind == "maximum":
        problem = f"must be at most {value}"
    elif kind == "minLength":
        problem = "must not be empty" if value == 1 else f"must be at least {value} characters"
    elif kind == "maxLength":
        problem = f"must be at most {value} characters"
    elif kind == "minProperties":
        problem = "must name at least one field"
    else:
        problem = "is not valid"
    return [{"field": field, "problem": problem}]


def check(name: str, body: Any) -> dict[str, Any]:
    """Validate ``body`` against ``schemas/<name>.json`` or raise 400 invalid_request, with
    at most ``MAX_DETAILS`` problems listed (the first ones by field)."""
    errors = sorted(validator(name).iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        details: list[dict[str, str]] = []
        seen: set[tuple[str, str]] = set()
        for error in errors:
            for item in _problem(error):
                key = (item["field"], item["problem"])
                if key not in seen:
                    seen.add(key)
                    details.append(item)
            if len(details) >= MAX_DETAILS:
                break
        details = details[:MAX_DETAILS]
        summary = "; ".join(f"{d['field']} {d['problem']}" for d in details[:5])
        raise ApiError(400, "invalid_request", f"The request is not valid: {summary}", details)
    assert isinstance(body, dict)
    return body


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Strict JSON: no NaN/Infinity, no duplicate surprises, and an object at the top."""

    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(
            400,
            "invalid_request",
            "The request body must be a JSON object.",
            [{"field": "(body)", "problem": "must be a JSON object"}],
        )
    _check_text(body, "")
    return body


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 and C1 control characters


def _too_big(problem: str) -> ApiError:
    return ApiError(
        400,
        "invalid_request",
        f"The request is not valid: (body) {problem}",
        [{"field": "(body)", "problem": problem}],
    )


def _check_text(body: Any, path: str) -> None:
    """No text the database cannot store (lone surrogates) or that could break a line,
    a URL or a log (control characters), anywhere in a body, keys included; and no body
    wider, bigger or deeper than any request needs (``MAX_KEYS``, ``MAX_VALUES``,
    ``MAX_DEPTH``), refused before anything else looks at it."""
    todo: list[tuple[Any, str, int]] = [(body, path, 0)]
    seen = 0
    while todo:
        value, where, depth = todo.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise _too_big(f"holds more than {MAX_VALUES} values")
        if depth > MAX_DEPTH:
            raise _too_big(f"is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            if len(value) > MAX_KEYS:
                raise _too_big(f"has more than {MAX_KEYS} fields in one object")
            children = []
            for key, item in value.items():
                _check_string(key, where or "(body)")
                children.append((item, f"{where}/{_safe_name(key)}".lstrip("/"), depth + 1))
            todo.extend(reversed(children))  # in the body's order, first problem first
        elif isinstance(value, list):
            todo.extend(
                (item, f"{where}/{i}".lstrip("/"), depth + 1)
                for i, item in reversed(list(enumerate(value)))
            )
        elif isinstance(value, str):
            _check_string(value, where or "(body)")


def _check_string(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(where, "is not valid Unicode text") from None
    if _CONTROL.search(value):
        raise invalid(where, "must not contain control characters")


# Phones in Sudan type Arabic-Indic digits (U+0660-0669) in Arabic mode, some Persian ones
# (U+06F0-06F9): the same digits, so they count as 0-9.
_WESTERN_DIGITS = str.maketrans(
    {chr(base + i): str(i) for base in (0x0660, 0x06F0) for i in range(10)}
)
# Spaces and dashes people type, and the invisible direction marks that text copied from a
# right-to-left message carries along (LRM, RLM, ALM, embeddings and isolates).
_CARD_SEPARATORS = re.compile(r"[\s\-\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")


def card_digits(text: str) -> str:
    """A typed card number without separators, Arabic-Indic and Persian digits read as 0-9
    (anything else is left in, for the caller to refuse)."""
    return _CARD_SEPARATORS.sub("", text).translate(_WESTERN_DIGITS)


def normalise_pan(text: str) -> str | None:
    """Digits of a card typed by a person (spaces and dashes allowed, in Western,
    Arabic-Indic or Persian digits), or None if invalid."""
    digits = card_digits(text)
    if not digits.isascii() or not digits.isdigit() or len(digits) not in (16, 19):
        return None
    return digits if luhn_ok(digits) else None


def check_card(body: Mapping[str, Any], now: datetime | None = None) -> None:
    """What the schema cannot say about a paying card: consent, Luhn, expiry."""
    if body.get("consent") is not True:
        raise invalid(
            "consent",
            "must be true",
            code="consent_required",
            message="The provider must consent to debits from this card.",
        )
    if not luhn_ok(body["pan"]):
        raise invalid("pan", "is not a valid card number (check digit)")
    now = now or datetime.now(UTC)
    exp = body["expDate"]
    year, month = 2000 + int(exp[:2]), int(exp[2:])
    if (year, month) < (now.year, now.month):
        raise invalid(
            "expDate", "is in the past", code="card_expired", message="The card has expired."
        )


def check_endpoint(url: str, production: bool) -> str:
    """An absolute http(s) webhook URL; production also refuses http and private hosts."""

    def bad(problem: str) -> ApiError:
        return invalid(
            "endpoint", problem, code="invalid_endpoint", message=f"The webhook endpoint {problem}."
        )

    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port  # raises ValueError for a port out of range
    except ValueError:
        raise bad("is not a valid URL") from None
    if port == 0:
        raise bad("is not a valid URL")
    if parts.scheme not in ("http", "https") or not host:
        raise bad("must be an absolute http or https URL")
    if parts.username or parts.password:
        raise bad("must not contain credentials")
    if any(ch.isspace() for ch in url):
        raise bad("must not contain spaces")
    if production:
        if parts.scheme != "https":
            raise bad("must use https")
        problem = ssrf.host_problem(host)
        if problem:
            raise bad(problem)
    return url


def page_request(
    status: str | None, statuses: Iterable[str], limit: str | None, after: str | None
) -> PageRequest:
    """The ``status``, ``limit`` and ``after`` query parameters of a list route."""
    allowed = list(statuses)
    if status is not None and status not in allowed:
        raise invalid("status", "must be one of " + ", ".join(allowed))
    size = DEFAULT_PAGE
    if limit is not None:
        if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= MAX_PAGE:
            raise invalid("limit", f"must be a whole number from 1 to {MAX_PAGE}")
        size = int(limit)
    cursor = decode_cursor(after) if after is not None else None
    if after is not None and cursor is None:
        raise invalid("after", "is not a cursor from an earlier page")
    return PageRequest(status, size, cursor)


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI description, its ``$ref``s to the request schema files resolved in place
    so one document is complete on its own."""
    import yaml  # only the docs route needs it

    doc = yaml.safe_load((SCHEMA_DIR / "openapi.yaml").read_text())

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            name, _, pointer = ref.partition("#") if isinstance(ref, str) else ("", "", "")
            if name.endswith(".json") and "/" not in name:
                schema: Any = json.loads((SCHEMA_DIR / name).read_text())
                for part in filter(None, pointer.split("/")):
                    schema = schema[part]
                if isinstance(schema, dict):
                    schema = {k: v for k, v in schema.items() if k not in ("$schema", "$id")}
                return inline(schema)
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    document: dict[str, Any] = inline(doc)
    return document
