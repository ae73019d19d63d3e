"""Benchmark: yurthub's flow control. What the in-flight limiter costs, and whether it holds.

Two parts, on 127.0.0.1, every process in its own group:

1. Limiter overhead. proxy-list's scenario (nginx serving the 100-pod list as the
   upstream, wrk with 16 keep-alive connections, kubelet's User-Agent) against two
   yurthub processes started side by side on the same CPU:
   ``flowControl: {maxRequestsInFlight: 250}`` (the default, limiter on) and
   ``maxRequestsInFlight: 0`` (off), a fresh pair every round (a process can be slower
   than another of the same config for its whole life). Both are loaded at the same
   moment, a wrk each (`bench.measure.measure_together`), so every change of the shared
   CPU's speed (this VM's vCPUs move between a fast and a slow state every few seconds)
   falls on both alike; ``rounds`` rounds, the start order swapped every round. The
   overhead is ``1 - on / off`` of requests per second and the same by CPU time per
   request (``1 - off / on`` of the microseconds, the throughput lost when yurthub is
   CPU-bound); the verdict uses the latter, which the other load on a shared VM
   disturbs far less.
2. Slow upstream. `bench.cloud` (the simulated kube-apiserver) holds every
   ``GET /api/v1/namespaces/small/pods`` ``delay`` seconds; a yurthub with the default
   limit sits in front. `bench.burst` opens ``burst`` connections to it, waits until
   yurthub holds them all (its ``yurthub_proxy_connections_open``), and sends one GET
   (kubelet's User-Agent, no watch) on each at once. Each answer's status and time are
   recorded, and the cloud counts the requests it held at once. Then the same against a
   yurthub with the limit off, for comparison.

Targets: limiter overhead <= 3 % (by CPU per request); exactly ``maxRequestsInFlight``
requests at the upstream at once, the rest answered 429 (with ``Retry-After`` and a
``TooManyRequests`` Status), none hung. PASS/FAIL is printed; the exit status stays 0
when it measured, whatever the verdicts.
"""

from __future__ import annotations

import json
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench import cloud as cloud_process
from bench import failover
from bench import flowcontrol_report as reporting
from bench import nginx as nginx_conf
from bench.autonomy import Cloud
from bench.burst import Answer, send_burst
from bench.measure import Row, Target, measure_together, median_rows
from bench.pods import pod_list_body
from bench.procs import Child, ChildFailed, free_port, http_get, wait_for_status
from bench.proxy_list import PATH, REQUEST_HEADERS, UPSTREAM_WORKERS, _verify
from bench.report import git_state
from bench.results import save_results
from bench.runs import (
    BenchError,
    Run,
    WrkSettings,
    metric_samples,
    signals_interrupt,
    yurthub_diagnostics,
)
from bench.tools import MissingTools, Tools, ensure_tools
from bench.wrk import WrkFailed, write_script

#: The default of ``flowControl.maxRequestsInFlight``, written out in the "on" config.
DEFAULT_LIMIT = 250

#: The slow upstream's delayed path: a namespaced pod list (not a kubelet heartbeat, not
#: a watch: the limiter counts it).
SLOW_PATH = f"/api/v1/namespaces/{cloud_process.SMALL_NAMESPACE}/pods"

#: Bounds of every wait.
CLOUD_TIMEOUT = 60.0
YURTHUB_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
HELD_TIMEOUT = 10.0
#: Connections opened at once before waiting for yurthub to hold them: below its listen
#: backlog (1024 for the proxy listeners; 50 before that change), so none waits unaccepted.
CONNECT_BATCH = 25
#: After a burst, how long the cloud may take to finish what it holds beyond the delay.
DRAIN_SLACK = 30.0


@dataclass(frozen=True)
class Settings(WrkSettings):
    """What one flow-control run measures and how."""

    #: Rounds, a fresh pair each, both measured at once (start order swapped every round).
    rounds: int = 3
    #: The burst: requests at once, the upstream's delay, when an answer counts as hung.
    burst: int = 300
    limit: int = DEFAULT_LIMIT
    delay: float = 3.0
    hang_after: float = 10.0
    #: Pods in the cloud's ``small`` namespace (the delayed list's answer).
    pods: int = 10


def _limiter_config(limit: int) -> str:
    return f"flowControl: {{maxRequestsInFlight: {limit}}}\n"


#: The two yurthubs of each part: key, label, maxRequestsInFlight.
HUBS = (("limiter-on", f"yurthub, limiter on ({DEFAULT_LIMIT})", DEFAULT_LIMIT),
        ("limiter-off", "yurthub, limiter off (0)", 0))  # fmt: skip


class Hub:
    """One yurthub: its process, proxy port and metrics."""

    def __init__(self, child: Child, proxy_port: int, hub_port: int) -> None:
        self.child = child
        self.proxy_port = proxy_port
        self.hub_url = f"http://127.0.0.1:{hub_port}"

    def metric(self, name: str) -> dict[str, float]:
        """The samples of metric ``name`` by their labels (as ``k=v,...``; "" if none)."""
        _, text = http_get(self.hub_url + "/metrics", timeout=10)
        return {
            ",".join(f"{k}={v}" for k, v in sorted(labels.items())): value
            for metric, labels, value in metric_samples(text.decode(errors="replace"))
            if metric == name
        }

    def total(self, name: str) -> float:
        return sum(self.metric(name).values())

    def wait_connections(self, count: int, timeout: float) -> float:
        """Until yurthub holds ``count`` client connections (or ``timeout``); how many."""
        deadline = time.monotonic() + timeout
        held = 0.0
        while time.monotonic() < deadline:
            self.child.check_alive()
            held = self.total("yurthub_proxy_connections_open")
            if held >= count:
                break
            time.sleep(0.02)
        return held

    def flow(self) -> dict[str, Any]:
        """The flow-control metrics, JSON-ready."""
        return {
            "in_flight": self.total("yurthub_flow_in_flight_requests"),
            "rejected": self.metric("yurthub_flow_rejected_requests_total"),
            "connections_open": self.total("yurthub_proxy_connections_open"),
            "connections_refused": self.metric("yurthub_proxy_connections_refused_total"),
        }


def _start_hub(run: Run, name: str, upstream_port: int, limit: int) -> Hub:
    proxy_port, hub_port = free_port(), free_port()
    child = run.start_yurthub(
        upstream_port,
        proxy_port,
        hub_port,
        node_name=cloud_process.NODE,
        config_text=_limiter_config(limit),
        name=name,
        same_each_time=True,  # on and off differ in the limit only
    )
    hub = Hub(child, proxy_port, hub_port)
    wait_for_status(child, hub.hub_url + "/v1/readyz", timeout=YURTHUB_TIMEOUT)
    return hub


# --- part 1: what the limiter costs -----------------------------------------------------------

#: The in-process cross-check: admit and release calls per repeat, and repeats (the
#: fastest repeat counts: it is the one the machine's other work disturbed least).
CODE_CALLS = 200_000
CODE_REPEATS = 5


def limiter_code_cost() -> dict[str, Any]:
    """The limiter's own code per request, timed in this process: one `admit` and its
    slot's `release` for kubelet's pod list, with limit 250 and 0 (microseconds; the
    fastest of the repeats). A noise-free floor for the end-to-end overhead; an error
    message instead when this yurthub's limiter has another shape."""
    try:
        from yurthub.metrics import ProxyMetrics
        from yurthub.proxy.flowcontrol import InFlightLimiter
        from yurthub.requestinfo import parse_request_info

        info = parse_request_info(b"GET", PATH.encode(), REQUEST_HEADERS["User-Agent"].encode())
        out: dict[str, Any] = {"calls": CODE_CALLS, "repeats": CODE_REPEATS}
        for key, _, limit in HUBS:
            limiter = InFlightLimiter(limit, ProxyMetrics())

            def one(limiter: Any = limiter) -> None:
                limiter.admit(info).release()

            best = min(timeit.repeat(one, number=CODE_CALLS, repeat=CODE_REPEATS))
            out[key] = round(best / CODE_CALLS * 1e6, 3)
        return out
    except Exception as e:  # an informative figure: never stop the benchmark for it
        return {"error": f"{type(e).__name__}: {e}"}


def _overhead(
    bench_run: Run, tools: Tools, settings: Settings, emit: Callable[[str], None]
) -> dict[str, Any]:
    code_cost = limiter_code_cost()
    body = pod_list_body()
    www = bench_run.temp / "www"
    www.mkdir(mode=0o755)
    pods_file = www / "pods.json"
    pods_file.write_bytes(body)
    pods_file.chmod(0o644)
    up_port = free_port()
    upstream = bench_run.start_nginx(
        "upstream",
        nginx_conf.upstream_conf(bench_run.temp, up_port, pods_file, workers=UPSTREAM_WORKERS),
    )
    wait_for_status(upstream, f"http://127.0.0.1:{up_port}/readyz", timeout=15)
    load = settings.load(tools.wrk, write_script(bench_run.temp), REQUEST_HEADERS)
    rounds: list[list[Row]] = []
    orders: list[list[str]] = []
    diagnostics = {}
    for number in range(1, settings.rounds + 1):
        # A fresh pair every round: one process can run ~20 % slower than another of the
        # same config for its whole life, which must not pass for the limiter's cost.
        emit(
            f"bench: round {number}/{settings.rounds}: starting two yurthubs in front of nginx, "
            "limiter on (250) and off (0) ..."
        )
        order = HUBS if number % 2 else HUBS[::-1]
        hubs, targets = {}, {}
        for key, label, limit in order:
            hub = _start_hub(bench_run, f"{key}-nginx-{number}", up_port, limit)
            hubs[key] = hub
            targets[key] = Target(
                key, label, f"http://127.0.0.1:{hub.proxy_port}{PATH}", hub.child,
                f"twistd yurthub, flowControl.maxRequestsInFlight {limit}",
            )  # fmt: skip
        _verify(list(targets.values()), body)
        emit(
            f"bench: measuring both at once (round {number}/{settings.rounds}), a wrk each, "
            "the two yurthubs sharing one CPU ..."
        )
        rows = measure_together(load, [targets[key] for key, _, _ in order], upstream, bench_run.children)
        measured = {row.target.key: row for row in rows}
        rounds.append([measured[key] for key, _, _ in HUBS])
        orders.append([key for key, _, _ in order])
        for key, hub in hubs.items():
            diagnostics[f"{key}, round {number}"] = yurthub_diagnostics(hub.child, hub.hub_url) | {
                "flow": hub.flow()
            }
            hub.child.stop()
            bench_run.children.remove(hub.child)
    upstream.stop()
    bench_run.children.remove(upstream)
    return {
        "rows": median_rows(rounds),
        "rounds": rounds,
        "orders": orders,
        "body_bytes": len(body),
        "diagnostics": diagnostics,
        "code_cost": code_cost,
    }


# --- part 2: a burst against a slow upstream --------------------------------------------------


def _wait_cloud_idle(cloud: Cloud, timeout: float) -> dict[str, Any]:
    """Until the cloud holds no request (or ``timeout``); its last state."""
    deadline = time.monotonic() + timeout
    while True:
        state = cloud.state()
        if state["in_flight"]["now"] == 0 or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def _burst_once(
    cloud: Cloud, hub: Hub, settings: Settings, emit: Callable[[str], None]
) -> dict[str, Any]:
    """One burst through ``hub``: the answers, the cloud's count of what it held at once."""
    _wait_cloud_idle(cloud, settings.delay + DRAIN_SLACK)
    cloud.call("POST", "/in-flight/reset")
    agents_before = cloud.requests_by_agent()
    rejected_before = hub.total("yurthub_flow_rejected_requests_total")
    held: dict[str, float] = {}

    def wait_held(connected: int) -> None:
        held["connections"] = hub.wait_connections(connected, HELD_TIMEOUT)
        held["in_flight_before"] = hub.total("yurthub_flow_in_flight_requests")

    answers, timeline = send_burst(
        hub.proxy_port,
        SLOW_PATH,
        settings.burst,
        headers=REQUEST_HEADERS,
        held=wait_held,
        batch=CONNECT_BATCH,
        connect_timeout=CONNECT_TIMEOUT,
        answer_timeout=settings.hang_after,
    )
    state = _wait_cloud_idle(cloud, settings.delay + DRAIN_SLACK)
    agents_after = cloud.requests_by_agent()
    agent = REQUEST_HEADERS["User-Agent"]
    return {
        "answers": [_answer_dict(a, settings.pods) for a in answers],
        "send_spread_s": round(timeline["last_send"] - timeline["first_send"], 4),
        "connections_held_before_send": held.get("connections", 0.0),
        "yurthub_in_flight_before_send": held.get("in_flight_before", 0.0),
        "cloud_in_flight": state["in_flight"],
        "cloud_requests_from_kubelet": agents_after.get(agent, 0) - agents_before.get(agent, 0),
        "yurthub_rejected": hub.total("yurthub_flow_rejected_requests_total") - rejected_before,
        "yurthub_flow_after": hub.flow(),
    }


def _answer_dict(answer: Answer, pods: int) -> dict[str, Any]:
    """One answer, JSON-ready, with what the report checks: a 200's item count, a 429's
    Retry-After and Status reason."""
    out: dict[str, Any] = {
        "status": answer.status,
        "seconds": None if answer.seconds is None else round(answer.seconds, 4),
        "head_seconds": None if answer.head_seconds is None else round(answer.head_seconds, 4),
        "error": answer.error,
        "retry_after": answer.headers.get("retry-after"),
        "bytes": len(answer.body),
    }
    if answer.complete and answer.status in (200, 429):
        try:
            decoded = json.loads(answer.body)
        except ValueError:
            out["error"] = "body is not JSON"
            return out
        if answer.status == 200:
            items = decoded.get("items")
            out["items"] = len(items) if isinstance(items, list) else None
            if decoded.get("kind") != "PodList" or out["items"] != pods:
                out["error"] = f"not a PodList of {pods} pods"
        else:
            out["kind"] = decoded.get("kind")
            out["reason"] = decoded.get("reason")
            out["code"] = decoded.get("code")
    return out


def _slow_upstream(
    bench_run: Run, settings: Settings, emit: Callable[[str], None]
) -> list[dict[str, Any]]:
    emit(
        f"bench: starting the cloud (simulated kube-apiserver, {settings.pods} pods in "
        f"{cloud_process.SMALL_NAMESPACE}) and a yurthub with each limiter setting in front ..."
    )
    cloud = failover._start_cloud(bench_run, "cloud", failover.Settings(pods=settings.pods))
    cloud.wait_ready(CLOUD_TIMEOUT)
    hubs = [
        (key, label, limit, _start_hub(bench_run, f"{key}-cloud", cloud.port, limit))
        for key, label, limit in HUBS
    ]
    for _, label, _, hub in hubs:
        status, body = http_get(
            f"http://127.0.0.1:{hub.proxy_port}{SLOW_PATH}", headers=REQUEST_HEADERS, timeout=10
        )
        if status != 200 or b'"PodList"' not in body:
            raise BenchError(f"{label}: GET {SLOW_PATH} answered {status}: {body[:300]!r}")
    cloud.call("POST", f"/delay?prefix={SLOW_PATH}&seconds={settings.delay:g}")
    rows = []
    for key, label, limit, hub in hubs:
        emit(
            f"bench: {label}: {settings.burst} concurrent GETs {SLOW_PATH}, "
            f"the cloud answering each after {settings.delay:g} s ..."
        )
        measured = _burst_once(cloud, hub, settings, emit)
        diagnostics = yurthub_diagnostics(hub.child, hub.hub_url)
        rows.append(
            {"key": key, "label": label, "limit": limit, **measured, "diagnostics": diagnostics}
        )
    return rows


# --- the run -------------------------------------------------------------------------------


def run(settings: Settings, emit: Callable[[str], None] = print) -> int:
    """Run both parts; 0 when it measured (whatever the verdicts), 1 when it could not,
    2 when nginx or wrk are missing, 130 when interrupted."""
    try:
        tools = ensure_tools()
    except MissingTools as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    with signals_interrupt():
        bench_run = Run(tools, keep_temp=settings.keep_temp, prefix="yurthub-flowcontrol-")
        try:
            measured = git_state()
            overhead = _overhead(bench_run, tools, settings, emit)
            bursts = _slow_upstream(bench_run, settings, emit)
            report = reporting.build_report(
                settings=asdict(settings) | {"results_path": str(settings.results_path)},
                overhead=overhead,
                bursts=bursts,
                tools={"nginx": tools.nginx_version, "wrk": tools.wrk_version},
                yurthub_git=measured,
                request={"path": PATH, "slow_path": SLOW_PATH, "headers": REQUEST_HEADERS},
            )
            reporting.print_report(report, overhead["rows"], emit)
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
