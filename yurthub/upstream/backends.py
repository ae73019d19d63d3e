"""Cloud backends: one API-server address each, with a health flag.

The health checker flips the flag from its probes, and the remote proxy flips it to
unhealthy at once when a real request cannot connect or fails its TLS handshake. Which
backend a request goes to is `yurthub.upstream.failover`'s business.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from twisted.logger import Logger
from zope.interface import implementer

from yurthub.interfaces import IBackend

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
        #: Why the backend is in its state: the last change's reason ("" at start).
        self.reason = ""
        self._on_change = on_change

    @property
    def healthy(self) -> bool:
        return self._healthy

    def set_healthy(self, healthy: bool, reason: str = "") -> None:
        """Record a new health state; a change is logged once (not per request)."""
        if healthy == self._healthy:
            return
        self._healthy = healthy
        self.reason = reason
        log = _log.info if healthy else _log.warn
        log(
            "backend {url} is now {state}{why}",
            url=self.url,
            state="healthy" if healthy else "unhealthy",
            why=f": {reason}" if reason else "",
        )
        if self._on_change is not None:
            self._on_change(self)

    def retire(self) -> None:
        """The backend is no longer used (the node moved to another cluster): its later
        health changes are not reported to anyone."""
        self._on_change = None

    def __repr__(self) -> str:
        return f"<Backend {self.url} {'healthy' if self._healthy else 'unhealthy'}>"
