"""Tests for yurthub/upstream: backends, selectors, the health checker, TLS credentials."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface.verify import verifyObject

from tests.support import listen_site, sleep
from yurthub.config import HealthCheckConfig
from yurthub.interfaces import IBackend, ICredentialSource, IUpstreamSelector
from yurthub.metrics import ProxyMetrics
from yurthub.upstream.backends import Backend, PrioritySelector, RoundRobinSelector, make_selector
from yurthub.upstream.endpoints import BackendEndpointFactory
from yurthub.upstream.health import HealthChecker
from yurthub.upstream.tls import CredentialError, FileCredentials


class BackendTests(SynchronousTestCase):
    """A backend's URL parts and health flag."""

    def test_url_parts(self) -> None:
        backend = Backend("https://[::1]:6443")
        verifyObject(IBackend, backend)
        self.assertEqual((backend.scheme, backend.host, backend.port, backend.url), ("https", "::1", 6443, "https://[::1]:6443"))
        self.assertEqual(Backend("http://localhost").port, 80)

    def test_health_change_is_reported_once(self) -> None:
        changes: list[bool] = []
        backend = Backend("https://a:1", on_change=lambda b: changes.append(b.healthy))
        backend.set_healthy(False)
        backend.set_healthy(False)
        backend.set_healthy(True)
        self.assertEqual(changes, [False, True])


class SelectorTests(SynchronousTestCase):
    """rr spreads new requests; priority keeps the configured order; unhealthy are skipped."""

    def setUp(self) -> None:
        self.backends = [Backend(f"https://10.0.0.{i}:6443") for i in (1, 2, 3)]

    def test_interfaces(self) -> None:
        verifyObject(IUpstreamSelector, PrioritySelector(self.backends))
        verifyObject(IUpstreamSelector, RoundRobinSelector(self.backends))

    def test_priority_uses_the_first_healthy_backend(self) -> None:
        selector = make_selector("priority", self.backends)
        self.assertEqual(selector.backends_for(None)[0], self.backends[0])
        self.backends[0].set_healthy(False)
        self.assertEqual(selector.backends_for(None), self.backends[1:])
        self.backends[0].set_healthy(True)
        self.assertEqual(selector.backends_for(None)[0], self.backends[0])

    def test_round_robin_rotates_over_healthy_backends(self) -> None:
        selector = make_selector("rr", self.backends)
        firsts = [selector.backends_for(None)[0] for _ in range(6)]
        self.assertEqual(firsts, self.backends * 2)
        self.backends[1].set_healthy(False)
        firsts = {selector.backends_for(None)[0].url for _ in range(4)}
        self.assertEqual(firsts, {self.backends[0].url, self.backends[2].url})
        self.assertEqual(len(selector.backends_for(None)), 2)

    def test_nothing_healthy_means_no_backend(self) -> None:
        selector = make_selector("rr", self.backends)
        for b in self.backends:
            b.set_healthy(False)
        self.assertEqual(selector.backends_for(None), [])
        self.assertFalse(selector.any_healthy())


class FakeCredentials:
    """No TLS material; the health checker tests use plain HTTP."""

    def client_creator(self, hostname: str, with_client_certificate: bool) -> Any:
        raise AssertionError("no TLS here")


class HealthCheckerClockTests(SynchronousTestCase):
    """Thresholds and the loop's survival, on a Clock."""

    def make(self, results: list[Any], **settings: Any) -> tuple[HealthChecker, Backend, Clock]:
        clock = Clock()
        backend = Backend("http://127.0.0.1:1")
        checker = HealthChecker(
            clock,
            [backend],
            BackendEndpointFactory(clock, FakeCredentials(), with_client_certificate=True),  # type: ignore[arg-type]
            HealthCheckConfig(interval_seconds=10, **settings),
            ProxyMetrics(),
        )
        answers = iter(results)

        def ask(backend: Backend, path: bytes) -> defer.Deferred[tuple[bool, str]]:
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return defer.succeed(answer)

        checker._ask = ask  # type: ignore[method-assign]
        return checker, backend, clock

    def test_thresholds(self) -> None:
        checker, backend, clock = self.make(
            [(False, "HTTP 500"), (False, "HTTP 500"), (True, "HTTP 200"), (True, "HTTP 200")],
            unhealthy_threshold=2,
            healthy_threshold=2,
        )
        checker.start()
        self.assertTrue(backend.healthy)  # one failure is not enough
        clock.advance(10)
        self.assertFalse(backend.healthy)
        clock.advance(10)
        self.assertFalse(backend.healthy)  # one success is not enough
        clock.advance(10)
        self.assertTrue(backend.healthy)

    def test_a_probe_that_raises_does_not_stop_the_loop(self) -> None:
        checker, backend, clock = self.make([RuntimeError("bug"), (True, "HTTP 200"), (True, "HTTP 200")])
        checker.start()
        self.assertFalse(backend.healthy)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        clock.advance(10)
        clock.advance(10)
        self.assertTrue(backend.healthy)
        self.assertTrue(checker._loops[0].running)

    def test_falls_back_to_healthz_on_404(self) -> None:
        asked: list[bytes] = []
        checker, backend, clock = self.make([])

        def ask(backend: Backend, path: bytes) -> defer.Deferred[tuple[bool, str]]:
            asked.append(path)
            return defer.succeed((False, "HTTP 404") if path == b"/readyz" else (True, "HTTP 200"))

        checker._ask = ask  # type: ignore[method-assign]
        checker.start()
        self.assertEqual(asked, [b"/readyz", b"/healthz"])
        self.assertTrue(backend.healthy)


class Health(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.code = 200
        self.hang = False

    def render_GET(self, request: Request) -> Any:  # noqa: N802
        if self.hang:
            from twisted.web.server import NOT_DONE_YET

            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return b"ok"


class HealthCheckerIntegrationTests(TestCase):
    """Real probes over loopback: failing, hanging and recovering backends."""

    async def test_probe_marks_failing_and_hanging_backends_unhealthy_and_recovers(self) -> None:
        from twisted.internet import reactor

        health = Health()
        port = await listen_site(self, health)
        backend = Backend(f"http://127.0.0.1:{port}")
        checker = HealthChecker(
            reactor,
            [backend],
            BackendEndpointFactory(reactor, FileCredentials(), with_client_certificate=True),
            HealthCheckConfig(interval_seconds=0.1, timeout_seconds=0.3, healthy_threshold=1, unhealthy_threshold=1),
            ProxyMetrics(),
        )
        checker.start()
        self.addCleanup(checker.stop)

        async def becomes(healthy: bool) -> None:
            for _ in range(100):  # polled, so a busy machine only makes it slower
                if backend.healthy == healthy:
                    return
                await sleep(0.05)
            self.fail(f"backend did not become {'healthy' if healthy else 'unhealthy'}")

        await sleep(0.3)
        self.assertTrue(backend.healthy)
        health.code = 500
        await becomes(False)
        self.assertEqual(checker.last_error[backend], "HTTP 500")
        health.code = 200
        await becomes(True)
        health.hang = True  # accepts, never answers: caught by the timeout
        await becomes(False)
        self.assertIn("no answer", checker.last_error[backend])
        health.hang = False


class CredentialTests(SynchronousTestCase):
    """TLS material from files."""

    def test_missing_file_is_named(self) -> None:
        with self.assertRaises(CredentialError) as caught:
            FileCredentials.from_files("/nonexistent/ca.crt")
        self.assertIn("/nonexistent/ca.crt", str(caught.exception))

    def test_garbage_file_is_named(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"not a certificate")
        with self.assertRaises(CredentialError) as caught:
            FileCredentials.from_files(path)
        self.assertIn(path, str(caught.exception))

    def test_interface_and_creator_cache(self) -> None:
        credentials = FileCredentials()
        verifyObject(ICredentialSource, credentials)
        first = credentials.client_creator("localhost", True)
        self.assertIs(credentials.client_creator("localhost", True), first)
        credentials.replace(None, None, None)
        self.assertIsNot(credentials.client_creator("localhost", True), first)
