"""Helpers for cache and offline tests: a cache manager on the in-memory store, answers
fed to it as if they had come from the cloud, and local answers rendered in memory
through a real twisted.web `Request`."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from yurthub.cache.manager import CacheManager
from yurthub.metrics import ProxyMetrics
from yurthub.proxy.local import LocalProxy
from yurthub.requestinfo import parse_request_info
from yurthub.testing.memory_store import MemoryObjectStore

AGENTS = ("kubelet", "kube-proxy", "coredns", "flanneld")


def make_manager(agents: tuple[str, ...] = AGENTS) -> CacheManager:
    """A manager on a `MemoryObjectStore` that decodes answers synchronously."""
    return CacheManager(MemoryObjectStore(), agents, ProxyMetrics(), run_in_thread=defer.maybeDeferred)


def pod(name: str, namespace: str = "default", node: str = "edge-1", rv: int = 10, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": str(rv),
            "uid": f"uid-{name}",
            "labels": labels,
            "creationTimestamp": "2026-11-26T08:00:00Z",
        },
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{"name": "c", "ready": True, "restartCount": 0}],
        },
    }


def feed_answer(manager: CacheManager, method: bytes, path: bytes, body: Any, agent: bytes = b"kubelet/v1.31.0",
                *, chunks: int = 1) -> None:
    """Pass ``body`` (an object or bytes) through the tee of a request as a 200 answer."""
    info = parse_request_info(method, path, agent)
    request = Request(DummyChannel())
    request.requestHeaders = Headers({b"accept": [b"application/json"]})
    tee = manager.tee_for(info, request)
    assert tee is not None, f"{method!r} {path!r} is not cached"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert tee.start(200, b"application/json")
    step = max(1, len(data) // chunks)
    for i in range(0, len(data), step):
        tee.feed(data[i : i + step])
    tee.finish()


def pod_list(*pods: dict[str, Any], rv: int = 100) -> dict[str, Any]:
    items = [{k: v for k, v in p.items() if k not in ("kind", "apiVersion")} for p in pods]
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}, "items": items}


class Answer:
    """A local answer as the client saw it."""

    def __init__(self, raw: bytes) -> None:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.code = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()
        if self.headers.get(b"transfer-encoding") == b"chunked":
            out, rest = b"", body
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    break
                out, rest = out + rest[:size], rest[size + 2 :]
            body = out
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def ask(local: LocalProxy, method: bytes, path: bytes, *, agent: bytes = b"kubelet/v1.31.0",
        headers: dict[bytes, list[bytes]] | None = None, body: bytes = b"") -> tuple[Answer | None, Request]:
    """Render an offline answer in memory; (None, request) while it is still open."""
    channel = DummyChannel()
    request = Request(channel)
    request.method = method
    request.uri = path
    request.path = path.split(b"?", 1)[0]
    request.clientproto = b"HTTP/1.1"
    request.requestHeaders = Headers({b"user-agent": [agent], **(headers or {})})
    request.content = BytesIO(body)
    local.answer(request, parse_request_info(method, path, agent), "test")
    if not request.finished:
        return None, request
    return Answer(channel.transport.written.getvalue()), request


def make_local(manager: CacheManager | None = None) -> tuple[LocalProxy, CacheManager, Clock]:
    manager = manager or make_manager()
    clock = Clock()
    clock.advance(1_795_680_000)  # 2026-11-26
    return LocalProxy(manager, clock), manager, clock
