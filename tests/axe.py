"""axe-core in a Playwright page: the accessibility rules (WCAG 2.x A/AA and best practices)
a browser test runs on every state of a page.

axe-core is installed by ``scripts/install-axe`` (pinned, from npm, into ``.cache/``). It is
evaluated through the DevTools protocol, so the pages' Content-Security-Policy stays on.

    from tests.axe import AXE, check_accessibility
    results = check_accessibility(page, "en form", artifacts)  # fails on serious/critical
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / ".cache" / "axe-core" / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = ("critical", "serious")

_RUN = """async () => {
  const results = await axe.run(document, {resultTypes: ["violations"]});
  return {
    version: axe.version,
    violations: results.violations.map((v) => ({
      id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
      nodes: v.nodes.map((n) => ({target: n.target, summary: n.failureSummary})),
    })),
  };
}"""


@dataclass
class AxeResults:
    version: str
    violations: list[dict[str, Any]] = field(default_factory=list)

    def by_impact(self) -> dict[str, list[dict[str, Any]]]:
        """Violations grouped by impact: ``critical``, ``serious``, ``moderate``, ``minor``."""
        grouped: dict[str, list[dict[str, Any]]] = {}
        for violation in self.violations:
            grouped.setdefault(violation["impact"] or "unknown", []).append(violation)
        return grouped

    def blocking(self) -> list[dict[str, Any]]:
        return [v for v in self.violations if v["impact"] in BLOCKING]

    def summary(self, violations: list[dict[str, Any]] | None = None) -> str:
        return "; ".join(
            f"{v['impact']} {v['id']} ({v['help']}) at "
            + ", ".join(" ".join(n["target"]) for n in v["nodes"][:3])
            for v in (self.violations if violations is None else violations)
        )


def run_axe(page: Page) -> AxeResults:
    """Inject axe-core into ``page`` (once per document) and run every rule on it."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text() + "\n;undefined")
    raw = page.evaluate(_RUN)
    return AxeResults(raw["version"], raw["violations"])


def check_accessibility(page: Page, label: str, out: Path | None = None) -> AxeResults:
    """Run axe on ``page``; keep every violation in ``out`` (``axe-<label>.json``) and fail on
    those of serious or critical impact."""
    results = run_axe(page)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        name = "axe-" + "".join(c if c.isalnum() else "-" for c in label) + ".json"
        (out / name).write_text(json.dumps(results.violations, indent=1, ensure_ascii=False))
    blocking = results.blocking()
    assert not blocking, f"axe {results.version} on {label}: {results.summary(blocking)}"
    return results
