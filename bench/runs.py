"""What every benchmark run shares: its temp dir and processes, twistd, signals, and
what yurthub says about itself afterwards.

`Run` owns a temp prefix and every `Child` started through it; `Run.close` stops them
(in reverse order) and removes the prefix unless asked to keep it. `signals_interrupt`
turns SIGTERM and SIGHUP into `KeyboardInterrupt` so the same cleanup runs as on Ctrl-C.
`yurthub_diagnostics` reads yurthub's ``/metrics`` (answers by code, upstream errors,
cache health) and the tail of its log.
"""

from __future__ import annotations

import compileall
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import nginx as nginx_conf
from bench.measure import Load
from bench.procs import Child, http_get
from bench.results import RESULTS_PATH
from bench.tools import Tools


@dataclass(frozen=True)
class OutputSettings:
    """Where a benchmark's report goes, and whether its temp dir is kept for inspection."""

    results_path: Path = RESULTS_PATH
    keep_temp: bool = False


@dataclass(frozen=True)
class WrkSettings(OutputSettings):
    """How a benchmark loads its configurations with wrk (see `bench.measure.Load`)."""

    duration: float = 10.0
    warmup: float = 1.0
    #: Seconds of rest before each measured configuration (see `Load.cooldown`).
    cooldown: float = 0.0
    connections: int = 16
    threads: int = 2
    #: proxy-list: turns each configuration's duration is cut into,
    #: the configurations alternating (see `bench.measure.measure_interleaved`).
    turns: int = 1

    def load(self, wrk: str, script: Path, headers: Mapping[str, str]) -> Load:
        """The wrk load these settings describe."""
        return Load(
            wrk=wrk, script=script, duration=self.duration, warmup=self.warmup,
            connections=self.connections, threads=self.threads, headers=headers,
            cooldown=self.cooldown,
        )  # fmt: skip


class BenchError(Exception):
    """The benchmark cannot produce a meaningful result (wrong body, setup failure)."""


class Run:
    """The processes and files of one benchmark run; `close` stops and removes them."""

    def __init__(
        self, tools: Tools, *, keep_temp: bool = False, prefix: str = "yurthub-bench-"
    ) -> None:
        self.tools = tools
        self.keep_temp = keep_temp
        self.temp = Path(tempfile.mkdtemp(prefix=prefix))
        # nginx workers run as an unprivileged user when we are root: let them read it.
        self.temp.chmod(0o755)
        self.children: list[Child] = []

    def close(self) -> None:
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception as e:  # keep stopping the others
                print(f"bench: could not stop {child.name}: {e}", file=sys.stderr)
        if self.keep_temp:
            print(f"bench: kept {self.temp}", file=sys.stderr)
        else:
            shutil.rmtree(self.temp, ignore_errors=True)

    def start(self, child: Child) -> Child:
        self.children.append(child)
        child.start()
        return child

    def start_nginx(self, name: str, conf_text: str) -> Child:
        conf = self.temp / f"{name}.conf"
        nginx_conf.temp_dir(self.temp, name).mkdir(mode=0o755)
        conf.write_text(conf_text)
        argv = nginx_conf.nginx_argv(self.tools.nginx, self.temp, conf, name)
        test = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True, timeout=30)
        if test.returncode != 0:
            raise BenchError(f"nginx rejects {conf}:\n{test.stderr}")
        return self.start(Child(name, argv, self.temp / f"{name}.out"))

    def start_yurthub(
        self,
        upstream_port: int,
        proxy_port: int,
        hub_port: int,
        *,
        node_name: str = "bench",
        config_text: str = "",
        name: str = "yurthub",
        same_each_time: bool = False,
    ) -> Child:
        """``twistd --nodaemon yurthub`` against ``http://127.0.0.1:<upstream_port>`` with a
        config file of our own (so a node's /etc/yurthub/yurthub.yaml is never read), its
        cache in ``<temp>/<name>-cache``, log level warn. With ``same_each_time`` every such
        process gets the same hash seed and runs on the same CPU (the last one, via
        ``taskset`` when there is one), so processes compared with each other differ in
        their settings only, not in where they run or how their dicts are laid out."""
        _compile_once()
        config = self.temp / f"{name}.yaml"
        config.write_text(f"nodeName: {node_name}\n{config_text}")
        argv = [
            twistd_path(),
            "--nodaemon",
            "--pidfile=",
            "yurthub",
            "--config", str(config),
            "--server", f"http://127.0.0.1:{upstream_port}",
            "--proxy-listen", f"tcp:{proxy_port}:interface=127.0.0.1",
            "--hub-listen", f"tcp:{hub_port}:interface=127.0.0.1",
            "--secure-listen", "",
            "--cache-dir", str(self.cache_dir(name)),
            "--node-name", node_name,
            "--log-level", "warn",
        ]  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if same_each_time:
            env["PYTHONHASHSEED"] = "0"
            taskset = shutil.which("taskset")
            if taskset is not None:
                argv = [taskset, "-c", str((os.cpu_count() or 1) - 1), *argv]
        return self.start(Child(name, argv, self.temp / f"{name}.out", cwd=self.temp, env=env))

    def cache_dir(self, name: str = "yurthub") -> Path:
        """The cache directory of the yurthub started as ``name``."""
        return self.temp / f"{name}-cache"


_compiled: set[Path] = set()


def _compile_once() -> None:
    """Byte-compile the yurthub that twistd will import, once per bench run, as ``pip
    install`` does for an installed package: with ``PYTHONDONTWRITEBYTECODE`` set (this
    environment sets it) a source checkout is otherwise compiled anew at every start,
    ~0.1 s that a node's restart never pays and the restart figure would count."""
    from bench.report import yurthub_source

    package = yurthub_source() / "yurthub"
    if package in _compiled or not package.is_dir():
        return
    _compiled.add(package)
    compileall.compile_dir(str(package), quiet=1)


def twistd_path() -> str:
    """The twistd of the interpreter running the bench (the venv's), else PATH's."""
    beside = Path(sys.executable).with_name("twistd")
    if beside.exists():
        return str(beside)
    found = shutil.which("twistd")
    if found is None:
        raise BenchError("twistd not found: run the bench with the venv's python")
    return found


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt so the cleanup runs as on Ctrl-C."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_METRIC_LINE = re.compile(r"^(yurthub_[a-z_]+)(?:\{(.*)\})? (\S+)$")


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every yurthub sample in a Prometheus text page."""
    out = []
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match:
            name, labels, value = match.groups()
            out.append((name, dict(re.findall(r'(\w+)="([^"]*)"', labels or "")), float(value)))
    return out


def yurthub_diagnostics(yurthub: Child, hub_url: str, *, log_lines: int = 40) -> dict[str, Any]:
    """What yurthub itself says after the runs: request counts by code, upstream errors
    and cache health from its metrics, and whatever it logged at warn level or above."""
    out: dict[str, Any] = {
        "requests_by_code": {},
        "upstream_errors": {},
        "cache": {},
        "log": yurthub.log_tail(log_lines),
    }
    try:
        _, text = http_get(hub_url + "/metrics", timeout=10)
    except OSError as e:
        out["metrics_error"] = str(e)
        return out
    for name, labels, value in metric_samples(text.decode(errors="replace")):
        if name == "yurthub_proxy_requests_total":
            code = labels.get("code", "?")
            out["requests_by_code"][code] = out["requests_by_code"].get(code, 0) + int(value)
        elif name == "yurthub_upstream_errors_total":
            out["upstream_errors"][labels.get("kind", "?")] = int(value)
        elif name.startswith("yurthub_cache_") and not name.endswith("_created"):
            out["cache"][name[len("yurthub_cache_") :]] = value
    return out
