"""The README's quickstart, run as written (only the port differs) against a real server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, remember, wait_until


def quickstart_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    section = section.split("### ", 1)[0]  # the ebs-mode variant needs the simulator
    return re.findall(r"```sh\n(.*?)```", section, re.S)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_quickstart_works_verbatim(server_factory: Any, tmp_path: Path) -> None:
    server = server_factory()
    remember("4111111111111111", "5555555555554444")
    blocks = quickstart_blocks()
    assert len(blocks) == 2
    script = "set -euo pipefail\n" + "\n".join(blocks)
    script = script.replace("localhost:8080", f"127.0.0.1:{server.port}")
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-500:]
    registered = json.loads((tmp_path / "register.json").read_text())
    remember(registered["api_key"], registered["webhook_secret"])
    assert registered["result"] == "ok"
    claim = json.loads((tmp_path / "claim.json").read_text())
    assert claim["result"] == claim["uuid"]
    assert claim["url"] == f"http://127.0.0.1:{server.port}/cashout/claim/shifa/{claim['uuid']}"
    assert result.stdout.count(f'"uuid":"{claim["uuid"]}"') >= 3
    assert '"status":"processing"' in result.stdout

    def paid() -> bool:
        got = subprocess.run(
            [
                "curl",
                "-s",
                f"http://127.0.0.1:{server.port}/cashout/claims/shifa/{claim['uuid']}",
                "-H",
                f"Authorization: Bearer {registered['api_key']}",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return json.loads(got.stdout)["status"] == "succeeded"

    wait_until(paid, 20, what="the quickstart claim to be paid")


def test_every_setting_is_in_the_readme_table() -> None:
    from server.settings import all_options

    table = (ROOT / "README.md").read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    missing = [o.name for o in all_options() if f"`{o.env}`" not in table]
    assert len(all_options()) > 35  # the service's settings and the gateways' options
    assert not missing, f"settings missing from the README's table: {missing}"
