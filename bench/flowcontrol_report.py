"""The results of a flow-control run: the verdicts, the printed tables and the JSON document.

Limiter overhead: each round starts a fresh pair of yurthubs (on and off) on one CPU and
loads both at the same moment (`bench.measure.measure_together`); a round's overhead is ``1 - on / off`` of requests per second
and ``1 - off / on`` of CPU microseconds per request (both: the fraction of throughput the
limiter costs). The verdict, <= 3 %, uses the median over the rounds of the paired CPU
figure: two yurthub processes with the same settings differ by up to ~10 % between them
(placement, hash seed), which the pairing cancels and a comparison of each setting's own
median does not. Those per-setting medians are reported too. Slow upstream: the verdict needs exactly ``limit`` requests held by the
upstream at once, ``limit`` answers 200, ``burst - limit`` answers 429 each with
``Retry-After`` and a ``TooManyRequests`` Status, nothing else and nothing hung. A
verdict never changes the exit status.
"""

from __future__ import annotations

import datetime
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from bench.autonomy_report import _grid, _grouped_log
from bench.measure import Row
from bench.report import NOISY_OTHER_CPU, machine_info, row_dict, table

#: The limiter may cost at most this fraction of throughput.
OVERHEAD_TARGET = 0.03


def _median_cpu(rounds: Sequence[Sequence[Row]], key: str) -> float:
    return statistics.median(
        row.server_us_per_request
        for measured in rounds
        for row in measured
        if row.target.key == key
    )


def overhead_summary(overhead: dict[str, Any]) -> dict[str, Any]:
    """The overhead figures and verdict of part 1, JSON-ready."""
    by_key = {row.target.key: row for row in overhead["rows"]}
    on, off = by_key["limiter-on"], by_key["limiter-off"]
    rps_on, rps_off = on.result.requests_per_second, off.result.requests_per_second
    cpu_on = _median_cpu(overhead["rounds"], "limiter-on")
    cpu_off = _median_cpu(overhead["rounds"], "limiter-off")
    by_rps = 1 - rps_on / rps_off if rps_off else 0.0
    by_cpu = 1 - cpu_off / cpu_on if cpu_on else 0.0
    errors = sum(row.result.error_count for measured in overhead["rounds"] for row in measured)
    pairs = []
    for measured, order in zip(overhead["rounds"], overhead["orders"], strict=True):
        r = {row.target.key: row for row in measured}
        a, b = r["limiter-on"], r["limiter-off"]
        pairs.append({
            "order": order,
            "requests_per_second": {k: round(v.result.requests_per_second, 1) for k, v in r.items()},
            "cpu_us_per_request": {k: round(v.server_us_per_request, 1) for k, v in r.items()},
            "overhead_by_requests_per_second": round(
                1 - a.result.requests_per_second / b.result.requests_per_second, 4),
            "overhead_by_cpu_per_request": round(
                1 - b.server_us_per_request / a.server_us_per_request, 4),
        })  # fmt: skip
    paired_rps = statistics.median(p["overhead_by_requests_per_second"] for p in pairs)
    paired_cpu = statistics.median(p["overhead_by_cpu_per_request"] for p in pairs)
    if errors:
        outcome, why = "FAIL", f"{errors} wrk errors"
    else:
        outcome, why = ("PASS", "") if paired_cpu <= OVERHEAD_TARGET else ("FAIL", "above target")
    return {
        "requests_per_second": {"on": round(rps_on, 1), "off": round(rps_off, 1)},
        "cpu_us_per_request": {"on": round(cpu_on, 1), "off": round(cpu_off, 1)},
        "overhead_of_setting_medians_by_requests_per_second": round(by_rps, 4),
        "overhead_of_setting_medians_by_cpu_per_request": round(by_cpu, 4),
        "overhead_by_requests_per_second": round(paired_rps, 4),
        "overhead_by_cpu_per_request": round(paired_cpu, 4),
        "target": OVERHEAD_TARGET,
        "verdict_uses": "overhead_by_cpu_per_request (median of the paired rounds)",
        "verdict": outcome,
        "reason": why,
        "rounds": pairs,
    }


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def burst_summary(row: dict[str, Any], burst: int) -> dict[str, Any]:
    """One burst's counts and times, and (for a limit) its verdict."""
    answers = row["answers"]
    ok = [a for a in answers if a["status"] == 200 and not a["error"]]
    rejected = [a for a in answers if a["status"] == 429 and not a["error"]]
    proper = [a for a in rejected if a["retry_after"] and a.get("reason") == "TooManyRequests"]
    hung = [a for a in answers if a["error"].startswith("hung")]
    others: dict[str, int] = {}
    for a in answers:
        if a not in ok and a not in rejected and a not in hung:
            kind = a["error"] or f"http {a['status']}"
            if a["error"] and a["status"]:
                kind = f"http {a['status']}: {a['error']}"
            others[kind] = others.get(kind, 0) + 1
    peak = row["cloud_in_flight"]["delayed_peak"]
    out: dict[str, Any] = {
        "reached_upstream_at_once": peak,
        "reached_upstream_in_all": row["cloud_in_flight"]["delayed_arrived"],
        "ok_200": len(ok),
        "rejected_429": len(rejected),
        "rejected_429_with_retry_after_and_reason": len(proper),
        "other": others,
        "hung": len(hung),
        "seconds_200": _spread([a["seconds"] for a in ok]),
        "seconds_429": _spread([a["seconds"] for a in rejected]),
        "yurthub_rejected_metric": row["yurthub_rejected"],
    }
    limit = row["limit"]
    if limit:
        expected = min(limit, burst)
        problems = []
        if peak != expected:
            problems.append(f"{peak} at the upstream at once")
        if len(ok) != expected:
            problems.append(f"{len(ok)} x 200")
        if len(rejected) != burst - expected:
            problems.append(f"{len(rejected)} x 429")
        if len(proper) != len(rejected):
            problems.append(f"{len(rejected) - len(proper)} 429s without Retry-After or reason")
        if hung:
            problems.append(f"{len(hung)} hung")
        if others:
            problems.append(f"{sum(others.values())} other answers")
        out["verdict"] = "FAIL" if problems else "PASS"
        out["reason"] = ", ".join(problems)
        out["expected"] = {"at_upstream": expected, "rejected_429": burst - expected}
    return out


def build_report(
    *,
    settings: dict[str, Any],
    overhead: dict[str, Any],
    bursts: list[dict[str, Any]],
    tools: dict[str, str],
    yurthub_git: dict[str, Any],
    request: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document of a run (written to ``bench/results.json``)."""
    for row in bursts:
        row["summary"] = burst_summary(row, settings["burst"])
    return {
        "benchmark": "flowcontrol",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "request": request,
        "settings": settings,
        "machine": machine_info(),
        "tools": tools,
        "yurthub_git": yurthub_git,
        "limiter_overhead": {
            "rows": [row_dict(row) for row in overhead["rows"]],
            "rounds": [[row_dict(row) for row in measured] for measured in overhead["rounds"]],
            "orders": overhead["orders"],
            "body_bytes": overhead["body_bytes"],
            "summary": overhead_summary(overhead),
            "limiter_code_us_per_request": overhead["code_cost"],
            "yurthub_diagnostics": overhead["diagnostics"],
        },
        "slow_upstream": bursts,
    }


def _percent(value: float) -> str:
    return f"{100 * value:+.1f} %"


def _times(spread: dict[str, float] | None) -> str:
    if spread is None:
        return "-"
    return f"{spread['min']:.3f} / {spread['median']:.3f} / {spread['max']:.3f}"


def burst_table(bursts: Sequence[dict[str, Any]]) -> str:
    """The bursts side by side, as a fixed-width table."""
    lines: list[tuple[str, ...]] = [(
        "yurthub", "at upstream at once", "at upstream in all", "200", "429",
        "429 w/ Retry-After+reason", "other", "hung", "429 s min/med/max", "200 s min/med/max",
    )]  # fmt: skip
    for row in bursts:
        s = row["summary"]
        lines.append((
            row["label"],
            str(s["reached_upstream_at_once"]),
            str(s["reached_upstream_in_all"]),
            str(s["ok_200"]),
            str(s["rejected_429"]),
            str(s["rejected_429_with_retry_after_and_reason"]),
            str(sum(s["other"].values())),
            str(s["hung"]),
            _times(s["seconds_429"]),
            _times(s["seconds_200"]),
        ))  # fmt: skip
    return _grid(lines, right=set(range(1, 10)))


def _print_diagnostics(label: str, diag: dict[str, Any], emit: Callable[[str], None]) -> None:
    codes = ", ".join(f"{code}: {n:,}" for code, n in sorted(diag["requests_by_code"].items()))
    emit(f"  {label}: answers by code {codes or 'none'}")
    flow = diag.get("flow")
    if flow:
        emit(
            f"    flow: in flight {flow['in_flight']:g}, rejected {flow['rejected'] or 0}, "
            f"connections open {flow['connections_open']:g}, refused {flow['connections_refused'] or 0}"
        )
    if diag["upstream_errors"]:
        emit(f"    upstream errors: {diag['upstream_errors']}")
    for line in _grouped_log(diag.get("log", "")):
        emit("    | " + line[:220])


def print_report(report: dict[str, Any], rows: Sequence[Row], emit: Callable[[str], None]) -> None:
    """The human-readable report: both parts, their verdicts, what yurthub said."""
    s, m = report["settings"], report["machine"]
    git = report["yurthub_git"]
    part1 = report["limiter_overhead"]
    o = part1["summary"]
    emit("")
    emit(
        f"machine: nproc={m['nproc']} ({m['cpu']}), Python {m['python']}, Twisted {m['twisted']}, "
        f"{report['tools']['nginx']}, {report['tools']['wrk']}; yurthub {git['commit']}"
        + (" (modified)" if git["yurthub_sources_modified"] else "")
        + f" from {git.get('source', '?')}"
    )
    emit("")
    emit(
        f"1. limiter overhead: GET {report['request']['path']} (100 pods, {part1['body_bytes']:,} "
        f"bytes) from nginx through yurthub; wrk {s['threads']} threads x {s['connections']} "
        f"connections to each, both loaded at once for {s['duration']:g} s after {s['warmup']:g} s "
        f"warm-up, the two yurthubs sharing one CPU; {s['rounds']} rounds, a fresh pair each, start "
        "order swapped every round; rows: the median round by req/s"
    )
    emit("")
    emit(table(rows))
    emit("")
    for n, pair in enumerate(o["rounds"], 1):
        rps, cpu = pair["requests_per_second"], pair["cpu_us_per_request"]
        emit(
            f"  round {n} ({' then '.join(k.removeprefix('limiter-') for k in pair['order'])}): "
            f"on {rps['limiter-on']:,.0f} req/s {cpu['limiter-on']:.0f} us/req, "
            f"off {rps['limiter-off']:,.0f} req/s {cpu['limiter-off']:.0f} us/req; "
            f"overhead {_percent(pair['overhead_by_requests_per_second'])} by req/s, "
            f"{_percent(pair['overhead_by_cpu_per_request'])} by CPU/req"
        )
    noisiest = max(row.other_cpu + row.steal_cpu for row in rows)
    if noisiest > NOISY_OTHER_CPU:
        emit(
            f"  note: other work and steal took up to {noisiest:.0f}% of a core during a timed "
            "run: req/s is noisy; CPU per request much less so"
        )
    emit(
        f"  medians: on {o['requests_per_second']['on']:,.0f} req/s, "
        f"{o['cpu_us_per_request']['on']:.1f} us/req; off {o['requests_per_second']['off']:,.0f} "
        f"req/s, {o['cpu_us_per_request']['off']:.1f} us/req"
    )
    reason = f" ({o['reason']})" if o["reason"] else ""
    emit("")
    emit(
        f"limiter overhead {100 * o['overhead_by_requests_per_second']:.1f} % "
        f"(by CPU per request {100 * o['overhead_by_cpu_per_request']:.1f} %)   "
        f"target <= {100 * o['target']:g} %: {o['verdict']}{reason}"
    )
    emit(
        "  the verdict uses the median over the rounds of each round's paired CPU-per-request "
        "overhead (1 - off/on of us/req): fresh processes of the same settings differ by up to "
        "~10 %, which the pairing cancels; other load moves req/s more than CPU per request"
    )
    emit(
        f"  the settings' own medians compared instead: "
        f"{100 * o['overhead_of_setting_medians_by_requests_per_second']:.1f} % by req/s, "
        f"{100 * o['overhead_of_setting_medians_by_cpu_per_request']:.1f} % by CPU per request"
    )
    code = part1["limiter_code_us_per_request"]
    if "error" in code:
        emit(f"  in-process cross-check not available: {code['error']}")
    else:
        share = (code["limiter-on"] - code["limiter-off"]) / o["cpu_us_per_request"]["off"]
        emit(
            f"  cross-check, the limiter's own code timed in-process (admit + release, fastest of "
            f"{code['repeats']} x {code['calls']:,}): on {code['limiter-on']:.2f} us, off "
            f"{code['limiter-off']:.2f} us per request = {100 * share:.2f} % of yurthub's "
            f"{o['cpu_us_per_request']['off']:.0f} us per request (informative)"
        )

    bursts = report["slow_upstream"]
    emit("")
    emit(
        f"2. slow upstream: {s['burst']} connections, one GET {report['request']['slow_path']} "
        f"each (User-Agent kubelet, not a watch) sent at once; the cloud (simulated "
        f"kube-apiserver) answers each after {s['delay']:g} s; hung = no complete answer "
        f"{s['hang_after']:g} s after the last send"
    )
    emit("")
    emit(burst_table(bursts))
    emit("")
    for row in bursts:
        sm = row["summary"]
        emit(
            f"  {row['label']}: requests sent within {1000 * row['send_spread_s']:.1f} ms; "
            f"yurthub held {row['connections_held_before_send']:g} connections before the send; "
            f"its rejected-requests metric rose by {row['yurthub_rejected']:g}; the cloud received "
            f"{row['cloud_requests_from_kubelet']} kubelet requests"
            + (f"; other answers: {sm['other']}" if sm["other"] else "")
        )
    for row in bursts:
        sm = row["summary"]
        if "verdict" not in sm:
            continue
        ex = sm["expected"]
        reason = f" ({sm['reason']})" if sm["reason"] else ""
        emit("")
        emit(
            f"{row['label']}: {sm['reached_upstream_at_once']} at the upstream at once, "
            f"{sm['rejected_429']} x 429, {sm['hung']} hung   target: exactly "
            f"{ex['at_upstream']} at the upstream, {ex['rejected_429']} x 429, 0 hung: "
            f"{sm['verdict']}{reason}"
        )

    emit("")
    emit("what each yurthub said (metrics at the end, warn-level log):")
    for key, diag in part1["yurthub_diagnostics"].items():
        _print_diagnostics(f"{key} (nginx upstream)", diag, emit)
    for row in bursts:
        _print_diagnostics(
            f"{row['key']} (slow cloud)",
            row["diagnostics"] | {"flow": row["yurthub_flow_after"]},
            emit,
        )
