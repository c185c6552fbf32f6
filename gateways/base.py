"""The gateway interface: request/response dataclasses and the plugin loader."""

from __future__ import annotations

import enum
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


class Outcome(enum.StrEnum):
    """What a switch said about money movement.

    UNKNOWN is never a decline: the money may or may not have moved, so the engine keeps the
    claim in processing and asks ``status`` later. NOT_FOUND only comes from ``status``: the
    switch has no record of the transaction, so nothing moved.
    """

    APPROVED = "approved"
    DECLINED = "declined"
    UNKNOWN = "unknown"
    NOT_FOUND = "not_found"


# Response codes caused by the receiving card: the customer may retry with another card.
CUSTOMER_FIXABLE_CODES = frozenset({52, 72})


def mask_pan(pan: str) -> str:
    """The only form of a card number that may be shown or logged."""
    return "****" + pan[-4:] if len(pan) >= 4 else "****"


def luhn_ok(number: str) -> bool:
    """The check digit every real switch verifies before routing a card."""
    if not number.isascii() or not number.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True)
class Card:
    """A paying card. ``repr`` is masked so a stray log line cannot leak it."""

    pan: str
    exp_date: str  # YYmm
    ipin: str

    def __repr__(self) -> str:
        return f"Card({mask_pan(self.pan)})"

    __str__ = __repr__


@dataclass(frozen=True)
class TransferRequest:
    """One transfer attempt. ``tran_uuid`` is fresh per attempt and persisted by the engine
    before ``transfer`` is called, so ``status(tran_uuid)`` can always settle it."""

    tran_uuid: str
    from_card: Card
    to_pan: str
    amount: int  # whole SDG
    currency: str = "SDG"
    # Asked the moment before the transfer is sent (and before any resend): whether the host
    # still allows a send to start (it may have lost its claim on this attempt meanwhile).
    # False: send nothing and answer UNKNOWN; the host settles the attempt with ``status``.
    may_send: Callable[[], bool] = field(default=lambda: True, compare=False)

    def __repr__(self) -> str:
        return (
            f"TransferRequest({self.tran_uuid}, {self.from_card!r} -> {mask_pan(self.to_pan)},"
            f" {self.amount} {self.currency})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class TransferResult:
    """The answer to ``transfer`` or ``status``.

    ``code`` is the switch's response code (0 approved) or None when there was no clear
    answer. ``raw`` is the switch's reply with card numbers masked and IPIN blocks removed,
    safe to store and show to the provider.
    """

    outcome: Outcome
    tran_uuid: str
    code: int | None = None
    message: str = ""
    reference: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def customer_fixable(self) -> bool:
        return self.outcome is Outcome.DECLINED and self.code in CUSTOMER_FIXABLE_CODES


def not_sent(request: TransferRequest) -> TransferResult:
    """The answer when the host withdrew its permission to send: nothing left here."""
    return TransferResult(
        Outcome.UNKNOWN,
        request.tran_uuid,
        None,
        "not sent: this process no longer holds the attempt",
        raw={"sent": False},
    )


@dataclass(frozen=True)
class VerifyResult:
    """Whether a card, its expiry and IPIN are good, checked with the switch."""

    ok: bool
    code: int | None = None
    message: str = ""


@dataclass(frozen=True)
class HttpReply:
    """One HTTP exchange as a value; ``status`` None means no reply came at all."""

    status: int | None
    content_type: str = ""
    body: bytes = b""
    problem: str = ""  # why there was no reply, e.g. a timeout or a TLS failure


class HttpClient(Protocol):
    """The host's HTTP client. Gateways post through it, so they import no web framework
    and the host decides how connections are made."""

    async def post_json(
        self,
        url: str,
        body: bytes,
        *,
        connect_timeout: float,
        request_timeout: float,
        ca_file: str | None,
    ) -> HttpReply: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class GatewayHost:
    """What the server gives every gateway besides its own options: the mode it runs in,
    where it may keep files, and the host's HTTP client (so gateways import no framework)."""

    environment: str = "sandbox"  # sandbox | production
    data_dir: str = "./var"
    http: HttpClient | None = field(default=None, compare=False)  # owned by the gateway

    @property
    def production(self) -> bool:
        return self.environment == "production"


Problems = list[tuple[str, str]]  # (option name, what is wrong with it)


@dataclass(frozen=True)
class NoOptions:
    """A gateway without settings of its own."""

    def problems(self, production: bool) -> Problems:
        return []


class Gateway(ABC):
    """A card switch. Every method returns a value; only programming errors raise."""

    name: ClassVar[str] = "gateway"
    # The gateway's own settings: a frozen dataclass whose fields (default, and help in
    # ``metadata["help"]``) the server reads from CASHOUT_<NAME>_<FIELD>; its
    # ``problems(production)`` method checks them.
    Options: ClassVar[type[Any]] = NoOptions
    sandbox_only: ClassVar[bool] = False  # moves no real money: production refuses it

    @classmethod
    def create(cls, options: Any, host: GatewayHost) -> Gateway:
        """A gateway from checked options."""
        return cls()

    @classmethod
    def option_problems(cls, options: Any, production: bool) -> Problems:
        check = getattr(options, "problems", None)
        return list(check(production)) if check is not None else []

    @classmethod
    def settle_grace(cls, options: Any) -> float:
        """Seconds after an attempt started during which a transfer sent for it may still
        show up at the switch: until then "no such transaction" is not believed."""
        return 60.0

    @abstractmethod
    async def transfer(self, request: TransferRequest) -> TransferResult:
        """Move money once. Must be safe to follow with ``status(request.tran_uuid)``."""

    @abstractmethod
    async def status(self, tran_uuid: str) -> TransferResult:
        """What became of an earlier transfer: APPROVED, DECLINED, NOT_FOUND or UNKNOWN."""

    async def verify_card(self, card: Card) -> VerifyResult | None:
        """Check a paying card with the switch; None when this gateway cannot."""
        return None

    async def is_alive(self) -> bool | None:
        """Liveness of the switch; None when this gateway cannot tell."""
        return None

    async def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release connections and files."""


BUILTIN_GATEWAYS = {
    "mock": "gateways.mock:MockGateway",
    "ebs": "gateways.ebs:EbsGateway",
}


def load_gateway_class(spec: str) -> type[Gateway]:
    """Resolve ``mock``, ``ebs`` or ``package.module:Class`` to a Gateway subclass."""
    target = BUILTIN_GATEWAYS.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"gateway {spec!r} is not 'mock', 'ebs' or 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"gateway {spec!r}: cannot import {module_name}: {exc}") from exc
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not issubclass(cls, Gateway):
        raise ValueError(f"gateway {spec!r}: {attr} is not a Gateway subclass")
    return cls


def create_gateway(spec: str, options: Any, host: GatewayHost) -> Gateway:
    cls = load_gateway_class(spec)
    return cls.create(options if options is not None else cls.Options(), host)
