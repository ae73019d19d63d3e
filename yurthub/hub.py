"""The hub listener (default 127.0.0.1:10267): health, readiness and metrics.

``GET /v1/healthz`` answers 200 ``OK`` while the process serves. ``GET /v1/readyz`` answers
200 when every readiness check holds, else 503 with one line per check saying which failed
and why (``?verbose`` lists the passing ones too). ``GET /metrics`` is the Prometheus text
exposition of the process's registry. ``POST /v1/token`` gives the certificate manager a new
bootstrap token and ``PUT /v1/cluster`` moves the node to another cluster: both answer
loopback callers only (403 otherwise), whatever address the listener is bound to.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from yurthub.interfaces import IReadinessCheck
from yurthub.metrics import CONTENT_TYPE_LATEST, ProxyMetrics
from yurthub.proxy.status import status_body
from yurthub.upstream.backends import Backend


def _plain(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return text.encode()


class Healthz(Resource):
    """``/v1/healthz``: the process is alive and its reactor turns."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        return _plain(request, 200, "OK")


class Readyz(Resource):
    """``/v1/readyz``: every readiness check holds (200) or which does not (503)."""

    isLeaf = True

    def __init__(self, checks: Sequence[IReadinessCheck]) -> None:
        super().__init__()
        self.checks = list(checks)

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        results = [(check.name, *check.check()) for check in self.checks]
        ready = all(ok for _, ok, _ in results)
        # A bare "?verbose" (no "=") is what kube-apiserver accepts; twisted drops it from args.
        query = request.uri.partition(b"?")[2]
        verbose = any(part.partition(b"=")[0] == b"verbose" for part in query.split(b"&"))
        lines = [
            f"[+]{name} ok" + (f": {detail}" if detail else "") if ok else f"[-]{name} failed: {detail}"
            for name, ok, detail in results
            if verbose or not ok
        ]
        lines.append("readyz check passed" if ready else "readyz check failed")
        return _plain(request, 200 if ready else 503, "\n".join(lines) + "\n")


class MetricsPage(Resource):
    """``/metrics``: Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics: ProxyMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return self._metrics.render()


@implementer(IReadinessCheck)
class BackendsReachable:
    """Ready while at least one cloud backend is healthy; the detail lists them all."""

    name = "cloud"

    def __init__(self, backends: Sequence[Backend], offline_ok: Callable[[], bool] = lambda: False) -> None:
        self._backends = list(backends)
        self._offline_ok = offline_ok

    def use(self, backends: Sequence[Backend]) -> None:
        """Report on these backends from now on (the node moved to another cluster)."""
        self._backends = list(backends)

    def check(self) -> tuple[bool, str]:
        online = any(b.healthy for b in self._backends)
        states = ", ".join(_state(b) for b in self._backends)
        if online:
            return True, states
        if self._offline_ok():
            return True, "no healthy backend, answering from the cache: " + states
        return False, "no healthy backend: " + states


def _state(backend: Backend) -> str:
    """``url healthy`` or ``url unhealthy (why)``."""
    if backend.healthy:
        return f"{backend.url} healthy"
    return f"{backend.url} unhealthy ({backend.reason})" if backend.reason else f"{backend.url} unhealthy"


@implementer(IReadinessCheck)
class StoreHealthy:
    """Fails while the cache cannot write (disk full or failing, writer behind); proxying
    goes on meanwhile and the next list repairs what was missed."""

    name = "cache"

    def __init__(self, store: Any) -> None:
        self._store = store

    def check(self) -> tuple[bool, str]:
        health = self._store.health
        return (not health.degraded), health.detail()


@implementer(IReadinessCheck)
class Flag:
    """A readiness check that holds once something has happened (e.g. listeners bound)."""

    def __init__(self, name: str, waiting_for: str) -> None:
        self.name = name
        self.ok = False
        self._waiting_for = waiting_for

    def check(self) -> tuple[bool, str]:
        return self.ok, "" if self.ok else self._waiting_for


class TokenPage(Resource):
    """``POST /v1/token`` with ``{"bootstrapToken": "<id>.<secret>"}`` (OpenYurt's
    ``{"jointoken": ...}`` accepted too): a new bootstrap token for the certificate manager.
    200 when taken, 400 with the reason when it is malformed, 404 without a manager, 403
    for a caller not on loopback (a token lets its holder join the cluster as a node)."""

    isLeaf = True

    def __init__(self, certificates: Any) -> None:
        super().__init__()
        #: Replaced when the node moves to another cluster.
        self.certificates = certificates

    def render_POST(self, request: Request) -> bytes:  # noqa: N802
        if not from_loopback(request):
            return _plain(request, 403, "POST /v1/token is accepted from loopback only")
        if self.certificates is None:
            return _plain(request, 404, "the certificate manager is not running (certificates.certFile is set)")
        try:
            document = json.loads(request.content.read() if request.content is not None else b"")
            token = document.get("bootstrapToken") or document.get("jointoken") or ""
            if not isinstance(token, str) or not token:
                raise ValueError('expected {"bootstrapToken": "<id>.<secret>"}')
            self.certificates.set_bootstrap_token(token)
        except Exception as e:  # malformed JSON or token: the reason, in one line
            return _plain(request, 400, f"bad token request: {e}")
        return _plain(request, 200, "bootstrap token set")


def from_loopback(request: Request) -> bool:
    """Whether the request came over loopback (127.0.0.0/8, ::1, an IPv4-mapped loopback
    address) or a UNIX socket: from a process on this node."""
    address = request.getClientAddress()
    if isinstance(address, UNIXAddress):  # only local processes can connect
        return True
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _status(request: Request, code: int, message: str, *, field: str = "") -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    if code < 400:
        return json.dumps(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "message": message, "code": code}
        ).encode()
    details = {"causes": [{"reason": "FieldValueInvalid", "field": field, "message": message}]} if field else None
    return status_body(code, message, details=details)


class ClusterPage(Resource):
    """``PUT /v1/cluster`` with ``{"servers": [...], "bootstrapToken": "...",
    "caCertHashes": [...]}``: move the node to that cluster (`yurthub.migration`). The
    request is held until the node has switched (200 ``Status`` Success) or the migration
    failed and the node stays (a failure ``Status``: 502 B refused or unreachable, 504 no
    answer in time, 409 another migration under way or certificates not managed). A bad
    field is 400 naming it, a caller not on loopback 403; both change nothing."""

    isLeaf = True

    def __init__(self, migration: Any) -> None:
        super().__init__()
        self._migration = migration

    def render_PUT(self, request: Request) -> bytes | int:  # noqa: N802
        from yurthub.migration import InvalidField, MigrationError, parse_cluster_request

        if not from_loopback(request):
            return _status(request, 403, "PUT /v1/cluster is accepted from loopback only")
        if self._migration is None:
            return _status(request, 404, "migration needs yurthub to manage its certificates")
        try:
            target = parse_cluster_request(request.content.read() if request.content is not None else b"")
        except InvalidField as e:
            return _status(request, 400, f"invalid cluster request: {e}", field=e.field)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(code: int, message: str) -> None:
            if not gone:
                request.write(_status(request, code, message))
                request.finish()

        def failed(failure: Any) -> None:
            if failure.check(MigrationError):
                answer(failure.value.code, str(failure.value))
            else:
                answer(500, f"migration failed: {failure.getErrorMessage()}")

        self._migration.migrate(target).addCallbacks(lambda text: answer(200, text), failed)
        return NOT_DONE_YET


def make_hub_root(
    metrics: ProxyMetrics, checks: Sequence[IReadinessCheck], certificates: Any = None, migration: Any = None
) -> Resource:
    """The hub listener's resource tree."""
    root = Resource()
    v1 = Resource()
    root.putChild(b"v1", v1)
    v1.putChild(b"healthz", Healthz())
    v1.putChild(b"readyz", Readyz(checks))
    v1.putChild(b"token", TokenPage(certificates))
    v1.putChild(b"cluster", ClusterPage(migration))
    root.putChild(b"metrics", MetricsPage(metrics))
    return root
