"""Tests for yurthub/upstream/http1.py: the lean HTTP/1.1 client of the proxy path.

Each test runs a scripted server on 127.0.0.1: it reads one request head at a time and
answers with the bytes the test gives it (or closes), so every way an answer can end,
well or badly, reaches the client over a real socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from tests.support import sleep, wait_until
from yurthub.upstream.backends import Backend
from yurthub.upstream.endpoints import BackendEndpointFactory
from yurthub.upstream.http1 import UpstreamClient, UpstreamResponse, encode_head

#: What the scripted server does with each request head: the bytes to answer, or None to
#: close the connection without a word.
Script = Callable[[bytes], "bytes | None"]


class _Scripted(Protocol):
    def __init__(self, server: _Server) -> None:
        self.server = server
        self.buffer = b""

    def connectionMade(self) -> None:  # noqa: N802
        self.server.connections.append(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            length = _content_length(head)
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            self.server.requests.append((head, body))
            answer = self.server.script(head)
            if answer is None:
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            self.transport.write(answer)  # type: ignore[union-attr]
            if self.server.close_after:
                self.transport.loseConnection()  # type: ignore[union-attr]


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class _Server(Factory):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.close_after = False
        self.connections: list[_Scripted] = []
        self.requests: list[tuple[bytes, bytes]] = []

    def buildProtocol(self, addr: Any) -> _Scripted:  # noqa: N802
        return _Scripted(self)


class _NoCredentials:
    def client_creator(self, host: str, with_client_certificate: bool) -> None:
        raise AssertionError("plain HTTP needs no TLS")


class _Body(Protocol):
    """Collects a body and how it ended."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.reason: Failure | None = None
        self.done: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        self.reason = reason
        self.done.callback(None)

    @property
    async def ended(self) -> Failure:
        """How the body ended, once it has."""
        await self.done
        assert self.reason is not None
        return self.reason


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body,
    )  # fmt: skip


class UpstreamClientTests(TestCase):
    def serve(self, script: Script) -> tuple[_Server, Backend]:
        server = _Server(script)
        port = reactor.listenTCP(0, server, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [c.transport.abortConnection() for c in server.connections if c.transport])
        return server, Backend(f"http://127.0.0.1:{port.getHost().port}")

    def client(self, clock: Any = None, **kwargs: Any) -> UpstreamClient:
        endpoints = BackendEndpointFactory(reactor, _NoCredentials(), with_client_certificate=False)  # type: ignore[arg-type]
        client = UpstreamClient(clock or reactor, endpoints, **kwargs)
        self.addCleanup(client.closeCachedConnections)
        return client

    async def fetch(
        self, client: UpstreamClient, backend: Backend, method: bytes = b"GET", body: bytes | None = None
    ) -> tuple[UpstreamResponse, bytes, Failure]:
        headers = Headers({b"Host": [backend.host_header], b"User-Agent": [b"kubelet/v1.31.0"]})
        response = await client.request_to(backend, method, b"/api/v1/pods?limit=500", headers, body)
        collected = _Body()
        response.deliverBody(collected)
        ended = await collected.ended
        # The connection goes back to the pool once the read that ended the body is
        # done, after this coroutine resumed inside it: one reactor turn.
        await sleep(0)
        return response, b"".join(collected.data), ended

    async def next_request_gets_a_new_connection(self, server: _Server, client: UpstreamClient, backend: Backend) -> None:
        """The first connection is closed, and the next request is answered on a second."""
        await wait_until(lambda: server.connections[0].transport.disconnected)
        server.script = lambda head: ok(b"new")
        response, data, ended = await self.fetch(client, backend)
        self.assertEqual(data, b"new")
        self.assertEqual(len(server.connections), 2)

    async def test_answers_and_reuses_the_connection(self) -> None:
        server, backend = self.serve(lambda head: ok(b'{"kind":"PodList"}', b"Connection: keep-alive\r\nX-Trace: 1\r\n"))
        client = self.client()
        for _ in range(3):
            response, body, ended = await self.fetch(client, backend)
            self.assertEqual((response.code, response.phrase, body), (200, b"OK", b'{"kind":"PodList"}'))
            self.assertTrue(ended.check(ResponseDone))
            self.assertEqual(response.length, 18)
            # The answer's own fields stay; the connection's are taken out.
            self.assertEqual(response.headers.getRawHeaders(b"x-trace"), [b"1"])
            self.assertFalse(response.headers.hasHeader(b"connection"))
            self.assertFalse(response.headers.hasHeader(b"content-length"))
        self.assertEqual(len(server.connections), 1)
        head = server.requests[0][0]
        self.assertTrue(head.startswith(b"GET /api/v1/pods?limit=500 HTTP/1.1\r\n"), head)
        self.assertIn(b"User-Agent: kubelet/v1.31.0", head)

    async def test_fields_named_in_connection_are_taken_out(self) -> None:
        server, backend = self.serve(
            lambda head: ok(b"{}", b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Kept: 2\r\n")
        )
        response, body, ended = await self.fetch(self.client(), backend)
        self.assertFalse(response.headers.hasHeader(b"x-hop"))
        self.assertEqual(response.headers.getRawHeaders(b"x-kept"), [b"2"])
        # Named after it appeared, in another case, in a second Connection field.
        server, backend = self.serve(
            lambda head: ok(b"{}", b"X-Hop: 1\r\nX-Kept: 2\r\nConnection: keep-alive\r\nConnection: x-HOP\r\n")
        )
        response, body, ended = await self.fetch(self.client(), backend)
        self.assertFalse(response.headers.hasHeader(b"x-hop"))
        self.assertEqual(response.headers.getRawHeaders(b"x-kept"), [b"2"])

    async def test_sends_the_body_with_its_length(self) -> None:
        server, backend = self.serve(lambda head: ok(b"{}"))
        client = self.client()
        await self.fetch(client, backend, b"POST", b'{"kind":"Pod"}')
        await self.fetch(client, backend, b"PUT", b"")
        (head, body), (head2, body2) = server.requests
        self.assertIn(b"Content-Length: 14", head)
        self.assertEqual(body, b'{"kind":"Pod"}')
        self.assertIn(b"Content-Length: 0", head2)

    async def test_chunked_body_arrives_decoded_in_pieces(self) -> None:
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        server, backend = self.serve(lambda head: chunked)
        client = self.client()
        response, body, ended = await self.fetch(client, backend)
        self.assertIs(response.length, UNKNOWN_LENGTH)
        self.assertEqual(body, b"hello world")
        self.assertTrue(ended.check(ResponseDone))
        await self.fetch(client, backend)
        self.assertEqual(len(server.connections), 1, "a whole chunked answer leaves the connection reusable")

    async def test_a_second_answer_in_one_read_never_reaches_the_next_request(self) -> None:
        server, backend = self.serve(lambda head: ok(b"first") + ok(b"smuggled"))
        client = self.client()
        response, body, ended = await self.fetch(client, backend)
        self.assertEqual(body, b"first")
        server.script = lambda head: ok(b"second")
        response, body, ended = await self.fetch(client, backend)
        self.assertEqual(body, b"second")
        self.assertEqual(len(server.connections), 2, "the connection that sent two answers was dropped")

    async def test_a_request_made_as_a_body_ends_gets_its_own_answer(self) -> None:
        answers = iter([b"one", b"two"])
        server, backend = self.serve(lambda head: ok(next(answers)))
        client = self.client()
        second: list[defer.Deferred[UpstreamResponse]] = []

        class Chained(_Body):
            def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
                # What a client's next pipelined request does: starts from inside the end.
                second.append(client.request_to(backend, b"GET", b"/next", Headers({b"Host": [b"x"]}), None))
                super().connectionLost(reason)

        response = await client.request_to(backend, b"GET", b"/", Headers({b"Host": [b"x"]}), None)
        body = Chained()
        response.deliverBody(body)
        await body.ended
        self.assertEqual(b"".join(body.data), b"one")
        response = await second[0]
        collected = _Body()
        response.deliverBody(collected)
        await collected.ended
        self.assertEqual(b"".join(collected.data), b"two")

    async def test_body_ended_by_close_is_potential_data_loss(self) -> None:
        server, backend = self.serve(lambda head: b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        server.close_after = True
        response, body, ended = await self.fetch(self.client(), backend)
        self.assertEqual(body, b"until the end")
        self.assertTrue(ended.check(PotentialDataLoss))

    async def test_truncated_body_fails(self) -> None:
        server, backend = self.serve(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        server.close_after = True
        response, body, ended = await self.fetch(self.client(), backend)
        self.assertEqual(body, b"only part")
        self.assertTrue(ended.check(ResponseFailed), ended)

    async def test_close_before_the_answer_is_response_never_received(self) -> None:
        server, backend = self.serve(lambda head: None)
        with self.assertRaises(ResponseNeverReceived):
            await self.fetch(self.client(), backend)

    async def test_partial_head_is_response_failed(self) -> None:
        server, backend = self.serve(lambda head: b"HTTP/1.1 200 OK\r\nContent-")
        server.close_after = True
        with self.assertRaises(ResponseFailed):
            await self.fetch(self.client(), backend)

    async def test_garbage_is_a_failure_not_a_crash(self) -> None:
        server, backend = self.serve(lambda head: b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        with self.assertRaises((ResponseFailed, ResponseNeverReceived)):
            await self.fetch(self.client(), backend)
        await wait_until(lambda: all(c.transport.disconnected for c in server.connections))

    async def test_connection_refused_is_a_connect_error(self) -> None:
        server, backend = self.serve(lambda head: ok(b""))
        port = backend.port
        await self._stop_listening_on(port)
        with self.assertRaises(ConnectError):
            await self.fetch(self.client(), Backend(f"http://127.0.0.1:{port}"))

    async def _stop_listening_on(self, port: int) -> None:
        # The cleanup stopListening is idempotent enough: find and stop the port now.
        for reader in list(reactor.getReaders()):  # type: ignore[attr-defined]
            host = getattr(reader, "getHost", None)
            if host is not None and getattr(host(), "port", None) == port and hasattr(reader, "stopListening"):
                await reader.stopListening()

    async def test_head_answer_has_no_body_and_closes(self) -> None:
        server, backend = self.serve(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
        client = self.client()
        response, body, ended = await self.fetch(client, backend, b"HEAD")
        self.assertEqual((response.code, response.length, body), (200, 0, b""))
        self.assertTrue(ended.check(ResponseDone))
        await self.fetch(client, backend, b"HEAD")
        self.assertEqual(len(server.connections), 2)

    async def test_interim_answers_are_skipped(self) -> None:
        server, backend = self.serve(lambda head: b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"done"))
        response, body, ended = await self.fetch(self.client(), backend, b"POST", b"x")
        self.assertEqual((response.code, body), (200, b"done"))

    async def test_no_content_answers_are_done_at_once(self) -> None:
        server, backend = self.serve(lambda head: b"HTTP/1.1 204 No Content\r\n\r\n")
        client = self.client()
        for _ in range(2):
            response, body, ended = await self.fetch(client, backend, b"DELETE")
            self.assertEqual((response.code, response.length, body), (204, 0, b""))
        self.assertEqual(len(server.connections), 1)

    async def test_cancel_before_the_answer_drops_the_connection(self) -> None:
        server, backend = self.serve(lambda head: b"")  # never answers
        client = self.client()
        pending = client.request_to(backend, b"GET", b"/slow", Headers({b"Host": [b"x"]}), None)
        await wait_until(lambda: len(server.requests) == 1)
        pending.cancel()
        with self.assertRaises(defer.CancelledError):
            await pending
        await self.next_request_gets_a_new_connection(server, client, backend)

    async def test_start_calls_back_with_the_context(self) -> None:
        server, backend = self.serve(lambda head: ok(b"{}"))
        client = self.client()
        heard: defer.Deferred[Any] = defer.Deferred()
        client.start(backend, b"GET", b"/a", Headers({b"Host": [b"x"]}), None,
                     lambda response, context: heard.callback((response.code, context)),
                     lambda failure, context: heard.errback(failure), "ctx")  # fmt: skip
        self.assertEqual(await heard, (200, "ctx"))

    async def test_start_tells_failed_what_request_to_would_errback(self) -> None:
        server, backend = self.serve(lambda head: b"HTTP/1.1 200 OK\r\nContent-Le")
        server.close_after = True
        client = self.client()
        heard: defer.Deferred[Any] = defer.Deferred()
        client.start(backend, b"GET", b"/a", Headers({b"Host": [b"x"]}), None,
                     lambda response, context: heard.errback(AssertionError("answered")),
                     lambda failure, context: heard.callback((failure, context)), 7)  # fmt: skip
        failure, context = await heard
        self.assertTrue(failure.check(ResponseFailed))
        self.assertEqual(context, 7)
        bad: list[Any] = []
        client.start(backend, b"G T", b"/a", Headers(), None, bad.append, lambda f, c: bad.append(f.type), None)
        self.assertEqual(bad, [ValueError])

    async def test_cancel_after_start_calls_neither(self) -> None:
        server, backend = self.serve(lambda head: b"")  # never answers
        client = self.client()
        heard: list[Any] = []
        pending = client.start(backend, b"GET", b"/slow", Headers({b"Host": [b"x"]}), None,
                               lambda *a: heard.append(a), lambda *a: heard.append(a), None)  # fmt: skip
        await wait_until(lambda: len(server.requests) == 1)
        pending.cancel()
        await self.next_request_gets_a_new_connection(server, client, backend)
        self.assertEqual(heard, [])

    async def test_a_late_cancel_leaves_the_connection_to_its_next_request(self) -> None:
        answers = iter([ok(b"first"), b""])  # the second request is never answered
        server, backend = self.serve(lambda head: next(answers))
        client = self.client()
        first: defer.Deferred[Any] = defer.Deferred()
        pending = client.start(backend, b"GET", b"/1", Headers({b"Host": [b"x"]}), None,
                               lambda response, _: first.callback(response), lambda f, _: first.errback(f), None)  # fmt: skip
        response = await first
        body = _Body()
        response.deliverBody(body)
        await body.ended
        await sleep(0)  # back in the pool
        second = client.request_to(backend, b"GET", b"/2", Headers({b"Host": [b"x"]}), None)
        await wait_until(lambda: len(server.requests) == 2)
        pending.cancel()  # the first request's, long answered: must not touch the second
        await sleep(0.05)
        self.assertEqual(len(server.connections), 1)
        self.assertFalse(server.connections[0].transport.disconnected)
        second.cancel()
        with self.assertRaises(defer.CancelledError):
            await second

    async def test_stop_producing_mid_body_drops_the_connection(self) -> None:
        big = b"x" * 10
        server, backend = self.serve(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + big)
        client = self.client()
        response = await client.request_to(backend, b"GET", b"/", Headers({b"Host": [b"x"]}), None)

        class Stopper(_Body):
            def dataReceived(self, data: bytes) -> None:  # noqa: N802
                super().dataReceived(data)
                self.transport.stopProducing()  # type: ignore[union-attr]

        body = Stopper()
        response.deliverBody(body)
        ended = await body.ended
        self.assertTrue(ended.check(ResponseFailed))
        await wait_until(lambda: server.connections[0].transport.disconnected)

    async def test_pause_stops_reading_the_upstream(self) -> None:
        server, backend = self.serve(lambda head: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
        client = self.client()
        response = await client.request_to(backend, b"GET", b"/watch", Headers({b"Host": [b"x"]}), None)
        body = _Body()
        response.deliverBody(body)
        await wait_until(lambda: body.data == [b"one"])
        body.transport.pauseProducing()  # type: ignore[union-attr]
        server.connections[0].transport.write(b"3\r\ntwo\r\n")
        await sleep(0.1)
        self.assertEqual(body.data, [b"one"], "nothing is read while paused")
        body.transport.resumeProducing()  # type: ignore[union-attr]
        await wait_until(lambda: body.data == [b"one", b"two"])
        server.connections[0].transport.write(b"0\r\n\r\n")
        ended = await body.ended
        self.assertTrue(ended.check(ResponseDone))

    async def test_idle_connections_close_after_the_timeout(self) -> None:
        server, backend = self.serve(lambda head: ok(b"{}"))
        clock = Clock()
        client = self.client(clock, idle_timeout=90.0)
        await self.fetch(client, backend)
        clock.advance(60)
        await self.fetch(client, backend)  # reused: its idle time starts again
        self.assertEqual(len(server.connections), 1)
        clock.advance(89)
        self.assertFalse(server.connections[0].transport.disconnected)
        clock.advance(2)
        await wait_until(lambda: server.connections[0].transport.disconnected)
        self.assertEqual(clock.getDelayedCalls(), [], "no sweep is left armed with nothing idle")

    async def test_pool_keeps_at_most_per_host_idle(self) -> None:
        server, backend = self.serve(lambda head: ok(b"{}"))
        client = self.client(per_host=1)
        await defer.gatherResults([defer.ensureDeferred(self.fetch(client, backend)) for _ in range(3)])
        self.assertEqual(len(server.connections), 3)
        await wait_until(lambda: sum(not c.transport.disconnected for c in server.connections) == 1)

    async def test_a_connection_in_use_when_the_pool_closes_is_not_kept(self) -> None:
        server, backend = self.serve(lambda head: b"")  # answers when the test says
        client = self.client()
        pending = client.request_to(backend, b"GET", b"/", Headers({b"Host": [b"x"]}), None)
        await wait_until(lambda: len(server.requests) == 1)
        await client.closeCachedConnections()  # a certificate rotation, say
        server.connections[0].transport.write(ok(b"old"))
        response = await pending
        body = _Body()
        response.deliverBody(body)
        await body.ended
        await self.next_request_gets_a_new_connection(server, client, backend)

    async def test_close_cached_connections(self) -> None:
        server, backend = self.serve(lambda head: ok(b"{}"))
        client = self.client()
        await self.fetch(client, backend)
        await client.closeCachedConnections()
        await wait_until(lambda: server.connections[0].transport.disconnected)
        await self.fetch(client, backend)
        self.assertEqual(len(server.connections), 2)

    def test_refuses_what_it_cannot_send(self) -> None:
        client = self.client()
        backend = Backend("http://127.0.0.1:1")
        for method, target in ((b"GET", b"/a b"), (b"GET", b"/a\r\nX: y"), (b"G T", b"/"), (b"", b"/")):
            failure = self.failureResultOf(client.request_to(backend, method, target, Headers(), None))
            self.assertTrue(failure.check(ValueError), (method, target))

    def test_head_encoding(self) -> None:
        headers = Headers({b"Host": [b"a:1"], b"Accept": [b"application/json", b"*/*"]})
        head = encode_head(b"PATCH", b"/x", headers, b"{}")
        self.assertEqual(
            sorted(head.split(b"\r\n")),
            sorted([b"PATCH /x HTTP/1.1", b"Host: a:1", b"Accept: application/json", b"Accept: */*",
                    b"Content-Length: 2", b"", b""]),
        )  # fmt: skip
        self.assertTrue(head.endswith(b"\r\n\r\n"))
