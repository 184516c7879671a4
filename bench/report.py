"""One scenario run's report: figures, ratios and checks, written as JSON and a Markdown table.

The JSON holds everything (machine, settings, every figure); the Markdown is what a person reads and what
the README quotes. Both go to ``bench/results/<scenario>.{json,md}`` (the latest run; older ones are in git).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flashsale.bench.machine import describe, git_commit

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The first columns of a table of load levels (hot-sku, baseline).
LOAD_COLUMNS = ["clients", "attempts", "successes", "attempts/s", "p50 ms", "p99 ms"]


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Report:
    scenario: str
    settings: dict[str, Any]
    started_at: float = field(default_factory=time.time)
    figures: dict[str, Any] = field(default_factory=dict)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    servers: dict[str, str] = field(default_factory=dict)
    command: str = ""

    def ratio(
        self,
        name: str,
        numerator: float,
        denominator: float,
        target: str | None = None,
        met: bool | None = None,
    ) -> float:
        value = numerator / denominator if denominator else 0.0
        self.ratios.append({"name": name, "value": round(value, 3), "target": target, "met": met})
        return value

    def check(self, name: str, passed: bool, detail: str = "") -> None:
        self.checks.append({"name": name, "passed": bool(passed), "detail": detail})
        print(f"check {'PASS' if passed else 'FAIL'}: {name} {detail}", file=sys.stderr)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables.append(Table(title, columns, rows))

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    def write(self, results_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
        results_dir.mkdir(parents=True, exist_ok=True)
        finished = time.time()
        data = {
            "scenario": self.scenario,
            "command": self.command,
            "started_at": _iso(self.started_at),
            "duration_s": round(finished - self.started_at, 1),
            "git_commit": git_commit(),
            "machine": describe(self.servers),
            "settings": self.settings,
            "ratios": self.ratios,
            "checks": self.checks,
            "passed": self.passed,
            "figures": self.figures,
            "notes": self.notes,
            "plots": self.plots,
        }
        json_path = results_dir / f"{self.scenario}.json"
        json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
        md_path = results_dir / f"{self.scenario}.md"
        md_path.write_text(self._markdown(data))
        return json_path, md_path

    def _markdown(self, data: dict[str, Any]) -> str:
        m = data["machine"]
        lines = [
            f"# bench: {self.scenario}",
            "",
            f"{data['started_at']} · {m['cpu_model']}, {m['cores']} cores (load {m['load_average']}) · "
            f"Python {m['python']}, redis-py {m['redis_py']}, "
            + ", ".join(f"{k} {v}" for k, v in m["servers"].items())
            + f" · commit {data['git_commit']}",
            "",
            f"Command: `{data['command']}` ({data['duration_s']} s)",
            "",
            "Shared, noisy machine: the ratios, measured side by side in this one run, are the headline.",
            "",
        ]
        if self.ratios:
            lines += ["| ratio | value | target |", "|---|---:|---|"]
            for r in self.ratios:
                target = r["target"] or ""
                if r["met"] is not None:
                    target += " ✅" if r["met"] else " ❌ (missed)"
                lines.append(f"| {r['name']} | {r['value']:.2f} | {target} |")
            lines.append("")
        for t in self.tables:
            lines += [
                f"### {t.title}",
                "",
                "| " + " | ".join(t.columns) + " |",
                "|" + "|".join("---" if i == 0 else "---:" for i in range(len(t.columns))) + "|",
            ]
            lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in t.rows]
            lines.append("")
        if self.checks:
            lines += ["### Checks", ""]
            lines += [f"- {'✅' if c['passed'] else '❌'} {c['name']}: {c['detail']}" for c in self.checks]
            lines.append("")
        if self.plots:
            lines += ["### Plots", ""] + [f"![{p}]({p})" for p in self.plots] + [""]
        if self.notes:
            lines += ["### Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
