"""An HTTP server speaking the EBS consumer protocol over the simulated switch.

Run it on its own so the whole stack can use the ``ebs`` gateway on one machine::

    python -m simulator.ebs --host 127.0.0.1 --port 8181 --data-dir ./var/sim \\
        [--key-bits 2048] [--application-id ACTSCon ...] [--slow-seconds 5] \\
        [--base-path /consumer/] [--max-clock-skew 300] [--datetime-format %d%m%y%H%M%S] \\
        [--timezone Africa/Khartoum] [--tls-cert CERT.pem --tls-key KEY.pem]

``--port 0`` picks a free port; with ``--tls-cert``/``--tls-key`` it serves HTTPS, so the
gateway's CA-file verification can be exercised. When ready it prints exactly one line to
stdout, ``simulator listening on http://HOST:PORT/consumer/`` (``https://`` with TLS; that is
the gateway's base URL), and it stops cleanly (exit 0) on SIGINT or SIGTERM. Logs go to
stderr; card numbers appear only masked.

Files in ``--data-dir``: ``simulator-switch.sqlite3`` (the ledger, see ``simulator.bank``)
and ``simulator-key.pem`` (its RSA private key, generated on first start with ``--key-bits``;
sizes below 1024 bits, like EBS's 512-bit QA key, are supported).

It checks requests the way EBS would, in this order, and answers with EBS-style flat JSON:

* Body not a JSON object, or request ``Content-Type`` not ``application/json``: HTTP 400 with
  a JSON body ``{"responseCode": 400, ...}`` (EBS's behaviour here is unknown; our client
  never sends such a request, and to it any non-200 reply is an unknown outcome).
* Everything else is HTTP 200 with a non-zero ``responseCode``, checked in this order:
  30 format error when a required field is missing or misspelt (e.g. ``uuid`` for ``UUID``);
  601 unknown ``applicationId``; 30 when ``tranDateTime`` is not 12 digits of the configured
  format or is more than ``--max-clock-skew`` seconds from now in the configured zone, when
  ``UUID`` is not a lowercase hyphenated v4, for wrong types, a ``tranAmount`` with more than
  2 decimals, or a currency other than SDG; 613 reused ``UUID`` (any endpoint); 81 IPIN block
  not decryptable to exactly ``UUID`` + 4 to 12 digits; 13 amount not a whole number of SDG
  (the ledger keeps whole SDG); then the switch's own codes (0, 51, 52, 53, 54, 72).
  A request rejected with 30, 601, 613 or 81 does not use up its UUID (EBS could not accept
  it), so a client may resend it after fetching the key again.
* ``getTransactionStatus`` for a UUID the switch never recorded answers
  ``responseCode`` 25 (``gateways.ebs.STATUS_NOT_FOUND_CODE``) with ``originalTransaction``
  null; otherwise ``responseCode`` 0 and the original in ``originalTransaction``.

Magic receiving cards (``toCard`` last four digits) beyond the switch's own table:
``0091`` is applied at once, then the reply waits ``--slow-seconds`` (the client should time
out; if it does not, it gets the approval); ``0092`` applies nothing, waits, then answers
HTTP 504. Fault injection, never applied: ``0093`` HTTP 200 with an HTML body, ``0094`` an
approved-looking JSON body labelled ``Content-Type: text/html``, ``0095`` HTTP 500 (with an
approved-looking JSON body, so only the status code tells).

Test-only control endpoints (no card number or IPIN in any reply):

* ``GET /_sim/requests``: the last 10,000 requests received, in order: ``endpoint``,
  ``fields`` (the key names sent), ``missing``, ``misspelt``, ``content_type_ok``,
  ``application_id_ok``, ``tran_date_time`` and ``tran_date_time_ok``, ``uuid`` and
  ``uuid_ok``, ``ipin_block_ok`` (None without an IPIN field), ``ipin_matches_account``
  (the decrypted IPIN equals the account's registered IPIN after the call; None when the card
  has no paying account), ``pan`` and ``to_card`` masked, ``tran_amount``, ``http_status``,
  ``response_code``.
  ``DELETE /_sim/requests`` clears the list.
* ``GET /_sim/ledger?pan=...``: that card's balance and received transfers;
  without ``pan``: total money, money created, whether it is conserved.
* ``GET /_sim/transfers/<uuid>``: the switch's record of a transfer (masked), or 404.
* ``GET /_sim/public-key``: the current ``pubKeyValue``.
* ``POST /_sim/rotate-key?bits=N``: a new RSA key, so clients holding the old one get 81.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import math
import os
import re
import signal
import ssl
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import tornado.httpserver
import tornado.netutil
import tornado.web
from Crypto.Cipher import PKCS1_v1_5
from Crypto.PublicKey import RSA
from Crypto.Util import number

from gateways.ebs import STATUS_NOT_FOUND_CODE, UUID4_RE
from simulator.bank import (
    DUPLICATE_TRANSACTION,
    INVALID_AMOUNT,
    MESSAGES,
    Bank,
    TransferRecord,
    approval_code_for,
    iter_masked,
    mask,
)

log = logging.getLogger("simulator.ebs")

LEDGER_FILE = "simulator-switch.sqlite3"
KEY_FILE = "simulator-key.pem"

FORMAT_ERROR = 30
PIN_BLOCK_ERROR = 81
INVALID_APPLICATION_ID = 601
BAD_REQUEST = 400

SIM_MESSAGES: dict[int, str] = {
    **MESSAGES,
    FORMAT_ERROR: "Format error",
    PIN_BLOCK_ERROR: "PIN cryptographic error",
    INVALID_APPLICATION_ID: "Invalid application id",
    STATUS_NOT_FOUND_CODE: "Transaction not found",
    BAD_REQUEST: "Bad request",
}

MAX_RECORDED_REQUESTS = 10_000  # /_sim/requests keeps the most recent ones

FAULT_HTML = "0093"
FAULT_CONTENT_TYPE = "0094"
FAULT_HTTP_500 = "0095"
FAULT_CARDS = frozenset({FAULT_HTML, FAULT_CONTENT_TYPE, FAULT_HTTP_500})

KNOWN_FIELDS = (
    "applicationId",
    "tranDateTime",
    "UUID",
    "PAN",
    "IPIN",
    "expDate",
    "tranAmount",
    "tranCurrencyCode",
    "toCard",
    "originalTranUUID",
)
_KNOWN_LOWER = {f.lower(): f for f in KNOWN_FIELDS}
COMMON = ("applicationId", "tranDateTime", "UUID")
CARD = ("PAN", "IPIN", "expDate")
REQUIRED: dict[str, tuple[str, ...]] = {
    "getPublicKey": COMMON,
    "isAlive": COMMON,
    "getBalance": (*COMMON, *CARD),
    "doCardTransfer": (*COMMON, *CARD, "tranAmount", "tranCurrencyCode", "toCard"),
    "getTransactionStatus": (*COMMON, "originalTranUUID"),
}

_PLAIN_IPIN_RE = re.compile(rb"^[0-9]{4,12}$")


def generate_key(bits: int) -> RSA.RsaKey:
    """An RSA key of any size; pycryptodome only generates >= 1024 bits, EBS QA uses 512."""
    if bits >= 1024:
        return RSA.generate(bits)
    if bits < 384:
        raise ValueError("key size below 384 bits cannot carry a UUID + IPIN block")
    e = 65537
    while True:
        p = number.getPrime(bits // 2)
        q = number.getPrime(bits - bits // 2)
        n = p * q
        phi = (p - 1) * (q - 1)
        if p != q and n.bit_length() == bits and math.gcd(e, phi) == 1:
            return RSA.construct((n, e, pow(e, -1, phi), p, q))


def public_key_value(key: RSA.RsaKey) -> str:
    """``pubKeyValue``: base64 DER SubjectPublicKeyInfo, no PEM armour."""
    return base64.b64encode(key.public_key().export_key(format="DER")).decode("ascii")


@dataclass
class SimState:
    """Everything the handlers share; one per server."""

    switch: Bank
    key: RSA.RsaKey
    key_path: Path
    application_ids: frozenset[str]
    slow_seconds: float
    max_clock_skew: float
    datetime_format: str
    zone: ZoneInfo
    requests: list[dict[str, Any]] = field(default_factory=list)
    request_count: int = 0
    seen_uuids: set[str] = field(default_factory=set)
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)

    def rotate_key(self, bits: int) -> None:
        self.key = generate_key(bits)
        save_key(self.key, self.key_path)

    def uuid_used(self, request_uuid: str) -> bool:
        return request_uuid in self.seen_uuids or self.switch.status(request_uuid) is not None

    def tran_date_time_ok(self, value: object) -> bool:
        if not (isinstance(value, str) and len(value) == 12 and value.isdigit()):
            return False
        try:
            when = datetime.strptime(value, self.datetime_format).replace(tzinfo=self.zone)
        except ValueError:
            return False
        return abs((datetime.now(self.zone) - when).total_seconds()) <= self.max_clock_skew

    def decrypt_ipin(self, block: object, request_uuid: str) -> str | None:
        """The clear IPIN if ``block`` decrypts to exactly ``UUID`` + digits, else None."""
        if not isinstance(block, str):
            return None
        try:
            ciphertext = base64.b64decode(block, validate=True)
            # Implicit rejection: bad padding yields a pseudo-random message that fails below.
            plain = PKCS1_v1_5.new(self.key).decrypt(ciphertext)
        except (ValueError, TypeError):
            return None
        prefix = request_uuid.encode("ascii")
        if not plain.startswith(prefix) or not _PLAIN_IPIN_RE.match(plain[len(prefix) :]):
            return None
        return plain[len(prefix) :].decode("ascii")


def load_or_create_key(path: Path, bits: int) -> RSA.RsaKey:
    if path.exists():
        return RSA.import_key(path.read_bytes())
    key = generate_key(bits)
    save_key(key, path)
    return key


def save_key(key: RSA.RsaKey, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_key(format="PEM"))
    os.replace(tmp, path)


class _JsonHandler(tornado.web.RequestHandler):
    """JSON replies only, errors included."""

    state: SimState

    def initialize(self, state: SimState) -> None:
        self.state = state

    def send_json(
        self, payload: Any, status: int = 200, content_type: str = "application/json"
    ) -> None:
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps(
                {
                    "responseCode": status_code,
                    "responseMessage": self._reason,
                    "responseStatus": "Failed",
                }
            )
        )


class ConsumerHandler(_JsonHandler):
    """``POST <base>/<endpoint>``: the EBS consumer API."""

    _closed = False

    def on_connection_close(self) -> None:
        self._closed = True

    def check_xsrf_cookie(self) -> None:
        """A machine API: no cookies, no XSRF."""

    async def post(self, endpoint: str) -> None:
        state = self.state
        state.request_count += 1
        entry: dict[str, Any] = {"seq": state.request_count, "endpoint": endpoint}
        state.requests.append(entry)
        if len(state.requests) > MAX_RECORDED_REQUESTS:
            del state.requests[: len(state.requests) - MAX_RECORDED_REQUESTS]
        content_type = self.request.headers.get("Content-Type", "")
        entry["content_type_ok"] = content_type.split(";")[0].strip().lower() == (
            "application/json"
        )
        if endpoint not in REQUIRED:
            self._reply_raw(
                entry,
                404,
                {"responseCode": 404, "responseMessage": "Not found", "responseStatus": "Failed"},
            )
            return
        try:
            body = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not entry["content_type_ok"] or not isinstance(body, dict):
            entry["fields"] = sorted(body) if isinstance(body, dict) else None
            self._reply_raw(
                entry,
                400,
                {
                    "responseCode": BAD_REQUEST,
                    "responseStatus": "Failed",
                    "responseMessage": "Bad request: the body must be a JSON object sent as"
                    " application/json",
                },
            )
            return
        await self._handle(endpoint, body, entry)

    async def _handle(self, endpoint: str, body: dict[str, Any], entry: dict[str, Any]) -> None:
        state = self.state
        entry["fields"] = sorted(body)
        entry["missing"] = [f for f in REQUIRED[endpoint] if f not in body]
        entry["misspelt"] = sorted(
            k for k in body if k not in KNOWN_FIELDS and k.lower() in _KNOWN_LOWER
        )
        entry["application_id_ok"] = body.get("applicationId") in state.application_ids
        entry["tran_date_time"] = body.get("tranDateTime")
        entry["tran_date_time_ok"] = state.tran_date_time_ok(body.get("tranDateTime"))
        request_uuid = body.get("UUID")
        entry["uuid"] = request_uuid if isinstance(request_uuid, str) else None
        entry["uuid_ok"] = isinstance(request_uuid, str) and bool(UUID4_RE.match(request_uuid))
        entry["ipin_block_ok"] = None
        entry["ipin_matches_account"] = None
        pan, to_card = body.get("PAN"), body.get("toCard")
        entry["pan"] = mask(pan) if isinstance(pan, str) else None
        entry["to_card"] = mask(to_card) if isinstance(to_card, str) else None
        entry["tran_amount"] = body.get("tranAmount")

        def fail(code: int, detail: str = "") -> None:
            entry["problem"] = detail
            message = SIM_MESSAGES.get(code, "Declined") + (f": {detail}" if detail else "")
            self._reply(entry, body, code, message)

        if entry["missing"] or entry["misspelt"]:
            parts = []
            if entry["missing"]:
                parts.append("missing " + ", ".join(entry["missing"]))
            if entry["misspelt"]:
                parts.append("misspelt " + ", ".join(entry["misspelt"]))
            return fail(FORMAT_ERROR, "; ".join(parts))
        if not entry["application_id_ok"]:
            return fail(INVALID_APPLICATION_ID)
        if not entry["tran_date_time_ok"]:
            return fail(FORMAT_ERROR, "tranDateTime")
        if not entry["uuid_ok"]:
            return fail(FORMAT_ERROR, "UUID must be a lowercase hyphenated UUID v4")
        assert isinstance(request_uuid, str)
        problem = _field_problem(endpoint, body)
        if problem:
            return fail(FORMAT_ERROR, problem)
        if state.uuid_used(request_uuid):
            return fail(DUPLICATE_TRANSACTION)
        ipin: str | None = None
        if "IPIN" in body:
            ipin = state.decrypt_ipin(body["IPIN"], request_uuid)
            entry["ipin_block_ok"] = ipin is not None
            if ipin is None:
                return fail(PIN_BLOCK_ERROR)
        amount = body.get("tranAmount")
        if endpoint == "doCardTransfer" and (
            not isinstance(amount, int | float) or amount != int(amount)
        ):
            state.seen_uuids.add(request_uuid)
            return fail(INVALID_AMOUNT, "whole SDG only")
        state.seen_uuids.add(request_uuid)

        if endpoint == "getPublicKey":
            self._reply(entry, body, 0, "Approved", {"pubKeyValue": public_key_value(state.key)})
        elif endpoint == "isAlive":
            self._reply(entry, body, 0, "Approved")
        elif endpoint == "getBalance":
            assert ipin is not None
            check = state.switch.verify_card(body["PAN"], body["expDate"], ipin)
            entry["ipin_matches_account"] = state.switch.ipin_matches(body["PAN"], ipin)
            extra: dict[str, Any] = {}
            if check.ok:
                extra["balance"] = {
                    "available": check.balance,
                    "leger": check.balance,
                    "currency": "SDG",
                }
            self._reply(entry, body, check.code, check.message, extra)
        elif endpoint == "doCardTransfer":
            assert ipin is not None
            await self._transfer(body, entry, ipin, request_uuid)
        else:
            self._status(body, entry)

    async def _transfer(
        self, body: dict[str, Any], entry: dict[str, Any], ipin: str, request_uuid: str
    ) -> None:
        state = self.state
        to_card: str = body["toCard"]
        last4 = to_card[-4:]
        approved_look = {"referenceNumber": "000000000000", "approvalCode": "000000"}
        if last4 == FAULT_HTML:
            entry["fault"] = "html"
            self._reply_raw(
                entry,
                200,
                "<html><body><h1>Service Unavailable</h1></body></html>",
                content_type="text/html; charset=UTF-8",
            )
            return
        if last4 == FAULT_CONTENT_TYPE:
            entry["fault"] = "content-type"
            payload = self._payload(body, 0, "Approved", approved_look)
            self._reply_raw(entry, 200, payload, content_type="text/html")
            return
        if last4 == FAULT_HTTP_500:
            entry["fault"] = "http-500"
            self._reply_raw(entry, 500, self._payload(body, 0, "Approved", approved_look))
            return
        reply = state.switch.transfer(
            request_uuid, body["PAN"], body["expDate"], ipin, to_card, int(body["tranAmount"])
        )
        entry["ipin_matches_account"] = state.switch.ipin_matches(body["PAN"], ipin)
        extra: dict[str, Any] = {}
        if reply.applied:
            extra = {
                "referenceNumber": reply.reference,
                "approvalCode": approval_code_for(request_uuid),
                "tranFee": 0,
            }
        if reply.unanswered:
            entry["fault"] = "slow"
            try:
                await asyncio.wait_for(state.shutting_down.wait(), state.slow_seconds)
            except TimeoutError:
                pass
            if self._closed:
                entry["http_status"] = None
                entry["response_code"] = None
                return
            if not reply.applied:
                self._reply_raw(entry, 504, {"message": "upstream timeout"})
                return
        assert reply.code is not None
        self._reply(entry, body, reply.code, reply.message, extra)

    def _status(self, body: dict[str, Any], entry: dict[str, Any]) -> None:
        record = self.state.switch.status(str(body["originalTranUUID"]))
        if record is None:
            self._reply(
                entry,
                body,
                STATUS_NOT_FOUND_CODE,
                SIM_MESSAGES[STATUS_NOT_FOUND_CODE],
                {"originalTransaction": None},
            )
            return
        self._reply(entry, body, 0, "Approved", {"originalTransaction": self._original(record)})

    def _original(self, record: TransferRecord) -> dict[str, Any]:
        original: dict[str, Any] = {
            "UUID": record.tran_uuid,
            "responseCode": record.code,
            "responseMessage": record.message,
            "responseStatus": "Successful" if record.code == 0 else "Failed",
            "PAN": mask(record.from_pan),
            "toCard": mask(record.to_pan),
            "tranAmount": record.amount,
            "tranCurrencyCode": "SDG",
            "tranDateTime": datetime.fromisoformat(record.created_at)
            .astimezone(self.state.zone)
            .strftime(self.state.datetime_format),
        }
        if record.applied:
            original["referenceNumber"] = record.reference
            original["approvalCode"] = approval_code_for(record.tran_uuid)
        return original

    # -- replies -------------------------------------------------------------------------

    def _payload(
        self, body: dict[str, Any], code: int, message: str, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "responseCode": code,
            "responseMessage": message,
            "responseStatus": "Successful" if code == 0 else "Failed",
            "UUID": body.get("UUID"),
            "tranDateTime": body.get("tranDateTime"),
        }
        for key in ("PAN", "toCard"):
            if isinstance(body.get(key), str):
                payload[key] = mask(body[key])
        for key in ("tranAmount", "tranCurrencyCode", "originalTranUUID"):
            if key in body:
                payload[key] = body[key]
        payload.update(extra or {})
        return payload

    def _reply(
        self,
        entry: dict[str, Any],
        body: dict[str, Any],
        code: int,
        message: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._reply_raw(entry, 200, self._payload(body, code, message, extra))

    def _reply_raw(
        self,
        entry: dict[str, Any],
        status: int,
        payload: Any,
        content_type: str = "application/json",
    ) -> None:
        entry["http_status"] = status
        entry["response_code"] = payload.get("responseCode") if isinstance(payload, dict) else None
        log.info(
            "%s uuid=%s pan=%s to=%s -> http %s code %s",
            entry["endpoint"],
            entry.get("uuid"),
            entry.get("pan"),
            entry.get("to_card"),
            status,
            entry["response_code"],
        )
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.finish(payload if isinstance(payload, str) else json.dumps(payload))


def _field_problem(endpoint: str, body: dict[str, Any]) -> str:
    """Type and format checks beyond presence; empty when the request is well formed."""
    for key in ("PAN", "toCard"):
        if key in REQUIRED[endpoint]:
            value = body.get(key)
            if not (isinstance(value, str) and value.isdigit() and len(value) in (16, 19)):
                return f"{key} must be a string of 16 or 19 digits"
    if "expDate" in REQUIRED[endpoint]:
        value = body.get("expDate")
        if not (isinstance(value, str) and len(value) == 4 and value.isdigit()):
            return "expDate must be YYmm"
    if "IPIN" in REQUIRED[endpoint] and not isinstance(body.get("IPIN"), str):
        return "IPIN must be a base64 string"
    if endpoint == "doCardTransfer":
        amount = body.get("tranAmount")
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            return "tranAmount must be a JSON number"
        if not math.isfinite(amount) or amount <= 0 or round(amount * 100) != amount * 100:
            return "tranAmount must be positive with at most 2 decimals"
        if body.get("tranCurrencyCode") != "SDG":
            return "tranCurrencyCode must be SDG"
    if endpoint == "getTransactionStatus" and not isinstance(body.get("originalTranUUID"), str):
        return "originalTranUUID must be a string"
    return ""


class RequestsHandler(_JsonHandler):
    def get(self) -> None:
        self.send_json({"requests": self.state.requests})

    def delete(self) -> None:
        self.state.requests.clear()
        self.send_json({"cleared": True})


class LedgerHandler(_JsonHandler):
    def get(self) -> None:
        switch = self.state.switch
        pan = self.get_query_argument("pan", None)
        if pan is None:
            self.send_json(
                {
                    "total": switch.total_money(),
                    "created": switch.money_created(),
                    "conserved": switch.money_is_conserved(),
                }
            )
            return
        self.send_json(
            {
                "pan": mask(pan),
                "balance": switch.balance(pan),
                "transfers_to": list(iter_masked(switch.transfers_to(pan))),
            }
        )


class TransferHandler(_JsonHandler):
    def get(self, tran_uuid: str) -> None:
        record = self.state.switch.status(tran_uuid)
        if record is None:
            self.send_json({"found": False}, 404)
            return
        self.send_json({"found": True, **next(iter_masked([record]))})


class PublicKeyHandler(_JsonHandler):
    def get(self) -> None:
        self.send_json(
            {"pubKeyValue": public_key_value(self.state.key), "bits": self.state.key.size_in_bits()}
        )


class RotateKeyHandler(_JsonHandler):
    def check_xsrf_cookie(self) -> None:
        """Test control endpoint: no cookies."""

    def post(self) -> None:
        bits = int(self.get_query_argument("bits", str(self.state.key.size_in_bits())))
        self.state.rotate_key(bits)
        log.info("simulator key rotated (%d bits)", bits)
        self.send_json(
            {"bits": self.state.key.size_in_bits(), "pubKeyValue": public_key_value(self.state.key)}
        )


class NotFoundHandler(_JsonHandler):
    def prepare(self) -> None:
        self.send_json(
            {"responseCode": 404, "responseMessage": "Not found", "responseStatus": "Failed"}, 404
        )


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log without query strings: ``/_sim/ledger?pan=`` must not print a card."""
    request = handler.request
    log.info(
        "%s %s %d %.1fms",
        request.method,
        request.path,
        handler.get_status(),
        request.request_time() * 1000,
    )


def make_app(state: SimState, base_path: str = "/consumer/") -> tornado.web.Application:
    base = "/" + base_path.strip("/") + "/" if base_path.strip("/") else "/"
    args = {"state": state}
    return tornado.web.Application(
        [
            (re.escape(base) + r"([A-Za-z]+)", ConsumerHandler, args),
            (r"/_sim/requests", RequestsHandler, args),
            (r"/_sim/ledger", LedgerHandler, args),
            (r"/_sim/transfers/([^/]+)", TransferHandler, args),
            (r"/_sim/public-key", PublicKeyHandler, args),
            (r"/_sim/rotate-key", RotateKeyHandler, args),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=_log_request,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.ebs",
        description="EBS consumer API simulator over a SQLite ledger (sandbox and tests only).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8181, help="0 picks a free port")
    parser.add_argument("--data-dir", required=True, help="ledger and RSA key live here")
    parser.add_argument(
        "--key-bits",
        type=int,
        default=2048,
        help="size of a newly generated key (ignored when DATA_DIR has one)",
    )
    parser.add_argument(
        "--application-id",
        action="append",
        dest="application_ids",
        help="accepted applicationId (repeatable; default ACTSCon)",
    )
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=5.0,
        help="how long magic 0091/0092 transfers take to answer",
    )
    parser.add_argument("--base-path", default="/consumer/")
    parser.add_argument(
        "--max-clock-skew",
        type=float,
        default=300.0,
        help="seconds tranDateTime may differ from now",
    )
    parser.add_argument("--datetime-format", default="%d%m%y%H%M%S")
    parser.add_argument("--timezone", default="Africa/Khartoum")
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    return args


async def serve(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    key_path = data_dir / KEY_FILE
    state = SimState(
        switch=Bank(data_dir / LEDGER_FILE),
        key=load_or_create_key(key_path, args.key_bits),
        key_path=key_path,
        application_ids=frozenset(args.application_ids or ["ACTSCon"]),
        slow_seconds=args.slow_seconds,
        max_clock_skew=args.max_clock_skew,
        datetime_format=args.datetime_format,
        zone=ZoneInfo(args.timezone),
    )
    base = "/" + args.base_path.strip("/") + "/" if args.base_path.strip("/") else "/"
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    server = tornado.httpserver.HTTPServer(make_app(state, base), ssl_options=ssl_context)
    sockets = tornado.netutil.bind_sockets(args.port, args.host)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host = f"[{args.host}]" if ":" in args.host else args.host
    scheme = "https" if ssl_context else "http"
    print(f"simulator listening on {scheme}://{host}:{port}{base}", flush=True)
    log.info(
        "key %d bits, application ids %s",
        state.key.size_in_bits(),
        ", ".join(sorted(state.application_ids)),
    )
    await stop.wait()
    log.info("simulator stopping")
    server.stop()
    state.shutting_down.set()
    await asyncio.sleep(0.1)  # let slow (0091/0092) replies that were woken up go out
    try:
        await asyncio.wait_for(server.close_all_connections(), 5)
    except TimeoutError:
        log.warning("connections still open at shutdown")
    state.switch.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
