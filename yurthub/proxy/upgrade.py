"""Protocol upgrades (kubectl exec, attach, port-forward): spliced as raw bytes both ways.

An ``Upgrade`` request is not relayed through the `Agent` (it cannot switch protocols).
`UpgradeSplicer` opens a raw connection to the chosen backend (TLS and credentials as for
any request), writes the request head and body, then takes the client's transport over from
twisted.web and relays bytes in both directions, unchanged, until either side closes: the
101 response, the websocket or SPDY frames, everything. Each side is the other's push
producer, so a slow reader pauses the fast writer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.server import Request

from yurthub.interfaces import IFailoverFactory
from yurthub.metrics import ProxyMetrics
from yurthub.proxy.headers import presents_node, request_target, strip_hop_by_hop
from yurthub.proxy.status import finish_with_status
from yurthub.requestinfo import RequestInfo
from yurthub.upstream.backends import Backend
from yurthub.upstream.endpoints import BackendEndpointFactory

_log = Logger()


class _Side(Protocol):
    """One end of a splice: what arrives here is written to the peer's transport."""

    def __init__(self, splice: _Splice, name: str) -> None:
        self.splice = splice
        self.name = name
        self.peer: _Side | None = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.splice.count(self.name, len(data))
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self.splice.side_closed(self)


class _Splice:
    """The pair of sides of one upgraded connection; closes both when either closes."""

    def __init__(self, metrics: ProxyMetrics, on_done: Callable[[], None]) -> None:
        self.client = _Side(self, "up")
        self.upstream = _Side(self, "down")
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        self._bytes = {
            "up": metrics.bytes_proxied.labels("up"),
            "down": metrics.bytes_proxied.labels("down"),
        }
        self._on_done: Callable[[], None] | None = on_done

    def count(self, direction: str, n: int) -> None:
        self._bytes[direction].inc(n)

    def side_closed(self, side: _Side) -> None:
        other = side.peer
        if other is not None and other.transport is not None:
            other.transport.loseConnection()
        if self._on_done is not None:
            done, self._on_done = self._on_done, None
            done()


def take_over_transport(request: Request, protocol: Protocol) -> ITransport:
    """Detach ``request``'s connection from twisted.web and hand it to ``protocol``.

    Bytes the HTTP channel already read past the request (and buffered while the request
    was being handled) are delivered to ``protocol`` first.
    """
    channel: Any = request.channel
    transport = channel.transport
    detach = getattr(channel.site, "detach", None)
    if detach is not None:
        forget = detach(channel, transport)
        lost = protocol.connectionLost

        def connection_lost(reason: Any = None) -> None:
            forget()
            lost(reason)

        protocol.connectionLost = connection_lost  # type: ignore[method-assign]
    channel.setTimeout(None)
    buffered = b"".join(getattr(channel, "_dataBuffer", []))
    channel._dataBuffer = []
    channel.transport = None
    transport.unregisterProducer()
    if isinstance(transport, ProtocolWrapper):  # TLS
        transport.wrappedProtocol = protocol
    else:
        counted = getattr(transport.protocol, "connection_closed", None)
        if counted is not None:  # the connection cap counts it until the splice ends
            lost_too = protocol.connectionLost

            def splice_lost(reason: Any = None) -> None:
                counted()
                lost_too(reason)

            protocol.connectionLost = splice_lost  # type: ignore[method-assign]
        transport.protocol = protocol
    protocol.makeConnection(transport)
    transport.resumeProducing()
    if buffered:
        protocol.dataReceived(buffered)
    return transport  # type: ignore[no-any-return]


class UpgradeSplicer:
    """Handles ``Upgrade`` requests by splicing the client to a cloud backend."""

    def __init__(
        self,
        reactor: IReactorTime,
        failover: IFailoverFactory,
        node_endpoints: BackendEndpointFactory,
        token_endpoints: BackendEndpointFactory,
        metrics: ProxyMetrics,
    ) -> None:
        self._reactor = reactor
        self.failover = failover
        self._node_endpoints = node_endpoints
        self._token_endpoints = token_endpoints
        self._metrics = metrics

    def handle(
        self,
        request: Request,
        info: RequestInfo,
        on_unavailable: Callable[[Request, RequestInfo, str], None],
        on_done: Callable[[int], None],
    ) -> None:
        """Connect to the first healthy backend and splice; ``on_done(101)`` is called
        when the spliced connection ends (twisted.web no longer sees this request). A
        backend that cannot be connected to is marked unhealthy and the next one tried
        (nothing has been sent to it yet)."""
        attempts = self.failover.attempts(info)
        backend = attempts.next()
        if backend is None:
            on_unavailable(request, info, "no healthy cloud backend for an upgrade request")
            return
        factory = self._node_endpoints if presents_node(request) else self._token_endpoints
        body = b""
        if request.content is not None:
            request.content.seek(0)
            body = request.content.read()
        splice = _Splice(self._metrics, lambda: on_done(101))

        def connect(backend: Backend) -> None:
            endpoint = factory.endpoint_for(backend.scheme, backend.host, backend.port)
            head = _request_head(request, backend.url.split("://", 1)[1])
            connecting = endpoint.connect(Factory.forProtocol(lambda: splice.upstream))
            connecting.addCallbacks(connected, failed, callbackArgs=(head,), errbackArgs=(backend,))

        def connected(_: object, head: bytes) -> None:
            if getattr(request, "_disconnected", False) or request.channel is None:
                splice.upstream.transport.loseConnection()  # type: ignore[union-attr]
                return
            upstream_transport = splice.upstream.transport
            assert upstream_transport is not None
            upstream_transport.write(head + body)
            client_transport = take_over_transport(request, splice.client)
            client_transport.registerProducer(upstream_transport, True)  # type: ignore[attr-defined]
            upstream_transport.registerProducer(client_transport, True)  # type: ignore[attr-defined]

        def failed(failure: Failure, backend: Backend) -> None:
            backend.set_healthy(False, f"connection failed: {failure.getErrorMessage()}")
            _log.info(
                "upgrade to {backend} failed: {err}",
                backend=backend.url,
                err=failure.getErrorMessage(),
            )
            following = attempts.next()
            if following is not None and not getattr(request, "_disconnected", False):
                self._metrics.failovers.labels(backend.url).inc()
                connect(following)
                return
            finish_with_status(request, 503, f"cannot reach {backend.url}: {failure.getErrorMessage()}")

        connect(backend)


def _request_head(request: Request, host: str) -> bytes:
    """The HTTP/1.1 request head to send upstream: end-to-end headers, the upgrade pair,
    the backend's Host and the body length."""
    upgrade = request.requestHeaders.getRawHeaders(b"upgrade", [])
    headers = strip_hop_by_hop(request.requestHeaders, also_drop=frozenset({b"host", b"content-length"}))
    lines = [
        request.method + b" " + request_target(request) + b" HTTP/1.1",
        b"Host: " + host.encode("ascii"),
    ]
    for name, values in headers.getAllRawHeaders():
        lines.extend(name + b": " + value for value in values)
    lines.append(b"Connection: Upgrade")
    lines.extend(b"Upgrade: " + v for v in upgrade)
    if request.content is not None:
        request.content.seek(0, 2)
        length = request.content.tell()
        if length or request.method in (b"POST", b"PUT", b"PATCH"):
            lines.append(b"Content-Length: " + str(length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"
