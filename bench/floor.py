"""The floors of the proxy-list benchmark: what yurthub's HTTP stack costs without yurthub.

``python -m bench.floor --port P --file F`` runs one twisted.web `Site` on 127.0.0.1 that
answers every GET with the bytes of ``F`` (from memory, ``application/json``, no access
log): no upstream, no cache, no request routing. ``--upstream URL`` instead relays every
request to ``URL`` with yurthub's own HTTP parts (the lean server of its plain listener,
`yurthub.proxy.http11`, its reactor dispatch and `yurthub.upstream.http1.UpstreamClient`)
and nothing else: no request info, flow control, metrics, cache, filters or failover. Their rows in the proxy-list table say how much of
the gap to nginx is the HTTP stack's and how much is yurthub's own work. One process, one
thread, like yurthub.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


class _Static(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self._body = body

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 - twisted.web's name
        request.setHeader(b"content-type", b"application/json")
        return self._body


class _Body(Protocol):
    """Writes an upstream body to the request as it comes, then finishes it."""

    def __init__(self, request: Request) -> None:
        self.request = request

    def connectionMade(self) -> None:  # noqa: N802
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.request.write(data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if not self.request.finished and not getattr(self.request, "_disconnected", False):
            self.request.unregisterProducer()
            self.request.finish()


class _Relay(Resource):
    """Every request to one backend through yurthub's client, headers as they are."""

    isLeaf = True

    def __init__(self, upstream: str) -> None:
        super().__init__()
        from yurthub.upstream.backends import Backend
        from yurthub.upstream.endpoints import BackendEndpointFactory
        from yurthub.upstream.http1 import UpstreamClient

        self._backend = Backend(upstream)
        endpoints = BackendEndpointFactory(reactor, None, with_client_certificate=False)  # type: ignore[arg-type]
        self._client = UpstreamClient(reactor, endpoints)

    def render(self, request: Request) -> Any:
        headers = request.requestHeaders
        headers.setRawHeaders(b"host", [self._backend.host_header])
        sent = self._client.request_to(self._backend, request.method, request.uri, headers, None)

        def answered(response: Any) -> None:
            request.setResponseCode(response.code)
            if isinstance(response.length, int):
                response.headers.setRawHeaders(b"content-length", [b"%d" % response.length])
            request.responseHeaders = response.headers
            response.deliverBody(_Body(request))

        sent.addCallbacks(answered, lambda failure: request.loseConnection())
        return NOT_DONE_YET


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, help="serve these bytes from memory")
    parser.add_argument("--upstream", help="relay to this http:// URL with yurthub's HTTP parts")
    args = parser.parse_args(argv)
    if (args.file is None) == (args.upstream is None):
        parser.error("give exactly one of --file and --upstream")
    site: Any
    if args.upstream:
        from yurthub.dispatch import dispatch_without_log_context
        from yurthub.proxy.channel import ChannelLimits
        from yurthub.proxy.http11 import LeanFactory
        from yurthub.proxy.root import make_site

        dispatch_without_log_context(reactor)
        site = LeanFactory(make_site(_Relay(args.upstream), leaf=True, limits=ChannelLimits()))
    else:
        site = Site(_Static(args.file.read_bytes()))
        site.log = lambda request: None  # type: ignore[method-assign]
        site.noisy = False
    reactor.listenTCP(args.port, site, backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined, arg-type]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
