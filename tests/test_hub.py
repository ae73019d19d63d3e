"""Tests for the hub listener's resources (yurthub/hub.py)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from yurthub.hub import BackendsReachable, Flag, make_hub_root
from yurthub.interfaces import IReadinessCheck
from yurthub.metrics import ProxyMetrics
from yurthub.upstream.backends import Backend


def get(root: object, path: bytes, args: dict[bytes, list[bytes]] | None = None) -> tuple[int, bytes, DummyRequest]:
    request = DummyRequest(path.partition(b"?")[0].lstrip(b"/").split(b"/"))
    request.uri = path
    request.args = args or {}
    resource = getChildForRequest(root, request)  # type: ignore[arg-type]
    body = resource.render(request)
    return request.responseCode or 200, body, request


class HubTests(SynchronousTestCase):
    """healthz, readyz with reasons, metrics."""

    def setUp(self) -> None:
        self.backends = [Backend("https://10.0.0.1:6443"), Backend("https://10.0.0.2:6443")]
        self.flag = Flag("listeners", "proxy listener not bound yet")
        self.metrics = ProxyMetrics()
        self.root = make_hub_root(self.metrics, [self.flag, BackendsReachable(self.backends)])

    def test_checks_provide_the_interface(self) -> None:
        verifyObject(IReadinessCheck, self.flag)
        verifyObject(IReadinessCheck, BackendsReachable(self.backends))

    def test_healthz(self) -> None:
        self.assertEqual(get(self.root, b"/v1/healthz")[:2], (200, b"OK"))

    def test_readyz_says_which_check_fails(self) -> None:
        code, body, _ = get(self.root, b"/v1/readyz")
        self.assertEqual(code, 503)
        self.assertIn(b"[-]listeners failed: proxy listener not bound yet", body)
        self.flag.ok = True
        self.assertEqual(get(self.root, b"/v1/readyz")[0], 200)
        for b in self.backends:
            b.set_healthy(False)
        code, body, _ = get(self.root, b"/v1/readyz")
        self.assertEqual(code, 503)
        self.assertIn(b"no healthy backend: https://10.0.0.1:6443 unhealthy", body)

    def test_readyz_verbose_lists_passing_checks(self) -> None:
        self.flag.ok = True
        code, body, _ = get(self.root, b"/v1/readyz?verbose")
        self.assertEqual(code, 200)
        self.assertIn(b"[+]listeners ok", body)
        self.assertIn(b"[+]cloud ok: https://10.0.0.1:6443 healthy", body)

    def test_metrics_in_prometheus_text_format(self) -> None:
        self.metrics.requests.labels("kubelet", "list", "pods", "200").inc()
        self.metrics.upstream_latency.labels("list").observe(0.01)
        self.metrics.bytes_proxied.labels("down").inc(100)
        code, body, request = get(self.root, b"/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"text/plain", request.responseHeaders.getRawHeaders(b"content-type")[0])
        text = body.decode()
        for name in (
            'yurthub_proxy_requests_total{code="200",component="kubelet",resource="pods",verb="list"} 1.0',
            "yurthub_proxy_in_flight_requests",
            'yurthub_upstream_response_seconds_bucket{le="0.01",verb="list"} 1.0',
            'yurthub_proxied_bytes_total{direction="down"} 100.0',
        ):
            self.assertIn(name, text)
