"""The summary of a whole ``python -m bench`` run: one row per target of the benchmarks.

`build_summary` reads the reports the benchmarks of the run saved (proxy-list, autonomy,
failover, flowcontrol) and gives one row per target: the scenario, yurthub's figure, the
anchor's, the ratio or value, the target and the verdict. The targets and verdicts are the
benchmarks' own (their ``*_TARGET`` constants and reports), so the summary never judges
differently from the detailed tables above it. Under ``--quick`` every verdict is
``smoke``: the figures of a 60-second run are a check that everything runs, not a
measurement. A benchmark that could not measure leaves its rows ``not measured``.

`summary_table` prints the rows; the document goes into ``bench/results.json`` under
``"summary"``, with the date, the commit measured and the machine (nproc, and how much
CPU the hypervisor stole while the run lasted).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench import autonomy_report, failover_report, flowcontrol_report
from bench import report as proxy_report
from bench.autonomy_report import _grid

#: The benchmarks whose reports the summary reads, in the order they run.
SUMMARISED = ("proxy-list", "autonomy", "failover", "flowcontrol")

#: Verdict of every row of a ``--quick`` run.
SMOKE = "smoke"

#: Steal over a whole run (% of one core) above which its timed verdicts carry "(noisy)":
#: on a shared VM a row whose anchor lost most of a core to the hypervisor can pass or
#: fail a ratio by that alone (seen here: the online ratio 0.09 and 0.31 in two runs of
#: one commit, an hour apart).
NOISY_STEAL = 20.0

#: Rows whose figures are times or rates, which steal moves (not RSS, nor failed requests).
TIMED = frozenset({"online_list_rps", "offline_small_rps", "relay_events_per_second",
                   "restart_first_list_seconds", "flowcontrol_overhead"})
NOT_MEASURED = "not measured"


def _row(
    key: str,
    scenario: str,
    *,
    yurthub: float | None,
    anchor: float | None,
    anchor_is: str,
    value: float | None,
    unit: str,
    target: tuple[str, float] | None,
    verdict: str,
    note: str = "",
) -> dict[str, Any]:
    """One summary row. ``unit`` says what ``value`` is: ``ratio`` (yurthub / anchor,
    higher is better), ``times`` (yurthub's latency over the anchor's), ``MB``, ``s``,
    ``failed`` (a count) or ``fraction`` (an overhead); ``target`` is (``>=`` or ``<=``,
    number) or None when the row only informs."""
    return {
        "key": key,
        "scenario": scenario,
        "yurthub": yurthub,
        "anchor": anchor,
        "anchor_is": anchor_is,
        "value": value,
        "unit": unit,
        "target": None if target is None else {"op": target[0], "value": target[1]},
        "verdict": verdict,
        "note": note,
    }


def _notes(*parts: str) -> str:
    """The non-empty parts, as one note; a verdict's reason only when it says more than
    the verdict."""
    return "; ".join(p for p in parts if p and p not in ("below target", "above target"))


def _noise(rows: Sequence[Mapping[str, Any]]) -> str:
    """What other work and the hypervisor took during the timed runs behind a row, when it
    is enough to call the figures noisy (as the benchmark's own report does)."""
    worst = max(r["other_cpu_percent"] + r["steal_cpu_percent"] for r in rows)
    if worst <= proxy_report.NOISY_OTHER_CPU:
        return ""
    return f"noisy: other work and steal took up to {worst:.0f} % of a core meanwhile"


def _proxy_list_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = {row["key"]: row for row in report["rows"]}
    hub, anchor = rows["yurthub"], rows["nginx-proxy"]
    v = report["yurthub_vs_nginx_proxy"]
    connections = report["settings"]["connections"]
    return [
        _row(
            "online_list_rps",
            f"online proxied list, {report['request']['pods']} pods, {connections} connections: req/s",
            yurthub=hub["requests_per_second"],
            anchor=anchor["requests_per_second"],
            anchor_is="nginx as kubespray's apiserver proxy",
            value=v["ratio"],
            unit="ratio",
            target=(">=", proxy_report.TARGET_RATIO),
            verdict=v["verdict"],
            note=_notes(
                v["reason"],
                f"by CPU per request {v['nginx_proxy_cpu_us_per_request']:.0f} / "
                f"{v['yurthub_cpu_us_per_request']:.0f} us = {v['cpu_per_request_ratio']:.3f}",
                f"twisted.web serving the same bytes from memory reaches {v['floor_ratio']:.3f}"
                if "floor_ratio" in v
                else "",
                f"yurthub's HTTP parts relaying with none of its per-request work reach "
                f"{v['relay_floor_ratio']:.3f}"
                if "relay_floor_ratio" in v
                else "",
                _noise([hub, anchor]),
            ),
        )
    ]


def _autonomy_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = {entry["key"]: entry for entry in report["summary"]}
    offline = {row["key"]: row for row in report["offline_rows"]}
    wrk_rows = {
        "offline_small_rps": [offline["yurthub-small"], offline["nginx-small"]],
        "offline_bulk_p50_ms": [offline["yurthub-bulk"], offline["nginx-bulk"]],
        "offline_bulk_p99_ms": [offline["yurthub-bulk"], offline["nginx-bulk"]],
    }
    pods = report["settings"]["pods"]
    out = []
    for key, label, target in (
        ("offline_small_rps", "offline cached list, {small} pods: req/s",
         (">=", autonomy_report.SMALL_RATIO_TARGET)),
        ("relay_events_per_second", "watch relay, cache on: events/s",
         (">=", autonomy_report.RELAY_RATIO_TARGET)),
        ("offline_bulk_p50_ms", "offline list, {bulk} pods: p50 ms", None),
        ("offline_bulk_p99_ms", "offline list, {bulk} pods: p99 ms", None),
    ):  # fmt: skip
        e = entries[key]
        out.append(
            _row(
                key,
                label.format(small=pods["small"], bulk=f"{pods['bulk']:,}"),
                yurthub=e["yurthub"],
                anchor=e["anchor"],
                anchor_is=e["anchor_is"],
                value=e["ratio"],
                unit="ratio" if target else "times",
                target=target,
                verdict=e["verdict"],
                note=_notes(e["note"], _noise(wrk_rows[key]) if key in wrk_rows else ""),
            )
        )
    bulk = f"{pods['bulk']:,}"
    for key, label, unit, limit in (
        ("rss_after_caching_mb", f"RSS after caching {bulk} objects: MB", "MB",
         autonomy_report.RSS_TARGET_MB),
        ("restart_first_list_seconds", f"restart offline -> first {bulk}-object list served: s",
         "s", autonomy_report.RESTART_TARGET_S),
    ):  # fmt: skip
        e = entries[key]
        out.append(
            _row(
                key,
                label,
                yurthub=e["yurthub"],
                anchor=None,
                anchor_is="",
                value=e["yurthub"],
                unit=unit,
                target=("<=", limit),
                verdict=e["verdict"],
                note=e["note"],
            )
        )
    return out


def _failover_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = {row["key"]: row for row in report["rows"]}
    hub, nginx = rows.get("yurthub"), rows.get("nginx-stream")
    failed = report["verdicts"].get("failed", {})
    return [
        _row(
            "failover_failed_requests",
            "failover: failed requests while the preferred backend dies",
            yurthub=None if hub is None else hub["failed"],
            anchor=None if nginx is None else nginx["failed"],
            anchor_is="nginx stream (kubespray's nginx-proxy)",
            value=None if hub is None else hub["failed"],
            unit="failed",
            target=("<=", failover_report.FAILED_TARGET),
            verdict=failed.get("verdict", NOT_MEASURED),
            note="" if hub is None else f"of {hub['requests']:,} requests through yurthub",
        )
    ]


def _flowcontrol_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    s = report["limiter_overhead"]["summary"]
    return [
        _row(
            "flowcontrol_overhead",
            "flow-control overhead: CPU per request, limiter on vs off",
            yurthub=s["cpu_us_per_request"]["on"],
            anchor=s["cpu_us_per_request"]["off"],
            anchor_is="the same yurthub, limiter off (us/req)",
            value=s["overhead_by_cpu_per_request"],
            unit="fraction",
            target=("<=", flowcontrol_report.OVERHEAD_TARGET),
            verdict=s["verdict"],
            note=_notes(
                s["reason"],
                f"median of {len(s['rounds'])} paired rounds; the medians of each setting "
                f"give {100 * s['overhead_of_setting_medians_by_cpu_per_request']:+.1f} %",
            ),
        )
    ]


_ROWS_OF = {
    "proxy-list": _proxy_list_rows,
    "autonomy": _autonomy_rows,
    "failover": _failover_rows,
    "flowcontrol": _flowcontrol_rows,
}

#: What each benchmark's rows are called when it did not measure (so every row is there).
_SCENARIOS_OF = {
    "proxy-list": [("online_list_rps", "online proxied list, 100 pods: req/s")],
    "autonomy": [
        ("offline_small_rps", "offline cached list, 100 pods: req/s"),
        ("relay_events_per_second", "watch relay, cache on: events/s"),
        ("offline_bulk_p50_ms", "offline list, 10,000 pods: p50 ms"),
        ("offline_bulk_p99_ms", "offline list, 10,000 pods: p99 ms"),
        ("rss_after_caching_mb", "RSS after caching 10,000 objects: MB"),
        ("restart_first_list_seconds", "restart offline -> first 10,000-object list served: s"),
    ],
    "failover": [("failover_failed_requests", "failover: failed requests")],
    "flowcontrol": [("flowcontrol_overhead", "flow-control overhead")],
}


def build_summary(
    reports: Mapping[str, Mapping[str, Any] | None],
    *,
    quick: bool,
    elapsed_s: float,
    durations_s: Mapping[str, float],
    steal_percent: float | None,
) -> dict[str, Any]:
    """The summary document of a run. ``reports`` maps each benchmark of `SUMMARISED` to
    the report it saved in this run, or None when it did not measure."""
    rows: list[dict[str, Any]] = []
    measured: Mapping[str, Any] | None = None
    for name in SUMMARISED:
        report = reports.get(name)
        if report is None:
            rows.extend(
                _row(key, scenario, yurthub=None, anchor=None, anchor_is="", value=None,
                     unit="", target=None, verdict=NOT_MEASURED)
                for key, scenario in _SCENARIOS_OF[name]
            )  # fmt: skip
            continue
        measured = measured or report
        rows.extend(_ROWS_OF[name](report))
    if quick:
        for row in rows:
            if row["verdict"] != NOT_MEASURED:
                row["verdict"] = SMOKE
    elif steal_percent is not None and steal_percent > NOISY_STEAL:
        for row in rows:
            if row["key"] in TIMED and row["verdict"] in ("PASS", "FAIL"):
                row["verdict"] += " (noisy)"
    machine = dict(measured["machine"]) if measured else proxy_report.machine_info()
    machine["steal_percent_of_one_core"] = (
        None if steal_percent is None else round(steal_percent, 1)
    )
    return {
        "benchmark": "summary",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "yurthub_git": measured["yurthub_git"] if measured else proxy_report.git_state(),
        "machine": machine,
        "elapsed_s": round(elapsed_s, 1),
        "durations_s": {name: round(seconds, 1) for name, seconds in durations_s.items()},
        "rows": rows,
    }


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "failed":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def value_text(row: Mapping[str, Any]) -> str:
    """The row's ratio or value as printed (and on the chart)."""
    value, unit = row["value"], row["unit"]
    if value is None:
        return "-"
    if unit == "ratio":
        return f"{value:.3f}"
    if unit == "times":  # yurthub's latency over the anchor's
        return f"{1 / value:.1f}x faster" if 0 < value < 1 else f"{value:.1f}x slower"
    if unit == "fraction":
        return f"{100 * value:+.1f} %"
    if unit == "failed":
        return f"{value:,.0f} failed"
    return f"{_number(value, unit)} {unit}"


def target_text(row: Mapping[str, Any]) -> str:
    """The row's target as printed: ``>= 0.25``, ``<= 80 MB``, ``0 failed``, ``-``."""
    target = row["target"]
    if target is None:
        return "-"
    number, unit = target["value"], row["unit"]
    if unit == "failed":
        return f"{number:g} failed"
    if unit == "fraction":
        return f"{target['op']} {100 * number:g} %"
    suffix = f" {unit}" if unit in ("MB", "s") else ""
    return f"{target['op']} {number:g}{suffix}"


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a fixed-width table."""
    lines: list[tuple[str, ...]] = [
        ("scenario", "yurthub", "anchor", "anchor is", "ratio / value", "target", "verdict")
    ]
    for row in rows:
        lines.append((
            row["scenario"],
            _number(row["yurthub"], row["unit"]),
            _number(row["anchor"], row["unit"]),
            row["anchor_is"] or "-",
            value_text(row),
            target_text(row),
            row["verdict"],
        ))  # fmt: skip
    return _grid(lines, right={1, 2, 4})


def print_summary(summary: Mapping[str, Any], emit: Callable[[str], None] = print) -> None:
    """The table with the line that says what was measured, where and how."""
    m, git = summary["machine"], summary["yurthub_git"]
    steal = m.get("steal_percent_of_one_core")
    dirty = " (with local changes)" if git.get("yurthub_sources_modified") else ""
    emit("")
    emit(f"=== summary{' (--quick: a smoke run, no verdicts)' if summary['quick'] else ''} ===")
    emit(
        f"{summary['date']}, yurthub {git.get('commit') or '?'}{dirty}, nproc={m['nproc']} "
        f"({m['cpu']}), Python {m['python']}, Twisted {m['twisted']}"
        + (f", steal {steal:.0f} % of a core" if steal is not None else "")
        + (
            f" (over {NOISY_STEAL:g} %: timed verdicts are marked noisy; measure again when "
            "the machine is quieter)"
            if steal is not None and steal > NOISY_STEAL and not summary["quick"]
            else ""
        )
        + f"; {summary['elapsed_s']:.0f} s in all"
    )
    emit("")
    emit(summary_table(summary["rows"]))
    notes = [f"  {row['scenario']}: {row['note']}" for row in summary["rows"] if row["note"]]
    if notes:
        emit("")
        emit("\n".join(notes))
