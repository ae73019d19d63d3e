"""``bench/results.json``: the latest report of each benchmark, kept side by side.

The file is one JSON object keyed by benchmark name (``"proxy-list"``, ``"autonomy"``);
each value is that benchmark's whole report. A run replaces only its own entry, so
``python -m bench autonomy`` leaves the last proxy-list figures in place. A file in the
older single-report shape (one report with a top-level ``"benchmark"`` key) is kept as
that benchmark's entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_PATH = Path(__file__).resolve().parent / "results.json"


def load_results(path: Path) -> dict[str, Any]:
    """The reports in ``path`` by benchmark name; empty when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    if isinstance(data.get("benchmark"), str):
        return {data["benchmark"]: data}
    return {name: report for name, report in data.items() if isinstance(report, dict)}


def save_results(path: Path, report: dict[str, Any]) -> None:
    """Store ``report`` as the entry of ``report["benchmark"]``, keeping the others."""
    reports = load_results(path)
    reports[report["benchmark"]] = report
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(reports, indent=2) + "\n")
    temp.replace(path)
