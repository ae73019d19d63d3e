"""The chart of a run's summary: one PNG, each scenario next to its anchor and its target.

Two panels of horizontal bars, so that every bar reads the same way as its neighbours:

- **against the anchor** (higher is better): yurthub's figure over the anchor's, 1 being
  as good as the anchor (requests or events per second; for the latency rows the
  anchor's latency over yurthub's, so "0.5" means twice as slow), with the target of the
  row drawn as a black tick;
- **against the limit** (lower is better): the measured value over its limit, 1 being
  exactly at the limit (RSS, restart time, flow-control overhead; a bar stops at -0.5, as a
  negative overhead is noise). Failed requests
  during failover have a limit of 0: no failure draws no bar, any failure a bar to the
  edge of the panel.

Each bar carries the figure and the verdict as text; green passes, red fails, grey has no
verdict (a row without target, or every row of a ``--quick`` smoke run). matplotlib is
imported here only, with its Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.summary import target_text, value_text

_COLOURS = {"PASS": "#2e7d32", "FAIL": "#c62828"}
_NO_VERDICT = "#9e9e9e"
#: Bars of the limit panel stop here on the left (their text gives the real figure).
_FLOOR = -0.5


def _against_anchor(row: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(bar, target) of a row of the first panel, as a fraction of the anchor."""
    value = row["value"]
    if value is None:
        return None, None
    if row["unit"] == "times":
        return (1 / value if value else None), None
    return value, row["target"]["value"] if row["target"] else None


def _against_limit(row: Mapping[str, Any], edge: float) -> float | None:
    """The bar of a row of the second panel, as a fraction of its limit."""
    value, limit = row["value"], row["target"]["value"] if row["target"] else None
    if value is None:
        return None
    if not limit:
        return edge if value > 0 else 0.0
    return value / limit


def _label(row: Mapping[str, Any]) -> str:
    if row["target"] is None:
        return f"{value_text(row)}  |  no target"
    return f"{value_text(row)}  |  target {target_text(row)}  |  {row['verdict']}"


def draw_chart(summary: Mapping[str, Any], path: Path) -> Path:
    """Write the chart of ``summary`` (see `bench.summary.build_summary`) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: Sequence[Mapping[str, Any]] = summary["rows"]
    upper = [r for r in rows if r["unit"] in ("ratio", "times")]
    lower = [r for r in rows if r["unit"] not in ("ratio", "times", "")]
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(10, 1.2 + 0.55 * (len(upper) + len(lower)) + 1.4),
        gridspec_kw={"height_ratios": [max(1, len(upper)), max(1, len(lower))]},
    )

    def colour(row: Mapping[str, Any]) -> str:
        return _COLOURS.get(row["verdict"].removesuffix(" (noisy)"), _NO_VERDICT)

    # Against the anchor.
    bars = [_against_anchor(r) for r in upper]
    positions = list(range(len(upper)))[::-1]
    widths = [b or 0.0 for b, _ in bars]
    top.barh(positions, widths, color=[colour(r) for r in upper], height=0.6)
    for y, row, (bar, target) in zip(positions, upper, bars, strict=True):
        if target is not None:
            top.plot([target, target], [y - 0.4, y + 0.4], color="black", linewidth=2)
        top.text(max(bar or 0.0, target or 0.0) + 0.02, y, _label(row), va="center", fontsize=8)
    top.axvline(1.0, color="black", linestyle=":", linewidth=1)
    top.set_yticks(positions, [r["scenario"] for r in upper], fontsize=8)
    top.set_xlim(0, max([1.6, *(w + 0.9 for w in widths)]))
    top.set_xlabel("yurthub / anchor (latency rows: anchor's / yurthub's); 1 = as good as the "
                   "anchor, black tick = target; higher is better", fontsize=8)  # fmt: skip
    top.set_title("against the anchor", fontsize=10, loc="left")

    # Against the limit.
    edge = max([1.5, *(abs(r["value"]) / r["target"]["value"] + 0.2 for r in lower
                       if r["value"] is not None and r["target"] and r["target"]["value"])])  # fmt: skip
    fractions = [_against_limit(r, edge) for r in lower]
    positions = list(range(len(lower)))[::-1]
    # Far below the limit (a negative overhead is noise) reads the same as a little below.
    widths = [max(f or 0.0, _FLOOR) for f in fractions]
    bottom.barh(positions, widths, color=[colour(r) for r in lower], height=0.6)
    for y, row, width in zip(positions, lower, widths, strict=True):
        bottom.text(max(width, 1.0) + 0.04, y, _label(row), va="center", fontsize=8)
    bottom.axvline(1.0, color="black", linewidth=2)
    bottom.axvline(0.0, color="black", linewidth=0.5)
    bottom.set_yticks(positions, [r["scenario"] for r in lower], fontsize=8)
    bottom.set_xlim(min([0.0, *widths]) - 0.1, edge + 2.0)
    bottom.set_xlabel("measured / limit; 1 = at the limit (black line); lower is better",
                      fontsize=8)  # fmt: skip
    bottom.set_title("against the limit", fontsize=10, loc="left")

    git, machine = summary["yurthub_git"], summary["machine"]
    kind = "--quick smoke run, no verdicts" if summary["quick"] else "full run"
    fig.suptitle(
        f"yurthub benchmarks ({kind}): {summary['date'][:10]}, yurthub {git.get('commit') or '?'}, "
        f"nproc={machine['nproc']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
