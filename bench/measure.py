"""Measuring one configuration: wrk's numbers plus where the machine's CPU went.

`measure` warms a configuration up, runs wrk against it and samples CPU time around the
timed run: the configuration's server and the upstream (from ``/proc``, summed over their
process groups), wrk (``RUSAGE_CHILDREN``), every process on the machine and the time the
hypervisor stole (``/proc/stat``). What is left once our processes are taken away is
"other" work: on a shared machine that is what makes a run noisy, and the report says so.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Child
from bench.wrk import WrkResult, run_wrk


@dataclass(frozen=True)
class Target:
    """One configuration: where wrk sends the requests and which process serves them."""

    key: str
    label: str
    url: str
    server: Child
    note: str


@dataclass(frozen=True)
class Load:
    """How wrk loads every configuration: the same for each, so rows compare."""

    wrk: str
    script: Path
    duration: float
    warmup: float
    connections: int
    threads: int
    headers: Mapping[str, str]
    #: wrk's per-request timeout, seconds: a slower answer counts as a timeout error.
    timeout: float = 5.0
    #: Seconds of rest before each configuration's warm-up. On a burstable VM the
    #: hypervisor takes more and more of the CPUs under sustained load (steal), so rows
    #: measured later in a run are slowed more; a rest lets each start alike.
    cooldown: float = 0.0


@dataclass(frozen=True)
class Row:
    """One measured configuration. CPU figures are % of one core over the timed run."""

    target: Target
    result: WrkResult
    #: The configuration's server process group (the proxy; the upstream itself for the
    #: direct row), and the upstream.
    server_cpu: float
    upstream_cpu: float
    #: The wrk client; processes that are not part of the benchmark (other work on a shared
    #: machine); and time the hypervisor took (steal). High values of the last two: noise.
    wrk_cpu: float
    other_cpu: float
    steal_cpu: float

    @property
    def server_us_per_request(self) -> float:
        """CPU microseconds the row's server spent per request: its cost, which noise
        on a shared machine moves much less than requests per second."""
        rate = self.result.requests_per_second
        return self.server_cpu / 100 * 1e6 / rate if rate else 0.0


@dataclass(frozen=True)
class _CpuSample:
    """CPU seconds used so far: by all processes and stolen by the hypervisor (both from
    ``/proc/stat``), by all our servers, by the row's server, by the upstream, and by
    waited-for children (wrk)."""

    wall: float
    processes: float
    steal: float
    ours: float
    server: float
    upstream: float
    wrk: float

    @classmethod
    def take(cls, children: Sequence[Child], server: Child, upstream: Child) -> _CpuSample:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        processes, steal = machine_cpu_seconds()
        return cls(
            wall=time.monotonic(),
            processes=processes,
            steal=steal,
            ours=sum(child.cpu_seconds() for child in children),
            server=server.cpu_seconds(),
            upstream=upstream.cpu_seconds(),
            wrk=usage.ru_utime + usage.ru_stime,
        )


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU seconds since boot the machine spent running processes (user, nice, system),
    and that the hypervisor took from it (steal). Interrupt time, mostly loopback
    networking of the benchmark itself, is in neither."""
    with open("/proc/stat") as f:
        fields = [int(value) for value in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(fields[:3]) / ticks, fields[7] / ticks


def _wrk_for(load: Load, target: Target, seconds: float) -> WrkResult:
    return run_wrk(
        load.wrk,
        target.url,
        load.script,
        duration=seconds,
        connections=load.connections,
        threads=load.threads,
        headers=load.headers,
        timeout=load.timeout,
    )


#: The `_CpuSample` fields a row reports, as % of one core over its timed run.
_CPU_FIELDS = ("processes", "ours", "server", "upstream", "wrk", "steal")


class _Timed:
    """What one target's timed runs add up to: wrk's results and the CPU seconds used."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.results: list[WrkResult] = []
        self.elapsed = 0.0
        self.cpu = dict.fromkeys(_CPU_FIELDS, 0.0)

    def run(self, load: Load, upstream: Child, children: Sequence[Child], seconds: float) -> None:
        for child in children:
            child.check_alive()
        before = _CpuSample.take(children, self.target.server, upstream)
        result = _wrk_for(load, self.target, seconds)
        self.add(result, before, _CpuSample.take(children, self.target.server, upstream))

    def add(self, result: WrkResult, before: _CpuSample, after: _CpuSample) -> None:
        """One timed run: wrk's result and the CPU samples around it."""
        self.target.server.check_alive()
        self.results.append(result)
        self.elapsed += after.wall - before.wall
        for name in _CPU_FIELDS:
            self.cpu[name] += getattr(after, name) - getattr(before, name)

    def row(self) -> Row:
        def percent(name: str) -> float:
            return 100 * self.cpu[name] / self.elapsed if self.elapsed else 0.0

        others = max(0.0, percent("processes") - percent("ours") - percent("wrk"))
        return Row(
            self.target,
            merge_results(self.results),
            percent("server"),
            percent("upstream"),
            percent("wrk"),
            others,
            percent("steal"),
        )


def merge_results(results: Sequence[WrkResult]) -> WrkResult:
    """Several wrk runs as one: requests, bytes, time and errors summed; the maximum
    latency is the largest; the other latency figures are weighted by each run's requests
    (for percentiles an approximation of the whole's)."""
    if len(results) == 1:
        return results[0]
    requests = sum(r.requests for r in results)
    latency: dict[str, float] = {}
    for name in results[0].latency_us:
        if name == "max":
            latency[name] = max(r.latency_us[name] for r in results)
        else:
            weighted = sum(r.latency_us[name] * r.requests for r in results)
            latency[name] = round(weighted / requests, 1) if requests else 0.0
    errors: dict[str, int] = {}
    for r in results:
        for name, count in r.errors.items():
            errors[name] = errors.get(name, 0) + count
    return WrkResult(
        requests=requests,
        duration_us=sum(r.duration_us for r in results),
        bytes=sum(r.bytes for r in results),
        latency_us=latency,
        errors=errors,
    )


def measure(load: Load, target: Target, upstream: Child, children: Sequence[Child]) -> Row:
    """Warm ``target`` up, then time it with wrk; every child must still run afterwards."""
    if load.cooldown > 0:
        time.sleep(load.cooldown)
    if load.warmup > 0:
        _wrk_for(load, target, load.warmup)
    timed = _Timed(target)
    timed.run(load, upstream, children, load.duration)
    return timed.row()


def measure_interleaved(
    load: Load,
    targets: Sequence[Target],
    upstream: Child,
    children: Sequence[Child],
    turns: int,
) -> list[Row]:
    """Time ``targets`` side by side: after one rest (``load.cooldown``) and each one's
    warm-up, ``turns`` turns of ``load.duration / turns`` seconds each, the order
    reversed every turn (A B C, C B A, A B C, ...); a target's row adds its turns up
    (`merge_results`; CPU over its own turns). A shared VM's vCPU moves between a fast
    and a slow state (~1.4x apart here) every few seconds: measured in one stretch each,
    two targets can land in different states and differ by more than what they compare;
    in short alternating turns each sees the same mix."""
    if load.cooldown > 0:
        time.sleep(load.cooldown)
    if load.warmup > 0:
        for target in targets:
            _wrk_for(load, target, load.warmup)
    timed = [_Timed(target) for target in targets]
    seconds = load.duration / max(1, turns)
    for turn in range(max(1, turns)):
        for one in timed if turn % 2 == 0 else timed[::-1]:
            one.run(load, upstream, children, seconds)
    return [one.row() for one in timed]


def measure_together(
    load: Load, targets: Sequence[Target], upstream: Child, children: Sequence[Child]
) -> list[Row]:
    """Time ``targets`` at the same moment: after one rest and each one's warm-up, a wrk
    per target (``load.connections`` each) runs for ``load.duration`` seconds, all at
    once. Targets pinned to one CPU then share it, and every change of its speed falls on
    all of them alike: their CPU microseconds per request compare with none of the VM's
    fast/slow-state noise that turns taken one after another still carry. Each row's
    server CPU is its own process group's; the wrk, other and steal columns are the
    machine's over the window, the same in every row (wrk: all the wrk processes)."""
    if load.cooldown > 0:
        time.sleep(load.cooldown)
    if load.warmup > 0:
        for target in targets:
            _wrk_for(load, target, load.warmup)
    for child in children:
        child.check_alive()
    results: dict[int, WrkResult | BaseException] = {}

    def one(index: int, target: Target) -> None:
        try:
            results[index] = _wrk_for(load, target, load.duration)
        except BaseException as e:  # raised again in the calling thread
            results[index] = e

    before = [_CpuSample.take(children, target.server, upstream) for target in targets]
    threads = [
        threading.Thread(target=one, args=(index, target), daemon=True)
        for index, target in enumerate(targets)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = [_CpuSample.take(children, target.server, upstream) for target in targets]
    rows = []
    for index, target in enumerate(targets):
        result = results[index]
        if isinstance(result, BaseException):
            raise result
        timed = _Timed(target)
        timed.add(result, before[index], after[index])
        rows.append(timed.row())
    return rows


#: `speed_probe`: loop iterations per try, and tries (the fastest counts).
PROBE_LOOPS = 200_000
PROBE_TRIES = 5


def speed_probe() -> float:
    """Milliseconds this machine takes for a fixed pure-Python loop (the fastest of a
    few tries, ~50-80 ms in all): a shared VM's vCPUs move between a fast and a slow
    state, and a figure measured against the clock (the restart) is read next to it."""
    best = float("inf")
    for _ in range(PROBE_TRIES):
        started = time.perf_counter()
        total = 0
        for i in range(PROBE_LOOPS):
            total += i * i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 2)


def median_rows(rounds: Sequence[Sequence[Row]]) -> list[Row]:
    """For each configuration, the round with the median requests per second (the lower
    middle one for an even number of rounds)."""
    medians = []
    for measured in zip(*rounds, strict=True):
        ordered = sorted(measured, key=lambda row: row.result.requests_per_second)
        medians.append(ordered[(len(ordered) - 1) // 2])
    return medians
