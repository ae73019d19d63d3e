"""Tests for yurthub/proxy/channel.py: a request head taken in one piece is the same
request twisted.web's line-by-line path makes of it, and whatever the one-piece path
does not take still gets twisted.web's (and the limits') answer."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from yurthub.proxy.channel import ChannelLimits, LimitedHTTPChannel
from yurthub.proxy.root import make_site


class _Recorder(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, ...]] = []

    def render(self, request: Any) -> bytes:
        self.seen.append(
            (
                request.method,
                request.uri,
                request.path,
                request.clientproto,
                request.content.read(),
                sorted((name, tuple(values)) for name, values in request.requestHeaders.getAllRawHeaders()),
                request.getHost(),
            )
        )
        return b"ok"


HEADS = [
    b"GET /api/v1/pods?fieldSelector=spec.nodeName%3Dn1&limit=500 HTTP/1.1\r\nHost: 127.0.0.1:10261\r\n"
    b"User-Agent: kubelet/v1.31.0 (linux/amd64)\r\nAccept: application/json, */*\r\n"
    b"Authorization: Bearer abc\r\n\r\n",
    b"GET /version HTTP/1.0\r\nHost: x\r\n\r\n",
    b"DELETE /api/v1/namespaces/default/pods/p HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-Spaces:   padded  \r\n"
    b"accept: one\r\nACCEPT: two\r\n\r\n",
    b"GET /apis HTTP/1.1\r\n\r\n",
]


class OnePieceTests(SynchronousTestCase):
    def site(self, **limits: Any) -> tuple[Any, _Recorder]:
        recorder = _Recorder()
        return make_site(recorder, leaf=True, limits=ChannelLimits(**limits)), recorder

    def feed(self, chunks: list[bytes], **limits: Any) -> tuple[list[tuple[Any, ...]], bytes, StringTransport]:
        site, recorder = self.site(**limits)
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        for chunk in chunks:
            protocol.dataReceived(chunk)
        self.addCleanup(protocol.connectionLost, None)
        return recorder.seen, transport.value(), transport

    def test_one_piece_makes_the_same_request_as_line_by_line(self) -> None:
        for head in HEADS:
            whole, answer, _ = self.feed([head])
            # Split after the first line: twisted.web's own path.
            cut = head.index(b"\r\n") + 2
            split, split_answer, _ = self.feed([head[:cut], head[cut:]])
            self.assertEqual(len(whole), 1, head)
            self.assertEqual(whole, split, head)
            self.assertEqual(answer, split_answer, head)
            self.assertRegex(answer, rb"^HTTP/1\.[01] 200 OK\r\n")

    def test_the_one_piece_path_is_taken(self) -> None:
        calls: list[bytes] = []
        original = LimitedHTTPChannel._one_piece

        def spy(channel: LimitedHTTPChannel, data: bytes) -> bool:
            taken = original(channel, data)
            if taken:
                calls.append(data)
            return taken

        self.patch(LimitedHTTPChannel, "_one_piece", spy)
        self.feed([HEADS[0]])
        self.assertEqual(calls, [HEADS[0]])
        # A body, a second request behind the first, a folded header: twisted.web's path.
        calls.clear()
        self.feed([b"POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"])
        self.feed([HEADS[1] + HEADS[3]])
        self.feed([b"GET / HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n"])
        self.assertEqual(calls, [])

    def test_keep_alive_requests_in_turn(self) -> None:
        seen, answer, transport = self.feed([HEADS[0], HEADS[3]])
        self.assertEqual([s[1] for s in seen], [b"/api/v1/pods?fieldSelector=spec.nodeName%3Dn1&limit=500", b"/apis"])
        self.assertEqual(answer.count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(transport.disconnecting)

    def test_connection_close_is_honoured(self) -> None:
        seen, answer, transport = self.feed([b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"])
        self.assertEqual(len(seen), 1)
        self.assertIn(b"Connection: close", answer)
        self.assertTrue(transport.disconnecting)

    def test_bad_heads_get_twisted_webs_answer(self) -> None:
        for head in (
            b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",  # four parts
            b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",  # control character in the target
            b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",  # not a token
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        ):
            seen, answer, transport = self.feed([head])
            self.assertEqual(seen, [], head)
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), (head, answer))
            self.assertTrue(transport.disconnecting, head)

    def test_limits_hold_for_one_piece_heads(self) -> None:
        long_line = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        seen, answer, _ = self.feed([long_line], max_request_line_bytes=100)
        self.assertEqual(seen, [])
        self.assertTrue(answer.startswith(b"HTTP/1.1 414 "), answer)
        many = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(20)) + b"\r\n"
        seen, answer, _ = self.feed([many], max_headers=10)
        self.assertEqual(seen, [])
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer)
        big = b"GET / HTTP/1.1\r\nX: " + b"v" * 500 + b"\r\n\r\n"
        seen, answer, _ = self.feed([big], max_header_bytes=300)
        self.assertEqual(seen, [])
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer)


class _Slow(Resource):
    """Answers only when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Any] = []

    def render(self, request: Any) -> Any:
        self.waiting.append(request)
        return NOT_DONE_YET


class IdleTimeoutTests(SynchronousTestCase):
    """The idle timeout between requests, kept with one lazy timer."""

    def connect(self, resource: Resource) -> tuple[Any, StringTransport, Clock]:
        clock = Clock()
        site = make_site(resource, leaf=True, limits=ChannelLimits(), timeout=60)
        site.reactor = clock
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, None)
        return protocol, transport, clock

    def test_an_idle_connection_is_closed_after_the_timeout(self) -> None:
        protocol, transport, clock = self.connect(_Recorder())
        clock.advance(59)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_each_request_starts_the_idle_time_again(self) -> None:
        protocol, transport, clock = self.connect(_Recorder())
        for _ in range(5):
            clock.advance(50)
            protocol.dataReceived(HEADS[3])
        self.assertFalse(transport.disconnecting)
        self.assertLessEqual(len(clock.getDelayedCalls()), 1, "one timer, not one per request")
        clock.advance(59)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_no_timeout_while_a_request_is_handled(self) -> None:
        slow = _Slow()
        protocol, transport, clock = self.connect(slow)
        protocol.dataReceived(HEADS[3])
        clock.advance(600)  # a long watch
        self.assertFalse(transport.disconnecting)
        request = slow.waiting[0]
        request.write(b"done")
        request.finish()
        clock.advance(59)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_closing_leaves_no_timer(self) -> None:
        protocol, transport, clock = self.connect(_Recorder())
        protocol.dataReceived(HEADS[3])
        protocol.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])


class FormBodyTests(SynchronousTestCase):
    """A body is relayed as it came: twisted.web's form parser never sees it."""

    def test_a_content_type_twisted_web_cannot_parse_is_still_answered(self) -> None:
        for ctype in (b"application/x-www-form-urlencoded\x85", b"multipart/form-data; boundary=\x0b"):
            site = make_site(_Recorder(), leaf=True, limits=ChannelLimits())
            protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
            transport = StringTransport()
            protocol.makeConnection(transport)
            self.addCleanup(protocol.connectionLost, None)
            protocol.dataReceived(
                b"POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype
                + b"\r\nContent-Length: 7\r\n\r\na=b&c=d"
            )  # fmt: skip
            seen = site.resource.seen  # type: ignore[attr-defined]
            self.assertEqual(len(seen), 1, ctype)
            self.assertEqual(seen[0][4], b"a=b&c=d")
            self.assertRegex(transport.value(), rb"^HTTP/1\.1 200 OK\r\n")
