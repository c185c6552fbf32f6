"""Data at rest: nothing readable in the database, values bound to their place, rotation."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.crypto import DecryptionError, KeyRing, Sealed, aad
from tests.conftest import random_pan, unique_name
from tests.harness import PYTHON, ROOT, ServerProcess, auth, provider_body, register, remember


def leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def all_leaves(db: Any) -> list[Any]:
    return [
        leaf
        for name in db.list_collection_names()
        for doc in db[name].find()
        for leaf in leaves(doc)
    ]


def test_database_holds_no_clear_card_data_or_credentials(server: ServerProcess, db: Any) -> None:
    client = server.client()
    pan, ipin, exp = random_pan(length=19), "6283", "3107"
    body = provider_body(unique_name(), pan, ipin=ipin, exp=exp)
    creds = register(client, body)
    client.post(
        f"/cashout/generate/{body['name']}",
        json={"amount": 3, "id": "s1"},
        headers=auth(creds["api_key"]),
    )

    found = all_leaves(db)
    texts = [leaf for leaf in found if isinstance(leaf, str)]
    blobs = [bytes(leaf) for leaf in found if isinstance(leaf, bytes)]
    assert blobs, "sealed values are stored as binary"
    for secret in (
        pan,
        creds["api_key"],
        creds["webhook_secret"],
        creds["webhook_secret"].removeprefix("whsec_"),
    ):
        assert not any(secret in t for t in texts)
        assert not any(secret.encode() in b for b in blobs)
    assert ipin not in texts and exp not in texts
    assert not any(ipin.encode() in b or exp.encode() in b for b in blobs)
    doc = db.providers.find_one({"_id": body["name"]})
    assert doc["card"]["last4"] == pan[-4:]
    assert doc["key_hash"] == hashlib.sha256(creds["api_key"].encode()).hexdigest()
    assert {doc["card"][f]["kid"] for f in ("pan", "exp", "ipin")} == {"sandbox1"}


def test_sandbox_key_file_is_private(server: ServerProcess) -> None:
    path = Path(server.env["CASHOUT_DATA_DIR"]) / "keys"
    assert path.stat().st_mode & 0o777 == 0o600
    assert KeyRing.parse(path.read_text()).primary == "sandbox1"


def test_a_value_moved_to_another_place_does_not_decrypt(server: ServerProcess, db: Any) -> None:
    client = server.client()
    names, pans = [unique_name(), unique_name()], [random_pan(), random_pan()]
    for name, pan in zip(names, pans, strict=True):
        register(client, provider_body(name, pan))
    ring = KeyRing.parse((Path(server.env["CASHOUT_DATA_DIR"]) / "keys").read_text())
    docs = [db.providers.find_one({"_id": n}) for n in names]
    sealed_a = Sealed.from_doc(docs[0]["card"]["pan"])

    assert ring.open(sealed_a, aad("providers", names[0], "card.pan")) == pans[0]
    with pytest.raises(DecryptionError):  # copied into the other provider's document
        ring.open(sealed_a, aad("providers", names[1], "card.pan"))
    with pytest.raises(DecryptionError):  # copied into another field of the same document
        ring.open(sealed_a, aad("providers", names[0], "card.ipin"))
    flipped = Sealed(sealed_a.kid, sealed_a.nonce, bytes([sealed_a.ct[0] ^ 1]) + sealed_a.ct[1:])
    with pytest.raises(DecryptionError):
        ring.open(flipped, aad("providers", names[0], "card.pan"))

    # Copy A's sealed PAN over B's in the database: B's card no longer opens.
    db.providers.update_one({"_id": names[1]}, {"$set": {"card.pan": docs[0]["card"]["pan"]}})
    moved = Sealed.from_doc(db.providers.find_one({"_id": names[1]})["card"]["pan"])
    with pytest.raises(DecryptionError):
        ring.open(moved, aad("providers", names[1], "card.pan"))


def _key(kid: str) -> tuple[str, str]:
    return kid, base64.b64encode(os.urandom(32)).decode()


def _kids(db: Any) -> set[str]:
    kids: set[str] = set()
    for doc in db.providers.find():
        kids |= {doc["card"][f]["kid"] for f in ("pan", "exp", "ipin")}
        kids |= {s["secret"]["kid"] for s in doc["secrets"]}
    return kids


def test_key_rotation_keeps_every_value_readable(server_factory: Any, mongo: Any) -> None:
    (k1, v1), (k2, v2) = _key("old"), _key("new")
    remember(v1, v2)
    db_name = unique_name("rot").replace("-", "_")
    old = server_factory({"CASHOUT_KEYS": f"{k1}:{v1}"}, db_name=db_name)
    client = old.client()
    made: dict[str, tuple[str, dict[str, Any]]] = {}
    for _ in range(3):
        name, pan = unique_name(), random_pan()
        made[name] = (pan, register(client, provider_body(name, pan)))
    first = next(iter(made))
    client.post(
        f"/cashout/keys/{first}/rotate",
        json={"webhook_secret": True},
        headers=auth(made[first][1]["api_key"]),
    )
    old.stop()
    db = mongo[db_name]
    assert _kids(db) == {k1}

    ring = f"{k2}:{v2};{k1}:{v1}"
    new = server_factory({"CASHOUT_KEYS": ring}, db_name=db_name)
    late_name, late_pan = unique_name(), random_pan()
    late = register(new.client(), provider_body(late_name, late_pan))
    made[late_name] = (late_pan, late)
    assert _kids(db) == {k1, k2}, "new values are sealed by the first key, old ones stay"
    assert (
        new.client()
        .get(f"/cashout/profile/{first}", headers=auth(made[first][1]["api_key"]))
        .status_code
        == 200
    )

    env = {**new.env, "CASHOUT_KEYS": ring}
    result = subprocess.run(
        [PYTHON, "-m", "server", "admin", "rotate-keys"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-500:]
    # three old providers: 3 card fields and 1 secret each, plus the rotated-in secret
    assert "re-encrypted 13 values" in result.stdout
    assert v1 not in result.stdout + result.stderr and v2 not in result.stdout + result.stderr
    assert _kids(db) == {k2}

    only_new = KeyRing.parse(f"{k2}:{v2}")
    for name, (pan, creds) in made.items():
        doc = db.providers.find_one({"_id": name})
        assert (
            only_new.open(Sealed.from_doc(doc["card"]["pan"]), aad("providers", name, "card.pan"))
            == pan
        )
        opened = {
            only_new.open(
                Sealed.from_doc(s["secret"]), aad("providers", name, f"secrets.{s['sid']}")
            )
            for s in doc["secrets"]
        }
        assert creds["webhook_secret"] in opened
    again = subprocess.run(
        [PYTHON, "-m", "server", "admin", "rotate-keys"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "re-encrypted 0 values" in again.stdout
