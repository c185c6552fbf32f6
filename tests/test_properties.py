"""Property tests (Hypothesis) of the pure parts: card numbers and the Luhn check, request
validation, strict JSON parsing, the encryption of data at rest, and the claim state machine
of docs/DESIGN.md section 6 driven against the real database through ``server.store.Store``."""

from __future__ import annotations

import asyncio
import json
import re
import uuid as uuidlib
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateways.base import Outcome, TransferResult, luhn_ok
from server import lifecycle
from server.crypto import DecryptionError, KeyRing, Sealed, aad
from server.errors import ApiError
from server.lifecycle import MAX_ATTEMPTS, Decision, decide
from server.models import Attempt, AttemptOutcome, Claim, ClaimStatus, utcnow
from server.store import Store
from server.validation import (
    NAME_RE,
    SCHEMA_DIR,
    check,
    check_card,
    normalise_pan,
    parse_json_object,
)
from tests.harness import Database

T = TypeVar("T")
DIGITS = "0123456789"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- cards -------------------------------------------------------------------------------------


def luhn_reference(number: str) -> bool:
    """The Luhn check by the book: from the right, double every second digit, add the digits
    of every product, and the total must end in 0."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        product = int(ch) * (2 if i % 2 else 1)
        total += product // 10 + product % 10
    return total % 10 == 0


def with_check_digit(body: str) -> str:
    return next(body + d for d in DIGITS if luhn_reference(body + d))


@st.composite
def pans(draw: st.DrawFn, lengths: tuple[int, ...] = (16, 19)) -> str:
    """A Luhn-valid card number of an EBS length."""
    length = draw(st.sampled_from(lengths))
    return with_check_digit(draw(st.text(DIGITS, min_size=length - 1, max_size=length - 1)))


@st.composite
def typed(draw: st.DrawFn, number: str) -> str:
    """``number`` as a person types it: spaces and dashes anywhere, ends included."""
    gaps = st.lists(st.sampled_from([" ", "-", "\t", "\u00a0"]), max_size=3).map("".join)
    return "".join(draw(gaps) + ch for ch in number) + draw(gaps)


def normalise_model(text: str) -> str | None:
    digits = "".join(ch for ch in text if not (ch.isspace() or ch == "-"))
    if len(digits) in (16, 19) and all(ch in DIGITS for ch in digits) and luhn_reference(digits):
        return digits
    return None


@FAST
@given(pans().flatmap(lambda pan: st.tuples(st.just(pan), typed(pan))))
def test_normalise_pan_accepts_a_valid_card_however_it_is_spaced(case: tuple[str, str]) -> None:
    pan, text = case
    assert normalise_pan(text) == pan


@FAST
@given(pans(), st.data())
def test_normalise_pan_refuses_a_card_with_one_digit_changed(pan: str, data: Any) -> None:
    i = data.draw(st.integers(0, len(pan) - 1), label="position")
    new = data.draw(st.sampled_from([d for d in DIGITS if d != pan[i]]), label="digit")
    assert normalise_pan(pan[:i] + new + pan[i + 1 :]) is None  # Luhn catches every one


@FAST
@given(
    st.integers(0, 40)
    .filter(lambda n: n not in (16, 19))
    .flatmap(lambda n: st.text(DIGITS, min_size=max(n - 1, 0), max_size=max(n - 1, 0)))
)
def test_normalise_pan_refuses_other_lengths_even_with_a_good_check_digit(body: str) -> None:
    assert normalise_pan(with_check_digit(body) if body else "") is None


@FAST
@given(
    st.one_of(
        st.text(),
        st.text(DIGITS + " -\t\n\u00a0\u2007\u0663\u00b2x", max_size=30),
        pans().flatmap(typed),
        pans().flatmap(typed).map(lambda t: t.replace("1", "\uff11")),  # a fullwidth digit
    )
)
@example("4111 1111 1111 1111")
@example("\u0664" * 16)  # Arabic-Indic digits are digits to str.isdigit, not to a switch
def test_normalise_pan_never_raises_and_accepts_exactly_spaced_valid_cards(text: str) -> None:
    assert normalise_pan(text) == normalise_model(text)


@FAST
@given(st.one_of(st.text(), st.text(DIGITS, max_size=25), pans()))
@example("")
@example("\u00b2" * 16)
def test_luhn_ok_matches_the_reference(text: str) -> None:
    expected = bool(text) and all(ch in DIGITS for ch in text) and luhn_reference(text)
    assert luhn_ok(text) is expected


@FAST
@given(st.text(DIGITS, min_size=1, max_size=24))
def test_exactly_one_check_digit_completes_any_number(body: str) -> None:
    assert sum(luhn_ok(body + d) for d in DIGITS) == 1


# -- request validation ------------------------------------------------------------------------

# Every number the schemas themselves mention (limits, "16 or 19", "01-12", "2048", ...): an
# IPIN equal to one of them may appear in a problem text by coincidence, not as an echo.
SCHEMA_NUMBERS = set(re.findall(r"\d+", " ".join(p.read_text() for p in SCHEMA_DIR.glob("*.json"))))
NAMES = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{2,63}\Z")
IPINS = st.from_regex(r"\A[0-9]{4}\Z").filter(lambda s: s not in SCHEMA_NUMBERS)
EXP_DATES = st.builds(lambda y, m: f"{y:02d}{m:02d}", st.integers(0, 99), st.integers(1, 12))
SCHEMA_PANS = st.one_of(
    st.text(DIGITS, min_size=16, max_size=16), st.text(DIGITS, min_size=19, max_size=19)
)

REGISTER = st.fixed_dictionaries(
    {
        "name": NAMES,
        "pan": SCHEMA_PANS,
        "expDate": EXP_DATES,
        "ipin": IPINS,
        "consent": st.booleans(),
        "endpoint": st.text(min_size=1, max_size=2048),
    }
)
GENERATE = st.fixed_dictionaries(
    {"amount": st.integers(min_value=1), "id": st.text(min_size=1, max_size=128)},
    optional={"expires_in": st.integers(min_value=60)},
)

NOT_STRINGS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
NOT_INTEGERS = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=8),
    st.floats(allow_nan=False),  # 100.0 too: amounts are written as integers
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers()),
)
NOT_BOOLEANS = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.floats(allow_nan=False),
    st.lists(st.booleans(), max_size=2),
)


def not_matching(pattern: str, alphabet: str) -> st.SearchStrategy[str]:
    """Strings that the pattern refuses (a trailing newline aside: tested on its own)."""
    regex = re.compile(pattern)
    return st.one_of(st.text(max_size=70), st.text(alphabet, max_size=70)).filter(
        lambda s: not regex.search(s) and not s.endswith("\n")
    )


BAD_VALUES: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "register": {
        "name": st.one_of(NOT_STRINGS, not_matching(NAME_RE.pattern, "abz09_-A. ")),
        "pan": st.one_of(NOT_STRINGS, not_matching(r"^([0-9]{16}|[0-9]{19})$", DIGITS + " -a")),
        "expDate": st.one_of(NOT_STRINGS, not_matching(r"^[0-9]{2}(0[1-9]|1[0-2])$", DIGITS)),
        "ipin": st.one_of(NOT_STRINGS, not_matching(r"^[0-9]{4}$", DIGITS + "a")),
        "consent": NOT_BOOLEANS,
        "endpoint": st.one_of(NOT_STRINGS, st.just(""), st.text(min_size=2049, max_size=2100)),
    },
    "generate": {
        "amount": st.one_of(NOT_INTEGERS, st.integers(max_value=0)),
        "id": st.one_of(NOT_STRINGS, st.just(""), st.text(min_size=129, max_size=140)),
        "expires_in": st.one_of(NOT_INTEGERS, st.integers(max_value=59)),
    },
}


def rejected(schema: str, body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        check(schema, body)
    error = caught.value
    assert error.status == 400 and error.code == "invalid_request"
    return error


def shown(error: ApiError) -> str:
    """Everything an answer would show of an error."""
    return json.dumps(error.body(), ensure_ascii=False)


def assert_no_secret(text: str, *values: Any) -> None:
    for value in values:
        if isinstance(value, str):
            for run in re.findall(r"\d{6,}", value):
                assert run not in text
            if re.fullmatch(r"\d{4}", value) and value not in SCHEMA_NUMBERS:
                assert not re.search(rf"(?<!\d){value}(?!\d)", text)


@FAST
@given(REGISTER)
def test_valid_registration_bodies_pass_the_schema(body: dict[str, Any]) -> None:
    assert check("register", body) is body


@FAST
@given(GENERATE)
def test_valid_generate_bodies_pass_the_schema(body: dict[str, Any]) -> None:
    assert check("generate", body) is body


@st.composite
def mutated(draw: st.DrawFn, schema: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A valid body, and a copy with one field given a wrong type or value, removed, or an
    unknown field added; with the name of the field an answer must point at."""
    valid = draw(REGISTER if schema == "register" else GENERATE)
    fields = sorted(BAD_VALUES[schema])
    name = draw(st.sampled_from(fields))
    how = draw(st.sampled_from(["value", "value", "missing", "unknown"]))
    body = dict(valid)
    if how == "missing" and name != "expires_in":
        del body[name]
    elif how == "unknown":
        name = draw(
            st.one_of(
                st.text(min_size=1, max_size=10),
                st.sampled_from([valid.get("pan", "4111111111111111"), "IPIN", "$where", "a.b"]),
            )
        )
        assume(name not in fields and valid.get("ipin", "-") not in name)
        body[name] = draw(st.one_of(st.integers(), st.text(max_size=5)))
    else:
        body[name] = draw(BAD_VALUES[schema][name])
    return valid, body, name


@FAST
@given(
    st.sampled_from(["register", "generate"]).flatmap(lambda s: st.tuples(st.just(s), mutated(s)))
)
def test_one_bad_field_is_refused_naming_that_field_and_echoing_no_card(
    case: tuple[str, tuple[dict[str, Any], dict[str, Any], str]],
) -> None:
    schema, (valid, body, name) = case
    error = rejected(schema, body)
    fields = [d["field"] for d in error.details]
    safe_name = re.sub(r"\d{6,}", "***", name[:64])
    assert safe_name in fields, (fields, name)
    assert all(set(d) == {"field", "problem"} for d in error.details)
    assert_no_secret(
        shown(error), valid.get("pan"), valid.get("ipin"), body.get("pan"), body.get("ipin")
    )


@FAST
@given(REGISTER, st.sampled_from(["name", "pan", "expDate", "ipin", "consent", "endpoint"]))
def test_every_missing_registration_field_is_named(body: dict[str, Any], name: str) -> None:
    del body[name]
    error = rejected("register", body)
    assert {"field": name, "problem": "is required"} in error.details
    assert_no_secret(shown(error), body.get("pan"), body.get("ipin"))


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "abc\n"), ("pan", "4111111111111111\n"), ("expDate", "3012\n"), ("ipin", "1234\n")],
)
def test_a_trailing_newline_does_not_match_a_pattern(field: str, value: str) -> None:
    body = {
        "name": "abc",
        "pan": "4111111111111111",
        "expDate": "3012",
        "ipin": "1234",
        "consent": True,
        "endpoint": "https://example.com/hook",
        field: value,
    }
    error = rejected("register", body)
    assert field in [d["field"] for d in error.details]


def name_model(text: str) -> bool:
    return (
        3 <= len(text) <= 64
        and text[0] in "abcdefghijklmnopqrstuvwxyz0123456789"
        and all(ch in "abcdefghijklmnopqrstuvwxyz0123456789_-" for ch in text)
    )


@FAST
@given(st.one_of(st.text(max_size=70), st.text("abz09_-A. \u0131", max_size=70), NAMES))
@example("ab")
@example("a" * 64)
@example("a" * 65)
@example("-abc")
@example("abc-")
def test_provider_names_are_3_to_64_of_a_z_0_9_dash_underscore(text: str) -> None:
    assume(not text.endswith("\n"))  # see test_a_trailing_newline_does_not_match_a_pattern
    expected = name_model(text)
    assert bool(NAME_RE.match(text)) is expected
    body = {
        "name": text,
        "pan": "4111111111111111",
        "expDate": "3012",
        "ipin": "1234",
        "consent": True,
        "endpoint": "https://example.com/hook",
    }
    if expected:
        check("register", body)
    else:
        assert "name" in [d["field"] for d in rejected("register", body).details]


# A fixed clock for the expiry rule: "not in the past" means this month or later.
NOWS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
)


@FAST
@given(pans(), st.integers(0, 99), st.integers(1, 12), NOWS)
@example(pan="4111111111111111", yy=26, mm=11, now=datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
@example(pan="4111111111111111", yy=26, mm=10, now=datetime(2026, 11, 1, tzinfo=UTC))
@example(pan="4111111111111111", yy=26, mm=12, now=datetime(2026, 11, 1, tzinfo=UTC))
def test_card_expiry_refuses_past_months_and_accepts_this_month_on(
    pan: str, yy: int, mm: int, now: datetime
) -> None:
    body = {"pan": pan, "expDate": f"{yy:02d}{mm:02d}", "ipin": "1234", "consent": True}
    if (2000 + yy, mm) < (now.year, now.month):
        with pytest.raises(ApiError) as caught:
            check_card(body, now=now)
        assert (caught.value.status, caught.value.code) == (400, "card_expired")
        assert caught.value.details == [{"field": "expDate", "problem": "is in the past"}]
        assert_no_secret(shown(caught.value), pan)
    else:
        assert check_card(body, now=now) is None


@FAST
@given(pans(), NOT_BOOLEANS | st.just(False))
def test_card_without_consent_is_refused_first(pan: str, consent: Any) -> None:
    body = {"pan": pan[:-1] + "x", "expDate": "0001", "ipin": "1234", "consent": consent}
    with pytest.raises(ApiError) as caught:
        check_card(body, now=datetime(2026, 11, 15, tzinfo=UTC))
    assert caught.value.code == "consent_required"


@FAST
@given(pans(), st.data())
def test_card_failing_the_check_digit_is_refused(pan: str, data: Any) -> None:
    i = data.draw(st.integers(0, len(pan) - 1))
    bad = pan[:i] + data.draw(st.sampled_from([d for d in DIGITS if d != pan[i]])) + pan[i + 1 :]
    with pytest.raises(ApiError) as caught:
        check_card({"pan": bad, "expDate": "9912", "ipin": "1234", "consent": True})
    assert caught.value.code == "invalid_request"
    assert caught.value.details[0]["field"] == "pan"
    assert_no_secret(shown(caught.value), bad)


# -- strict JSON -------------------------------------------------------------------------------

# Text a request may carry: no control characters, no lone surrogates (both are refused).
CLEAN_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")))
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | CLEAN_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(CLEAN_TEXT, inner, max_size=4),
    max_leaves=20,
)


@FAST
@given(
    st.one_of(
        st.binary(),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        JSON_VALUES.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8")),
        st.text().map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    )
)
@example(b"[" * 200_000)
@example(b'{"a": ' + b"1" * 5000 + b"}")
@example(b'{"a": NaN}')
@example(b'{"a": -Infinity}')
@example(b'{"a": 1e400}')
@example(b'\xef\xbb\xbf{"a": 1}')
@example(b'{"a": "\\ud800"}')
@example(b'{"a": 1, "a": 2}')
@example(b"\xff\xfe{\x00}\x00")
def test_parse_json_object_answers_an_object_or_an_api_error(raw: bytes) -> None:
    try:
        body = parse_json_object(raw)
    except ApiError as error:
        assert error.status == 400 and error.code in ("invalid_json", "invalid_request")
        assert_no_secret(shown(error), raw.decode("latin-1"))
    else:
        assert isinstance(body, dict)
        assert body == json.loads(raw.decode("utf-8"))


@FAST
@given(st.dictionaries(CLEAN_TEXT, JSON_VALUES, max_size=6))
def test_parse_json_object_round_trips_objects(value: dict[str, Any]) -> None:
    assert parse_json_object(json.dumps(value).encode()) == value


@FAST
@given(CLEAN_TEXT, st.characters(categories=("Cc", "Cs")), CLEAN_TEXT, st.booleans())
def test_control_characters_and_lone_surrogates_are_refused(
    before: str, bad: str, after: str, as_key: bool
) -> None:
    text = before + bad + after
    value = {text: 1} if as_key else {"id": [text]}
    with pytest.raises(ApiError) as refused:
        parse_json_object(json.dumps(value).encode())
    assert refused.value.code == "invalid_request" and refused.value.status == 400


# -- encryption at rest ------------------------------------------------------------------------

KEYS = st.binary(min_size=32, max_size=32)
KIDS = st.from_regex(r"\A[A-Za-z0-9_-]{1,32}\Z")
TEXTS = st.text(max_size=300)
ADS = st.binary(max_size=80)


@FAST
@given(KIDS, KEYS, TEXTS, ADS)
def test_sealed_values_open_to_the_same_text(kid: str, key: bytes, text: str, ad: bytes) -> None:
    ring = KeyRing([(kid, key)])
    sealed = ring.seal(text, ad)
    assert (
        sealed.kid == kid and len(sealed.nonce) == 12 and len(sealed.ct) == len(text.encode()) + 16
    )
    assert ring.open(sealed, ad) == text
    assert ring.open(Sealed.from_doc(sealed.to_doc()), ad) == text


@FAST
@given(KEYS, TEXTS, ADS, st.data())
def test_any_flipped_bit_is_refused(key: bytes, text: str, ad: bytes, data: Any) -> None:
    ring = KeyRing([("k1", key)])
    sealed = ring.seal(text, ad)
    part = data.draw(st.sampled_from(["nonce", "ct"]), label="part")
    value = bytearray(getattr(sealed, part))
    bit = data.draw(st.integers(0, len(value) * 8 - 1), label="bit")
    value[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DecryptionError):
        ring.open(replace(sealed, **{part: bytes(value)}), ad)


@FAST
@given(KEYS, TEXTS, ADS, ADS)
def test_another_place_is_refused(key: bytes, text: str, ad: bytes, other: bytes) -> None:
    assume(ad != other)
    ring = KeyRing([("k1", key)])
    with pytest.raises(DecryptionError):
        ring.open(ring.seal(text, ad), other)


@FAST
@given(KEYS, TEXTS, KIDS, st.integers(0, 40))
def test_unknown_kid_or_cut_ciphertext_is_refused(
    key: bytes, text: str, kid: str, cut: int
) -> None:
    assume(kid != "k1")
    ring = KeyRing([("k1", key)])
    sealed = ring.seal(text, b"ad")
    with pytest.raises(DecryptionError):
        ring.open(replace(sealed, kid=kid), b"ad")
    with pytest.raises(DecryptionError):
        ring.open(replace(sealed, ct=sealed.ct[:cut] if cut < len(sealed.ct) else b""), b"ad")
    with pytest.raises(DecryptionError):
        ring.open(replace(sealed, nonce=sealed.nonce[: cut % 12]), b"ad")


@FAST
@given(KEYS, KEYS, TEXTS, ADS)
def test_a_new_primary_still_opens_what_the_old_key_sealed(
    old: bytes, new: bytes, text: str, ad: bytes
) -> None:
    assume(old != new)
    before = KeyRing([("old", old)])
    after = KeyRing([("new", new), ("old", old)])
    sealed = before.seal(text, ad)
    assert after.open(sealed, ad) == text
    resealed = after.seal(text, ad)
    assert resealed.kid == "new" and after.open(resealed, ad) == text
    with pytest.raises(DecryptionError):
        before.open(resealed, ad)  # the old ring never knew the new key
    with pytest.raises(DecryptionError):  # the same kid with another key is caught, too
        KeyRing([("old", new)]).open(sealed, ad)


@FAST
@given(st.lists(KIDS, min_size=1, max_size=4, unique=True))
def test_key_ring_entries_parse_back(kids: list[str]) -> None:
    text = ";".join(KeyRing.new_entry(kid) for kid in kids)
    ring = KeyRing.parse(text)
    assert ring.kids == kids and ring.primary == kids[0]
    assert KeyRing.parse(text.replace(";", "\n")).kids == kids


@FAST
@given(st.text(max_size=120))
def test_key_ring_parse_refuses_nonsense_with_value_error(text: str) -> None:
    try:
        ring = KeyRing.parse(text)
    except ValueError:
        return  # a start-up error the operator reads; anything else would be a crash
    assert ring.kids


# -- the claim state machine, against the real database ----------------------------------------

_loop: asyncio.AbstractEventLoop | None = None


def run(coro: Coroutine[Any, Any, T]) -> T:
    assert _loop is not None
    return _loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def claim_store(database: Database) -> Iterator[Store]:
    global _loop
    _loop = asyncio.new_event_loop()
    name = f"props_{uuidlib.uuid4().hex[:10]}"

    async def make() -> Store:
        store = Store(database.uri, name, timeout_ms=5000)
        await store.create_indexes()
        return store

    store = run(make())
    yield store
    run(store.drop())
    run(store.close())
    _loop.close()
    _loop = None


PROVIDER = "props"
CARD_KEYS = KeyRing([("k1", bytes(32))])
OPEN = (AttemptOutcome.IN_FLIGHT, AttemptOutcome.UNKNOWN)
OUTCOMES = {  # what the gateway said -> (result, definitive)
    "approved": (Outcome.APPROVED, 0, False),
    "declined_invalid_card": (Outcome.DECLINED, 52, False),
    "declined_routing": (Outcome.DECLINED, 72, False),
    "declined_funds": (Outcome.DECLINED, 51, False),
    "declined_ipin": (Outcome.DECLINED, 53, False),
    "declined_card_unreadable": (Outcome.DECLINED, 52, True),  # DecryptionError: definitive
    "unknown": (Outcome.UNKNOWN, None, False),
    "not_found": (Outcome.NOT_FOUND, 25, False),
    "not_found_too_soon": (Outcome.NOT_FOUND, 25, False),
}
# Outcomes are settled by the lifecycle's own table with a grace of 0 (so "not found" is
# believed at once) or of an hour (so it is not yet believed).
GRACE = {"not_found_too_soon": timedelta(hours=1)}
LEASE = timedelta(seconds=120)


@dataclass
class Model:
    """docs/DESIGN.md section 6, written independently of the engine."""

    status: ClaimStatus = ClaimStatus.PENDING
    attempts: list[tuple[str, AttemptOutcome]] = field(default_factory=list)
    due: bool = False  # expires_at has passed
    code: int | None = None

    def settle(self, outcome: str, code: int | None, next_tran: str | None) -> None:
        """The outcome table: which attempt outcome and claim status a gateway answer gives."""
        tran, _ = self.attempts[-1]
        used = len(self.attempts)
        if outcome == "approved":
            self.attempts[-1] = (tran, AttemptOutcome.APPROVED)
            self.status, self.code = ClaimStatus.SUCCEEDED, code
        elif outcome.startswith("declined"):
            self.attempts[-1] = (tran, AttemptOutcome.DECLINED)
            fixable = code in (52, 72) and outcome != "declined_card_unreadable"
            self.status = (
                ClaimStatus.PENDING if fixable and used < MAX_ATTEMPTS else ClaimStatus.FAILED
            )
            self.code = code
        elif outcome == "not_found":  # nothing moved: a new attempt with a new UUID, up to 3
            self.attempts[-1] = (tran, AttemptOutcome.NOT_FOUND)
            self.code = None
            if used < MAX_ATTEMPTS:
                assert next_tran is not None
                self.attempts.append((next_tran, AttemptOutcome.IN_FLIGHT))
            else:
                self.status = ClaimStatus.FAILED
        else:  # unknown, or "not found" too soon to believe: ask the switch again later
            self.attempts[-1] = (tran, AttemptOutcome.UNKNOWN)


# Answers that keep the claim going come up more often, so runs reach the third attempt.
ANSWERS = st.sampled_from(
    sorted(OUTCOMES)
    + ["declined_invalid_card", "declined_routing", "unknown", "not_found", "not_found_too_soon"]
    * 2
)


class ClaimMachine(RuleBasedStateMachine):
    """One claim, driven through submissions, gateway answers (current, stale and forged),
    cancellation, expiry and lease takeovers; after every step the stored claim must equal
    the model and keep the invariants."""

    store: Store

    def __init__(self) -> None:
        super().__init__()
        self.uuid = str(uuidlib.uuid4())
        self.model = Model()
        self.terminal: ClaimStatus | None = None
        self.ready = False
        self.steps = 0
        self.patience = 0  # steps before cancellation and expiry may happen

    def patient(self) -> bool:
        return self.steps >= self.patience

    @initialize(amount=st.integers(1, 100_000), patience=st.integers(0, 12))
    def generated(self, amount: int, patience: int) -> None:
        self.patience = patience  # some runs end early, others reach the third attempt
        now = utcnow()
        assert run(
            self.store.claims.insert_many(
                [
                    Claim(
                        uuid=self.uuid,
                        provider=PROVIDER,
                        ref=f"ref-{self.uuid}",
                        amount=amount,
                        status=ClaimStatus.PENDING,
                        created_at=now,
                        expires_at=now + timedelta(days=7),
                        day=now.strftime("%Y-%m-%d"),
                    )
                ]
            )
        ) == [None]
        self.ready = True

    # -- reading --------------------------------------------------------------------------

    def claim(self) -> Claim:
        claim = run(self.store.claims.get_any(self.uuid))
        assert claim is not None
        return claim

    def doc(self) -> dict[str, Any]:
        doc = run(self.store.db.claims.find_one({"_id": self.uuid}))
        assert doc is not None
        return doc

    # -- rules ----------------------------------------------------------------------------

    def _submit(self, last4: str) -> None:
        now = utcnow()
        attempt = Attempt(str(uuidlib.uuid4()), now, last4)
        sealed = CARD_KEYS.seal("4111111111111111", aad("claims", self.uuid, "card.pan"))
        got = run(
            self.store.claims.apply(
                lifecycle.claiming(PROVIDER, self.uuid, attempt, sealed, now + LEASE)
            )
        )
        m = self.model
        wins = m.status is ClaimStatus.PENDING and len(m.attempts) < MAX_ATTEMPTS and not m.due
        note(f"submit -> {'won' if got else 'refused'} (model {'wins' if wins else 'refuses'})")
        assert (got is not None) is wins
        if wins:
            m.status = ClaimStatus.PROCESSING
            m.attempts.append((attempt.tran_uuid, AttemptOutcome.IN_FLIGHT))

    def _settle(self, outcome: str, which: str) -> None:
        """The gateway's answer for an attempt: the current one, an earlier one, or one with
        a transaction UUID the claim never had."""
        gateway_outcome, code, definitive = OUTCOMES[outcome]
        claim = self.claim()
        before = self.doc()
        if not claim.attempts:
            index, tran = 0, str(uuidlib.uuid4())
            decision = Decision(AttemptOutcome.APPROVED, ClaimStatus.SUCCEEDED, 0)
        else:
            index = len(claim.attempts) - 1
            if which == "earlier":
                index = max(index - 1, 0)
            tran = claim.attempts[index].tran_uuid
            if which == "forged":
                tran = str(uuidlib.uuid4())
            result = TransferResult(
                gateway_outcome,
                tran,
                code,
                outcome,
                reference="ref-1" if gateway_outcome is Outcome.APPROVED else None,
            )
            decision = decide(
                claim.attempts[index],
                index + 1,
                result,
                utcnow(),
                settle_grace=GRACE.get(outcome, timedelta(0)),
                recheck=timedelta(seconds=30),
                definitive=definitive,
            )
        if tran != claim.attempts[index].tran_uuid if claim.attempts else True:
            claim = replace(
                claim,
                attempts=tuple(
                    replace(a, tran_uuid=tran) if i == index else a
                    for i, a in enumerate(claim.attempts)
                )
                or (Attempt(tran, utcnow(), "4242"),),
            )
        transition = lifecycle.settling(claim, index, decision, utcnow(), LEASE)
        got = run(self.store.claims.apply(transition))
        m = self.model
        applies = (
            m.status is ClaimStatus.PROCESSING
            and index == len(m.attempts) - 1
            and tran == m.attempts[index][0]
            and m.attempts[index][1] in OPEN
        )
        note(
            f"settle {outcome} on {which} attempt {index} -> "
            f"{'applied' if got else 'refused'} (model {'applies' if applies else 'refuses'})"
        )
        assert (got is not None) is applies
        if not applies:
            assert self.doc() == before, "a refused settlement changed the claim"
            return
        nxt = decision.next_attempt.tran_uuid if decision.next_attempt else None
        m.settle(outcome, code, nxt)

    @rule(last4=st.sampled_from(["4242", "0052", "0091"]))
    def submit(self, last4: str) -> None:
        """The customer submits a card (atomic pending -> processing)."""
        self._submit(last4)

    @precondition(lambda self: self.model.status is ClaimStatus.PROCESSING)
    @rule(outcome=ANSWERS)
    def gateway_answers(self, outcome: str) -> None:
        self._settle(outcome, "current")

    @rule(
        outcome=st.sampled_from(sorted(OUTCOMES)),
        which=st.sampled_from(["current", "earlier", "forged"]),
    )
    def late_or_forged_answer(self, outcome: str, which: str) -> None:
        """A duplicate, late or forged answer: only an open current attempt may settle."""
        self._settle(outcome, which)

    @precondition(lambda self: self.model.status is ClaimStatus.PENDING)
    @rule(outcome=ANSWERS)
    def customer_tries_and_gateway_answers(self, outcome: str) -> None:
        self._submit("4242")
        self._settle(outcome, "current")

    @precondition(lambda self: self.patient())
    @rule()
    def cancel(self) -> None:
        got = run(self.store.claims.apply(lifecycle.cancelling(PROVIDER, self.uuid, utcnow())))
        assert (got is not None) is (self.model.status is ClaimStatus.PENDING)
        if got is not None:
            self.model.status = ClaimStatus.CANCELLED

    @precondition(lambda self: self.patient() and not self.model.due)
    @rule()
    def time_passes(self) -> None:
        """The claim's expiry passes (the clock is the database's ``expires_at``; a pending
        claim's ``next_at`` is its expiry)."""
        past = utcnow() - timedelta(seconds=1)
        run(
            self.store.db.claims.update_one(
                {"_id": self.uuid},
                [
                    {
                        "$set": {
                            "expires_at": past,
                            "next_at": {
                                "$cond": [{"$eq": ["$status", "pending"]}, past, "$next_at"]
                            },
                        }
                    }
                ],
            )
        )
        self.model.due = True

    @rule()
    def expire(self) -> None:
        got = run(self.store.claims.apply(lifecycle.expiring(self.uuid, utcnow())))
        m = self.model
        assert (got is not None) is (m.status is ClaimStatus.PENDING and m.due)
        if got is not None:
            m.status = ClaimStatus.EXPIRED

    @rule()
    def take_lease(self) -> None:
        """Reconciliation takes the lease on a processing claim; a second process holding
        the same (now stale) read of the claim must lose."""
        seen = self.claim()
        before = (seen.status, seen.attempts)
        got = run(self.store.claims.take_lease(seen, utcnow() + timedelta(seconds=60)))
        assert (got is not None) is (self.model.status is ClaimStatus.PROCESSING)
        if got is not None:
            assert run(self.store.claims.take_lease(seen, utcnow() + timedelta(seconds=90))) is None
        after = self.claim()
        assert (after.status, after.attempts) == before

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def stored_claim_is_the_model_and_keeps_the_rules(self) -> None:
        if not self.ready:
            return  # before the claim is generated
        self.steps += 1
        claim, doc, m = self.claim(), self.doc(), self.model
        assert claim.status is m.status
        assert [(a.tran_uuid, a.outcome) for a in claim.attempts] == m.attempts
        if self.terminal is not None:
            assert claim.status is self.terminal, "a terminal state changed"
        if claim.status.terminal:
            self.terminal = claim.status
        outcomes = [a.outcome for a in claim.attempts]
        open_ = [i for i, o in enumerate(outcomes) if o in OPEN]
        assert len(outcomes) <= MAX_ATTEMPTS
        assert len(open_) <= 1 and (not open_ or open_[0] == len(outcomes) - 1)
        assert (claim.status is ClaimStatus.PROCESSING) is (len(open_) == 1)
        approved = outcomes.count(AttemptOutcome.APPROVED)
        assert approved <= 1
        assert (claim.status is ClaimStatus.SUCCEEDED) is (approved == 1)
        # The customer's card is kept only while a transfer may be running.
        assert (claim.card_pan is not None) is (claim.status is ClaimStatus.PROCESSING)
        assert (claim.completed_at is not None) is claim.status.terminal
        # Succeeded, failed and expired claims owe the provider a webhook (their ``next_at``
        # is the deadline for writing it); cancelled ones not. Pending claims are next due at
        # their expiry, processing ones at the end of their lease.
        owes = claim.status in (ClaimStatus.SUCCEEDED, ClaimStatus.FAILED, ClaimStatus.EXPIRED)
        if claim.status.terminal:
            assert (doc.get("next_at") is not None) is owes
        elif claim.status is ClaimStatus.PENDING:
            assert claim.next_at == claim.expires_at
        else:
            assert claim.next_at is not None
        if claim.status in (ClaimStatus.SUCCEEDED, ClaimStatus.FAILED):
            assert claim.response_code == m.code
        for attempt in claim.attempts:
            assert (attempt.finished_at is None) is (attempt.outcome in OPEN)


def test_claim_state_machine_against_the_database(claim_store: Store) -> None:
    ClaimMachine.store = claim_store
    run_state_machine_as_test(
        ClaimMachine,
        settings=settings(
            max_examples=50,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
