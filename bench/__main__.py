"""``python -m bench [proxy-list|autonomy|failover|flowcontrol|soak] [--duration S] [--connections N] [--quick] ...``

The command line of the benchmarks. ``proxy-list`` is `bench.proxy_list` (yurthub next to
nginx and to no proxy, serving a 100-pod list); ``autonomy`` is `bench.autonomy` (yurthub
answering from its cache with the cloud stopped, relaying watches into it, its memory and
an offline restart); ``failover`` is `bench.failover` (the preferred of two clouds stopped
and restarted under load, through yurthub and through nginx as kubespray's nginx-proxy);
``flowcontrol`` is `bench.flowcontrol` (the in-flight limiter's cost, on and off, and a
burst of 300 requests against a slow upstream); ``soak`` is `bench.soak` (500 open watches
and 200 requests/s for 5 minutes, yurthub's descriptors and memory watched; only when named).
Without a name all the others run, in that order, and then one summary table of every
target (`bench.summary`) is printed, saved in the results under ``"summary"`` and drawn as
a PNG chart (`bench.chart`, ``--chart``).
``crash`` is `bench.crash` (yurthub SIGKILLed ``--kills`` times in a storm of watch events
and list replacements, its cache checked after every restart); it runs only when named.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import autonomy, crash, failover, flowcontrol, proxy_list, soak
from bench.measure import machine_cpu_seconds
from bench.results import RESULTS_PATH, load_results, save_results
from bench.summary import SUMMARISED, build_summary, print_summary

#: Pods of the big list under ``--quick``.
QUICK_BULK_PODS = 3_000

BENCHMARKS = SUMMARISED
#: Where the chart of a whole run goes unless ``--chart`` says otherwise (git-ignored).
CHART_PATH = RESULTS_PATH.with_name("results.png")
#: Run only when named: a correctness check more than a measurement.
ON_REQUEST = ("crash", "soak")


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, with ``--quick`` folded into the durations."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Side-by-side benchmarks of yurthub on 127.0.0.1 (needs nginx and wrk; "
        "installs them with apt-get when run as root).",
    )
    parser.add_argument("benchmark", nargs="?", default=None, choices=BENCHMARKS + ON_REQUEST,
                        help="which benchmark to run (default: all, in this order)")  # fmt: skip
    parser.add_argument("--duration", type=_positive, default=None,
                        help="seconds of measurement per configuration (default 10, 1.5 with --quick; "
                        "soak: 300, 30 with --quick)")  # fmt: skip
    parser.add_argument("--connections", type=int, default=16,
                        help="concurrent keep-alive connections wrk holds open (default 16; autonomy's "
                        "10,000-pod list uses 4)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2,
                        help="wrk threads (default 2; at most --connections)")  # fmt: skip
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of unmeasured load before each measurement (default 1, 0.25 with --quick)")  # fmt: skip
    parser.add_argument("--cooldown", type=float, default=0.0,
                        help="seconds of rest before each timed configuration and restart (default 0): on a "
                        "burstable VM, whose hypervisor steals more of the CPUs the longer both are busy, "
                        "each row then starts alike")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None,
                        help="measure each configuration this many times, report the median (default 1; "
                        "flowcontrol: 3 of each limiter setting, interleaved, 1 with --quick)")  # fmt: skip
    parser.add_argument("--turns", type=int, default=None,
                        help="proxy-list: cut each configuration's --duration into this many "
                        "turns, the configurations alternating (default 5, 1 with --quick): a shared VM's "
                        "speed changes every few seconds, and alternating turns give each the same mix")  # fmt: skip
    parser.add_argument("--events", type=int, default=None,
                        help="autonomy: watch events per relay run (default 20000, 5000 with --quick)")  # fmt: skip
    parser.add_argument("--relay-runs", type=int, default=None,
                        help="autonomy: relay runs per path per round (default 3, 1 with --quick)")  # fmt: skip
    parser.add_argument("--steady", type=_positive, default=None,
                        help="failover: seconds of load before the preferred cloud stops (default 3, 1 with --quick)")  # fmt: skip
    parser.add_argument("--down", type=_positive, default=None,
                        help="failover: seconds the preferred cloud stays stopped (default 6, 1.5 with --quick)")  # fmt: skip
    parser.add_argument("--up", type=_positive, default=None,
                        help="failover: seconds of load after its restart (default 10, 2.5 with --quick; "
                        "longer than 1.5 x --return-grace to see watches come back)")  # fmt: skip
    parser.add_argument("--watches", type=int, default=None,
                        help="failover: watches open through each proxy (default 20); soak: watches "
                        "held open (default 500)")  # fmt: skip
    parser.add_argument("--rate", type=_positive, default=200.0,
                        help="soak: GETs per second (default 200)")  # fmt: skip
    parser.add_argument("--return-grace", type=_positive, default=None,
                        help="failover: yurthub's healthCheck.returnGraceSeconds (default 5, 1 with --quick)")  # fmt: skip
    parser.add_argument("--kills", type=int, default=20,
                        help="crash: SIGKILLs of yurthub, each followed by a restart and the checks (default 20)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1,
                        help="crash: seed of the random kill moments (default 1)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="smoke run of about a minute, no verdicts: 1.5 s per configuration, fewer "
                        "watch events, rounds and failover seconds")  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS_PATH,
                        help=f"where to write the JSON results (default {RESULTS_PATH})")  # fmt: skip
    parser.add_argument("--chart", type=Path, default=None,
                        help="where a whole run writes its PNG chart (default: results.png beside "
                        "--results, so bench/results.png)")  # fmt: skip
    parser.add_argument("--keep-temp", action="store_true",
                        help="keep the temp dir (configs, logs, cache) for inspection")  # fmt: skip
    args = parser.parse_args(argv)
    args.soak_duration = args.duration or (30.0 if args.quick else 300.0)
    args.soak_watches = 500 if args.watches is None else args.watches
    if args.watches is None:
        args.watches = 20
    if args.duration is None:
        args.duration = 1.5 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 0.25 if args.quick else 1.0
    if args.chart is None:
        args.chart = args.results.with_name("results.png")
    if args.cooldown < 0:
        parser.error("--cooldown must be at least 0")
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.turns is None:
        args.turns = 1 if args.quick else 5
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    args.flowcontrol_rounds = args.rounds or (1 if args.quick else 3)
    args.rounds = args.rounds or 1
    if args.events is None:
        args.events = 5_000 if args.quick else 20_000
    if args.relay_runs is None:
        args.relay_runs = 1 if args.quick else 3
    if args.events < 1 or args.relay_runs < 1:
        parser.error("--events and --relay-runs must be at least 1")
    args.threads = max(1, min(args.threads, args.connections))
    # The 10,000-pod rows of autonomy run at least 10 s (yurthub's first answers to 4
    # concurrent requests take a while); a smoke run settles for its --duration plus 1 s.
    args.bulk_min_duration = args.duration + 1.0 if args.quick else autonomy.BULK_MIN_DURATION
    # A smoke run does not wait out 3 s answers of the slow upstream per burst.
    args.burst_delay = 1.0 if args.quick else 3.0
    timeline = (
        ("steady", 3.0, 1.0),
        ("down", 6.0, 1.5),
        ("up", 10.0, 2.5),
        ("return_grace", 5.0, 1.0),
    )
    for name, full, quick in timeline:
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.watches < 0:
        parser.error("--watches must be at least 0")
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    return args


def _output(args: argparse.Namespace) -> dict[str, Any]:
    """The `OutputSettings` fields every benchmark takes from the command line."""
    return {"results_path": args.results, "keep_temp": args.keep_temp}


def _wrk(args: argparse.Namespace) -> dict[str, Any]:
    """The `WrkSettings` fields of the benchmarks that load with wrk."""
    return {
        **_output(args),
        "duration": args.duration,
        "warmup": args.warmup,
        "cooldown": args.cooldown,
        "connections": args.connections,
        "threads": args.threads,
        "turns": args.turns,
    }


def _run_one(name: str, args: argparse.Namespace) -> int:
    if name == "soak":
        return soak.run(
            soak.Settings(
                duration=args.soak_duration, watches=args.soak_watches, rate=args.rate, settle=100.0,
                **_output(args),
            )
        )  # fmt: skip
    if name == "crash":
        return crash.run(crash.Settings(kills=args.kills, seed=args.seed, **_output(args)))
    if name == "flowcontrol":
        return flowcontrol.run(
            flowcontrol.Settings(rounds=args.flowcontrol_rounds, delay=args.burst_delay, **_wrk(args))
        )
    if name == "failover":
        return failover.run(
            failover.Settings(
                steady=args.steady, down=args.down, up=args.up, connections=args.connections,
                watches=args.watches, return_grace=args.return_grace, **_output(args),
            )
        )  # fmt: skip
    if name == "proxy-list":
        return proxy_list.run(proxy_list.Settings(rounds=args.rounds, **_wrk(args)))
    return autonomy.run(
        autonomy.Settings(
            rounds=args.rounds,
            events=args.events,
            relay_runs=args.relay_runs,
            # The smoke run caches 3,000 pods, not 10,000: the same paths, a third of the
            # seeding and caching time (most of a quick run).
            pods=QUICK_BULK_PODS if args.quick else autonomy.Settings.pods,
            bulk_min_duration=args.bulk_min_duration,
            **_wrk(args),
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmark (or all) and return the process exit status: the first
    of 130 (interrupted) or 2 (tools missing) stops at once; else the worst status. A run
    of all of them ends with the summary and its chart."""
    args = parse_args(argv)
    if args.benchmark:
        return _run_one(args.benchmark, args)
    started, (_, steal_before) = time.monotonic(), machine_cpu_seconds()
    saved: dict[str, dict[str, Any] | None] = {}
    durations: dict[str, float] = {}
    worst = 0
    for n, name in enumerate(BENCHMARKS):
        print(("\n" if n else "") + f"=== {name} ===", flush=True)
        began = time.monotonic()
        status = _run_one(name, args)
        durations[name] = time.monotonic() - began
        if status in (2, 130):
            return status
        worst = max(worst, status)
        # A benchmark saves its report exactly when it returns 0: read back this run's.
        saved[name] = load_results(args.results).get(name) if status == 0 else None
    elapsed = time.monotonic() - started
    steal = 100 * (machine_cpu_seconds()[1] - steal_before) / elapsed
    summary = build_summary(
        saved, quick=args.quick, elapsed_s=elapsed, durations_s=durations, steal_percent=steal
    )
    print_summary(summary)
    save_results(args.results, summary)
    return max(worst, _draw(summary, args.chart, print))


def _draw(summary: dict[str, Any], path: Path, emit: Callable[[str], None]) -> int:
    """Write the chart; 1 when it cannot be drawn (matplotlib missing, say)."""
    try:
        from bench.chart import draw_chart

        draw_chart(summary, path)
    except ImportError as e:
        print(f"bench: no chart ({e}); pip install matplotlib, or -e '.[bench]'", file=sys.stderr)
        return 1
    emit(f"\nsummary written to the results, chart to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
