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


def measure(load: Load, target: Target, upstream: Child, children: Sequence[Child]) -> Row:
    """Warm ``target`` up, then time it with wrk; every child must still run afterwards."""

    def wrk_for(seconds: float) -> WrkResult:
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

    if load.cooldown > 0:
        time.sleep(load.cooldown)
    if load.warmup > 0:
        wrk_for(load.warmup)
    for child in children:
        child.check_alive()
    before = _CpuSample.take(children, target.server, upstream)
    result = wrk_for(load.duration)
    after = _CpuSample.take(children, target.server, upstream)
    target.server.check_alive()
    elapsed = after.wall - before.wall

    def percent(field: str) -> float:
        return 100 * (getattr(after, field) - getattr(before, field)) / elapsed

    others = max(0.0, percent("processes") - percent("ours") - percent("wrk"))
    return Row(
        target,
        result,
        percent("server"),
        percent("upstream"),
        percent("wrk"),
        others,
        percent("steal"),
    )


def median_rows(rounds: Sequence[Sequence[Row]]) -> list[Row]:
    """For each configuration, the round with the median requests per second (the lower
    middle one for an even number of rounds)."""
    medians = []
    for measured in zip(*rounds, strict=True):
        ordered = sorted(measured, key=lambda row: row.result.requests_per_second)
        medians.append(ordered[(len(ordered) - 1) // 2])
    return medians
