"""The proxy listeners' root resource: request info, accounting and routing.

Every request on the proxy ports comes through `ProxyRoot.render`: its Kubernetes request
info is resolved once, it is counted (in flight, then by component/verb/resource/code), and
it is routed: ``Upgrade`` requests to the splicer, everything else to the remote proxy while
a cloud backend is healthy. When none is, ``unavailable`` answers; today that is a 503
``Status``, and the offline (cache) answers plug in at exactly that point.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from yurthub.metrics import ProxyMetrics
from yurthub.proxy.headers import is_upgrade
from yurthub.proxy.remote import RemoteProxy
from yurthub.proxy.status import finish_with_status, write_status
from yurthub.proxy.upgrade import UpgradeSplicer
from yurthub.requestinfo import RequestInfo, parse_request_info

_log = Logger()


class OfflineAnswerer(TypingProtocol):
    """What answers a request no cloud backend can take (the offline path)."""

    def __call__(self, request: Request, info: RequestInfo, reason: str) -> None: ...


def answer_unavailable(request: Request, info: RequestInfo, reason: str) -> None:
    """The answer when the cloud cannot be reached and nothing local can stand in: 503."""
    finish_with_status(request, 503, f"the cloud API server is unavailable: {reason}")


class _Accounting:
    """Counts one request in flight until it ends, then by its final code."""

    def __init__(self, metrics: ProxyMetrics, info: RequestInfo) -> None:
        self._metrics = metrics
        self._info = info
        self._open = True
        metrics.in_flight.labels(info.component).inc()

    def done(self, code: int | str) -> None:
        if not self._open:
            return
        self._open = False
        info = self._info
        self._metrics.in_flight.labels(info.component).dec()
        self._metrics.requests.labels(info.component, info.verb, info.resource, str(code)).inc()


class ProxyRoot(Resource):
    """The resource behind the proxy listeners (HTTP 10261 and HTTPS 10268)."""

    isLeaf = True

    def __init__(
        self,
        remote: RemoteProxy,
        upgrades: UpgradeSplicer,
        metrics: ProxyMetrics,
        unavailable: OfflineAnswerer = answer_unavailable,
    ) -> None:
        super().__init__()
        self._remote = remote
        self._upgrades = upgrades
        self._metrics = metrics
        self.unavailable = unavailable

    def render(self, request: Request) -> bytes | int:
        try:
            info = parse_request_info(request.method, request.uri, request.getHeader(b"user-agent"))
        except Exception:  # the parser promises not to raise; stay up if it ever does
            _log.failure("request info failed for {uri!r}", uri=request.uri)
            return write_status(request, 400, "the request could not be understood")
        accounting = _Accounting(self._metrics, info)
        request.notifyFinish().addCallbacks(
            lambda _: accounting.done(request.code), lambda _: accounting.done("aborted")
        )
        try:
            if is_upgrade(request.requestHeaders):
                self._upgrades.handle(request, info, self.unavailable, accounting.done)
            else:
                self._remote.handle(request, info, self.unavailable)
        except Exception:
            _log.failure("error handling {method} {uri!r}", method=request.method, uri=request.uri)
            finish_with_status(request, 500, "internal error in yurthub; see its log")
        return NOT_DONE_YET


class ProxySite(Site):
    """A `Site` that does not log every request (metrics count them) and never shows a
    traceback to a client."""

    displayTracebacks = False
    noisy = False

    def log(self, request: http.Request) -> None:
        pass


def make_site(root: Resource, *, timeout: float | None = 60 * 60) -> ProxySite:
    """The `Site` for a proxy listener: HTTP/1.1, and HTTP/2 when TLS negotiates it."""
    return ProxySite(root, timeout=timeout)

