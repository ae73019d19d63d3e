"""``python -m bench.watchclient``: read a watch until N events arrived, and time it.

A deliberately small client, a process of its own so it never shares a CPU-bound
interpreter with the server it measures: one raw socket, one ``GET`` with the given
User-Agent and ``Accept: application/json``, the response head parsed by hand, the body
de-chunked (or read as it comes, if not chunked) and newline-terminated events counted
without decoding them. It prints ``WATCH_READY {json}`` as soon as the response head is
in (kube-apiserver and yurthub send it before any event), so the caller knows the watch
is registered before it asks the cloud for events, then one ``WATCH_RESULT {json}``:
``events``, ``bytes``, ``first_monotonic``/``last_monotonic`` (CLOCK_MONOTONIC, which is
system-wide on Linux and so comparable with the caller's), ``cpu_seconds`` (its own CPU
time from the response head to the last event), ``last_rv`` (of the last
event, decoded once at the end), ``errors`` (ERROR events seen) and, if it failed,
``error``. Exit status 0 when it counted all the events, 1 otherwise. ``--timeout``
bounds the whole run.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

READY_MARKER = "WATCH_READY "
RESULT_MARKER = "WATCH_RESULT "

_RECV = 256 * 1024


class WatchFailed(Exception):
    """The watch did not deliver the events (bad status, closed early, timed out)."""


class _Reader:
    """Buffered reads from a socket with a deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self.buffer = bytearray()

    def fill(self) -> bool:
        """Read more into the buffer; False at end of stream."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise WatchFailed("timed out")
        self._sock.settimeout(left)
        try:
            data = self._sock.recv(_RECV)
        except TimeoutError:
            raise WatchFailed("timed out") from None
        if not data:
            return False
        self.buffer += data
        return True

    def line(self) -> bytes:
        """One CRLF-terminated line, without its terminator."""
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if len(self.buffer) > 64 * 1024:
                raise WatchFailed("a header or chunk-size line longer than 64 KiB")
            if not self.fill():
                raise WatchFailed("connection closed in the middle of a line")

    def take(self, most: int) -> bytes:
        """Up to ``most`` bytes (at least one), reading if the buffer is empty; b"" at end."""
        if not self.buffer and not self.fill():
            return b""
        piece = bytes(self.buffer[:most])
        del self.buffer[: len(piece)]
        return piece


def _body_pieces(reader: _Reader, chunked: bool) -> Any:
    """The body's bytes in pieces as they arrive."""
    if not chunked:
        while True:
            piece = reader.take(_RECV)
            if not piece:
                return
            yield piece
    while True:
        size_line = reader.line().split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise WatchFailed(f"bad chunk size line {size_line[:40]!r}") from None
        if size == 0:
            return
        while size:
            piece = reader.take(size)
            if not piece:
                raise WatchFailed("connection closed in the middle of a chunk")
            size -= len(piece)
            yield piece
        if reader.line() != b"":
            raise WatchFailed("chunk not followed by CRLF")


def watch(
    host: str, port: int, path: str, user_agent: str, count: int, timeout: float
) -> dict[str, Any]:
    """Open the watch, announce readiness, count ``count`` events; the result document."""
    deadline = time.monotonic() + timeout
    result: dict[str, Any] = {"events": 0, "bytes": 0, "errors": 0, "last_rv": "", "status": 0}
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: {user_agent}\r\n"
            "Accept: application/json\r\n\r\n"
        )
        sock.sendall(request.encode("latin-1"))
        reader = _Reader(sock, deadline)
        status_line = reader.line().decode("latin-1")
        parts = status_line.split(" ", 2)
        result["status"] = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers: dict[str, str] = {}
        while True:
            line = reader.line()
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if result["status"] != 200:
            raise WatchFailed(f"{status_line!r}: {bytes(reader.buffer[:300])!r}")
        print(
            READY_MARKER + json.dumps({"status": result["status"], "headers": headers}), flush=True
        )
        cpu_start = time.process_time()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        pending = b""
        last_line = b""
        events = 0
        size = 0
        first = 0.0
        for piece in _body_pieces(reader, chunked):
            if not first:
                first = time.monotonic()
            size += len(piece)
            data = pending + piece if pending else piece
            found = data.count(b"\n")
            if not found:
                pending = data
                continue
            head, _, pending = data.rpartition(b"\n")
            last_line = head[head.rfind(b"\n") + 1 :] or last_line
            if b'"type":"ERROR"' in head:
                result["errors"] += head.count(b'"type":"ERROR"')
            events += found
            if events >= count:
                break
        last = time.monotonic()
        result.update(
            events=events,
            bytes=size,
            first_monotonic=first,
            last_monotonic=last,
            cpu_seconds=round(time.process_time() - cpu_start, 4),
        )
        if last_line:
            try:
                event = json.loads(last_line)
                result["last_rv"] = str(event["object"]["metadata"]["resourceVersion"])
                result["last_type"] = event.get("type")
            except (ValueError, KeyError, TypeError) as e:
                result["last_line_error"] = f"{type(e).__name__}: {e}"
        if events < count:
            raise WatchFailed(f"the stream ended after {events} of {count} events")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.watchclient", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--resource-version", required=True, help="resourceVersion to watch from")
    parser.add_argument("--events", type=int, required=True, help="how many events to wait for")
    parser.add_argument(
        "--path", default="/api/v1/pods", help="collection to watch (default /api/v1/pods)"
    )
    parser.add_argument(
        "--user-agent", default="kubelet/v1.31.0", help="User-Agent (default kubelet/v1.31.0)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds for the whole run (default 120)"
    )
    args = parser.parse_args(argv)
    path = (
        f"{args.path}?watch=true&resourceVersion={args.resource_version}&allowWatchBookmarks=false"
    )
    try:
        result = watch("127.0.0.1", args.port, path, args.user_agent, args.events, args.timeout)
    except (WatchFailed, OSError) as e:
        print(RESULT_MARKER + json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
