"""The architecture's import rules, read from the source: gateways stay framework-free, one
module owns MongoDB, and the sandboxes stay apart from what they stand in for (the EBS
simulator keeps its own reading of the protocol; the bank is plain standard library)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_names(path: Path) -> set[str]:
    """Dotted names of the absolute imports: ``import a.b`` -> ``a.b``, ``from a import b``
    -> ``a.b`` (a module or a name in it; either way it comes from ``a``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imported(path: Path) -> set[str]:
    """Top-level packages imported."""
    return {name.split(".")[0] for name in imported_names(path)}


def within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def test_gateways_import_no_web_framework_database_server_or_simulator() -> None:
    """The mock gateway is the one exception: it runs on the sandbox bank, and only on it."""
    forbidden = {"tornado", "motor", "pymongo", "server", "handlers", "simulator"}
    allowed = {"mock.py": "simulator.bank"}
    bad = {}
    for p in (ROOT / "gateways").glob("*.py"):
        exception = allowed.get(p.name)
        hits = sorted(
            name
            for name in imported_names(p)
            if name.split(".")[0] in forbidden and not (exception and within(name, exception))
        )
        if hits:
            bad[str(p.relative_to(ROOT))] = hits
    assert not bad


def test_only_the_store_talks_to_mongodb() -> None:
    users = sorted(
        str(p.relative_to(ROOT))
        for folder in ("server", "handlers", "gateways")
        for p in (ROOT / folder).glob("*.py")
        if imported(p) & {"motor", "pymongo"}
    )
    assert users == ["server/store.py"]


def test_the_simulator_does_not_import_the_ebs_gateway() -> None:
    """The simulator checks the client's reading of EBS; sharing its constants would hide a
    misreading from every test."""
    users = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "simulator").rglob("*.py")
        if any(within(name, "gateways.ebs") for name in imported_names(p))
    )
    assert users == []


def test_the_bank_and_the_protocol_are_plain_python() -> None:
    """No web framework and no database driver but ``sqlite3``: the mock gateway can load the
    bank in any process, and tests can read the protocol without starting anything."""
    for path, allowed in (
        (ROOT / "simulator" / "bank.py", ("gateways.base",)),
        (ROOT / "simulator" / "ebs" / "protocol.py", ()),
    ):
        names = imported_names(path)
        assert not {name.split(".")[0] for name in names} & {"tornado", "motor", "pymongo", "bson"}
        others = sorted(
            name
            for name in names
            if name.split(".")[0] not in sys.stdlib_module_names
            and not any(within(name, module) for module in allowed)
        )
        assert others == [], path.relative_to(ROOT)
