"""The architecture's import rules, read from the source: gateways stay framework-free and
one module owns MongoDB."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_gateways_import_no_web_framework_database_or_server() -> None:
    bad = {
        str(p.relative_to(ROOT)): sorted(
            imported(p) & {"tornado", "motor", "pymongo", "server", "handlers"}
        )
        for p in (ROOT / "gateways").glob("*.py")
    }
    assert not {k: v for k, v in bad.items() if v}


def test_only_the_store_talks_to_mongodb() -> None:
    users = sorted(
        str(p.relative_to(ROOT))
        for folder in ("server", "handlers", "gateways")
        for p in (ROOT / folder).glob("*.py")
        if imported(p) & {"motor", "pymongo"}
    )
    assert users == ["server/store.py"]
