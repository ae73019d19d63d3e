"""The results of a proxy-list run: the verdict, the printed table and the JSON document.

The verdict compares yurthub's requests per second with the ``nginx proxy`` row's against
`TARGET_RATIO`; any yurthub error fails it whatever the ratio. It never changes the exit
status: a benchmark reports, CI decides. Next to it the report gives the same comparison
by CPU time per request, which other load on a shared machine disturbs far less.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.measure import Row

#: yurthub must reach at least this fraction of the nginx proxy's requests per second.
TARGET_RATIO = 0.25

#: "other" plus "steal" CPU above this (% of one core) in a row: the report calls the run
#: noisy.
NOISY_OTHER_CPU = 25.0

REPO_ROOT = Path(__file__).resolve().parent.parent


def verdict(rows: Sequence[Row], rounds: Sequence[Sequence[Row]]) -> dict[str, Any]:
    """yurthub's throughput over the nginx proxy's (median rows), PASS/FAIL against
    `TARGET_RATIO`, and the CPU-per-request ratio for information."""
    by_key = {row.target.key: row for row in rows}
    hub, anchor = by_key["yurthub"], by_key["nginx-proxy"]
    ratio = hub.result.requests_per_second / anchor.result.requests_per_second
    hub_errors = sum(
        row.result.error_count
        for measured in rounds
        for row in measured
        if row.target.key == "yurthub"
    )
    if hub_errors:
        outcome, why = "FAIL", f"yurthub had {hub_errors} errors"
    elif ratio >= TARGET_RATIO:
        outcome, why = "PASS", ""
    else:
        outcome, why = "FAIL", "below target"
    hub_cost, anchor_cost = hub.server_us_per_request, anchor.server_us_per_request
    floor_figures = {}
    for key, name in (("floor", "floor"), ("relay-floor", "relay_floor")):
        floor = by_key.get(key)
        if floor is not None:
            floor_figures[f"{name}_ratio"] = round(
                floor.result.requests_per_second / anchor.result.requests_per_second, 3
            )
            floor_figures[f"{name}_cpu_us_per_request"] = round(floor.server_us_per_request, 1)
    return {
        **floor_figures,
        "ratio": round(ratio, 3),
        "target": TARGET_RATIO,
        "verdict": outcome,
        "reason": why,
        "nginx_proxy_cpu_us_per_request": round(anchor_cost, 1),
        "yurthub_cpu_us_per_request": round(hub_cost, 1),
        "cpu_per_request_ratio": round(anchor_cost / hub_cost, 3) if hub_cost else 0.0,
    }


def table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width text table."""
    header = (
        "configuration",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU us/req",
        "server CPU",
        "upstream CPU",
        "wrk CPU",
        "other CPU",
        "steal",
    )
    lines = [header]
    for row in rows:
        r = row.result
        errors = str(r.error_count)
        if r.error_count:
            errors += " (" + ",".join(f"{k}={v}" for k, v in r.errors.items() if v) + ")"
        lines.append(
            (
                row.target.label,
                f"{r.requests_per_second:,.0f}",
                f"{r.latency_us['p50'] / 1000:.2f}",
                f"{r.latency_us['p99'] / 1000:.2f}",
                errors,
                f"{row.server_us_per_request:.0f}",
                f"{row.server_cpu:.0f}%",
                "-" if row.target.key == "direct" else f"{row.upstream_cpu:.0f}%",
                f"{row.wrk_cpu:.0f}%",
                f"{row.other_cpu:.0f}%",
                f"{row.steal_cpu:.0f}%",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [
            cell.rjust(widths[i]) for i, cell in enumerate(line) if i
        ]
        out.append("  ".join(cells))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def row_dict(row: Row) -> dict[str, Any]:
    """One row, JSON-ready."""
    return {
        "key": row.target.key,
        "configuration": row.target.label,
        "setup": row.target.note,
        **row.result.as_dict(),
        "server_cpu_percent": round(row.server_cpu, 1),
        "server_cpu_us_per_request": round(row.server_us_per_request, 1),
        "upstream_cpu_percent": round(row.upstream_cpu, 1),
        "wrk_cpu_percent": round(row.wrk_cpu, 1),
        "other_cpu_percent": round(row.other_cpu, 1),
        "steal_cpu_percent": round(row.steal_cpu, 1),
    }


def build_report(
    rows: Sequence[Row],
    rounds: Sequence[Sequence[Row]],
    *,
    request: dict[str, Any],
    settings: dict[str, Any],
    tools: dict[str, str],
    diagnostics: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document of a run (written to ``bench/results.json``)."""
    return {
        "benchmark": "proxy-list",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "request": request,
        "settings": settings,
        "machine": machine_info(),
        "tools": tools,
        "yurthub_git": git_state(),
        "rows": [row_dict(row) for row in rows],
        "rounds": [[row_dict(row) for row in measured] for measured in rounds],
        "yurthub_vs_nginx_proxy": verdict(rows, rounds),
        "yurthub_diagnostics": diagnostics,
    }


def print_report(report: dict[str, Any], rows: Sequence[Row], emit: Callable[[str], None]) -> None:
    """The human-readable report: settings, table, verdict, what yurthub itself said."""
    s, m, req = report["settings"], report["machine"], report["request"]
    rounds = f"; median of {s['rounds']} rounds" if s["rounds"] > 1 else ""
    emit("")
    emit(
        f"GET {req['path']}: {req['pods']} pods, {req['body_bytes']:,} bytes of JSON; "
        f"wrk {s['wrk_threads']} threads x {s['connections']} connections, "
        f"{s['duration_s']:g} s per configuration after {s['warmup_s']:g} s warm-up, in "
        f"{s.get('turns', 1)} turns alternating between the configurations{rounds}"
    )
    emit(
        f"machine: nproc={m['nproc']} ({m['cpu']}), Python {m['python']}, Twisted {m['twisted']}, "
        f"{report['tools']['nginx']}, {report['tools']['wrk']}"
    )
    emit(
        f"nginx proxies: worker_processes {s['nginx_proxy_worker_processes']} (yurthub is one "
        f"single-threaded process); upstream nginx: worker_processes {s['upstream_worker_processes']}; "
        "all share these CPUs on 127.0.0.1"
    )
    emit("")
    emit(table(rows))
    emit("")
    emit("CPU us/req: CPU time the row's server spent per request (the proxy; the upstream itself")
    emit("for the direct row). CPU columns, % of one core during the timed run: server as above;")
    emit("upstream; wrk: the load generator; other: processes that are not the benchmark's;")
    emit("steal: taken by the hypervisor. High other/steal means a noisy run.")
    noisiest = max(row.other_cpu + row.steal_cpu for row in rows)
    if noisiest > NOISY_OTHER_CPU:
        emit(
            f"note: other work and steal took up to {noisiest:.0f}% of a core during a timed "
            "run; the figures are noisy (use --rounds 3, or a quieter machine)"
        )
    v = report["yurthub_vs_nginx_proxy"]
    reason = f" ({v['reason']})" if v["reason"] else ""
    emit("")
    emit(
        f"yurthub / nginx proxy = {v['ratio']:.3f}   target >= {v['target']}: {v['verdict']}{reason}"
    )
    emit(
        f"CPU per request, nginx proxy / yurthub = {v['nginx_proxy_cpu_us_per_request']:.0f} us / "
        f"{v['yurthub_cpu_us_per_request']:.0f} us = {v['cpu_per_request_ratio']:.3f} "
        "(the same comparison by cost, steadier under noise; informative only)"
    )
    if "floor_ratio" in v:
        emit(
            f"twisted.web static (floor) / nginx proxy = {v['floor_ratio']:.3f} at "
            f"{v['floor_cpu_us_per_request']:.0f} us per request: twisted.web alone (the HTTPS "
            "listener's stack; the plain one is yurthub's lean server), answering from memory"
        )
    if "relay_floor_ratio" in v:
        emit(
            f"bare relay (floor) / nginx proxy = {v['relay_floor_ratio']:.3f} at "
            f"{v['relay_floor_cpu_us_per_request']:.0f} us per request: yurthub's HTTP parts relaying "
            "with none of its per-request work; yurthub's own work is the difference to its row"
        )
    diag = report["yurthub_diagnostics"]
    codes = ", ".join(f"{code}: {n:,}" for code, n in sorted(diag["requests_by_code"].items()))
    emit(f"yurthub's own count of answers by code (all runs, warm-ups, checks): {codes or 'none'}")
    if "aborted" in diag["requests_by_code"]:
        emit("  (aborted: requests in flight when wrk closed its connections at the end of a run)")
    if diag["upstream_errors"]:
        emit(f"yurthub upstream errors: {diag['upstream_errors']}")
    if diag.get("metrics_error"):
        emit(f"yurthub metrics could not be read: {diag['metrics_error']}")
    if diag["log"].strip():
        emit("yurthub logged (warn and above, last lines):")
        for line in diag["log"].splitlines():
            emit("  | " + line)


def yurthub_source() -> Path:
    """The checkout whose ``yurthub`` the benchmark's twistd imports: what this
    interpreter finds from a neutral directory with the same environment (a
    ``PYTHONPATH`` pointing at another checkout wins over the venv's editable install)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", "import os, yurthub; print(os.path.dirname(yurthub.__file__))"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return REPO_ROOT
    lines = done.stdout.strip().splitlines()
    return Path(lines[-1]).parent if done.returncode == 0 and lines else REPO_ROOT


def git_state() -> dict[str, Any]:
    """Which yurthub was measured: its checkout, the commit, and whether its sources had
    local changes (read when the report is built)."""
    source = yurthub_source()

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "yurthub_sources_modified": bool(git("status", "--porcelain", "--", "yurthub", "twisted")),
        "source": str(source),
    }


def machine_info() -> dict[str, Any]:
    import twisted

    return {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
