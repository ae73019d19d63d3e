"""A hostile upstream in front of a real yurthub (cache on): garbage, truncated and endless
bodies, 5xx storms, resets mid-watch, TLS failures and a 50 MB object.

The upstream is a raw protocol, so each misbehaviour is byte-exact: it answers the health
probes properly and runs a scripted answer for everything else. For each case the client
must get a ``Status`` error or an aborted connection (never a complete-looking wrong
answer), the cache must hold exactly what it held before (no partial data), and for the
endless body and the huge object the process's memory must stay bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers

from tests.support import fetch, make_agent, sleep, start_hub
from yurthub.cache import manager as cache_manager
from yurthub.cache.keys import GVR

PODS = GVR("", "v1", "pods")
KUBELET = {b"user-agent": [b"kubelet/v1.31.0"], b"accept": [b"application/json"]}
GOOD_LIST = json.dumps(
    {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "5"},
     "items": [{"metadata": {"name": n, "namespace": "default", "resourceVersion": "5"}} for n in ("a", "b")]}
).encode()


def _rss() -> int:
    """The resident set size of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RawUpstream(Protocol):
    """One upstream connection: answers probes, hands other requests to the script."""

    def __init__(self, script: Callable[[RawUpstream, bytes], None]) -> None:
        self.script = script
        self.buffer = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            target = head.split(b" ", 2)[1]
            if target in (b"/readyz", b"/healthz"):
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # type: ignore[union-attr]
            else:
                self.script(self, target)

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.lost.callback(None)


def _head(code: int = 200, *, length: int | None = None, extra: bytes = b"") -> bytes:
    framing = b"Content-Length: %d\r\n" % length if length is not None else b"Transfer-Encoding: chunked\r\n"
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n" % code + framing + extra + b"\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Endless:
    """A push producer writing the same chunk for ever, as fast as the peer reads."""

    def __init__(self, conn: RawUpstream, chunk: bytes) -> None:
        self.conn = conn
        self.chunk = chunk
        self.paused = False
        self.stopped = False
        reactor.callLater(0, self._more)  # type: ignore[attr-defined]

    def _more(self) -> None:
        if self.paused or self.stopped:
            return
        for _ in range(8):
            self.conn.send(self.chunk)
        reactor.callLater(0, self._more)  # type: ignore[attr-defined]

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        if self.paused:
            self.paused = False
            reactor.callLater(0, self._more)  # type: ignore[attr-defined]

    def stopProducing(self) -> None:  # noqa: N802
        self.stopped = True


class HostileUpstreamTests(TestCase):
    """Each test scripts the upstream, primes the cache with a good list, misbehaves, and
    checks the client's outcome and that the cache is as it was."""

    timeout = 120

    async def start(self, *, scheme: str = "http") -> None:
        self.mode: dict[str, Any] = {"now": "good"}
        self.connections: list[RawUpstream] = []

        def script(conn: RawUpstream, target: bytes) -> None:
            handler = self.mode["now"]
            if handler == "good":
                conn.send(_head(length=len(GOOD_LIST)) + GOOD_LIST)
            else:
                handler(conn, target)

        def build() -> RawUpstream:
            conn = RawUpstream(script)
            self.connections.append(conn)
            return conn

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        self.addCleanup(self._drop_upstream_connections)
        self.hub = await start_hub(self, [f"{scheme}://127.0.0.1:{port.getHost().port}"])
        self.proxy = f"http://127.0.0.1:{self.hub.port_of('listen.proxy')}"

    def _drop_upstream_connections(self) -> defer.Deferred[Any]:
        waits = []
        for conn in self.connections:
            if conn.transport is not None and conn.transport.connected:  # type: ignore[attr-defined]
                conn.transport.abortConnection()  # type: ignore[attr-defined]
                waits.append(conn.lost)
        return defer.gatherResults(waits)

    async def settled(self) -> list[tuple[str, bytes]]:
        """What the cache holds for kubelet's pods once every decode and write is done."""
        for _ in range(3):
            await self.hub.cache.drain()
            await self.hub.store.flush()
            await sleep(0.02)
        return [(k.name, d) for k, d in self.hub.store.list("kubelet", PODS, None)]

    async def primed(self) -> list[tuple[str, bytes]]:
        code, _, _ = await fetch(self, b"GET", self.proxy + "/api/v1/pods", KUBELET)
        self.assertEqual(code, 200)
        for _ in range(100):
            cached = await self.settled()
            if cached:
                break
        self.assertEqual([n for n, _ in cached], ["a", "b"])
        return cached

    async def assert_aborted(self, path: str = "/api/v1/pods") -> None:
        with self.assertRaises(ResponseFailed):
            await fetch(self, b"GET", self.proxy + path, KUBELET)

    def assert_status(self, code: int, body: bytes, expected: tuple[int, ...]) -> None:
        self.assertIn(code, expected, body[:300])
        status = json.loads(body)
        self.assertEqual((status["kind"], status["code"]), ("Status", code))

    # --- garbage, truncation, resets ----------------------------------------------------

    async def test_garbage_json_is_passed_as_it_came_and_not_cached(self) -> None:
        await self.start()
        before = await self.primed()
        garbage = b'{"kind":"PodList","metadata":{"resourceVersion":"9"},"items":[{"metadata":{"name":"zzz"'
        self.mode["now"] = lambda conn, target: conn.send(_head(length=len(garbage)) + garbage)
        code, _, body = await fetch(self, b"GET", self.proxy + "/api/v1/pods", KUBELET)
        self.assertEqual((code, body), (200, garbage))  # the cloud's bytes, not a made-up list
        self.assertEqual(await self.settled(), before)
        self.assertIn(b'yurthub_cache_errors_total{kind="decode"} 1.0', self.hub.metrics.render())

    async def test_a_truncated_chunked_list_aborts_the_client_and_changes_nothing(self) -> None:
        await self.start()
        before = await self.primed()

        def truncated(conn: RawUpstream, target: bytes) -> None:
            conn.send(_head() + _chunk(b'{"kind":"PodList","metadata":{"resourceVersion":"9"},"items":[{"metadata":'))
            reactor.callLater(0.05, conn.transport.loseConnection)  # type: ignore[attr-defined, union-attr]

        self.mode["now"] = truncated
        await self.assert_aborted()
        self.assertEqual(await self.settled(), before)

    async def test_a_short_content_length_body_aborts_the_client(self) -> None:
        await self.start()
        before = await self.primed()
        whole = b'{"kind":"PodList","metadata":{"resourceVersion":"9"},"items":[]}'

        def short(conn: RawUpstream, target: bytes) -> None:
            conn.send(_head(length=len(whole)) + whole[:20])
            reactor.callLater(0.05, conn.transport.abortConnection)  # type: ignore[attr-defined, union-attr]

        self.mode["now"] = short
        await self.assert_aborted()
        self.assertEqual(await self.settled(), before)

    async def test_an_empty_list_cut_before_its_last_chunk_is_not_taken_as_empty(self) -> None:
        # The whole JSON arrived but the stream never ended properly: a list that could
        # replace the cache with nothing, were it trusted.
        await self.start()
        before = await self.primed()
        empty = b'{"kind":"PodList","metadata":{"resourceVersion":"9"},"items":[]}'

        def cut(conn: RawUpstream, target: bytes) -> None:
            conn.send(_head() + _chunk(empty))
            reactor.callLater(0.05, conn.transport.abortConnection)  # type: ignore[attr-defined, union-attr]

        self.mode["now"] = cut
        await self.assert_aborted()
        self.assertEqual(await self.settled(), before)

    async def test_not_http_at_all_gets_a_502_status(self) -> None:
        await self.start()
        before = await self.primed()
        self.mode["now"] = lambda conn, target: (conn.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n\x00\xff"), conn.transport.loseConnection())
        code, _, body = await fetch(self, b"GET", self.proxy + "/api/v1/pods", KUBELET)
        self.assert_status(code, body, (502, 503))
        self.assertEqual(await self.settled(), before)

    async def test_a_5xx_storm_is_passed_on_and_never_cached(self) -> None:
        await self.start()
        before = await self.primed()
        status = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500,
                             "reason": "InternalError", "message": "etcd is on fire"}).encode()
        codes = iter([500, 502, 503, 504] * 50)
        self.mode["now"] = lambda conn, target: conn.send(_head(next(codes), length=len(status)) + status)
        results = await defer.gatherResults(
            [defer.ensureDeferred(fetch(self, b"GET", self.proxy + "/api/v1/pods", KUBELET)) for _ in range(100)]
        )
        for code, _, body in results:
            self.assertIn(code, (500, 502, 503, 504))
            self.assertEqual(json.loads(body)["kind"], "Status")
        self.assertEqual(await self.settled(), before)
        self.assertTrue(self.hub.backends[0].healthy)  # answers, however bad, are not outages

    async def test_a_reset_mid_watch_event_aborts_and_keeps_only_whole_events(self) -> None:
        await self.start()
        await self.primed()

        def event(name: str, rv: str) -> bytes:
            return json.dumps({"type": "ADDED", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {
                "name": name, "namespace": "default", "resourceVersion": rv}}}).encode() + b"\n"

        def watch(conn: RawUpstream, target: bytes) -> None:
            half = event("half", "8")
            conn.send(_head() + _chunk(event("c", "6")) + _chunk(event("d", "7")) + _chunk(half[: len(half) // 2]))
            reactor.callLater(0.1, conn.transport.abortConnection)  # type: ignore[attr-defined, union-attr]

        self.mode["now"] = watch
        await self.assert_aborted("/api/v1/pods?watch=true")
        self.assertEqual([n for n, _ in await self.settled()], ["a", "b", "c", "d"])

    async def test_a_tls_failure_answers_a_status_and_changes_nothing(self) -> None:
        # An https backend that speaks plain text: every handshake fails.
        await self.start(scheme="https")
        self.mode["now"] = lambda conn, target: conn.transport.loseConnection()
        code, _, body = await fetch(self, b"GET", self.proxy + "/api/v1/namespaces/default/pods/a", KUBELET)
        self.assert_status(code, body, (404, 503))  # the offline answer: never cached
        self.assertEqual(await self.settled(), [])
        self.assertFalse(self.hub.backends[0].healthy)

    # --- bounded memory -----------------------------------------------------------------

    async def test_a_body_that_never_ends_is_relayed_not_buffered(self) -> None:
        self.patch(cache_manager, "MAX_CACHED_BODY", 4 * 1024 * 1024)
        await self.start()
        before = await self.primed()
        block = b" " * (256 * 1024)

        def endless(conn: RawUpstream, target: bytes) -> None:
            conn.send(_head() + _chunk(b'{"kind":"PodList","metadata":{"resourceVersion":"9"},"items":['))
            # The upstream honours back-pressure, so what memory grows by is yurthub's.
            conn.transport.registerProducer(Endless(conn, _chunk(block)), True)  # type: ignore[union-attr]

        self.mode["now"] = endless
        wanted = 64 * 1024 * 1024
        got: defer.Deferred[int] = defer.Deferred()

        class Reader(Protocol):
            count = 0

            def dataReceived(self, data: bytes) -> None:  # noqa: N802
                self.count += len(data)
                if self.count >= wanted and not got.called:
                    got.callback(self.count)
                    self.transport.stopProducing()  # type: ignore[union-attr]

            def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
                if not got.called:
                    got.errback(reason)

        rss_before = _rss()
        response = await make_agent(self).request(b"GET", (self.proxy + "/api/v1/pods").encode(), Headers(KUBELET))
        response.deliverBody(Reader())
        self.assertGreaterEqual(await got, wanted)
        grown = _rss() - rss_before
        self.assertLess(grown, 32 * 1024 * 1024, f"RSS grew by {grown} relaying a {wanted}-byte endless body")
        upstream = self.connections[-1]
        await upstream.lost.addTimeout(5, reactor)  # the client left: the upstream is dropped
        self.assertEqual(await self.settled(), before)
        self.assertIn(b'yurthub_cache_errors_total{kind="too_large"} 1.0', self.hub.metrics.render())

    async def test_a_50_mb_object_arrives_whole_and_memory_stays_bounded(self) -> None:
        await self.start()
        await self.primed()
        filler = "x" * (50 * 1024 * 1024)
        big = json.dumps({"kind": "Pod", "apiVersion": "v1", "metadata": {
            "name": "huge", "namespace": "default", "resourceVersion": "9",
            "annotations": {"blob": filler}}}).encode()
        del filler
        digest = hashlib.sha256(big).hexdigest()
        self.mode["now"] = lambda conn, target: conn.send(_head(length=len(big)) + big)
        rss_before = _rss()
        hasher = hashlib.sha256()
        done: defer.Deferred[None] = defer.Deferred()

        class Reader(Protocol):
            def dataReceived(self, data: bytes) -> None:  # noqa: N802
                hasher.update(data)

            def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
                if reason is not None and reason.check(ResponseDone):
                    done.callback(None)
                else:
                    done.errback(reason)

        response = await make_agent(self).request(
            b"GET", (self.proxy + "/api/v1/namespaces/default/pods/huge").encode(), Headers(KUBELET)
        )
        self.assertEqual(response.code, 200)
        response.deliverBody(Reader())
        await done
        self.assertEqual(hasher.hexdigest(), digest)
        cached = dict(await self.settled())
        self.assertEqual(cached.get("huge"), big)  # whole, never a part
        grown = _rss() - rss_before
        # The tee holds one copy and decoding makes a second: a few times the object at
        # most, never a copy per chunk.
        self.assertLess(grown, 6 * len(big), f"RSS grew by {grown} for a {len(big)}-byte object")
