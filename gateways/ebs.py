"""The ``ebs`` gateway: Sudan's EBS card switch through its consumer JSON API (docs/EBS.md).

Why it looks the way it does:

* Every call is ``POST <ebs_url><endpoint>`` with a JSON body. EBS answers HTTP 200 even for
  declines, so only a *clear* answer counts: HTTP 200, ``Content-Type: application/json``
  (a ``charset`` suffix is fine), a JSON object body with an integer ``responseCode``.
  Anything else (timeout, connection error, 3xx/4xx/5xx, HTML, missing code) means the money
  may or may not have moved: ``transfer`` returns UNKNOWN and the engine settles it later
  with ``status``. A timeout is never a decline.
* ``status`` asks ``getTransactionStatus`` with a fresh ``UUID`` and ``originalTranUUID``.
  The top-level ``responseCode`` describes the query; ``originalTransaction.responseCode``
  the transfer. **Not found** is signalled by a top-level ``responseCode`` of
  ``STATUS_NOT_FOUND_CODE`` (25, ISO 8583 "unable to locate record") with no
  ``originalTransaction``; the project's simulator (``simulator.ebs``) answers the same
  code from its own reading of the protocol. Real EBS's not-found code is not documented in
  the sources we have: check it against the QA switch and change the constant if it differs.
  Any other non-zero query code leaves the outcome UNKNOWN.
* A 613 (``DUPLICATE_TRANSACTION``) reply to ``doCardTransfer`` is reported as UNKNOWN with
  code 613: that UUID already has an outcome at the switch, which only ``status`` can tell,
  and calling it a decline could fail a claim whose money did move.
* The IPIN block is RSA PKCS#1 v1.5 over ``UUID + IPIN`` with the switch's public key
  (configured, or fetched with ``getPublicKey`` and cached). After a reply with a
  PIN-block error code (``PIN_BLOCK_ERROR_CODES``) a fetched key is fetched again once and
  the call retried once with the same UUID (the switch has not accepted that UUID: it could
  not read the request). A configured key is never replaced. When no key can be had nothing
  is sent: a clear refusal of ``getPublicKey`` (e.g. 601) is returned as that decline, an
  unclear one as UNKNOWN (``status`` will then find nothing).
* Card numbers appear in logs and in ``raw`` only as their last four digits; IPINs, IPIN
  blocks and expiry dates never do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from Crypto.Cipher import PKCS1_v1_5
from Crypto.PublicKey import RSA

from gateways.base import (
    Card,
    Gateway,
    GatewayHost,
    HttpClient,
    HttpReply,
    Outcome,
    Problems,
    TransferRequest,
    TransferResult,
    VerifyResult,
    mask_pan,
)

log = logging.getLogger(__name__)

APPROVED_CODE = 0
DUPLICATE_CODE = 613
STATUS_NOT_FOUND_CODE = 25
# "PIN cryptographic error": the switch could not decrypt the IPIN block (stale key).
PIN_BLOCK_ERROR_CODES = frozenset({81})

_PAN_KEYS = frozenset({"pan", "tocard", "fromcard", "cardnumber", "primaryaccountnumber"})
_SECRET_KEYS = frozenset({"ipin", "newipin", "pin", "expdate", "otp", "password"})
_LONG_DIGITS = re.compile(r"^\d{13,19}$")
UUID4_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def load_public_key(b64_der: str) -> RSA.RsaKey:
    """Parse ``pubKeyValue``: base64 of DER SubjectPublicKeyInfo, any key size."""
    try:
        key = RSA.import_key(base64.b64decode(b64_der.strip(), validate=True))
    except (ValueError, IndexError, TypeError) as exc:
        raise ValueError(f"not a base64 DER RSA public key: {exc}") from exc
    if key.has_private():
        key = key.public_key()
    return key


def ipin_block(key: RSA.RsaKey, request_uuid: str, ipin: str) -> str:
    """EBS's IPIN block: base64(RSA-PKCS#1 v1.5(UUID + IPIN))."""
    cipher = PKCS1_v1_5.new(key)
    return base64.b64encode(cipher.encrypt((request_uuid + ipin).encode("ascii"))).decode("ascii")


def sanitize(value: Any) -> Any:
    """A reply made safe to store and show: card numbers masked, IPINs and expiries dropped."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            lk = str(k).lower()
            if lk in _SECRET_KEYS or "ipin" in lk:
                continue
            if lk in _PAN_KEYS and isinstance(v, str | int) and not isinstance(v, bool):
                out[k] = mask_pan(str(v))
            else:
                out[k] = sanitize(v)
        return out
    if isinstance(value, list):
        return [sanitize(v) for v in value]
    if isinstance(value, str) and _LONG_DIGITS.match(value):
        return mask_pan(value)
    return value


class _Answer:
    """One HTTP exchange: ``body`` is set only for a clear EBS answer."""

    __slots__ = ("body", "http_status", "problem")

    def __init__(
        self, body: dict[str, Any] | None, problem: str = "", http_status: int | None = None
    ) -> None:
        self.body = body
        self.problem = problem
        self.http_status = http_status

    @property
    def code(self) -> int | None:
        return self.body["responseCode"] if self.body is not None else None

    @property
    def message(self) -> str:
        if self.body is None:
            return f"no clear answer from EBS ({self.problem})"
        return str(self.body.get("responseMessage") or "")

    def raw(self) -> dict[str, Any]:
        if self.body is not None:
            safe: dict[str, Any] = sanitize(self.body)
            return safe
        return {"error": self.problem, "httpStatus": self.http_status}


def _is_json_content_type(value: str) -> bool:
    return value.split(";", 1)[0].strip().lower() == "application/json"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class EbsOptions:
    """The EBS gateway's settings (``CASHOUT_EBS_*``), checked here and only here."""

    url: str | None = field(default=None, metadata=_help("EBS consumer API base URL, ending /"))
    application_id: str | None = field(default=None, metadata=_help("applicationId from EBS"))
    public_key: str | None = field(
        default=None, metadata=_help("EBS RSA key, base64 DER; unset = fetched (getPublicKey)")
    )
    ca_file: str | None = field(
        default=None, metadata=_help("CA bundle that verifies EBS's TLS certificate")
    )
    connect_timeout: float = field(default=10.0, metadata=_help("seconds to connect to EBS"))
    request_timeout: float = field(default=60.0, metadata=_help("seconds to wait for a reply"))
    datetime_format: str = field(
        default="%d%m%y%H%M%S", metadata=_help("strftime format of tranDateTime")
    )
    timezone: str = field(default="Africa/Khartoum", metadata=_help("zone of tranDateTime"))

    def problems(self, production: bool) -> Problems:
        p: Problems = []
        if not self.url:
            p.append(("url", "required with CASHOUT_GATEWAY=ebs"))
        else:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                p.append(("url", f"{self.url!r} must be an http(s) URL ending with /"))
            elif not self.url.endswith("/"):
                p.append(("url", f"{self.url!r} must be an http(s) URL ending with /"))
            elif production and parts.scheme != "https":
                p.append(("url", "must be https in production"))
        if not self.application_id:
            p.append(("application_id", "required with CASHOUT_GATEWAY=ebs"))
        if self.ca_file and not os.path.isfile(self.ca_file):
            p.append(("ca_file", f"{self.ca_file!r} is not a readable file"))
        elif production and not self.ca_file:
            p.append(("ca_file", "required in production to verify EBS's TLS"))
        if self.connect_timeout <= 0 or self.request_timeout <= 0:
            p.append(("request_timeout", "timeouts must be positive"))
        try:
            sample = datetime.now(ZoneInfo(self.timezone)).strftime(self.datetime_format)
        except (ZoneInfoNotFoundError, ValueError):
            p.append(("timezone", f"unknown time zone {self.timezone!r}"))
        else:
            if not (len(sample) == 12 and sample.isdigit()):
                p.append(("datetime_format", "must give 12 digits"))
        if self.public_key:
            try:
                load_public_key(self.public_key)
            except ValueError:
                p.append(("public_key", "is not a base64 DER RSA public key"))
        return p


class EbsGateway(Gateway):
    """EBS consumer API client; every method returns a value, network trouble included."""

    name = "ebs"
    Options = EbsOptions

    def __init__(self, options: EbsOptions, http: HttpClient, production: bool = False) -> None:
        problems = options.problems(production)
        if problems:  # the server checked them; a direct caller may not have
            raise ValueError("; ".join(f"{name}: {problem}" for name, problem in problems))
        assert options.url is not None
        self._url = options.url
        self._options = options
        self._zone = ZoneInfo(options.timezone)
        self._configured_key = load_public_key(options.public_key) if options.public_key else None
        self._fetched_key: RSA.RsaKey | None = None
        self._key_failure: _Answer | None = None
        self._key_problem = ""
        self._client = http
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    @classmethod
    def create(cls, options: EbsOptions, host: GatewayHost) -> EbsGateway:
        if host.http is None:
            raise ValueError("the ebs gateway needs an HTTP client from its host")
        return cls(options, host.http, host.production)

    @classmethod
    def settle_grace(cls, options: EbsOptions) -> float:
        """A transfer EBS received is recorded by the time it answers, which it does within
        our request timeout or not at all: until then "not found" may only mean "not yet"."""
        return options.connect_timeout + options.request_timeout

    def _key_lock(self) -> asyncio.Lock:
        """One lock per event loop (tests run the gateway on several loops in turn)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    def _common(self, request_uuid: str | None = None) -> dict[str, Any]:
        return {
            "applicationId": self._options.application_id,
            "tranDateTime": datetime.now(self._zone).strftime(self._options.datetime_format),
            "UUID": request_uuid or str(uuidlib.uuid4()),
        }

    async def _post(self, endpoint: str, body: dict[str, Any]) -> _Answer:
        started = time.monotonic()
        answer = _judge(
            await self._client.post_json(
                self._url + endpoint,
                json.dumps(body).encode(),
                connect_timeout=self._options.connect_timeout,
                request_timeout=self._options.request_timeout,
                ca_file=self._options.ca_file,
            )
        )
        log.info(
            "ebs %s uuid=%s pan=%s http=%s code=%s%s %.0fms",
            endpoint,
            body.get("UUID"),
            mask_pan(body["PAN"]) if "PAN" in body else "-",
            answer.http_status,
            answer.code,
            f" problem={answer.problem}" if answer.problem else "",
            (time.monotonic() - started) * 1000,
        )
        return answer

    # -- public key ----------------------------------------------------------------------

    async def _public_key(self, stale: RSA.RsaKey | None = None) -> RSA.RsaKey | None:
        """The key for IPIN blocks; with ``stale``, fetch again unless someone already did."""
        if self._configured_key is not None:
            return self._configured_key
        async with self._key_lock():
            if self._fetched_key is None or self._fetched_key is stale:
                self._fetched_key = await self._fetch_key()
            return self._fetched_key

    async def _fetch_key(self) -> RSA.RsaKey | None:
        answer = await self._post("getPublicKey", self._common())
        problem = ""
        key = None
        if answer.body is None:
            problem = answer.problem
        elif answer.code != APPROVED_CODE:
            problem = f"code {answer.code}"
        elif not isinstance(answer.body.get("pubKeyValue"), str):
            problem = "reply has no pubKeyValue"
        else:
            try:
                key = load_public_key(answer.body["pubKeyValue"])
            except ValueError:
                problem = "reply holds no usable RSA key"
        if key is None:
            log.warning("ebs getPublicKey failed: %s", problem)
            self._key_failure = answer if answer.body is not None else None
            self._key_problem = problem
        return key

    def _no_key_answer(self) -> _Answer:
        """Nothing was sent. A clear refusal of getPublicKey (e.g. 601) is passed on as
        that decline; anything else stays unclear so the engine settles it with status."""
        failure = self._key_failure
        if failure is not None and failure.code not in (None, APPROVED_CODE):
            return failure
        return _Answer(None, f"EBS public key unavailable ({self._key_problem}); not sent")

    def _may_refetch(self, answer: _Answer) -> bool:
        return self._configured_key is None and answer.code in PIN_BLOCK_ERROR_CODES

    async def _with_ipin(
        self,
        endpoint: str,
        body: dict[str, Any],
        ipin: str,
        new_uuid: bool,
        may_send: Callable[[], bool] = lambda: True,
    ) -> _Answer:
        """Send a request carrying an IPIN block; refetch the key and resend once if stale.
        ``may_send`` is asked just before each send (fetching the key may have taken long)."""
        key = await self._public_key()
        if key is None:
            return self._no_key_answer()
        if not may_send():
            return _Answer(None, "not sent: this process no longer holds the attempt")
        body = {**body, **self._common(body["UUID"])}
        body["IPIN"] = ipin_block(key, body["UUID"], ipin)
        answer = await self._post(endpoint, body)
        if not self._may_refetch(answer):
            return answer
        log.info("ebs %s: PIN block rejected, fetching the public key again", endpoint)
        fresh = await self._public_key(stale=key)
        if fresh is None:
            return answer
        if not may_send():
            return answer  # the first send was refused unread: nothing moved
        body = {**body, **self._common(None if new_uuid else body["UUID"])}
        body["IPIN"] = ipin_block(fresh, body["UUID"], ipin)
        return await self._post(endpoint, body)

    # -- Gateway -------------------------------------------------------------------------

    async def transfer(self, request: TransferRequest) -> TransferResult:
        tran_uuid = request.tran_uuid
        if not UUID4_RE.match(tran_uuid):
            # EBS rejects anything else; a wrong format here is a bug in the caller.
            raise ValueError("tran_uuid must be a lowercase hyphenated UUID v4")
        card = request.from_card
        body: dict[str, Any] = {
            **self._common(tran_uuid),
            "PAN": card.pan,
            "expDate": card.exp_date,
            "tranAmount": request.amount,
            "tranCurrencyCode": request.currency,
            "toCard": request.to_pan,
        }
        answer = await self._with_ipin(
            "doCardTransfer", body, card.ipin, new_uuid=False, may_send=request.may_send
        )
        if answer.body is None:
            return TransferResult(
                Outcome.UNKNOWN, tran_uuid, None, answer.message, raw=answer.raw()
            )
        code = answer.code
        if code == APPROVED_CODE:
            return TransferResult(
                Outcome.APPROVED,
                tran_uuid,
                code,
                answer.message or "Approved",
                _reference(answer.body),
                answer.raw(),
            )
        if code == DUPLICATE_CODE:
            return TransferResult(
                Outcome.UNKNOWN,
                tran_uuid,
                code,
                f"{answer.message or 'DUPLICATE_TRANSACTION'}: this UUID already has an outcome;"
                " ask status",
                raw=answer.raw(),
            )
        return TransferResult(Outcome.DECLINED, tran_uuid, code, answer.message, raw=answer.raw())

    async def status(self, tran_uuid: str) -> TransferResult:
        answer = await self._post(
            "getTransactionStatus", {**self._common(), "originalTranUUID": tran_uuid}
        )
        if answer.body is None:
            return TransferResult(
                Outcome.UNKNOWN, tran_uuid, None, answer.message, raw=answer.raw()
            )
        if answer.code == STATUS_NOT_FOUND_CODE:
            return TransferResult(
                Outcome.NOT_FOUND,
                tran_uuid,
                None,
                answer.message or "no such transaction",
                raw=answer.raw(),
            )
        if answer.code != APPROVED_CODE:
            return TransferResult(
                Outcome.UNKNOWN,
                tran_uuid,
                None,
                f"status query failed ({answer.code} {answer.message})",
                raw=answer.raw(),
            )
        original = answer.body.get("originalTransaction")
        code = original.get("responseCode") if isinstance(original, dict) else None
        if not isinstance(original, dict) or not isinstance(code, int) or isinstance(code, bool):
            return TransferResult(
                Outcome.UNKNOWN,
                tran_uuid,
                None,
                "status reply has no originalTransaction.responseCode",
                raw=answer.raw(),
            )
        if original.get("UUID") not in (None, tran_uuid):
            return TransferResult(
                Outcome.UNKNOWN,
                tran_uuid,
                None,
                "status reply is about another transaction",
                raw=answer.raw(),
            )
        message = str(original.get("responseMessage") or "")
        if code == APPROVED_CODE:
            return TransferResult(
                Outcome.APPROVED,
                tran_uuid,
                code,
                message or "Approved",
                _reference(original),
                answer.raw(),
            )
        return TransferResult(Outcome.DECLINED, tran_uuid, code, message, raw=answer.raw())

    async def verify_card(self, card: Card) -> VerifyResult:
        body: dict[str, Any] = {**self._common(), "PAN": card.pan, "expDate": card.exp_date}
        answer = await self._with_ipin("getBalance", body, card.ipin, new_uuid=True)
        if answer.body is None:
            return VerifyResult(False, None, f"could not verify the card: {answer.message}")
        return VerifyResult(answer.code == APPROVED_CODE, answer.code, answer.message)

    async def is_alive(self) -> bool:
        answer = await self._post("isAlive", self._common())
        return answer.body is not None and answer.code == APPROVED_CODE

    async def close(self) -> None:
        await self._client.close()


def _judge(reply: HttpReply) -> _Answer:
    """Only a 200 with a JSON object holding an integer responseCode is an answer; anything
    else leaves the outcome unknown."""
    if reply.status is None:
        return _Answer(None, reply.problem)
    if reply.status != 200:
        return _Answer(None, f"HTTP {reply.status}", reply.status)
    if not _is_json_content_type(reply.content_type):
        return _Answer(None, f"Content-Type {reply.content_type[:60]!r} is not JSON", 200)
    try:
        body = json.loads(reply.body)
    except (ValueError, UnicodeDecodeError):
        return _Answer(None, "body is not JSON", 200)
    if not isinstance(body, dict):
        return _Answer(None, "body is not a JSON object", 200)
    code = body.get("responseCode")
    if not isinstance(code, int) or isinstance(code, bool):
        return _Answer(None, "no integer responseCode", 200)
    return _Answer(body, "", 200)


def _reference(body: dict[str, Any]) -> str | None:
    value = body.get("referenceNumber")
    if value is None or isinstance(value, bool | dict | list):
        return None
    return str(value)
