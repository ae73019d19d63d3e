"""Failover across two and three simulated clouds: ordering, retries, health, moving streams.

Every cloud is a `SimulatedAPIServer` on 127.0.0.1 port 0 seeded with the same demo cluster;
which cloud served a request is read from its own request log. yurthub probes every 0.2 s
with a 0.5 s timeout and one success or failure is enough to change a backend's state, so
each scenario plays out within a few seconds.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.abstract import isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IReactorPluggableNameResolver
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

from tests.support import fetch, raw_connect, sleep, start_hub, wait_until
from yurthub.proxy.remote import BackendAgent, make_pool, parse_go_duration, request_deadline
from yurthub.testing.apiserver import SimulatedAPIServer
from yurthub.testing.pki import TestPKI
from yurthub.upstream.backends import Backend
from yurthub.upstream.endpoints import BackendEndpointFactory
from yurthub.upstream.tls import FileCredentials

PODS = "/api/v1/namespaces/default/pods"
KUBELET = {b"user-agent": [b"kubelet/v1.31.0"], b"accept": [b"application/json"]}
HEALTH = {
    "intervalSeconds": 0.2,
    "timeoutSeconds": 0.5,
    "healthyThreshold": 1,
    "unhealthyThreshold": 1,
    "returnGraceSeconds": 0.5,
}


def served(cloud: SimulatedAPIServer, path: str = PODS) -> int:
    """How many requests for ``path`` (any query) the cloud received."""
    return sum(1 for r in cloud.requests if r.path.split("?", 1)[0] == path)



class Clouds(TestCase):
    """Starts clouds and a yurthub in front of them."""

    async def clouds(self, n: int) -> list[SimulatedAPIServer]:
        clouds = []
        for _ in range(n):
            cloud = SimulatedAPIServer(reactor, seed=True)
            await cloud.start("tcp:0:interface=127.0.0.1")
            self.addCleanup(cloud.stop)
            clouds.append(cloud)
        return clouds

    async def hub(self, clouds: list[SimulatedAPIServer], mode: str, **health: Any) -> Any:
        hub = await start_hub(
            self, [c.url for c in clouds], loadBalancing=mode, healthCheck={**HEALTH, **health}
        )
        self.base = f"http://127.0.0.1:{hub.port_of('listen.proxy')}"
        pool = HTTPConnectionPool(reactor, persistent=True)  # one keep-alive client connection
        pool.maxPersistentPerHost = 1
        pool.retryAutomatically = False
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)
        return hub

    async def get(self, path: str = PODS) -> tuple[int, bytes]:
        response = await self.agent.request(b"GET", (self.base + path).encode(), Headers(KUBELET))
        return response.code, await readBody(response)

    async def loop(self, seconds: float, results: list[Any]) -> None:
        """GETs back to back on a connection of its own for ``seconds`` (at most 5,000)."""
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.retryAutomatically = False
        agent = Agent(reactor, pool=pool)
        end = time.monotonic() + seconds
        try:
            for _ in range(5000):
                if time.monotonic() > end:
                    break
                try:
                    response = await agent.request(b"GET", (self.base + PODS).encode(), Headers(KUBELET))
                    body = await readBody(response)
                    results.append(response.code if response.code != 200 or b'"PodList"' in body else "bad body")
                except Exception as e:
                    results.append(repr(e))
        finally:
            await pool.closeCachedConnections()

    async def watch(self, path: str = PODS) -> Any:
        """A raw watch through yurthub (``Connection: close``), once its head arrived."""
        client = await raw_connect(self, int(self.base.rsplit(":", 1)[1]))
        client.transport.write(  # type: ignore[union-attr]
            f"GET {path}?watch=true HTTP/1.1\r\nHost: hub\r\nUser-Agent: kubelet/v1.31.0\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n".encode()
        )
        await client.wait_for(lambda r: b"\r\n\r\n" in r)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200"), client.received[:200])
        return client


class OrderingTests(Clouds):
    """priority sends everything to the first healthy backend; rr spreads requests."""

    async def test_priority_sends_everything_to_the_first_backend(self) -> None:
        clouds = await self.clouds(3)
        await self.hub(clouds, "priority")
        for _ in range(12):
            self.assertEqual((await self.get())[0], 200)
        self.assertEqual([served(c) for c in clouds], [12, 0, 0])

    async def test_round_robin_spreads_requests_not_connections(self) -> None:
        clouds = await self.clouds(3)
        hub = await self.hub(clouds, "rr")
        for _ in range(12):  # all over one client connection
            self.assertEqual((await self.get())[0], 200)
        self.assertEqual([served(c) for c in clouds], [4, 4, 4])
        metrics = (await fetch(self, b"GET", f"http://127.0.0.1:{hub.port_of('listen.hub')}/metrics"))[2].decode()
        for cloud in clouds:
            self.assertIn(f'yurthub_backend_requests_total{{server="{cloud.url}"}} 4.0', metrics)

    async def test_round_robin_skips_an_unhealthy_backend_evenly(self) -> None:
        clouds = await self.clouds(3)
        hub = await self.hub(clouds, "rr")
        clouds[1].set_healthy(False)
        await wait_until(lambda: not hub.backends[1].healthy, what="cloud 1 unhealthy")
        for _ in range(10):
            self.assertEqual((await self.get())[0], 200)
        self.assertEqual([served(c) for c in clouds], [5, 0, 5])


class FailoverUnderLoadTests(Clouds):
    """A backend that dies or stops answering costs the clients no failed request."""

    async def test_primary_stopped_during_a_tight_loop_of_gets(self) -> None:
        clouds = await self.clouds(2)
        hub = await self.hub(clouds, "priority")
        results: list[Any] = []
        loops = [defer.ensureDeferred(self.loop(2.0, results)) for _ in range(4)]
        await sleep(0.5)
        before = served(clouds[0])
        await clouds[0].stop_listening()  # dies: in-flight requests and connections dropped
        await defer.gatherResults(loops)
        self.assertGreater(before, 10)
        self.assertGreater(served(clouds[1]), 10)
        self.assertEqual([r for r in results if r != 200], [])
        self.assertFalse(hub.backends[0].healthy)

    async def test_blackholed_primary_is_detected_and_its_requests_retried(self) -> None:
        clouds = await self.clouds(2)
        hub = await self.hub(clouds, "priority")
        self.assertEqual((await self.get())[0], 200)
        clouds[0].blackhole()  # accepts connections, answers nothing, probes included
        started = time.monotonic()
        results = await defer.gatherResults([defer.ensureDeferred(self.get()) for _ in range(8)])
        took = time.monotonic() - started
        self.assertEqual([code for code, _ in results], [200] * 8)
        self.assertFalse(hub.backends[0].healthy)
        self.assertIn("no answer within 0.5s", hub.backends[0].reason)
        # Noticed within intervalSeconds + timeoutSeconds (0.7 s), plus the retry itself.
        self.assertLess(took, 0.7 + 1.0)
        self.assertEqual(served(clouds[1]), 8)

    async def test_a_post_that_may_have_arrived_is_not_sent_again(self) -> None:
        clouds = await self.clouds(2)
        hub = await self.hub(clouds, "priority")
        self.assertEqual((await self.get())[0], 200)
        clouds[0].blackhole()
        body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "once"}}).encode()
        headers = {**KUBELET, b"content-type": [b"application/json"]}
        code, _, data = await fetch(self, b"POST", self.base + "/api/v1/namespaces/default/configmaps", headers, body)
        status = json.loads(data)
        self.assertEqual((code, status["kind"]), (503, "Status"))
        self.assertIn("became unhealthy", status["message"])
        self.assertFalse(hub.backends[0].healthy)
        self.assertEqual(served(clouds[1], "/api/v1/namespaces/default/configmaps"), 0)
        self.assertEqual(served(clouds[0], "/api/v1/namespaces/default/configmaps"), 1)


class StreamsFollowHealthTests(Clouds):
    """Open watches leave an unhealthy backend at once and a lower one after the grace."""

    async def test_watches_on_an_unhealthy_backend_are_closed_within_a_second(self) -> None:
        clouds = await self.clouds(2)
        hub = await self.hub(clouds, "priority")
        watches = [await self.watch() for _ in range(3)]
        await wait_until(lambda: clouds[0].open_streams == 3, what="3 watches on cloud 0")
        clouds[0].set_healthy(False)  # its /readyz fails; the watch connections stay up
        await wait_until(lambda: not hub.backends[0].healthy, what="cloud 0 unhealthy")
        marked = time.monotonic()
        await defer.gatherResults([w.closed for w in watches]).addTimeout(1.0, reactor)
        self.assertLess(time.monotonic() - marked, 1.0)
        for w in watches:  # ended as kube-apiserver ends a watch: a whole chunked body
            self.assertTrue(w.received.endswith(b"0\r\n\r\n"), w.received[-100:])
        again = await self.watch()
        await wait_until(lambda: clouds[1].open_streams == 1, what="re-watch on cloud 1")
        self.assertEqual(clouds[0].open_streams, 0)
        metrics = (await fetch(self, b"GET", f"http://127.0.0.1:{hub.port_of('listen.hub')}/metrics"))[2].decode()
        self.assertIn('yurthub_streams_moved_total{reason="unhealthy"} 3.0', metrics)
        self.assertFalse(again.closed.called)

    async def test_recovered_primary_gets_new_requests_at_once_and_watches_after_the_grace(self) -> None:
        clouds = await self.clouds(2)
        hub = await self.hub(clouds, "priority")
        clouds[0].set_healthy(False)
        await wait_until(lambda: not hub.backends[0].healthy, what="cloud 0 unhealthy")
        watch = await self.watch()
        await wait_until(lambda: clouds[1].open_streams == 1, what="watch on cloud 1")
        flipped: list[float] = []
        on_change = hub.backends[0]._on_change

        def noted(backend: Backend) -> None:  # the moment the grace starts counting
            flipped.append(time.monotonic())
            on_change(backend)

        hub.backends[0]._on_change = noted
        clouds[0].set_healthy(True)
        await wait_until(lambda: hub.backends[0].healthy, what="cloud 0 healthy again")
        back = flipped[-1]
        before = served(clouds[0])
        self.assertEqual((await self.get())[0], 200)
        self.assertEqual(served(clouds[0]), before + 1)  # new requests: at once
        await sleep(0.4)
        self.assertFalse(watch.closed.called)  # not before the grace (0.5 s)
        await watch.closed.addTimeout(2.0, reactor)
        moved_after = time.monotonic() - back
        self.assertGreaterEqual(moved_after, 0.5)
        self.assertLess(moved_after, 0.75 + 0.5)  # at most 1.5 x grace, plus slack
        await self.watch()
        await wait_until(lambda: clouds[0].open_streams == 1, what="watch back on cloud 0")

    async def test_round_robin_never_moves_watches_of_a_healthy_backend(self) -> None:
        clouds = await self.clouds(2)
        hub = await self.hub(clouds, "rr")
        clouds[0].set_healthy(False)
        await wait_until(lambda: not hub.backends[0].healthy, what="cloud 0 unhealthy")
        watch = await self.watch()
        clouds[0].set_healthy(True)
        await wait_until(lambda: hub.backends[0].healthy, what="cloud 0 healthy again")
        await sleep(1.0)  # twice the grace
        self.assertFalse(watch.closed.called)
        self.assertEqual(clouds[1].open_streams, 1)


class AllDownTests(Clouds):
    """Every backend down: offline answers; one back: online again, offline watches closed."""

    async def test_all_backends_down_then_one_back(self) -> None:
        clouds = await self.clouds(2)
        hub = await self.hub(clouds, "rr")
        code, online = await self.get()
        self.assertEqual(code, 200)
        await wait_until(lambda: list(hub.store.list("kubelet", _pods_gvr(), "default")) != [], what="cached")
        for cloud in clouds:
            await cloud.stop_listening()
        await wait_until(lambda: not hub.failover.any_healthy(), what="all unhealthy")
        code, offline = await self.get()
        self.assertEqual(code, 200)
        self.assertEqual(_names(offline), _names(online))
        watch = await self.watch()  # held open offline
        await clouds[1].start_listening()
        await wait_until(lambda: hub.backends[1].healthy, what="cloud 1 back")
        await watch.closed.addTimeout(2.0, reactor)
        before = served(clouds[1])
        self.assertEqual((await self.get())[0], 200)
        self.assertEqual(served(clouds[1]), before + 1)

    async def test_readyz_and_metrics_show_each_backend(self) -> None:
        clouds = await self.clouds(2)
        hub = await self.hub(clouds, "priority")
        clouds[1].set_healthy(False)
        await wait_until(lambda: not hub.backends[1].healthy, what="cloud 1 unhealthy")
        hub_url = f"http://127.0.0.1:{hub.port_of('listen.hub')}"
        _, _, detail = await fetch(self, b"GET", hub_url + "/v1/readyz?verbose")
        text = detail.decode()
        self.assertIn(f"{clouds[0].url} healthy", text)
        self.assertIn(f"{clouds[1].url} unhealthy (health probe failed: HTTP 500)", text)
        _, _, metrics = await fetch(self, b"GET", hub_url + "/metrics")
        self.assertIn(f'yurthub_backend_healthy{{server="{clouds[1].url}"}} 0.0', metrics.decode())
        self.assertIn(f'yurthub_backend_healthy{{server="{clouds[0].url}"}} 1.0', metrics.decode())


def _pods_gvr() -> Any:
    from yurthub.cache.keys import GVR

    return GVR("", "v1", "pods")


def _names(body: bytes) -> list[str]:
    return sorted(item["metadata"]["name"] for item in json.loads(body)["items"])


@implementer(IHostnameResolver)
class _Names:
    """A resolver with a table the test rewrites (name -> IPv4 address)."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.asked: list[str] = []

    def resolveHostName(  # noqa: N802 - Twisted's name
        self, receiver: Any, hostName: str, portNumber: int = 0, addressTypes: Any = None, transportSemantics: str = "TCP"  # noqa: N803
    ) -> Any:
        from twisted.internet._resolver import HostResolution

        self.asked.append(hostName)
        resolution = HostResolution(hostName)
        receiver.resolutionBegan(resolution)
        if hostName in self.table:
            receiver.addressResolved(IPv4Address("TCP", self.table[hostName], portNumber))
        elif isIPv6Address(hostName):  # a literal resolves to itself, as getaddrinfo does
            receiver.addressResolved(IPv6Address("TCP", hostName, portNumber))
        receiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class _ReactorWithNames:
    """The global reactor, resolving names from a `_Names` table."""

    def __init__(self, names: _Names) -> None:
        self.nameResolver = names

    def installNameResolver(self, resolver: Any) -> Any:  # noqa: N802
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


class HostNameTests(Clouds):
    """Servers given by host name: resolved at every new connection."""

    async def test_an_ip_backend_connects_while_the_reactor_thread_pool_is_busy(self) -> None:
        # getaddrinfo runs in the reactor's thread pool: an IP address must not wait for it.
        import threading

        cloud = (await self.clouds(1))[0]
        hub = await start_hub(self, [cloud.url])
        release = threading.Event()
        self.addCleanup(release.set)
        pool = reactor.getThreadPool()  # type: ignore[attr-defined]
        for _ in range(pool.max):
            pool.callInThread(release.wait, 10)
        await hub.remote.close()  # no pooled connection: the request needs a new one
        client = await raw_connect(self, hub.port_of("listen.proxy"))  # no resolving here either
        client.transport.write(  # type: ignore[union-attr]
            f"GET {PODS} HTTP/1.1\r\nHost: hub\r\nUser-Agent: kubelet/v1.31.0\r\nConnection: close\r\n\r\n".encode()
        )
        await client.closed.addTimeout(5, reactor)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200"), client.received[:100])

    async def test_localhost_as_a_host_name(self) -> None:
        cloud = (await self.clouds(1))[0]
        hub = await start_hub(self, [f"http://localhost:{cloud.port}"])
        code, _, body = await fetch(self, b"GET", f"http://127.0.0.1:{hub.port_of('listen.proxy')}{PODS}", KUBELET)
        self.assertEqual(code, 200)
        self.assertEqual(served(cloud), 1)
        self.assertEqual(cloud.requests[-1].header("host"), f"localhost:{cloud.port}")

    async def test_tls_is_verified_against_the_host_name(self) -> None:
        pki = TestPKI()
        cloud = SimulatedAPIServer(reactor, tls=pki, seed=True)  # certificate for 127.0.0.1, localhost, ::1
        await cloud.start("tcp:0:interface=127.0.0.1")
        self.addCleanup(cloud.stop)
        credentials = FileCredentials(pki.ca_cert_pem)
        hub = await start_hub(self, [f"https://localhost:{cloud.port}"], credentials=credentials)
        code, _, _ = await fetch(self, b"GET", f"http://127.0.0.1:{hub.port_of('listen.proxy')}{PODS}", KUBELET)
        self.assertEqual(code, 200)
        # The same server under a name its certificate does not carry is refused.
        pool = make_pool(reactor, 1, 10)
        self.addCleanup(pool.closeCachedConnections)
        endpoints = BackendEndpointFactory(
            _ReactorWithNames(_Names({"cloud.test": "127.0.0.1"})), credentials, with_client_certificate=True  # type: ignore[arg-type]
        )
        agent = BackendAgent(reactor, endpoints, pool)
        failure = None
        try:
            await agent.request_to(Backend(f"https://cloud.test:{cloud.port}"), b"GET", PODS.encode(), Headers(KUBELET), None)
        except Exception as e:
            failure = e
        self.assertIsNotNone(failure)
        self.assertIn("cloud.test", repr(getattr(failure, "reasons", failure)))

    async def test_a_changed_dns_record_is_used_by_the_next_connection(self) -> None:
        first = SimulatedAPIServer(reactor, seed=True)
        await first.start("tcp:0:interface=127.0.0.2")
        self.addCleanup(first.stop)
        second = SimulatedAPIServer(reactor, seed=True)
        await second.start(f"tcp:{first.port}:interface=127.0.0.3")
        self.addCleanup(second.stop)
        names = _Names({"cloud.test": "127.0.0.2"})
        wrapped = _ReactorWithNames(names)
        endpoints = BackendEndpointFactory(wrapped, FileCredentials(), with_client_certificate=True)  # type: ignore[arg-type]
        pool = make_pool(reactor, 1, 10)
        self.addCleanup(pool.closeCachedConnections)
        agent = BackendAgent(reactor, endpoints, pool)
        backend = Backend(f"http://cloud.test:{first.port}")

        async def ask() -> int:
            response = await agent.request_to(backend, b"GET", PODS.encode(), Headers(KUBELET), None)
            await readBody(response)
            return response.code

        self.assertEqual(await ask(), 200)
        names.table["cloud.test"] = "127.0.0.3"  # the record changes
        await pool.closeCachedConnections()  # the next request needs a new connection
        self.assertEqual(await ask(), 200)
        self.assertEqual((served(first), served(second)), (1, 1))
        self.assertEqual(names.asked, ["cloud.test", "cloud.test"])

    def test_an_ipv6_literal_connects_to_that_address(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        memory = MemoryReactorClock()
        names = _Names({})
        memory.nameResolver = names  # type: ignore[attr-defined]
        backend = Backend("https://[::1]:6443")
        self.assertEqual((backend.host, backend.host_header), ("::1", b"[::1]:6443"))
        endpoints = BackendEndpointFactory(memory, FileCredentials(), with_client_certificate=True)
        d = endpoints.endpoint_for(backend.scheme, backend.host, backend.port).connect(Factory.forProtocol(Protocol))
        memory.advance(0.1)
        self.assertEqual([(host, port) for host, port, *_ in memory.tcpClients], [("::1", 6443)])
        d.cancel()
        self.failureResultOf(d)



class DeadlineTests(Clouds):
    """A read with a deadline is answered before it, from the cache or with 504."""

    async def test_a_stalled_cloud_is_answered_for_from_the_cache_before_the_deadline(self) -> None:
        clouds = await self.clouds(1)
        # Slow probes: the stall must be handled by the deadline, not by health checking.
        hub = await self.hub(clouds, "priority", intervalSeconds=30, timeoutSeconds=20)
        code, online = await self.get()
        self.assertEqual(code, 200)
        await wait_until(lambda: list(hub.store.list("kubelet", _pods_gvr(), "default")) != [], what="cached")
        clouds[0].blackhole()
        started = time.monotonic()
        code, cached = await self.get(PODS + "?timeout=3s")
        took = time.monotonic() - started
        self.assertEqual(code, 200)
        self.assertEqual(_names(cached), _names(online))
        self.assertGreater(took, 2.0)  # the cloud had until shortly before the deadline ...
        self.assertLess(took, 3.0)  # ... and the client its answer before it
        # Nothing cached to stand in: 504, also before the deadline; the slot is back.
        started = time.monotonic()
        code, body = await self.get("/api/v1/namespaces/default/secrets?timeout=1s")
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual((code, json.loads(body)["reason"]), (504, "Timeout"))
        self.assertEqual(hub.limiter.in_flight, 0)
        self.assertTrue(hub.backends[0].healthy)  # slow is not down


class DurationTests(TestCase):
    def test_go_durations(self) -> None:
        for text, seconds in (("32s", 32), ("1m30s", 90), ("500ms", 0.5), ("1.5h", 5400), ("0", 0), ("2us", 2e-6)):
            self.assertAlmostEqual(parse_go_duration(text), seconds)
        for bad in ("", "s", "32", "1x", "-1s", "1s junk", "1s2"):
            self.assertIsNone(parse_go_duration(bad), bad)

    def test_deadlines_of_requests(self) -> None:
        from yurthub.requestinfo import parse_request_info

        def deadline(path: str) -> float | None:
            return request_deadline(parse_request_info("GET", path, "kubectl/v1.31.0"))

        self.assertEqual(deadline("/api/v1/pods?timeout=32s"), 32)
        self.assertEqual(deadline("/api/v1/pods?timeoutSeconds=7"), 7)
        self.assertEqual(deadline("/api?timeout=10s"), 10)
        self.assertIsNone(deadline("/api/v1/pods?watch=true&timeoutSeconds=7&timeout=5s"))
        self.assertIsNone(deadline("/api/v1/namespaces/a/pods/p?timeoutSeconds=7"))
        self.assertIsNone(deadline("/api/v1/pods?timeout=soon"))
