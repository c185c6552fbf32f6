"""The EBS consumer protocol as the simulator reads it, stated here on its own.

Nothing is imported from the gateway (``gateways/ebs.py``): if both sides took the same
constants, a misreading would be shared and no test could catch it. This module is the
simulator's statement of the project's reading of EBS, checked against the client's over HTTP:

* every call is ``POST <base>/<endpoint>`` with a JSON object body (``application/json``);
* every reply is HTTP 200 JSON with ``responseCode`` (0 approved), ``responseMessage`` and
  ``responseStatus``; ``getTransactionStatus`` puts the transfer, with its own
  ``responseCode``, in ``originalTransaction``;
* the IPIN travels as base64 of RSA PKCS#1 v1.5 over ``UUID + IPIN``, with the key
  ``getPublicKey`` gives out as ``pubKeyValue`` (base64 DER SubjectPublicKeyInfo).

The not-found (25) and PIN-block (81) codes are not in the EBS documents we have: they are the
project's reading, to be checked against the EBS QA switch. Pure standard library, so tests can
import it without starting anything.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, tzinfo
from typing import Any

# -- endpoints ----------------------------------------------------------------------------

GET_PUBLIC_KEY = "getPublicKey"
IS_ALIVE = "isAlive"
GET_BALANCE = "getBalance"
DO_CARD_TRANSFER = "doCardTransfer"
GET_TRANSACTION_STATUS = "getTransactionStatus"

# -- request fields, spelt as EBS spells them ---------------------------------------------

APPLICATION_ID = "applicationId"
TRAN_DATE_TIME = "tranDateTime"  # 12 digits; the pattern and zone are configurable
UUID = "UUID"  # lowercase hyphenated UUID v4, new for every call
PAN = "PAN"  # 16 or 19 digits
IPIN = "IPIN"  # base64 of RSA PKCS#1 v1.5 over UUID + IPIN
EXP_DATE = "expDate"  # YYmm
TRAN_AMOUNT = "tranAmount"  # a JSON number
TRAN_CURRENCY_CODE = "tranCurrencyCode"  # "SDG"
TO_CARD = "toCard"  # 16 or 19 digits
ORIGINAL_TRAN_UUID = "originalTranUUID"  # getTransactionStatus: the transfer's UUID

KNOWN_FIELDS = (
    APPLICATION_ID,
    TRAN_DATE_TIME,
    UUID,
    PAN,
    IPIN,
    EXP_DATE,
    TRAN_AMOUNT,
    TRAN_CURRENCY_CODE,
    TO_CARD,
    ORIGINAL_TRAN_UUID,
)
_KNOWN_LOWER = {f.lower(): f for f in KNOWN_FIELDS}
COMMON = (APPLICATION_ID, TRAN_DATE_TIME, UUID)
CARD = (PAN, IPIN, EXP_DATE)
REQUIRED: dict[str, tuple[str, ...]] = {
    GET_PUBLIC_KEY: COMMON,
    IS_ALIVE: COMMON,
    GET_BALANCE: (*COMMON, *CARD),
    DO_CARD_TRANSFER: (*COMMON, *CARD, TRAN_AMOUNT, TRAN_CURRENCY_CODE, TO_CARD),
    GET_TRANSACTION_STATUS: (*COMMON, ORIGINAL_TRAN_UUID),
}
ENDPOINTS = tuple(REQUIRED)

CURRENCY = "SDG"
CONTENT_TYPE = "application/json"

# -- reply fields -------------------------------------------------------------------------

RESPONSE_CODE = "responseCode"
RESPONSE_MESSAGE = "responseMessage"
RESPONSE_STATUS = "responseStatus"
ORIGINAL_TRANSACTION = "originalTransaction"
PUB_KEY_VALUE = "pubKeyValue"  # base64 DER SubjectPublicKeyInfo, no PEM armour
REFERENCE_NUMBER = "referenceNumber"
APPROVAL_CODE = "approvalCode"
SUCCESSFUL = "Successful"
FAILED = "Failed"

# -- response codes -----------------------------------------------------------------------

APPROVED = 0
INVALID_AMOUNT = 13
NOT_FOUND = 25  # getTransactionStatus: no such original (ISO 8583 "unable to locate record")
FORMAT_ERROR = 30  # a field missing, misspelt or malformed
PIN_BLOCK_ERROR = 81  # the IPIN block does not decrypt (e.g. a stale key)
INVALID_APPLICATION_ID = 601
DUPLICATE_TRANSACTION = 613  # a reused UUID, on any endpoint
BAD_REQUEST = 400  # not EBS's: the simulator's answer to a body that is not a JSON object

MESSAGES: dict[int, str] = {
    APPROVED: "Approved",
    INVALID_AMOUNT: "Invalid amount",
    NOT_FOUND: "Transaction not found",
    FORMAT_ERROR: "Format error",
    PIN_BLOCK_ERROR: "PIN cryptographic error",
    INVALID_APPLICATION_ID: "Invalid application id",
    DUPLICATE_TRANSACTION: "DUPLICATE_TRANSACTION",
    BAD_REQUEST: "Bad request",
}

UUID4_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_PLAIN_IPIN_RE = re.compile(rb"^[0-9]{4,12}$")


def response_status(code: int) -> str:
    return SUCCESSFUL if code == APPROVED else FAILED


def is_json_content_type(header: str) -> bool:
    """``application/json``, with or without parameters such as ``charset``."""
    return header.split(";")[0].strip().lower() == CONTENT_TYPE


def missing_fields(endpoint: str, body: dict[str, Any]) -> list[str]:
    return [f for f in REQUIRED[endpoint] if f not in body]


def misspelt_fields(body: dict[str, Any]) -> list[str]:
    """Keys that are a known field in the wrong case (``uuid`` for ``UUID``)."""
    return sorted(k for k in body if k not in KNOWN_FIELDS and k.lower() in _KNOWN_LOWER)


def is_uuid4(value: object) -> bool:
    return isinstance(value, str) and bool(UUID4_RE.match(value))


def tran_date_time_ok(value: object, pattern: str, zone: tzinfo, max_skew: float) -> bool:
    """12 digits in ``pattern``, at most ``max_skew`` seconds from now in ``zone``."""
    if not (isinstance(value, str) and len(value) == 12 and value.isdigit()):
        return False
    try:
        when = datetime.strptime(value, pattern).replace(tzinfo=zone)
    except ValueError:
        return False
    return abs((datetime.now(zone) - when).total_seconds()) <= max_skew


def is_card_number(value: object) -> bool:
    return isinstance(value, str) and value.isdigit() and len(value) in (16, 19)


def is_exp_date(value: object) -> bool:
    return isinstance(value, str) and len(value) == 4 and value.isdigit()


def field_problem(endpoint: str, body: dict[str, Any]) -> str:
    """Type and format checks beyond presence; empty when the request is well formed."""
    required = REQUIRED[endpoint]
    for key in (PAN, TO_CARD):
        if key in required and not is_card_number(body.get(key)):
            return f"{key} must be a string of 16 or 19 digits"
    if EXP_DATE in required and not is_exp_date(body.get(EXP_DATE)):
        return f"{EXP_DATE} must be YYmm"
    if IPIN in required and not isinstance(body.get(IPIN), str):
        return f"{IPIN} must be a base64 string"
    if endpoint == DO_CARD_TRANSFER:
        amount = body.get(TRAN_AMOUNT)
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            return f"{TRAN_AMOUNT} must be a JSON number"
        if not math.isfinite(amount) or amount <= 0 or round(amount * 100) != amount * 100:
            return f"{TRAN_AMOUNT} must be positive with at most 2 decimals"
        if body.get(TRAN_CURRENCY_CODE) != CURRENCY:
            return f"{TRAN_CURRENCY_CODE} must be {CURRENCY}"
    if endpoint == GET_TRANSACTION_STATUS and not isinstance(body.get(ORIGINAL_TRAN_UUID), str):
        return f"{ORIGINAL_TRAN_UUID} must be a string"
    return ""


def ipin_from_plain(plain: bytes, request_uuid: str) -> str | None:
    """The IPIN in a decrypted block: exactly ``UUID`` then 4 to 12 digits, else None."""
    prefix = request_uuid.encode("ascii")
    if not plain.startswith(prefix) or not _PLAIN_IPIN_RE.match(plain[len(prefix) :]):
        return None
    return plain[len(prefix) :].decode("ascii")
