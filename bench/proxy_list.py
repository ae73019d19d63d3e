"""Benchmark: a kubelet-sized pod list through yurthub, next to nginx and to no proxy.

One run on 127.0.0.1 starts, each in its own process group and temp prefix:

- the upstream: nginx serving a ~24 KiB ``PodList`` (100 pods) as a static file at
  ``/api/v1/pods``, so the upstream is never the bottleneck;
- ``nginx proxy``: kubespray's localhost apiserver proxy as an HTTP reverse proxy with
  upstream keep-alive, ``worker_processes 1`` (the anchor row);
- ``nginx stream (L4)``: kubespray's ``nginx-proxy`` as it ships, a TCP stream proxy,
  ``worker_processes 1`` (extra row; skipped when nginx has no stream module);
- yurthub: ``twistd --nodaemon yurthub`` pointed at the upstream (one process, one thread);
- ``twisted.web static (floor)``: `bench.floor`, twisted.web serving the same bytes from
  memory with no upstream at all (extra row): the most yurthub's HTTP stack allows
  before yurthub does anything, so the table shows how much of the gap is Twisted's.

It checks that each configuration returns the file byte for byte, then for each one
warms up for a second and runs ``wrk`` (16 connections, 10 s by default) with kubelet's
User-Agent. It prints the table, the yurthub / nginx-proxy throughput ratio against the
0.25 target (PASS/FAIL; the exit status stays 0), and writes ``bench/results.json``.
Every process is stopped on the way out, including on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import nginx as nginx_conf
from bench import report as reporting
from bench.autonomy import REPO_ROOT, _with_repo_root
from bench.measure import Row, Target, measure_interleaved, median_rows
from bench.pods import pod_list_body
from bench.procs import Child, ChildFailed, free_port, http_get, wait_for_status
from bench.results import save_results
from bench.runs import BenchError, Run, WrkSettings, signals_interrupt, yurthub_diagnostics
from bench.tools import MissingTools, Tools, ensure_tools
from bench.wrk import WrkFailed, write_script

#: What wrk and the correctness check send to every configuration (kubelet's identity,
#: so yurthub treats the requests as it would kubelet's list of its pods).
REQUEST_HEADERS = {
    "User-Agent": "kubelet/v1.31.0",
    "Accept": "application/json",
}

PATH = "/api/v1/pods"

#: The upstream nginx takes every core: it is never the bottleneck.
UPSTREAM_WORKERS = "auto"

#: nginx worker count of the proxy instances: one, as yurthub is one single-threaded process.
PROXY_WORKERS = 1


@dataclass(frozen=True)
class Settings(WrkSettings):
    """What one run measures and how."""

    #: Measure every configuration this many times (in turn) and report each one's median
    #: round, which steadies the figures on a shared or noisy machine.
    rounds: int = 1


@dataclass(frozen=True)
class _Servers:
    """What `_start_all` started: the targets in measuring order, and the two processes
    the measurement looks at besides each target's own."""

    targets: list[Target]
    upstream: Child
    yurthub: Child
    hub_url: str


def _start_all(run: Run, body: bytes) -> _Servers:
    """Start the upstream, the proxies and yurthub, each ready when this returns."""
    www = run.temp / "www"
    www.mkdir(mode=0o755)
    pods_file = www / "pods.json"
    pods_file.write_bytes(body)
    pods_file.chmod(0o644)

    up_port = free_port()
    upstream = run.start_nginx(
        "upstream", nginx_conf.upstream_conf(run.temp, up_port, pods_file, workers=UPSTREAM_WORKERS)
    )
    up_url = f"http://127.0.0.1:{up_port}"
    wait_for_status(upstream, f"{up_url}/readyz", timeout=15)
    targets = [
        Target("direct", "upstream (direct)", up_url + PATH, upstream, "wrk -> upstream nginx")
    ]

    proxy_port = free_port()
    proxy = run.start_nginx(
        "proxy", nginx_conf.http_proxy_conf(run.temp, proxy_port, up_port, workers=PROXY_WORKERS)
    )
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    wait_for_status(proxy, f"{proxy_url}/readyz", timeout=15)
    targets.append(
        Target("nginx-proxy", "nginx proxy", proxy_url + PATH, proxy,
               "http reverse proxy, upstream keepalive 32, worker_processes 1")
    )  # fmt: skip

    if run.tools.stream_module is not None:
        stream_port = free_port()
        stream = run.start_nginx(
            "stream",
            nginx_conf.stream_proxy_conf(
                run.temp,
                stream_port,
                up_port,
                module=run.tools.stream_module,
                workers=PROXY_WORKERS,
            ),
        )
        stream_url = f"http://127.0.0.1:{stream_port}"
        wait_for_status(stream, f"{stream_url}/readyz", timeout=15)
        targets.append(
            Target("nginx-stream", "nginx stream (L4)", stream_url + PATH, stream,
                   "kubespray nginx-proxy as shipped: TCP stream proxy, worker_processes 1")
        )  # fmt: skip

    yurthub_port, hub_port = free_port(), free_port()
    yurthub = run.start_yurthub(up_port, yurthub_port, hub_port)
    wait_for_status(yurthub, f"http://127.0.0.1:{hub_port}/v1/readyz", timeout=30)
    targets.append(
        Target("yurthub", "yurthub", f"http://127.0.0.1:{yurthub_port}{PATH}", yurthub,
               "twistd yurthub, one process, User-Agent kubelet")
    )  # fmt: skip
    targets.append(_start_floor(run, "floor", "twisted.web static (floor)", ["--file", str(pods_file)],
                                "twisted.web serving the same bytes from memory, no upstream: one process, one thread"))
    targets.append(_start_floor(run, "relay-floor", "bare relay (floor)", ["--upstream", up_url],
                                "yurthub's lean server, dispatch and upstream client, none of its per-request work"))
    return _Servers(targets, upstream, yurthub, f"http://127.0.0.1:{hub_port}")


def _start_floor(run: Run, key: str, label: str, how: list[str], note: str) -> Target:
    """A `bench.floor` process (``how``: its ``--file`` or ``--upstream``), ready."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.floor", "--port", str(port), *how]
    env = dict(os.environ, PYTHONPATH=_with_repo_root())
    floor = run.start(Child(key, argv, run.temp / f"{key}.out", cwd=REPO_ROOT, env=env))
    url = f"http://127.0.0.1:{port}"
    wait_for_status(floor, f"{url}/readyz", timeout=30)
    return Target(key, label, url + PATH, floor, note)


def _verify(targets: list[Target], body: bytes) -> None:
    """Every configuration must return the served file byte for byte before it is timed."""
    for target in targets:
        status, got = http_get(target.url, headers=REQUEST_HEADERS, timeout=10)
        if status != 200 or got != body:
            where = next(
                (i for i, (a, b) in enumerate(zip(got, body, strict=False)) if a != b),
                min(len(got), len(body)),
            )
            raise BenchError(
                f"{target.label}: GET {target.url} answered {status} with {len(got)} bytes, "
                f"expected 200 with the {len(body)}-byte file; first difference at byte {where}: "
                f"{got[max(0, where - 40) : where + 80]!r}"
            )


def _report(
    rows: list[Row],
    rounds: list[list[Row]],
    settings: Settings,
    tools: Tools,
    body: bytes,
    diagnostics: dict[str, Any],
) -> dict[str, Any]:
    return reporting.build_report(
        rows,
        rounds,
        request={"path": PATH, "headers": REQUEST_HEADERS, "body_bytes": len(body), "pods": 100},
        settings={
            "duration_s": settings.duration,
            "warmup_s": settings.warmup,
            "connections": settings.connections,
            "wrk_threads": settings.threads,
            "rounds": settings.rounds,
            "turns": settings.turns,
            "nginx_proxy_worker_processes": PROXY_WORKERS,
            "upstream_worker_processes": UPSTREAM_WORKERS,
        },
        tools={"nginx": tools.nginx_version, "wrk": tools.wrk_version},
        diagnostics=diagnostics,
    )


def run(settings: Settings, emit: Callable[[str], None] = print) -> int:
    """Run the whole benchmark; 0 when it measured (whatever the verdict), 1 when it could
    not, 2 when nginx or wrk are missing and cannot be installed, 130 when interrupted."""
    try:
        tools = ensure_tools()
    except MissingTools as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    with signals_interrupt():
        bench_run = Run(tools, keep_temp=settings.keep_temp)
        try:
            body = pod_list_body()
            servers = _start_all(bench_run, body)
            _verify(servers.targets, body)
            emit(
                f"bench: all {len(servers.targets)} configurations return the {len(body):,}-byte list byte for byte"
            )
            load = settings.load(tools.wrk, write_script(bench_run.temp), REQUEST_HEADERS)
            rounds: list[list[Row]] = []
            for target in servers.targets:
                emit(f"bench:   {target.label}: {target.note}")
            for number in range(1, settings.rounds + 1):
                of = f" (round {number}/{settings.rounds})" if settings.rounds > 1 else ""
                emit(
                    f"bench: measuring all {len(servers.targets)} configurations{of}, "
                    f"{settings.turns} alternating turns of {settings.duration / settings.turns:g} s each ..."
                )
                rounds.append(
                    measure_interleaved(
                        load, servers.targets, servers.upstream, bench_run.children, settings.turns
                    )
                )
            rows = median_rows(rounds)
            diagnostics = yurthub_diagnostics(servers.yurthub, servers.hub_url)
            report = _report(rows, rounds, settings, tools, body, diagnostics)
            reporting.print_report(report, rows, emit)
            save_results(settings.results_path, report)
            emit(f"\nresults written to {settings.results_path}")
            return 0
        except (BenchError, ChildFailed, WrkFailed) as e:
            print(f"bench: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; stopping every process", file=sys.stderr)
            return 130
        finally:
            bench_run.close()
