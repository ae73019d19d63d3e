"""Tests for yurthub/proxy/http11.py: the lean HTTP/1.1 server of the plain proxy listener.

Every behaviour the module's docstring promises is checked for real: most tests serve a
small leaf resource through ``LeanFactory(make_site(...))`` on 127.0.0.1 port 0 and talk
to it with a raw TCP client, reading the answers byte for byte (status line, framing,
chunks); the timers and the cases that need bytes cut at exact places drive a
`LeanChannel` on a `StringTransport` with a `Clock` as its site's reactor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionClosed, ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.support import RawClient, raw_connect
from yurthub.dispatch import WriteBatch
from yurthub.proxy import http11
from yurthub.proxy.channel import ChannelLimits
from yurthub.proxy.http11 import ABORT_AFTER, LeanChannel, LeanFactory
from yurthub.proxy.root import ProxySite, make_site
from yurthub.proxy.upgrade import take_over_transport

#: The longest any test waits for something to happen on a socket.
WAIT = 5.0

#: Small limits, so the limit tests send little.
LIMITS: dict[str, Any] = {
    "max_request_line_bytes": 256,
    "max_header_bytes": 1024,
    "max_headers": 10,
    "max_body_bytes": 1024,
    "head_timeout": 5.0,
}

Answerer = Callable[[Any], "bytes | int"]


# --- reading answers off the wire ------------------------------------------------------


class _Incomplete(Exception):
    """Not all of an answer has arrived yet."""


@dataclass
class Answer:
    """One HTTP answer as it came over the wire."""

    version: bytes
    code: int
    phrase: bytes
    headers: Headers
    body: bytes
    #: The chunks of a chunked body, the empty last chunk included; None when not chunked.
    chunks: list[bytes] | None = None

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.getRawHeaders(name)
        if values is None:
            return None
        assert len(values) == 1, (name, values)
        return values[0]

    def status(self) -> dict[str, Any]:
        """The body as a Kubernetes ``Status``."""
        assert self.header(b"content-type") == b"application/json", self.headers
        status: dict[str, Any] = json.loads(self.body)
        assert status["kind"] == "Status", status
        return status


def parse_answer(data: bytes, method: bytes = b"GET", to_end: bool = False) -> tuple[Answer, bytes]:
    """The first answer in ``data`` and the bytes after it. A body that has neither
    Content-Length nor chunks runs to the end of ``data``, only when ``to_end`` says the
    connection has closed."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise _Incomplete()
    status_line, *fields = head.split(b"\r\n")
    version, code_text, phrase = status_line.split(b" ", 2)
    if not version.startswith(b"HTTP/"):
        raise AssertionError(f"not an answer: {data!r}")
    headers = Headers()
    for field in fields:
        name, colon, value = field.partition(b":")
        assert colon and name == name.strip(), field
        headers.addRawHeader(name, value.strip())
    code = int(code_text)
    answer = Answer(version, code, phrase, headers, b"")
    if method == b"HEAD" or code in (204, 304) or 100 <= code < 200:
        return answer, rest
    length = answer.header(b"content-length")
    if answer.header(b"transfer-encoding") == b"chunked":
        assert length is None, "chunked and a Content-Length"
        chunks = []
        while True:
            size_line, sep, after = rest.partition(b"\r\n")
            if not sep:
                raise _Incomplete()
            size = int(size_line, 16)
            if len(after) < size + 2:
                raise _Incomplete()
            assert after[size : size + 2] == b"\r\n", f"chunk not ended by CRLF: {after!r}"
            chunks.append(after[:size])
            rest = after[size + 2 :]
            if size == 0:
                break
        answer.chunks = chunks
        answer.body = b"".join(chunks)
    elif length is not None:
        n = int(length)
        if len(rest) < n:
            raise _Incomplete()
        answer.body, rest = rest[:n], rest[n:]
    elif to_end:
        answer.body, rest = rest, b""
    else:
        raise _Incomplete()
    return answer, rest


def parse_answers(data: bytes, methods: tuple[bytes, ...], to_end: bool = False) -> tuple[list[Answer], bytes]:
    """One answer per request method, in order, and the bytes after them."""
    answers = []
    for i, method in enumerate(methods):
        answer, data = parse_answer(data, method, to_end=to_end and i == len(methods) - 1)
        answers.append(answer)
    return answers, data


def _ready(data: bytes, methods: tuple[bytes, ...]) -> bool:
    try:
        parse_answers(data, methods)
    except _Incomplete:
        return False
    except Exception:
        return True  # malformed: let the test parse it again and fail there
    return True


async def read_answers(client: RawClient, *methods: bytes) -> list[Answer]:
    """Wait for one whole answer per method on ``client``; the bytes read past them stay
    in ``client.received`` for the next call."""
    await client.wait_for(lambda data: _ready(data, methods), WAIT)
    answers, client.received = parse_answers(client.received, methods)
    return answers


async def until_closed(client: RawClient) -> bytes:
    """Everything ``client`` received once the server has closed the connection."""
    await client.closed.addTimeout(WAIT, reactor)
    return client.received


async def closing_answers(client: RawClient, *methods: bytes) -> list[Answer]:
    """The answers of a connection the server closes after them; nothing else came."""
    data = await until_closed(client)
    answers, rest = parse_answers(data, methods, to_end=True)
    assert rest == b"", f"bytes after the answers: {rest!r}"
    return answers


# --- the server side -------------------------------------------------------------------


class _Resource(Resource):
    """The site's one leaf resource: records each request (and what it looked like while
    being rendered) and answers with ``answer(request)``."""

    isLeaf = True

    def __init__(self, answer: Answerer | None = None) -> None:
        super().__init__()
        self.answer: Answerer = answer or (lambda request: b"ok")
        self.requests: list[Any] = []
        self.seen: list[dict[str, Any]] = []
        self._waiting: list[tuple[int, defer.Deferred[Any]]] = []

    def render(self, request: Any) -> bytes | int:
        self.requests.append(request)
        self.seen.append(
            {
                "method": request.method,
                "uri": request.uri,
                "path": request.path,
                "args": request.args,
                "clientproto": request.clientproto,
                "headers": request.requestHeaders,
                "content": request.content.read(),
                "x-multi": request.getHeader(b"x-multi"),
                "absent": request.getHeader(b"x-absent"),
                "secure": request.isSecure(),
                "client": request.getClientAddress(),
                "host": request.getHost(),
            }
        )
        result = self.answer(request)
        # The test goes on in a later turn, not in the middle of the render.
        for entry in [w for w in self._waiting if len(self.requests) >= w[0]]:
            self._waiting.remove(entry)
            reactor.callLater(0, entry[1].callback, self.requests[entry[0] - 1])  # type: ignore[attr-defined]
        return result

    def rendered(self, n: int = 1) -> defer.Deferred[Any]:
        """Fires with the ``n``-th request once it has been rendered."""
        d: defer.Deferred[Any] = defer.Deferred()
        if len(self.requests) >= n:
            d.callback(self.requests[n - 1])
        else:
            self._waiting.append((n, d))
        return d.addTimeout(WAIT, reactor)


class _Factory(LeanFactory):
    """`LeanFactory` that remembers its channels and when each was lost."""

    def __init__(self, site: ProxySite) -> None:
        super().__init__(site)
        self.channels: list[LeanChannel] = []
        self.lost: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> LeanChannel:  # noqa: N802
        channel = super().buildProtocol(addr)
        lost: defer.Deferred[None] = defer.Deferred()
        connection_lost = channel.connectionLost

        def recorded(reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
            connection_lost(reason)
            lost.callback(None)

        channel.connectionLost = recorded  # type: ignore[method-assign]
        self.channels.append(channel)
        self.lost.append(lost)
        return channel


@dataclass
class Served:
    """A lean listener on 127.0.0.1: its site, factory, port and refusals."""

    site: ProxySite
    factory: _Factory
    port: int
    refused: list[str]


class LeanServerTestCase(TestCase):
    """Serves a resource through `LeanFactory` and connects raw clients to it."""

    async def serve(self, resource: Resource, *, timeout: float | None = None, **limits: Any) -> Served:
        refused: list[str] = []
        site = make_site(
            resource, leaf=True, limits=ChannelLimits(**{**LIMITS, **limits}), timeout=timeout,
            on_refused=refused.append,
        )  # fmt: skip
        factory = _Factory(site)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined, arg-type]
        self.addCleanup(port.stopListening)

        def close_channels() -> defer.Deferred[Any]:
            # A channel whose transport was taken over (an upgrade) is never lost itself.
            waiting = []
            for channel, lost in zip(factory.channels, factory.lost, strict=True):
                if channel.transport is None:
                    continue
                if not lost.called:
                    channel.transport.abortConnection()
                waiting.append(lost)
            return defer.gatherResults(waiting).addTimeout(WAIT, reactor)

        self.addCleanup(close_channels)
        return Served(site, factory, port.getHost().port, refused)  # type: ignore[attr-defined]

    async def connect(self, served: Served) -> RawClient:
        return await raw_connect(self, served.port)

    async def connect_with(self, served: Served, client: RawClient) -> None:
        """Connect ``client`` (a `RawClient` of the test's own); aborted at the end."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", served.port)
        await endpoint.connect(Factory.forProtocol(lambda: client))

        def close() -> defer.Deferred[None] | None:
            if client.transport is not None and client.transport.connected:  # type: ignore[attr-defined]
                client.transport.abortConnection()  # type: ignore[attr-defined]
                return client.closed.addTimeout(WAIT, reactor)
            return None

        self.addCleanup(close)

    async def exchange(self, served: Served, data: bytes, *methods: bytes) -> tuple[RawClient, list[Answer]]:
        """A new connection, ``data`` written to it, and the answers to ``methods``."""
        client = await self.connect(served)
        client.transport.write(data)  # type: ignore[union-attr]
        return client, await read_answers(client, *methods)


def get(path: bytes = b"/", version: bytes = b"HTTP/1.1", *fields: bytes, method: bytes = b"GET") -> bytes:
    """A bodyless request head."""
    return b"%s %s %s\r\nHost: 127.0.0.1\r\n%s\r\n" % (method, path, version, b"".join(f + b"\r\n" for f in fields))


def later(request: Any, *pieces: bytes) -> int:
    """Answer ``request`` in the next reactor turn, written in ``pieces``."""

    def answer() -> None:
        for piece in pieces:
            request.write(piece)
        request.finish()

    reactor.callLater(0, answer)  # type: ignore[attr-defined]
    return NOT_DONE_YET


def on_clock(
    test: SynchronousTestCase, resource: Resource, *, timeout: float | None = 60.0, **limits: Any
) -> tuple[LeanChannel, StringTransport, Clock, list[str]]:
    """A `LeanChannel` on a `StringTransport`, its site's reactor a `Clock`."""
    clock = Clock()
    refused: list[str] = []
    site = make_site(
        resource, leaf=True, limits=ChannelLimits(**{**LIMITS, **limits}), timeout=timeout,
        on_refused=refused.append,
    )  # fmt: skip
    site.reactor = clock
    channel = LeanFactory(site).buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(transport)
    test.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
    return channel, transport, clock, refused


# --- the tests -------------------------------------------------------------------------


class LeanRequestTests(LeanServerTestCase):
    """What a resource sees of a request, and the synchronous answer it gets."""

    async def test_get_is_answered_with_the_clients_version_and_length(self) -> None:
        served = await self.serve(_Resource(lambda request: b"hello"))
        for version in (b"HTTP/1.1", b"HTTP/1.0"):
            client = await self.connect(served)
            client.transport.write(get(b"/version", version))  # type: ignore[union-attr]
            (answer,) = await read_answers(client, b"GET")
            self.assertEqual((answer.version, answer.code, answer.phrase), (version, 200, b"OK"))
            self.assertEqual(answer.header(b"content-length"), b"5")
            self.assertEqual(answer.header(b"transfer-encoding"), None)
            self.assertEqual(answer.body, b"hello")

    async def test_the_resource_sees_the_request_as_twisted_web_gives_it(self) -> None:
        resource = _Resource()
        served = await self.serve(resource)
        uri = b"/api/v1/pods?limit=500&watch=&fieldSelector=spec.nodeName%3Dn1&limit=7&flag"
        client, _ = await self.exchange(
            served, get(uri, b"HTTP/1.1", b"X-Multi: one", b"User-Agent: kubelet/v1.31.0", b"x-multi: two"), b"GET"
        )
        (seen,) = resource.seen
        self.assertEqual(seen["method"], b"GET")
        self.assertEqual(seen["uri"], uri)
        self.assertEqual(seen["path"], b"/api/v1/pods")
        self.assertEqual(
            seen["args"],
            {b"limit": [b"500", b"7"], b"watch": [b""], b"fieldSelector": [b"spec.nodeName=n1"], b"flag": [b""]},
        )
        self.assertEqual(seen["clientproto"], b"HTTP/1.1")
        self.assertIsInstance(seen["headers"], Headers)
        self.assertEqual(seen["headers"].getRawHeaders(b"x-multi"), [b"one", b"two"])
        self.assertEqual(seen["headers"].getRawHeaders(b"user-agent"), [b"kubelet/v1.31.0"])
        self.assertEqual(seen["headers"].getRawHeaders(b"host"), [b"127.0.0.1"])
        self.assertEqual(seen["x-multi"], b"two", "getHeader gives the last value")
        self.assertIsNone(seen["absent"])
        self.assertEqual(seen["content"], b"")
        self.assertFalse(seen["secure"])
        local: Any = client.transport.getHost()  # type: ignore[union-attr]
        self.assertEqual((seen["client"].host, seen["client"].port), ("127.0.0.1", local.port))
        self.assertEqual((seen["host"].host, seen["host"].port), ("127.0.0.1", served.port))


class KeepAliveTests(LeanServerTestCase):
    """Requests on one connection: answered one at a time, in order; when it closes."""

    async def test_two_requests_on_one_connection_are_answered_in_order(self) -> None:
        resource = _Resource(lambda request: request.path)
        served = await self.serve(resource)
        client, (first,) = await self.exchange(served, get(b"/one"), b"GET")
        client.transport.write(get(b"/two"))  # type: ignore[union-attr]
        (second,) = await read_answers(client, b"GET")
        self.assertEqual((first.body, second.body), (b"/one", b"/two"))
        self.assertEqual(first.header(b"connection"), None)
        self.assertEqual(len(served.factory.channels), 1)
        self.assertFalse(client.closed.called)

    async def test_pipelined_requests_are_answered_one_at_a_time(self) -> None:
        held: list[Any] = []

        def answer(request: Any) -> bytes | int:
            if request.path == b"/slow":
                held.append(request)
                return NOT_DONE_YET
            return request.path

        resource = _Resource(answer)
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(get(b"/slow") + get(b"/two") + get(b"/three"))  # type: ignore[union-attr]
        await resource.rendered(1)
        self.assertEqual([s["path"] for s in resource.seen], [b"/slow"], "the next waits for the first's end")
        self.assertEqual(client.received, b"")
        held[0].write(b"slow ")
        held[0].write(b"answer")
        held[0].finish()
        answers = await read_answers(client, b"GET", b"GET", b"GET")
        self.assertEqual([a.body for a in answers], [b"slow answer", b"/two", b"/three"])
        self.assertEqual([s["path"] for s in resource.seen], [b"/slow", b"/two", b"/three"])

    async def test_connection_close_is_answered_with_close_and_closed(self) -> None:
        resource = _Resource()
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(get(b"/last", b"HTTP/1.1", b"Connection: close"))  # type: ignore[union-attr]
        (answer,) = await closing_answers(client, b"GET")
        self.assertEqual((answer.version, answer.code, answer.body), (b"HTTP/1.1", 200, b"ok"))
        self.assertEqual(answer.header(b"connection"), b"close")
        self.assertEqual([s["path"] for s in resource.seen], [b"/last"])

    async def test_http10_connection_closes_after_its_answer(self) -> None:
        resource = _Resource()
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(get(b"/old", b"HTTP/1.0", b"Connection: keep-alive"))  # type: ignore[union-attr]
        (answer,) = await closing_answers(client, b"GET")
        self.assertEqual((answer.version, answer.code, answer.body), (b"HTTP/1.0", 200, b"ok"))
        self.assertIsNone(answer.header(b"connection"))
        self.assertEqual([s["path"] for s in resource.seen], [b"/old"])

    async def test_a_whole_request_is_answered_before_what_follows_it_is_refused(self) -> None:
        # twisted.web answers each request before it reads what comes after it; bytes
        # that cannot be parsed (or may not be sent: a request after the connection's
        # last one) never cost an earlier, whole request its answer.
        cases = {
            "garbage after a keep-alive request": get(b"/first") + b"NOT HTTP\r\n\r\n",
            "a request after Connection: close": get(b"/first", b"HTTP/1.1", b"Connection: close") + get(b"/after"),
            "a request after an HTTP/1.0 one": get(b"/first", b"HTTP/1.0") + get(b"/after", b"HTTP/1.0"),
        }
        self.maxDiff = None
        outcomes = {}
        for case, data in cases.items():
            resource = _Resource()
            served = await self.serve(resource)
            client = await self.connect(served)
            client.transport.write(data)  # type: ignore[union-attr]
            answer, _ = parse_answer(await until_closed(client), to_end=True)
            outcomes[case] = ([s["path"] for s in resource.seen], answer.code, answer.body[:2])
        self.assertEqual(outcomes, {case: ([b"/first"], 200, b"ok") for case in cases})


class PipelineTests(SynchronousTestCase):
    """Pipelined requests on a `StringTransport`: reading pauses while they wait."""

    def test_reading_pauses_while_pipelined_requests_wait(self) -> None:
        held: list[Any] = []

        def answer(request: Any) -> bytes | int:
            if request.path == b"/slow":
                held.append(request)
                return NOT_DONE_YET
            return b"second"

        resource = _Resource(answer)
        channel, transport, clock, _ = on_clock(self, resource)
        channel.dataReceived(get(b"/slow") + get(b"/next"))
        self.assertEqual([s["path"] for s in resource.seen], [b"/slow"])
        self.assertEqual(transport.producerState, "paused")
        held[0].write(b"first")
        self.assertEqual([s["path"] for s in resource.seen], [b"/slow"])
        held[0].finish()
        self.assertEqual([s["path"] for s in resource.seen], [b"/slow", b"/next"])
        self.assertEqual(transport.producerState, "producing")
        answers, rest = parse_answers(transport.value(), (b"GET", b"GET"))
        self.assertEqual([a.body for a in answers], [b"first", b"second"])
        self.assertEqual(rest, b"")

    def test_interim_answer_of_a_pipelined_request_waits_for_the_earlier_answer(self) -> None:
        # An answer must not be cut into: the 100 Continue of the second request may only
        # follow the first request's whole answer.
        held: list[Any] = []

        def answer(request: Any) -> bytes | int:
            if request.path == b"/slow":
                held.append(request)
                return NOT_DONE_YET
            request.content.seek(0)  # the recording resource read it already
            return request.content.read()

        resource = _Resource(answer)
        channel, transport, clock, _ = on_clock(self, resource)
        channel.dataReceived(get(b"/slow"))
        held[0].write(b"first")
        channel.dataReceived(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        self.assertNotIn(b"100 Continue", transport.value(), "written into the middle of the first answer")
        held[0].finish()
        channel.dataReceived(b"abc")
        answers, rest = parse_answers(transport.value(), (b"GET", b"POST", b"POST"))
        self.assertEqual([(a.code, a.body) for a in answers], [(200, b"first"), (100, b""), (200, b"abc")])


class ResponseFramingTests(LeanServerTestCase):
    """The head goes out with the first write; chunked, plain or no body as twisted.web."""

    async def test_answer_without_length_is_chunked_on_http11(self) -> None:
        resource = _Resource(lambda request: later(request, b"one", b"", b"two three", b"x" * 300))
        served = await self.serve(resource)
        client, (answer,) = await self.exchange(served, get(b"/stream"), b"GET")
        self.assertEqual(answer.header(b"transfer-encoding"), b"chunked")
        self.assertIsNone(answer.header(b"content-length"))
        # An empty write is no chunk (it would end the body); the last chunk is empty.
        self.assertEqual(answer.chunks, [b"one", b"two three", b"x" * 300, b""])
        self.assertEqual(answer.body, b"onetwo three" + b"x" * 300)
        client.transport.write(get(b"/again"))  # type: ignore[union-attr]
        (again,) = await read_answers(client, b"GET")
        self.assertEqual(again.body, b"onetwo three" + b"x" * 300)

    async def test_a_relayed_answer_keeps_the_upstream_fields_as_they_came(self) -> None:
        fields = [(b"Audit-Id", b"a1"), (b"content-type", b"application/json"), (b"Warning", b"1"), (b"Warning", b"2")]

        def relay(request: Any) -> bytes | int:
            length = None if request.path == b"/stream" else 7
            request.relay_answer(203, b"Relayed", fields, length)
            return later(request, b"{", b"}", b"\n" * 5)

        served = await self.serve(_Resource(relay))
        client, (answer, chunked) = await self.exchange(served, get(b"/list") + get(b"/stream"), b"GET", b"GET")
        self.assertEqual((answer.code, answer.phrase), (203, b"Relayed"))
        self.assertEqual(answer.header(b"content-length"), b"7")
        self.assertEqual(answer.headers.getRawHeaders(b"warning"), [b"1", b"2"])
        self.assertEqual(answer.header(b"content-type"), b"application/json")  # no default added
        self.assertEqual(answer.body, b"{}\n\n\n\n\n")
        self.assertEqual(chunked.header(b"transfer-encoding"), b"chunked")
        self.assertIsNone(chunked.header(b"content-length"))
        self.assertEqual(chunked.body, b"{}\n\n\n\n\n")
        # HTTP/1.0: no chunks, the connection ends the body and closes.
        client = await self.connect(served)
        client.transport.write(get(b"/stream", b"HTTP/1.0"))  # type: ignore[union-attr]
        (plain,) = await closing_answers(client, b"GET")
        self.assertIsNone(plain.chunks)
        self.assertEqual(plain.body, b"{}\n\n\n\n\n")

    async def test_a_relayed_answer_becomes_headers_when_someone_reads_them(self) -> None:
        def relay(request: Any) -> bytes | int:
            request.relay_answer(200, b"OK", [(b"X-Up", b"1"), (b"Content-Type", b"text/plain")], 2)
            headers = request.responseHeaders  # the fields and the length, as Headers
            self.assertEqual(headers.getRawHeaders(b"x-up"), [b"1"])
            self.assertEqual(headers.getRawHeaders(b"content-length"), [b"2"])
            request.setHeader(b"x-added", b"yes")  # and what is set then is written too
            return later(request, b"ok")

        served = await self.serve(_Resource(relay))
        client, (answer,) = await self.exchange(served, get(b"/"), b"GET")
        self.assertEqual((answer.header(b"x-up"), answer.header(b"x-added")), (b"1", b"yes"))
        self.assertEqual((answer.header(b"content-length"), answer.body), (b"2", b"ok"))
        self.assertEqual(answer.header(b"content-type"), b"text/plain")

    async def test_answer_without_length_on_http10_ends_with_the_connection(self) -> None:
        resource = _Resource(lambda request: later(request, b"one", b"two", b"3\r\n"))
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(get(b"/stream", b"HTTP/1.0"))  # type: ignore[union-attr]
        (answer,) = await closing_answers(client, b"GET")
        self.assertEqual(answer.version, b"HTTP/1.0")
        self.assertIsNone(answer.header(b"transfer-encoding"))
        self.assertIsNone(answer.header(b"content-length"))
        self.assertIsNone(answer.chunks)
        self.assertEqual(answer.body, b"onetwo3\r\n")

    async def test_head_has_the_length_but_no_body_and_the_connection_goes_on(self) -> None:
        def answer(request: Any) -> bytes | int:
            if request.path == b"/async":
                request.setHeader(b"content-length", b"11")
                return later(request, b"hello world")
            return b"a body of 17 byte"

        served = await self.serve(_Resource(answer))
        client = await self.connect(served)
        client.transport.write(  # type: ignore[union-attr]
            get(b"/async", method=b"HEAD") + get(b"/sync", method=b"HEAD") + get(b"/next")
        )
        head_async, head_sync, following = await read_answers(client, b"HEAD", b"HEAD", b"GET")
        self.assertEqual((head_async.code, head_async.header(b"content-length")), (200, b"11"))
        self.assertEqual((head_sync.code, head_sync.header(b"content-length")), (200, b"17"))
        for head in (head_async, head_sync):
            self.assertIsNone(head.header(b"transfer-encoding"))
        self.assertEqual((following.code, following.body), (200, b"a body of 17 byte"))
        self.assertEqual(client.received, b"", "nothing after the GET's answer")

    async def test_204_and_304_have_no_body(self) -> None:
        def answer(request: Any) -> bytes | int:
            if request.path == b"/next":
                return b"next"
            request.setResponseCode(int(request.path[1:]))
            return later(request, b"dropped", b"too")

        served = await self.serve(_Resource(answer))
        client = await self.connect(served)
        client.transport.write(get(b"/204") + get(b"/304") + get(b"/next"))  # type: ignore[union-attr]
        no_content, not_modified, following = await read_answers(client, b"GET", b"GET", b"GET")
        self.assertEqual((no_content.code, no_content.phrase), (204, b"No Content"))
        self.assertEqual((not_modified.code, not_modified.phrase), (304, b"Not Modified"))
        for bodiless in (no_content, not_modified):
            self.assertIsNone(bodiless.header(b"transfer-encoding"))
            self.assertIsNone(bodiless.header(b"content-type"))
        self.assertEqual((following.code, following.body), (200, b"next"))
        self.assertEqual(client.received, b"")

    async def test_default_content_type_is_text_html(self) -> None:
        def answer(request: Any) -> bytes | int:
            path = request.path
            if path == b"/empty":
                return b""
            if path == b"/json":
                request.setHeader(b"content-type", b"application/json")
            if path == b"/none":
                request.defaultContentType = None
            if path == b"/204":
                request.setResponseCode(204)
                return later(request)
            if path == b"/304":
                request.setResponseCode(304)
                return later(request)
            return b"body"

        served = await self.serve(_Resource(answer))
        paths = [b"/plain", b"/empty", b"/json", b"/none", b"/204", b"/304"]
        client, answers = await self.exchange(served, b"".join(get(p) for p in paths), *[b"GET"] * len(paths))
        self.assertEqual(
            {path: answer.header(b"content-type") for path, answer in zip(paths, answers, strict=True)},
            {b"/plain": b"text/html", b"/empty": None, b"/json": b"application/json", b"/none": None,
             b"/204": None, b"/304": None},
        )  # fmt: skip
        self.assertEqual(answers[1].header(b"content-length"), b"0")


class RequestBodyTests(LeanServerTestCase):
    """A request's body arrives whole in ``request.content``."""

    async def test_content_length_body_arrives_whole(self) -> None:
        resource = _Resource(lambda request: b"got")
        served = await self.serve(resource)
        client = await self.connect(served)
        body = b'{"kind":"Pod","metadata":{"name":"p"}}'
        client.transport.write(  # type: ignore[union-attr]
            b"POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body[:10]
        )
        client.transport.write(body[10:] + get(b"/next"))  # type: ignore[union-attr]
        first, second = await read_answers(client, b"POST", b"GET")
        self.assertEqual((first.body, second.body), (b"got", b"got"))
        self.assertEqual([s["content"] for s in resource.seen], [body, b""])
        self.assertEqual(resource.seen[0]["method"], b"POST")

    async def test_chunked_body_arrives_whole(self) -> None:
        resource = _Resource(lambda request: b"got")
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(  # type: ignore[union-attr]
            b"PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n wor"
        )
        client.transport.write(b"ld\r\n0\r\n\r\n" + get(b"/next"))  # type: ignore[union-attr]
        await read_answers(client, b"PUT", b"GET")
        self.assertEqual([s["content"] for s in resource.seen], [b"hello world", b""])

    async def test_expect_100_continue_gets_an_interim_answer_first(self) -> None:
        resource = _Resource(lambda request: b"created")
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(  # type: ignore[union-attr]
            b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        await client.wait_for(lambda data: data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), WAIT)
        self.assertEqual(client.received, b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(resource.seen, [])
        client.transport.write(b"body")  # type: ignore[union-attr]
        interim, final = await read_answers(client, b"POST", b"POST")
        self.assertEqual((interim.code, final.code, final.body), (100, 200, b"created"))
        self.assertEqual(resource.seen[0]["content"], b"body")

    async def test_http10_gets_no_100_continue(self) -> None:
        resource = _Resource(lambda request: b"created")
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(  # type: ignore[union-attr]
            b"POST /p HTTP/1.0\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nbody"
        )
        (answer,) = await closing_answers(client, b"POST")
        self.assertEqual((answer.version, answer.code, answer.body), (b"HTTP/1.0", 200, b"created"))


class LimitTests(LeanServerTestCase):
    """Each limit is answered with a Kubernetes Status, and the connection closed."""

    async def refused(self, pieces: list[bytes], code: int, reasons: list[str], **limits: Any) -> Answer:
        resource = _Resource()
        served = await self.serve(resource, **limits)
        client = await self.connect(served)
        for piece in pieces:
            client.transport.write(piece)  # type: ignore[union-attr]
        (answer,) = await closing_answers(client, b"GET")
        self.assertEqual((answer.version, answer.code), (b"HTTP/1.1", code), answer)
        self.assertEqual(answer.header(b"connection"), b"close")
        status = answer.status()
        self.assertEqual((status["code"], status["status"]), (code, "Failure"))
        self.assertEqual(resource.seen, [], "the resource never sees a refused request")
        self.assertEqual(served.refused, reasons)
        return answer

    async def test_request_line_over_the_limit_is_414(self) -> None:
        answer = await self.refused([get(b"/" + b"a" * 300)], 414, ["too_big"])
        self.assertEqual(answer.status()["reason"], "RequestURITooLong")

    async def test_request_line_under_the_limit_is_accepted(self) -> None:
        resource = _Resource()
        served = await self.serve(resource)
        await self.exchange(served, get(b"/" + b"a" * 199), b"GET")
        self.assertEqual(len(resource.seen[0]["uri"]), 200)
        self.assertEqual(served.refused, [])

    async def test_more_headers_than_allowed_is_431(self) -> None:
        fields = [b"X-%d: v" % i for i in range(10)]  # and Host: eleven
        answer = await self.refused([get(b"/", b"HTTP/1.1", *fields)], 431, ["too_big"])
        self.assertEqual(answer.status()["reason"], "RequestHeaderFieldsTooLarge")

    async def test_as_many_headers_as_allowed_are_accepted(self) -> None:
        resource = _Resource()
        served = await self.serve(resource)
        await self.exchange(served, get(b"/", b"HTTP/1.1", *[b"X-%d: v" % i for i in range(9)]), b"GET")
        self.assertEqual(len(list(resource.seen[0]["headers"].getAllRawHeaders())), 10)

    async def test_header_block_over_the_limit_in_one_piece_is_431(self) -> None:
        await self.refused([get(b"/", b"HTTP/1.1", b"X-Big: " + b"v" * 1100)], 431, ["too_big"])

    async def test_header_block_over_the_limit_of_many_fields_is_431(self) -> None:
        fields = [b"X-%d: %s" % (i, b"v" * 150) for i in range(8)]
        await self.refused([get(b"/", b"HTTP/1.1", *fields)], 431, ["too_big"])

    async def test_content_length_over_the_limit_is_413(self) -> None:
        answer = await self.refused(
            [b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n"], 413, ["too_big"]
        )
        self.assertEqual(answer.status()["reason"], "RequestEntityTooLarge")

    async def test_chunked_body_growing_over_the_limit_is_413(self) -> None:
        chunk = b"200\r\n" + b"x" * 512 + b"\r\n"
        await self.refused(
            [b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", chunk, chunk, chunk],
            413,
            ["too_big"],
        )

    async def test_garbage_is_400(self) -> None:
        answer = await self.refused([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"], 400, [])
        self.assertEqual(answer.status()["reason"], "BadRequest")

    async def test_binary_garbage_is_400(self) -> None:
        await self.refused([b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40], 400, [])

    async def test_incomplete_head_is_408_after_the_head_timeout(self) -> None:
        answer = await self.refused([b"GET /slowloris HTTP/1.1\r\nHost: x\r\nX-A: "], 408, ["slow"], head_timeout=0.1)
        self.assertEqual(answer.status()["code"], 408)


class TrickledHeadTests(SynchronousTestCase):
    """Heads that arrive in several reads meet the same limits, and no stricter ones."""

    def test_header_block_over_the_limit_trickling_in_is_431(self) -> None:
        resource = _Resource()
        channel, transport, _, refused = on_clock(self, resource)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for i in range(8):  # 8 fields of 150 bytes (fewer than max_headers), in halves
            field = b"X-Field-%d: %s\r\n" % (i, b"v" * 137)
            channel.dataReceived(field[:75])
            channel.dataReceived(field[75:])
            if transport.disconnecting:
                break
        self.assertTrue(transport.disconnecting)
        answer, rest = parse_answer(transport.value())
        self.assertEqual((answer.code, answer.status()["code"]), (431, 431))
        self.assertEqual(refused, ["too_big"])
        self.assertEqual(resource.seen, [])

    def test_one_long_header_trickling_in_is_431(self) -> None:
        resource = _Resource()
        channel, transport, _, refused = on_clock(self, resource)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ")
        for _ in range(100):  # a value that never ends
            channel.dataReceived(b"v" * 50)
            if transport.disconnecting:
                break
        self.assertTrue(transport.disconnecting)
        answer, _ = parse_answer(transport.value())
        self.assertEqual(answer.code, 431)
        self.assertEqual(refused, ["too_big"])

    def test_request_line_trickling_in_is_414(self) -> None:
        resource = _Resource()
        channel, transport, _, refused = on_clock(self, resource)
        channel.dataReceived(b"GET /")
        for _ in range(10):
            channel.dataReceived(b"a" * 50)
        self.assertTrue(transport.disconnecting)
        answer, _ = parse_answer(transport.value())
        self.assertEqual(answer.code, 414)
        self.assertEqual(refused, ["too_big"])

    def test_head_under_the_limit_arriving_in_two_reads_is_accepted(self) -> None:
        # 8 fields of 100 bytes: a head of about 830 bytes, under max_header_bytes (1024).
        resource = _Resource()
        channel, transport, _, refused = on_clock(self, resource)
        head = get(b"/", b"HTTP/1.1", *[b"X-Field-%d: %s" % (i, b"v" * 86) for i in range(8)])
        self.assertLess(len(head), 1024)
        channel.dataReceived(head[:700])
        channel.dataReceived(head[700:])
        self.assertEqual(refused, [])
        self.assertEqual(len(resource.seen), 1, transport.value())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"), transport.value())

    def test_head_under_the_limit_arriving_line_by_line_is_accepted(self) -> None:
        resource = _Resource()
        channel, transport, _, refused = on_clock(self, resource)
        head = get(b"/", b"HTTP/1.1", *[b"X-Field-%d: %s" % (i, b"v" * 60) for i in range(8)])
        self.assertLess(len(head), 700)
        for line in head.splitlines(keepends=True):
            channel.dataReceived(line)
        self.assertEqual(refused, [])
        self.assertEqual(len(resource.seen), 1, transport.value())


class HeadTimeoutTests(SynchronousTestCase):
    """A request head has ``head_timeout`` to arrive once its first byte is in."""

    def test_incomplete_head_is_408_after_the_head_timeout(self) -> None:
        resource = _Resource()
        channel, transport, clock, refused = on_clock(self, resource, head_timeout=10.0)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        clock.advance(9.9)
        channel.dataReceived(b"X-Slow: 1\r\n")  # bytes still coming do not extend it
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        answer, rest = parse_answer(transport.value())
        self.assertEqual((answer.code, answer.status()["code"]), (408, 408))
        self.assertEqual(answer.header(b"connection"), b"close")
        self.assertEqual(rest, b"")
        self.assertEqual(refused, ["slow"])
        self.assertEqual(resource.seen, [])

    def test_a_complete_request_leaves_no_head_timer(self) -> None:
        resource = _Resource()
        channel, transport, clock, refused = on_clock(self, resource, head_timeout=10.0)
        idle = clock.getDelayedCalls()
        self.assertEqual(len(idle), 1, "the idle timer")
        channel.dataReceived(get(b"/one-piece"))
        self.assertEqual(clock.getDelayedCalls(), idle, "no head timer for a head in one piece")
        channel.dataReceived(b"GET /two-pieces HTTP/1.1\r\n")
        self.assertEqual(len(clock.getDelayedCalls()), 2, "a head left incomplete has its deadline")
        channel.dataReceived(b"Host: x\r\n\r\n")
        self.assertEqual(clock.getDelayedCalls(), idle)
        clock.advance(11)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(refused, [])
        self.assertEqual(len(resource.seen), 2)

    def test_a_head_arriving_with_its_body_in_pieces_leaves_no_head_timer(self) -> None:
        resource = _Resource()
        channel, transport, clock, refused = on_clock(self, resource, head_timeout=10.0, timeout=None)
        channel.dataReceived(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbo")
        self.assertEqual(clock.getDelayedCalls(), [])
        channel.dataReceived(b"dy")
        self.assertEqual(resource.seen[0]["content"], b"body")
        self.assertEqual(clock.getDelayedCalls(), [])


class IdleTimeoutTests(SynchronousTestCase):
    """An idle connection is closed after the site's timeout; a request is not idleness."""

    def test_an_idle_connection_is_closed_after_the_timeout(self) -> None:
        channel, transport, clock, _ = on_clock(self, _Resource(), timeout=60.0)
        clock.advance(59)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"", "closed without a word")

    def test_each_answer_starts_the_idle_time_again(self) -> None:
        channel, transport, clock, _ = on_clock(self, _Resource(), timeout=60.0)
        for _ in range(4):
            clock.advance(50)
            channel.dataReceived(get())
        self.assertLessEqual(len(clock.getDelayedCalls()), 1, "one timer, not one per request")
        clock.advance(59)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_no_idle_close_while_a_request_is_handled(self) -> None:
        held: list[Any] = []

        def hold(request: Any) -> int:
            held.append(request)
            return NOT_DONE_YET

        channel, transport, clock, _ = on_clock(self, _Resource(hold), timeout=60.0)
        channel.dataReceived(get(b"/watch"))
        for _ in range(10):
            clock.advance(60)  # a long watch
        self.assertFalse(transport.disconnecting)
        held[0].write(b"event")
        held[0].finish()
        answer, rest = parse_answer(transport.value())
        self.assertEqual(answer.body, b"event")
        clock.advance(59)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_a_connection_that_does_not_close_is_aborted(self) -> None:
        channel, transport, clock, _ = on_clock(self, _Resource(), timeout=60.0)
        aborted: list[bool] = []
        transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        clock.advance(61)
        self.assertTrue(transport.disconnecting)
        clock.advance(ABORT_AFTER - 1)
        self.assertEqual(aborted, [])
        clock.advance(2)
        self.assertEqual(aborted, [True])

    def test_closing_leaves_no_timer(self) -> None:
        channel, transport, clock, _ = on_clock(self, _Resource(), timeout=60.0)
        channel.dataReceived(get())
        channel.dataReceived(b"GET /partial HTTP/1.1\r\n")
        clock.advance(1)
        self.assertEqual(len(clock.getDelayedCalls()), 2, "the idle timer and the head's deadline")
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_timeout_means_no_timer(self) -> None:
        channel, transport, clock, _ = on_clock(self, _Resource(), timeout=None)
        channel.dataReceived(get())
        self.assertEqual(clock.getDelayedCalls(), [])


class IdleTimeoutOnTheWireTests(LeanServerTestCase):
    """The idle timeout with the real reactor (a fraction of a second)."""

    async def test_an_idle_keep_alive_connection_is_closed(self) -> None:
        served = await self.serve(_Resource(), timeout=0.2)
        client, (answer,) = await self.exchange(served, get(), b"GET")
        self.assertEqual(answer.body, b"ok")
        await until_closed(client)
        self.assertEqual(client.received, b"")
        await served.factory.lost[0]
        self.assertEqual(served.site.open_connections, set())

    async def test_an_answer_slower_than_the_timeout_is_delivered(self) -> None:
        def answer(request: Any) -> int:
            reactor.callLater(0.5, lambda: (request.write(b"late"), request.finish()))  # type: ignore[attr-defined]
            return NOT_DONE_YET

        served = await self.serve(_Resource(answer), timeout=0.2)
        client, (answer_,) = await self.exchange(served, get(b"/watch"), b"GET")
        self.assertEqual(answer_.body, b"late")
        await until_closed(client)  # and then idleness closes it


class DisconnectTests(LeanServerTestCase):
    """A client that leaves mid-request, and the end of a request that was answered."""

    async def test_client_gone_mid_request(self) -> None:
        resource = _Resource(lambda request: NOT_DONE_YET)
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(get(b"/watch"))  # type: ignore[union-attr]
        request = await resource.rendered()
        finished = request.notifyFinish()
        client.transport.abortConnection()  # type: ignore[union-attr]
        await self.assertFailure(finished.addTimeout(WAIT, reactor), ConnectionClosed)
        request.write(b"into the void")  # ignored
        self.assertRaises(RuntimeError, request.finish)
        self.assertIsNone(request.channel)

    async def test_notify_finish_fires_with_none_after_finish(self) -> None:
        resource = _Resource(lambda request: NOT_DONE_YET)
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(get())  # type: ignore[union-attr]
        request = await resource.rendered()
        finished = request.notifyFinish()
        self.assertIs(request.channel, served.factory.channels[0])
        self.assertFalse(finished.called)
        request.write(b"done")
        request.finish()
        self.assertIsNone(self.successResultOf(finished))
        self.assertIsNone(request.channel)
        self.assertTrue(request.finished)
        self.assertRaises(RuntimeError, request.write, b"more")
        (answer,) = await read_answers(client, b"GET")
        self.assertEqual(answer.body, b"done")


class _Producer:
    """A push producer that counts what it is told."""

    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0
        self.stopped = 0
        self.on_resume: defer.Deferred[None] = defer.Deferred()

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused += 1

    def resumeProducing(self) -> None:  # noqa: N802
        self.resumed += 1
        if not self.on_resume.called:
            self.on_resume.callback(None)

    def stopProducing(self) -> None:  # noqa: N802
        self.stopped += 1


class _CountingClient(RawClient):
    """A raw client that counts what arrives and keeps only its tail."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.count += len(data)
        self.received = self.received[-64:]
        super().dataReceived(data)


class ProducerTests(LeanServerTestCase):
    """A producer registered on a request is driven by the client's connection."""

    async def test_producer_is_stopped_when_the_client_disconnects(self) -> None:
        producer = _Producer()

        def answer(request: Any) -> int:
            request.registerProducer(producer, True)
            request.write(b"first event")
            return NOT_DONE_YET

        resource = _Resource(answer)
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(get(b"/watch"))  # type: ignore[union-attr]
        request = await resource.rendered()
        finished = request.notifyFinish()
        await client.wait_for(lambda data: b"first event" in data, WAIT)
        self.assertEqual(producer.stopped, 0)
        client.transport.abortConnection()  # type: ignore[union-attr]
        await self.assertFailure(finished.addTimeout(WAIT, reactor), ConnectionClosed)
        self.assertEqual(producer.stopped, 1)

    async def test_producer_is_paused_and_resumed_with_the_clients_reading(self) -> None:
        producer = _Producer()
        piece = b"x" * (256 * 1024)
        written: list[int] = []

        def answer(request: Any) -> int:
            request.registerProducer(producer, True)
            # Written until the connection says stop: the client reads nothing yet, so
            # the kernel's buffers fill and then the transport's own.
            while not producer.paused and len(written) < 256:
                request.write(piece)
                written.append(len(piece))
            return NOT_DONE_YET

        resource = _Resource(answer)
        served = await self.serve(resource)
        client = _CountingClient()
        await self.connect_with(served, client)
        client.transport.pauseProducing()  # type: ignore[union-attr]
        client.transport.write(get(b"/big"))  # type: ignore[union-attr]
        request = await resource.rendered()
        self.assertEqual((producer.paused, producer.resumed), (1, 0), "paused once the buffers are full")
        self.assertLess(len(written), 256)
        client.transport.resumeProducing()  # type: ignore[union-attr]
        await producer.on_resume.addTimeout(WAIT, reactor)
        request.unregisterProducer()
        request.write(b"end")
        request.finish()
        await client.wait_for(lambda tail: tail.endswith(b"3\r\nend\r\n0\r\n\r\n"), WAIT)
        self.assertGreater(client.count, sum(written))
        self.assertEqual(producer.stopped, 0)

    async def test_unregister_producer_detaches_it(self) -> None:
        producer = _Producer()
        transports: list[Any] = []

        def answer(request: Any) -> int:
            request.registerProducer(producer, True)
            transports.append(request.channel.transport)
            self.assertIs(transports[0].producer, producer)
            request.unregisterProducer()
            return later(request, b"unproduced")

        served = await self.serve(_Resource(answer))
        client, (answer_,) = await self.exchange(served, get(), b"GET")
        self.assertEqual(answer_.body, b"unproduced")
        self.assertIsNone(transports[0].producer)
        client.transport.abortConnection()  # type: ignore[union-attr]
        await served.factory.lost[0].addTimeout(WAIT, reactor)
        self.assertEqual(producer.stopped, 0, "an unregistered producer is not stopped")


class UpgradeTests(LeanServerTestCase):
    """An Upgrade request's connection is handed over, the bytes after its head included."""

    UPGRADE = get(b"/exec", b"HTTP/1.1", b"Connection: Upgrade", b"Upgrade: test")

    def taker(self) -> RawClient:
        """The protocol the connection is handed to; its end is awaited at cleanup."""
        taker = RawClient()
        self.addCleanup(lambda: taker.closed.addTimeout(WAIT, reactor) if taker.transport is not None else None)
        return taker

    async def test_upgrade_hands_over_the_bytes_after_the_head(self) -> None:
        taker = self.taker()

        def answer(request: Any) -> int:
            take_over_transport(request, taker)
            return NOT_DONE_YET

        resource = _Resource(answer)
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(self.UPGRADE + b"\x00frame one\r\n\r\nGET / HTTP/1.1\r\n\r\n")  # type: ignore[union-attr]
        await taker.wait_for(lambda data: data.endswith(b"GET / HTTP/1.1\r\n\r\n"), WAIT)
        self.assertEqual(taker.received, b"\x00frame one\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        client.transport.write(b"\x01frame two")  # type: ignore[union-attr]
        await taker.wait_for(lambda data: data.endswith(b"\x01frame two"), WAIT)
        self.assertEqual(taker.received, b"\x00frame one\r\n\r\nGET / HTTP/1.1\r\n\r\n\x01frame two")
        taker.transport.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\nfrom the taker")  # type: ignore[union-attr]
        await client.wait_for(lambda data: data.endswith(b"from the taker"), WAIT)
        self.assertEqual(client.received, b"HTTP/1.1 101 Switching Protocols\r\n\r\nfrom the taker")
        self.assertEqual(len(resource.seen), 1, "the bytes after the head are not parsed as requests")
        channel = served.factory.channels[0]
        self.assertNotIn(channel, served.site.open_connections)
        self.assertIn(taker.transport, served.site.spliced)

    async def test_upgrade_taken_over_later_gets_the_bytes_sent_meanwhile(self) -> None:
        taker = self.taker()
        resource = _Resource(lambda request: NOT_DONE_YET)
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(self.UPGRADE + b"early")  # type: ignore[union-attr]
        request = await resource.rendered()
        client.transport.write(b" and meanwhile")  # type: ignore[union-attr]
        take_over_transport(request, taker)
        await taker.wait_for(lambda data: data.endswith(b"meanwhile"), WAIT)
        self.assertEqual(taker.received, b"early and meanwhile")
        client.transport.write(b", later")  # type: ignore[union-attr]
        await taker.wait_for(lambda data: data.endswith(b"later"), WAIT)
        self.assertEqual(taker.received, b"early and meanwhile, later")

    async def test_upgrade_answered_normally_closes_the_connection(self) -> None:
        resource = _Resource(lambda request: b"no upgrade here")
        served = await self.serve(resource)
        client = await self.connect(served)
        client.transport.write(self.UPGRADE + get(b"/smuggled"))  # type: ignore[union-attr]
        (answer,) = await closing_answers(client, b"GET")
        self.assertEqual((answer.code, answer.body), (200, b"no upgrade here"))
        self.assertEqual(answer.header(b"connection"), b"close")
        self.assertEqual([s["path"] for s in resource.seen], [b"/exec"])

    async def test_close_connections_drops_spliced_connections(self) -> None:
        taker = self.taker()

        def answer(request: Any) -> int:
            take_over_transport(request, taker)
            return NOT_DONE_YET

        served = await self.serve(_Resource(answer))
        client = await self.connect(served)
        client.transport.write(self.UPGRADE + b"x")  # type: ignore[union-attr]
        await taker.wait_for(lambda data: data == b"x", WAIT)
        served.site.close_connections()
        await until_closed(client)
        await taker.closed.addTimeout(WAIT, reactor)
        self.assertEqual(served.site.spliced, set())


class SiteBookkeepingTests(LeanServerTestCase):
    """`ProxySite` knows the lean connections, and can close them."""

    async def test_open_connections_holds_the_channel_while_open(self) -> None:
        served = await self.serve(_Resource())
        client, _ = await self.exchange(served, get(), b"GET")
        (channel,) = served.factory.channels
        self.assertEqual(served.site.open_connections, {channel})
        client.transport.loseConnection()  # type: ignore[union-attr]
        await served.factory.lost[0].addTimeout(WAIT, reactor)
        self.assertEqual(served.site.open_connections, set())

    async def test_close_connections_drops_open_lean_connections(self) -> None:
        resource = _Resource(lambda request: b"ok" if request.path == b"/" else NOT_DONE_YET)
        served = await self.serve(resource)
        idle, _ = await self.exchange(served, get(), b"GET")
        busy = await self.connect(served)
        busy.transport.write(get(b"/watch"))  # type: ignore[union-attr]
        request = await resource.rendered(2)
        finished = request.notifyFinish()
        self.assertEqual(len(served.site.open_connections), 2)
        served.site.close_connections()
        self.assertEqual(served.site.open_connections, set())
        await until_closed(idle)
        await until_closed(busy)
        await defer.gatherResults(served.factory.lost).addTimeout(WAIT, reactor)
        await self.assertFailure(finished.addTimeout(WAIT, reactor), ConnectionClosed)


class RenderErrorTests(LeanServerTestCase):
    """A resource that raises is a 500 Status for the client and an error in the log."""

    async def test_an_exception_in_render_is_a_500_status(self) -> None:
        def answer(request: Any) -> bytes:
            if request.path == b"/broken":
                raise ZeroDivisionError("broken resource")
            return b"still here"

        served = await self.serve(_Resource(answer))
        client, (answer_,) = await self.exchange(served, get(b"/broken"), b"GET")
        self.assertEqual(answer_.code, 500)
        status = answer_.status()
        self.assertEqual((status["code"], status["reason"]), (500, "InternalError"))
        self.assertNotIn("broken resource", status["message"], "no internals shown to the client")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        client.transport.write(get(b"/fine"))  # type: ignore[union-attr]
        (following,) = await read_answers(client, b"GET")
        self.assertEqual((following.code, following.body), (200, b"still here"))


class RefusalOrderTests(SynchronousTestCase):
    """A refusal never cuts into an answer under way, and limits count what they name."""

    def test_garbage_during_an_answer_is_refused_once_the_answer_is_complete(self) -> None:
        held: list[Any] = []

        def answer(request: Any) -> bytes | int:
            held.append(request)
            return NOT_DONE_YET

        channel, transport, _, _ = on_clock(self, _Resource(answer))
        channel.dataReceived(get(b"/watch"))
        held[0].write(b"event one\n")
        channel.dataReceived(b"\x00\x01 not http\r\n\r\n")
        self.assertFalse(transport.disconnecting, "the answer under way was cut")
        held[0].write(b"event two\n")
        held[0].finish()
        (first, refused), _ = parse_answers(transport.value(), (b"GET", b"GET"))
        self.assertEqual((first.code, first.body), (200, b"event one\nevent two\n"))
        self.assertEqual(refused.code, 400)
        self.assertTrue(transport.disconnecting)

    def test_the_request_line_limit_counts_the_method_and_version(self) -> None:
        channel, transport, _, refused = on_clock(self, _Resource())
        # A target that fits on its own, but not with "GET " and " HTTP/1.1" around it.
        channel.dataReceived(get(b"/" + b"a" * (LIMITS["max_request_line_bytes"] - 8)))
        self.assertIn(b" 414 ", transport.value())
        self.assertEqual(refused, ["too_big"])

    def test_a_request_line_just_within_the_limit_is_answered(self) -> None:
        channel, transport, _, _ = on_clock(self, _Resource())
        line_overhead = len(b"GET  HTTP/1.1")
        channel.dataReceived(get(b"/" + b"a" * (LIMITS["max_request_line_bytes"] - line_overhead - 1)))
        self.assertIn(b" 200 ", transport.value())

    def test_no_interim_answer_for_a_body_that_is_refused(self) -> None:
        channel, transport, _, _ = on_clock(self, _Resource())
        channel.dataReceived(
            b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
            % (LIMITS["max_body_bytes"] + 1)
        )
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertIn(b" 413 ", transport.value())


class WriteBatchTests(LeanServerTestCase):
    """Writes made while one read is handled leave in one system call, in order."""

    def _count_sends(self) -> list[int]:
        sends: list[int] = []
        real = http11.send_pieces_now

        def counting(transport: Any, pieces: Any) -> None:
            sends.append(len(pieces))
            real(transport, pieces)

        self.patch(http11, "send_pieces_now", counting)
        return sends

    def _written(self, *pieces: bytes) -> Any:
        def answer(request: Any) -> int:
            for piece in pieces:
                request.write(piece)
            request.finish()
            return NOT_DONE_YET

        return answer

    async def test_an_answer_written_in_pieces_during_one_read_is_one_send(self) -> None:
        sends = self._count_sends()
        served = await self.serve(_Resource(self._written(b"one ", b"two ", b"three")))
        client, (answer,) = await self.exchange(served, get(b"/events"), b"GET")
        self.assertEqual(answer.body, b"one two three")
        self.assertEqual(len(sends), 1, sends)

    async def test_a_big_answer_is_sent_as_it_is_written(self) -> None:
        sends = self._count_sends()
        big = b"x" * http11.HOLD_AT_MOST
        served = await self.serve(_Resource(self._written(big, big, b"end")))
        client, (answer,) = await self.exchange(served, get(b"/big"), b"GET")
        self.assertEqual(answer.body, big + big + b"end")
        self.assertGreaterEqual(len(sends), 2, "held past HOLD_AT_MOST")


class BatchTests(SynchronousTestCase):
    def test_held_writes_go_when_the_outer_batch_closes(self) -> None:
        flushed: list[str] = []

        class Channel:
            def __init__(self, name: str) -> None:
                self.name = name

            def flush(self) -> None:
                flushed.append(self.name)

        batch = WriteBatch()
        batch.open()
        batch.hold(Channel("a"))
        batch.open()
        batch.hold(Channel("b"))
        batch.close()
        self.assertEqual(flushed, [])
        batch.close()
        self.assertEqual(flushed, ["a", "b"])
        self.assertEqual(batch.depth, 0)
