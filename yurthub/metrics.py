"""Prometheus metrics of one yurthub process.

All collectors live in one `CollectorRegistry` owned by a `ProxyMetrics` instance that the
composition root creates and passes to the parts that count things, so tests can build as
many independent yurthubs as they like (no module-level globals).

Label values that come from clients (component, verb, resource) are bounded: after
`MAX_LABEL_VALUES` distinct values of one label, new ones are counted as ``other``, so no
client can grow the registry (and yurthub's memory) without limit by inventing user agents
or paths. The per-request helpers cache the labelled children, since ``labels()`` takes a
lock and builds a key every time and runs several times per proxied request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE_LATEST", "ProxyMetrics"]

MAX_LABEL_VALUES = 100

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Value:
    """One labelled counter or gauge value: a plain number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class _Buckets:
    """One labelled histogram: the count in each bucket (the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class PlainMetric:
    """A labelled counter, gauge or histogram of the proxy path, kept in plain numbers.

    prometheus_client's own metrics take a lock on every update (two or three per
    histogram observation) and check on each that they may be observed: several of them
    changed on every proxied request, about 8 % of its CPU. These are only changed on
    the reactor thread, so plain numbers do; the registry reads them at each scrape
    (`collect`), and the exposition is the same as prometheus_client's (``_total`` for a
    counter, cumulative ``_bucket``, ``_sum`` and ``_count`` for a histogram), without
    the ``_created`` samples.
    """

    def __init__(
        self,
        kind: str,
        name: str,
        documentation: str,
        labelnames: list[str],
        registry: CollectorRegistry,
        buckets: tuple[float, ...] = (),
    ) -> None:
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.buckets = tuple(float(b) for b in buckets)
        self._children: dict[tuple[str, ...], Any] = {}
        registry.register(self)

    def labels(self, *values: str) -> Any:
        """The value (`_Value`) or histogram (`_Buckets`) of these label values."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes {len(self.labelnames)} label values, not {len(values)}")
            child = _Buckets(self.buckets) if self.kind == "histogram" else _Value()
            self._children[values] = child
        return child

    def collect(self) -> Iterator[Any]:
        if self.kind == "histogram":
            family: Any = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
            les = [floatToGoString(b) for b in self.buckets] + ["+Inf"]
            for values, histogram in self._children.items():
                cumulative, total = [], 0
                for le, count in zip(les, histogram.counts, strict=True):
                    total += count
                    cumulative.append((le, float(total)))
                family.add_metric([str(v) for v in values], cumulative, histogram.sum)
        else:
            family_type = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
            family = family_type(self.name, self.documentation, labels=self.labelnames)
            for values, child in self._children.items():
                family.add_metric([str(v) for v in values], child.value)
        yield family


class ProxyMetrics:
    """The counters, gauges and histograms yurthub exports on the hub's ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Changed on every proxied request: plain numbers read at scrape time.
        self.requests = PlainMetric(
            "counter",
            "yurthub_proxy_requests",
            "Requests answered by the proxy, by client component, verb, resource and HTTP code.",
            ["component", "verb", "resource", "code"],
            r,
        )
        self.in_flight = PlainMetric(
            "gauge",
            "yurthub_proxy_in_flight_requests",
            "Requests being handled right now, by client component.",
            ["component"],
            r,
        )
        self.upstream_latency = PlainMetric(
            "histogram",
            "yurthub_upstream_response_seconds",
            "Time from sending a request upstream to its response headers, by verb.",
            ["verb"],
            r,
            buckets=_LATENCY_BUCKETS,
        )
        self.bytes_proxied = PlainMetric(
            "counter",
            "yurthub_proxied_bytes",
            "Body bytes relayed, by direction (up: client to cloud, down: cloud to client).",
            ["direction"],
            r,
        )
        self.upstream_errors = Counter(
            "yurthub_upstream_errors",
            "Requests whose upstream failed before or during the response, by kind.",
            ["kind"],
            registry=r,
        )
        self.cache_errors = Counter(
            "yurthub_cache_errors",
            "Answers or events that could not be cached, by kind (decode, store, too_large).",
            ["kind"],
            registry=r,
        )
        self.backend_healthy = Gauge(
            "yurthub_backend_healthy",
            "1 if the cloud backend is considered healthy, else 0.",
            ["server"],
            registry=r,
        )
        # Labelled by configured server URLs only, so bounded by the config.
        self.backend_requests = PlainMetric(
            "counter",
            "yurthub_backend_requests",
            "Requests sent to each cloud backend (every attempt, retries included).",
            ["server"],
            r,
        )
        self.failovers = Counter(
            "yurthub_failovers",
            "Requests retried on another backend after an attempt on this one failed.",
            ["server"],
            registry=r,
        )
        self.streams_moved = Counter(
            "yurthub_streams_moved",
            "Open streams ended so their clients reconnect elsewhere: the backend turned "
            "unhealthy, or (priority mode) a preferred backend is healthy again.",
            ["reason"],
            registry=r,
        )

        self._flow_rejected = Counter(
            "yurthub_flow_rejected_requests",
            "Requests answered 429 because maxRequestsInFlight were in flight, by component.",
            ["component"],
            registry=r,
        )
        self.connections_open = Gauge(
            "yurthub_proxy_connections_open",
            "Client connections open on the proxy listeners.",
            registry=r,
        )
        self.connections_refused = Counter(
            "yurthub_proxy_connections_refused",
            "Client connections closed by yurthub's limits: over maxConnections (limit), "
            "request head not received in time (slow), request head too big (too_big).",
            ["reason"],
            registry=r,
        )

        self._seen: dict[str, set[str]] = {"component": set(), "verb": set(), "resource": set()}
        self._children: dict[tuple[Any, ...], Any] = {}
        self._series: dict[tuple[str, str, str], RequestSeries] = {}
        self._series_of: dict[Any, RequestSeries] = {}
        self._latency_of: dict[str, _Buckets] = {}

    def _bounded(self, label: str, value: str) -> str:
        seen = self._seen[label]
        if value in seen:
            return value
        if len(seen) < MAX_LABEL_VALUES:
            seen.add(value)
            return value
        return "other"

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def series(self, info: Any) -> RequestSeries:
        """The `RequestSeries` of a request info's bounded (component, verb, resource),
        remembered per info."""
        series = self._series_of.get(info)
        if series is None:
            if len(self._series_of) >= 1024:
                self._series_of.clear()
            bounded = self._bounded
            labels = (bounded("component", info.component), bounded("verb", info.verb), bounded("resource", info.resource))
            series = self._series.get(labels)
            if series is None:  # bounded: at most MAX_LABEL_VALUES + 1 values of each label
                series = self._series[labels] = RequestSeries(self, labels)
            self._series_of[info] = series
        return series

    def flow_rejected(self, component: str) -> None:
        """A request from ``component`` got 429."""
        self._child(self._flow_rejected, self._bounded("component", component)).inc()

    def observe_upstream(self, verb: str, seconds: float) -> None:
        """An upstream answered a ``verb`` request's headers after ``seconds``."""
        histogram = self._latency_of.get(verb)
        if histogram is None:
            if len(self._latency_of) >= 64:  # verbs of non-resource requests are methods
                self._latency_of.clear()
            histogram = self._latency_of[verb] = self.upstream_latency.labels(self._bounded("verb", verb))
        histogram.observe(seconds)

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)


class RequestSeries:
    """What a proxied request with one bounded (component, verb, resource) counts: the
    in-flight gauge's child and the request counter's child of each final code, each
    found once rather than by a labelled look-up per request."""

    __slots__ = ("_by_code", "_requests", "flight", "labels")

    def __init__(self, metrics: ProxyMetrics, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.flight: _Value = metrics.in_flight.labels(labels[0])
        self._requests = metrics.requests
        self._by_code: dict[int | str, _Value] = {}

    def started(self) -> None:
        """A request of this series is now in flight."""
        self.flight.value += 1

    def finished(self, code: int | str) -> None:
        """It ended with ``code`` (an HTTP code or ``aborted``)."""
        self.flight.value -= 1
        counter = self._by_code.get(code)
        if counter is None:  # bounded: HTTP codes are three digits
            counter = self._by_code[code] = self._requests.labels(*self.labels, str(code))
        counter.value += 1


class InFlightCollector:
    """Exports the flow-control limiter's count, read at each scrape (a gauge updated on
    every request would cost two locked updates per request)."""

    def __init__(self, in_flight: Callable[[], int]) -> None:
        self._in_flight = in_flight

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            "yurthub_flow_in_flight_requests",
            "Requests holding a slot under flowControl.maxRequestsInFlight.",
            value=self._in_flight(),
        )


class StoreHealthCollector:
    """Exports an object store's health counters, read at each scrape."""

    def __init__(self, health: Callable[[], Any]) -> None:
        self._health = health

    def collect(self) -> Iterator[Any]:
        health = self._health()
        for name, help_text, value in (
            (
                "yurthub_cache_disk_errors_total",
                "Failed disk operations of the cache.",
                health.errors,
            ),
            (
                "yurthub_cache_dropped_writes_total",
                "Cache writes dropped because the writer was behind.",
                health.dropped,
            ),
            (
                "yurthub_cache_corrupt_files_total",
                "Cache files skipped at load as unreadable.",
                health.corrupt_files,
            ),
        ):
            yield CounterMetricFamily(name.removesuffix("_total"), help_text, value=value)
        yield GaugeMetricFamily(
            "yurthub_cache_pending_writes",
            "Cache writes waiting for the writer.",
            value=health.pending,
        )
        yield GaugeMetricFamily(
            "yurthub_cache_degraded",
            "1 while the cache cannot keep up or write.",
            value=1 if health.degraded else 0,
        )
