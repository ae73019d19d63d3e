"""Benchmark: failover under load. The preferred cloud is stopped and restarted while 16
connections do GETs and watches are open, through yurthub and through nginx configured as
kubespray's ``nginx-proxy``, side by side in one run.

One run on 127.0.0.1 starts, each in its own process group:

- two clouds: `bench.cloud` processes (the simulated kube-apiserver), seeded identically
  with a few pods in namespace ``small`` (so both have the same resourceVersions and a
  watch can move from one to the other), each with its control port;
- yurthub: ``twistd --nodaemon yurthub`` with both clouds in ``servers`` (the preferred
  first), ``loadBalancing: priority`` and probes every second; log level warn;
- nginx as kubespray's ``nginx-proxy`` (``loadbalancer/nginx.conf.j2``): the L4 ``stream``
  proxy, ``least_conn`` over the same two clouds, ``proxy_timeout 10m``,
  ``proxy_connect_timeout 1s``, ``worker_processes 1``.

Per proxy, yurthub first: `bench.loadclient` holds ``--connections`` keep-alive
connections doing ``GET /api/v1/namespaces/small/pods`` as kubelet, back to back, and
``--watches`` watchers with a User-Agent of their own; once all are going, ``steady``
seconds, then the preferred cloud stops listening (``POST /stop``: every connection
dropped, as if it died), ``down`` seconds, it listens again (``POST /start``), ``up``
seconds more. The load client's record of every success and failure, each watcher's
open/close history and the clouds' request counts by User-Agent give the figures:
requests, failures, the longest gap without a success, how soon the watches were moved
off the stopped cloud and how soon they came back to it.

Targets: yurthub fails no request; its watches are open again, on the other cloud, within
``intervalSeconds`` + 1 s of the stop. PASS/FAIL is printed; the exit status stays 0 when
it measured, whatever the verdicts.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench import cloud as cloud_process
from bench import failover_report as reporting
from bench import nginx as nginx_conf
from bench.autonomy import REPO_ROOT, Cloud, _read_lines, _with_repo_root
from bench.loadclient import DONE_MARKER, READY_MARKER, REQUEST_HEADERS, WATCH_AGENT
from bench.procs import Child, ChildFailed, free_port, http_get, wait_for_status
from bench.report import git_state
from bench.results import save_results
from bench.runs import (
    BenchError,
    OutputSettings,
    Run,
    metric_samples,
    signals_interrupt,
    twistd_path,
    yurthub_diagnostics,
)
from bench.tools import MissingTools, Tools, ensure_tools

PODS_PATH = f"/api/v1/namespaces/{cloud_process.SMALL_NAMESPACE}/pods"

#: Bounds of every wait.
CLOUD_TIMEOUT = 60.0
YURTHUB_TIMEOUT = 30.0
HEALTHY_TIMEOUT = 20.0
READY_TIMEOUT = 30.0
#: Metrics poll period while yurthub is measured (when it saw each cloud go and come back).
HEALTH_POLL = 0.1


@dataclass(frozen=True)
class Settings(OutputSettings):
    """What one failover run measures and how."""

    #: Seconds of load before the stop, with the preferred cloud down, and after its restart.
    steady: float = 3.0
    down: float = 6.0
    up: float = 10.0
    connections: int = 16
    watches: int = 20
    #: Pods in namespace ``small`` of each cloud (the GET's answer).
    pods: int = 10
    #: yurthub's ``healthCheck``: probe period, and the new ``returnGraceSeconds``.
    interval: float = 1.0
    return_grace: float = 5.0
    #: The load client's socket timeout per request.
    request_timeout: float = 5.0


# --- processes ------------------------------------------------------------------------------


def _start_cloud(run: Run, name: str, settings: Settings) -> Cloud:
    port, control = free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.cloud",
        "--port",
        str(port),
        "--control-port",
        str(control),
        "--pods",
        "0",
        "--small-pods",
        str(settings.pods),
        "--event-pods",
        "0",
    ]
    env = dict(os.environ, PYTHONPATH=_with_repo_root(), PYTHONUNBUFFERED="1")
    child = run.start(Child(name, argv, run.temp / f"{name}.out", cwd=REPO_ROOT, env=env))
    return Cloud(child, port, control)


def yurthub_config(clouds: list[Cloud], settings: Settings, *, grace: bool) -> str:
    """yurthub's config file: both clouds, the preferred first, priority, probes every
    ``interval`` seconds flipping on one result; ``returnGraceSeconds`` when ``grace``."""
    servers = ", ".join(f"http://127.0.0.1:{c.port}" for c in clouds)
    extra = f", returnGraceSeconds: {settings.return_grace:g}" if grace else ""
    return (
        f"nodeName: {cloud_process.NODE}\n"
        f"servers: [{servers}]\n"
        "loadBalancing: priority\n"
        f"healthCheck: {{intervalSeconds: {settings.interval:g}, timeoutSeconds: 1, "
        f"healthyThreshold: 1, unhealthyThreshold: 1{extra}}}\n"
    )


class Hub:
    """yurthub with several servers: its process, ports and per-backend view."""

    def __init__(self, child: Child, proxy_port: int, hub_port: int) -> None:
        self.child = child
        self.proxy_port = proxy_port
        self.hub_url = f"http://127.0.0.1:{hub_port}"

    def samples(self, name: str, label: str = "server") -> dict[str, float]:
        """Values of metric ``name`` by its ``label`` (``server``: a backend URL)."""
        _, text = http_get(self.hub_url + "/metrics", timeout=10)
        return {
            labels.get(label, ""): value
            for metric, labels, value in metric_samples(text.decode(errors="replace"))
            if metric == name
        }

    def healthy(self) -> dict[str, bool]:
        return {url: v > 0 for url, v in self.samples("yurthub_backend_healthy").items()}

    def wait_all_healthy(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen: dict[str, bool] = {}
        while time.monotonic() < deadline:
            self.child.check_alive()
            try:
                seen = self.healthy()
            except OSError:
                seen = {}
            if len(seen) >= count and all(seen.values()):
                return
            time.sleep(0.1)
        raise BenchError(
            f"yurthub did not report {count} healthy backends within {timeout:.0f}s: {seen}"
        )


def _start_yurthub(
    run: Run, clouds: list[Cloud], settings: Settings, emit: Callable[[str], None]
) -> tuple[Hub, bool]:
    """Start yurthub with ``returnGraceSeconds``; a yurthub that refuses the key is started
    again without it. (hub, whether the grace key was accepted)."""
    proxy_port, hub_port = free_port(), free_port()
    for grace in (True, False):
        config = run.temp / "yurthub.yaml"
        config.write_text(yurthub_config(clouds, settings, grace=grace))
        argv = [
            twistd_path(),
            "--nodaemon",
            "--pidfile=",
            "yurthub",
            "--config",
            str(config),
            "--proxy-listen",
            f"tcp:{proxy_port}:interface=127.0.0.1",
            "--hub-listen",
            f"tcp:{hub_port}:interface=127.0.0.1",
            "--secure-listen",
            "",
            "--cache-dir",
            str(run.cache_dir()),
            "--log-level",
            "warn",
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = run.temp / f"yurthub{'' if grace else '-nograce'}.out"
        child = run.start(Child("yurthub", argv, log, cwd=run.temp, env=env))
        hub = Hub(child, proxy_port, hub_port)
        try:
            wait_for_status(child, hub.hub_url + "/v1/readyz", timeout=YURTHUB_TIMEOUT)
        except ChildFailed:
            if grace and not child.alive() and "returnGrace" in child.log_tail():
                emit(
                    "bench: this yurthub refuses healthCheck.returnGraceSeconds; running without it"
                )
                run.children.remove(child)
                continue
            raise
        hub.wait_all_healthy(len(clouds), HEALTHY_TIMEOUT)
        return hub, grace
    raise AssertionError("unreachable")


class HealthWatch:
    """Polls yurthub's view of each backend in a thread; records every change with its
    time (CLOCK_MONOTONIC)."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._stop = threading.Event()
        self.changes: list[tuple[float, str, bool]] = []
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        last: dict[str, bool] = {}
        while not self._stop.wait(HEALTH_POLL):
            try:
                now = self._hub.healthy()
            except OSError:
                self.errors += 1
                continue
            at = time.monotonic()
            for url, healthy in now.items():
                if last.get(url) != healthy:
                    self.changes.append((at, url, healthy))
            last = now


# --- one proxy under load ---------------------------------------------------------------------


def _sleep_until(moment: float, client: Child) -> None:
    while True:
        left = moment - time.monotonic()
        if left <= 0:
            return
        client.check_alive()
        time.sleep(min(left, 0.05))


def _counts(clouds: list[Cloud]) -> list[dict[str, int]]:
    return [cloud.requests_by_agent() for cloud in clouds]


def load_once(
    run: Run,
    key: str,
    port: int,
    clouds: list[Cloud],
    rv: str,
    settings: Settings,
    emit: Callable[[str], None],
) -> dict[str, Any]:
    """The timeline against the proxy on ``port``: load and watches, stop the preferred
    cloud, restart it; the load client's records, the times of the stop and the start,
    and the clouds' request counts at each boundary."""
    preferred = clouds[0]
    total = settings.steady + settings.down + settings.up
    out = run.temp / f"load-{key}.json"
    argv = [
        sys.executable,
        "-m",
        "bench.loadclient",
        "--port",
        str(port),
        "--path",
        PODS_PATH,
        "--connections",
        str(settings.connections),
        "--watches",
        str(settings.watches),
        "--watch-path",
        f"{PODS_PATH}?watch=true&resourceVersion={rv}",
        "--watch-agent",
        WATCH_AGENT,
        "--duration",
        f"{total:g}",
        "--request-timeout",
        f"{settings.request_timeout:g}",
        "--ready-timeout",
        f"{READY_TIMEOUT:g}",
        "--out",
        str(out),
    ]
    env = dict(os.environ, PYTHONPATH=_with_repo_root(), PYTHONUNBUFFERED="1")
    counts = {"before": _counts(clouds)}
    client = run.start(
        Child(f"load client ({key})", argv, run.temp / f"load-{key}.out", cwd=REPO_ROOT, env=env)
    )
    ready: float | None = None
    deadline = time.monotonic() + READY_TIMEOUT + 10
    while ready is None and time.monotonic() < deadline:
        for line in _read_lines(client.log_path):
            if line.startswith(READY_MARKER):
                ready = float(json.loads(line[len(READY_MARKER) :])["monotonic"])
            elif line.startswith(DONE_MARKER):
                raise BenchError(f"{key}: the load client did not get going: {line}")
        if ready is None:
            client.check_alive()
            time.sleep(0.02)
    if ready is None:
        raise BenchError(f"{key}: the load client was not ready:\n{client.log_tail()}")
    counts["ready"] = _counts(clouds)
    emit(f"bench:   load and {settings.watches} watches going; {settings.steady:g} s steady ...")
    _sleep_until(ready + settings.steady, client)
    moments: dict[str, float] = {}
    calls: dict[str, float] = {}
    steps = (
        ("stop", preferred.stop_listening, f"preferred cloud stopped; {settings.down:g} s ..."),
        ("start", preferred.start_listening, f"preferred cloud back; {settings.up:g} s ..."),
    )
    for name, call, what in steps:
        if name == "start":
            _sleep_until(moments["stop"] + settings.down, client)
        counts[name] = _counts(clouds)
        moments[name] = time.monotonic()
        call()
        calls[name] = round(time.monotonic() - moments[name], 3)
        emit(f"bench:   {what}")
    assert client.process is not None
    try:
        client.process.wait(
            timeout=max(0.0, ready + total - time.monotonic()) + settings.request_timeout + 15
        )
    except Exception as e:
        raise BenchError(f"{key}: the load client did not finish:\n{client.log_tail()}") from e
    run.children.remove(client)
    counts["end"] = _counts(clouds)
    try:
        document: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(
            f"{key}: no result from the load client ({e}):\n{client.log_tail()}"
        ) from e
    return {
        "client": document,
        "stop_monotonic": moments["stop"],
        "start_monotonic": moments["start"],
        "stop_call_seconds": calls["stop"],
        "start_call_seconds": calls["start"],
        "cloud_counts": counts,
    }


def _watch_rv(port: int) -> str:
    """The resourceVersion of the pod list through the proxy: where the watches start."""
    status, body = http_get(
        f"http://127.0.0.1:{port}{PODS_PATH}",
        headers=REQUEST_HEADERS,
        timeout=10,
    )
    if status != 200:
        raise BenchError(f"GET {PODS_PATH} through port {port} answered {status}: {body[:300]!r}")
    return str(json.loads(body)["metadata"]["resourceVersion"])


# --- the run -------------------------------------------------------------------------------


def run(settings: Settings, emit: Callable[[str], None] = print) -> int:
    """Run the failover benchmark; 0 when it measured (whatever the verdicts), 1 when it
    could not, 2 when nginx is missing, 130 when interrupted."""
    try:
        tools = ensure_tools()
    except MissingTools as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    with signals_interrupt():
        bench_run = Run(tools, keep_temp=settings.keep_temp, prefix="yurthub-failover-")
        try:
            report = _run(bench_run, tools, settings, emit)
            reporting.print_report(report, emit)
            save_results(settings.results_path, report)
            emit(f"\nresults written to {settings.results_path}")
            return 0
        except (BenchError, ChildFailed) as e:
            print(f"bench: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; stopping every process", file=sys.stderr)
            return 130
        finally:
            bench_run.close()


def _run(
    bench_run: Run, tools: Tools, settings: Settings, emit: Callable[[str], None]
) -> dict[str, Any]:
    measured = git_state()
    emit(
        f"bench: starting two clouds ({settings.pods} pods each in {cloud_process.SMALL_NAMESPACE}) ..."
    )
    clouds = [_start_cloud(bench_run, name, settings) for name in ("cloud-a", "cloud-b")]
    for cloud in clouds:
        cloud.wait_ready(CLOUD_TIMEOUT)
    versions = [cloud.state()["resourceVersion"] for cloud in clouds]
    if len(set(versions)) != 1:
        raise BenchError(f"the clouds were seeded differently (resourceVersions {versions})")
    urls = [f"http://127.0.0.1:{c.port}" for c in clouds]
    rows: list[dict[str, Any]] = []

    emit("bench: starting yurthub (priority: cloud-a, then cloud-b) ...")
    hub, grace = _start_yurthub(bench_run, clouds, settings, emit)
    emit("bench: yurthub under load ...")
    with HealthWatch(hub) as health:
        measured_hub = load_once(
            bench_run, "yurthub", hub.proxy_port, clouds, _watch_rv(hub.proxy_port), settings, emit
        )
    diagnostics = yurthub_diagnostics(hub.child, hub.hub_url, log_lines=60)
    for name, label in (
        ("backend_requests", "server"),
        ("failovers", "server"),
        ("streams_moved", "reason"),
    ):
        try:
            diagnostics[name] = hub.samples(f"yurthub_{name}_total", label)
        except OSError:
            pass
    hub.child.stop()
    bench_run.children.remove(hub.child)
    rows.append(
        reporting.analyse(
            "yurthub",
            "yurthub",
            measured_hub,
            settings,
            urls,
            health=health.changes,
            diagnostics=diagnostics,
        )
    )

    if tools.stream_module is None:
        emit("bench: this nginx has no stream module: the nginx stream (L4) row is skipped")
    else:
        emit("bench: starting nginx as kubespray's nginx-proxy (stream, least_conn over both) ...")
        port = free_port()
        nginx = bench_run.start_nginx(
            "stream",
            nginx_conf.stream_proxy_conf(
                bench_run.temp, port, [c.port for c in clouds], module=tools.stream_module
            ),
        )
        wait_for_status(nginx, f"http://127.0.0.1:{port}/readyz", timeout=YURTHUB_TIMEOUT)
        emit("bench: nginx stream (L4) under load ...")
        measured_nginx = load_once(
            bench_run, "nginx", port, clouds, _watch_rv(port), settings, emit
        )
        rows.append(
            reporting.analyse("nginx-stream", "nginx stream (L4)", measured_nginx, settings, urls)
        )

    return reporting.build_report(
        settings=asdict(settings)
        | {"results_path": str(settings.results_path), "return_grace_accepted": grace},
        rows=rows,
        tools={
            "nginx": tools.nginx_version,
            "nginx_stream_module": tools.stream_module or "built in",
        },
        yurthub_git=measured,
    )
