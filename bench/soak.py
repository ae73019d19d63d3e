"""Benchmark: soak. Many open watches and a steady request rate through one yurthub for
minutes, watching its file descriptors and memory.

- the cloud: a `bench.cloud` process (the simulated kube-apiserver) with ``--list-pods``
  pods in namespace ``small`` (the GET's answer) and ``--event-pods`` in ``events``,
  updated ``--events-per-second`` times a second (a trickle of MODIFIED watch events,
  each delivered to every watch);
- yurthub: ``twistd --nodaemon yurthub`` (`bench.runs.Run.start_yurthub`, log level warn,
  its own cache dir) in front of it;
- the load: `bench.soakclient`, one single-threaded process holding ``--watches`` watches
  of the ``events`` pods open and sending ``GET`` of the ``small`` pods at ``--rate`` per
  second, both with ``User-Agent: kubelet`` (so yurthub caches the answers and events too).

Every ``--sample`` seconds the bench reads yurthub's open descriptors (``/proc/<pid>/fd``,
split into client connections, connections to the cloud and the rest by reading
``/proc/net/tcp``) and its RSS (``VmRSS``). The baseline is taken after yurthub is ready
and has answered a few requests, before the load. After the load the bench waits up to
``--settle`` seconds for the descriptors to come back to that baseline (idle pooled
connections to the cloud close after yurthub's 90 s pool timeout).

Verdicts: zero errors (client-side, see `bench.soakclient`); descriptors back to the
baseline; RSS flat within 10 % over the last 4 minutes of the run (the last 80 % when the
run is shorter than 5 minutes): (max - min) / min <= 0.10.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import cloud as cloud_process
from bench.autonomy import REPO_ROOT, Cloud, _read_lines, _with_repo_root
from bench.procs import Child, ChildFailed, free_port, http_get, wait_for_status
from bench.report import git_state
from bench.results import save_results
from bench.runs import BenchError, OutputSettings, Run, signals_interrupt, yurthub_diagnostics
from bench.soakclient import DONE_MARKER, READY_MARKER, raise_fd_limit

CLOUD_TIMEOUT = 60.0
YURTHUB_TIMEOUT = 30.0
#: RSS may move this much (relative to its minimum) over the measured window.
RSS_FLAT = 0.10
#: The RSS window: the last 4 minutes of the run, or its last 80 % if shorter than 5.
RSS_WINDOW = 240.0


@dataclass(frozen=True)
class Settings(OutputSettings):
    """What one soak run does."""

    duration: float = 300.0
    watches: int = 500
    rate: float = 200.0
    #: Pods in the GET's answer, and the watched pods updated at the trickle rate.
    list_pods: int = 10
    event_pods: int = 50
    events_per_second: float = 2.0
    #: Seconds between samples of yurthub's descriptors and RSS.
    sample: float = 5.0
    #: Seconds to wait after the load for the descriptors to come back to the baseline.
    settle: float = 100.0


def fd_count(pid: int) -> int:
    """Open descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _tcp_ports() -> dict[str, tuple[int, int]]:
    """Socket inode -> (local port, remote port) of every IPv4/IPv6 TCP socket."""
    out: dict[str, tuple[int, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            out[fields[9]] = (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16))
    return out


def fd_kinds(pid: int, proxy_port: int, cloud_port: int) -> dict[str, int]:
    """yurthub's descriptors by kind: ``clients`` (connections to its proxy port),
    ``cloud`` (connections to the cloud's API port) and ``other``."""
    ports = _tcp_ports()
    kinds = {"clients": 0, "cloud": 0, "other": 0}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        local, remote = ports.get(target[8:-1], (0, 0)) if target.startswith("socket:[") else (0, 0)
        if local == proxy_port and remote:
            kinds["clients"] += 1
        elif remote == cloud_port:
            kinds["cloud"] += 1
        else:
            kinds["other"] += 1
    return kinds


def _start_cloud(run: Run, settings: Settings) -> Cloud:
    port, control = free_port(), free_port()
    argv = [
        sys.executable, "-m", "bench.cloud",
        "--port", str(port), "--control-port", str(control),
        "--pods", "0", "--small-pods", str(settings.list_pods),
        "--event-pods", str(settings.event_pods), "--event-size", "1024",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=_with_repo_root(), PYTHONUNBUFFERED="1")
    child = run.start(Child("cloud", argv, run.temp / "cloud.out", cwd=REPO_ROOT, env=env))
    return Cloud(child, port, control)


def _marker(child: Child, marker: str) -> dict[str, Any] | None:
    for line in _read_lines(child.log_path):
        if line.startswith(marker):
            value: dict[str, Any] = json.loads(line[len(marker) :])
            return value
    return None


def _post_events(cloud: Cloud, count: int) -> None:
    request = urllib.request.Request(f"{cloud._control}/events?count={count}", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - 127.0.0.1
        response.read()


def run(settings: Settings, emit: Callable[[str], None] = print) -> int:
    """Run the soak; 0 when it measured (whatever the verdicts), 1 when it could not, 130
    when interrupted."""
    with signals_interrupt():
        bench_run = Run(None, keep_temp=settings.keep_temp, prefix="yurthub-soak-")  # type: ignore[arg-type]
        try:
            report = _run(bench_run, settings, emit)
            print_report(report, emit)
            save_results(settings.results_path, report)
            emit(f"\nresults written to {settings.results_path}")
            return 0
        except (BenchError, ChildFailed, OSError) as e:
            print(f"bench: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; stopping every process", file=sys.stderr)
            return 130
        finally:
            bench_run.close()


def _run(bench_run: Run, settings: Settings, emit: Callable[[str], None]) -> dict[str, Any]:
    measured = git_state()
    fd_limit = raise_fd_limit()  # inherited by yurthub and the cloud
    emit(f"bench: open-file limit {fd_limit}; starting the cloud ...")
    cloud = _start_cloud(bench_run, settings)
    cloud.wait_ready(CLOUD_TIMEOUT)
    proxy_port, hub_port = free_port(), free_port()
    emit("bench: starting yurthub ...")
    hub = bench_run.start_yurthub(cloud.port, proxy_port, hub_port, node_name=cloud_process.NODE)
    hub_url = f"http://127.0.0.1:{hub_port}"
    wait_for_status(hub, hub_url + "/v1/readyz", timeout=YURTHUB_TIMEOUT)
    list_path = f"/api/v1/namespaces/{cloud_process.SMALL_NAMESPACE}/pods"
    watch_path = (
        f"/api/v1/namespaces/{cloud_process.EVENTS_NAMESPACE}/pods?watch=true"
        "&allowWatchBookmarks=false&timeoutSeconds=3600"
    )
    proxy = f"http://127.0.0.1:{proxy_port}"
    for _ in range(5):
        code, body = http_get(proxy + list_path, headers={"User-Agent": "kubelet/v1.31.0"}, timeout=10)
        if code != 200 or b'"PodList"' not in body:
            raise BenchError(f"GET {list_path} through yurthub answered {code}: {body[:300]!r}")
    time.sleep(1.0)
    pid = hub.pid
    baseline_fds = fd_count(pid)
    baseline_kinds = fd_kinds(pid, proxy_port, cloud.port)
    baseline_rss = rss_mb(pid)
    emit(f"bench: yurthub pid {pid}: {baseline_fds} descriptors {baseline_kinds}, RSS {baseline_rss:.1f} MB")

    out = bench_run.temp / "soakclient.json"
    argv = [
        sys.executable, "-m", "bench.soakclient",
        "--port", str(proxy_port), "--path", list_path, "--watch-path", watch_path,
        "--watches", str(settings.watches), "--rate", f"{settings.rate:g}",
        "--duration", f"{settings.duration:g}", "--out", str(out),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=_with_repo_root(), PYTHONUNBUFFERED="1")
    client = bench_run.start(Child("soak client", argv, bench_run.temp / "soakclient.out", cwd=REPO_ROOT, env=env))
    emit(f"bench: opening {settings.watches} watches ...")
    deadline = time.monotonic() + 90
    ready = None
    while ready is None:
        ready = _marker(client, READY_MARKER)
        if ready is None:
            if not client.alive() or time.monotonic() > deadline:
                raise BenchError(f"the soak client did not get ready:\n{client.log_tail()}")
            hub.check_alive()
            time.sleep(0.2)
    started = time.monotonic()
    emit(
        f"bench: {settings.watches} watches open; {settings.rate:g} GETs/s and "
        f"{settings.events_per_second:g} pod updates/s for {settings.duration:g} s ..."
    )
    samples: list[dict[str, Any]] = []
    next_sample = started
    next_event = started
    event_period = 1.0 / settings.events_per_second if settings.events_per_second > 0 else 0.0
    last_line = started
    while client.alive():
        hub.check_alive()
        now = time.monotonic()
        if event_period and now >= next_event:
            _post_events(cloud, 1)
            next_event += event_period
        if now >= next_sample and now - started <= settings.duration + 1:
            samples.append(
                {"t": round(now - started, 1), "fds": fd_count(pid), "rss_mb": round(rss_mb(pid), 1)}
                | fd_kinds(pid, proxy_port, cloud.port)
            )
            next_sample += settings.sample
            if now - last_line >= 30:
                last_line = now
                s = samples[-1]
                emit(f"bench:   t={s['t']:.0f}s fds={s['fds']} (clients {s['clients']}, cloud {s['cloud']}) RSS {s['rss_mb']} MB")
        time.sleep(max(0.0, min(next_sample, next_event if event_period else next_sample) - time.monotonic()))
        if time.monotonic() - started > settings.duration + 120:
            raise BenchError("the soak client did not end")
    done = _marker(client, DONE_MARKER)
    if done is None or "error" in done or not out.exists():
        raise BenchError(f"the soak client failed:\n{client.log_tail()}")
    result = json.loads(out.read_text())
    emit("bench: load over; waiting for yurthub's descriptors to come back to the baseline ...")
    ended = time.monotonic()
    time.sleep(2.0)
    after_immediate = fd_count(pid)
    kinds_immediate = fd_kinds(pid, proxy_port, cloud.port)
    after = after_immediate
    while after > baseline_fds and time.monotonic() - ended < settings.settle:
        time.sleep(1.0)
        after = fd_count(pid)
    settled_seconds = time.monotonic() - ended
    kinds_after = fd_kinds(pid, proxy_port, cloud.port)
    diagnostics = yurthub_diagnostics(hub, hub_url, log_lines=40)
    return build_report(
        settings, measured, result, samples,
        baseline={"fds": baseline_fds, "rss_mb": round(baseline_rss, 1)} | baseline_kinds,
        after={
            "fds_2s": after_immediate, "kinds_2s": kinds_immediate,
            "fds": after, "kinds": kinds_after, "seconds": round(settled_seconds, 1),
        },
        diagnostics=diagnostics,
        fd_limit=fd_limit,
    )  # fmt: skip


def rss_window(samples: list[dict[str, Any]], duration: float) -> tuple[float, list[float]]:
    """The start of the RSS window (seconds into the run) and the RSS values in it."""
    start = duration - RSS_WINDOW if duration >= RSS_WINDOW / 0.8 else duration * 0.2
    return start, [s["rss_mb"] for s in samples if s["t"] >= start]


def build_report(
    settings: Settings,
    measured: dict[str, Any],
    result: dict[str, Any],
    samples: list[dict[str, Any]],
    *,
    baseline: dict[str, Any],
    after: dict[str, Any],
    diagnostics: dict[str, Any],
    fd_limit: int,
) -> dict[str, Any]:
    counts = result["counts"]
    window_start, window = rss_window(samples, settings.duration)
    rss_min, rss_max = (min(window), max(window)) if window else (0.0, 0.0)
    spread = (rss_max - rss_min) / rss_min if rss_min else 0.0
    errors = counts.get("errors", 0)
    fds_back = after["fds"] <= baseline["fds"]
    return {
        "benchmark": "soak",
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "yurthub_git": measured,
        "settings": asdict(settings) | {"results_path": str(settings.results_path)},
        "fd_limit": fd_limit,
        "client": result,
        "samples": samples,
        "figures": {
            "seconds": result["seconds"],
            "watches": settings.watches,
            "requests_ok": counts.get("requests_ok", 0),
            "requests_per_second": result["rate_achieved"],
            "request_latency_p50_s": result["latency_p50"],
            "request_latency_p99_s": result["latency_p99"],
            "events": counts.get("events", 0),
            "rewatches": counts.get("rewatches", 0),
            "errors": errors,
            "fds_baseline": baseline["fds"],
            "fds_peak": max((s["fds"] for s in samples), default=0),
            "fds_after_2s": after["fds_2s"],
            "fds_after": after["fds"],
            "fds_settled_seconds": after["seconds"],
            "rss_baseline_mb": baseline["rss_mb"],
            "rss_window_start_s": round(window_start, 1),
            "rss_window_min_mb": rss_min,
            "rss_window_max_mb": rss_max,
            "rss_window_spread": round(spread, 4),
        },
        "baseline": baseline,
        "after": after,
        "verdicts": {
            "zero errors": errors == 0,
            "descriptors back to baseline": fds_back,
            f"RSS flat within {RSS_FLAT:.0%}": bool(window) and spread <= RSS_FLAT,
        },
        "diagnostics": diagnostics,
    }


def print_report(report: dict[str, Any], emit: Callable[[str], None] = print) -> None:
    """The figures and the verdicts."""
    f = report["figures"]
    after = report["after"]
    rows = [
        ("duration s (from all watches open)", f"{f['seconds']:g}"),
        ("watches held open", f"{f['watches']:,}"),
        ("GETs answered 200", f"{f['requests_ok']:,} ({f['requests_per_second']:g}/s)"),
        ("GET latency p50 / p99 ms", f"{_ms(f['request_latency_p50_s'])} / {_ms(f['request_latency_p99_s'])}"),
        ("watch events received", f"{f['events']:,}"),
        ("watches ended by the server (re-opened)", f"{f['rewatches']:,}"),
        ("errors", f"{f['errors']:,}"),
        ("yurthub fds: baseline / peak", f"{f['fds_baseline']} / {f['fds_peak']}"),
        ("yurthub fds: 2 s after the load", f"{f['fds_after_2s']} {after['kinds_2s']}"),
        ("yurthub fds: after", f"{f['fds_after']} after {f['fds_settled_seconds']:g} s {after['kinds']}"),
        ("RSS MB: baseline", f"{f['rss_baseline_mb']:.1f}"),
        (f"RSS MB from t={f['rss_window_start_s']:g}s: min / max", f"{f['rss_window_min_mb']:.1f} / {f['rss_window_max_mb']:.1f} "
         f"(spread {f['rss_window_spread']:.1%})"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    emit("")
    for name, value in rows:
        emit(f"{name:<{width}}  {value}")
    emit("")
    for name, ok in report["verdicts"].items():
        emit(f"{name}: {'PASS' if ok else 'FAIL'}")
    errors = report["client"].get("errors") or []
    if errors:
        emit(f"first errors: {errors[:5]}")
    log = report["diagnostics"].get("log", "").strip()
    if log:
        emit("yurthub logged (warn and above, last lines):\n" + log)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"
