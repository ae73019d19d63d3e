"""Node-wide flow control: at most ``maxRequestsInFlight`` requests in flight at once.

Every request on both proxy listeners asks `InFlightLimiter.admit` for a slot before it is
routed. Over the limit it is answered at once with 429, ``Retry-After: 1`` and a
``TooManyRequests`` Status (client-go waits and retries such answers by itself).

Exempt, as in kube-apiserver's max-in-flight filter: long-running requests (watches, exec,
attach, port-forward, proxy, followed logs) unless ``exemptLongRunning`` is false, when they
hold a slot for their whole life as in OpenYurt up to v1.6. Never limited: the node's
heartbeat, kubelet's Lease requests and its node status updates, so a storm of other
requests cannot get the node marked NotReady.

A slot is a `Slot`, released exactly once whichever way the request ends (the router calls
``release`` from the request's ``notifyFinish`` callbacks and, for spliced upgrades, when
the splice ends); releasing again is a no-op.
"""

from __future__ import annotations

from twisted.web.server import Request

from yurthub.metrics import InFlightCollector, ProxyMetrics
from yurthub.proxy.status import write_status
from yurthub.requestinfo import RequestInfo


class Slot:
    """One request's place under the limit."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: InFlightLimiter | None) -> None:
        self._limiter = limiter

    def release(self, _: object = None) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._released()


#: Requests that take no slot.
EXEMPT = Slot(None)


def is_heartbeat(info: RequestInfo) -> bool:
    """kubelet renewing its Lease or reporting its node's status."""
    if info.component != "kubelet" or not info.is_resource_request:
        return False
    if info.resource == "leases" and info.api_group == "coordination.k8s.io":
        return True
    return info.resource == "nodes" and info.subresource == "status"


class InFlightLimiter:
    """Counts requests in flight against ``limit`` (0: no limit)."""

    def __init__(self, limit: int, metrics: ProxyMetrics, *, exempt_long_running: bool = True) -> None:
        self.limit = limit
        self.exempt_long_running = exempt_long_running
        self.in_flight = 0
        self._metrics = metrics
        metrics.registry.register(InFlightCollector(lambda: self.in_flight))

    def admit(self, info: RequestInfo) -> Slot | None:
        """A slot for this request, or None when it must be turned away."""
        if not self.limit or is_heartbeat(info) or (self.exempt_long_running and info.is_long_running):
            return EXEMPT
        if self.in_flight >= self.limit:
            self._metrics.flow_rejected(info.component)
            return None
        self.in_flight += 1
        return Slot(self)

    def _released(self) -> None:
        self.in_flight -= 1

    def reject(self, request: Request) -> bytes:
        """The 429 answer (headers set; the body is returned for ``render`` to write)."""
        request.setHeader(b"retry-after", b"1")
        return write_status(
            request,
            429,
            f"Too many requests: this node's yurthub has {self.limit} requests in flight, please try again later.",
        )
