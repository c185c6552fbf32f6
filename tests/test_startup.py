"""`python -m server` itself: the embedded database's lifecycle and settings validation."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import random_pan, unique_name
from tests.harness import PYTHON, ROOT, ServerProcess, provider_body, register, wait_until


def embedded_pids(data_dir: Path) -> list[int]:
    """Processes running secantusd-py on this data directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if (
            state != "Z"
            and any(b"secantusd-py" in part for part in cmdline)
            and str(data_dir / "db").encode() in cmdline
        ):
            pids.append(int(entry.name))
    return pids


@pytest.fixture()
def embedded(tmp_path: Path, log_dir: Path) -> Any:
    procs: list[ServerProcess] = []

    def start() -> ServerProcess:
        env = {"CASHOUT_DATA_DIR": str(tmp_path)}
        env_clean = {k: v for k, v in os.environ.items() if k != "CASHOUT_MONGODB_URI"}
        proc = ServerProcess(log_dir, env, name="embedded")
        proc.env = {**env_clean, **proc.env}
        procs.append(proc)
        return proc.start(timeout=60)

    yield start, tmp_path
    for proc in procs:
        proc.kill()


def test_embedded_database_starts_stops_and_keeps_data(embedded: Any) -> None:
    start, data_dir = embedded
    first = start()
    assert "database embedded" in first.log()
    name = unique_name()
    register(first.client(), provider_body(name, random_pan()))
    assert len(embedded_pids(data_dir)) == 1

    assert first.stop(signal.SIGTERM) == 0
    assert embedded_pids(data_dir) == [], "the embedded database outlived the server"
    assert not (data_dir / "db.port").exists()

    second = start()
    again = second.client().post("/cashout/register", json=provider_body(name, random_pan()))
    assert again.status_code == 409, "data was kept across the restart"

    second.kill()  # no chance to clean up: the child must still go
    wait_until(lambda: embedded_pids(data_dir) == [], 30, what="the orphaned database to exit")
    third = start()
    assert third.client().get("/readyz").json()["database"] is True
    assert third.stop(signal.SIGINT) == 0
    assert embedded_pids(data_dir) == []


def run_server(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CASHOUT_")}
    return subprocess.run(
        [PYTHON, "-m", "server", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_unsafe_settings_one_line_each() -> None:
    result = run_server(
        env={"CASHOUT_ENV": "production", "CASHOUT_PUBLIC_URL": "http://localhost:8080"}
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    for needle in ("CASHOUT_KEYS", "CASHOUT_PUBLIC_URL", "CASHOUT_MONGODB_URI", "CASHOUT_GATEWAY"):
        assert sum(needle in line for line in lines) == 1, needle
    assert all(line.startswith("cashout: ") for line in lines)


def test_production_ebs_needs_https_and_a_ca(tmp_path: Path) -> None:
    result = run_server(
        env={
            "CASHOUT_ENV": "production",
            "CASHOUT_PUBLIC_URL": "https://pay.example.com",
            "CASHOUT_MONGODB_URI": "mongodb://db.example.com/",
            "CASHOUT_GATEWAY": "ebs",
            "CASHOUT_KEYS": "k1:" + "A" * 43 + "=",
            "CASHOUT_EBS_URL": "http://ebs.example.com/",
            "CASHOUT_EBS_APPLICATION_ID": "ACTSCon",
        }
    )
    assert result.returncode == 2
    assert "CASHOUT_EBS_URL: must be https in production" in result.stderr
    assert "CASHOUT_EBS_CA_FILE" in result.stderr
    assert "CASHOUT_KEYS" not in result.stderr


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CASHOUT_PORT": "eighty"}, "CASHOUT_PORT"),
        ({"CASHOUT_ENV": "staging"}, "CASHOUT_ENV"),
        ({"CASHOUT_KEYS": "k1:short"}, "CASHOUT_KEYS"),
        ({"CASHOUT_GATEWAY": "ebs"}, "CASHOUT_EBS_URL"),
        ({"CASHOUT_PUBLIC_URL": "pay.example.com"}, "CASHOUT_PUBLIC_URL"),
        ({"CASHOUT_MAX_CLAIM_AMOUNT": "0"}, "CASHOUT_MAX_CLAIM_AMOUNT"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], needle: str) -> None:
    result = run_server(env=env)
    assert result.returncode == 2 and needle in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_win_over_the_environment() -> None:
    result = run_server("--port", "eighty", env={"CASHOUT_PORT": "8080"})
    assert result.returncode == 2 and "--port" in result.stderr


def test_an_unknown_gateway_is_a_clear_start_up_error(tmp_path: Path) -> None:
    result = run_server(
        env={"CASHOUT_GATEWAY": "nowhere.module:Thing", "CASHOUT_DATA_DIR": str(tmp_path)}
    )
    assert result.returncode == 2 and "CASHOUT_GATEWAY" in result.stderr
    assert "Traceback" not in result.stderr
    assert embedded_pids(tmp_path) == []


def test_the_leak_check_would_catch_a_leak(tmp_path: Path) -> None:
    """The log scan is only worth something if it fails on a real leak."""
    from tests.conftest import assert_no_leaks
    from tests.harness import remember

    pan, key = random_pan(), "ck_test_" + "Z" * 43
    remember(pan, key, "9157")
    leaky = tmp_path / "leaky.log"
    for text in (f"card {pan}", f"key={key}", "ipin 9157 sent"):
        leaky.write_text(text)
        with pytest.raises(AssertionError):
            assert_no_leaks([leaky])
    leaky.write_text(f"card ****{pan[-4:]} at 12:09:15.157 port 39157")
    assert_no_leaks([leaky])
