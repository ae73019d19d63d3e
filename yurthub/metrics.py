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

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ProxyMetrics"]

MAX_LABEL_VALUES = 100

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ProxyMetrics:
    """The counters, gauges and histograms yurthub exports on the hub's ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "yurthub_proxy_requests",
            "Requests answered by the proxy, by client component, verb, resource and HTTP code.",
            ["component", "verb", "resource", "code"],
            registry=r,
        )
        self.in_flight = Gauge(
            "yurthub_proxy_in_flight_requests",
            "Requests being handled right now, by client component.",
            ["component"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "yurthub_upstream_response_seconds",
            "Time from sending a request upstream to its response headers, by verb.",
            ["verb"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.bytes_proxied = Counter(
            "yurthub_proxied_bytes",
            "Body bytes relayed, by direction (up: client to cloud, down: cloud to client).",
            ["direction"],
            registry=r,
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
        self.backend_requests = Counter(
            "yurthub_backend_requests",
            "Requests sent to each cloud backend (every attempt, retries included).",
            ["server"],
            registry=r,
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

    def request_started(self, component: str) -> None:
        """A proxied request from ``component`` is now in flight."""
        self._child(self.in_flight, self._bounded("component", component)).inc()

    def request_finished(self, component: str, verb: str, resource: str, code: str) -> None:
        """It ended with ``code`` (an HTTP code or ``aborted``)."""
        component = self._bounded("component", component)
        self._child(self.in_flight, component).dec()
        self._child(
            self.requests,
            component,
            self._bounded("verb", verb),
            self._bounded("resource", resource),
            code,
        ).inc()

    def flow_rejected(self, component: str) -> None:
        """A request from ``component`` got 429."""
        self._child(self._flow_rejected, self._bounded("component", component)).inc()

    def observe_upstream(self, verb: str, seconds: float) -> None:
        """An upstream answered a ``verb`` request's headers after ``seconds``."""
        self._child(self.upstream_latency, self._bounded("verb", verb)).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)


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
