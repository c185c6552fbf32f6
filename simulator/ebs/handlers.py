"""The EBS consumer API over HTTP: checks each request the way EBS would (``protocol``), moves
money in the bank, and answers in EBS's flat JSON; also the JSON-only base handler."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime
from typing import Any

import tornado.web

from simulator.bank import TransferRecord, approval_code_for, mask
from simulator.ebs.protocol import (
    APPLICATION_ID,
    APPROVAL_CODE,
    APPROVED,
    BAD_REQUEST,
    CONTENT_TYPE,
    CURRENCY,
    DO_CARD_TRANSFER,
    DUPLICATE_TRANSACTION,
    EXP_DATE,
    FAILED,
    FORMAT_ERROR,
    GET_BALANCE,
    GET_PUBLIC_KEY,
    INVALID_AMOUNT,
    INVALID_APPLICATION_ID,
    IPIN,
    IS_ALIVE,
    MESSAGES,
    NOT_FOUND,
    ORIGINAL_TRAN_UUID,
    ORIGINAL_TRANSACTION,
    PAN,
    PIN_BLOCK_ERROR,
    PUB_KEY_VALUE,
    REFERENCE_NUMBER,
    REQUIRED,
    RESPONSE_CODE,
    RESPONSE_MESSAGE,
    RESPONSE_STATUS,
    TO_CARD,
    TRAN_AMOUNT,
    TRAN_CURRENCY_CODE,
    TRAN_DATE_TIME,
    UUID,
    field_problem,
    is_json_content_type,
    is_uuid4,
    missing_fields,
    misspelt_fields,
    response_status,
)
from simulator.ebs.state import SimState

log = logging.getLogger(__name__)

# Fault injection by the receiving card's last four digits; none of them moves money.
FAULT_HTML = "0093"  # HTTP 200 with an HTML body
FAULT_CONTENT_TYPE = "0094"  # an approved-looking JSON body labelled text/html
FAULT_HTTP_500 = "0095"  # HTTP 500 with an approved-looking JSON body

NOT_FOUND_REPLY = {RESPONSE_CODE: 404, RESPONSE_MESSAGE: "Not found", RESPONSE_STATUS: FAILED}


class JsonHandler(tornado.web.RequestHandler):
    """JSON replies only, errors included."""

    state: SimState

    def initialize(self, state: SimState) -> None:
        self.state = state

    def send_json(self, payload: Any, status: int = 200, content_type: str = CONTENT_TYPE) -> None:
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(
            json.dumps(
                {
                    RESPONSE_CODE: status_code,
                    RESPONSE_MESSAGE: self._reason,
                    RESPONSE_STATUS: FAILED,
                }
            )
        )


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        self.send_json(NOT_FOUND_REPLY, 404)


class ConsumerHandler(JsonHandler):
    """``POST <base>/<endpoint>``: the EBS consumer API."""

    _closed = False

    def on_connection_close(self) -> None:
        self._closed = True

    def check_xsrf_cookie(self) -> None:
        """A machine API: no cookies, no XSRF."""

    async def post(self, endpoint: str) -> None:
        entry = self.state.record_request(endpoint)
        entry["content_type_ok"] = is_json_content_type(
            self.request.headers.get("Content-Type", "")
        )
        if endpoint not in REQUIRED:
            self._reply_raw(entry, 404, NOT_FOUND_REPLY)
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
                    RESPONSE_CODE: BAD_REQUEST,
                    RESPONSE_STATUS: FAILED,
                    RESPONSE_MESSAGE: "Bad request: the body must be a JSON object sent as"
                    " application/json",
                },
            )
            return
        await self._handle(endpoint, body, entry)

    async def _handle(self, endpoint: str, body: dict[str, Any], entry: dict[str, Any]) -> None:
        """The checks in the order the package docstring gives, then the endpoint's work."""
        state = self.state
        entry["fields"] = sorted(body)
        entry["missing"] = missing_fields(endpoint, body)
        entry["misspelt"] = misspelt_fields(body)
        entry["application_id_ok"] = body.get(APPLICATION_ID) in state.application_ids
        entry["tran_date_time"] = body.get(TRAN_DATE_TIME)
        entry["tran_date_time_ok"] = state.tran_date_time_ok(body.get(TRAN_DATE_TIME))
        request_uuid = body.get(UUID)
        entry["uuid"] = request_uuid if isinstance(request_uuid, str) else None
        entry["uuid_ok"] = is_uuid4(request_uuid)
        entry["ipin_block_ok"] = None
        entry["ipin_matches_account"] = None
        pan, to_card = body.get(PAN), body.get(TO_CARD)
        entry["pan"] = mask(pan) if isinstance(pan, str) else None
        entry["to_card"] = mask(to_card) if isinstance(to_card, str) else None
        entry["tran_amount"] = body.get(TRAN_AMOUNT)

        def fail(code: int, detail: str = "") -> None:
            entry["problem"] = detail
            message = MESSAGES.get(code, "Declined") + (f": {detail}" if detail else "")
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
            return fail(FORMAT_ERROR, TRAN_DATE_TIME)
        if not entry["uuid_ok"]:
            return fail(FORMAT_ERROR, f"{UUID} must be a lowercase hyphenated UUID v4")
        assert isinstance(request_uuid, str)
        problem = field_problem(endpoint, body)
        if problem:
            return fail(FORMAT_ERROR, problem)
        if state.uuid_used(request_uuid):
            return fail(DUPLICATE_TRANSACTION)
        ipin: str | None = None
        if IPIN in body:
            ipin = state.keys.decrypt_ipin(body[IPIN], request_uuid)
            entry["ipin_block_ok"] = ipin is not None
            if ipin is None:
                return fail(PIN_BLOCK_ERROR)
        amount = body.get(TRAN_AMOUNT)
        if endpoint == DO_CARD_TRANSFER and (
            not isinstance(amount, int | float) or amount != int(amount)
        ):
            # The bank keeps whole SDG; EBS itself takes 2 decimals.
            state.seen_uuids.add(request_uuid)
            return fail(INVALID_AMOUNT, "whole SDG only")
        state.seen_uuids.add(request_uuid)

        if endpoint == GET_PUBLIC_KEY:
            await self._late()
            self._reply(
                entry, body, APPROVED, "Approved", {PUB_KEY_VALUE: state.keys.public_key_value()}
            )
        elif endpoint == IS_ALIVE:
            self._reply(entry, body, APPROVED, "Approved")
        elif endpoint == GET_BALANCE:
            assert ipin is not None
            check = state.bank.verify_card(body[PAN], body[EXP_DATE], ipin)
            entry["ipin_matches_account"] = state.bank.ipin_matches(body[PAN], ipin)
            extra: dict[str, Any] = {}
            if check.ok:
                extra["balance"] = {
                    "available": check.balance,
                    "leger": check.balance,
                    "currency": CURRENCY,
                }
            self._reply(entry, body, check.code, check.message, extra)
        elif endpoint == DO_CARD_TRANSFER:
            assert ipin is not None
            await self._transfer(body, entry, ipin, request_uuid)
        else:
            self._status(body, entry)

    async def _late(self) -> None:
        """Wait ``--reply-delay`` before answering (cut short by shutdown)."""
        if self.state.reply_delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.state.shutting_down.wait(), self.state.reply_delay)

    async def _transfer(
        self, body: dict[str, Any], entry: dict[str, Any], ipin: str, request_uuid: str
    ) -> None:
        state = self.state
        to_card: str = body[TO_CARD]
        last4 = to_card[-4:]
        approved_look = {REFERENCE_NUMBER: "000000000000", APPROVAL_CODE: "000000"}
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
            payload = self._payload(body, APPROVED, "Approved", approved_look)
            self._reply_raw(entry, 200, payload, content_type="text/html")
            return
        if last4 == FAULT_HTTP_500:
            entry["fault"] = "http-500"
            self._reply_raw(entry, 500, self._payload(body, APPROVED, "Approved", approved_look))
            return
        reply = state.bank.transfer(
            request_uuid, body[PAN], body[EXP_DATE], ipin, to_card, int(body[TRAN_AMOUNT])
        )
        entry["ipin_matches_account"] = state.bank.ipin_matches(body[PAN], ipin)
        extra: dict[str, Any] = {}
        if reply.applied:
            extra = {
                REFERENCE_NUMBER: reply.reference,
                APPROVAL_CODE: approval_code_for(request_uuid),
                "tranFee": 0,
            }
        if reply.unanswered:
            # Magic 0091/0092: the client should time out; answer only if it did not.
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
        await self._late()
        if self._closed:  # the client went away (it died, say) while we took our time
            entry["http_status"] = None
            entry["response_code"] = None
            return
        self._reply(entry, body, reply.code, reply.message, extra)

    def _status(self, body: dict[str, Any], entry: dict[str, Any]) -> None:
        record = self.state.bank.status(str(body[ORIGINAL_TRAN_UUID]))
        if record is None:
            self._reply(entry, body, NOT_FOUND, MESSAGES[NOT_FOUND], {ORIGINAL_TRANSACTION: None})
            return
        self._reply(
            entry, body, APPROVED, "Approved", {ORIGINAL_TRANSACTION: self._original(record)}
        )

    def _original(self, record: TransferRecord) -> dict[str, Any]:
        """``originalTransaction``: the transfer as recorded, with its own response code."""
        original: dict[str, Any] = {
            UUID: record.tran_uuid,
            RESPONSE_CODE: record.code,
            RESPONSE_MESSAGE: record.message,
            RESPONSE_STATUS: response_status(record.code),
            PAN: mask(record.from_pan),
            TO_CARD: mask(record.to_pan),
            TRAN_AMOUNT: record.amount,
            TRAN_CURRENCY_CODE: CURRENCY,
            TRAN_DATE_TIME: datetime.fromisoformat(record.created_at)
            .astimezone(self.state.zone)
            .strftime(self.state.datetime_format),
        }
        if record.applied:
            original[REFERENCE_NUMBER] = record.reference
            original[APPROVAL_CODE] = approval_code_for(record.tran_uuid)
        return original

    # -- replies -------------------------------------------------------------------------

    def _payload(
        self, body: dict[str, Any], code: int, message: str, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """EBS's flat reply: the code, then the request's fields echoed (cards masked)."""
        payload: dict[str, Any] = {
            RESPONSE_CODE: code,
            RESPONSE_MESSAGE: message,
            RESPONSE_STATUS: response_status(code),
            UUID: body.get(UUID),
            TRAN_DATE_TIME: body.get(TRAN_DATE_TIME),
        }
        for key in (PAN, TO_CARD):
            if isinstance(body.get(key), str):
                payload[key] = mask(body[key])
        for key in (TRAN_AMOUNT, TRAN_CURRENCY_CODE, ORIGINAL_TRAN_UUID):
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
        content_type: str = CONTENT_TYPE,
    ) -> None:
        entry["http_status"] = status
        entry["response_code"] = payload.get(RESPONSE_CODE) if isinstance(payload, dict) else None
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
