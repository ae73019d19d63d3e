"""A lean HTTP/1.1 server for the plain proxy listener, parsed by llhttp (httptools).

twisted.web's `HTTPChannel` and `Request` cost about as much CPU per proxied request as
the relay itself: a `LineReceiver` turn per header line (or yurthub's one-piece shortcut),
a `Request` built with a dozen attributes and two Headers, the response head assembled
field by field, three timer operations, `Site` bookkeeping. Kubelet, kube-proxy and the
other node components talk to the plain listener, so that is where the cost is paid.
`LeanChannel` parses with llhttp in C and builds a `LeanRequest` that has exactly what
yurthub's proxy uses of a twisted.web request:

- ``method``, ``uri``, ``path``, ``args``, ``clientproto``, ``requestHeaders`` (a
  `Headers`), ``content`` (the body in a `BytesIO`), ``getHeader``, ``getClientAddress``,
  ``getHost``, ``isSecure``;
- ``setResponseCode``, ``setHeader``, ``responseHeaders`` (assignable), ``relay_answer``
  (an upstream answer's code and fields, written as they came), ``write``,
  ``finish``, ``notifyFinish``, ``registerProducer``/``unregisterProducer``, ``code``,
  ``startedWriting``, ``finished``, ``_disconnected``, ``channel``, ``defaultContentType``,
  with twisted.web's meaning: the head goes out with the first write, chunked when no
  Content-Length is set (HTTP/1.1), no body for ``HEAD``, 204 and 304; ``finish`` fires
  the ``notifyFinish`` Deferreds, a lost connection errbacks them.

The connection keeps twisted.web's rules: requests are answered one at a time in order
(reading pauses while pipelined requests wait), HTTP/1.1 stays open unless the client says
``Connection: close``, HTTP/1.0 closes after its answer, ``Expect: 100-continue`` gets its
interim answer, and an idle connection is closed after the site's timeout. The limits of
`yurthub.proxy.channel.LimitedHTTPChannel` hold here too, with the same answers: 414 for a
request line over ``maxRequestLineBytes``, 431 for a head over ``maxHeaderBytes`` or with
more than ``maxHeaders`` fields, 413 for a body over 3 MiB, 400 for what llhttp cannot
parse, 408 for a head that does not arrive within ``requestHeadTimeoutSeconds``. An
``Upgrade`` request leaves the connection to `yurthub.proxy.upgrade.take_over_transport`
(the bytes after its head are handed over), or closes it when it is answered instead.

The TLS listener stays on twisted.web: it negotiates HTTP/2 as well.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs

import httptools
from twisted.internet import defer
from twisted.internet.abstract import FileDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES, RESPONSES
from twisted.web.http_headers import Headers

from yurthub.dispatch import WRITES, can_send_now, send_pieces_now
from yurthub.proxy.channel import ChannelLimits, ChannelTimers, refusal
from yurthub.proxy.headers import field, headers_from, set_field
from yurthub.proxy.root import SEND_LIMIT, ProxySite, render_leaf
from yurthub.proxy.status import finish_with_status

_log = Logger()

#: Bytes a channel holds during a write batch before it sends them anyway: a big answer
#: meets the transport's buffer (and its producer's back-pressure) as it is written.
HOLD_AT_MOST = 64 * 1024

#: How long a connection being closed for idleness may take to flush before it is cut.
ABORT_AFTER = 15.0

_HTTP11 = b"HTTP/1.1"
_VERSIONS = {"1.1": _HTTP11, "1.0": b"HTTP/1.0"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class _Refused(Exception):
    """Raised in a parser callback to stop parsing: the connection was refused."""


class LeanRequest:
    """One request on a `LeanChannel`: the part of twisted.web's ``IRequest`` yurthub uses."""

    defaultContentType: bytes | None = b"text/html"
    code = 200
    code_message = b"OK"
    startedWriting = False
    finished = False
    _disconnected = False
    chunked = False
    _no_body = False
    producer: Any = None
    site: Any = None
    #: `relay_answer`'s fields and length while nobody asked for ``responseHeaders``.
    _relayed: list[tuple[bytes, bytes]] | None = None
    _relayed_length: int | None = None
    _response_headers: Headers | None = None

    def __init__(
        self,
        channel: LeanChannel,
        method: bytes,
        uri: bytes,
        version: bytes,
        headers: Headers,
        body: bytes,
        persistent: bool,
    ) -> None:
        self.channel: LeanChannel | None = channel
        self.method = method
        self.uri = uri
        self.clientproto = version
        self.requestHeaders = headers
        self.content = BytesIO(body)
        self.persistent = persistent
        self.notifications: list[defer.Deferred[None]] = []
        #: ``(finished, lost)`` pairs of `yurthub.proxy.status.when_ended`, called
        #: without a Deferred each.
        self.end_hooks: list[tuple[Callable[[], object], Callable[[Failure], object]]] = []

    # --- the request ----------------------------------------------------------------

    @property
    def path(self) -> bytes:
        """The target without its query."""
        return self.uri.split(b"?", 1)[0]

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        """The query's arguments, as twisted.web gives them (blank values kept)."""
        _, _, query = self.uri.partition(b"?")
        return parse_qs(query, keep_blank_values=True)

    def getHeader(self, name: bytes) -> bytes | None:  # noqa: N802 - IRequest's name
        if isinstance(name, bytes):
            values = field(self.requestHeaders, name)
        else:
            values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None

    def getClientAddress(self) -> Any:  # noqa: N802
        return self.channel.getPeer() if self.channel is not None else None

    def getHost(self) -> Any:  # noqa: N802
        return self.channel.getHost() if self.channel is not None else None

    def isSecure(self) -> bool:  # noqa: N802
        return False

    # --- the response ---------------------------------------------------------------

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:  # noqa: N802
        if not isinstance(code, int):
            raise TypeError(f"HTTP response code must be int, not {type(code).__name__}")
        self.code = code
        self.code_message = message if message is not None else RESPONSES.get(code, b"Unknown Status")

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:  # noqa: N802
        self.responseHeaders.setRawHeaders(name, [value])

    @property
    def responseHeaders(self) -> Headers:  # noqa: N802 - IRequest's name
        headers = self._response_headers
        if headers is None:
            headers = self._response_headers = headers_from(self._relayed or ())
            if self._relayed_length is not None:
                set_field(headers, b"content-length", b"%d" % self._relayed_length)
            self._relayed = None
        return headers

    @responseHeaders.setter
    def responseHeaders(self, headers: Headers) -> None:  # noqa: N802
        self._response_headers = headers
        self._relayed = None

    def relay_answer(self, code: int, phrase: bytes, fields: list[tuple[bytes, bytes]], length: int | None) -> None:
        """Answer with an upstream answer's code, phrase and own fields (the connection's
        taken out) and its body's ``length`` (None: unknown, the body goes chunked), no
        default Content-Type: the head is written from ``fields`` as they are, unless
        someone reads or replaces ``responseHeaders`` first."""
        self.code = code
        self.code_message = phrase
        self.defaultContentType = None
        self._response_headers = None
        self._relayed = fields
        self._relayed_length = length

    def _relayed_head(self, fields: list[tuple[bytes, bytes]]) -> bytes:
        """`_head` for `relay_answer`'s fields: the same additions, without `Headers`."""
        code = self.code
        head = [self.clientproto, b" %d " % code, self.code_message, b"\r\n"]
        for name, value in fields:
            head += (name, b": ", value, b"\r\n")
        length = self._relayed_length
        if length is not None:
            head.append(b"Content-Length: %d\r\n" % length)
        elif self.clientproto == _HTTP11 and self.method != b"HEAD" and code not in NO_BODY_CODES:
            head.append(b"Transfer-Encoding: chunked\r\n")
            self.chunked = True
        if not self.persistent and self.clientproto == _HTTP11:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        return b"".join(head)

    def _head(self) -> bytes:
        """The status line and header block, with twisted.web's additions."""
        if self._relayed is not None:
            return self._relayed_head(self._relayed)
        headers = self.responseHeaders
        code = self.code
        length = field(headers, b"content-length")
        if length is None:
            if self.clientproto == _HTTP11 and self.method != b"HEAD" and code not in NO_BODY_CODES:
                set_field(headers, b"transfer-encoding", b"chunked")
                self.chunked = True
            zero_length = False
        else:
            zero_length = length[0] == b"0"
        if (
            self.defaultContentType is not None
            and code != 204
            and code != 304
            and not zero_length
            and field(headers, b"content-type") is None
        ):
            headers.setRawHeaders(b"content-type", [self.defaultContentType])
        if not self.persistent and self.clientproto == _HTTP11:
            set_field(headers, b"connection", b"close")
        head = [self.clientproto, b" %d " % code, self.code_message, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        return b"".join(head)

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("Request.write called on a request after Request.finish was called.")
        channel = self.channel
        if self._disconnected or channel is None:
            return
        if not self.startedWriting:
            self.startedWriting = True
            head = self._head()
            if self.method == b"HEAD" or self.code in NO_BODY_CODES:
                self._no_body = True
                channel.write(head)
            elif not data:
                channel.write(head)
            elif self.chunked:
                channel.writeSequence((head, b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                channel._send((head, data), len(head) + len(data))
            return
        if data and not self._no_body:
            if self.chunked:
                channel.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                channel.write(data)

    def finish(self) -> None:
        if self._disconnected:
            raise RuntimeError(
                "Request.finish called on a request after its connection was lost; "
                "use Request.notifyFinish to keep track of this."
            )
        if self.finished:
            warnings.warn("Warning! request.finish called twice.", stacklevel=2)
            return
        if not self.startedWriting:
            self.write(b"")
        channel = self.channel
        assert channel is not None
        if self.chunked and not self._no_body:
            channel.write(_LAST_CHUNK)
        self.finished = True
        if self.producer is not None:
            _log.failure("", Failure(RuntimeError(f"Producer was not unregistered for {self.uri!r}")))
            self.unregisterProducer()
        self.channel = None
        channel.requestDone(self)
        hooks, self.end_hooks = self.end_hooks, []
        for finished, _ in hooks:
            try:
                finished()
            except Exception:
                _log.failure("after answering {uri!r}", uri=self.uri)
        notifications, self.notifications = self.notifications, []
        for waiting in notifications:
            waiting.callback(None)

    def notifyFinish(self) -> defer.Deferred[None]:  # noqa: N802
        waiting: defer.Deferred[None] = defer.Deferred()
        self.notifications.append(waiting)
        return waiting

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        self.producer = producer
        if self.channel is not None:
            self.channel.registerProducer(producer, streaming)
        else:
            producer.stopProducing()

    def unregisterProducer(self) -> None:  # noqa: N802
        if self.channel is not None and self.producer is not None:
            self.channel.unregisterProducer()
        self.producer = None

    def processingFailed(self, reason: Failure) -> None:  # noqa: N802
        _log.failure("error answering {method} {uri!r}", failure=reason, method=self.method, uri=self.uri)
        finish_with_status(self, 500, "internal error in yurthub; see its log")  # type: ignore[arg-type]

    def process(self) -> None:
        render_leaf(self)

    # --- for the channel ------------------------------------------------------------

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self._disconnected = True
        self.channel = None
        hooks, self.end_hooks = self.end_hooks, []
        for _, lost in hooks:
            try:
                lost(reason)
            except Exception:
                _log.failure("after losing the client of {uri!r}", uri=self.uri)
        notifications, self.notifications = self.notifications, []
        for waiting in notifications:
            waiting.errback(reason)


class LeanChannel(ChannelTimers, Protocol):
    """One client connection of the plain proxy listener (see the module's docstring)."""

    transport: Any

    def __init__(self, site: ProxySite) -> None:
        self.site = site
        #: What `ProxySite` knows its connections' channels by (this is its own channel).
        self._channel = self
        self._limits: ChannelLimits = site.limits or ChannelLimits()
        self._seconds = site.reactor.seconds
        self.timeOut: float | None = site.timeOut
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[LeanRequest] = deque()
        self._current: LeanRequest | None = None
        #: Bytes read past an ``Upgrade`` request's head, for whoever takes the connection.
        self._dataBuffer: list[bytes] = []
        self._upgrading = False
        self._processing = False
        self._paused = False
        self._closing = False
        self._refused = False
        self._lost = False
        self._host: Any = None
        self._send_now = False
        #: Writes held while a `yurthub.dispatch.WRITES` batch is open.
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._head_timer: Any = None
        self._idle_call: Any = None
        self._abort_call: Any = None
        self._last_active = 0.0
        # the message being parsed
        self._in_head = False
        self._url: list[bytes] = []
        self._url_bytes = 0
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._in_body = False
        self._continue_due = False
        #: A refusal (its code) waiting for the answers to the requests before it.
        self._refusal_due = 0
        self._body: list[bytes] = []
        self._body_bytes = 0

    # --- the connection -------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        if isinstance(self.transport, FileDescriptor):
            self.transport.SEND_LIMIT = SEND_LIMIT
        #: Answers are sent as they are written (`yurthub.dispatch.send_now`).
        self._send_now = can_send_now(self.transport)
        self.setTimeout(self.timeOut)

    def getPeer(self) -> Any:  # noqa: N802
        return self.transport.getPeer() if self.transport is not None else None

    def getHost(self) -> Any:  # noqa: N802
        if self._host is None and self.transport is not None:
            self._host = self.transport.getHost()
        return self._host

    def isSecure(self) -> bool:  # noqa: N802
        return False

    def write(self, data: bytes) -> None:
        self._send((data,), len(data))

    def writeSequence(self, pieces: Any) -> None:  # noqa: N802
        self._send(pieces, sum(map(len, pieces)))

    def _send(self, pieces: Any, size: int) -> None:
        """Send ``pieces`` (``size`` bytes) at once, or hold them while a `WRITES` batch
        is open (up to `HOLD_AT_MOST`)."""
        transport = self.transport
        if transport is None:
            return
        if not self._send_now:
            transport.writeSequence(pieces)
        elif WRITES.depth:
            if not self._held:
                WRITES.hold(self)
            self._held.extend(pieces)
            self._held_bytes += size
            if self._held_bytes >= HOLD_AT_MOST:
                self.flush()
        elif self._held:
            self._held.extend(pieces)
            self.flush()
        else:
            send_pieces_now(transport, pieces)

    def flush(self) -> None:
        """Send the writes held during a `WRITES` batch, in one ``sendmsg``."""
        held, self._held = self._held, []
        self._held_bytes = 0
        if held and self.transport is not None:
            send_pieces_now(self.transport, held)

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        if self.transport is None:
            producer.stopProducing()
            return
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:  # noqa: N802
        if self.transport is not None:
            self.transport.unregisterProducer()

    def loseConnection(self) -> None:  # noqa: N802
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._refused or self._closing or self.transport is None:
            return
        self._last_active = self._seconds()
        if self._upgrading:
            self._dataBuffer.append(data)
            return
        WRITES.open()  # answers given while this read is handled go out together
        try:
            self._handle(data)
        finally:
            WRITES.close()

    def _handle(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # The head of an Upgrade request was the last thing parsed; what follows it
            # belongs to whoever takes the connection over.
            rest = data[upgrade.args[0] :] if upgrade.args else b""
            if rest:
                self._dataBuffer.append(rest)
            self._upgrading = True
        except httptools.HttpParserError as error:
            if not self._refused:
                code = self._code_for(error, data)
                self._refuse(code, "too_big" if code != 400 else None)
            self._process()  # whole requests before the bad bytes are answered first
            return
        if self._in_head:
            # Bytes of a head still incomplete, held by the parser: bounded (the parsed
            # fields are counted exactly in on_url and on_header).
            self._raw_head_bytes += len(data)
            if self._raw_head_bytes > self._limits.max_header_bytes + self._limits.max_request_line_bytes:
                self._refuse(431, "too_big")
                return
            if self._head_timer is None:
                self._head_timer = self.site.reactor.callLater(self._limits.head_timeout, self._head_too_slow)
        elif self._head_timer is not None:
            self._cancel_head_timer()
        self._process()

    def _code_for(self, error: Exception, data: bytes) -> int:
        """The answer to bytes llhttp refused: what is also over a limit gets the limit's
        code, as twisted.web (which measures before it parses) answers it; else 400."""
        limits = self._limits
        if "Content-Length overflow" in str(error):
            return 413  # a length llhttp cannot even hold
        if self._in_body:
            return 413 if self._body_bytes + len(data) > limits.max_body_bytes + 64 * 1024 else 400
        if not self._in_head or not self._url_bytes:
            end = data.find(b"\r\n")
            if (end if end != -1 else len(data)) > limits.max_request_line_bytes:
                return 414
        end = data.find(b"\r\n\r\n")
        if self._raw_head_bytes + (end if end != -1 else len(data)) > limits.max_header_bytes:
            return 431
        return 400

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: N802, B008
        self._lost = True
        self.site.open_connections.discard(self)
        self._cancel_head_timer()
        self._cancel_idle_timer()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        requests = ([self._current] if self._current is not None else []) + list(self._queue)
        self._current = None
        self._queue.clear()
        for request in requests:
            request.connectionLost(reason)

    # --- the parser's callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = []
        self._url_bytes = 0
        self._fields = []
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, piece: bytes) -> None:
        self._url.append(piece)
        self._url_bytes += len(piece)
        limit = self._limits.max_request_line_bytes
        # The request line is the method, a space, the target and " HTTP/1.1".
        if self._url_bytes > limit - 32 and self._url_bytes + len(self._parser.get_method()) + 10 > limit:
            self._refuse(414, "too_big")
            raise _Refused()

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self._fields
        fields.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if len(fields) > self._limits.max_headers or self._head_bytes > self._limits.max_header_bytes:
            self._refuse(431, "too_big")
            raise _Refused()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True  # until the message is complete
        self._head_bytes = 0
        self._raw_head_bytes = 0
        expects = False
        for name, value in self._fields:
            lowered = name.lower()
            if lowered == b"content-length":
                if value.strip().isdigit() and int(value) > self._limits.max_body_bytes:
                    self._refuse(413, "too_big")
                    raise _Refused()
            elif lowered == b"expect" and value.strip().lower() == b"100-continue":
                expects = self._parser.get_http_version() == "1.1"
        if expects:
            # The client waits for this before sending the body; while an earlier answer
            # is under way it goes out once that answer is complete (`_process`).
            self._continue_due = True
            self._send_continue()

    def on_body(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > self._limits.max_body_bytes:
            self._refuse(413, "too_big")
            raise _Refused()
        self._body.append(data)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._continue_due = False  # the body came anyway: no interim answer needed now
        parser = self._parser
        headers = headers_from(self._fields)
        version = _VERSIONS.get(parser.get_http_version()) or b"HTTP/" + parser.get_http_version().encode("ascii")
        request = LeanRequest(
            self,
            parser.get_method(),
            b"".join(self._url),
            version,
            headers,
            b"".join(self._body),
            version == _HTTP11 and parser.should_keep_alive() and not parser.should_upgrade(),
        )
        self._fields = []
        self._body = []
        self._queue.append(request)

    # --- requests, one at a time ----------------------------------------------------

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while self._current is None and self._queue and not self._closing and self.transport is not None:
                request = self._current = self._queue.popleft()
                request.process()
        finally:
            self._processing = False
        transport = self.transport
        if transport is None or self._closing:
            return
        if self._current is None and not self._queue:
            if self._refusal_due:
                self._send_refusal(self._refusal_due)
                return
            self._send_continue()
        if self._refused:
            return
        waiting = bool(self._queue) or self._upgrading
        if waiting and not self._paused:
            self._paused = True
            transport.pauseProducing()
        elif not waiting and self._paused:
            self._paused = False
            transport.resumeProducing()

    def requestDone(self, request: LeanRequest) -> None:  # noqa: N802 - twisted.web's name
        """``request`` has been answered: close, or go on with the next one."""
        if request is not self._current:
            return
        self._current = None
        if self.transport is None:
            return
        self._last_active = self._seconds()
        if not request.persistent:
            self._closing = True
            self._queue.clear()
            self.flush()
            self.transport.loseConnection()
            return
        self._process()

    # --- timers ---------------------------------------------------------------------
    # The idle timer is kept lazily: it stays armed, the channel notes when it last heard
    # from the client or answered it, and a timer that fires early (or during a request)
    # sets itself for the rest of the period.

    def setTimeout(self, period: float | None) -> None:  # noqa: N802 - TimeoutMixin's name
        """Idle time allowed between requests; None stops every timer (a splice takes
        the connection over)."""
        self.timeOut = period
        if period is None:
            self._cancel_idle_timer()
            self._cancel_head_timer()
            return
        self._last_active = self._seconds()
        if self._idle_call is None and not self._lost:
            self._idle_call = self.site.reactor.callLater(period, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_call = None
        period = self.timeOut
        if period is None or self.transport is None or self._lost:
            return
        if self._current is not None or self._queue:
            left = period  # a request is being handled: no idle time yet
        else:
            left = self._last_active + period - self.site.reactor.seconds()
        if left > 0:
            self._idle_call = self.site.reactor.callLater(left, self._idle_check)
            return
        self._closing = True
        self.transport.loseConnection()
        self._abort_call = self.site.reactor.callLater(ABORT_AFTER, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if self.transport is not None and not self._lost:
            self.transport.abortConnection()

    def _refuse(self, code: int, reason: str | None) -> None:
        """Answer ``code`` with a Status, close the connection, count it under ``reason``."""
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._cancel_head_timer()
        if reason is not None:
            self.site.refused(reason)
        if self._current is not None or self._queue:
            # Requests that came whole before the refused bytes are answered first.
            self._refusal_due = code
            if not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return
        self._send_refusal(code)

    def _send_refusal(self, code: int) -> None:
        self._refusal_due = 0
        self._closing = True
        self.flush()
        self.transport.write(refusal(code))
        self.transport.loseConnection()

    def _send_continue(self) -> None:
        if self._continue_due and self._current is None and not self._queue and self.transport is not None:
            self._continue_due = False
            self.write(_CONTINUE)


class LeanFactory(Factory):
    """Builds `LeanChannel`s for a `ProxySite` (its resource, limits, timeout and open
    connections); the site's TLS listener keeps twisted.web's channels."""

    noisy = False

    def __init__(self, site: ProxySite) -> None:
        self.site = site

    def doStart(self) -> None:  # noqa: N802
        self.site.doStart()

    def doStop(self) -> None:  # noqa: N802
        self.site.doStop()

    def buildProtocol(self, addr: Any) -> LeanChannel:  # noqa: N802
        channel = LeanChannel(self.site)
        channel.factory = self  # type: ignore[assignment]
        self.site.open_connections.add(channel)
        return channel
