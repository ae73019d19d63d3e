"""The proxy listeners' root resource: request info, accounting and routing.

Every request on the proxy ports comes through `ProxyRoot.render`: its Kubernetes request
info is resolved once, it is counted (in flight, then by component/verb/resource/code), and
it is routed: ``Upgrade`` requests to the splicer, everything else to the remote proxy while
a cloud backend is healthy. When none is, ``unavailable`` answers; today that is a 503
``Status``, and the offline (cache) answers plug in at exactly that point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.abstract import FileDescriptor
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from yurthub.metrics import ProxyMetrics
from yurthub.proxy.channel import ChannelLimits, limited_channel_protocol
from yurthub.proxy.flowcontrol import EXEMPT, InFlightLimiter, Slot
from yurthub.proxy.headers import is_upgrade
from yurthub.proxy.remote import RemoteProxy
from yurthub.proxy.status import finish_with_status, when_ended, write_status
from yurthub.proxy.upgrade import UpgradeSplicer
from yurthub.requestinfo import RequestInfo, parse_request_info

_log = Logger()

#: Most bytes one ``send()`` on a client connection may take. Twisted's default, 128 KiB,
#: cuts a 288 KB list answer into three sends, each a reactor turn of its own after the
#: whole buffer was copied: with this limit the kernel takes an answer in one send (its
#: socket buffer permitting), which cost 40 % of the CPU of an offline 100-pod list.
SEND_LIMIT = 4 * 1024 * 1024

#: Request infos kept by request line and User-Agent: a node's components repeat the same
#: few requests, and resolving one costs more than looking it up.
REQUEST_INFO_MEMO = 256


class OfflineAnswerer(TypingProtocol):
    """What answers a request no cloud backend can take (the offline path)."""

    def __call__(self, request: Request, info: RequestInfo, reason: str) -> None: ...


class RequestGuard(TypingProtocol):
    """Request-side rules: answers a request itself or lets it go on (``proceed``), now or
    later; ``offline`` answers it from the cache."""

    def admit(
        self, request: Request, info: RequestInfo, proceed: Callable[[], None], offline: OfflineAnswerer
    ) -> None: ...


def answer_unavailable(request: Request, info: RequestInfo, reason: str) -> None:
    """The answer when the cloud cannot be reached and nothing local can stand in: 503."""
    finish_with_status(request, 503, f"the cloud API server is unavailable: {reason}")


def path_refusal(info: RequestInfo) -> str:
    """Why a request's path is refused before it goes anywhere, or "": a ``.`` or ``..``
    segment once percent-decoded (a traversal, wherever it stands), or a namespace or name
    kube-apiserver's namer rejects (``IsValidPathSegmentName``: no ``%`` either), which it
    answers 400 as well. Such a request is never sent to the cloud nor looked up in the
    cache."""
    path = info.path
    if "/." in path and any(segment in (".", "..") for segment in path.split("/")):
        return f"the path {path!r} may not contain '.' or '..' segments"
    if info.is_resource_request:
        for what, value in (("namespace", info.namespace), ("name", info.name)):
            if "%" in value:
                return f"invalid resource {what} {value!r}: may not contain '%'"
    return ""


class _Accounting:
    """Counts one request in flight until it ends, then by its final code, and gives its
    flow-control slot back: however it ends (answered, client gone, upstream failed, a
    splice closed), once."""

    __slots__ = ("_held", "_open", "_request", "_series")

    def __init__(self, metrics: ProxyMetrics, info: RequestInfo, request: Request, held: Slot) -> None:
        self._series = metrics.series(info)
        self._request = request
        self._held = held
        self._open = True
        self._series.started()

    def finished(self) -> None:
        self.done(self._request.code)

    def lost(self, _: object) -> None:
        self.done("aborted")

    def done(self, code: int | str) -> None:
        if not self._open:
            return
        self._open = False
        self._held.release()
        self._series.finished(code)


class ProxyRoot(Resource):
    """The resource behind the proxy listeners (HTTP 10261 and HTTPS 10268)."""

    isLeaf = True

    def __init__(
        self,
        remote: RemoteProxy,
        upgrades: UpgradeSplicer,
        metrics: ProxyMetrics,
        unavailable: OfflineAnswerer = answer_unavailable,
        limiter: InFlightLimiter | None = None,
    ) -> None:
        super().__init__()
        self._limiter = limiter
        self._remote = remote
        self._upgrades = upgrades
        self._metrics = metrics
        self.unavailable = unavailable
        self._infos: dict[tuple[bytes, bytes, bytes | None], RequestInfo] = {}
        #: `path_refusal` of each remembered info.
        self._refusals: dict[RequestInfo, str] = {}
        #: Request-side rules run before routing (tenant isolation), or None.
        self.guard: RequestGuard | None = None

    def request_info(self, request: Request) -> RequestInfo:
        """The request's `RequestInfo`, resolved once per request line and User-Agent."""
        key = (request.method, request.uri, request.getHeader(b"user-agent"))
        info = self._infos.get(key)
        if info is None:
            info = parse_request_info(*key)
            if len(self._infos) >= REQUEST_INFO_MEMO:
                self._infos.clear()
                self._refusals.clear()
            self._infos[key] = info
        return info

    def render(self, request: Request) -> bytes | int:
        try:
            info = self.request_info(request)
        except Exception:  # the parser promises not to raise; stay up if it ever does
            _log.failure("request info failed for {uri!r}", uri=request.uri)
            return write_status(request, 400, "the request could not be understood")
        limiter = self._limiter
        slot = limiter.admit(info) if limiter is not None else EXEMPT
        accounting = _Accounting(self._metrics, info, request, slot if slot is not None else EXEMPT)
        when_ended(request, accounting.finished, accounting.lost)
        if slot is None:
            assert limiter is not None
            return limiter.reject(request)
        refusal = self._refusals.get(info)
        if refusal is None:
            refusal = self._refusals[info] = path_refusal(info)  # bounded with the infos
        if refusal:
            return write_status(request, 400, refusal)
        if self.guard is None:
            self._route(request, info, accounting)
            return NOT_DONE_YET
        try:
            self.guard.admit(request, info, lambda: self._route(request, info, accounting), self.unavailable)
        except Exception:
            _log.failure("error checking {method} {uri!r}", method=request.method, uri=request.uri)
            finish_with_status(request, 500, "internal error in yurthub; see its log")
        return NOT_DONE_YET

    def _route(self, request: Request, info: RequestInfo, accounting: _Accounting) -> None:
        try:
            if is_upgrade(request.requestHeaders):
                self._upgrades.handle(request, info, self.unavailable, accounting.done)
            else:
                self._remote.handle(request, info, self.unavailable)
        except Exception:
            _log.failure("error handling {method} {uri!r}", method=request.method, uri=request.uri)
            finish_with_status(request, 500, "internal error in yurthub; see its log")


def render_leaf(request: Any) -> None:
    """Have the site's one resource answer ``request`` (a `ProxyRequest` or a
    `yurthub.proxy.http11.LeanRequest`); an answer it returns is written here."""
    site = request.site = request.channel.site
    try:
        body = site.resource.render(request)
    except BaseException:
        request.processingFailed(Failure())
        return
    if body is NOT_DONE_YET:
        return
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


class ProxyRequest(Request):
    """A request that goes straight to the site's one (leaf) resource.

    `Site` would split and unquote every path segment to walk a resource tree, and set
    Server and Date headers that the cloud's answer replaces anyway: work thrown away on
    every proxied request. Nor are form bodies parsed into ``args``: a body is relayed as
    it came, and twisted.web's Content-Type parser raises on some header values (a
    ``\x85`` or ``\x0b`` in a POST's Content-Type ended the connection with an error
    logged, found by the fuzz tests).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)

    def process(self) -> None:
        render_leaf(self)


class ProxySite(Site):
    """A `Site` that does not log every request (metrics count them), never shows a
    traceback to a client, and knows its open connections so it can close them."""

    displayTracebacks = False
    noisy = False

    #: The request-head limits of `LimitedHTTPChannel` (set with the channel by `make_site`).
    limits: ChannelLimits | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_connections: set[Any] = set()
        self.spliced: set[Any] = set()
        self.on_refused: Callable[[str], None] = lambda reason: None

    def refused(self, reason: str) -> None:
        """A connection was cut by a channel limit (``slow`` or ``too_big``)."""
        self.on_refused(reason)

    def log(self, request: http.Request) -> None:
        pass

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        protocol = super().buildProtocol(addr)
        if protocol is None:
            return None
        self.open_connections.add(protocol)
        lost = protocol.connectionLost

        def connection_lost(reason: Any) -> None:
            self.open_connections.discard(protocol)
            lost(reason)

        protocol.connectionLost = connection_lost
        made = protocol.makeConnection

        def make_connection(transport: Any) -> None:
            if isinstance(transport, FileDescriptor):
                transport.SEND_LIMIT = SEND_LIMIT
            made(transport)

        protocol.makeConnection = make_connection
        return protocol

    def detach(self, channel: Any, transport: Any) -> Callable[[], None]:
        """A connection leaves twisted.web (an upgrade splice takes it over); it is still
        closed at shutdown. Returns what to call when the splice ends."""
        for protocol in list(self.open_connections):
            if protocol._channel is channel:
                self.open_connections.discard(protocol)
        self.spliced.add(transport)
        return lambda: self.spliced.discard(transport)

    def close_connections(self) -> None:
        """Drop every open client connection, spliced ones included (at shutdown)."""
        transports = [p._channel.transport for p in self.open_connections] + list(self.spliced)
        for transport in transports:
            if transport is None or getattr(transport, "disconnected", False):
                continue
            try:
                transport.abortConnection()
            except Exception:  # already half torn down (e.g. TLS shut down by the peer)
                _log.failure("closing a client connection at shutdown failed", level=LogLevel.debug)
        self.open_connections.clear()
        self.spliced.clear()


def make_site(
    root: Resource,
    *,
    timeout: float | None = 60 * 60,
    leaf: bool = False,
    limits: ChannelLimits | None = None,
    on_refused: Callable[[str], None] | None = None,
) -> ProxySite:
    """A `Site` for a listener: HTTP/1.1, and HTTP/2 when TLS negotiates it. With ``leaf``
    the root answers every path itself (`ProxyRequest`); with ``limits`` its HTTP/1.1
    connections are `LimitedHTTPChannel`s (``on_refused`` hears of every connection they
    cut). ``timeout`` is the idle time allowed between two requests of a connection."""
    site = ProxySite(root, timeout=timeout)
    if leaf:
        site.requestFactory = ProxyRequest
    if limits is not None:
        site.limits = limits
        site.protocol = limited_channel_protocol  # type: ignore[assignment]
    if on_refused is not None:
        site.on_refused = on_refused
    return site
