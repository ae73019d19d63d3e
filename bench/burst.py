"""A burst of concurrent GETs, one connection each, sent as close together as one thread can.

`send_burst` opens every connection first (non-blocking sockets, one `selectors` loop, no
threads), in batches after each of which the caller can wait until the server has
accepted them (a server's listen backlog, 50 with Twisted's default, would otherwise hold
the connections beyond it unaccepted until their first bytes arrive), then writes every
request in one tight loop (a single ``send`` of ~150 bytes each) and reads the answers as
they come: the status, the headers, the body (``Content-Length``, chunked, or up to the
end of the connection), and the time from that request's send to its complete answer
(CLOCK_MONOTONIC). A request without a complete answer within ``answer_timeout`` of the
last send is *hung*; a connection closed or reset before its answer is complete is an
error. Every wait is bounded by its deadline; every socket is closed on the way out.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

#: Bytes read per ``recv``.
_READ_SIZE = 256 * 1024


@dataclass
class Answer:
    """What one request of the burst got."""

    index: int
    #: 0 until a response head arrived.
    status: int = 0
    #: Response headers, names lower-cased (the last value of a repeated header).
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    sent_at: float = 0.0
    #: Seconds from the send to the response head and to the complete answer (None: never).
    head_seconds: float | None = None
    seconds: float | None = None
    #: "" when complete; else "connect: ...", "hung", "closed early", "reset", ...
    error: str = ""

    @property
    def complete(self) -> bool:
        return self.seconds is not None and not self.error


class _Exchange:
    """One connection's request and the bytes of its answer so far."""

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.sock = sock
        self.answer = Answer(index)
        self.buffer = b""
        self.head_end = -1
        self.done = False

    def parse(self, at: float, eof: bool) -> None:
        """Parse what arrived; mark the exchange done when the answer is complete."""
        answer = self.answer
        if self.head_end < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if eof:
                    self._fail("closed before the response head")
                return
            self.head_end = end + 4
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            answer.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
            for line in lines[1:]:
                name, _, value = line.partition(":")
                answer.headers[name.strip().lower()] = value.strip()
            answer.head_seconds = at - answer.sent_at
        body = self.buffer[self.head_end :]
        length = answer.headers.get("content-length")
        if "chunked" in answer.headers.get("transfer-encoding", "").lower():
            decoded = dechunk(body)
            if decoded is None:
                if eof:
                    self._fail("closed before the last chunk")
                return
            body = decoded
        elif length is not None and length.isdigit():
            if len(body) < int(length):
                if eof:
                    self._fail("closed before Content-Length bytes")
                return
            body = body[: int(length)]
        elif not eof:
            return  # the body runs to the end of the connection
        answer.body = body
        answer.seconds = at - answer.sent_at
        self.done = True

    def _fail(self, why: str) -> None:
        self.answer.error = why
        self.done = True


def dechunk(body: bytes) -> bytes | None:
    """A chunked body decoded, or None while its last chunk has not arrived."""
    out: list[bytes] = []
    at = 0
    while True:
        line_end = body.find(b"\r\n", at)
        if line_end < 0:
            return None
        try:
            size = int(body[at:line_end].split(b";", 1)[0], 16)
        except ValueError:
            return None
        if size == 0:
            return b"".join(out) if body.find(b"\r\n", line_end + 2) >= 0 else None
        start = line_end + 2
        if len(body) < start + size + 2:
            return None
        out.append(body[start : start + size])
        at = start + size + 2


def send_burst(
    port: int,
    path: str,
    count: int,
    *,
    headers: Mapping[str, str],
    held: Callable[[int], None] = lambda connected: None,
    batch: int = 0,
    connect_timeout: float = 10.0,
    answer_timeout: float = 10.0,
) -> tuple[list[Answer], dict[str, float]]:
    """Open ``count`` connections to 127.0.0.1:``port``, ``batch`` at a time (0: all at
    once), calling ``held`` with the number connected so far after each batch (the caller
    waits there until the server holds them), send ``GET path`` on every one at once, and
    collect the answers. Returns the answers (in connection order) and the timeline:
    connections open, first and last send (monotonic seconds)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        + "\r\n"
    ).encode("latin-1")
    selector = selectors.DefaultSelector()
    exchanges: list[_Exchange] = []
    try:
        step = batch if batch > 0 else count
        for start in range(0, count, step):
            for index in range(start, min(count, start + step)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                exchange = _Exchange(index, sock)
                exchanges.append(exchange)
                sock.connect_ex(("127.0.0.1", port))
                selector.register(sock, selectors.EVENT_WRITE, exchange)
            _wait_connected(selector, exchanges, connect_timeout)
            held(sum(not e.done for e in exchanges))
        timeline = {"connected": time.monotonic()}
        for exchange in exchanges:
            if exchange.done:
                continue
            exchange.answer.sent_at = time.monotonic()
            try:
                sent = exchange.sock.send(request)
            except OSError as e:
                exchange.answer.error = f"send: {e}"
                exchange.done = True
                continue
            if sent != len(request):
                exchange.answer.error = f"send: only {sent} of {len(request)} bytes"
                exchange.done = True
                continue
            selector.register(exchange.sock, selectors.EVENT_READ, exchange)
        sends = [e.answer.sent_at for e in exchanges if e.answer.sent_at]
        timeline["first_send"] = min(sends, default=0.0)
        timeline["last_send"] = max(sends, default=0.0)
        _read_answers(selector, exchanges, timeline["last_send"] + answer_timeout)
        for exchange in exchanges:
            if not exchange.done:
                exchange.answer.error = f"hung (no complete answer within {answer_timeout:g} s)"
        return [e.answer for e in exchanges], timeline
    finally:
        selector.close()
        for exchange in exchanges:
            exchange.sock.close()


def _wait_connected(
    selector: selectors.BaseSelector, exchanges: list[_Exchange], timeout: float
) -> None:
    """Until every registered connect has finished (or ``timeout``); a failed one ends its
    exchange. Leaves the selector empty."""
    deadline = time.monotonic() + timeout
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
            exchange: _Exchange = key.data
            selector.unregister(exchange.sock)
            error = exchange.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                exchange.answer.error = f"connect: errno {error}"
                exchange.done = True
    for key in list(selector.get_map().values()):
        selector.unregister(key.fileobj)
        key.data.answer.error = f"connect: not connected within {timeout:g} s"
        key.data.done = True


def _read_answers(
    selector: selectors.BaseSelector, exchanges: list[_Exchange], deadline: float
) -> None:
    """Read until every exchange is done or ``deadline``."""
    open_ = sum(not e.done for e in exchanges)
    while open_ and time.monotonic() < deadline:
        for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
            exchange: _Exchange = key.data
            if exchange.done:
                continue
            at = time.monotonic()
            try:
                data = exchange.sock.recv(_READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as e:
                exchange.answer.error = f"reset ({type(e).__name__})"
                exchange.done = True
            else:
                exchange.buffer += data
                exchange.parse(at, eof=not data)
            if exchange.done:
                selector.unregister(exchange.sock)
                open_ -= 1
