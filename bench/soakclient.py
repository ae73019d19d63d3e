"""``python -m bench.soakclient``: many open watches and paced GETs through a proxy, in one
thread, for the soak benchmark.

A process of its own (so it never shares an interpreter with the proxy it measures), one
``selectors`` loop over non-blocking sockets, no threads: ``--watches`` watches of
``--watch-path`` held open for the whole run, and ``GET --path`` sent at ``--rate`` per
second on a pool of keep-alive connections (a new connection is opened when every open
one is busy, up to ``--max-connections``; requests due meanwhile wait in a queue and go
out as soon as a connection is free, so the rate is kept on average). Every answer is
parsed as `bench.burst` parses one (status, then ``Content-Length`` or chunked body).

Counted as errors: a GET answered other than 200 with a ``PodList``, a GET without a
complete answer within ``--request-timeout``, a connection that fails; a watch answered
other than 200, a watch closed or reset in the middle of its body, an ``ERROR`` watch
event. A watch the server ends cleanly (its last chunk) is opened again and counted as
``rewatches``, not as an error. Watch events are counted by their ``{"type":`` prefix,
without decoding them.

It raises its own open-file limit to the hard limit (500 watches and a pool need more
than the usual 1024). Prints ``SOAK_READY {json}`` once every watch is open, runs
``--duration`` seconds from then, closes every socket, writes the result document to
``--out`` and prints ``SOAK_DONE {json}``. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import selectors
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.burst import _Exchange

READY_MARKER = "SOAK_READY "
DONE_MARKER = "SOAK_DONE "

_READ_SIZE = 256 * 1024
_EVENT = b'{"type":'
_ERROR_EVENT = b'{"type":"ERROR"'
_POD_LIST = b'"PodList"'
#: Pause before a watch that failed to open is tried again.
_WATCH_RETRY = 0.5


def raise_fd_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def _request(method: str, path: str, port: int, agent: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {agent}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode("latin-1")


class _Watch:
    """One watch connection: head, then events counted until the body ends."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.sock: socket.socket | None = None
        self.connected = False
        self.head_done = False
        self.buffer = b""
        self.tail = b""
        self.retry_at = 0.0


class _Conn:
    """One keep-alive GET connection; ``exchange`` is the request in flight, if any."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.connected = False
        self.exchange: _Exchange | None = None
        self.deadline = 0.0


class SoakClient:
    """The selector loop and its counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.selector = selectors.DefaultSelector()
        self.watches = [_Watch(n) for n in range(args.watches)]
        self.conns: list[_Conn] = []
        self.watch_request = _request("GET", args.watch_path, args.port, args.agent)
        self.get_request = _request("GET", args.path, args.port, args.agent)
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: list[tuple[float, str]] = []
        self.latencies: list[float] = []
        self.open_watches = 0

    # --- errors -----------------------------------------------------------------------

    def error(self, kind: str) -> None:
        self.counts["errors"] += 1
        if len(self.errors) < 200:
            self.errors.append((round(time.monotonic(), 3), kind))

    # --- watches ----------------------------------------------------------------------

    def open_watch(self, watch: _Watch) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.args.port))
        watch.sock, watch.connected, watch.head_done = sock, False, False
        watch.buffer, watch.tail = b"", b""
        self.selector.register(sock, selectors.EVENT_WRITE, watch)
        self.counts["watch_opens"] += 1

    def close_watch(self, watch: _Watch, *, retry: bool) -> None:
        if watch.sock is not None:
            self.selector.unregister(watch.sock)
            watch.sock.close()
            watch.sock = None
        if watch.head_done:
            self.open_watches -= 1
        watch.head_done = False
        watch.retry_at = time.monotonic() + (_WATCH_RETRY if retry else 0.0)

    def watch_ready(self, watch: _Watch, mask: int) -> None:
        assert watch.sock is not None
        if not watch.connected:
            if watch.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.error("watch connect failed")
                self.close_watch(watch, retry=True)
                return
            watch.connected = True
            watch.sock.send(self.watch_request)  # ~150 bytes into an empty buffer
            self.selector.modify(watch.sock, selectors.EVENT_READ, watch)
            return
        try:
            data = watch.sock.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            self.error(f"watch reset ({type(e).__name__})")
            self.close_watch(watch, retry=True)
            return
        if not data:
            self.error("watch closed in the middle of its body")
            self.close_watch(watch, retry=True)
            return
        if not watch.head_done:
            watch.buffer += data
            end = watch.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = watch.buffer[:end], watch.buffer[end + 4 :]
            watch.buffer = b""
            status = head.split(b"\r\n", 1)[0].split(b" ", 2)
            if len(status) < 2 or status[1] != b"200":
                self.error(f"watch answered {status[1:2]!r}")
                self.close_watch(watch, retry=True)
                return
            watch.head_done = True
            self.open_watches += 1
        # Count event prefixes, including one split across two reads.
        joined = watch.tail + data
        self.counts["events"] += joined.count(_EVENT)
        if _ERROR_EVENT in joined:
            self.counts["error_events"] += joined.count(_ERROR_EVENT)
            self.error("ERROR watch event")
        watch.tail = joined[-(len(_EVENT) - 1) :]
        if joined.endswith(b"\r\n0\r\n\r\n"):
            self.counts["rewatches"] += 1
            self.close_watch(watch, retry=False)

    # --- paced GETs -------------------------------------------------------------------

    def new_conn(self) -> _Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect_ex(("127.0.0.1", self.args.port))
        conn = _Conn(sock)
        self.conns.append(conn)
        self.selector.register(sock, selectors.EVENT_WRITE, conn)
        self.counts["connections_opened"] += 1
        return conn

    def drop_conn(self, conn: _Conn) -> None:
        self.selector.unregister(conn.sock)
        conn.sock.close()
        self.conns.remove(conn)

    def send(self, conn: _Conn) -> None:
        exchange = _Exchange(0, conn.sock)
        exchange.answer.sent_at = time.monotonic()
        conn.exchange = exchange
        conn.deadline = exchange.answer.sent_at + self.args.request_timeout
        conn.sock.send(self.get_request)
        self.counts["requests_sent"] += 1

    def conn_ready(self, conn: _Conn, mask: int) -> None:
        if not conn.connected:
            if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.error("GET connect failed")
                self.drop_conn(conn)
                return
            conn.connected = True
            self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        exchange = conn.exchange
        try:
            data = conn.sock.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            if exchange is not None:
                self.error(f"GET reset ({type(e).__name__})")
            self.drop_conn(conn)
            return
        if exchange is None:
            self.drop_conn(conn)  # the server closed an idle keep-alive connection
            return
        now = time.monotonic()
        exchange.buffer += data
        exchange.parse(now, eof=not data)
        if not exchange.done:
            return
        answer = exchange.answer
        conn.exchange = None
        if answer.error:
            self.error(f"GET {answer.error}")
        elif answer.status != 200 or _POD_LIST not in answer.body:
            self.error(f"GET answered {answer.status}")
        else:
            self.counts["requests_ok"] += 1
            self.latencies.append(now - answer.sent_at)
        if answer.error or not data or answer.headers.get("connection", "").lower() == "close":
            self.drop_conn(conn)

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        args = self.args
        started = time.monotonic()
        ready_deadline = started + args.ready_timeout
        # Open the watches in batches so the listen backlog is never the bottleneck.
        pending = collections.deque(self.watches)
        ready_at: float | None = None
        end = ready_deadline
        period = 1.0 / args.rate if args.rate > 0 else 0.0
        next_due = 0.0
        owed = 0
        while True:
            now = time.monotonic()
            if ready_at is None:
                while pending and sum(w.sock is not None and not w.head_done for w in self.watches) < 100:
                    self.open_watch(pending.popleft())
                if not pending and self.open_watches == len(self.watches):
                    ready_at = now
                    end = now + args.duration
                    next_due = now
                    self.counts.clear()
                    self.errors.clear()
                    print(READY_MARKER + json.dumps({"monotonic": now, "watches": self.open_watches}), flush=True)
                elif now > ready_deadline:
                    raise SystemExit(
                        DONE_MARKER + json.dumps({"error": f"only {self.open_watches} watches open "
                                                  f"after {args.ready_timeout:g} s"})
                    )
            else:
                if now >= end:
                    break
                for watch in self.watches:
                    if watch.sock is None and now >= watch.retry_at:
                        self.open_watch(watch)
                if period:
                    while next_due <= now:
                        owed += 1
                        next_due += period
                for conn in list(self.conns):
                    if conn.exchange is not None and now > conn.deadline:
                        self.error(f"GET no answer within {args.request_timeout:g} s")
                        self.drop_conn(conn)
                idle = [c for c in self.conns if c.connected and c.exchange is None]
                while owed and idle:
                    self.send(idle.pop())
                    owed -= 1
                connecting = sum(not c.connected for c in self.conns)
                while owed > connecting and len(self.conns) < args.max_connections:
                    self.new_conn()
                    connecting += 1
                self.counts["max_owed"] = max(self.counts["max_owed"], owed)
            timeout = 0.05 if ready_at is None else max(0.0, min(next_due - time.monotonic(), 0.05))
            for key, mask in self.selector.select(timeout):
                if isinstance(key.data, _Watch):
                    self.watch_ready(key.data, mask)
                else:
                    self.conn_ready(key.data, mask)
        assert ready_at is not None
        finished = time.monotonic()
        for watch in self.watches:
            if watch.sock is not None:
                self.close_watch(watch, retry=False)
        for conn in list(self.conns):
            if conn.exchange is not None:
                self.counts["requests_in_flight_at_end"] += 1
            self.drop_conn(conn)
        self.selector.close()
        latencies = sorted(self.latencies)

        def quantile(q: float) -> float | None:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 4) if latencies else None

        return {
            "seconds": round(finished - ready_at, 2),
            "watches": len(self.watches),
            "counts": dict(self.counts),
            "rate_achieved": round(self.counts["requests_ok"] / max(1e-9, finished - ready_at), 1),
            "latency_p50": quantile(0.5),
            "latency_p99": quantile(0.99),
            "latency_max": round(latencies[-1], 4) if latencies else None,
            "errors": self.errors,
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soakclient", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the proxy's port on 127.0.0.1")
    parser.add_argument("--path", required=True, help="what every GET asks for")
    parser.add_argument("--watch-path", required=True, help="what every watch asks for")
    parser.add_argument("--watches", type=int, default=500, help="watches held open (500)")
    parser.add_argument("--rate", type=float, default=200.0, help="GETs per second (200)")
    parser.add_argument("--duration", type=float, required=True, help="seconds from ready to the end")
    parser.add_argument("--agent", default="kubelet/v1.31.0", help="User-Agent (kubelet/v1.31.0)")
    parser.add_argument("--max-connections", type=int, default=64, help="GET connections at most (64)")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="seconds per GET (10)")
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to open every watch (60)")
    parser.add_argument("--out", required=True, help="file for the result document")
    args = parser.parse_args(argv)
    limit = raise_fd_limit()
    if limit != resource.RLIM_INFINITY and limit < args.watches + args.max_connections + 64:
        print(DONE_MARKER + json.dumps({"error": f"open-file limit {limit} is too low"}), flush=True)
        return 1
    result = SoakClient(args).run()
    result["fd_limit"] = limit
    Path(args.out).write_text(json.dumps(result))
    summary = {k: result[k] for k in ("seconds", "rate_achieved")} | {
        "errors": result["counts"].get("errors", 0),
        "requests_ok": result["counts"].get("requests_ok", 0),
        "events": result["counts"].get("events", 0),
    }
    print(DONE_MARKER + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
