"""Flow control: the in-flight limit (429), its exemptions, slots released on every path,
and the connection-level limits of the proxy listeners."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tests.support import fetch, listen_site, raw_connect, sleep, start_hub
from yurthub.metrics import ProxyMetrics
from yurthub.proxy.flowcontrol import EXEMPT, InFlightLimiter, is_heartbeat
from yurthub.proxy.local import _fields
from yurthub.requestinfo import parse_request_info

KUBELET = b"kubelet/v1.31.0"


def info(method: str, path: str, agent: bytes = KUBELET) -> Any:
    return parse_request_info(method, path, agent)


class LimiterTests(SynchronousTestCase):
    """The limiter's arithmetic and exemptions."""

    def setUp(self) -> None:
        self.metrics = ProxyMetrics()

    def test_admits_up_to_the_limit_and_each_release_frees_one_slot_once(self) -> None:
        limiter = InFlightLimiter(2, self.metrics)
        get = info("GET", "/api/v1/pods")
        first, second = limiter.admit(get), limiter.admit(get)
        self.assertIsNotNone(first)
        self.assertIsNotNone(second)
        self.assertIsNone(limiter.admit(get))
        assert first is not None
        first.release()
        first.release()  # a second end of the same request changes nothing
        self.assertEqual(limiter.in_flight, 1)
        self.assertIsNotNone(limiter.admit(get))
        self.assertIsNone(limiter.admit(get))

    def test_long_running_requests_are_exempt_unless_configured_otherwise(self) -> None:
        watch = info("GET", "/api/v1/pods?watch=true")
        follow = info("GET", "/api/v1/namespaces/a/pods/p/log?follow=true")
        exec_ = info("POST", "/api/v1/namespaces/a/pods/p/exec?command=sh")
        plain_log = info("GET", "/api/v1/namespaces/a/pods/p/log")
        exempting = InFlightLimiter(1, self.metrics)
        for request in (watch, follow, exec_):
            self.assertIs(exempting.admit(request), EXEMPT)
        self.assertIsNot(exempting.admit(plain_log), EXEMPT)
        counting = InFlightLimiter(1, ProxyMetrics(), exempt_long_running=False)
        self.assertIsNot(counting.admit(watch), EXEMPT)
        self.assertIsNone(counting.admit(follow))

    def test_the_heartbeat_is_never_limited(self) -> None:
        limiter = InFlightLimiter(1, self.metrics)
        limiter.admit(info("GET", "/api/v1/pods"))
        lease = info("PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1")
        status = info("PATCH", "/api/v1/nodes/edge-1/status")
        for heartbeat in (lease, status, info("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1")):
            self.assertTrue(is_heartbeat(heartbeat))
            self.assertIs(limiter.admit(heartbeat), EXEMPT)
        # Only kubelet's: another client writing a node's status waits its turn.
        self.assertFalse(is_heartbeat(info("PATCH", "/api/v1/nodes/edge-1/status", b"kubectl/v1.31.0")))
        self.assertFalse(is_heartbeat(info("PATCH", "/api/v1/nodes/edge-1", KUBELET)))

    def test_zero_means_no_limit(self) -> None:
        limiter = InFlightLimiter(0, self.metrics)
        for _ in range(1000):
            self.assertIs(limiter.admit(info("GET", "/api/v1/pods")), EXEMPT)

    def test_rejections_are_counted_by_component(self) -> None:
        limiter = InFlightLimiter(1, self.metrics)
        limiter.admit(info("GET", "/api/v1/pods"))
        limiter.admit(info("GET", "/api/v1/pods", b"kube-proxy/v1.31.0"))
        limiter.admit(info("GET", "/api/v1/pods", b"kube-proxy/v1.31.0"))
        text = self.metrics.render().decode()
        self.assertIn('yurthub_flow_rejected_requests_total{component="kube-proxy"} 2.0', text)
        self.assertIn("yurthub_flow_in_flight_requests 1.0", text)


class Held(Resource):
    """An upstream that holds every request until told to answer (health probes aside)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []
        self.arrived: defer.Deferred[None] | None = None

    def render(self, request: Request) -> Any:
        if request.path in (b"/readyz", b"/healthz"):
            return b"ok"
        self.held.append(request)
        if self.arrived is not None:
            arrived, self.arrived = self.arrived, None
            arrived.callback(None)
        return NOT_DONE_YET

    def release_all(self) -> None:
        held, self.held = self.held, []
        for request in held:
            if not request._disconnected:  # type: ignore[attr-defined]
                request.setHeader(b"content-type", b"application/json")
                request.write(b'{"kind":"PodList","items":[]}')
                request.finish()


class InFlightTests(TestCase):
    """The limit at work through a real yurthub."""

    async def start(self, **flow: Any) -> None:
        self.upstream = Held()
        port = await listen_site(self, self.upstream)
        self.hub = await start_hub(self, [f"http://127.0.0.1:{port}"], flowControl=flow)
        self.base = f"http://127.0.0.1:{self.hub.port_of('listen.proxy')}"
        self.addCleanup(self.upstream.release_all)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)

    def send(self, path: str, method: bytes = b"GET", agent: bytes = KUBELET, accept: bytes = b"application/json") -> Any:
        return self.agent.request(method, (self.base + path).encode(), Headers({b"user-agent": [agent], b"accept": [accept]}))

    async def hold(self, n: int) -> list[Any]:
        """Send ``n`` GETs and wait until the upstream holds them all."""
        pending = [self.send("/api/v1/namespaces/default/pods") for _ in range(n)]
        for _ in range(500):
            if len(self.upstream.held) >= n:
                break
            await sleep(0.01)
        self.assertEqual(len(self.upstream.held), n)
        return pending

    async def test_the_request_over_the_limit_gets_429_at_once_with_a_status(self) -> None:
        await self.start(maxRequestsInFlight=3)
        pending = await self.hold(3)
        started = time.monotonic()
        response = await self.send("/api/v1/namespaces/default/configmaps", agent=b"kube-proxy/v1.31.0")
        body = await readBody(response)
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        status = json.loads(body)
        self.assertEqual((status["kind"], status["reason"], status["code"]), ("Status", "TooManyRequests", 429))
        self.assertEqual(len(self.upstream.held), 3)  # it never went up
        # Protobuf in the content type the client asked for.
        response = await self.send("/api/v1/pods", accept=b"application/vnd.kubernetes.protobuf")
        body = await readBody(response)
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/vnd.kubernetes.protobuf"])
        self.assertTrue(body.startswith(b"k8s\x00"))
        unknown = dict(_fields(body[4:]))
        raw = unknown[2]
        assert isinstance(raw, bytes)
        status_fields = dict(_fields(raw))
        self.assertEqual((status_fields[4], status_fields[6]), (b"TooManyRequests", 429))
        # A watch and the heartbeat still go up; the held ones finish; then there is room again.
        pending.append(self.send("/api/v1/namespaces/default/pods?watch=true"))
        pending.append(self.send("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1", b"PUT"))
        for _ in range(500):
            if len(self.upstream.held) == 5:
                break
            await sleep(0.01)
        self.assertEqual(len(self.upstream.held), 5)
        self.upstream.release_all()
        for d in pending:
            response = await d
            await readBody(response)
            self.assertEqual(response.code, 200)
        self.assertEqual(self.hub.limiter.in_flight, 0)
        self.upstream.arrived = defer.Deferred()
        again = self.send("/api/v1/namespaces/default/pods")
        await self.upstream.arrived
        self.upstream.release_all()
        self.assertEqual((await again).code, 200)
        metrics = (await fetch(self, b"GET", f"http://127.0.0.1:{self.hub.port_of('listen.hub')}/metrics"))[2].decode()
        self.assertIn('yurthub_flow_rejected_requests_total{component="kube-proxy"} 1.0', metrics)
        self.assertIn('yurthub_proxy_requests_total{code="429",component="kubelet",resource="pods",verb="list"} 1.0', metrics)

    async def test_watches_count_for_their_whole_life_when_not_exempt(self) -> None:
        await self.start(maxRequestsInFlight=1, exemptLongRunning=False)
        self.upstream.arrived = defer.Deferred()
        watch = self.send("/api/v1/namespaces/default/pods?watch=true")
        await self.upstream.arrived
        response = await self.send("/api/v1/namespaces/default/pods")
        self.assertEqual(response.code, 429)
        await readBody(response)
        watch.cancel()  # the client leaves: its slot is free again
        watch.addErrback(lambda failure: failure.trap(Exception))
        for _ in range(200):
            if self.hub.limiter.in_flight == 0:
                break
            await sleep(0.01)
        self.assertEqual(self.hub.limiter.in_flight, 0)


class Flaky(Resource):
    """An upstream that answers, fails, cuts or stalls at random (seeded)."""

    isLeaf = True

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng
        #: Its delayed answers and cuts, cancelled at the end of the test (one whose
        #: client is long gone may still be waiting then).
        self.later: list[Any] = []

    def render(self, request: Request) -> Any:
        if request.path in (b"/readyz", b"/healthz"):
            return b"ok"
        if request.path == b"/api/v1/namespaces/calm/pods":  # the one path always answered
            request.setHeader(b"content-type", b"application/json")
            return b'{"kind":"PodList","items":[]}'
        roll = self.rng.random()
        if roll < 0.15:  # the upstream dies under the request
            request.channel.transport.abortConnection()  # type: ignore[union-attr]
            return NOT_DONE_YET
        if roll < 0.3:
            request.setResponseCode(500)
            return b'{"kind":"Status","code":500}'
        if roll < 0.45:  # answers a moment later, body in two pieces
            request.setHeader(b"content-type", b"application/json")
            request.write(b'{"kind":"PodList",')
            if self.rng.random() < 0.3:  # ... or dies after the first piece
                self.later.append(reactor.callLater(0.005, request.channel.transport.abortConnection))  # type: ignore[attr-defined, union-attr]
            else:
                self.later.append(reactor.callLater(self.rng.random() * 0.02, _finish, request, b'"items":[]}'))  # type: ignore[attr-defined]
            self.later = [call for call in self.later if call.active()]
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json")
        return b'{"kind":"PodList","items":[]}'


def _finish(request: Request, data: bytes) -> None:
    if not request._disconnected and not request.finished:  # type: ignore[attr-defined]
        request.write(data)
        request.finish()


class SlotReleaseTests(TestCase):
    """Every way a request can end gives its slot back."""

    timeout = 180

    async def test_ten_thousand_requests_with_aborts_and_upstream_failures_leave_nothing_in_flight(self) -> None:
        rng = random.Random(2026)
        flaky = Flaky(rng)
        port = await listen_site(self, flaky)
        self.addCleanup(lambda: [call.cancel() for call in flaky.later if call.active()])
        hub = await start_hub(self, [f"http://127.0.0.1:{port}"], flowControl={"maxRequestsInFlight": 20})
        proxy = hub.port_of("listen.proxy")
        outcomes: dict[str, int] = {}
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy)
        deadline = time.monotonic() + 150

        async def one(i: int) -> None:
            client = _OneShot(rng.random() < 0.2)  # one in five clients hangs up early
            await endpoint.connect(Factory.forProtocol(lambda: client))
            path = "/api/v1/namespaces/default/pods?watch=true" if i % 50 == 0 else "/api/v1/namespaces/default/pods"
            client.send(f"GET {path} HTTP/1.1\r\nHost: hub\r\nUser-Agent: kubelet/v1.31.0\r\nConnection: close\r\n\r\n")
            await client.done.addTimeout(30, reactor)
            outcomes[client.outcome()] = outcomes.get(client.outcome(), 0) + 1

        async def worker(start: int) -> None:
            for i in range(start, 10_000, 40):
                if time.monotonic() > deadline:
                    return
                await one(i)

        await defer.gatherResults([defer.ensureDeferred(worker(w)) for w in range(40)])
        self.assertEqual(sum(outcomes.values()), 10_000, outcomes)
        # 502: the upstream died before answering; "cut": it died mid-body, so did the client's.
        for kind in ("200", "500", "502", "429", "aborted by client"):
            self.assertIn(kind, outcomes, outcomes)
        for _ in range(300):  # the last aborted exchanges unwind
            if hub.limiter.in_flight == 0:
                break
            await sleep(0.01)
        self.assertEqual(hub.limiter.in_flight, 0)
        metrics = (await fetch(self, b"GET", f"http://127.0.0.1:{hub.port_of('listen.hub')}/metrics"))[2].decode()
        self.assertIn("yurthub_flow_in_flight_requests 0.0", metrics)
        code, _, _ = await fetch(
            self, b"GET", f"http://127.0.0.1:{proxy}/api/v1/namespaces/calm/pods", {b"user-agent": [KUBELET]}
        )
        self.assertEqual(code, 200)  # served, not refused: no slot was left held


class _OneShot(Protocol):
    """Sends one request; hangs up at once when told to, else reads until the end."""

    def __init__(self, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.received = b""
        self.done: defer.Deferred[None] = defer.Deferred()

    def send(self, request: str) -> None:
        self.transport.write(request.encode())  # type: ignore[union-attr]
        if self.hang_up:
            reactor.callLater(0.001, self.transport.abortConnection)  # type: ignore[attr-defined, union-attr]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.done.callback(None)

    def outcome(self) -> str:
        if self.hang_up:
            return "aborted by client"
        head, _, body = self.received.partition(b"\r\n\r\n")
        if not head:
            return "cut"
        if b"chunked" in head.lower() and not body.endswith(b"0\r\n\r\n"):
            return "cut"
        return head[9:12].decode()


class Quick(Resource):
    """An upstream answering every request at once."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return b'{"kind":"PodList","items":[]}'


class ConnectionLimitTests(TestCase):
    """The connection cap, idle and head timeouts, and head-size limits of the proxy ports."""

    async def start(self, **flow: Any) -> None:
        port = await listen_site(self, Quick())
        self.hub = await start_hub(self, [f"http://127.0.0.1:{port}"], flowControl=flow)
        self.proxy = self.hub.port_of("listen.proxy")

    async def metrics(self) -> str:
        return (await fetch(self, b"GET", f"http://127.0.0.1:{self.hub.port_of('listen.hub')}/metrics"))[2].decode()

    async def test_connections_beyond_the_cap_are_closed_at_once_and_the_hub_port_is_not_capped(self) -> None:
        await self.start(maxConnections=3)
        held = [await raw_connect(self, self.proxy) for _ in range(3)]
        extra = await raw_connect(self, self.proxy)
        await extra.closed.addTimeout(2, reactor)
        self.assertEqual(extra.received, b"")
        text = await self.metrics()  # the hub listener takes connections regardless
        self.assertIn('yurthub_proxy_connections_refused_total{reason="limit"} 1.0', text)
        self.assertIn("yurthub_proxy_connections_open 3.0", text)
        held[0].transport.loseConnection()  # type: ignore[union-attr]
        await held[0].closed
        for _ in range(100):
            if self.hub.connections.open == 2:
                break
            await sleep(0.01)
        again = await raw_connect(self, self.proxy)
        again.transport.write(b"GET /api/v1/pods HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")  # type: ignore[union-attr]
        await again.closed.addTimeout(5, reactor)
        self.assertTrue(again.received.startswith(b"HTTP/1.1 200"), again.received[:80])

    async def test_a_connection_idle_between_requests_is_closed(self) -> None:
        await self.start(idleTimeoutSeconds=0.3)
        client = await raw_connect(self, self.proxy)
        client.transport.write(b"GET /api/v1/pods HTTP/1.1\r\nHost: hub\r\n\r\n")  # type: ignore[union-attr]
        await client.wait_for(lambda r: r.endswith(b'"items":[]}'))
        started = time.monotonic()
        await client.closed.addTimeout(3, reactor)
        self.assertGreater(time.monotonic() - started, 0.2)

    async def test_a_slowloris_client_is_cut_with_408(self) -> None:
        await self.start(requestHeadTimeoutSeconds=0.5, idleTimeoutSeconds=5)
        client = await raw_connect(self, self.proxy)
        started = time.monotonic()
        head = b"GET /api/v1/pods HTTP/1.1\r\nHost: hub\r\nUser-Agent: slow\r\n"
        for i in range(40):  # a byte every 0.1 s: never idle, never done
            if client.closed.called:
                break
            client.transport.write(head[i : i + 1])  # type: ignore[union-attr]
            await sleep(0.1)
        await client.closed.addTimeout(3, reactor)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 408"), client.received[:80])
        _, _, body = client.received.partition(b"\r\n\r\n")
        self.assertEqual(json.loads(body)["code"], 408)
        self.assertIn('yurthub_proxy_connections_refused_total{reason="slow"} 1.0', await self.metrics())

    async def test_oversized_or_malformed_heads_get_a_status(self) -> None:
        await self.start(maxRequestLineBytes=1024, maxHeaderBytes=4096, maxHeaders=10)
        cases = [
            (b"GET /api/v1/pods?labelSelector=" + b"a" * 2000 + b" HTTP/1.1\r\nHost: hub\r\n\r\n", 414),
            (b"GET /api/v1/pods?x=" + b"a" * 5000, 414),  # no line end yet: still too long
            (b"GET /api/v1/pods HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(11)) + b"\r\n", 431),
            (b"GET /api/v1/pods HTTP/1.1\r\nX-Big: " + b"b" * 3000 + b"\r\nX-Big2: " + b"b" * 3000 + b"\r\n\r\n", 431),
            (b"GET /api/v1/pods HTTP/1.1\r\nX-Huge: " + b"b" * 5000 + b"\r\n\r\n", 431),
            (b"NOT A REQUEST LINE\r\n\r\n", 400),
        ]
        for raw, code in cases:
            client = await raw_connect(self, self.proxy)
            client.transport.write(raw)  # type: ignore[union-attr]
            await client.closed.addTimeout(3, reactor)
            self.assertTrue(client.received.startswith(b"HTTP/1.1 %d" % code), (code, client.received[:80]))
            status = json.loads(client.received.partition(b"\r\n\r\n")[2])
            self.assertEqual((status["kind"], status["code"]), ("Status", code))
        text = await self.metrics()
        self.assertIn('yurthub_proxy_connections_refused_total{reason="too_big"} 5.0', text)
        # Within the limits all is well.
        code, _, _ = await fetch(self, b"GET", f"http://127.0.0.1:{self.proxy}/api/v1/pods", {b"x-fine": [b"a" * 500]})
        self.assertEqual(code, 200)

    async def test_the_proxy_port_listens_with_a_deep_backlog(self) -> None:
        # A node's components reconnecting at once must not wait on SYN retransmits.
        await self.start()
        self.assertEqual(self.hub.listeners["listen.proxy"].port.backlog, 1024)


class ExceptionPathTests(TestCase):
    async def test_an_exception_in_yurthub_answers_500_and_gives_the_slot_back(self) -> None:
        port = await listen_site(self, Quick())
        hub = await start_hub(self, [f"http://127.0.0.1:{port}"], flowControl={"maxRequestsInFlight": 1})

        def broken(*args: Any) -> None:
            raise RuntimeError("a bug")

        hub.remote.handle = broken
        base = f"http://127.0.0.1:{hub.port_of('listen.proxy')}/api/v1/pods"
        for _ in range(3):  # with a limit of 1, a leaked slot would turn the next into 429
            code, _, body = await fetch(self, b"GET", base, {b"user-agent": [KUBELET]})
            self.assertEqual((code, json.loads(body)["reason"]), (500, "InternalError"))
        self.assertEqual(hub.limiter.in_flight, 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)
