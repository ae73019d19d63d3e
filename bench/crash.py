"""Crash consistency: ``twistd yurthub`` SIGKILLed at random moments of a storm of watch
events and list replacements, restarted each time, its cache checked after every restart.

One run on 127.0.0.1 starts, each in its own process group:

- the cloud: `bench.cloud` with ``--event-pods`` compact pods in namespace ``events``, a
  few in ``small``, none in ``bulk``; during a storm it updates the ``events`` pods as
  fast as it can and every ``--churn``-th step creates a pod in namespace ``churn``
  (deleting the oldest beyond 40), so lists change their contents while events flow;
- yurthub: ``twistd --nodaemon yurthub`` (log level info: its start-up line says how many
  interrupted list replacements it finished), health probes every 0.2 s;
- kubelet-like clients, threads of this process talking to yurthub: one watch of every
  pod, re-opened whenever it ends, and a lister that lists every pod, the ``churn``
  namespace and the pods labelled ``app=churn`` in turn, without pause. Each list answer
  is a list replacement in yurthub's cache (through its journal), each event a write.

Each of the ``--kills`` rounds: the storm starts; after a random delay (seeded by
``--seed``, uniform in ``--kill-window``) yurthub is SIGKILLed; the storm stops and the
cloud stops listening. Then, checked and counted:

1. every object file in the cache directory (temp files aside) parses as a JSON object
   whose metadata names it (namespace and name as its path says);
2. yurthub restarts with the cloud away and answers ``/v1/readyz`` 200; its start-up line
   says how many interrupted replacements it finished;
3. no temp file and no journal is left in the cache directory after that start;
4. the offline list of every pod answers 200 and holds exactly the objects of the cache
   files (none from a temp file), each at the resourceVersion of its file;
5. no cached object has a resourceVersion above the cloud's for that object (or, for an
   object the cloud no longer has, above the cloud's last resourceVersion);
6. the cloud listens again; once yurthub says the backend is healthy, the cache
   directory holds exactly the cloud's pods at the cloud's resourceVersions within
   `CONVERGE_TIMEOUT` (the lister's next online list repairs what the crash left).

Any violated property is a problem line in the report and makes the exit status 1.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import cloud as cloud_process
from bench.procs import Child, ChildFailed, free_port, http_get, wait_for_status
from bench.results import RESULTS_PATH, save_results
from bench.runs import metric_samples, signals_interrupt, twistd_path

NODE_NAME = cloud_process.NODE
KUBELET = {"User-Agent": "kubelet/v1.31.0", "Accept": "application/json"}
#: What the lister asks for, in turn: full, namespace and selector list replacements.
LIST_PATHS = (
    "/api/v1/pods",
    f"/api/v1/namespaces/{cloud_process.CHURN_NAMESPACE}/pods",
    "/api/v1/pods?labelSelector=app%3Dchurn",
)
WATCH_PATH = "/api/v1/pods?watch=true"
#: Where yurthub keeps kubelet's pods (OpenYurt's layout).
PODS_CACHE = Path("kubelet") / "pods.v1.core"
TEMP_PREFIX = ".tmp-"
JOURNAL_DIR = Path("_yurthub") / "journal"
YURTHUB_CONFIG = (
    "healthCheck: {intervalSeconds: 0.2, timeoutSeconds: 1, healthyThreshold: 1, "
    "unhealthyThreshold: 1}\n"
)

#: Bounds of every wait.
CLOUD_TIMEOUT = 30.0
START_TIMEOUT = 30.0
BACKEND_TIMEOUT = 15.0
CONVERGE_TIMEOUT = 20.0
FIRST_CACHE_TIMEOUT = 20.0
#: Updates a storm may make at most (it is stopped at the kill long before).
STORM_COUNT = 10_000_000

_LOADED = re.compile(r"cache: loaded (\d+) objects .* \((\d+) interrupted replacements recovered\)")


@dataclass(frozen=True)
class Settings:
    """One crash run: how many kills, when, and how big the storm's objects are."""

    kills: int = 20
    seed: int = 1
    #: SIGKILL this many seconds after the storm starts, uniform between the two.
    kill_window: tuple[float, float] = (0.1, 2.0)
    event_pods: int = 200
    small_pods: int = 20
    event_size: int = 1024
    churn: int = 10
    results_path: Path | None = RESULTS_PATH
    keep_temp: bool = False


@dataclass
class Round:
    """What one kill and restart showed."""

    kill: int
    killed_after: float
    cloud_rv_at_kill: int = 0
    files: int = 0
    temp_files_after_kill: int = 0
    journals_after_kill: int = 0
    recovered: int = 0
    restart_seconds: float = 0.0
    offline_items: int = 0
    converge_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


# --- what the clients do ---------------------------------------------------------------


class Clients:
    """kubelet-like load on yurthub's proxy port, in two threads, until `stop`."""

    def __init__(self, proxy_port: int) -> None:
        self._port = proxy_port
        self._running = threading.Event()
        self._threads: list[threading.Thread] = []
        self.lists_ok = 0
        self.lists_failed = 0
        self.watches = 0

    def start(self) -> None:
        self._running.set()
        for target in (self._watch, self._list):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._running.clear()
        for thread in self._threads:
            thread.join(timeout=10)

    def _watch(self) -> None:
        request = (
            f"GET {WATCH_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"User-Agent: {KUBELET['User-Agent']}\r\nAccept: application/json\r\n\r\n"
        ).encode()
        while self._running.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self._port), timeout=1) as sock:
                    sock.sendall(request)
                    self.watches += 1
                    sock.settimeout(0.5)
                    while self._running.is_set():
                        try:
                            if not sock.recv(256 * 1024):
                                break
                        except TimeoutError:
                            continue
            except OSError:
                pass
            time.sleep(0.05)

    def _list(self) -> None:
        n = 0
        while self._running.is_set():
            path = LIST_PATHS[n % len(LIST_PATHS)]
            n += 1
            try:
                code, _ = http_get(f"http://127.0.0.1:{self._port}{path}", headers=KUBELET)
            except Exception:  # noqa: BLE001 - a killed yurthub cuts answers short in many ways
                code = 0
            if code == 200:
                self.lists_ok += 1
            else:
                self.lists_failed += 1
                time.sleep(0.05)


# --- the cloud and the cache, as read from outside --------------------------------------


class CloudControl:
    """The `bench.cloud` control port."""

    def __init__(self, port: int) -> None:
        self._base = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(
            self._base + path, data=b"" if method == "POST" else None, method=method
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - 127.0.0.1
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def pods(self) -> tuple[int, dict[str, int]]:
        """The cloud's resourceVersion and every pod's, as ``"ns/name"``."""
        state = self.call("GET", "/pods")
        return int(state["resourceVersion"]), {k: int(v) for k, v in state["pods"].items()}


def cache_files(cache_dir: Path) -> tuple[dict[str, int], list[str], list[str]]:
    """The pods cached for kubelet (``"ns/name"`` -> resourceVersion), the problems of
    files that do not parse or do not name themselves, and the temp files present."""
    pods: dict[str, int] = {}
    problems: list[str] = []
    temps: list[str] = []
    root = cache_dir / PODS_CACHE
    for dirpath, _dirs, files in os.walk(root) if root.is_dir() else ():
        for name in files:
            path = Path(dirpath, name)
            relative = path.relative_to(root)
            if name.startswith(TEMP_PREFIX):
                temps.append(str(relative))
                continue
            try:
                obj = json.loads(path.read_bytes())
                meta = obj["metadata"]
                if (meta["namespace"], meta["name"]) != (relative.parent.name, name):
                    raise ValueError(f"names {meta['namespace']}/{meta['name']}")
                pods[f"{meta['namespace']}/{meta['name']}"] = int(meta["resourceVersion"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                problems.append(f"cache file {relative} does not parse as its pod: {e}")
    for dirpath, _dirs, files in os.walk(cache_dir):
        temps += [str(Path(dirpath, n)) for n in files if n.startswith(TEMP_PREFIX)]
    return pods, problems, sorted(set(temps))


def journals(cache_dir: Path) -> list[str]:
    directory = cache_dir / JOURNAL_DIR
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def above_cloud(cached: dict[str, int], cloud_rv: int, cloud: dict[str, int]) -> list[str]:
    """Cached objects whose resourceVersion the cloud never reached for them."""
    return [
        f"{key} cached at rv {rv}, the cloud's is {cloud.get(key, cloud_rv)}"
        for key, rv in sorted(cached.items())
        if rv > cloud.get(key, cloud_rv)
    ]


def differences(have: dict[str, int], want: dict[str, int], limit: int = 5) -> str:
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    stale = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    parts = []
    for label, keys in (("missing", missing), ("extra", extra), ("other rv", stale)):
        if keys:
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:limit])})")
    return "; ".join(parts) or "none"


# --- one run -----------------------------------------------------------------------------


class CrashRun:
    """The processes, clients and checks of one run; `close` stops and removes them."""

    def __init__(self, settings: Settings, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.say = say
        self.temp = Path(tempfile.mkdtemp(prefix="yurthub-crash-"))
        self.cache_dir = self.temp / "cache"
        self.api_port, self.control_port = free_port(), free_port()
        self.proxy_port, self.hub_port = free_port(), free_port()
        self.hub_url = f"http://127.0.0.1:{self.hub_port}"
        self.control = CloudControl(self.control_port)
        self.cloud: Child | None = None
        self.yurthub: Child | None = None
        self.clients = Clients(self.proxy_port)
        self.rounds: list[Round] = []
        self._starts = 0

    def close(self) -> None:
        """Stop the clients and processes; a second Ctrl-C or SIGTERM meanwhile waits."""
        stopping = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
        try:
            self.clients.stop()
            for child in (self.yurthub, self.cloud):
                if child is not None:
                    child.stop()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if self.settings.keep_temp:
            print(f"bench crash: kept {self.temp}", file=sys.stderr)
        else:
            shutil.rmtree(self.temp, ignore_errors=True)

    def start_cloud(self) -> None:
        s = self.settings
        argv = [
            sys.executable, "-m", "bench.cloud", "--port", str(self.api_port),
            "--control-port", str(self.control_port), "--pods", "0",
            "--small-pods", str(s.small_pods), "--event-pods", str(s.event_pods),
            "--event-size", str(s.event_size), "--batch", "50",
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        self.cloud = Child("cloud", argv, self.temp / "cloud.out", env=env)
        self.cloud.start()
        deadline = time.monotonic() + CLOUD_TIMEOUT
        while cloud_process.READY_MARKER not in _text(self.cloud.log_path):
            self.cloud.check_alive()
            if time.monotonic() > deadline:
                raise ChildFailed(f"the cloud did not start:\n{self.cloud.log_tail()}")
            time.sleep(0.05)

    def start_yurthub(self) -> float:
        """Start yurthub on the same ports and cache; seconds until /v1/readyz is 200."""
        self._starts += 1
        config = self.temp / "yurthub.yaml"
        config.write_text(f"nodeName: {NODE_NAME}\n{YURTHUB_CONFIG}")
        argv = [
            twistd_path(), "--nodaemon", "--pidfile=", "yurthub", "--config", str(config),
            "--server", f"http://127.0.0.1:{self.api_port}",
            "--proxy-listen", f"tcp:{self.proxy_port}:interface=127.0.0.1",
            "--hub-listen", f"tcp:{self.hub_port}:interface=127.0.0.1",
            "--secure-listen", "", "--cache-dir", str(self.cache_dir),
            "--node-name", NODE_NAME, "--log-level", "info",
        ]  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = self.temp / f"yurthub-{self._starts:02d}.out"
        self.yurthub = Child("yurthub", argv, log, cwd=self.temp, env=env)
        started = time.monotonic()
        self.yurthub.start()
        wait_for_status(self.yurthub, self.hub_url + "/v1/readyz", timeout=START_TIMEOUT)
        return time.monotonic() - started

    def kill_yurthub(self) -> None:
        assert self.yurthub is not None
        os.killpg(self.yurthub.pid, signal.SIGKILL)
        assert self.yurthub.process is not None
        self.yurthub.process.wait(timeout=10)

    def backend_healthy(self) -> bool:
        _, text = http_get(self.hub_url + "/metrics", timeout=10)
        samples = metric_samples(text.decode(errors="replace"))
        return any(v > 0 for n, _, v in samples if n == "yurthub_backend_healthy")

    def wait_backend(self, healthy: bool) -> None:
        assert self.yurthub is not None
        deadline = time.monotonic() + BACKEND_TIMEOUT
        while time.monotonic() < deadline:
            self.yurthub.check_alive()
            try:
                if self.backend_healthy() == healthy:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise ChildFailed(f"yurthub did not see the cloud {'up' if healthy else 'down'} in time")

    def wait_converged(self) -> tuple[float, str]:
        """Seconds until the cache directory is the cloud's pods; "" or what differs."""
        started = time.monotonic()
        _, want = self.control.pods()
        have: dict[str, int] = {}
        while time.monotonic() - started < CONVERGE_TIMEOUT:
            have, _, _ = cache_files(self.cache_dir)
            if have == want:
                return time.monotonic() - started, ""
            time.sleep(0.05)
        return time.monotonic() - started, differences(have, want)

    def offline_list(self) -> tuple[int, dict[str, int]]:
        code, body = http_get(
            f"http://127.0.0.1:{self.proxy_port}/api/v1/pods", headers=KUBELET, timeout=30
        )
        if code != 200:
            return code, {}
        items = json.loads(body)["items"]
        return code, {
            f"{i['metadata']['namespace']}/{i['metadata']['name']}": int(
                i["metadata"]["resourceVersion"]
            )
            for i in items
        }

    def recovered(self) -> int:
        """Interrupted replacements yurthub's last start finished (from its start-up line)."""
        assert self.yurthub is not None
        match = _LOADED.search(_text(self.yurthub.log_path))
        return int(match.group(2)) if match else -1

    def one_round(self, kill: int, delay: float) -> Round:
        """Storm, SIGKILL after ``delay`` s, restart offline, check, reconnect, converge."""
        r = Round(kill=kill, killed_after=round(delay, 3))
        self.control.call("POST", f"/events?count={STORM_COUNT}&churn={self.settings.churn}")
        time.sleep(delay)
        self.kill_yurthub()
        self.control.call("POST", "/events/stop")
        self.control.call("POST", "/stop")
        r.cloud_rv_at_kill, cloud_pods = self.control.pods()

        on_disk, bad, temps = cache_files(self.cache_dir)
        r.files, r.temp_files_after_kill = len(on_disk), len(temps)
        r.journals_after_kill = len(journals(self.cache_dir))
        r.problems += bad
        r.problems += above_cloud(on_disk, r.cloud_rv_at_kill, cloud_pods)

        r.restart_seconds = round(self.start_yurthub(), 3)
        r.recovered = self.recovered()
        self.wait_backend(healthy=False)
        loaded, bad, temps = cache_files(self.cache_dir)
        r.problems += bad
        if temps:
            r.problems.append(f"temp files left after the restart: {temps[:5]}")
        if journals(self.cache_dir):
            r.problems.append(f"journals left after the restart: {journals(self.cache_dir)}")
        code, served = self.offline_list()
        r.offline_items = len(served)
        if code != 200:
            r.problems.append(f"offline list answered {code}")
        elif served != loaded:
            r.problems.append(f"offline list is not the cache files: {differences(served, loaded)}")
        if any(k.split("/", 1)[1].startswith(TEMP_PREFIX) for k in served):
            r.problems.append("a temp file was served")
        r.problems += above_cloud(served, r.cloud_rv_at_kill, cloud_pods)

        self.control.call("POST", "/start")
        self.wait_backend(healthy=True)
        seconds, diff = self.wait_converged()
        r.converge_seconds = round(seconds, 3)
        if diff:
            r.problems.append(f"cache not the cloud's after {seconds:.1f}s: {diff}")
        return r

    def run(self) -> list[Round]:
        """Every round, into `rounds` as they end."""
        s = self.settings
        rng = random.Random(s.seed)
        self.start_cloud()
        self.start_yurthub()
        self.clients.start()
        deadline = time.monotonic() + FIRST_CACHE_TIMEOUT
        while len(cache_files(self.cache_dir)[0]) < s.event_pods:
            if time.monotonic() > deadline:
                raise ChildFailed("yurthub did not cache the first list in time")
            time.sleep(0.05)
        for kill in range(1, s.kills + 1):
            r = self.one_round(kill, rng.uniform(*s.kill_window))
            self.say(format_round(r))
            self.rounds.append(r)
        return self.rounds


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# --- reporting -------------------------------------------------------------------------

HEADER = "kill  after s  cloud rv  files  temps  journals  recovered  restart s  offline  converge s  problems"


def format_round(r: Round) -> str:
    return (
        f"{r.kill:>4}  {r.killed_after:>7.2f}  {r.cloud_rv_at_kill:>8}  {r.files:>5}  "
        f"{r.temp_files_after_kill:>5}  {r.journals_after_kill:>8}  {r.recovered:>9}  "
        f"{r.restart_seconds:>9.2f}  {r.offline_items:>7}  {r.converge_seconds:>10.2f}  "
        f"{len(r.problems)}"
    )


def summary(rounds: list[Round], clients: Clients) -> list[str]:
    problems = [f"kill {r.kill}: {p}" for r in rounds for p in r.problems]
    restarts = sorted(r.restart_seconds for r in rounds) or [0.0]
    converge = sorted(r.converge_seconds for r in rounds) or [0.0]
    lines = [
        f"kills: {len(rounds)}; killed with temp files on disk: "
        f"{sum(1 for r in rounds if r.temp_files_after_kill)}, with a journal: "
        f"{sum(1 for r in rounds if r.journals_after_kill)}; "
        f"interrupted replacements finished at restart: {sum(max(r.recovered, 0) for r in rounds)}",
        f"restart to readyz: max {restarts[-1]:.2f} s; converged after reconnecting: "
        f"max {converge[-1]:.2f} s",
        f"client lists answered 200: {clients.lists_ok}, other: {clients.lists_failed}; "
        f"watches opened: {clients.watches}",
        f"problems: {len(problems)}"
        + ("" if problems else " (every property held after every kill)"),
    ]
    return lines + [f"  {p}" for p in problems]


def run(settings: Settings, say: Callable[[str], None] = print) -> int:
    """Run, print the table and the summary, save the report; 0 if every property held,
    1 if one did not or the run could not go on, 130 when interrupted."""
    crash = CrashRun(settings, say)
    rounds = crash.rounds
    error = ""
    try:
        with signals_interrupt():
            say(HEADER)
            crash.run()
    except KeyboardInterrupt:
        error = "interrupted"
    except Exception as e:  # noqa: BLE001 - reported, and the processes still stopped
        error = f"{type(e).__name__}: {e}"
        say(f"bench crash: could not go on: {error}")
        if crash.yurthub is not None:
            say(crash.yurthub.log_tail())
    finally:
        clients = crash.clients
        crash.close()
    for line in summary(rounds, clients):
        say(line)
    if settings.results_path is not None:
        report = {
            "benchmark": "crash",
            "settings": {**asdict(settings), "results_path": str(settings.results_path)},
            "rounds": [asdict(r) for r in rounds],
            "error": error,
        }
        save_results(settings.results_path, report)
    if error == "interrupted":
        return 130
    return 1 if error or any(r.problems for r in rounds) else 0
