"""Luhn-valid test card numbers that keep the magic last four digits of docs/DESIGN.md section 8.

The check digit cannot be the last digit when the last four are fixed, so one digit just
before them (position ``length - 5``) is chosen to make the whole number pass Luhn.
"""

from __future__ import annotations

import itertools
import secrets

from gateways.base import luhn_ok

_serials = itertools.count(1)


def luhn_card(
    last4: str = "1234",
    serial: int | None = None,
    *,
    prefix: str = "922200",
    length: int = 16,
) -> str:
    """A ``length``-digit Luhn-valid PAN ending in ``last4``.

    ``serial`` fills the middle so tests get distinct cards with the same ending; when None a
    process-unique counter plus randomness is used, so two calls never collide in practice.
    """
    if len(last4) != 4 or not last4.isdigit():
        raise ValueError("last4 must be four digits")
    if length not in (16, 19):
        raise ValueError("EBS cards have 16 or 19 digits")
    middle_len = length - len(prefix) - 4 - 1
    if middle_len < 1 or not prefix.isdigit():
        raise ValueError("prefix must be digits and leave room for a serial")
    if serial is None:
        serial = next(_serials) * 1000 + secrets.randbelow(1000)
    middle = f"{serial % 10**middle_len:0{middle_len}d}"
    for check in "0123456789":
        pan = prefix + middle + check + last4
        if luhn_ok(pan):
            return pan
    raise AssertionError("unreachable: one check digit always fits")  # pragma: no cover


def bad_luhn(pan: str) -> str:
    """The same number with one middle digit changed so the Luhn check fails."""
    i = len(pan) - 6
    return pan[:i] + str((int(pan[i]) + 1) % 10) + pan[i + 1 :]
