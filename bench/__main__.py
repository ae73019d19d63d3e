"""``python -m bench [proxy-list] [--duration S] [--connections N] [--quick] ...``

The command line of the benchmarks. ``proxy-list`` (the default, and so far the only one)
is `bench.proxy_list`: yurthub next to nginx and to no proxy, serving a 100-pod list.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import proxy_list


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
    parser.add_argument("benchmark", nargs="?", default="proxy-list", choices=["proxy-list"],
                        help="which benchmark to run (default: proxy-list)")  # fmt: skip
    parser.add_argument("--duration", type=_positive, default=None,
                        help="seconds of measurement per configuration (default 10, 3 with --quick)")  # fmt: skip
    parser.add_argument("--connections", type=int, default=16,
                        help="concurrent keep-alive connections wrk holds open (default 16)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2,
                        help="wrk threads (default 2; at most --connections)")  # fmt: skip
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of unmeasured load before each measurement (default 1)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each configuration this many times, report the median (default 1)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 s per configuration")  # fmt: skip
    parser.add_argument("--results", type=Path, default=proxy_list.RESULTS_PATH,
                        help=f"where to write the JSON results (default {proxy_list.RESULTS_PATH})")  # fmt: skip
    parser.add_argument("--keep-temp", action="store_true",
                        help="keep the temp dir (configs, logs, cache) for inspection")  # fmt: skip
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.threads = max(1, min(args.threads, args.connections))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmark and return the process exit status."""
    args = parse_args(argv)
    settings = proxy_list.Settings(
        duration=args.duration,
        connections=args.connections,
        threads=args.threads,
        warmup=args.warmup,
        rounds=args.rounds,
        results_path=args.results,
        keep_temp=args.keep_temp,
    )
    return proxy_list.run(settings)


if __name__ == "__main__":
    sys.exit(main())
