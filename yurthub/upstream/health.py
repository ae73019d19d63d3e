"""Active health checks of the cloud backends.

`HealthChecker` runs one `LoopingCall` per backend. Each round GETs ``/readyz`` (``/healthz``
when the server answers 404) with the node's credentials and a timeout; ``unhealthyThreshold``
consecutive failures mark the backend unhealthy and ``healthyThreshold`` consecutive
successes mark it healthy again. A probe that raises is logged and the loop goes on: the
Deferred each round returns never fails, because a failed `LoopingCall` stops for good.

The first round runs at start; each later one ``intervalSeconds`` after the previous one
ended, less up to 10 % at random, so the nodes of a cluster that restarted together do
not probe the cloud in lockstep. A backend that accepts connections but never answers is
therefore marked unhealthy within ``intervalSeconds`` + ``timeoutSeconds``. A
backend marked unhealthy by a failed real request (passive health) needs
``healthyThreshold`` successful probes from then on to be healthy again.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from yurthub.config import HealthCheckConfig
from yurthub.metrics import ProxyMetrics
from yurthub.proxy.remote import make_pool
from yurthub.upstream.backends import Backend
from yurthub.upstream.endpoints import BackendEndpointFactory

_log = Logger()

#: Each round's interval is ``intervalSeconds`` times a random factor in [1 - JITTER, 1]
#: (never longer, so detection stays within ``intervalSeconds + timeoutSeconds``).
JITTER = 0.1


class HealthChecker:
    """Probes every backend on a schedule and flips its health flag."""

    def __init__(
        self,
        reactor: IReactorTime,
        backends: Sequence[Backend],
        endpoints: BackendEndpointFactory,
        settings: HealthCheckConfig,
        metrics: ProxyMetrics,
        *,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._reactor = reactor
        self._random = random
        self.backends = list(backends)
        self._settings = settings
        self._metrics = metrics
        self.pool = make_pool(reactor, 1, 2 * settings.interval_seconds)
        self._agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self.pool)
        self._loops: dict[Backend, LoopingCall] = {}
        self._pending: set[defer.Deferred[int]] = set()
        self._streak: dict[Backend, int] = dict.fromkeys(self.backends, 0)
        self.last_error: dict[Backend, str] = {}
        for backend in self.backends:
            metrics.backend_healthy.labels(backend.url).set(1 if backend.healthy else 0)

    def start(self) -> None:
        """Probe each backend now and then every ``intervalSeconds``."""
        for backend in self.backends:
            loop = LoopingCall(self.probe, backend)
            loop.clock = self._reactor
            self._loops[backend] = loop
            loop.start(self._settings.interval_seconds, now=True)

    def replace(self, backends: Sequence[Backend]) -> None:
        """Probe these backends instead (a cluster migration): the old ones' loops stop,
        their probes under way are dropped and their ``yurthub_backend_healthy`` series
        removed; the new ones are probed at once if the checker is running."""
        running = bool(self._loops)
        self._stop_loops()
        for backend in self.backends:
            try:
                self._metrics.backend_healthy.remove(backend.url)
            except KeyError:
                pass
        self.backends = list(backends)
        self._streak = dict.fromkeys(self.backends, 0)
        self.last_error = {}
        for backend in self.backends:
            self._metrics.backend_healthy.labels(backend.url).set(1 if backend.healthy else 0)
        self.pool.closeCachedConnections()
        if running:
            self.start()

    def stop(self) -> defer.Deferred[object]:
        """Stop probing and close the probe connections."""
        self._stop_loops()
        return self.pool.closeCachedConnections()

    def _stop_loops(self) -> None:
        """End every backend's loop and drop the probes under way."""
        for loop in self._loops.values():
            if loop.running:
                loop.stop()
        self._loops = {}
        for d in list(self._pending):
            d.cancel()

    @defer.inlineCallbacks
    def probe(self, backend: Backend):  # type: ignore[no-untyped-def]
        """One round for one backend; never fails (the loop must survive)."""
        try:
            ok, detail = yield self._ask(backend, b"/readyz")
            if not ok and detail == "HTTP 404":
                ok, detail = yield self._ask(backend, b"/healthz")
        except Exception as e:  # a bug in a probe must not stop the loop
            _log.failure("health probe of {url} raised", url=backend.url)
            ok, detail = False, f"probe error: {e}"
        if backend not in self._streak:
            return  # replaced while probed (a cluster migration)
        self._record(backend, ok, detail)
        loop = self._loops.get(backend)
        if loop is not None:
            # LoopingCall schedules the next round when this one's Deferred fires, at the
            # next multiple of ``interval`` since ``starttime``: restarting the count now
            # makes the wait exactly the jittered interval, counted from the end of this round.
            loop.interval = self._settings.interval_seconds * (1 - JITTER * self._random())
            loop.starttime = self._reactor.seconds()

    def backend_changed(self, backend: Backend) -> None:
        """A backend's health changed, maybe not by a probe (a real request failed): the
        successes before that do not count towards its recovery."""
        if not backend.healthy and self._streak.get(backend, 0) > 0:
            self._streak[backend] = 0

    @defer.inlineCallbacks
    def _ask(self, backend: Backend, path: bytes):  # type: ignore[no-untyped-def]
        timeout = self._settings.timeout_seconds
        d = self._agent.request(b"GET", backend.url_bytes + path, Headers({b"user-agent": [b"yurthub/health"]}))
        d.addCallback(lambda response: readBody(response).addCallback(lambda _: response.code))
        timer = self._reactor.callLater(timeout, d.cancel)
        self._pending.add(d)
        try:
            code = yield d
        except Exception as e:
            if not timer.active():
                return False, f"no answer within {timeout:g}s"
            return False, _describe(e)
        finally:
            self._pending.discard(d)
            if timer.active():
                timer.cancel()
        return (200 <= code < 300), f"HTTP {code}"

    def _record(self, backend: Backend, ok: bool, detail: str) -> None:
        streak = self._streak.get(backend, 0)
        if ok:
            self.last_error.pop(backend, None)
            streak = streak + 1 if streak > 0 else 1
            if not backend.healthy and streak >= self._settings.healthy_threshold:
                backend.set_healthy(True, "health probe succeeded")
        else:
            self.last_error[backend] = detail
            streak = streak - 1 if streak < 0 else -1
            if backend.healthy and -streak >= self._settings.unhealthy_threshold:
                backend.set_healthy(False, f"health probe failed: {detail}")
        self._streak[backend] = streak
        self._metrics.backend_healthy.labels(backend.url).set(1 if backend.healthy else 0)


def _describe(error: Exception) -> str:
    """A one-line reason for a failed probe (unwrapping the Agent's failure lists)."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return str(error) or error.__class__.__name__
