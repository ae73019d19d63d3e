"""The results of a failover run: the figures of each proxy, the verdicts, the printed
table and the JSON document.

`analyse` turns one proxy's raw records (the load client's success times, failures and
watch histories, the moments the preferred cloud stopped and started, the clouds' request
counts by User-Agent at each boundary) into its row. The verdicts concern yurthub only:
no failed request, and its watches open again on the other cloud within
``intervalSeconds`` + 1 s of the stop. A verdict never changes the exit status.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bench.autonomy_report import _grid, _grouped_log
from bench.loadclient import REQUEST_HEADERS, WATCH_AGENT
from bench.report import machine_info

if TYPE_CHECKING:
    from bench.failover import Settings

#: yurthub must fail no request.
FAILED_TARGET = 0
#: Beyond the probe period, how long yurthub may take to move its watches.
MOVE_SLACK_S = 1.0
#: Longest yurthub log line printed (the JSON keeps them whole).
LOG_WIDTH = 220
#: The load's User-Agent, as the clouds count it.
LOAD_AGENT = REQUEST_HEADERS["User-Agent"]


def _delta(
    counts: dict[str, list[dict[str, int]]], since: str, until: str, cloud: int, agent: str
) -> int:
    return counts[until][cloud].get(agent, 0) - counts[since][cloud].get(agent, 0)


def _longest_gap(times: Sequence[float], start: float, end: float) -> tuple[float, float]:
    """The longest stretch of [start, end] without a success: (length, where it began)."""
    longest, began, previous = 0.0, start, start
    for t in [*times, end]:
        if t - previous > longest:
            longest, began = t - previous, previous
        previous = max(previous, t)
    return longest, began


def _moves(histories: list[list[list[Any]]], since: float, until: float) -> list[float | None]:
    """Per watcher: seconds from ``since`` until it was open again after its first close
    in (``since``, ``until``]; ``None`` when it was not closed then, or not reopened."""
    out: list[float | None] = []
    for history in histories:
        closed = next(
            (t for kind, t, _ in history if kind == "closed" and since < t <= until), None
        )
        if closed is None:
            out.append(None)
            continue
        opened = next((t for kind, t, _ in history if kind == "open" and t > closed), None)
        out.append(None if opened is None else opened - since)
    return out


def analyse(
    key: str,
    label: str,
    measured: dict[str, Any],
    settings: Settings,
    urls: Sequence[str],
    *,
    health: Sequence[tuple[float, str, bool]] = (),
    diagnostics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One proxy's row and its details (every time in seconds, relative to the stop or
    the start of the preferred cloud)."""
    doc = measured["client"]
    start, end = doc["ready_monotonic"], doc["end_monotonic"]
    stop, restart = measured["stop_monotonic"], measured["start_monotonic"]
    successes = sorted(t for times in doc["successes"] for t in times if start <= t <= end)
    failures = [f for f in doc["failures"] if start <= f[0] <= end]
    setup_failures = [f for f in doc["failures"] if f[0] < start]
    by_kind: dict[str, int] = {}
    for _, _, kind, _ in failures:
        by_kind[kind] = by_kind.get(kind, 0) + 1
    gap, gap_at = _longest_gap(successes, start, end)
    counts = measured["cloud_counts"]
    watchers = len(doc["watches"])
    # Where the watches were before the stop: the clouds' counts of the watchers' requests.
    on_preferred = _delta(counts, "before", "ready", 0, WATCH_AGENT)
    moved = _moves(doc["watches"], stop, restart)
    moved_done = [m for m in moved if m is not None]
    back = _moves(doc["watches"], restart, end)
    back_done = [m for m in back if m is not None]
    back_on_preferred = _delta(counts, "start", "end", 0, WATCH_AGENT)
    steady_closes = sum(
        1 for history in doc["watches"] for kind, t, _ in history if kind == "closed" and t <= stop
    )
    watch_failures = {
        phase: sum(
            1
            for history in doc["watches"]
            for kind, t, _ in history
            if kind == "failed" and lo < t <= hi
        )
        for phase, lo, hi in (("down", stop, restart), ("up", restart, end))
    }
    # All that were on the preferred cloud must have moved; all must come back to it.
    moved_s = max(moved_done) if on_preferred and len(moved_done) >= on_preferred else None
    back_s = (
        max(back_done)
        if watchers and len(back_done) >= watchers and back_on_preferred >= watchers
        else None
    )
    row: dict[str, Any] = {
        "key": key,
        "proxy": label,
        "requests": len(successes) + len(failures),
        "failed": len(failures),
        "longest_gap_s": round(gap, 3),
        "requests_per_second": round(len(successes) / (end - start), 1) if end > start else 0.0,
        "watches_moved_after_stop_s": None if moved_s is None else round(moved_s, 3),
        "watches_back_on_preferred_s": None if back_s is None else round(back_s, 3),
        "details": {
            "window_s": round(end - start, 3),
            "successes": len(successes),
            "failures_by_kind": by_kind,
            "failures_s_after_stop": [round(f[0] - stop, 3) for f in failures[:50]],
            "failure_samples": [f[2] + (": " + f[3] if f[3] else "") for f in failures[:5]],
            "setup_failures": len(setup_failures),
            "longest_gap_began_s_after_stop": round(gap_at - stop, 3),
            "stop_s_after_load_start": round(stop - start, 3),
            "restart_s_after_stop": round(restart - stop, 3),
            "stop_call_s": measured["stop_call_seconds"],
            "start_call_s": measured["start_call_seconds"],
            "watchers": watchers,
            "watches_on_preferred_before_stop": on_preferred,
            "watches_reopened_after_stop": len(moved_done),
            "watch_requests_to_other_while_down": _delta(counts, "stop", "start", 1, WATCH_AGENT),
            "watches_reopened_after_restart": len(back_done),
            "watch_requests_to_preferred_after_restart": back_on_preferred,
            "watch_requests_to_other_after_restart": _delta(counts, "start", "end", 1, WATCH_AGENT),
            "watch_moves_s_after_stop": [None if m is None else round(m, 3) for m in moved],
            "watch_moves_s_after_restart": [None if m is None else round(m, 3) for m in back],
            "watch_closes_before_stop": steady_closes,
            "watch_open_failures": watch_failures,
            "load_requests_by_cloud": {
                phase: [_delta(counts, lo, hi, n, LOAD_AGENT) for n in range(len(urls))]
                for phase, lo, hi in (
                    ("steady", "ready", "stop"),
                    ("down", "stop", "start"),
                    ("up", "start", "end"),
                )
            },
            "client_threads_still_running": doc.get("threads_still_running", 0),
        },
    }
    seen_back = next((t for t, url, ok in health if ok and url == urls[0] and t > restart), None)
    if back_s is not None and seen_back is not None:
        # The grace counts from yurthub seeing the preferred cloud healthy again.
        row["details"]["watches_back_s_after_seen_healthy"] = round(
            back_s - (seen_back - restart), 3
        )
    if health:
        row["details"]["yurthub_health_changes"] = [
            {
                "s_after_stop": round(t - stop, 3),
                "server": url,
                "cloud": "preferred" if url == urls[0] else "other",
                "healthy": healthy,
            }
            for t, url, healthy in health
        ]
    if diagnostics is not None:
        names = {urls[0]: "preferred", **{url: "other" for url in urls[1:]}}
        for name in ("backend_requests", "failovers"):
            if name in diagnostics:
                diagnostics[name] = {names.get(u, u): v for u, v in diagnostics[name].items()}
        row["yurthub_diagnostics"] = diagnostics
    return row


def verdicts(rows: Sequence[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """yurthub's failed requests against 0 and its watch move against the probe period
    plus `MOVE_SLACK_S`; the time back on the preferred cloud next to the grace."""
    hub = next((row for row in rows if row["key"] == "yurthub"), None)
    if hub is None:
        return {}
    limit = settings["interval"] + MOVE_SLACK_S
    moved = hub["watches_moved_after_stop_s"]
    grace = settings["return_grace"] if settings.get("return_grace_accepted") else None
    return {
        "failed": {
            "value": hub["failed"],
            "target": FAILED_TARGET,
            "verdict": "PASS" if hub["failed"] <= FAILED_TARGET else "FAIL",
        },
        "watches_moved": {
            "value": moved,
            "target_s": limit,
            "verdict": "PASS" if moved is not None and moved <= limit else "FAIL",
        },
        "watches_back": {
            "value": hub["watches_back_on_preferred_s"],
            "after_seen_healthy_s": hub["details"].get("watches_back_s_after_seen_healthy"),
            "grace_s": grace,
            "expected_s": None if grace is None else [grace, 1.5 * grace],
        },
    }


def build_report(
    *,
    settings: dict[str, Any],
    rows: list[dict[str, Any]],
    tools: dict[str, str],
    yurthub_git: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document of a run (``bench/results.json`` under ``"failover"``)."""
    return {
        "benchmark": "failover",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "machine": machine_info(),
        "tools": tools,
        "yurthub_git": yurthub_git,
        "rows": rows,
        "verdicts": verdicts(rows, settings),
    }


def _seconds(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:.2f}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The side-by-side table."""
    header = (
        "proxy",
        "requests",
        "failed",
        "longest gap without success s",
        "req/s",
        "watches moved after stop s",
        "watches back on preferred after restart s",
    )
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        d = row["details"]
        moved = _seconds(
            row["watches_moved_after_stop_s"],
            f"not all ({d['watches_reopened_after_stop']}/{d['watches_on_preferred_before_stop']})",
        )
        back = _seconds(
            row["watches_back_on_preferred_s"],
            f"no ({d['watch_requests_to_preferred_after_restart']}/{d['watchers']})",
        )
        lines.append(
            (
                row["proxy"],
                f"{row['requests']:,}",
                f"{row['failed']:,}",
                f"{row['longest_gap_s']:.3f}",
                f"{row['requests_per_second']:,.0f}",
                moved,
                back,
            )
        )
    return _grid(lines, right=set(range(1, len(header))))


def print_report(report: dict[str, Any], emit: Callable[[str], None]) -> None:
    """The human-readable report: settings, table, verdicts, each proxy's details."""
    s, m = report["settings"], report["machine"]
    emit("")
    emit(
        f"GET /api/v1/namespaces/small/pods ({s['pods']} pods) on {s['connections']} keep-alive "
        f"connections and {s['watches']} watches per proxy; {s['steady']:g} s steady, the preferred "
        f"cloud stopped for {s['down']:g} s, then {s['up']:g} s after its restart"
    )
    grace = (
        f"returnGraceSeconds {s['return_grace']:g}"
        if s["return_grace_accepted"]
        else "no returnGraceSeconds (not accepted by this yurthub)"
    )
    emit(
        f"yurthub: priority, intervalSeconds {s['interval']:g}, {grace}; nginx: stream, least_conn, "
        "proxy_connect_timeout 1s, proxy_timeout 10m, worker_processes 1"
    )
    emit(
        f"machine: nproc={m['nproc']} ({m['cpu']}), Python {m['python']}, Twisted {m['twisted']}, "
        f"{report['tools']['nginx']}; yurthub {report['yurthub_git'].get('commit', '?')}"
        + (" (with local changes)" if report["yurthub_git"].get("yurthub_sources_modified") else "")
    )
    emit("")
    emit(table(report["rows"]))
    v = report["verdicts"]
    if v:
        emit("")
        emit(
            f"yurthub failed requests = {v['failed']['value']}   target {FAILED_TARGET}: {v['failed']['verdict']}"
        )
        moved = v["watches_moved"]
        shown = "not all" if moved["value"] is None else f"{moved['value']:.2f} s"
        emit(
            f"watches moved within {shown}   target <= intervalSeconds + 1 = {moved['target_s']:g} s: "
            f"{moved['verdict']}"
        )
        back = v["watches_back"]
        if back["expected_s"]:
            lo, hi = back["expected_s"]
            shown = "not within the run" if back["value"] is None else f"{back['value']:.2f} s"
            if back["after_seen_healthy_s"] is not None:
                shown += f" ({back['after_seen_healthy_s']:.2f} s after yurthub saw it healthy)"
            emit(
                f"watches back on preferred after {shown}   expected {lo:g}..{hi:g} s after "
                "it is healthy (grace..1.5 x grace; informative)"
            )
    for row in report["rows"]:
        _details(row, emit)


def _details(row: dict[str, Any], emit: Callable[[str], None]) -> None:
    d = row["details"]
    emit("")
    emit(f"{row['proxy']}:")
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(d["failures_by_kind"].items())) or "none"
    emit(f"  failures by kind: {kinds}")
    if d["failures_s_after_stop"]:
        times = d["failures_s_after_stop"]
        emit(
            f"  failures from {min(times):+.3f} s to {max(times):+.3f} s after the stop; e.g. {d['failure_samples'][0][:160]}"
        )
    emit(
        f"  longest gap without a success began {d['longest_gap_began_s_after_stop']:+.3f} s after the stop"
    )
    cloud = d["load_requests_by_cloud"]
    emit(
        "  GETs received by the clouds (preferred / other): "
        + "; ".join(f"{phase} {a:,} / {b:,}" for phase, (a, b) in cloud.items())
    )
    emit(
        f"  watches: {d['watches_on_preferred_before_stop']} of {d['watchers']} on the preferred cloud before "
        f"the stop; {d['watches_reopened_after_stop']} closed and reopened after it "
        f"({d['watch_requests_to_other_while_down']} watch requests reached the other cloud, "
        f"{d['watch_open_failures']['down']} attempts failed)"
    )
    emit(
        f"  after the restart: {d['watches_reopened_after_restart']} watches closed and reopened, "
        f"{d['watch_requests_to_preferred_after_restart']} watch requests reached the preferred cloud, "
        f"{d['watch_requests_to_other_after_restart']} the other ({d['watch_open_failures']['up']} attempts failed)"
    )
    if d["watch_closes_before_stop"]:
        emit(f"  note: {d['watch_closes_before_stop']} watch closes before the stop")
    if d["setup_failures"]:
        emit(f"  note: {d['setup_failures']} failures before the load was going (not counted)")
    for change in d.get("yurthub_health_changes", []):
        if change["s_after_stop"] < 0 and change["healthy"]:
            continue  # the state it started the run in
        state = "healthy" if change["healthy"] else "unhealthy"
        after_restart = change["s_after_stop"] - d["restart_s_after_stop"]
        when = (
            f"{after_restart:+.2f} s after the restart"
            if after_restart >= 0
            else f"{change['s_after_stop']:+.2f} s after the stop"
        )
        emit(f"  yurthub saw the {change['cloud']} cloud {state} {when}")
    diag = row.get("yurthub_diagnostics")
    if diag:
        codes = ", ".join(
            f"{c}: {n:,}" for c, n in sorted(diag.get("requests_by_code", {}).items())
        )
        emit(f"  yurthub's answers by code: {codes or 'none'}")
        for name in ("backend_requests", "failovers", "streams_moved", "upstream_errors"):
            if diag.get(name):
                values = ", ".join(f"{k}: {v:,.0f}" for k, v in diag[name].items())
                emit(f"  yurthub {name.replace('_', ' ')}: {values}")
        grouped = _grouped_log(diag.get("log", ""))
        if grouped:
            emit("  yurthub logged (warn and above, last lines, each message once):")
            for line in grouped:
                emit("    | " + (line if len(line) <= LOG_WIDTH else line[: LOG_WIDTH - 3] + "..."))
