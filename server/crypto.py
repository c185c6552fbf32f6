"""Encryption of card data and secrets at rest (AES-256-GCM), and the hashes of API keys.

Each sealed value carries the id of the key that sealed it, so a ring of keys can be rotated
without a flag day. The associated data names the document and field a value belongs to: a
ciphertext copied into another document or field no longer decrypts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from Crypto.Cipher import AES

KEY_BYTES = 32
NONCE_BYTES = 12
_KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class DecryptionError(Exception):
    """A sealed value that is tampered with, misplaced, or sealed by an unknown key."""


@dataclass(frozen=True)
class Sealed:
    """A ciphertext as stored: key id, nonce and ciphertext with its 16-byte tag."""

    kid: str
    nonce: bytes
    ct: bytes

    def to_doc(self) -> dict[str, Any]:
        return {"kid": self.kid, "n": self.nonce, "ct": self.ct}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Sealed:
        try:
            return cls(str(doc["kid"]), bytes(doc["n"]), bytes(doc["ct"]))
        except (KeyError, TypeError) as exc:
            raise DecryptionError("not a sealed value") from exc


def aad(collection: str, doc_id: str, field: str) -> bytes:
    """Associated data binding a value to where it is stored."""
    return f"cashout/v1/{collection}/{doc_id}/{field}".encode()


class KeyRing:
    """Data-encryption keys: the first seals, every one opens."""

    def __init__(self, keys: list[tuple[str, bytes]]):
        if not keys:
            raise ValueError("the key ring is empty")
        self._keys = dict(keys)
        if len(self._keys) != len(keys):
            raise ValueError("the key ring names one key id twice")
        self.primary = keys[0][0]

    def __repr__(self) -> str:  # never the key bytes
        return f"KeyRing(primary={self.primary!r}, kids={list(self._keys)!r})"

    @property
    def kids(self) -> list[str]:
        return list(self._keys)

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """Parse ``kid:base64key[;kid:base64key...]`` (newlines also separate entries)."""
        entries = [e.strip() for e in re.split(r"[;\n]", text) if e.strip()]
        keys: list[tuple[str, bytes]] = []
        for number, entry in enumerate(entries, 1):
            kid, sep, b64 = entry.partition(":")
            if not sep or not _KID.match(kid):
                raise ValueError(
                    f"entry {number} must look like kid:base64key (kid of letters, digits, _ or -)"
                )
            try:
                key = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"key {kid!r} is not valid base64") from None
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {kid!r} must be {KEY_BYTES} bytes, not {len(key)}")
            keys.append((kid, key))
        return cls(keys)

    @staticmethod
    def new_entry(kid: str | None = None) -> str:
        """A fresh ``kid:base64key`` line for a key ring."""
        kid = kid or "k" + secrets.token_hex(4)
        return f"{kid}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"

    def derive(self, label: str) -> bytes:
        """A key for another purpose (e.g. naming cards), derived from the first key, so the
        ring's keys themselves are only ever used to encrypt."""
        return hmac.new(self._keys[self.primary], label.encode(), hashlib.sha256).digest()

    def seal(self, plaintext: str, associated: bytes) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        cipher = AES.new(self._keys[self.primary], AES.MODE_GCM, nonce=nonce)
        cipher.update(associated)
        ct, tag = cipher.encrypt_and_digest(plaintext.encode())
        return Sealed(self.primary, nonce, ct + tag)

    def open(self, sealed: Sealed, associated: bytes) -> str:
        key = self._keys.get(sealed.kid)
        if key is None:
            raise DecryptionError(f"sealed with key {sealed.kid!r}, which is not in the ring")
        if len(sealed.ct) < 16 or len(sealed.nonce) != NONCE_BYTES:
            raise DecryptionError("malformed sealed value")
        cipher = AES.new(key, AES.MODE_GCM, nonce=sealed.nonce)
        cipher.update(associated)
        try:
            return cipher.decrypt_and_verify(sealed.ct[:-16], sealed.ct[-16:]).decode()
        except ValueError:
            raise DecryptionError("sealed value failed authentication") from None


def load_or_create_key_file(data_dir: str) -> KeyRing:
    """The sandbox key ring: ``<data_dir>/keys``, created with mode 0600 on first run."""
    path = Path(data_dir) / "keys"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(KeyRing.new_entry("sandbox1") + "\n")
    return KeyRing.parse(path.read_text())


def hash_api_key(api_key: str) -> str:
    """API keys are 256-bit random tokens, so a plain SHA-256 is a safe lookup hash."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_api_key(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    """Standard Webhooks format: ``whsec_`` + base64 of the raw HMAC key."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


class CardNamer:
    """Names a card by a keyed HMAC of its number, so counters and limits can be kept per
    card, across providers, without ever storing the number in clear (or a plain hash of
    it, which the small space of card numbers would make easy to reverse)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:  # never the key
        return "CardNamer()"

    @classmethod
    def for_settings(cls, configured: str | None, keys: KeyRing) -> CardNamer:
        if configured:
            return cls(base64.b64decode(configured))
        return cls(keys.derive("cashout/v1/card-names"))

    def name(self, pan: str) -> str:
        return hmac.new(self._key, pan.encode(), hashlib.sha256).hexdigest()[:32]


def key_id(key_hash: str) -> str:
    """A public name for an API key (in audit entries and the profile), from its hash: the
    provider can tell its keys apart, and nothing about the key itself is revealed."""
    return "key_" + key_hash[:12]
