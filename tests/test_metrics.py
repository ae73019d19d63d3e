"""`yurthub.metrics.PlainMetric`: the proxy path's metrics in plain numbers, exposed as
prometheus_client would expose its own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from yurthub.metrics import PlainMetric, ProxyMetrics
from yurthub.requestinfo import parse_request_info

_BUCKETS = (0.001, 0.01, 0.1, 1, 10)
_labels = st.sampled_from(["kubelet", "kube-proxy", "coredns"])


def _exposition(registry: CollectorRegistry) -> list[str]:
    """The text exposition without ``_created`` samples (PlainMetric has none)."""
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created" not in line]


class PlainMetricTests(SynchronousTestCase):
    @given(st.lists(st.tuples(_labels, st.integers(min_value=0, max_value=10**6)), max_size=20))
    def test_a_counter_exposes_as_prometheus_client_does(self, updates: list[tuple[str, int]]) -> None:
        theirs, ours = CollectorRegistry(), CollectorRegistry()
        counter = Counter("t_bytes", "Bytes.", ["direction"], registry=theirs)
        plain = PlainMetric("counter", "t_bytes", "Bytes.", ["direction"], ours)
        for label, amount in updates:
            counter.labels(label).inc(amount)
            plain.labels(label).inc(amount)
        self.assertEqual(_exposition(ours), _exposition(theirs))

    @given(st.lists(st.tuples(_labels, st.booleans()), max_size=20))
    def test_a_gauge_exposes_as_prometheus_client_does(self, updates: list[tuple[str, bool]]) -> None:
        theirs, ours = CollectorRegistry(), CollectorRegistry()
        gauge = Gauge("t_in_flight", "In flight.", ["component"], registry=theirs)
        plain = PlainMetric("gauge", "t_in_flight", "In flight.", ["component"], ours)
        for label, up in updates:
            (gauge.labels(label).inc if up else gauge.labels(label).dec)()
            (plain.labels(label).inc if up else plain.labels(label).dec)()
        self.assertEqual(_exposition(ours), _exposition(theirs))

    @given(st.lists(st.tuples(_labels, st.floats(min_value=0, max_value=100)), max_size=20))
    def test_a_histogram_exposes_as_prometheus_client_does(self, updates: list[tuple[str, float]]) -> None:
        theirs, ours = CollectorRegistry(), CollectorRegistry()
        histogram = Histogram("t_seconds", "Seconds.", ["verb"], buckets=_BUCKETS, registry=theirs)
        plain = PlainMetric("histogram", "t_seconds", "Seconds.", ["verb"], ours, buckets=_BUCKETS)
        for label, seconds in updates:
            histogram.labels(label).observe(seconds)
            plain.labels(label).observe(seconds)
        self.assertEqual(_exposition(ours), _exposition(theirs))

    def test_a_bucket_bound_counts_in_its_bucket(self) -> None:
        registry = CollectorRegistry()
        plain = PlainMetric("histogram", "t_seconds", "Seconds.", ["verb"], registry, buckets=_BUCKETS)
        plain.labels("list").observe(0.01)
        text = generate_latest(registry).decode()
        self.assertIn('t_seconds_bucket{le="0.001",verb="list"} 0.0', text)
        self.assertIn('t_seconds_bucket{le="0.01",verb="list"} 1.0', text)

    def test_wrong_number_of_label_values_is_refused(self) -> None:
        plain = PlainMetric("counter", "t_bytes", "Bytes.", ["direction"], CollectorRegistry())
        self.assertRaises(ValueError, plain.labels, "up", "down")


class ProxyMetricsTests(SynchronousTestCase):
    def test_a_request_is_in_flight_then_counted(self) -> None:
        metrics = ProxyMetrics()
        series = metrics.series(parse_request_info(b"GET", b"/api/v1/pods", b"kubelet/v1.31.0"))
        series.started()
        self.assertEqual(metrics.in_flight.labels("kubelet").value, 1)
        series.finished(200)
        # Another info of the same labels counts into the same children.
        same = metrics.series(parse_request_info(b"GET", b"/api/v1/pods?limit=5", b"kubelet/v1.32.0"))
        same.started()
        same.finished("200")
        same.started()
        same.finished("aborted")
        text = metrics.render().decode()
        self.assertIn('yurthub_proxy_in_flight_requests{component="kubelet"} 0.0', text)
        self.assertIn('yurthub_proxy_requests_total{code="200",component="kubelet",resource="pods",verb="list"} 2.0', text)
        self.assertIn('yurthub_proxy_requests_total{code="aborted",component="kubelet",resource="pods",verb="list"} 1.0', text)

    def test_client_chosen_labels_stay_bounded(self) -> None:
        metrics = ProxyMetrics()
        for i in range(150):
            series = metrics.series(parse_request_info(b"GET", b"/api/v1/res%d/x" % i, b"agent-%d/1" % i))
            series.started()
            series.finished(200)
            metrics.observe_upstream(f"verb{i}", 0.01)
        text = metrics.render().decode()
        self.assertIn('component="other"', text)
        self.assertLessEqual(len(metrics._series), 101)
        self.assertLessEqual(len(metrics._latency_of), 64)
        self.assertLessEqual(text.count("yurthub_proxy_in_flight_requests{"), 101)
