"""Connection-level protection of the proxy listeners: a cap on open connections, and an
HTTP/1.1 channel with limits a client gets told about.

`ConnectionCap` wraps each proxy listener's factory (HTTP and HTTPS share one count): at
``maxConnections`` open, a new connection is closed as it arrives (the listening port drops
it when no protocol is built) and counted. The hub listener has none of this.

twisted.web drops a connection whose request line or header line passes 16 KB without a
word, and answers other oversized heads with a bare ``400``. `LimitedHTTPChannel` answers
with a Kubernetes ``Status`` and closes instead: 414 for a request line over
``maxRequestLineBytes``, 431 for a head over ``maxHeaderBytes`` or with more than
``maxHeaders`` fields, 413 for a body over 3 MiB (kube-apiserver's own limit), 400 for a
malformed one. It also gives a request head
``requestHeadTimeoutSeconds`` to arrive once its first byte is in: the channel's idle
timeout restarts at every byte, so a client sending one byte every few seconds (slowloris)
would otherwise hold its connection forever; such a client gets 408 and is cut.

The deadline is armed only when a head is left incomplete after the bytes at hand were
parsed, so a request that arrives in one piece (nearly all) costs no timer. The limits and
the metrics come from the channel's site (`ChannelLimits` on ``site.limits``); HTTP/2
connections are governed by h2's own limits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.protocol import Factory
from twisted.web.http import RESPONSES, HTTPChannel, _GenericHTTPChannelProtocol

from yurthub.proxy.status import status_body


@dataclass(frozen=True)
class ChannelLimits:
    """The request-head limits of one site's connections."""

    max_request_line_bytes: int = 32 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    head_timeout: float = 10.0
    #: kube-apiserver's own limit on a request body (``--max-request-bytes``, 3 MiB).
    max_body_bytes: int = 3 * 1024 * 1024


_MESSAGES = {
    400: "the request could not be parsed",
    408: "the request head did not arrive in time",
    413: "the request body is larger than this node's yurthub accepts",
    414: "the request line is longer than this node's yurthub accepts",
    431: "the request headers are larger than this node's yurthub accepts",
}


def refusal(code: int) -> bytes:
    """The whole answer, head and ``Status`` body, of a connection cut for ``code``."""
    body = status_body(code, _MESSAGES[code])
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (code, RESPONSES.get(code, b"Request Header Fields Too Large"), len(body))
    )
    return head + body


#: An RFC 9110 token (a method, a header name).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: What twisted.web refuses in a request target.
_BAD_TARGET = re.compile(rb"[\x00-\x20\xb1-\xff]")
#: Header fields the one-piece path leaves to twisted.web: a body, or 100-continue.
_NOT_ONE_PIECE = frozenset({b"content-length", b"transfer-encoding", b"expect"})


class ChannelTimers:
    """The request-head deadline and the idle timer's clean-up, shared by both HTTP/1.1
    channels (`LimitedHTTPChannel`, `yurthub.proxy.http11.LeanChannel`); the class
    answers a refusal with ``_refuse(code, reason)``."""

    _head_timer: Any = None
    _idle_call: Any = None

    def _refuse(self, code: int, reason: str | None) -> None:
        raise NotImplementedError

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._refuse(408, "slow")

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    def _cancel_idle_timer(self) -> None:
        if self._idle_call is not None:
            if self._idle_call.active():
                self._idle_call.cancel()
            self._idle_call = None


class LimitedHTTPChannel(ChannelTimers, HTTPChannel):
    """`HTTPChannel` with told-about limits and a deadline for each request head.

    A request that arrives whole in one read, with no body (nearly every request a node's
    components send), is taken in one piece (`_one_piece`): its head is split and checked
    as twisted.web would, line by line, but without a `LineReceiver` turn per line. Any
    other request, and any head the quick checks do not accept, takes twisted.web's path,
    which answers it as it always has.
    """

    _refused = False
    _body_bytes = 0
    _host: Any = None
    _secure: bool | None = None
    _last_active = 0.0
    _lost = False

    # --- the idle timeout, kept lazily ---------------------------------------------
    # TimeoutMixin moves its timer at every read, and twisted.web cancels it and makes
    # a new one around every request (no idle timeout while a request is handled):
    # three timer operations per request. Here the timer stays where it is, the channel
    # notes when it last heard from the client, and a timer that fires early sets
    # itself for the rest of the period; one that fires during a request does nothing
    # (the request's end sets it again). setTimeout(None) from anyone else (a splice
    # taking the connection over, the switch to HTTP/2, the end) still cancels it.

    def resetTimeout(self) -> None:  # noqa: N802 - TimeoutMixin's name
        self._last_active = self.site.reactor.seconds()  # type: ignore[attr-defined]

    def setTimeout(self, period: float | None) -> float | None:  # type: ignore[override]  # noqa: N802
        previous = self.timeOut
        self.timeOut = period  # type: ignore[assignment]
        if period is None:
            self._cancel_idle_timer()
        elif not self._lost:
            self._last_active = self.site.reactor.seconds()  # type: ignore[attr-defined]
            if self._idle_call is None:
                self._idle_call = self.callLater(period, self._idle_check)
        return previous

    def allContentReceived(self) -> None:  # noqa: N802
        if self.timeOut:
            # twisted.web would now call setTimeout(None) and setTimeout(saved) at the
            # request's end; the timer stays armed instead and ignores the request.
            self._savedTimeOut, self.timeOut = self.timeOut, None  # type: ignore[assignment]
        super().allContentReceived()

    def _idle_check(self) -> None:
        self._idle_call = None
        if self.timeOut is None:
            return  # a request is being handled; its end sets the timer again
        left = self._last_active + self.timeOut - self.site.reactor.seconds()  # type: ignore[attr-defined]
        if left > 0:
            self._idle_call = self.callLater(left, self._idle_check)
            return
        self.timeoutConnection()

    def connectionMade(self) -> None:  # noqa: N802
        limits: ChannelLimits = self.site.limits  # type: ignore[attr-defined]
        self._limits = limits
        # Each line may be as long as the whole head; the head's own total is checked below.
        self.MAX_LENGTH = limits.max_header_bytes
        self.totalHeadersSize = limits.max_header_bytes
        self.maxHeaders = limits.max_headers
        super().connectionMade()

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:  # noqa: N802
        # twisted.web hands the transport a sequence of four pieces per field, and the
        # transport checks each piece on its own: one joined write instead.
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head))  # type: ignore[union-attr]

    def isSecure(self) -> bool:  # noqa: N802 - Twisted's name
        # An interface adaptation per ask, asked several times per request; a
        # connection's transport does not change (an upgrade splice takes it away).
        secure = self._secure
        if secure is None and self.transport is not None:
            secure = self._secure = super().isSecure()
        return bool(secure)

    def getHost(self) -> Any:  # noqa: N802 - Twisted's name
        # twisted.web asks for every request; each ask is a getsockname() system call.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._refused:
            return
        if (
            self.line_mode
            and self.persistent
            and not self._handlingRequest
            and not self._buffer
            and self._HTTPChannel__first_line == 1  # type: ignore[attr-defined]
            and data.find(b"\r\n\r\n") == len(data) - 4
            and self._one_piece(data)
        ):
            return
        super().dataReceived(data)
        if self._refused:
            return
        first_line = self._HTTPChannel__first_line  # type: ignore[attr-defined]
        if first_line and len(self._buffer) > self._limits.max_request_line_bytes:
            self._refuse(414, "too_big")
            return
        in_head = self.line_mode and (not first_line or bool(self._buffer))
        if in_head:
            if self._head_timer is None:
                self._head_timer = self.callLater(self._limits.head_timeout, self._head_too_slow)
        elif self._head_timer is not None:
            self._cancel_head_timer()

    def _one_piece(self, data: bytes) -> bool:
        """Take ``data``, one whole bodyless request head, as twisted.web would line by
        line; False (nothing done) when it needs twisted.web's own path."""
        limits = self._limits
        if len(data) > limits.max_header_bytes:
            return False
        lines = data[:-4].split(b"\r\n")
        if len(lines) > limits.max_headers:
            return False
        parts = lines[0].split(b" ")
        if len(parts) != 3 or len(lines[0]) > limits.max_request_line_bytes:
            return False
        method, target, version = parts
        if (
            (version != b"HTTP/1.1" and version != b"HTTP/1.0")
            or not _TOKEN.match(method)
            or not target
            or _BAD_TARGET.search(target)
        ):
            return False
        fields = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.match(name) or name.lower() in _NOT_ONE_PIECE:
                return False
            value = value.strip(b" \t")
            if b"\r" in value or b"\n" in value or b"\x00" in value:
                return False
            fields.append((name, value))
        self.resetTimeout()
        request = self.requestFactory(self, len(self.requests))
        self.requests.append(request)
        headers = request.requestHeaders
        for name, value in fields:
            headers.addRawHeader(name, value)
        self._command, self._path, self._version = method, target, version
        self.allHeadersReceived()
        if not self._refused:
            self.allContentReceived()
        return True

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if self._refused:
            return
        if self._HTTPChannel__first_line and len(line) > self._limits.max_request_line_bytes:  # type: ignore[attr-defined]
            self._refuse(414, "too_big")
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse(431, "too_big")
            return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:  # noqa: N802
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(431, "too_big")
            return False
        return bool(super().headerReceived(line))

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        first_line = self._HTTPChannel__first_line  # type: ignore[attr-defined]
        self._refuse(414 if first_line else 431, "too_big")

    def allHeadersReceived(self) -> None:  # noqa: N802
        self._cancel_head_timer()
        # twisted.web would spool any body, however large, to a temporary file.
        if self.length is not None and self.length > self._limits.max_body_bytes:
            self._refuse(413, "too_big")
            return
        self._body_bytes = 0
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._refused:
            return
        if not self._handlingRequest and self._transferDecoder is not None:
            # A chunked body has no length up front: count it as it comes (framing included).
            self._body_bytes += len(data)
            if self._body_bytes > self._limits.max_body_bytes + 64 * 1024:
                self._refuse(413, "too_big")
                return
        super().rawDataReceived(data)

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802 - Twisted's name
        self._refuse(400, None)

    def _refuse(self, code: int, reason: str | None) -> None:
        """Answer ``code`` with a Status, close the connection, count it under ``reason``."""
        if self._refused:
            return
        self._refused = True
        self._cancel_head_timer()
        if reason is not None:
            self.site.refused(reason)  # type: ignore[attr-defined]
        self.transport.write(refusal(code))  # type: ignore[union-attr]
        self.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self._cancel_head_timer()
        self._lost = True
        self._cancel_idle_timer()
        super().connectionLost(reason)


def limited_channel_protocol() -> _GenericHTTPChannelProtocol:
    """The ``protocol`` of a site whose HTTP/1.1 connections use `LimitedHTTPChannel`."""
    return _GenericHTTPChannelProtocol(LimitedHTTPChannel())


class OpenConnections:
    """The count of open proxy connections, shared by the listeners' `ConnectionCap`s."""

    def __init__(self, limit: int, metrics: Any) -> None:
        self.limit = limit
        self.open = 0
        self._metrics = metrics

    def refused(self, reason: str) -> None:
        self._metrics.connections_refused.labels(reason).inc()

    def _opened(self) -> None:
        self.open += 1
        self._metrics.connections_open.set(self.open)

    def _closed(self) -> None:
        self.open -= 1
        self._metrics.connections_open.set(self.open)


class ConnectionCap(Factory):
    """Builds the wrapped factory's protocols while fewer than ``limit`` are open."""

    def __init__(self, wrapped: Any, connections: OpenConnections) -> None:
        self.wrapped = wrapped
        self.connections = connections
        self.noisy = False

    def doStart(self) -> None:  # noqa: N802
        self.wrapped.doStart()

    def doStop(self) -> None:  # noqa: N802
        self.wrapped.doStop()

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        connections = self.connections
        if connections.open >= connections.limit:
            connections.refused("limit")
            return None
        protocol = self.wrapped.buildProtocol(addr)
        if protocol is None:
            return None
        connections._opened()
        lost: Callable[[Any], None] = protocol.connectionLost
        counted = [True]

        def closed() -> None:
            if counted[0]:
                counted[0] = False
                connections._closed()

        def connection_lost(reason: Any) -> None:
            closed()
            lost(reason)

        protocol.connectionLost = connection_lost
        # An upgrade splice hands a plain TCP transport to a protocol of its own; it calls
        # this when that connection ends (`yurthub.proxy.upgrade.take_over_transport`).
        protocol.connection_closed = closed
        return protocol
