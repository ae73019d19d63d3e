"""The remote proxy: relays a request to a cloud backend and streams the answer back.

Built on `UpstreamClient` (`yurthub.upstream.http1`: pooled HTTP/1.1 connections parsed
by llhttp), one per credential kind (see `BackendEndpointFactory`); `BackendAgent`, an
`Agent`, serves yurthub's own calls to the cloud. The response body is relayed by
`ResponseRelay`, which registers the upstream transport as the producer of the downstream
request: a slow client pauses the upstream socket instead of filling memory, and every chunk
(every watch event) is written to the client as soon as it arrives. A watch's response
headers go out at once, before any event, as kube-apiserver sends them.

Failure rules:
- the client goes away -> the upstream request is cancelled (before headers) or its
  connection dropped (during the body); nothing is written to the gone client;
- the upstream fails before response headers -> the next backend is tried if nothing can
  have reached the cloud (connection refused, DNS) or the request is idempotent; else a 502/
  503 ``Status``;
- the upstream fails mid-body -> the client connection is aborted, never finished, so a
  truncated list cannot pass for a whole one.
"""

from __future__ import annotations

import random as _random
import re
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from yurthub.cache.manager import CacheManager, ResponseTee, is_json
from yurthub.filters.chain import FilterChain, FilterError, RequestFilters
from yurthub.interfaces import IAttempts, IFailoverFactory
from yurthub.lines import LineBuffer
from yurthub.metrics import ProxyMetrics
from yurthub.proxy.headers import presents_node, request_target, set_field, strip_hop_by_hop
from yurthub.proxy.status import abort_client, finish_with_status, when_ended
from yurthub.requestinfo import RequestInfo
from yurthub.upstream.backends import Backend
from yurthub.upstream.endpoints import BackendEndpointFactory
from yurthub.upstream.http1 import UNSAFE_TARGET, Pending, UpstreamClient, UpstreamResponse

_log = Logger()

#: Request headers replaced on the way up: the Agent writes Host and Content-Length itself.
_DROP_UP = frozenset({b"host", b"content-length"})

#: Largest answer (or watch event) read whole to be filtered; a larger one is cut.
MAX_FILTERED_BODY = 64 * 1024 * 1024

#: Media types a filtered request may be answered in (filters read JSON only).
_JSON_MEDIA = frozenset({b"application/json", b"*/*", b"application/*"})

#: Verbs safe to send again to another backend after an attempt failed.
_IDEMPOTENT = frozenset({"get", "list", "watch"})


@implementer(IBodyProducer)
class BytesProducer:
    """A request body already in memory, written in one go."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:  # noqa: N802
        consumer.write(self._body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


class _QuietClientFactory(_HTTP11ClientFactory):
    """The pool's connection factory, without a log line per upstream connection."""

    noisy = False


def make_pool(reactor: IReactorTime, per_host: int, idle_timeout: float) -> HTTPConnectionPool:
    """A persistent connection pool that keeps ``per_host`` idle connections per backend
    for ``idle_timeout`` seconds and leaves retrying to the caller."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietClientFactory
    pool.maxPersistentPerHost = per_host
    pool.cachedConnectionTimeout = idle_timeout  # type: ignore[assignment]
    pool.retryAutomatically = False
    return pool


class BackendAgent(Agent):
    """An `Agent` that sends a request target to a known backend without re-parsing URLs.

    `Agent.request` parses the full URL and asks the endpoint factory for an endpoint on
    every call; for a proxy that already knows the backend and the origin-form target that
    was ~5 % of the CPU per request. `request_to` reuses the backend's parsed URI and
    endpoint, and otherwise takes Agent's own path (pool, request, response) unchanged.
    """

    def __init__(self, reactor: IReactorTime, endpoints: BackendEndpointFactory, pool: HTTPConnectionPool) -> None:
        super().__init__(reactor, pool=pool)
        self._endpointFactory = endpoints
        self._uris: dict[Backend, URI] = {}

    def request_to(
        self,
        backend: Backend,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: IBodyProducer | None,
    ) -> defer.Deferred[IResponse]:
        uri = self._uris.get(backend)
        if uri is None:
            uri = self._uris[backend] = URI.fromBytes(backend.url_bytes + b"/")
        if UNSAFE_TARGET.search(target):
            return defer.fail(ValueError(f"invalid request target {target!r}"))
        endpoint = self._endpointFactory.endpoint_for(backend.scheme, backend.host, backend.port)
        key = (uri.scheme, uri.host, uri.port)
        return self._requestWithEndpoint(key, endpoint, method, uri, headers, body, target)  # type: ignore[no-any-return]


class ResponseRelay(Protocol):
    """Writes an upstream response body to the downstream request as it arrives.

    The upstream transport (a push producer) is registered as the downstream request's
    producer, so twisted.web pauses the upstream when the client's buffer is full.
    """

    def __init__(
        self, request: Request, on_bytes: Callable[[int], None], tee: ResponseTee | None = None, *, watch: bool = False
    ) -> None:
        self.request = request
        self._watch = watch
        self._on_bytes = on_bytes
        self._tee = tee
        self.client_gone = False
        #: Whether what was relayed so far ends at a line end (a whole JSON watch event).
        self.at_line_end = True

    def connectionMade(self) -> None:  # noqa: N802
        producer: IPushProducer = self.transport  # type: ignore[assignment]
        self.request.registerProducer(producer, True)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.client_gone:
            return
        self.request.write(data)
        self.at_line_end = data.endswith(b"\n")
        self._on_bytes(len(data))
        if self._tee is not None:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self._tee.feed(data)  # type: ignore[union-attr]
        except Exception:  # the cache must never hurt the client's answer
            _log.failure("caching an answer failed")
            self._tee = None

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: N802, B008
        # Failure.check walks the class hierarchy; nearly every body ends with exactly this.
        done = reason.type is ResponseDone or bool(reason.check(ResponseDone))
        tee, self._tee = self._tee, None
        if tee is not None:
            try:
                if done and not self.client_gone:
                    tee.finish()
                else:
                    tee.abandon()
            except Exception:
                _log.failure("caching an answer failed")
        if not self.client_gone:
            self.request.unregisterProducer()
            if done or reason.check(PotentialDataLoss):
                self.request.finish()
            elif self._watch and self.at_line_end:
                # Between two events a lost watch ends as a finished one: the client
                # re-watches from its last event, as after a server-side timeout.
                _log.info("watch {uri} lost its upstream: {err}", uri=self.request.uri, err=reason.getErrorMessage())
                self.request.finish()
            else:
                _log.warn(
                    "upstream failed mid-response for {uri}; aborting the client: {err}",
                    uri=self.request.uri,
                    err=reason.getErrorMessage(),
                )
                abort_client(self.request)

    def stop(self) -> None:
        """The client went away: drop the upstream connection and write nothing more."""
        self.client_gone = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def cut(self, *, cleanly: bool) -> None:
        """Leave the backend mid-response: drop the upstream connection and end the
        client's response, ``cleanly`` (finished, as kube-apiserver ends a watch, so the
        client re-watches from its last event) or by aborting its connection (a partial
        list must never look whole)."""
        if self.client_gone:
            return
        tee, self._tee = self._tee, None
        if tee is not None:
            tee.abandon()  # a watch's whole events are applied already
        self.client_gone = True  # nothing more reaches the client from this relay
        request = self.request
        request.unregisterProducer()
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
        if cleanly and self.at_line_end:
            request.finish()
        else:
            abort_client(request)


class FilteredWatchRelay(ResponseRelay):
    """A watch whose events go through response filters: each complete event line is
    filtered and written (the tee sees what the client was given); a partial line waits
    for its end."""

    def __init__(
        self, request: Request, on_bytes: Callable[[int], None], tee: ResponseTee | None, stage: RequestFilters,
        info: RequestInfo,
    ) -> None:
        super().__init__(request, on_bytes, tee, watch=True)
        self._stage = stage
        self._info = info
        self._lines = LineBuffer()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.client_gone:
            return
        self._on_bytes(len(data))
        lines = self._lines.feed(data)
        if self._lines.size > MAX_FILTERED_BODY:
            _log.warn("a watch event of {uri} is too large to filter; aborting", uri=self.request.uri)
            self.cut(cleanly=False)
            return
        out = []
        for line in lines:
            try:
                filtered = self._stage.event_line(line, self._info)
            except FilterError as e:
                _log.warn("a watch event of {uri} could not be filtered ({err}); aborting", uri=self.request.uri, err=e)
                self.cut(cleanly=False)
                return
            if filtered:
                out.append(filtered + b"\n")
        self.at_line_end = not self._lines.size
        if out:
            body = b"".join(out)
            self.request.write(body)
            if self._tee is not None:
                self._feed(body)


class FilteredWholeRelay(ResponseRelay):
    """A get or list whose answer goes through response filters: read whole (up to
    `MAX_FILTERED_BODY`), filtered, encoded again and written with its own
    Content-Length; the tee sees what the client was given. A get whose object is withheld
    is answered 404."""

    def __init__(
        self, request: Request, on_bytes: Callable[[int], None], tee: ResponseTee | None, stage: RequestFilters,
        info: RequestInfo,
    ) -> None:
        super().__init__(request, on_bytes, tee)
        self._stage = stage
        self._info = info
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.client_gone:
            return
        self._on_bytes(len(data))
        self._size += len(data)
        if self._size > MAX_FILTERED_BODY:
            _log.warn("the answer to {uri} is too large to filter; aborting", uri=self.request.uri)
            self._chunks = []
            self.cut(cleanly=False)
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: N802, B008
        tee, self._tee = self._tee, None
        if self.client_gone:
            if tee is not None:
                tee.abandon()
            return
        request = self.request
        request.unregisterProducer()
        if not reason.check(ResponseDone, PotentialDataLoss):
            if tee is not None:
                tee.abandon()
            abort_client(request)
            return
        body, self._chunks = b"".join(self._chunks), []
        try:
            filtered = self._stage.body(body, self._info)
        except FilterError as e:
            if tee is not None:
                tee.abandon()
            finish_with_status(request, 502, f"the cloud's answer could not be filtered: {e}")
            return
        if filtered is None:
            if tee is not None:
                tee.abandon()
            info = self._info
            what = f"{info.resource}.{info.api_group}" if info.api_group else info.resource
            finish_with_status(request, 404, f'{what} "{info.name}" not found', "NotFound")
            return
        request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(filtered)])
        request.write(filtered)
        if tee is not None:
            try:
                tee.feed(filtered)
                tee.finish()
            except Exception:
                _log.failure("caching an answer failed")
        request.finish()


class RemoteProxy:
    """Sends requests to the cloud backends the failover factory names and relays the
    answers; keeps track of which exchanges are open on which backend, so that streams
    follow backend health (`backend_changed`)."""

    def __init__(
        self,
        reactor: IReactorTime,
        failover: IFailoverFactory,
        node_endpoints: BackendEndpointFactory,
        token_endpoints: BackendEndpointFactory,
        metrics: ProxyMetrics,
        *,
        max_persistent_per_host: int = 64,
        idle_timeout: float = 90.0,
        cache: CacheManager | None = None,
        return_grace: float = 60.0,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.reactor = reactor
        self.failover = failover
        self.metrics = metrics
        self.cache = cache
        self.return_grace = return_grace
        self._random = random
        #: Answers a read from the cache when the cloud is too slow for the request's
        #: deadline; returns False when it cannot (then the answer is 504).
        self.stand_in: Callable[[Request, RequestInfo], bool] | None = None
        #: The response filters (None: none configured); see `yurthub.filters`.
        self.filters: FilterChain | None = None
        self.pools: list[HTTPConnectionPool | UpstreamClient] = []
        self._node_agent = self._make_agent(node_endpoints, max_persistent_per_host, idle_timeout)
        self._token_agent = self._make_agent(token_endpoints, max_persistent_per_host, idle_timeout)
        # The relayed requests go through the lean client; the agents serve yurthub's own
        # calls to the cloud (certificates, the janitor, tokens, node pools).
        self._node_client = UpstreamClient(reactor, node_endpoints, per_host=max_persistent_per_host, idle_timeout=idle_timeout)
        self._token_client = UpstreamClient(reactor, token_endpoints, per_host=max_persistent_per_host, idle_timeout=idle_timeout)
        self.pools += (self._node_client, self._token_client)
        self.bytes_down = metrics.bytes_proxied.labels("down")
        self.bytes_up = metrics.bytes_proxied.labels("up")
        self._sent: dict[Backend, Any] = {}
        #: The exchanges open on each backend (waiting for headers or relaying a body).
        self.open: dict[Backend, set[_Exchange]] = {b: set() for b in failover.backends}
        #: Exchanges still open on backends of a cluster the node moved away from.
        self._retired: set[_Exchange] = set()
        #: The backends of clusters the node moved away from.
        self.retired_backends: set[Backend] = set()

    def _make_agent(self, endpoints: BackendEndpointFactory, per_host: int, idle: float) -> BackendAgent:
        pool = make_pool(self.reactor, per_host, idle)  # retries are ours: we know which backend is next
        self.pools.append(pool)
        return BackendAgent(self.reactor, endpoints, pool)

    def close(self) -> defer.Deferred[Any]:
        """Close every pooled upstream connection (at shutdown)."""
        for exchanges in self.open.values():
            for exchange in exchanges:
                exchange.cancel_move()
        return defer.gatherResults([pool.closeCachedConnections() for pool in self.pools])

    def handle(
        self,
        request: Request,
        info: RequestInfo,
        on_unavailable: Callable[[Request, RequestInfo, str], None],
    ) -> None:
        """Relay ``request`` to the cloud. ``on_unavailable`` answers it instead when no
        backend can take it (the router passes the offline path or a 503)."""
        attempts = self.failover.attempts(info)
        backend = attempts.next()
        if backend is None:
            on_unavailable(request, info, "no healthy cloud backend")
            return
        _Exchange(self, request, info, attempts, on_unavailable).start(backend)

    @property
    def node_agent(self) -> BackendAgent:
        """The agent whose connections present the node's client certificate."""
        return self._node_agent

    @property
    def token_agent(self) -> BackendAgent:
        """The agent whose connections present no client certificate (bearer tokens)."""
        return self._token_agent

    def end_streams_within(self, seconds: float) -> None:
        """End every open watch cleanly at a random moment within ``seconds`` (after a
        certificate rotation: their connections still hold the old certificate)."""
        for exchanges in self.open.values():
            for exchange in exchanges:
                if exchange.info.is_watch:
                    exchange.schedule_move(seconds * self._random(), reason="rotated")

    def backend_changed(self, backend: Backend) -> None:
        """Make open exchanges follow a backend's new health.

        Unhealthy: every exchange on it leaves it now. One still waiting for response
        headers is retried on the next backend if it is idempotent (else answered 503); one
        relaying a body is ended (a watch cleanly, so its client re-watches elsewhere or gets
        offline answers; anything else aborted). Healthy again, in priority mode: watches on
        the backends it outranks are moved after ``return_grace`` seconds, each at its own
        random moment in [grace, 1.5 x grace], so their clients do not all re-list at once.
        """
        if not backend.healthy:
            exchanges = list(self.open.get(backend, ()))
            if exchanges:
                _log.info("moving {n} open requests off {url}", n=len(exchanges), url=backend.url)
            for exchange in exchanges:
                exchange.backend_lost(backend)
            return
        for other, open_there in self.open.items():
            if other is backend or not self.failover.outranked(other):
                continue
            for exchange in open_there:
                if exchange.info.is_watch:
                    exchange.schedule_move(self.return_grace * (1 + 0.5 * self._random()))

    def replace_backends(self, backends: list[Backend]) -> None:
        """The node moved to another cluster: from now on exchanges are tracked on
        ``backends``, and every exchange open on the old ones leaves them. A read still
        waiting for response headers is sent again to the new backends; a watch being
        relayed ends cleanly, so its client re-watches there; a write already sent, and
        any other body being relayed, is answered by the old backend to its end. Idle
        pooled connections are closed now, and again once the last exchange on the old
        backends has ended, so no connection to the old cluster stays."""
        old = self.open
        self.open = {b: set() for b in backends}
        self.retired_backends.update(b for b in old if b not in self.open)
        for exchanges in old.values():
            self._retired.update(exchanges)
        for exchange in list(self._retired):
            exchange.cluster_left()
        self._close_idle()

    def retired_left(self, exchange: _Exchange) -> None:
        """An exchange on a backend of the old cluster ended."""
        self._retired.discard(exchange)
        if not self._retired:
            # After this reactor turn: the connection goes back to its pool first.
            self.reactor.callLater(0, self._close_idle)  # type: ignore[attr-defined]

    def _close_idle(self) -> None:
        for pool in self.pools:
            pool.closeCachedConnections()

    # used by _Exchange
    def count_request(self, backend: Backend) -> None:
        counter = self._sent.get(backend)
        if counter is None:  # labels() costs a lock and a lookup: once per backend
            counter = self._sent[backend] = self.metrics.backend_requests.labels(backend.url)
        counter.inc()

    def client_for(self, request: Request) -> UpstreamClient:
        return self._token_client if not presents_node(request) else self._node_client


def _failure_kind(failure: Failure) -> str:
    """``connect`` (nothing reached the backend: refused, timed out, DNS), ``tls`` (the
    handshake failed, so no request byte left in the clear) or ``response`` (the request
    may have been received: the connection failed before the response headers)."""
    if failure.check(ConnectError, DNSLookupError, ConnectingCancelledError):
        return "connect"
    reasons = getattr(failure.value, "reasons", None) or [failure]
    if any(r.check(SSL.Error) for r in reasons):
        return "tls"
    return "response"


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float | None:
    """Seconds of a Go duration (``32s``, ``1m30s``, ``500ms``), or None if it is not one."""
    if text == "0":
        return 0.0
    total, position = 0.0, 0
    for part in _DURATION_PART.finditer(text):
        if part.start() != position:
            return None
        total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        position = part.end()
    return total if position == len(text) and position else None


def request_deadline(info: RequestInfo) -> float | None:
    """How long the client gives this request, in seconds: its ``timeout`` (kubectl and
    client-go send ``?timeout=32s``), or for a list ``timeoutSeconds``; None for
    long-running requests and when there is none."""
    if info.is_long_running:
        return None
    timeout = info.query_value("timeout") if "timeout=" in info.query else None
    if timeout:
        seconds = parse_go_duration(timeout)
        if seconds:
            return seconds
    if info.verb == "list" and "timeoutSeconds=" in info.query:
        text = info.query_value("timeoutSeconds") or ""
        if text.isdigit() and int(text) > 0:
            return float(text)
    return None


#: `request_deadline` of each request info seen lately (bounded).
_DEADLINES: dict[RequestInfo, float | None] = {}


class _Exchange:
    """One client request's trip through the remote proxy, across backend attempts."""

    def __init__(
        self,
        proxy: RemoteProxy,
        request: Request,
        info: RequestInfo,
        attempts: IAttempts,
        on_unavailable: Callable[[Request, RequestInfo, str], None],
    ) -> None:
        self.proxy = proxy
        self.request = request
        self.info = info
        self.attempts = attempts
        self.on_unavailable = on_unavailable
        self.backend: Backend | None = None
        self.pending: Pending | None = None
        self.relay: ResponseRelay | None = None
        self.client_gone = False
        self._seq = 0  # the current attempt; outcomes of abandoned ones are ignored
        self._move: Any = None  # the delayed call that moves a watch back to a preferred backend
        self._deadline: Any = None  # the delayed call that answers before the client gives up
        # Before the headers go up: the cache may ask the cloud for JSON.
        self.tee = proxy.cache.tee_for(info, request) if proxy.cache is not None else None
        self.stage: RequestFilters | None = None
        self.refusal = ""
        if proxy.filters is not None and request.method != b"HEAD":
            self.stage = proxy.filters.for_request(info)
            if self.stage is not None:
                self.refusal = _ask_for_json(request)
        self.headers = strip_hop_by_hop(request.requestHeaders, also_drop=_DROP_UP)
        content = request.content
        body = b""
        if content is not None:
            content.seek(0)
            body = content.read()
        has_body = bool(body) or request.method in (b"POST", b"PUT", b"PATCH")
        self.body = body if has_body else None
        self.target = request_target(request)

    def start(self, backend: Backend) -> None:
        if self.refusal:
            finish_with_status(self.request, 406, self.refusal, "NotAcceptable")
            return
        when_ended(self.request, self._ended, self._client_went_away)
        info = self.info
        if info in _DEADLINES:
            seconds = _DEADLINES[info]
        else:
            if len(_DEADLINES) >= 1024:
                _DEADLINES.clear()
            seconds = _DEADLINES[info] = request_deadline(info)
        if seconds is not None:
            # Answer a little before the client's own deadline, so the answer is still wanted.
            wait = seconds - min(1.0, seconds * 0.1)
            self._deadline = self.proxy.reactor.callLater(wait, self._deadline_passed)  # type: ignore[attr-defined]
        self.attempt(backend)

    def attempt(self, backend: Backend) -> None:
        self._join(backend)
        self._seq += 1
        if self.body is not None:
            self.proxy.bytes_up.inc(len(self.body))
        self.proxy.count_request(backend)
        started = self.proxy.reactor.seconds()
        set_field(self.headers, b"host", backend.host_header)
        self.pending = self.proxy.client_for(self.request).start(
            backend,
            self.request.method,
            self.target,
            self.headers,
            self.body,
            self._answered,
            self._failed,
            (backend, started, self._seq),
        )

    def _answered(self, response: UpstreamResponse, context: tuple[Backend, float, int]) -> None:
        self.got_response(response, context[1], context[2])

    def _failed(self, failure: Failure, context: tuple[Backend, float, int]) -> None:
        self.failed(failure, context[0], context[2])

    def got_response(self, response: UpstreamResponse, started: float, seq: int) -> None:
        if seq != self._seq or self.client_gone:
            response.deliverBody(_Discard())
            return
        self.pending = None
        if self._deadline is not None:
            self._cancel_deadline()
        proxy, info = self.proxy, self.info
        watch = info.verb == "watch"
        proxy.metrics.observe_upstream(info.verb, proxy.reactor.seconds() - started)
        request = self.request
        # The client took the connection's fields (and those its Connection names) out of
        # the answer's: what remains is the answer's own, and becomes the client's.
        content_type = response.content_type
        stage = self.stage if 200 <= response.code < 300 else None
        if stage is not None and not is_json(content_type):
            # Filters read JSON only: never pass an answer they could not read.
            response.deliverBody(_Discard())
            finish_with_status(request, 502, "the cloud answered a filtered request in a format other than JSON")
            return
        whole = stage is not None and not watch  # written once filtered
        length = response.length if response.length is not UNKNOWN_LENGTH and request.method != b"HEAD" else None
        relay_answer = getattr(request, "relay_answer", None) if stage is None else None
        if relay_answer is not None:
            # The lean server writes the fields as they came (no `Headers` in between).
            relay_answer(response.code, response.phrase, response.fields, length)
        else:
            request.setResponseCode(response.code, response.phrase)
            headers = response.headers
            if whole:
                headers.removeHeader(b"content-length")
            elif length is not None:
                set_field(headers, b"content-length", b"%d" % length)
            request.responseHeaders = headers
            request.defaultContentType = None  # type: ignore[assignment]
        if watch or (response.length is UNKNOWN_LENGTH and not whole):
            # Streams: send the status line and headers now, before the first event.
            request.write(b"")
        tee = self.tee
        if tee is not None and not tee.start(response.code, content_type):
            tee = None
        if stage is None:
            self.relay = ResponseRelay(request, proxy.bytes_down.inc, tee, watch=watch)
        elif watch:
            self.relay = FilteredWatchRelay(request, proxy.bytes_down.inc, tee, stage, info)
        else:
            self.relay = FilteredWholeRelay(request, proxy.bytes_down.inc, tee, stage, info)
        response.deliverBody(self.relay)

    def failed(self, failure: Failure, backend: Backend, seq: int) -> None:
        if seq != self._seq:
            return  # an attempt abandoned when its backend turned unhealthy
        self.pending = None
        if self.client_gone or failure.check(defer.CancelledError):
            return
        if failure.check(ValueError):  # the request itself cannot be sent (bad target)
            finish_with_status(self.request, 400, failure.getErrorMessage())
            return
        kind = _failure_kind(failure)
        self.proxy.metrics.upstream_errors.labels(kind).inc()
        reason = failure.getErrorMessage()
        _log.debug(
            "{method} {uri} to {backend} failed: {err}",
            method=self.request.method.decode("ascii", "replace"),
            uri=self.request.uri,
            backend=backend.url,
            err=reason,
        )
        nothing_sent = kind != "response"
        self._leave()
        if nothing_sent:  # passive health: the backend cannot be reached at all
            backend.set_healthy(False, f"{'TLS handshake' if kind == 'tls' else 'connection'} failed: {reason}")
        self._fail_over(backend, nothing_sent or self.info.verb in _IDEMPOTENT, nothing_sent, reason)

    def backend_lost(self, backend: Backend) -> None:
        """``backend`` turned unhealthy while this exchange was open on it."""
        if self.client_gone or backend is not self.backend:
            return
        if self.pending is not None:  # no response headers yet
            pending, self.pending = self.pending, None
            self._seq += 1
            pending.cancel()
            self._leave()
            reason = f"{backend.url} became unhealthy" + (f" ({backend.reason})" if backend.reason else "")
            self._fail_over(backend, self.info.verb in _IDEMPOTENT, True, reason)
        elif self.relay is not None:
            self.proxy.metrics.streams_moved.labels("unhealthy").inc()
            self.relay.cut(cleanly=self.info.is_watch)

    def _deadline_passed(self) -> None:
        """The client's deadline is near and the cloud has not answered: the cache answers
        a read it can, anything else gets 504."""
        self._deadline = None
        if self.pending is None or self.client_gone:
            return
        pending, self.pending = self.pending, None
        self._seq += 1
        pending.cancel()
        self._leave()
        self.proxy.metrics.upstream_errors.labels("timeout").inc()
        stand_in = self.proxy.stand_in
        if stand_in is not None and stand_in(self.request, self.info):
            return
        finish_with_status(self.request, 504, "the cloud did not answer within the request's timeout")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _fail_over(self, backend: Backend, retry: bool, unreachable: bool, reason: str) -> None:
        """After an attempt on ``backend`` failed: the next backend, offline answers or a
        ``Status`` error."""
        if retry:
            following = self.attempts.next()
            if following is not None:
                self.proxy.metrics.failovers.labels(backend.url).inc()
                self.attempt(following)
                return
            if unreachable and not self.proxy.failover.any_healthy():
                self.on_unavailable(self.request, self.info, f"cloud unreachable: {reason}")
                return
        code = 503 if unreachable else 502
        finish_with_status(self.request, code, f"upstream {backend.url} failed: {reason}")

    def schedule_move(self, delay: float, reason: str = "preferred") -> None:
        """End this watch cleanly in ``delay`` seconds (once), so its client re-watches:
        for ``preferred`` only if a preferred backend is still healthy then."""
        if self._move is None and self.relay is not None and not self.client_gone:
            self._move = self.proxy.reactor.callLater(delay, self._move_now, reason)  # type: ignore[attr-defined]

    def _move_now(self, reason: str) -> None:
        self._move = None
        backend = self.backend
        if backend is None or self.relay is None or self.client_gone:
            return
        if reason != "preferred" or (backend.healthy and self.proxy.failover.outranked(backend)):
            self.proxy.metrics.streams_moved.labels(reason).inc()
            self.relay.cut(cleanly=True)

    def cancel_move(self) -> None:
        if self._move is not None and self._move.active():
            self._move.cancel()
        self._move = None

    def cluster_left(self) -> None:
        """The node moved to another cluster while this exchange was open on the old one
        (see `RemoteProxy.replace_backends`)."""
        if self.client_gone:
            self._leave()
            return
        if self.pending is not None:
            if self.info.verb not in _IDEMPOTENT:
                return  # already sent: the old cluster answers it
            pending, self.pending = self.pending, None
            self._seq += 1
            pending.cancel()
            self._leave()
            self.attempts = self.proxy.failover.attempts(self.info)
            following = self.attempts.next()
            if following is None:
                self.on_unavailable(self.request, self.info, "no healthy cloud backend")
                return
            self.attempt(following)
        elif self.relay is not None and self.info.is_watch:
            self.cancel_move()
            self.proxy.metrics.streams_moved.labels("migrated").inc()
            self.relay.cut(cleanly=True)
            self._leave()

    def _join(self, backend: Backend) -> None:
        self._leave()
        self.backend = backend
        if backend in self.proxy.retired_backends:  # an old attempt order, after a migration
            self.proxy._retired.add(self)
        else:
            self.proxy.open.setdefault(backend, set()).add(self)

    def _leave(self) -> None:
        if self.backend is not None:
            open_there = self.proxy.open.get(self.backend)
            if open_there is not None:
                open_there.discard(self)
            else:
                self.proxy.retired_left(self)
            self.backend = None

    def _ended(self) -> None:
        self.cancel_move()
        self._cancel_deadline()
        self._leave()

    def _client_went_away(self, failure: Failure) -> None:
        self.client_gone = True
        self._ended()
        if self.pending is not None:
            self.pending.cancel()
        if self.relay is not None:
            self.relay.stop()


def _ask_for_json(request: Request) -> str:
    """Make a filtered request ask the cloud for JSON only (keeping the client's own JSON
    variants, Table included); a refusal message if the client accepts no JSON."""
    accept = request.getHeader(b"accept")
    if not accept:
        request.requestHeaders.setRawHeaders(b"accept", [b"application/json"])
        return ""
    parts = [p.strip() for p in accept.split(b",")]
    json_parts = [p for p in parts if p.split(b";", 1)[0].strip().lower() in _JSON_MEDIA]
    if not json_parts:
        return "answers to this request are filtered by yurthub, which needs them in JSON; accept application/json"
    if len(json_parts) != len(parts):
        request.requestHeaders.setRawHeaders(b"accept", [b", ".join(json_parts)])
    return ""


class _Discard(Protocol):
    """Drops the connection of a response nobody wants any more."""

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.stopProducing()  # type: ignore[union-attr]
