"""Shared test helpers: a yurthub built on port-0 listeners, raw HTTP clients, cleanup.

Everything listens on 127.0.0.1 port 0 and is torn down by the test's cleanups, so trial
sees a clean reactor after each test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from yurthub.config import parse_config
from yurthub.service import YurtHub


def hub_config(servers: list[str], **sections: Any) -> Any:
    """A config for a test yurthub on port-0 loopback listeners (secure proxy off)."""
    document: dict[str, Any] = {
        "nodeName": "edge-1",
        "servers": servers,
        "listen": {
            "proxy": "tcp:0:interface=127.0.0.1",
            "secureProxy": "",
            "hub": "tcp:0:interface=127.0.0.1",
        },
        # Fast probes, but two misses in a row before a backend is given up, so a busy test
        # machine does not send a test offline by accident.
        "healthCheck": {"intervalSeconds": 0.2, "timeoutSeconds": 2, "healthyThreshold": 1, "unhealthyThreshold": 2},
    }
    document.update(sections)
    return parse_config(document, "test")


async def start_hub(
    test: TestCase, servers: list[str], *, credentials: Any = None, store: Any = None, **sections: Any
) -> YurtHub:
    """Start a yurthub in this process, caching in a fresh directory unless ``cache`` says
    otherwise; stopped by the test's cleanup."""
    sections.setdefault("cache", {"dir": os.path.abspath(test.mktemp())})
    hub = YurtHub(hub_config(servers, **sections), reactor, credentials=credentials, store=store)
    hub.startService()
    test.addCleanup(hub.stopService)
    await hub.started()
    return hub


async def listen_site(test: TestCase, root: Resource) -> int:
    """Serve ``root`` on 127.0.0.1 port 0 until the test ends; returns the port."""
    site = Site(root)
    site.noisy = False
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    test.addCleanup(port.stopListening)
    return int(port.getHost().port)


def make_agent(test: TestCase) -> Agent:
    """An HTTP client whose connections are closed when the test ends."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    test.addCleanup(pool.closeCachedConnections)
    return Agent(reactor, pool=pool)


async def fetch(test: TestCase, method: bytes, url: str, headers: dict[bytes, list[bytes]] | None = None,
                body: bytes | None = None) -> tuple[int, Headers, bytes]:
    """One request; returns (code, headers, whole body)."""
    from yurthub.proxy.remote import BytesProducer

    agent = make_agent(test)
    response = await agent.request(method, url.encode(), Headers(headers or {}), BytesProducer(body) if body is not None else None)
    data = await readBody(response)
    return response.code, response.headers, data


class RawClient(Protocol):
    """A raw TCP client that records what arrives and when the connection ends."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._waiters: list[tuple[Callable[[bytes], bool], defer.Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data
        for check, d in list(self._waiters):
            if check(self.received):
                self._waiters.remove((check, d))
                d.callback(self.received)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        for _, d in self._waiters:
            d.errback(AssertionError(f"closed while waiting; got {self.received!r}"))
        self._waiters = []
        self.closed.callback(None)

    def wait_for(self, check: Callable[[bytes], bool], timeout: float = 5.0) -> defer.Deferred[bytes]:
        """Fires with everything received once ``check`` holds for it."""
        d: defer.Deferred[bytes] = defer.Deferred()
        if check(self.received):
            d.callback(self.received)
            return d
        self._waiters.append((check, d))
        return d.addTimeout(timeout, reactor)


async def raw_connect(test: TestCase, port: int) -> RawClient:
    """A raw connection to 127.0.0.1:port, aborted when the test ends."""
    client = RawClient()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: client))

    def close() -> Any:
        if client.transport is not None and client.transport.connected:  # type: ignore[attr-defined]
            client.transport.abortConnection()  # type: ignore[attr-defined]
            return client.closed
        return None

    test.addCleanup(close)
    return client


def sleep(seconds: float) -> defer.Deferred[None]:
    """A Deferred that fires after ``seconds`` of real time."""
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    return d


async def wait_until(check: Callable[[], Any], timeout: float = 15.0, what: str = "", every: float = 0.01) -> float:
    """Poll ``check`` every ``every`` seconds until it holds; returns the seconds it took,
    fails after ``timeout`` naming ``what``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        await sleep(every)
    return time.monotonic() - started
