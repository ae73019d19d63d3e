"""Running wrk and reading its result from a Lua ``done()`` hook instead of its text.

The script prints one line, ``BENCH_RESULT {json}``, with the request count, duration,
bytes, latency percentiles and wrk's error counters (``status`` counts responses that are
not 2xx/3xx). Numbers are wrk's own: microseconds for latencies and duration.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_MARKER = "BENCH_RESULT "

#: wrk calls done() once, in its main thread, after every thread has stopped.
LUA_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"latency_us":{"p50":%.0f,"p90":%.0f,"p99":%.0f,"mean":%.1f,"max":%.0f},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run, in wrk's units (µs), with derived rates."""

    requests: int
    duration_us: int
    bytes: int
    latency_us: dict[str, float]
    errors: dict[str, int]

    @property
    def requests_per_second(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / (self.duration_us / 1e6) / 1e6 if self.duration_us else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived rates included."""
        out = asdict(self)
        out["requests_per_second"] = round(self.requests_per_second, 1)
        out["megabytes_per_second"] = round(self.megabytes_per_second, 2)
        out["error_count"] = self.error_count
        return out


class WrkFailed(Exception):
    """wrk did not run to completion or printed no result line."""


def write_script(directory: Path) -> Path:
    """Write the Lua reporter into ``directory`` and return its path."""
    path = directory / "report.lua"
    path.write_text(LUA_SCRIPT)
    return path


def run_wrk(
    wrk: str,
    url: str,
    script: Path,
    *,
    duration: float,
    connections: int,
    threads: int,
    headers: Mapping[str, str],
    timeout: float = 5.0,
) -> WrkResult:
    """Run wrk against ``url`` and return its result; raise `WrkFailed` on anything else."""
    argv = [
        wrk,
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration))}s",
        f"--timeout={timeout:g}s",
        f"--script={script}",
    ]
    for name, value in headers.items():
        argv += ["--header", f"{name}: {value}"]
    argv.append(url)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + timeout + 30)
    except subprocess.TimeoutExpired as e:
        raise WrkFailed(f"wrk did not finish in time: {' '.join(argv)}") from e
    for line in done.stdout.splitlines():
        if line.startswith(_MARKER):
            data = json.loads(line[len(_MARKER) :])
            return WrkResult(
                requests=data["requests"],
                duration_us=data["duration_us"],
                bytes=data["bytes"],
                latency_us=data["latency_us"],
                errors=data["errors"],
            )
    raise WrkFailed(f"wrk exited {done.returncode} without a result:\n{done.stdout}\n{done.stderr}")
