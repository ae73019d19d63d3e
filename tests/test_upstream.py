"""Tests for yurthub/upstream: backends, selectors, the health checker, TLS credentials."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface.verify import verifyObject

from tests.support import listen_site, sleep
from yurthub.config import HealthCheckConfig
from yurthub.interfaces import IAttempts, IBackend, ICredentialSource, IFailoverFactory
from yurthub.metrics import ProxyMetrics
from yurthub.testing.failover import ScriptedFailover
from yurthub.upstream.backends import Backend
from yurthub.upstream.endpoints import BackendEndpointFactory
from yurthub.upstream.failover import FailoverFactory
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


class FailoverFactoryTests(SynchronousTestCase):
    """rr spreads new requests over the healthy backends; priority keeps the configured
    order; each attempt reads health anew and never repeats a backend."""

    def setUp(self) -> None:
        self.backends = [Backend(f"https://10.0.0.{i}:6443") for i in (1, 2, 3)]

    def firsts(self, failover: FailoverFactory, n: int) -> list[Backend | None]:
        return [failover.attempts(None).next() for _ in range(n)]

    def test_interfaces(self) -> None:
        failover = FailoverFactory("rr", self.backends)
        verifyObject(IFailoverFactory, failover)
        verifyObject(IAttempts, failover.attempts(None))
        fake = ScriptedFailover(self.backends)
        verifyObject(IFailoverFactory, fake)
        verifyObject(IAttempts, fake.attempts(None))

    def test_priority_uses_the_first_healthy_backend(self) -> None:
        failover = FailoverFactory("priority", self.backends)
        self.assertEqual(self.firsts(failover, 3), [self.backends[0]] * 3)
        self.backends[0].set_healthy(False)
        self.assertEqual(self.firsts(failover, 2), [self.backends[1]] * 2)
        self.backends[0].set_healthy(True)
        self.assertEqual(self.firsts(failover, 1), [self.backends[0]])

    def test_round_robin_spreads_over_the_healthy_backends_evenly(self) -> None:
        failover = FailoverFactory("rr", self.backends)
        self.assertEqual(self.firsts(failover, 6), self.backends * 2)
        self.backends[1].set_healthy(False)
        firsts = self.firsts(failover, 10)
        self.assertEqual(firsts.count(self.backends[0]), 5)
        self.assertEqual(firsts.count(self.backends[2]), 5)

    def test_attempts_follow_health_as_it_changes_and_never_repeat(self) -> None:
        failover = FailoverFactory("priority", self.backends)
        attempts = failover.attempts(None)
        self.assertIs(attempts.next(), self.backends[0])
        # The first attempt failed and marked its backend; meanwhile the third failed too.
        self.backends[0].set_healthy(False)
        self.backends[2].set_healthy(False)
        self.assertIs(attempts.next(), self.backends[1])
        self.backends[0].set_healthy(True)  # recovered, but this request tried it already
        self.assertIsNone(attempts.next())
        self.assertEqual(attempts.tried, self.backends[:2])

    def test_nothing_healthy_means_no_backend(self) -> None:
        failover = FailoverFactory("rr", self.backends)
        for b in self.backends:
            b.set_healthy(False)
        self.assertIsNone(failover.attempts(None).next())
        self.assertFalse(failover.any_healthy())

    def test_outranked_only_in_priority_mode(self) -> None:
        priority = FailoverFactory("priority", self.backends)
        rr = FailoverFactory("rr", self.backends)
        self.assertFalse(priority.outranked(self.backends[0]))
        self.assertTrue(priority.outranked(self.backends[2]))
        self.assertFalse(rr.outranked(self.backends[2]))
        self.backends[0].set_healthy(False)
        self.backends[1].set_healthy(False)
        self.assertFalse(priority.outranked(self.backends[2]))

    def test_bad_mode_is_refused(self) -> None:
        self.assertRaises(ValueError, FailoverFactory, "random", self.backends)


class FakeCredentials:
    """No TLS material; the health checker tests use plain HTTP."""

    def client_creator(self, hostname: str, with_client_certificate: bool) -> Any:
        raise AssertionError("no TLS here")


class HealthCheckerClockTests(SynchronousTestCase):
    """Thresholds and the loop's survival, on a Clock."""

    def make(
        self, results: list[Any], random: Any = lambda: 0.0, **settings: Any
    ) -> tuple[HealthChecker, Backend, Clock]:
        clock = Clock()
        backend = Backend("http://127.0.0.1:1")
        checker = HealthChecker(
            clock,
            [backend],
            BackendEndpointFactory(clock, FakeCredentials(), with_client_certificate=True),  # type: ignore[arg-type]
            HealthCheckConfig(interval_seconds=10, **settings),
            ProxyMetrics(),
            random=random,
        )
        backend._on_change = checker.backend_changed
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
        self.assertTrue(checker._loops[backend].running)

    def test_rounds_are_jittered_below_the_interval_counted_from_the_end_of_a_round(self) -> None:
        draws = itertools.cycle([1.0, 0.5, 0.0])
        checker, backend, clock = self.make([(True, "HTTP 200")] * 5, random=lambda: next(draws))
        probed: list[float] = []
        ask = checker._ask

        def timed(backend: Backend, path: bytes) -> Any:
            probed.append(clock.seconds())
            return ask(backend, path)

        checker._ask = timed  # type: ignore[method-assign]
        checker.start()
        for _ in range(60):  # 30 s
            clock.advance(0.5)
        # Waits of 10 x (1 - 0.1 x draw): 9, 9.5 and 10 seconds.
        self.assertEqual(probed, [0.0, 9.0, 18.5, 28.5])

    def test_a_passive_failure_needs_fresh_successes_to_recover(self) -> None:
        checker, backend, clock = self.make([(True, "HTTP 200")] * 5, healthy_threshold=2)
        checker.start()
        clock.advance(10)
        clock.advance(10)
        self.assertTrue(backend.healthy)
        backend.set_healthy(False, "connection failed: refused")  # a real request failed
        clock.advance(10)
        self.assertFalse(backend.healthy)  # one success since the failure is not enough
        clock.advance(10)
        self.assertTrue(backend.healthy)

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
