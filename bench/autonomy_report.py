"""The results of an autonomy run: the verdicts, the printed tables and the JSON document.

Every figure is the median of its runs (wrk rows: the round with the median requests per
second, as in proxy-list); the worst run is shown beside the convergence and restart
times. A verdict never changes the exit status: a benchmark reports, CI decides.
"""

from __future__ import annotations

import datetime
import re
import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bench.measure import Row
from bench.report import NOISY_OTHER_CPU, machine_info, row_dict

if TYPE_CHECKING:
    from bench.autonomy import Settings
    from bench.tools import Tools

#: Targets (issue 9's, except the convergence time, which is this benchmark's own).
SMALL_RATIO_TARGET = 0.35
RELAY_RATIO_TARGET = 0.6
CONVERGE_TARGET_S = 2.0
RSS_TARGET_MB = 80.0
RESTART_TARGET_S = 1.0


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def summary(
    settings: Settings,
    rows: Sequence[Row],
    rounds: Sequence[Sequence[Row]],
    relays: Sequence[dict[str, Any]],
    memory: dict[str, Any],
    restarts: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """One entry per measurement: yurthub's figure, the anchor's, the ratio, the verdict."""
    by_key = {row.target.key: row for row in rows}
    errors = {
        key: sum(
            r.result.error_count for measured in rounds for r in measured if r.target.key == key
        )
        for key in by_key
    }
    out: list[dict[str, Any]] = []

    hub, anchor = by_key["yurthub-small"], by_key["nginx-small"]
    ratio = hub.result.requests_per_second / anchor.result.requests_per_second
    out.append({
        "key": "offline_small_rps",
        "measurement": f"offline list, {settings.small_pods} pods: req/s",
        "yurthub": hub.result.requests_per_second,
        "anchor": anchor.result.requests_per_second,
        "anchor_is": "nginx static, same bytes",
        "ratio": ratio,
        "target": f">= {SMALL_RATIO_TARGET}",
        "verdict": _verdict(ratio >= SMALL_RATIO_TARGET and not errors["yurthub-small"]),
        "note": f"yurthub had {errors['yurthub-small']} errors" if errors["yurthub-small"] else "",
        "format": "rate",
    })  # fmt: skip
    hub, anchor = by_key["yurthub-bulk"], by_key["nginx-bulk"]
    answered = hub.result.requests > 0
    for pct in ("p50", "p99"):
        mine = hub.result.latency_us[pct] / 1000 if answered else None
        theirs = anchor.result.latency_us[pct] / 1000
        out.append({
            "key": f"offline_bulk_{pct}_ms",
            "measurement": f"offline list, {settings.pods:,} pods: {pct} ms",
            "yurthub": mine,
            "anchor": theirs,
            "anchor_is": "nginx static, same bytes",
            "ratio": mine / theirs if mine is not None and theirs else None,
            "target": "-",
            "verdict": "FAIL" if errors["yurthub-bulk"] or not answered else "-",
            "note": (f"yurthub had {errors['yurthub-bulk']} errors; " if errors["yurthub-bulk"] else "")
            + f"yurthub completed {hub.result.requests} answers in {hub.result.duration_us / 1e6:.0f} s, "
            f"nginx {anchor.result.requests}",
            "format": "latency",
        })  # fmt: skip

    direct = [r for r in relays if r["path"] == "direct"]
    through = [r for r in relays if r["path"] == "yurthub"]
    failed = [r for r in through if "error" in r]
    mine_rate = _median([r.get("events_per_second") for r in through if "error" not in r])
    cloud_rate = _median([r.get("events_per_second") for r in direct if "error" not in r])
    ratio = mine_rate / cloud_rate if mine_rate and cloud_rate else None
    out.append({
        "key": "relay_events_per_second",
        "measurement": f"watch relay, {settings.events:,} x ~{settings.event_size} B events: events/s",
        "yurthub": mine_rate,
        "anchor": cloud_rate,
        "anchor_is": "straight from the cloud",
        "ratio": ratio,
        "target": f">= {RELAY_RATIO_TARGET}",
        "verdict": _verdict(bool(ratio is not None and ratio >= RELAY_RATIO_TARGET and not failed)),
        "note": f"{len(failed)} of {len(through)} runs through yurthub failed" if failed else "",
        "format": "rate",
    })  # fmt: skip
    converge = [(r.get("converge") or {}).get("seconds") for r in through if "error" not in r]
    never = sum(1 for c in converge if c is None) + len(failed)
    median = _median(converge)
    worst = max((c for c in converge if c is not None), default=None)
    out.append({
        "key": "cache_converged_seconds",
        "measurement": "cache on disk = cloud, after the last event: s",
        "yurthub": median if not never else None,
        "anchor": None,
        "anchor_is": "",
        "ratio": None,
        "target": f"<= {CONVERGE_TARGET_S:g} s",
        "verdict": _verdict(bool(median is not None and not never and median <= CONVERGE_TARGET_S)),
        "note": (f"worst {worst:.2f} s" if worst is not None else "")
        + (f"; {never} runs never converged within 30 s" if never else ""),
        "format": "seconds",
    })  # fmt: skip
    rss = memory["after_caching_bulk_2s"]["VmRSS"]
    out.append({
        "key": "rss_after_caching_mb",
        "measurement": f"RSS after caching {settings.pods:,} pods: MB",
        "yurthub": rss,
        "anchor": None,
        "anchor_is": "",
        "ratio": None,
        "target": f"<= {RSS_TARGET_MB:g} MB",
        "verdict": _verdict(rss <= RSS_TARGET_MB),
        "note": f"peak {memory['after_caching_bulk_2s']['VmHWM']:.0f} MB; idle {memory['idle']['VmRSS']:.0f} MB",
        "format": "mb",
    })  # fmt: skip
    times = [r.get("seconds") for r in restarts]
    failed_restarts = sum(1 for r in restarts if "error" in r)
    median = _median(times)
    worst = max((t for t in times if t is not None), default=None)
    out.append({
        "key": "restart_first_list_seconds",
        "measurement": f"restart offline -> first {settings.pods:,}-pod list: s",
        "yurthub": median,
        "anchor": None,
        "anchor_is": "",
        "ratio": None,
        "target": f"<= {RESTART_TARGET_S:g} s",
        "verdict": _verdict(bool(median is not None and not failed_restarts and median <= RESTART_TARGET_S)),
        "note": (f"worst {worst:.2f} s" if worst is not None and len(times) > 1 else "")
        + (f"{failed_restarts} restarts failed" if failed_restarts else ""),
        "format": "seconds",
    })  # fmt: skip
    return out


def _figure(value: float | None, form: str) -> str:
    if value is None:
        return "-"
    if form == "rate":
        return f"{value:,.0f}"
    if form == "latency":
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    if form == "mb":
        return f"{value:,.0f}"
    return f"{value:.2f}"


def _ratio(entry: dict[str, Any]) -> str:
    ratio = entry["ratio"]
    if ratio is None:
        return "-"
    if entry["format"] == "latency":
        return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:,.0f}x"
    return f"{ratio:.3f}"


def _grid(lines: list[tuple[str, ...]], right: set[int]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def summary_table(entries: Sequence[dict[str, Any]]) -> str:
    """The measurements with the anchor beside each, as a fixed-width table."""
    lines = [("measurement", "yurthub", "anchor", "anchor is", "ratio", "target", "verdict")]
    for e in entries:
        lines.append((
            e["measurement"],
            _figure(e["yurthub"], e["format"]),
            _figure(e["anchor"], e["format"]),
            e["anchor_is"] or "-",
            _ratio(e),
            e["target"],
            e["verdict"],
        ))  # fmt: skip
    return _grid(lines, right={1, 2, 4})


def relay_table(relays: Sequence[dict[str, Any]]) -> str:
    """Every watch relay run."""
    lines = [("run", "path", "events/s", "seconds", "first event ms", "cloud gen s", "cache = cloud s",
              "yurthub CPU", "cloud CPU", "client CPU", "other CPU", "steal")]  # fmt: skip
    for n, r in enumerate(relays, 1):
        cpu = r["cpu_percent"]
        converge = r.get("converge")
        if converge is None:
            converged = "-"
        elif converge["seconds"] is None:
            converged = f"never ({converge['mismatched']} differ)"
        else:
            converged = f"{converge['seconds']:.2f}"
        lines.append((
            str(n),
            r["path"] + (" FAILED" if "error" in r else ""),
            f"{r['events_per_second']:,.0f}" if "events_per_second" in r else "-",
            f"{r['seconds']:.3f}" if "seconds" in r else "-",
            f"{r['first_event_ms']:.1f}" if "first_event_ms" in r else "-",
            f"{r['generation_seconds']:.3f}",
            converged,
            f"{cpu['yurthub']:.0f}%" if r["path"] == "yurthub" else "-",
            f"{cpu['cloud']:.0f}%",
            f"{cpu['client']:.0f}%",
            f"{cpu['other']:.0f}%",
            f"{cpu['steal']:.0f}%",
        ))  # fmt: skip
    return _grid(lines, right=set(range(2, 12)))


def build_report(
    *,
    settings: Settings,
    tools: Tools,
    offline_rows: Sequence[Row],
    offline_rounds: Sequence[Sequence[Row]],
    relays: Sequence[dict[str, Any]],
    memory: dict[str, Any],
    restarts: Sequence[dict[str, Any]],
    offline_checks: Sequence[dict[str, Any]],
    diagnostics: dict[str, Any],
    cloud_seed_seconds: float | None,
    yurthub_git: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document of a run (written to ``bench/results.json`` under ``autonomy``)."""
    entries = summary(settings, offline_rows, offline_rounds, relays, memory, restarts)
    return {
        "benchmark": "autonomy",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {
            "duration_s": settings.duration,
            "warmup_s": settings.warmup,
            "connections_100_pods": settings.connections,
            "connections_10000_pods": settings.bulk_connections,
            "wrk_threads": settings.threads,
            "rounds": settings.rounds,
            "relay_runs_per_round": settings.relay_runs,
            "events": settings.events,
            "event_size": settings.event_size,
            "pods": {
                "bulk": settings.pods,
                "small": settings.small_pods,
                "events": settings.event_pods,
            },
            "static_worker_processes": 1,
            "yurthub_health_check": "intervalSeconds 1, timeoutSeconds 1, thresholds 1/1",
            "user_agent": "kubelet/v1.31.0",
        },
        "machine": machine_info(),
        "tools": {"nginx": tools.nginx_version, "wrk": tools.wrk_version},
        "yurthub_git": yurthub_git,
        "summary": [{k: v for k, v in e.items() if k != "format"} for e in entries],
        "offline_rows": [row_dict(row) for row in offline_rows],
        "offline_rounds": [[row_dict(row) for row in measured] for measured in offline_rounds],
        "watch_relay_runs": list(relays),
        "memory_mb": memory,
        "restarts": list(restarts),
        "offline_checks": list(offline_checks),
        "cloud_seed_seconds": cloud_seed_seconds,
        "yurthub_diagnostics": diagnostics,
    }


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:]+[+-]\d{4} ")


def _grouped_log(log: str) -> list[str]:
    """The log's lines without timestamps, identical messages counted once."""
    counts: dict[str, int] = {}
    for line in log.splitlines():
        text = _TIMESTAMP.sub("", line).rstrip()
        if text:
            counts[text] = counts.get(text, 0) + 1
    return [f"{n} x {text}" if n > 1 else text for text, n in counts.items()]


def print_report(report: dict[str, Any], emit: Callable[[str], None]) -> None:
    """The human-readable report: settings, the summary table, details, yurthub's words."""
    s, m = report["settings"], report["machine"]
    emit("")
    emit(
        f"autonomy: cloud = simulated kube-apiserver (own process), {s['pods']['bulk']:,} + "
        f"{s['pods']['small']} + {s['pods']['events']:,} pods; User-Agent {s['user_agent']}; "
        f"wrk {s['duration_s']:g} s per configuration; {s['rounds']} round(s), "
        f"{s['relay_runs_per_round']} relay run(s) per path per round"
    )
    emit(
        f"machine: nproc={m['nproc']} ({m['cpu']}), Python {m['python']}, Twisted {m['twisted']}, "
        f"{report['tools']['nginx']}, {report['tools']['wrk']}; yurthub {report['yurthub_git']['commit']}"
        + (" (modified)" if report["yurthub_git"]["yurthub_sources_modified"] else "")
        + f" from {report['yurthub_git'].get('source', '?')}"
    )
    emit("")
    entries = [dict(e, format=_FORMATS[e["key"]]) for e in report["summary"]]
    emit(summary_table(entries))
    for e in entries:
        if e["note"]:
            emit(f"  {e['measurement']}: {e['note']}")
    emit("")
    emit("offline lists (cloud stopped), wrk; CPU as % of one core during the timed run:")
    emit(wrk_table(report["offline_rows"]))
    emit("")
    emit(
        "watch relay runs (seconds: from the cloud starting to generate to the client's last event):"
    )
    emit(relay_table(report["watch_relay_runs"]))
    noisy = [r["other_cpu_percent"] + r["steal_cpu_percent"] for r in report["offline_rows"]]
    noisy += [
        r["cpu_percent"]["other"] + r["cpu_percent"]["steal"] for r in report["watch_relay_runs"]
    ]
    if noisy and max(noisy) > NOISY_OTHER_CPU:
        emit(
            f"note: other work and steal took up to {max(noisy):.0f}% of a core during a measurement; "
            "the figures are noisy (use --rounds 3, or a quieter machine)"
        )
    emit("")
    mem = report["memory_mb"]
    emit(
        "yurthub memory (MB): idle {idle}; after caching the {n:,} pods {a} (peak {ap}); "
        "after the offline runs {o} (peak {op}); after the restart and first answer {r} (peak {rp})".format(
            idle=mem["idle"]["VmRSS"], n=s["pods"]["bulk"],
            a=mem["after_caching_bulk_2s"]["VmRSS"], ap=mem["after_caching_bulk_2s"]["VmHWM"],
            o=mem.get("after_offline_runs", {}).get("VmRSS"), op=mem.get("after_offline_runs", {}).get("VmHWM"),
            r=mem["after_restart"]["VmRSS"], rp=mem["after_restart"]["VmHWM"],
        )
    )  # fmt: skip
    for restart in report["restarts"]:
        steps = "; ".join(
            f"{what}" + (f" x{n} {at:.2f}-{last:.2f} s" if n > 1 else f" at {at:.2f} s")
            + (f" ({detail})" if detail else "")
            for at, what, detail, n, last in restart["attempts"]
        )  # fmt: skip
        at_listen = restart.get("memory_at_listen") or {}
        emit(
            f"restart (round {restart['round']}): {steps}"
            + (f"; RSS when listening {at_listen['VmRSS']:.0f} MB" if at_listen else "")
            + ("; speed probe {:.1f} ms before, {:.1f} ms after (a fixed Python loop; lower is "
               "faster)".format(*restart["speed_probe_ms"]) if restart.get("speed_probe_ms") else "")
            + (f"; {restart['error']}" if "error" in restart else "")
        )
    for check in report["offline_checks"]:
        emit(
            f"offline (round {check['round']}): yurthub reported the cloud unhealthy "
            f"{check['noticed_seconds']:.2f} s after it stopped; offline events pods = cloud's: "
            f"{'yes' if check['offline_events_match_cloud'] else 'NO'}; first (cold) offline answers: "
            f"{s['pods']['small']} pods {check['small_first_answer_ms']:.0f} ms, "
            f"{s['pods']['bulk']:,} pods {check['bulk_first_answer_ms']:.0f} ms"
        )
        for query in ("?verbose", "?verbose=1"):
            emit(f"  /v1/readyz{query} -> " + check[f"readyz{query}"].replace("\n", " | "))
    diag = report["yurthub_diagnostics"]
    for c in diag.get("pod_collections", []):
        emit(
            f"cloud back (round {c['round']}): the restarted yurthub asked for each cached pod, "
            f"{c['requests']:,} GETs of {c['expected']:,} cached in {c['seconds']:.1f} s"
            + ("" if c["complete"] else " (stopped before all)")
            + "; measured after it was over"
        )
    agents = ", ".join(
        f"{a or '(none)'}: {n:,}"
        for a, n in sorted(diag.get("cloud_requests_by_agent", {}).items())
    )
    emit(f"requests the cloud received, by User-Agent: {agents or 'none'}")
    codes = ", ".join(f"{code}: {n:,}" for code, n in sorted(diag["requests_by_code"].items()))
    emit(f"yurthub's own count of answers by code (all its processes): {codes or 'none'}")
    for process in diag["processes"]:
        cache = ", ".join(f"{k} {v:g}" for k, v in sorted(process["cache"].items()))
        emit(f"  cache metrics {process['when']}: {cache or 'none'}"
             + (f"; upstream errors {process['upstream_errors']}" if process["upstream_errors"] else ""))  # fmt: skip
    lines = _grouped_log(diag["log"])
    if lines:
        emit("yurthub logged (warn and above, all its processes; identical lines counted):")
        for line in lines[-30:]:
            emit("  | " + line)


_FORMATS = {
    "offline_small_rps": "rate",
    "offline_bulk_p50_ms": "latency",
    "offline_bulk_p99_ms": "latency",
    "relay_events_per_second": "rate",
    "cache_converged_seconds": "seconds",
    "rss_after_caching_mb": "mb",
    "restart_first_list_seconds": "seconds",
}


def wrk_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [("configuration", "req/s", "p50 ms", "p99 ms", "errors", "CPU us/req", "server CPU",
              "wrk CPU", "other CPU", "steal")]  # fmt: skip
    for r in rows:
        rate = r["requests_per_second"]
        errors = str(r["error_count"])
        if r["error_count"]:
            errors += " (" + ",".join(f"{k}={v}" for k, v in r["errors"].items() if v) + ")"
        lines.append((
            r["configuration"],
            f"{rate:,.1f}" if rate < 100 else f"{rate:,.0f}",
            f"{r['latency_us']['p50'] / 1000:,.2f}",
            f"{r['latency_us']['p99'] / 1000:,.2f}",
            errors,
            f"{r['server_cpu_us_per_request']:,.0f}",
            f"{r['server_cpu_percent']:.0f}%",
            f"{r['wrk_cpu_percent']:.0f}%",
            f"{r['other_cpu_percent']:.0f}%",
            f"{r['steal_cpu_percent']:.0f}%",
        ))  # fmt: skip
    return _grid(lines, right=set(range(1, 10)))
