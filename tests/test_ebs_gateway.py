"""The ``ebs`` gateway against the EBS simulator, both real: the simulator runs as its own
process (``python -m simulator.ebs``) and they talk HTTP on a local port."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from gateways.base import Card, GatewayHost, Outcome, TransferRequest, TransferResult
from gateways.ebs import EbsGateway, EbsOptions
from server.http_client import TornadoHttpClient
from simulator.bank import FUNDED_BALANCE
from simulator.ebs.protocol import REQUIRED
from tests.cards import luhn_card
from tests.harness import Simulator

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
SLOW_SECONDS = 3.0
REQUEST_TIMEOUT = 1.0
# Every card number a test hands to the simulator, to check none leaks into its log.
USED_PANS: set[str] = set()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def card(last4: str = "1111", ipin: str = "1234", exp: str = "3012") -> Card:
    pan = luhn_card(last4)
    USED_PANS.add(pan)
    return Card(pan, exp, ipin)


def to_card(last4: str) -> str:
    pan = luhn_card(last4)
    USED_PANS.add(pan)
    return pan


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    base = tmp_path_factory.mktemp("ebs-sim")
    simulator = Simulator(
        base / "data",
        base / "simulator.log",
        "--key-bits",
        "1024",
        "--slow-seconds",
        str(SLOW_SECONDS),
    ).start()
    yield simulator
    assert simulator.stop() == 0, "the simulator stops cleanly on SIGTERM"
    log_text = simulator.log_path.read_text()
    assert "Traceback" not in log_text
    leaked = [pan[-4:] for pan in USED_PANS if pan in log_text]
    assert not leaked, f"card numbers in the simulator log (last 4: {leaked})"


@dataclass(frozen=True)
class Config:
    """The gateway's own options and what the host gives it, as the server builds them."""

    options: EbsOptions
    host: GatewayHost


def config(
    sim: Simulator, environment: str = "sandbox", http: Any = "new", **overrides: Any
) -> Config:
    values: dict[str, Any] = {
        "url": sim.url,
        "application_id": "ACTSCon",
        "connect_timeout": 2.0,
        "request_timeout": REQUEST_TIMEOUT,
    }
    values.update(overrides)
    client = TornadoHttpClient() if http == "new" else http
    return Config(EbsOptions(**values), GatewayHost(environment, http=client))


def make(cfg: Config) -> EbsGateway:
    return EbsGateway.create(cfg.options, cfg.host)


async def with_gateway(cfg: Config, *steps: Any) -> list[Any]:
    """Run ``steps`` (functions of the gateway returning awaitables) on one gateway, in order."""
    gw = make(cfg)
    try:
        return [await step(gw) for step in steps]
    finally:
        await gw.close()


def transfer_req(payer: Card, to_pan: str, amount: int = 100) -> TransferRequest:
    return TransferRequest(str(uuid.uuid4()), payer, to_pan, amount)


def assert_safe(result: TransferResult, *pans: str, ipin: str = "") -> None:
    text = json.dumps(dict(result.raw))
    for pan in pans:
        assert pan not in text
    assert "IPIN" not in text and "expDate" not in text
    if ipin:
        assert f'"{ipin}"' not in text


# -- happy path and declines -----------------------------------------------------------


def test_is_alive(sim: Simulator) -> None:
    assert run(with_gateway(config(sim), lambda g: g.is_alive())) == [True]


def test_approved_transfer_moves_money(sim: Simulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    payer, to_pan = card(), to_card("4321")
    req = transfer_req(payer, to_pan, 250)
    result, status = run(
        with_gateway(config(sim), lambda g: g.transfer(req), lambda g: g.status(req.tran_uuid))
    )
    assert (result.outcome, result.code, result.message) == (Outcome.APPROVED, 0, "Approved")
    assert (status.outcome, status.code) == (Outcome.APPROVED, 0)
    assert result.reference and result.reference == status.reference
    assert_safe(result, payer.pan, to_pan, ipin=payer.ipin)
    assert_safe(status, payer.pan, to_pan)
    assert result.raw["toCard"] == "****4321"
    with sim.ledger() as ledger:
        assert ledger.balance(to_pan) == 250
        assert ledger.balance(payer.pan) == FUNDED_BALANCE - 250
        assert ledger.applied_count(req.tran_uuid) == 1
    assert payer.pan not in caplog.text and to_pan not in caplog.text
    # The transfer went out under the engine's UUID, with exactly EBS's field names.
    [sent] = [r for r in sim.requests_for(req.tran_uuid) if r["endpoint"] == "doCardTransfer"]
    assert set(sent["fields"]) == set(REQUIRED["doCardTransfer"])
    assert sent["ipin_block_ok"] and sent["ipin_matches_account"] and sent["tran_date_time_ok"]
    assert sent["tran_amount"] == 250 and sent["to_card"] == "****4321"


@pytest.mark.parametrize(
    ("last4", "code", "fixable"),
    [("0051", 51, False), ("0052", 52, True), ("0053", 53, False), ("0072", 72, True)],
)
def test_declines(sim: Simulator, last4: str, code: int, fixable: bool) -> None:
    payer, to_pan = card(), to_card(last4)
    req = transfer_req(payer, to_pan)
    result, status = run(
        with_gateway(config(sim), lambda g: g.transfer(req), lambda g: g.status(req.tran_uuid))
    )
    assert (result.outcome, result.code, result.customer_fixable) == (
        Outcome.DECLINED,
        code,
        fixable,
    )
    assert result.message
    assert (status.outcome, status.code) == (Outcome.DECLINED, code)
    with sim.ledger() as ledger:
        assert ledger.balance(to_pan) is None
        assert ledger.applied_count(req.tran_uuid) == 0


def test_wrong_ipin_on_a_known_card_is_53(sim: Simulator) -> None:
    payer, to_pan = card(), to_card("4321")
    wrong = Card(payer.pan, payer.exp_date, "9876")
    req = transfer_req(wrong, to_pan)
    verify, result = run(
        with_gateway(config(sim), lambda g: g.verify_card(payer), lambda g: g.transfer(req))
    )
    assert verify.ok
    assert (result.outcome, result.code) == (Outcome.DECLINED, 53)
    [sent] = [r for r in sim.requests_for(req.tran_uuid) if r["endpoint"] == "doCardTransfer"]
    assert sent["ipin_block_ok"] is True and sent["ipin_matches_account"] is False


def test_verify_card(sim: Simulator) -> None:
    payer = card()
    good, wrong, expired = run(
        with_gateway(
            config(sim),
            lambda g: g.verify_card(payer),
            lambda g: g.verify_card(Card(payer.pan, payer.exp_date, "0000")),
            lambda g: g.verify_card(card(exp="2001")),
        )
    )
    assert (good.ok, good.code) == (True, 0)
    assert (wrong.ok, wrong.code) == (False, 53)
    assert (expired.ok, expired.code) == (False, 54)


# -- unknown outcomes ------------------------------------------------------------------


def test_timeout_after_apply_settles_approved(sim: Simulator) -> None:
    payer, to_pan = card(), to_card("0091")
    req = transfer_req(payer, to_pan, 91)

    async def timed(g: EbsGateway) -> tuple[TransferResult, float]:
        started = time.monotonic()
        result = await g.transfer(req)
        return result, time.monotonic() - started

    (result, elapsed), status = run(
        with_gateway(config(sim), timed, lambda g: g.status(req.tran_uuid))
    )
    assert (result.outcome, result.code) == (Outcome.UNKNOWN, None)
    assert "Timeout" in result.message
    assert REQUEST_TIMEOUT * 0.9 <= elapsed < SLOW_SECONDS
    assert (status.outcome, status.code) == (Outcome.APPROVED, 0)
    with sim.ledger() as ledger:
        assert ledger.balance(to_pan) == 91
        assert ledger.applied_count(req.tran_uuid) == 1


def test_timeout_without_apply_settles_not_found(sim: Simulator) -> None:
    payer, to_pan = card(), to_card("0092")
    req = transfer_req(payer, to_pan, 92)
    result, status = run(
        with_gateway(config(sim), lambda g: g.transfer(req), lambda g: g.status(req.tran_uuid))
    )
    assert (result.outcome, result.code) == (Outcome.UNKNOWN, None)
    assert (status.outcome, status.code) == (Outcome.NOT_FOUND, None)
    with sim.ledger() as ledger:
        assert ledger.balance(to_pan) is None
        assert ledger.status(req.tran_uuid) is None


@pytest.mark.parametrize(
    ("last4", "problem"),
    [("0093", "is not JSON"), ("0094", "Content-Type 'text/html'"), ("0095", "HTTP 500")],
)
def test_unclear_replies_are_unknown(sim: Simulator, last4: str, problem: str) -> None:
    payer, to_pan = card(), to_card(last4)
    req = transfer_req(payer, to_pan)
    result, status = run(
        with_gateway(config(sim), lambda g: g.transfer(req), lambda g: g.status(req.tran_uuid))
    )
    assert (result.outcome, result.code) == (Outcome.UNKNOWN, None)
    assert problem in result.message
    assert status.outcome is Outcome.NOT_FOUND
    with sim.ledger() as ledger:
        assert ledger.balance(to_pan) is None


def test_unreachable_switch_is_unknown(sim: Simulator) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config(
        sim,
        url=f"http://127.0.0.1:{port}/consumer/",
        public_key=sim.get("/_sim/public-key")["pubKeyValue"],
    )
    payer = card()
    req = transfer_req(payer, to_card("4321"))
    result, status, verify, alive = run(
        with_gateway(
            cfg,
            lambda g: g.transfer(req),
            lambda g: g.status(req.tran_uuid),
            lambda g: g.verify_card(payer),
            lambda g: g.is_alive(),
        )
    )
    assert result.outcome is Outcome.UNKNOWN and result.code is None
    assert status.outcome is Outcome.UNKNOWN
    assert verify.ok is False and verify.code is None and "could not verify" in verify.message
    assert alive is False
    # Without a configured key nothing can even be encrypted: still unknown, never a decline.
    [no_key] = run(with_gateway(config(sim, url=cfg.options.url), lambda g: g.transfer(req)))
    assert no_key.outcome is Outcome.UNKNOWN and "public key unavailable" in no_key.message


def test_reused_uuid_is_613_and_left_to_status(sim: Simulator) -> None:
    payer, to_pan = card(), to_card("4321")
    req = transfer_req(payer, to_pan, 61)
    first, second, status = run(
        with_gateway(
            config(sim),
            lambda g: g.transfer(req),
            lambda g: g.transfer(req),
            lambda g: g.status(req.tran_uuid),
        )
    )
    assert first.outcome is Outcome.APPROVED
    assert (second.outcome, second.code) == (Outcome.UNKNOWN, 613)
    assert "DUPLICATE_TRANSACTION" in second.message
    assert status.outcome is Outcome.APPROVED
    with sim.ledger() as ledger:
        assert ledger.balance(to_pan) == 61
        assert ledger.applied_count(req.tran_uuid) == 1


# -- protocol details ------------------------------------------------------------------


def test_unknown_application_id_is_601(sim: Simulator) -> None:
    payer = card()
    req = transfer_req(payer, to_card("4321"))
    result, verify, alive = run(
        with_gateway(
            config(sim, application_id="NOT-US"),
            lambda g: g.transfer(req),
            lambda g: g.verify_card(payer),
            lambda g: g.is_alive(),
        )
    )
    assert (result.outcome, result.code) == (Outcome.DECLINED, 601)
    assert (verify.ok, verify.code) == (False, 601)
    assert alive is False


def test_tran_date_time_in_the_wrong_zone_is_rejected(sim: Simulator) -> None:
    payer = card()
    cfg = config(
        sim,
        timezone="Pacific/Kiritimati",
        public_key=sim.get("/_sim/public-key")["pubKeyValue"],
    )
    req = transfer_req(payer, to_card("4321"))
    [result] = run(with_gateway(cfg, lambda g: g.transfer(req)))
    assert (result.outcome, result.code) == (Outcome.DECLINED, 30)
    [sent] = sim.requests_for(req.tran_uuid)
    assert sent["tran_date_time_ok"] is False


def test_public_key_fetched_once_when_not_configured(sim: Simulator) -> None:
    payer = card()
    reqs = [transfer_req(payer, to_card("4321")) for _ in range(3)]
    before = sum(r["endpoint"] == "getPublicKey" for r in sim.requests())
    results = run(with_gateway(config(sim), *[(lambda g, r=r: g.transfer(r)) for r in reqs]))
    assert all(r.outcome is Outcome.APPROVED for r in results)
    after = sum(r["endpoint"] == "getPublicKey" for r in sim.requests())
    assert after - before == 1, "the key is cached"


def test_configured_key_is_used_without_fetching(sim: Simulator) -> None:
    key = sim.get("/_sim/public-key")["pubKeyValue"]
    payer = card()
    req = transfer_req(payer, to_card("4321"))
    before = sum(r["endpoint"] == "getPublicKey" for r in sim.requests())
    [result] = run(with_gateway(config(sim, public_key=key), lambda g: g.transfer(req)))
    assert result.outcome is Outcome.APPROVED
    assert sum(r["endpoint"] == "getPublicKey" for r in sim.requests()) == before


def test_key_change_refetches_once_and_resends(sim: Simulator) -> None:
    """After the switch's key changes, a PIN-block error makes the gateway fetch the new key
    (a 512-bit one, like EBS's QA key) and resend under the same UUID."""
    old_key = sim.get("/_sim/public-key")["pubKeyValue"]
    payer = card()
    first, second = transfer_req(payer, to_card("4321")), transfer_req(payer, to_card("4321"))
    stale = transfer_req(payer, to_card("4321"))

    async def scenario() -> list[Any]:
        gw = make(config(sim))
        stale_gw = make(config(sim, public_key=old_key))
        try:
            a = await gw.transfer(first)
            rotated = await asyncio.to_thread(sim.post, "/_sim/rotate-key", bits="512")
            b = await gw.transfer(second)
            c = await stale_gw.transfer(stale)
            return [a, rotated, b, c]
        finally:
            await gw.close()
            await stale_gw.close()

    try:
        a, rotated, b, c = run(scenario())
        assert rotated["bits"] == 512
        assert a.outcome is Outcome.APPROVED
        assert b.outcome is Outcome.APPROVED
        sent = [r for r in sim.requests_for(second.tran_uuid)]
        assert [(r["ipin_block_ok"], r["response_code"]) for r in sent] == [(False, 81), (True, 0)]
        # A configured key is the operator's: no fetching behind their back.
        assert (c.outcome, c.code) == (Outcome.DECLINED, 81)
    finally:
        sim.post("/_sim/rotate-key", bits="1024")


def test_production_refuses_plain_http(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="http"):
        make(config(sim, environment="production"))
    https = "https://ebs.example/consumer/"
    with pytest.raises(ValueError, match="ca_file"):
        make(config(sim, environment="production", url=https))
    make(config(sim, environment="production", url=https, ca_file=__file__))  # a readable file
    with pytest.raises(ValueError):
        make(config(sim, url=None))
    with pytest.raises(ValueError):
        make(config(sim, application_id=None))
    with pytest.raises(ValueError):
        make(config(sim, public_key="not a key"))
    with pytest.raises(ValueError, match="HTTP client"):
        make(config(sim, http=None))


def test_restart_keeps_key_and_ledger(tmp_path: Path) -> None:
    """The simulator's key and ledger live in its data dir; SIGINT stops it cleanly."""
    first = Simulator(tmp_path / "d", tmp_path / "sim.log", "--key-bits", "1024").start()
    try:
        key = first.get("/_sim/public-key")["pubKeyValue"]
        payer, to_pan = card(), to_card("4321")
        req = transfer_req(payer, to_pan, 7)
        [result] = run(with_gateway(config(first), lambda g: g.transfer(req)))
        assert result.outcome is Outcome.APPROVED
    finally:
        assert first.stop(signal.SIGINT) == 0
    second = Simulator(tmp_path / "d", tmp_path / "sim.log", "--key-bits", "1024").start()
    try:
        assert second.get("/_sim/public-key")["pubKeyValue"] == key
        assert second.get("/_sim/ledger", pan=to_pan)["balance"] == 7
        [status] = run(with_gateway(config(second), lambda g: g.status(req.tran_uuid)))
        assert status.outcome is Outcome.APPROVED
    finally:
        assert second.stop() == 0
    assert to_pan not in (tmp_path / "sim.log").read_text()


def _make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    key, csr, pem, ext = (directory / n for n in ("srv.key", "srv.csr", "srv.pem", "srv.ext"))
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    commands = [
        [
            "openssl",
            "req",
            "-x509",
            *ec,
            "-keyout",
            ca_key,
            "-out",
            ca_pem,
            "-days",
            "2",
            "-subj",
            "/CN=cashout test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca_pem,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            pem,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
    ]
    for command in commands:
        subprocess.run([str(c) for c in command], check=True, capture_output=True, timeout=30)
    return ca_pem, pem, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_is_verified_against_the_configured_ca(tmp_path: Path) -> None:
    ca_pem, cert, key = _make_tls_files(tmp_path)
    tls = Simulator(
        tmp_path / "d",
        tmp_path / "sim.log",
        "--key-bits",
        "1024",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    ).start()
    try:
        assert tls.url.startswith("https://127.0.0.1:")
        payer = card()
        req = transfer_req(payer, to_card("4321"))
        trusted = config(tls, ca_file=str(ca_pem), environment="production")
        alive, result = run(
            with_gateway(trusted, lambda g: g.is_alive(), lambda g: g.transfer(req))
        )
        assert alive is True and result.outcome is Outcome.APPROVED
        # Without our CA the certificate is not trusted: no answer, never a silent bypass.
        other = transfer_req(payer, to_card("4321"))
        alive, result = run(
            with_gateway(config(tls), lambda g: g.is_alive(), lambda g: g.transfer(other))
        )
        assert alive is False and result.outcome is Outcome.UNKNOWN
        assert "SSL" in result.message or "certificate" in result.message.lower()
    finally:
        assert tls.stop() == 0


# -- what went over the wire -----------------------------------------------------------


def test_every_request_matches_ebs_md(sim: Simulator) -> None:
    """A full round of calls, then the simulator's own record of what it received."""
    httpx.delete(sim.origin + "/_sim/requests", timeout=10)
    payer = card()
    wrong = Card(payer.pan, payer.exp_date, "4444")
    approved = transfer_req(payer, to_card("4321"), 12)
    declined = transfer_req(payer, to_card("0052"), 13)
    wrong_ipin = transfer_req(wrong, to_card("4321"), 14)
    run(
        with_gateway(
            config(sim),
            lambda g: g.is_alive(),
            lambda g: g.verify_card(payer),
            lambda g: g.verify_card(wrong),
            lambda g: g.transfer(approved),
            lambda g: g.transfer(declined),
            lambda g: g.transfer(wrong_ipin),
            lambda g: g.status(approved.tran_uuid),
            lambda g: g.status(str(uuid.uuid4())),
        )
    )
    log = sim.requests()
    assert [r["endpoint"] for r in log] == [
        "isAlive",
        "getPublicKey",
        "getBalance",
        "getBalance",
        "doCardTransfer",
        "doCardTransfer",
        "doCardTransfer",
        "getTransactionStatus",
        "getTransactionStatus",
    ]
    uuids = [r["uuid"] for r in log]
    assert len(set(uuids)) == len(uuids), "a fresh UUID for every request"
    for r in log:
        assert r["content_type_ok"] and r["application_id_ok"]
        assert set(r["fields"]) == set(REQUIRED[r["endpoint"]]), r["endpoint"]
        assert r["missing"] == [] and r["misspelt"] == []
        assert r["uuid_ok"] and r["tran_date_time_ok"]
        assert len(r["tran_date_time"]) == 12 and r["tran_date_time"].isdigit()
        assert r["http_status"] == 200
        if "IPIN" in r["fields"]:
            assert r["ipin_block_ok"] is True, "the block decrypted to exactly UUID + IPIN"
            assert r["pan"] == "****" + payer.pan[-4:]
        else:
            assert r["ipin_block_ok"] is None
    with_ipin = [r for r in log if r["ipin_block_ok"]]
    # The right IPIN: the account's, except where the test sent a wrong one on purpose.
    assert [r["ipin_matches_account"] for r in with_ipin] == [True, False, True, True, False]
    assert [r["response_code"] for r in log] == [0, 0, 0, 53, 0, 52, 53, 0, 25]
    assert payer.pan not in json.dumps(log)
