"""The framework floor of the proxy-list benchmark: twisted.web serving the list itself.

``python -m bench.floor --port P --file F`` runs one twisted.web `Site` on 127.0.0.1 that
answers every GET with the bytes of ``F`` (from memory, ``application/json``, no access
log): no upstream, no cache, no request routing. It is what yurthub's HTTP stack costs
before yurthub does anything, so its row in the proxy-list table says how much of the gap
to nginx is Twisted's and how much is yurthub's own. One process, one thread, like
yurthub.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class _Static(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self._body = body

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 - twisted.web's name
        request.setHeader(b"content-type", b"application/json")
        return self._body


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True)
    args = parser.parse_args(argv)
    site = Site(_Static(args.file.read_bytes()))
    site.log = lambda request: None  # type: ignore[method-assign]
    site.noisy = False
    reactor.listenTCP(args.port, site, backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined, arg-type]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
