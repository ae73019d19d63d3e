"""Child processes in their own process groups, free ports and readiness waits.

Every server the benchmark starts (nginx masters with their workers, twistd) runs in a
new session, so `Child.stop` can signal the whole group: SIGTERM, a few seconds' grace,
then SIGKILL for whatever is left. `Child.cpu_seconds` sums user and system CPU time over
the group from ``/proc``, which is how the table reports what each proxy burned.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ChildFailed(Exception):
    """A child process exited or did not become ready in time; the message has its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """One server process (and its descendants) started in a new process group, with
    stdout and stderr going to ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._cwd = cwd
        self._env = dict(env) if env is not None else None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process in a session of its own (its pid is the group id)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._cwd,
                env=self._env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def alive(self) -> bool:
        """Whether the group leader still runs."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise `ChildFailed` with the log tail when the process has exited."""
        if not self.alive():
            code = self.process.returncode if self.process is not None else None
            raise ChildFailed(f"{self.name} exited (status {code}):\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds used so far by the live processes of the group."""
        if self.process is None:
            return 0.0
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            # Fields after the parenthesised command name; pgrp is the 3rd, utime/stime 12th/13th.
            fields = stat[stat.rfind(")") + 2 :].split()
            if int(fields[2]) == self.pid:
                total += int(fields[11]) + int(fields[12])
        return total / _CLOCK_TICKS

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL what remains."""
        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; make sure no worker outlives it.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        if self.process.poll() is None:
            self.process.wait(timeout=grace)


def http_get(
    url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """GET ``url`` and return (status, body); HTTP error statuses are returned, not raised."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - 127.0.0.1 only
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for_status(child: Child, url: str, *, status: int = 200, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers ``status``; raise `ChildFailed` if ``child`` exits or
    the deadline passes first."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            code, body = http_get(url, timeout=1.0)
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        else:
            if code == status:
                return
            last = f"HTTP {code}: {body[:300]!r}"
        time.sleep(0.1)
    raise ChildFailed(
        f"{child.name}: {url} did not answer {status} within {timeout:.0f}s ({last}):\n{child.log_tail()}"
    )
