"""``python -m bench.loadclient``: keep-alive GETs and long-lived watches through a proxy,
timing every success, for the failover benchmark.

A process of its own, so it never shares an interpreter with the proxy it measures. It
holds ``--connections`` keep-alive HTTP/1.1 connections (one thread each, `http.client`),
each doing ``GET --path`` back to back with ``User-Agent: kubelet/v1.31.0`` and
``Accept: application/json``. A 200 whose body is a ``PodList`` is a success and its
completion time (CLOCK_MONOTONIC, system-wide on Linux, so comparable with the caller's)
is recorded. Anything else is a failure, recorded with its time and kind (``http 503``,
``RemoteDisconnected``, ``timeout``, ...); the connection is then closed and a new one
made at once.

Beside them, ``--watches`` watchers (one thread each, raw sockets) open
``--watch-path`` with their own ``--watch-agent`` User-Agent, read the response head and
then the body until the server ends it (the last chunk, or the connection closing), and
open it again, for as long as the run lasts. Each watcher's history (``open``, ``closed``,
``failed`` with times) tells the caller when the proxy moved it.

It prints ``LOAD_READY {json}`` once every connection has had a success and every watch
is open (or exits 1 after ``--ready-timeout``), then runs ``--duration`` seconds from that
moment, writes the result document to ``--out`` and prints ``LOAD_DONE {json}`` (a
summary). Every loop is bounded by the run's deadline; every socket has a timeout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

READY_MARKER = "LOAD_READY "
DONE_MARKER = "LOAD_DONE "

REQUEST_HEADERS = {"User-Agent": "kubelet/v1.31.0", "Accept": "application/json"}
#: The watchers' User-Agent by default: their own, so a server's request counts by
#: User-Agent say where they landed.
WATCH_AGENT = "failover-watch/v1"

#: How long a watcher's socket read blocks before it looks at the clock again.
_WATCH_POLL = 0.2
#: Pause after a failed attempt that the peer refused outright, so a dead port is not
#: hammered in a tight loop (a proxy should never refuse; this bounds the damage if it does).
_REFUSED_PAUSE = 0.01
#: Pause after a watch that did not open (non-200 head or a connection error).
_WATCH_RETRY_PAUSE = 0.05
#: Body fragment every good answer holds.
_POD_LIST = b'"PodList"'


class _Run:
    """What all threads share: the deadline, the ready barrier, and the records."""

    def __init__(self, connections: int, watches: int, ready_timeout: float) -> None:
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.ready_deadline = self.started + ready_timeout
        #: Set once every connection had a success and every watch is open.
        self.ready_at: float | None = None
        self.deadline = self.ready_deadline
        self._pending_connections = set(range(connections))
        self._pending_watches = set(range(watches))
        self.successes: list[list[float]] = [[] for _ in range(connections)]
        #: (time, connection, kind, detail)
        self.failures: list[tuple[float, int, str, str]] = []
        #: per watcher: [kind, time, detail]
        self.watch_history: list[list[list[Any]]] = [[] for _ in range(watches)]
        self.ready_event = threading.Event()

    def alive(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def connection_ok(self, index: int) -> None:
        if index in self._pending_connections:
            with self.lock:
                self._pending_connections.discard(index)
                self._check_ready()

    def watch_open(self, index: int) -> None:
        if index in self._pending_watches:
            with self.lock:
                self._pending_watches.discard(index)
                self._check_ready()

    def _check_ready(self) -> None:
        if self.ready_at is None and not self._pending_connections and not self._pending_watches:
            self.ready_at = time.monotonic()
            self.ready_event.set()

    def pending(self) -> dict[str, int]:
        return {
            "connections": len(self._pending_connections),
            "watches": len(self._pending_watches),
        }


def _get_loop(run: _Run, index: int, host: str, port: int, path: str, timeout: float) -> None:
    """One keep-alive connection doing GETs back to back until the deadline."""
    connection: http.client.HTTPConnection | None = None
    successes = run.successes[index]
    while run.alive():
        kind, detail = "", ""
        try:
            if connection is None:
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
                connection.connect()
                assert connection.sock is not None
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.request("GET", path, headers=REQUEST_HEADERS)
            response = connection.getresponse()
            body = response.read()
            if response.status == 200 and _POD_LIST in body:
                successes.append(time.monotonic())
                run.connection_ok(index)
                if response.will_close:
                    connection.close()
                    connection = None
                continue
            kind = f"http {response.status}"
            detail = body[:200].decode(errors="replace")
        except TimeoutError:
            kind = "timeout"
        except ConnectionRefusedError as e:
            kind, detail = "ConnectionRefusedError", str(e)
            time.sleep(_REFUSED_PAUSE)
        except (OSError, http.client.HTTPException) as e:
            kind, detail = type(e).__name__, str(e)[:200]
        with run.lock:
            run.failures.append((time.monotonic(), index, kind, detail))
        if connection is not None:
            connection.close()
            connection = None
    if connection is not None:
        connection.close()


def _read_head(sock: socket.socket, run: _Run) -> tuple[int, bytes]:
    """The status code of the response head, and the body bytes read with it."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if not run.alive():
            raise TimeoutError("the run ended before the head")
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            raise ConnectionError("closed before the response head")
        buffer += data
        if len(buffer) > 65536:
            raise ConnectionError("response head longer than 64 KiB")
    head, _, rest = buffer.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), rest


def _body_ended(tail: bytes) -> bool:
    """Whether the last bytes of a chunked body are its last chunk (``tail`` is the whole
    body when it is that short)."""
    return tail == b"0\r\n\r\n" or tail.endswith(b"\r\n0\r\n\r\n")


def _watch_once(
    run: _Run, index: int, host: str, port: int, path: str, agent: str, timeout: float
) -> None:
    """Open one watch and read it until the server ends it or the run is over."""
    history = run.watch_history[index]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: {agent}\r\n"
            "Accept: application/json\r\n\r\n".encode("latin-1")
        )
        sock.settimeout(_WATCH_POLL)
        status, tail = _read_head(sock, run)
        if status != 200:
            history.append(["failed", time.monotonic(), f"http {status}"])
            time.sleep(_WATCH_RETRY_PAUSE)
            return
        history.append(["open", time.monotonic(), ""])
        run.watch_open(index)
        # The last chunk of a chunked body; a server that ends the watch sends it.
        while not _body_ended(tail):
            if not run.alive():
                return
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                history.append(["closed", time.monotonic(), type(e).__name__])
                return
            if not data:
                history.append(["closed", time.monotonic(), "eof"])
                return
            tail = (tail + data)[-16:]
        history.append(["closed", time.monotonic(), "end of body"])


def _watch_loop(
    run: _Run, index: int, host: str, port: int, path: str, agent: str, timeout: float
) -> None:
    """One watcher: watch, and watch again whenever the watch ends, until the deadline."""
    while run.alive():
        try:
            _watch_once(run, index, host, port, path, agent, timeout)
        except (OSError, ValueError) as e:
            if run.alive():
                run.watch_history[index].append(["failed", time.monotonic(), type(e).__name__])
                time.sleep(_WATCH_RETRY_PAUSE)


def run_load(args: argparse.Namespace) -> int:
    run = _Run(args.connections, args.watches, args.ready_timeout)
    threads = [
        threading.Thread(
            target=_get_loop,
            args=(run, n, "127.0.0.1", args.port, args.path, args.request_timeout),
            daemon=True,
        )
        for n in range(args.connections)
    ] + [
        threading.Thread(
            target=_watch_loop,
            args=(
                run,
                n,
                "127.0.0.1",
                args.port,
                args.watch_path,
                args.watch_agent,
                args.request_timeout,
            ),
            daemon=True,
        )
        for n in range(args.watches)
    ]
    for thread in threads:
        thread.start()
    if not run.ready_event.wait(args.ready_timeout):
        run.stop.set()
        print(
            DONE_MARKER
            + json.dumps(
                {
                    "error": f"not ready after {args.ready_timeout:g}s",
                    "pending": run.pending(),
                    "failures": [list(f) for f in run.failures[-20:]],
                }
            ),
            flush=True,
        )
        return 1
    assert run.ready_at is not None
    run.deadline = run.ready_at + args.duration
    print(READY_MARKER + json.dumps({"monotonic": run.ready_at}), flush=True)
    for thread in threads:
        thread.join(max(0.0, run.deadline - time.monotonic()) + args.request_timeout + 2)
    run.stop.set()
    with run.lock:
        document: dict[str, Any] = {
            "ready_monotonic": run.ready_at,
            "end_monotonic": run.deadline,
            "successes": [[round(t, 4) for t in times] for times in run.successes],
            "failures": [list(f) for f in run.failures],
            "watches": run.watch_history,
            "threads_still_running": sum(t.is_alive() for t in threads),
        }
    Path(args.out).write_text(json.dumps(document))
    summary = {
        "successes": sum(len(s) for s in document["successes"]),
        "failures": len(document["failures"]),
    }
    print(DONE_MARKER + json.dumps(summary), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadclient", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, required=True, help="the proxy's port on 127.0.0.1")
    parser.add_argument("--path", required=True, help="what every GET asks for")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections (16)")
    parser.add_argument("--watches", type=int, default=0, help="watchers (default 0)")
    parser.add_argument("--watch-path", default="", help="what every watcher asks for")
    parser.add_argument(
        "--watch-agent", default=WATCH_AGENT, help=f"the watchers' User-Agent ({WATCH_AGENT})"
    )
    parser.add_argument(
        "--duration", type=float, required=True, help="seconds from ready to the end"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=5.0,
        help="socket timeout of one request, seconds (default 5)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for every connection and watch (default 30)",
    )
    parser.add_argument("--out", required=True, help="file for the result document")
    args = parser.parse_args(argv)
    if args.watches and not args.watch_path:
        parser.error("--watches needs --watch-path")
    return run_load(args)


if __name__ == "__main__":
    sys.exit(main())
