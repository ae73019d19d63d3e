"""Cloud backends and the selectors that order them for each request.

A `Backend` is one API-server address with a health flag that the health checker (and,
later, passive failure detection) flips. A selector returns, per request, the healthy
backends in the order to try them: `RoundRobinSelector` rotates the start point per request
so new requests spread evenly, `PrioritySelector` keeps the configured order so the first
healthy server gets everything.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from twisted.logger import Logger
from zope.interface import implementer

from yurthub.interfaces import IBackend, IUpstreamSelector
from yurthub.requestinfo import RequestInfo

_log = Logger()


@implementer(IBackend)
class Backend:
    """One cloud API server: its URL, host, port and whether it is healthy right now."""

    def __init__(self, url: str, *, on_change: Callable[[Backend], None] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a server URL: {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{self.scheme}://{netloc}:{self.port}"
        self.url_bytes = self.url.encode("ascii")
        self.host_header = f"{netloc}:{self.port}".encode("ascii")
        self._healthy = True
        self._on_change = on_change

    @property
    def healthy(self) -> bool:
        return self._healthy

    def set_healthy(self, healthy: bool, reason: str = "") -> None:
        """Record a new health state; a change is logged once (not per request)."""
        if healthy == self._healthy:
            return
        self._healthy = healthy
        _log.info(
            "backend {url} is now {state}{why}",
            url=self.url,
            state="healthy" if healthy else "unhealthy",
            why=f": {reason}" if reason else "",
        )
        if self._on_change is not None:
            self._on_change(self)

    def __repr__(self) -> str:
        return f"<Backend {self.url} {'healthy' if self._healthy else 'unhealthy'}>"


@implementer(IUpstreamSelector)
class PrioritySelector:
    """Everything goes to the first healthy backend in configured order; the rest are
    the fallbacks, tried in order."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = list(backends)

    def backends_for(self, info: RequestInfo | None = None) -> list[Backend]:
        return [b for b in self.backends if b.healthy]

    def any_healthy(self) -> bool:
        return any(b.healthy for b in self.backends)


@implementer(IUpstreamSelector)
class RoundRobinSelector:
    """Each new request starts at the next backend in turn, skipping unhealthy ones; the
    others follow as fallbacks."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = list(backends)
        self._turn = itertools.count()

    def backends_for(self, info: RequestInfo | None = None) -> list[Backend]:
        healthy = [b for b in self.backends if b.healthy]
        if len(healthy) < 2:
            return healthy
        start = next(self._turn) % len(healthy)
        return healthy[start:] + healthy[:start]

    def any_healthy(self) -> bool:
        return any(b.healthy for b in self.backends)


def make_selector(mode: str, backends: Sequence[Backend]) -> PrioritySelector | RoundRobinSelector:
    """The selector for a ``loadBalancing`` mode (``rr`` or ``priority``)."""
    if mode == "priority":
        return PrioritySelector(backends)
    if mode == "rr":
        return RoundRobinSelector(backends)
    raise ValueError(f"unknown load-balancing mode {mode!r}")
