"""The simulator's RSA key: kept in its data folder so a restart keeps the key clients have
cached, and rotated on demand so tests can watch a client recover from a PIN-block error."""

from __future__ import annotations

import base64
import math
import os
from pathlib import Path

from Crypto.Cipher import PKCS1_v1_5
from Crypto.PublicKey import RSA
from Crypto.Util import number

from simulator.ebs.protocol import ipin_from_plain


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


def save_key(key: RSA.RsaKey, path: Path) -> None:
    """Write then rename, owner-only: a crash never leaves half a private key."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_key(format="PEM"))
    os.replace(tmp, path)


def load_or_create_key(path: Path, bits: int) -> RSA.RsaKey:
    if path.exists():
        return RSA.import_key(path.read_bytes())
    key = generate_key(bits)
    save_key(key, path)
    return key


class KeyState:
    """The current private key and where it is kept; every IPIN block is read with it."""

    def __init__(self, key: RSA.RsaKey, path: Path) -> None:
        self.key = key
        self.path = path

    @classmethod
    def load_or_create(cls, path: Path, bits: int) -> KeyState:
        return cls(load_or_create_key(path, bits), path)

    @property
    def bits(self) -> int:
        return int(self.key.size_in_bits())

    def public_key_value(self) -> str:
        return public_key_value(self.key)

    def rotate(self, bits: int) -> None:
        """A new key, saved: clients still holding the old one get 81 until they fetch it."""
        self.key = generate_key(bits)
        save_key(self.key, self.path)

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
        return ipin_from_plain(plain, request_uuid)
