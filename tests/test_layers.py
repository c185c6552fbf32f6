"""The architecture's import rules, read from the source (README "Layout"):

    handlers -> server (services, engine, views) -> server.store (MongoDB) and gateways

- gateways stay framework-free (no Tornado, no database, no server or handlers);
- only ``server/store/`` imports the MongoDB driver;
- handlers import nothing from the database layer and never reach the store object;
- the web application (``server/app.py``) is the only module that imports handlers, so the
  services, the engine and the admin tasks load no handler at all;
- the sandboxes stay apart from what they stand in for: the EBS simulator keeps its own
  reading of the protocol, and the sandbox bank is plain standard library.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "handlers", "gateways", "simulator")
DRIVERS = {"motor", "pymongo", "bson"}


def sources(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, dotted (``from a import b`` counts ``a`` and ``a.b``)."""
    names: set[str] = set()
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level and package:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in sources(*PACKAGES)}
    return {name: {i for i in imports(path) if i in modules} for name, path in modules.items()}


def reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def roots(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def test_gateways_import_no_web_framework_database_server_or_simulator() -> None:
    """The mock gateway is the one exception: it runs on the sandbox bank, and only on it."""
    forbidden = {"tornado", "server", "handlers", "simulator", *DRIVERS}
    allowed = {"mock.py": "simulator.bank"}
    bad = {}
    for p in sources("gateways"):
        exception = allowed.get(p.name)
        hits = sorted(
            name
            for name in imports(p)
            if name.split(".")[0] in forbidden and not (exception and within(name, exception))
        )
        if hits:
            bad[str(p.relative_to(ROOT))] = hits
    assert not bad


def test_only_the_store_package_talks_to_mongodb() -> None:
    users = {
        str(p.relative_to(ROOT))
        for p in sources(*PACKAGES)
        if roots(imports(p)) & DRIVERS and "server/store/" not in str(p)
    }
    assert not users
    assert any(roots(imports(p)) & DRIVERS for p in sources("server/store"))


def test_handlers_never_reach_the_database_layer() -> None:
    for path in sources("handlers"):
        found = {i for i in imports(path) if i.startswith("server.store") or i in DRIVERS}
        assert not found, f"{path.name} imports {sorted(found)}"
        assert "services.store" not in path.read_text(), f"{path.name} uses the store directly"


def test_only_the_web_application_imports_handlers() -> None:
    edges = graph()
    importers = {m for m, deps in edges.items() if roots(deps) & {"handlers"}}
    assert importers - {m for m in edges if m.startswith("handlers")} == {"server.app"}
    for module in ("server.services", "server.admin", "server.payouts", "server.webhooks"):
        assert not {m for m in reachable(module, edges) if m.startswith("handlers")}, module


def test_the_simulator_does_not_import_the_ebs_gateway() -> None:
    """The simulator checks the client's reading of EBS; sharing its constants would hide a
    misreading from every test."""
    users = sorted(
        str(p.relative_to(ROOT))
        for p in sources("simulator")
        if any(within(name, "gateways.ebs") for name in imports(p))
    )
    assert users == []


def test_the_bank_and_the_protocol_are_plain_python() -> None:
    """No web framework and no database driver but ``sqlite3``: the mock gateway can load the
    bank in any process, and tests can read the protocol without starting anything."""
    for path, allowed in (
        (ROOT / "simulator" / "bank.py", ("gateways.base",)),
        (ROOT / "simulator" / "ebs" / "protocol.py", ()),
    ):
        names = imports(path)
        assert not roots(names) & {"tornado", *DRIVERS}
        others = sorted(
            name
            for name in names
            if name.split(".")[0] not in sys.stdlib_module_names
            and not any(within(name, module) for module in allowed)
        )
        assert others == [], path.relative_to(ROOT)


def test_every_handler_but_the_json_ones_checks_the_xsrf_token() -> None:
    """Safe by default: Tornado's XSRF check stays on in ``BaseHandler``; only JSON API
    handlers (bearer keys, ``application/json`` bodies) switch it off."""
    from tornado.web import RequestHandler

    from handlers.base import ApiHandler, BaseHandler
    from server.app import routes

    assert BaseHandler.check_xsrf_cookie is RequestHandler.check_xsrf_cookie
    for template, handler in routes():
        if not issubclass(handler, ApiHandler):
            assert handler.check_xsrf_cookie is RequestHandler.check_xsrf_cookie, template
    assert any(not issubclass(h, ApiHandler) for _, h in routes())  # the claim page
