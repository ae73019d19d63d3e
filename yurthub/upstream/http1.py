"""A lean HTTP/1.1 client for the proxy path: pooled connections, C parsing (httptools).

`twisted.web.client.Agent` parses a response line by line in Python, builds a state
machine, a producer, a `Response` and several Deferreds per request: about a third of
yurthub's CPU per proxied 100-pod list. `UpstreamClient` keeps what the remote proxy
relies on, with the same objects at its seams, and leaves the parsing to llhttp:

- ``request_to(backend, method, target, headers, body)`` returns a Deferred that fires
  with an `UpstreamResponse` (``code``, ``phrase``, ``headers`` without the
  connection-control fields, ``length``, ``deliverBody``) once the response head is in;
- failures before the head are Twisted's own: the endpoint's connect errors,
  `ResponseNeverReceived` / `ResponseFailed` carrying the reasons (a TLS handshake failure
  among them), `CancelledError` when the caller cancels;
- the body protocol gets a push producer as its transport (pausing reads from the
  upstream socket, or dropping the connection on ``stopProducing``), the body as it
  arrives, then ``connectionLost`` with `ResponseDone`, `PotentialDataLoss` (a body that
  ends with the connection) or `ResponseFailed`;
- a connection whose answer was read to its end and may be kept alive goes back to the
  pool of its endpoint (at most ``per_host`` idle ones, closed after ``idle_timeout``);
  nothing is retried here: the remote proxy knows which backend is next.

A response to ``HEAD`` closes its connection after the head (llhttp cannot be told that
no body follows), as do 1xx-less upgrades, which never come this way (`yurthub.proxy.upgrade`
splices those). Agent stays in use for yurthub's own calls to the cloud.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httptools
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import RESPONSES, PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from yurthub.dispatch import WRITES, can_send_now, send_now
from yurthub.proxy.headers import headers_from
from yurthub.upstream.backends import Backend
from yurthub.upstream.endpoints import BackendEndpointFactory

_log = Logger()

#: Fields about this connection, not the answer (Agent keeps them out of
#: ``response.headers`` too); ``content-length`` comes back as ``length``.
_CONNECTION_FIELDS = frozenset(
    {
        b"content-length",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)

#: Field names as answers spell them, lower-cased (bounded: backends choose names).
_LOWERED: dict[bytes, bytes] = {}

_NO_NAMES: frozenset[bytes] = frozenset()
#: `named_by_connection` of each Connection value seen (bounded: backends choose them).
_NAMED: dict[bytes, frozenset[bytes]] = {}


def named_by_connection(value: bytes) -> frozenset[bytes]:
    """The lower-cased field names a Connection value lists that could still be among an
    answer's kept fields: not the connection fields, which are never kept. For the usual
    ``keep-alive`` and ``close`` there is nothing to take out; a value is split once."""
    names = _NAMED.get(value)
    if names is None:
        names = frozenset(t.strip().lower() for t in value.split(b",")) - _CONNECTION_FIELDS - {b""}
        if len(_NAMED) < 1000:
            _NAMED[value] = names
    return names


#: Methods known to be tokens (the rest are checked with `_METHOD`).
_TOKENS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
#: A request method is an RFC 9110 token.
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: What may not appear in a request target (control characters and white space).
UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")

#: One `ResponseDone` for every body that ends well: a `Failure` is built once, not per
#: request (its construction showed in the profile).
_DONE = Failure(ResponseDone("Response body fully received"))
_DATA_LOSS = Failure(PotentialDataLoss("the body ended with the connection, which had no length"))


def encode_head(method: bytes, target: bytes, headers: Headers, body: bytes | None) -> bytes:
    """The request line and header block, with a Content-Length when there is a body."""
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, values in headers.getAllRawHeaders():
        for value in values:
            lines += (name, b": ", value, b"\r\n")
    if body is not None:
        lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    return b"".join(lines)


@implementer(IPushProducer)
class _BodyProducer:
    """What a body protocol sees as its transport: the upstream socket as a producer."""

    def __init__(self, connection: _Connection) -> None:
        #: None once the answer ended: the connection may carry another one by then.
        self.connection: _Connection | None = connection

    def pauseProducing(self) -> None:  # noqa: N802
        if self.connection is not None:
            self.connection.pause()

    def resumeProducing(self) -> None:  # noqa: N802
        if self.connection is not None:
            self.connection.resume()

    def stopProducing(self) -> None:  # noqa: N802
        if self.connection is not None:
            self.connection.drop()


class UpstreamResponse:
    """The head of an answer; its body goes to the protocol given to `deliverBody`.

    ``fields`` are the answer's own fields in order, as the backend spelt them (the
    connection's taken out), ``content_type`` the first Content-Type value (or empty);
    ``headers`` holds the same fields as `Headers`, built on first use (a plain relay
    writes ``fields`` as they are and never needs it)."""

    def __init__(
        self, connection: _Connection, code: int, phrase: bytes, fields: list[tuple[bytes, bytes]], length: Any,
        content_type: bytes = b"",
    ) -> None:  # fmt: skip
        self.code = code
        self.phrase = phrase
        self.fields = fields
        self.content_type = content_type
        self.length = length
        self._connection = connection
        self._headers: Headers | None = None

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = headers_from(self.fields)
        return self._headers

    def deliverBody(self, protocol: Any) -> None:  # noqa: N802 - IResponse's name
        self._connection.deliver_to(protocol)


class _Connection(Protocol):
    """One upstream connection: one request at a time, parsed by llhttp."""

    def __init__(self, client: UpstreamClient, key: Any) -> None:
        self._client = client
        self.key = key
        #: The client's generation when this connection's request was sent: a connection
        #: in use when the pool was closed (shutdown, rotation, migration) is not kept.
        self.generation = client.generation
        self.idle_since = 0.0
        self.lost = False
        self._parser: Any = None
        self._llhttp: Any = None
        #: Who hears of the answer's head or of the failure before it: ``(answered,
        #: failed, context)`` of `UpstreamClient.start`.
        self._waiting: tuple[Any, Any, Any] | None = None
        self._is_head = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._phrase = b""
        self._response_started = False
        self._body: Any = None  # the body protocol, once given
        self._producer: _BodyProducer | None = None
        self._early: list[bytes] = []  # body bytes that came before the protocol
        self._ended: Failure | None = None  # how the body ended, before the protocol came
        self._in_body = False
        self._close_delimited = False
        self._paused = False
        self._dropped = False  # bytes still arriving on this connection are not ours
        self._stopped = False  # the body's reader wants nothing more
        self._complete = False  # the answer ended well; to the pool after this read

    # --- the request -------------------------------------------------------------
    def send(self, head: bytes, body: bytes | None, is_head: bool, waiting: tuple[Any, Any, Any]) -> None:
        # One parser per connection: llhttp starts on the next message by itself, and a
        # connection only carries another request after its answer ended well.
        parser = self._llhttp
        if parser is None:
            parser = self._llhttp = httptools.HttpResponseParser(self)
        self._parser = parser
        self._waiting = waiting
        self._is_head = is_head
        self._headers = []
        self._phrase = b""
        self._response_started = False
        self._body = None
        self._early = []
        self._ended = None
        self._in_body = False
        self._dropped = False
        self._stopped = False
        self._complete = False
        self.generation = self._client.generation
        transport = self.transport
        assert transport is not None
        data = head + body if body else head
        if can_send_now(transport):
            send_now(transport, data)
        else:
            transport.write(data)

    def cancel(self) -> None:
        """The request's sender gave up on it before its answer's head: nobody hears of
        this request again, and the connection is dropped."""
        self._waiting = None
        self.drop()

    # --- llhttp callbacks ----------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:
            # Bytes after the whole answer, in the same read: a second answer to one
            # request. Never give it to the next request that takes this connection.
            raise ValueError("the backend sent more than one answer to one request")
        self._response_started = True

    def on_status(self, status: bytes) -> None:
        self._phrase += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        code = parser.get_status_code()
        if code < 200:
            if code == 101:
                raise ValueError("the backend switched protocols on a plain request")
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._headers = []
            self._phrase = b""
            return
        length: Any = UNKNOWN_LENGTH
        chunked = False
        listed: frozenset[bytes] = _NO_NAMES  # fields the answer's Connection names are hop-by-hop too
        kept = []
        content_type = b""
        lowered = _LOWERED
        for field in self._headers:
            lower = lowered.get(field[0])
            if lower is None:
                lower = field[0].lower()
                if len(lowered) < 1000:
                    lowered[field[0]] = lower
            if lower in _CONNECTION_FIELDS:
                value = field[1]
                if lower == b"content-length":
                    length = int(value)
                elif lower == b"transfer-encoding":
                    chunked = True
                elif lower == b"connection":
                    listed = listed | named_by_connection(value)
                continue
            if lower == b"content-type" and not content_type:
                content_type = field[1]
            kept.append(field)
        if listed:
            kept = [field for field in kept if (lowered.get(field[0]) or field[0].lower()) not in listed]
            if b"content-type" in listed:
                content_type = b""
        if self._is_head or code in (204, 304):
            length = 0
        elif chunked:
            length = UNKNOWN_LENGTH
        self._close_delimited = length is UNKNOWN_LENGTH and not chunked
        self._in_body = True
        waiting, self._waiting = self._waiting, None
        response = UpstreamResponse(self, code, self._phrase or RESPONSES.get(code, b""), kept, length, content_type)
        if self._is_head:
            # No body follows, whatever Content-Length says; llhttp would wait for one.
            self._finish(_DONE, reusable=False)
        if waiting is not None:
            answered, _, context = waiting
            try:
                answered(response, context)
            except Exception:
                _log.failure("handling an upstream answer failed")

    def on_body(self, data: bytes) -> None:
        if self._dropped:
            return
        if self._body is not None:
            self._body.dataReceived(data)
        else:
            self._early.append(data)

    def on_message_complete(self) -> None:
        if self._in_body and not self._is_head:
            self._finish(_DONE, reusable=self._parser.should_keep_alive())

    # --- the body ------------------------------------------------------------------
    def deliver_to(self, protocol: Any) -> None:
        self._body = protocol
        self._producer = _BodyProducer(self)
        protocol.makeConnection(self._producer)
        early, self._early = self._early, []
        for data in early:
            if self._stopped:
                return
            protocol.dataReceived(data)
        if self._ended is not None:
            ended, self._ended = self._ended, None
            self._body = None
            self._detach()
            protocol.connectionLost(ended)

    def _finish(self, reason: Failure, *, reusable: bool) -> None:
        """The body ended (``reason``); the connection goes back to the pool if it may."""
        self._in_body = False
        self._detach()
        body, self._body = self._body, None
        if body is None:
            # Its reader has not come yet: keep the ending for it, and never hand this
            # connection to another request meanwhile.
            self._ended = reason
            reusable = False
        if not reusable:
            self._dropped = True  # whatever else comes on this connection is not ours
        if self._dropped:
            if not self.lost:
                self.lost = True
                self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            # Pooled once the parser is done with the bytes at hand (`dataReceived`): the
            # reader below may start another request at once, and must not get this one.
            self._complete = True
        if body is not None:
            body.connectionLost(reason)

    def _detach(self) -> None:
        if self._producer is not None:
            self._producer.connection = None
            self._producer = None

    def pause(self) -> None:
        if not self._paused and not self.lost:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume(self) -> None:
        if self._paused and not self.lost:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def drop(self) -> None:
        """Nobody wants the rest of this answer: close the connection, deliver nothing more."""
        self._dropped = self._stopped = True
        if not self.lost:
            self.lost = True
            self.transport.abortConnection()  # type: ignore[union-attr]

    # --- the socket ----------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        parser = self._parser
        if parser is None or self._dropped:
            # Bytes while idle in the pool: the backend is not speaking HTTP to us.
            self.drop()
            return
        WRITES.open()  # what this read's answer writes to clients goes out together
        try:
            parser.feed_data(data)
        except Exception as e:
            self._broken(Failure(e))
            return
        finally:
            WRITES.close()
        if self._complete:
            self._complete = False
            if not self._dropped and not self.lost:
                self.resume()
                self._client.put(self)

    def _broken(self, reason: Failure) -> None:
        """The answer cannot be read any further (a parse error): fail it, drop the line."""
        self.drop()
        self._fail(reason)

    def _fail(self, reason: Failure) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            _, failed, context = waiting
            kind = ResponseFailed if self._response_started else ResponseNeverReceived
            try:
                failed(Failure(kind([reason])), context)
            except Exception:
                _log.failure("handling an upstream failure failed")
            return
        if self._in_body:
            self._in_body = False
            self._detach()
            ended = _DATA_LOSS if self._close_delimited and not self._dropped else Failure(ResponseFailed([reason]))
            body, self._body = self._body, None
            if body is None:
                self._ended = ended
            else:
                body.connectionLost(ended)

    def connectionLost(self, reason: Failure = _DONE) -> None:  # noqa: N802, B008
        self.lost = True
        self._client.forget(self)
        self._fail(reason)


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, client: UpstreamClient, key: Any) -> None:
        self._client = client
        self._key = key

    def buildProtocol(self, addr: Any) -> _Connection:  # noqa: N802
        return _Connection(self._client, self._key)


class Pending:
    """A request sent by `UpstreamClient.start` and not answered yet: ``cancel()``."""

    __slots__ = ("cancelled", "connecting", "connection", "waiting")

    def __init__(self) -> None:
        self.cancelled = False
        self.connecting: defer.Deferred[Any] | None = None
        self.connection: _Connection | None = None
        self.waiting: Any = None

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        if self.connection is not None:
            # Only while the connection still waits for this request's answer: once it
            # came, the connection relays its body or already carries another request.
            if self.connection._waiting is self.waiting:
                self.connection.cancel()
        elif self.connecting is not None:
            self.connecting.cancel()


class UpstreamClient:
    """Sends requests to backends over pooled HTTP/1.1 connections (see the module)."""

    def __init__(
        self, reactor: IReactorTime, endpoints: BackendEndpointFactory, *, per_host: int = 64, idle_timeout: float = 90.0
    ) -> None:
        self._reactor = reactor
        self._endpoints = endpoints
        self.per_host = per_host
        self.idle_timeout = idle_timeout
        self._idle: dict[Any, list[_Connection]] = {}
        self._sweep: Any = None
        #: Counts `closeCachedConnections` calls (see `_Connection.generation`).
        self.generation = 0

    def request_to(
        self, backend: Backend, method: bytes, target: bytes, headers: Headers, body: bytes | None
    ) -> defer.Deferred[UpstreamResponse]:
        """Send one request to ``backend``; fires with the response head (cancelling it
        drops the request's connection)."""
        answer: defer.Deferred[UpstreamResponse] = defer.Deferred(lambda _: pending.cancel())
        pending = self.start(
            backend,
            method,
            target,
            headers,
            body,
            lambda response, _: answer.callback(response),
            lambda failure, _: answer.errback(failure),
            None,
        )
        return answer

    def start(
        self,
        backend: Backend,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes | None,
        answered: Callable[[UpstreamResponse, Any], object],
        failed: Callable[[Failure, Any], object],
        context: Any,
    ) -> Pending:
        """Send one request to ``backend``: ``answered(response, context)`` once the
        response head is in, or ``failed(failure, context)`` (the failures `request_to`'s
        Deferred would carry). `request_to` without a Deferred per request: after
        ``cancel()`` on what this returns, neither is called (for a connection still being
        made, ``failed`` hears of its `CancelledError`)."""
        pending = Pending()
        if method not in _TOKENS and not _METHOD.match(method):
            failed(Failure(ValueError(f"invalid request method {method!r}")), context)
            return pending
        if UNSAFE_TARGET.search(target):
            failed(Failure(ValueError(f"invalid request target {target!r}")), context)
            return pending
        head = encode_head(method, target, headers, body)
        is_head = method == b"HEAD"
        waiting = pending.waiting = (answered, failed, context)
        endpoint = self._endpoints.endpoint_for(backend.scheme, backend.host, backend.port)
        connection = self._take(endpoint)
        if connection is not None:
            pending.connection = connection
            connection.send(head, body, is_head, waiting)
            return pending

        def connected(connection: _Connection) -> None:
            pending.connecting = None
            if pending.cancelled:
                connection.drop()
                return
            pending.connection = connection
            connection.send(head, body, is_head, waiting)

        connecting = self._connect(endpoint)
        pending.connecting = connecting
        connecting.addCallbacks(connected, lambda failure: failed(failure, context))
        return pending

    def _take(self, key: Any) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.lost:
                return connection
        return None

    def _connect(self, endpoint: IStreamClientEndpoint) -> defer.Deferred[_Connection]:
        connecting = endpoint.connect(_ConnectionFactory(self, endpoint))
        return connecting  # type: ignore[return-value]

    def put(self, connection: _Connection) -> None:
        """A connection finished an answer and may carry another."""
        connection._parser = None
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self.per_host or connection.generation != self.generation:
            connection.drop()
            return
        connection.idle_since = self._reactor.seconds()
        idle.append(connection)
        if self._sweep is None:
            self._sweep = self._reactor.callLater(self.idle_timeout, self._close_expired)  # type: ignore[attr-defined]

    def forget(self, connection: _Connection) -> None:
        """A connection closed; it is no longer offered."""
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def _close_expired(self) -> None:
        self._sweep = None
        oldest_kept = None
        cutoff = self._reactor.seconds() - self.idle_timeout
        for idle in self._idle.values():
            for connection in list(idle):
                if connection.idle_since <= cutoff:
                    idle.remove(connection)
                    connection.drop()
                elif oldest_kept is None or connection.idle_since < oldest_kept:
                    oldest_kept = connection.idle_since
        if oldest_kept is not None:
            delay = max(0.0, oldest_kept + self.idle_timeout - self._reactor.seconds())
            self._sweep = self._reactor.callLater(delay, self._close_expired)  # type: ignore[attr-defined]

    def closeCachedConnections(self) -> defer.Deferred[None]:  # noqa: N802 - the pool's name
        """Close every idle connection (at shutdown, a rotation, a migration); one in use
        now is closed when its answer ends instead of going back to the pool."""
        self.generation += 1
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.drop()
        return defer.succeed(None)
