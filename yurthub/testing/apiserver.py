"""A simulated kube-apiserver: in-memory, pure Twisted, good enough for kubectl.

`SimulatedAPIServer` serves the core resources yurthub deals with (pods, services,
endpoints, configmaps, secrets, namespaces, nodes, serviceaccounts, events,
endpointslices, leases, certificatesigningrequests) with kube-apiserver's JSON wire
behaviour: discovery, get/list/watch with label and field selectors, create/update/
patch/delete with ``Status`` errors, Tables for ``kubectl get``, pod logs, exec over
WebSockets and ServiceAccount token requests. Optional TLS asks for (but does not
require) client certificates signed by the test CA, and records who called.

For tests it adds fault controls: `SimulatedAPIServer.blackhole`, `delay`, `fail`,
`cut_streams`, `stop_listening`/`start_listening` (the process dying and coming back on
the same port, state kept) and direct store access (`create`, `update`, `patch`,
`delete`, `get`, `list`) that emits watch events like API writes do.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import builtins
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import yaml
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from yurthub.kube.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from yurthub.kube.selectors import FieldSelector, LabelSelector, SelectorError
from yurthub.testing.exec import CHANNEL_PROTOCOLS, ExecSession, handshake_response
from yurthub.testing.objects import (
    DEFAULT_RESOURCE_TYPES,
    ObjectStore,
    ResourceType,
    StatusError,
    StoredObject,
    dumps,
    format_timestamp,
)
from yurthub.testing.pki import TestPKI
from yurthub.testing.responses import Representation, encode_list, encode_object, negotiate
from yurthub.testing.streams import LogStream, ResponseStream, WatchStream
from yurthub.testing.upgrade import ConnectionTrackingFactory, RawEchoProtocol, take_over_connection

__all__ = ["RequestRecord", "SimulatedAPIServer", "StatusError"]

JSONDict = dict[str, Any]

_log = Logger()

REQUEST_LOG_SIZE = 10_000

_PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
    "application/strategic-merge-patch+json": "strategic",
}


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server received it.

    ``path`` includes the query string; ``headers`` maps lower-case names to all their
    values; ``user`` is the verified client certificate's CN, else ``token:<bearer>``,
    else None; ``groups`` are the certificate's organisations.
    """

    method: str
    path: str
    headers: dict[str, list[str]]
    user: str | None
    body: bytes
    groups: tuple[str, ...] = field(default=())

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None


class _QuietSite(Site):
    """A Site that writes no access log: the simulator is driven hard by benchmarks."""

    noisy = False

    def log(self, request: Any) -> None:
        """Do not log the request."""


class _APIResource(Resource):
    """The single resource behind every path; routing happens in the server."""

    isLeaf = True

    def __init__(self, server: SimulatedAPIServer) -> None:
        super().__init__()
        self._server = server

    def render(self, request: Request) -> bytes | int:
        """Hand the request to the server."""
        return self._server._receive(request)


def _arg(request: Request, name: str) -> str | None:
    values = (request.args or {}).get(name.encode())
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


def _args(request: Request, name: str) -> list[str]:
    return [v.decode("utf-8", "replace") for v in (request.args or {}).get(name.encode(), [])]


def _flag(request: Request, name: str) -> bool:
    return (_arg(request, name) or "").lower() in ("true", "1")


def _header(request: Request, name: str) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else (value or "")


def _media_type(request: Request) -> str:
    return _header(request, "content-type").split(";")[0].strip().lower()


def _bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def _not_found_path() -> StatusError:
    return StatusError(404, "NotFound", "the server could not find the requested resource")


def _method_not_allowed(method: str) -> StatusError:
    return StatusError(405, "MethodNotAllowed",
                       f"the server does not allow this method on the requested resource ({method})")


def _encode_continue(rv: int, namespace: str, name: str) -> str:
    token = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": f"{namespace}/{name}\x00"})
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        start = json.loads(raw)["start"].rstrip("\x00")
        namespace, _, name = start.partition("/")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise _bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion"
        ) from None
    return namespace, name


class SimulatedAPIServer:
    """An in-memory kube-apiserver answering kubectl, client-go and the Python client.

    ``reactor`` provides time (and TCP for `start`); nothing else touches the global
    reactor. ``tls`` is a `TestPKI`: the server then speaks HTTPS with a certificate for
    127.0.0.1/localhost/::1 and verifies optional client certificates against that CA.
    ``seed`` fills the store with the demo cluster (`yurthub.testing.demo`).
    ``bookmark_interval`` is the period of watch BOOKMARK events, ``log_interval`` that
    of lines in followed logs; ``history_limit`` bounds each resource's watch history.
    With ``require_namespaces`` a create into a missing namespace is 404, as in a real
    cluster (off by default so tests need not create namespaces first). ``http2`` lets TLS
    clients negotiate h2 (exec and raw upgrades then need HTTP/1.1 connections).
    """

    def __init__(
        self,
        reactor: Any,
        tls: TestPKI | None = None,
        seed: bool = False,
        *,
        version: str = "v1.31.0",
        bookmark_interval: float = 60.0,
        log_interval: float = 1.0,
        history_limit: int = 1000,
        require_namespaces: bool = False,
        resource_types: Iterable[ResourceType] = DEFAULT_RESOURCE_TYPES,
        http2: bool = False,
    ) -> None:
        self._reactor = reactor
        self.store = ObjectStore(reactor, resource_types, history_limit=history_limit)
        self.tls = tls
        self.version = version
        self.bookmark_interval = bookmark_interval
        self.log_interval = log_interval
        self.require_namespaces = require_namespaces
        self.healthy = True
        self.requests: list[RequestRecord] = []
        self.csr_auto_approve = False
        #: When set, certificates signed by `sign_csr` live this many seconds whatever the
        #: CSR's ``spec.expirationSeconds`` asks (tests of rotation want short lives).
        self.csr_lifetime: float | None = None
        #: When set, a created CSR gets a ``Denied`` condition (reason ``SimulatedDeny``)
        #: instead of being signed.
        self.csr_deny = False
        self.server_cert_pem: bytes | None = None
        self._resource = _APIResource(self)
        self._site = _QuietSite(self._resource, reactor=reactor)
        self._connections = ConnectionTrackingFactory(
            self._site, (b"h2", b"http/1.1") if http2 else (b"http/1.1",))
        self._connections.noisy = False
        self._listen_factory: Any = self._connections
        if tls is not None:
            cert_pem, key_pem = tls.issue_server(["127.0.0.1", "localhost", "::1"])
            self.server_cert_pem = cert_pem
            private = PrivateCertificate.loadPEM(cert_pem + key_pem)
            options = CertificateOptions(
                privateKey=private.privateKey.original,
                certificate=private.original,
                verify=True,
                caCerts=[Certificate.loadPEM(tls.ca_cert_pem).original],
                requireCertificate=False,
            )
            self._listen_factory = TLSMemoryBIOFactory(options, False, self._connections)
            self._listen_factory.noisy = False
        self._port: IListeningPort | None = None
        self._host = "127.0.0.1"
        self._port_number = 0
        self._streams: dict[ResponseStream, None] = {}
        self._exec_sessions: dict[ExecSession, None] = {}
        self._blackholed = False
        self._parked: dict[Request, None] = {}
        self._delays: dict[str, float] = {}
        self._delayed: dict[Request, IDelayedCall] = {}
        self._failures: dict[str, list[Any]] = {}
        if seed:
            from yurthub.testing.demo import seed_demo_objects

            seed_demo_objects(self)

    # -- listening ------------------------------------------------------------

    def resource(self) -> IResource:
        """The twisted.web resource serving the API (usable in memory, without listening)."""
        return self._resource

    def protocol_factory(self) -> ConnectionTrackingFactory:
        """The plaintext HTTP factory whose connections the server tracks and can upgrade."""
        return self._connections

    @property
    def port(self) -> int:
        """The TCP port the server listens (or last listened) on."""
        return self._port_number

    @property
    def host(self) -> str:
        """The address the server listens (or last listened) on."""
        return self._host

    @property
    def url(self) -> str:
        """``http(s)://<host>:<port>`` of the listener."""
        scheme = "https" if self.tls is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._port_number}"

    @property
    def listening(self) -> bool:
        """True while the server accepts connections."""
        return self._port is not None

    def start(self, description: str = "tcp:0:interface=127.0.0.1") -> defer.Deferred[Any]:
        """Listen on the endpoint ``description``; the Deferred fires with the server.

        Raises ``RuntimeError`` when the server is listening already.
        """
        if self._port is not None:
            raise RuntimeError(f"the simulated apiserver already listens on {self.url}")
        endpoint = serverFromString(self._reactor, description)
        return self._listen(endpoint)

    def _listen(self, endpoint: Any) -> defer.Deferred[Any]:
        def listening(port: IListeningPort) -> SimulatedAPIServer:
            self._port = port
            address: Any = port.getHost()
            self._host = address.host
            self._port_number = address.port
            return self

        d: defer.Deferred[Any] = endpoint.listen(self._listen_factory)
        return d.addCallback(listening)

    def start_listening(self) -> defer.Deferred[Any]:
        """Listen again on the same address and port as before `stop_listening`."""
        if self._port is not None:
            return defer.succeed(self)
        if not self._port_number:
            raise RuntimeError("start_listening() needs an earlier start()")
        endpoint_type = TCP6ServerEndpoint if ":" in self._host else TCP4ServerEndpoint
        return self._listen(endpoint_type(self._reactor, self._port_number,
                                          interface=self._host))

    def stop_listening(self) -> defer.Deferred[None]:
        """Stop accepting and drop every open connection, as if the process died.

        In-flight requests, watches and exec sessions are aborted; objects and the
        resourceVersion are kept. Fires when the port is closed and the connections gone.
        """
        port, self._port = self._port, None
        stopped: defer.Deferred[Any] = (
            defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
        )
        for stream in list(self._streams):
            stream.abort()
        for session in list(self._exec_sessions):
            session.abort()
        self._drop_waiting()
        self._connections.abort_all()
        gone = defer.gatherResults([stopped, self._connections.when_idle()],
                                   consumeErrors=True)
        return gone.addCallback(lambda _: None)

    def stop(self) -> defer.Deferred[None]:
        """Stop everything for test cleanup: listener, connections, streams, timers."""
        for stream in list(self._streams):
            stream.abort()
        self._blackholed = False
        self._delays.clear()
        return self.stop_listening()

    def _drop_waiting(self) -> None:
        for call in self._delayed.values():
            if call.active():
                call.cancel()
        self._delayed.clear()
        self._parked.clear()

    # -- fault controls -------------------------------------------------------

    def blackhole(self, enabled: bool = True) -> None:
        """Accept connections but answer nothing; turned off, the held requests are served."""
        self._blackholed = enabled
        if not enabled:
            parked, self._parked = list(self._parked), {}
            for request in parked:
                self._serve_later(request)

    def delay(self, prefix: str, seconds: float) -> None:
        """Delay answers to paths starting with ``prefix`` by ``seconds`` (0 removes it)."""
        if seconds > 0:
            self._delays[prefix] = seconds
        else:
            self._delays.pop(prefix, None)

    def clear_delays(self) -> None:
        """Remove every delay."""
        self._delays.clear()

    def fail(self, prefix: str, code: int = 500, reason: str = "InternalError",
             count: int | None = None) -> None:
        """Answer requests to paths starting with ``prefix`` with a ``code`` Status error.

        ``count`` limits how many requests fail (None: until `clear_failures`).
        """
        self._failures[prefix] = [code, reason, count]

    def clear_failures(self) -> None:
        """Stop failing requests."""
        self._failures.clear()

    def set_healthy(self, healthy: bool) -> None:
        """Make ``/healthz``, ``/livez`` and ``/readyz`` answer 200 ``ok`` or 500."""
        self.healthy = healthy

    def cut_streams(self) -> None:
        """Abort every open watch, followed log, exec session and upgraded connection."""
        for stream in list(self._streams):
            stream.abort()
        for session in list(self._exec_sessions):
            session.abort()
        for connection in self._connections.connections:
            if connection.upgraded:
                connection.abort()

    @property
    def open_streams(self) -> int:
        """How many watches and followed logs are open."""
        return len(self._streams)

    @property
    def open_connections(self) -> int:
        """How many client connections are open."""
        return len(self._connections.connections)

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        del self.requests[:]

    # -- direct store access --------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion."""
        return self.store.resource_version

    def resource_type(self, resource: str, group: str | None = None,
                      version: str | None = None) -> ResourceType:
        """Find a served resource by plural, singular, kind or short name.

        ``group``/``version`` None means "any" (the core group wins a tie). Raises
        ``KeyError`` when nothing matches.
        """
        wanted = resource.lower()
        found = [
            t for t in self.store.resource_types
            if wanted in (t.plural, t.singular, t.kind.lower(), *t.short_names)
            and (group is None or t.group == group)
            and (version is None or t.version == version)
        ]
        if not found:
            raise KeyError(f"no served resource {resource!r} (group={group!r})")
        found.sort(key=lambda t: t.group != "")
        return found[0]

    def _type_of(self, obj: JSONDict) -> ResourceType:
        resource = self.store.resource_type_for(obj.get("apiVersion", ""), obj.get("kind", ""))
        if resource is None:
            raise ValueError(
                f"unknown apiVersion/kind {obj.get('apiVersion')!r}/{obj.get('kind')!r}"
            )
        return resource

    def create(self, obj: JSONDict) -> JSONDict:
        """Store a new object (apiVersion and kind choose the resource) and return it.

        Namespaced objects without a namespace go to ``default``. Emits ADDED. Raises
        `StatusError` (409 AlreadyExists, 422 Invalid) like an API create.
        """
        resource = self._type_of(obj)
        body: JSONDict = json.loads(json.dumps(obj))
        if resource.namespaced:
            body.setdefault("metadata", {}).setdefault("namespace", "default")
        stored = self.store.create(resource, body)
        self._after_create(resource, stored)
        return stored.copy()

    def update(self, obj: JSONDict, *, check_resource_version: bool = False) -> JSONDict:
        """Replace a stored object (status included) and return it; emits MODIFIED.

        With ``check_resource_version`` a stale ``metadata.resourceVersion`` is a 409
        Conflict; raises `StatusError` 404 when the object does not exist.
        """
        resource = self._type_of(obj)
        body: JSONDict = json.loads(json.dumps(obj))
        if resource.namespaced:
            body.setdefault("metadata", {}).setdefault("namespace", "default")
        expected = None
        if check_resource_version and body["metadata"].get("resourceVersion"):
            expected = int(body["metadata"]["resourceVersion"])
        return self.store.update(resource, body, expected_rv=expected).copy()

    def patch(self, resource: str, namespace: str | None, name: str, patch: Any, *,
              patch_type: str = "merge", group: str | None = None,
              version: str | None = None) -> JSONDict:
        """Patch a stored object (``merge``, ``json`` or ``strategic``) and return it."""
        rtype = self.resource_type(resource, group, version)
        old = self.store.get(rtype, namespace or "", name)
        if old is None:
            raise rtype.not_found(name)
        patched = self._apply_patch(old, patch_type, patch)
        return self.store.update(rtype, patched).copy()

    def delete(self, resource: str, namespace: str | None, name: str, *,
               group: str | None = None, version: str | None = None) -> JSONDict | None:
        """Delete an object; return its final state, or None when there was none.

        e.g. ``server.delete("pods", "default", "web-1")``; cluster-scoped resources take
        ``None`` or ``""`` as namespace. Emits DELETED.
        """
        rtype = self.resource_type(resource, group, version)
        if self.store.get(rtype, namespace or "", name) is None:
            return None
        return self._delete(rtype, namespace or "", name).copy()

    def get(self, resource: str, namespace: str | None, name: str, *,
            group: str | None = None, version: str | None = None) -> JSONDict | None:
        """A copy of the stored object, or None."""
        rtype = self.resource_type(resource, group, version)
        stored = self.store.get(rtype, namespace or "", name)
        return None if stored is None else stored.copy()

    def list(self, resource: str, namespace: str | None = None, *,
             label_selector: str | None = None, field_selector: str | None = None,
             group: str | None = None, version: str | None = None) -> builtins.list[JSONDict]:
        """Copies of the stored objects of a resource, sorted by namespace and name."""
        rtype = self.resource_type(resource, group, version)
        labels = LabelSelector.parse(label_selector)
        fields = FieldSelector.parse(field_selector, rtype.field_paths())
        return [s.copy() for s in self.store.list(rtype, namespace)
                if labels.matches(s.labels) and fields.matches(s.obj)]

    def compact(self) -> None:
        """Drop all watch history: every resourceVersion up to now becomes too old (410)."""
        self.store.compact()

    def sign_csr(self, name: str, *, pki: TestPKI | None = None) -> JSONDict:
        """Approve and sign the CSR ``name`` with ``pki`` (default: the server's TLS PKI).

        Sets the ``Approved`` condition and ``status.certificate`` the way
        kube-controller-manager's signer does; returns the updated object. The certificate
        lives ``csr_lifetime`` seconds when that is set, else ``spec.expirationSeconds``.
        """
        signer = pki or self.tls
        if signer is None:
            raise ValueError("sign_csr needs a TestPKI (pass pki= or start the server with tls)")
        rtype = self.resource_type("certificatesigningrequests")
        stored = self.store.get(rtype, "", name)
        if stored is None:
            raise rtype.not_found(name)
        obj = stored.copy()
        spec = obj.get("spec", {})
        usages = spec.get("usages") or ["client auth"]
        lifetime = spec.get("expirationSeconds") or 365 * 86400
        if self.csr_lifetime is not None:
            lifetime = self.csr_lifetime
        cert = signer.sign_csr(base64.b64decode(spec.get("request", "")),
                               lifetime_seconds=lifetime, usages=usages)
        return self._add_csr_condition(obj, "Approved", "AutoApproved",
                                       "approved by the simulated apiserver",
                                       certificate=base64.b64encode(cert).decode("ascii"))

    def deny_csr(self, name: str, *, reason: str = "SimulatedDeny",
                 message: str = "denied by the simulated apiserver") -> JSONDict:
        """Add a ``Denied`` condition to the CSR ``name``, as ``kubectl certificate deny`` does."""
        rtype = self.resource_type("certificatesigningrequests")
        stored = self.store.get(rtype, "", name)
        if stored is None:
            raise rtype.not_found(name)
        return self._add_csr_condition(stored.copy(), "Denied", reason, message)

    def _add_csr_condition(self, obj: JSONDict, kind: str, reason: str, message: str,
                           **status_fields: Any) -> JSONDict:
        status = obj.setdefault("status", {})
        now = format_timestamp(self._reactor.seconds())
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != kind]
        conditions.append({"type": kind, "status": "True", "reason": reason, "message": message,
                           "lastUpdateTime": now, "lastTransitionTime": now})
        status["conditions"] = conditions
        status.update(status_fields)
        rtype = self.resource_type("certificatesigningrequests")
        return self.store.update(rtype, obj).copy()

    def add_bootstrap_token(self, token: str, *, server_url: str | None = None) -> JSONDict:
        """Publish a bootstrap token the way kubeadm does; return the ``cluster-info`` ConfigMap.

        Creates ``kube-system/bootstrap-token-<id>`` and (re)writes ``kube-public/cluster-info``
        with a kubeconfig (this server's URL, or ``server_url``, and the TLS CA) and the
        detached HS256 JWS ``jws-kubeconfig-<id>`` that clients verify with the token.
        Call it after `start` unless ``server_url`` is given.
        """
        token_id, _, secret = token.partition(".")
        if len(token_id) != 6 or len(secret) != 16:
            raise ValueError("a bootstrap token looks like [a-z0-9]{6}.[a-z0-9]{16}")
        ca_data = base64.b64encode(self.tls.ca_cert_pem).decode() if self.tls else ""
        kubeconfig = yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "", "cluster": {"certificate-authority-data": ca_data,
                                                  "server": server_url or self.url}}],
            "contexts": None, "current-context": "", "users": None,
        }, sort_keys=False)

        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")

        header = b64(dumps({"alg": "HS256", "kid": token_id}))
        signed = f"{header}.{b64(kubeconfig.encode())}".encode()
        signature = b64(hmac.new(secret.encode(), signed, hashlib.sha256).digest())
        encode = base64.b64encode
        secret_obj: JSONDict = {
            "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
            "data": {"token-id": encode(token_id.encode()).decode(),
                     "token-secret": encode(secret.encode()).decode(),
                     "usage-bootstrap-authentication": encode(b"true").decode(),
                     "usage-bootstrap-signing": encode(b"true").decode(),
                     "auth-extra-groups": encode(
                         b"system:bootstrappers:kubeadm:default-node-token").decode()},
        }
        if self.get("secrets", "kube-system", f"bootstrap-token-{token_id}") is None:
            self.create(secret_obj)
        current = self.get("configmaps", "kube-public", "cluster-info")
        data = dict((current or {}).get("data") or {})
        data["kubeconfig"] = kubeconfig
        data[f"jws-kubeconfig-{token_id}"] = f"{header}..{signature}"
        if current is None:
            return self.create({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "cluster-info", "namespace": "kube-public"},
                                "data": data})
        current["data"] = data
        return self.update(current)

    def _after_create(self, resource: ResourceType, stored: StoredObject) -> None:
        if resource.plural == "certificatesigningrequests" and self.csr_deny:
            self.deny_csr(stored.name)
            return
        if (resource.plural == "certificatesigningrequests" and self.csr_auto_approve
                and self.tls is not None):
            try:
                self.sign_csr(stored.name)
            except ValueError:
                _log.failure("could not sign CSR {name}", name=stored.name)

    def _delete(self, resource: ResourceType, namespace: str, name: str) -> StoredObject:
        deleted = self.store.delete(resource, namespace, name)
        if resource.plural == "namespaces" and not resource.group:
            # The namespace controller's job, done at once: empty the namespace.
            for other in self.store.resource_types:
                if other.namespaced:
                    for stored in self.store.list(other, name):
                        self.store.delete(other, name, stored.name)
        return deleted

    # -- request intake -------------------------------------------------------

    def _identify(self, request: Request) -> tuple[str | None, tuple[str, ...]]:
        transport: Any = getattr(request.channel, "transport", None)
        get_certificate = getattr(transport, "getPeerCertificate", None)
        certificate = None
        if get_certificate is not None:
            try:
                certificate = get_certificate()
            except Exception:
                certificate = None
        if certificate is not None:
            from cryptography.x509.oid import NameOID

            subject = certificate.to_cryptography().subject
            names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            groups = tuple(str(a.value) for a in
                           subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
            return (str(names[0].value) if names else ""), groups
        authorization = _header(request, "authorization")
        if authorization[:7].lower() == "bearer ":
            return "token:" + authorization[7:].strip(), ()
        return None, ()

    def _record(self, request: Request) -> None:
        headers: dict[str, builtins.list[str]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(name.decode("latin-1").lower(), []).extend(
                v.decode("latin-1") for v in values
            )
        body = b""
        if request.content is not None:
            request.content.seek(0)
            body = request.content.read()
            request.content.seek(0)
        user, groups = self._identify(request)
        self.requests.append(RequestRecord(
            (request.method or b"").decode("latin-1"),
            (request.uri or b"").decode("latin-1"),
            headers, user, body, groups,
        ))
        if len(self.requests) > REQUEST_LOG_SIZE + REQUEST_LOG_SIZE // 10:
            del self.requests[: len(self.requests) - REQUEST_LOG_SIZE]

    def _receive(self, request: Request) -> bytes | int:
        self._record(request)
        if self._blackholed:
            self._parked[request] = None
            request.notifyFinish().addBoth(lambda _: self._parked.pop(request, None))
            return NOT_DONE_YET
        path = (request.path or b"").decode("latin-1")
        delay = max((s for p, s in self._delays.items() if path.startswith(p)), default=0.0)
        if delay > 0:
            self._delayed[request] = self._reactor.callLater(delay, self._serve_later, request)

            def forget(_: object) -> None:
                call = self._delayed.pop(request, None)
                if call is not None and call.active():
                    call.cancel()

            request.notifyFinish().addBoth(forget)
            return NOT_DONE_YET
        return self._serve(request)

    def _serve_later(self, request: Request) -> None:
        self._delayed.pop(request, None)
        if getattr(request, "_disconnected", False) or request.finished:
            return
        body = self._serve(request)
        if body is not NOT_DONE_YET and isinstance(body, bytes):
            request.setHeader(b"content-length", str(len(body)).encode())
            request.write(body)
            request.finish()

    def _serve(self, request: Request) -> bytes | int:
        request.setHeader(b"cache-control", b"no-cache, private")
        try:
            self._check_failures(request)
            return self._route(request)
        except StatusError as error:
            return self._error(request, error)
        except Exception:
            _log.failure("the simulated apiserver failed on {uri}", uri=request.uri)
            return self._error(request, StatusError(500, "InternalError",
                                                    "an error on the server has prevented "
                                                    "the request from succeeding"))

    def _check_failures(self, request: Request) -> None:
        path = (request.path or b"").decode("latin-1")
        for prefix, entry in list(self._failures.items()):
            if path.startswith(prefix):
                code, reason, count = entry
                if count is not None:
                    if count <= 1:
                        del self._failures[prefix]
                    else:
                        entry[2] = count - 1
                raise StatusError(code, reason, f"injected failure for {path}")

    def _error(self, request: Request, error: StatusError) -> bytes:
        return self._json(request, error.code, dumps(error.status))

    @staticmethod
    def _json(request: Request, code: int, body: bytes) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return body

    # -- routing --------------------------------------------------------------

    def _route(self, request: Request) -> bytes | int:
        raw = (request.path or b"/").decode("latin-1")
        parts = [unquote(p) for p in raw.split("/") if p]
        method = (request.method or b"GET").decode("latin-1").upper()
        if parts[:1] in (["healthz"], ["livez"], ["readyz"]):
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            if not self.healthy:
                request.setResponseCode(500)
                return b"[-]etcd failed: reason withheld\n" + parts[0].encode() + b" check failed"
            return b"ok"
        if method not in ("GET", "HEAD") and parts[:1] in (["version"], ["openapi"]):
            raise _method_not_allowed(method)
        if parts == ["version"]:
            return self._json(request, 200, dumps(self._version_info()))
        if parts[:1] == ["api"]:
            if len(parts) == 1:
                return self._discovery(request, method, {
                    "kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self._host}:{self.port}"}
                    ],
                })
            if parts[1] != "v1":
                raise _not_found_path()
            if len(parts) == 2:
                return self._discovery(request, method, self._resource_list("", "v1"))
            return self._resource_request(request, method, "", "v1", parts[2:])
        if parts[:1] == ["apis"]:
            groups = self._groups()
            if len(parts) == 1:
                return self._discovery(request, method, {
                    "kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [groups[g] for g in sorted(groups)],
                })
            if parts[1] not in groups:
                raise _not_found_path()
            if len(parts) == 2:
                return self._discovery(request, method,
                                       {"kind": "APIGroup", "apiVersion": "v1", **groups[parts[1]]})
            if not any(t.group == parts[1] and t.version == parts[2]
                       for t in self.store.resource_types):
                raise _not_found_path()
            if len(parts) == 3:
                return self._discovery(request, method, self._resource_list(parts[1], parts[2]))
            return self._resource_request(request, method, parts[1], parts[2], parts[3:])
        if parts[:2] == ["openapi", "v3"]:
            return self._openapi_v3(request, parts[2:])
        if parts == ["simulator", "echo"]:
            return self._echo_upgrade(request)
        raise _not_found_path()

    def _openapi_v3(self, request: Request, group_version: builtins.list[str]) -> bytes:
        """A minimal OpenAPI v3: enough for kubectl to see server-side field validation.

        kubectl looks for a ``fieldValidation`` parameter on the PATCH operation of a kind
        and then lets the server validate; without it kubectl wants the full schema.
        """
        versions = sorted({(t.group, t.version) for t in self.store.resource_types})

        def gv_path(group: str, version: str) -> str:
            return f"apis/{group}/{version}" if group else f"api/{version}"

        if not group_version:
            return self._json(request, 200, dumps({"paths": {
                gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{gv_path(g, v)}?hash="
                                                     f"{self.version}"}
                for g, v in versions
            }}))
        wanted = "/".join(group_version)
        match = [(g, v) for g, v in versions if gv_path(g, v) == wanted]
        if not match:
            raise _not_found_path()
        group, version = match[0]
        parameters = [{"name": name, "in": "query", "schema": {"type": "string"}}
                      for name in ("dryRun", "fieldManager", "fieldValidation", "force")]
        paths: JSONDict = {}
        for t in self.store.resource_types:
            if (t.group, t.version) != (group, version):
                continue
            prefix = "/" + gv_path(group, version)
            scope = "/namespaces/{namespace}" if t.namespaced else ""
            gvk = {"group": t.group, "version": t.version, "kind": t.kind}
            operation = {"x-kubernetes-group-version-kind": gvk, "parameters": parameters,
                         "responses": {"200": {"description": "OK"}}}
            paths[f"{prefix}{scope}/{t.plural}"] = {"post": operation}
            paths[f"{prefix}{scope}/{t.plural}/{{name}}"] = {"put": operation,
                                                              "patch": operation}
        return self._json(request, 200, dumps({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": self.version},
            "paths": paths,
            "components": {"schemas": {}},
        }))

    def _discovery(self, request: Request, method: str, document: JSONDict) -> bytes:
        if method not in ("GET", "HEAD"):
            raise _method_not_allowed(method)
        return self._json(request, 200, dumps(document))

    def _version_info(self) -> JSONDict:
        numbers = self.version.lstrip("v").split(".")
        return {
            "major": numbers[0],
            "minor": numbers[1] if len(numbers) > 1 else "0",
            "gitVersion": self.version,
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2024-08-13T07:28:49Z",
            "goVersion": "go1.22.5",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def _groups(self) -> dict[str, JSONDict]:
        groups: dict[str, JSONDict] = {}
        for t in self.store.resource_types:
            if not t.group:
                continue
            entry = groups.setdefault(t.group, {"name": t.group, "versions": []})
            version = {"groupVersion": t.api_version, "version": t.version}
            if version not in entry["versions"]:
                entry["versions"].append(version)
            entry.setdefault("preferredVersion", version)
        return groups

    def _resource_list(self, group: str, version: str) -> JSONDict:
        resources: builtins.list[JSONDict] = []
        for t in self.store.resource_types:
            if t.group != group or t.version != version:
                continue
            entry: JSONDict = {"name": t.plural, "singularName": t.singular,
                               "namespaced": t.namespaced, "kind": t.kind, "verbs": list(_VERBS)}
            if t.short_names:
                entry["shortNames"] = list(t.short_names)
            if t.categories:
                entry["categories"] = list(t.categories)
            resources.append(entry)
            for sub in t.subresources:
                resources.append(_subresource_entry(t, sub))
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources}

    # -- resources ------------------------------------------------------------

    def _resource_request(self, request: Request, method: str, group: str, version: str,
                          parts: builtins.list[str]) -> bytes | int:
        watch = _flag(request, "watch")
        if parts[:1] == ["watch"]:
            watch, parts = True, parts[1:]
        namespace: str | None = None
        if (len(parts) >= 3 and parts[0] == "namespaces"
                and parts[2] not in ("status", "finalize")):
            namespace, parts = parts[1], parts[2:]
        if not parts or len(parts) > 3:
            raise _not_found_path()
        resource = self.store.resource_type(group, version, parts[0])
        if resource is None:
            raise _not_found_path()
        name = parts[1] if len(parts) > 1 else None
        sub = parts[2] if len(parts) > 2 else None
        if sub is not None and sub not in resource.subresources:
            raise _not_found_path()
        if namespace is not None and not resource.namespaced:
            raise _not_found_path()
        if resource.namespaced and namespace is None and (name is not None or method != "GET"):
            raise _not_found_path()
        ns = namespace or ""
        if method in ("GET", "HEAD"):
            if name is None:
                return self._watch(request, resource, namespace) if watch else self._list(
                    request, resource, namespace)
            if sub == "log":
                return self._log(request, resource, ns, name)
            if sub == "exec":
                return self._exec(request, ns, name)
            if sub in ("token", "approval"):
                raise _method_not_allowed(method)
            if watch:
                return self._watch(request, resource, namespace, name)
            return self._get(request, resource, ns, name)
        if method == "POST":
            if name is None:
                return self._create(request, resource, ns)
            if sub == "exec":
                return self._exec(request, ns, name)
            if sub == "token":
                return self._token(request, resource, ns, name)
            raise _method_not_allowed(method)
        if method == "PUT" and name is not None and sub not in ("log", "exec", "token"):
            return self._update(request, resource, ns, name, sub)
        if method == "PATCH" and name is not None and sub not in ("log", "exec", "token"):
            return self._patch(request, resource, ns, name, sub)
        if method == "DELETE" and sub is None:
            if name is None:
                return self._delete_collection(request, resource, namespace)
            return self._delete_one(request, resource, ns, name)
        raise _method_not_allowed(method)

    def _representation(self, request: Request) -> Representation:
        return negotiate(_header(request, "accept"), _arg(request, "includeObject"))

    def _selectors(self, request: Request,
                   resource: ResourceType) -> tuple[LabelSelector, FieldSelector]:
        try:
            return (LabelSelector.parse(_arg(request, "labelSelector")),
                    FieldSelector.parse(_arg(request, "fieldSelector"), resource.field_paths()))
        except SelectorError as error:
            raise _bad_request(str(error)) from None

    def _get(self, request: Request, resource: ResourceType, ns: str, name: str) -> bytes:
        stored = self.store.get(resource, ns, name)
        if stored is None:
            raise resource.not_found(name)
        rep = self._representation(request)
        return self._json(request, 200,
                          encode_object(rep, resource, stored, self._reactor.seconds()))

    def _list(self, request: Request, resource: ResourceType, namespace: str | None) -> bytes:
        labels, fields = self._selectors(request, resource)
        objects = self.store.list(resource, namespace)
        if not labels.empty or not fields.empty:
            objects = [s for s in objects if labels.matches(s.labels) and fields.matches(s.obj)]
        token = _arg(request, "continue")
        if token:
            start = _decode_continue(token)
            keys = [(s.namespace, s.name) for s in objects]
            objects = objects[bisect.bisect_right(keys, start):]
        # kube-apiserver serves resourceVersion=0 from its watch cache, which ignores limit.
        limit_text = None if _arg(request, "resourceVersion") == "0" else _arg(request, "limit")
        next_token = None
        remaining = None
        if limit_text:
            try:
                limit = int(limit_text)
            except ValueError:
                raise _bad_request(f"invalid limit {limit_text!r}") from None
            if 0 < limit < len(objects):
                last = objects[limit - 1]
                remaining = len(objects) - limit
                objects = objects[:limit]
                next_token = _encode_continue(self.store.resource_version, last.namespace,
                                              last.name)
        body = encode_list(self._representation(request), resource, objects,
                           self._reactor.seconds(), resource_version=self.store.resource_version,
                           continue_token=next_token, remaining=remaining)
        return self._json(request, 200, body)

    def _watch(self, request: Request, resource: ResourceType, namespace: str | None,
               name: str | None = None) -> int:
        labels, fields = self._selectors(request, resource)
        if name is not None:
            fields = FieldSelector((("metadata.name", name, True),))
        start_text = _arg(request, "resourceVersion")
        send_initial = _flag(request, "sendInitialEvents")
        start_rv: int | None = None
        if start_text not in (None, "", "0"):
            try:
                start_rv = int(start_text or "")
            except ValueError:
                raise _bad_request(f"invalid resource version: {start_text}") from None
        timeout: float | None = None
        timeout_text = _arg(request, "timeoutSeconds")
        if timeout_text:
            try:
                timeout = float(timeout_text)
            except ValueError:
                raise _bad_request(f"invalid timeoutSeconds {timeout_text!r}") from None
        bookmarks = _flag(request, "allowWatchBookmarks")
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        stream = WatchStream(
            request, self._reactor, self._stream_done,
            store=self.store, resource=resource, namespace=namespace, labels=labels,
            fields=fields, representation=self._representation(request),
            bookmark_interval=self.bookmark_interval if bookmarks else None, timeout=timeout,
        )
        self._streams[stream] = None
        stream.start(start_rv, send_initial_events=send_initial)
        return NOT_DONE_YET

    def _stream_done(self, stream: ResponseStream) -> None:
        self._streams.pop(stream, None)

    def _read_body(self, request: Request) -> Any:
        media = _media_type(request)
        raw = b""
        if request.content is not None:
            request.content.seek(0)
            raw = request.content.read()
        if media.startswith("application/vnd.kubernetes.protobuf") or media.endswith("cbor"):
            raise StatusError(
                415, "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json, application/yaml (got {media})",
            )
        try:
            if media in ("application/yaml", "application/x-yaml", "text/yaml"):
                return yaml.safe_load(raw.decode("utf-8"))
            if media not in ("", "application/json", "*/*", "text/plain"):
                raise StatusError(
                    415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media "
                    f"types include: application/json, application/yaml (got {media})",
                )
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as error:
            raise _bad_request(f"the request body could not be decoded: {error}") from None

    def _object_body(self, request: Request, resource: ResourceType, ns: str) -> JSONDict:
        body = self._read_body(request)
        if not isinstance(body, dict):
            raise _bad_request("the request body must be a JSON object")
        metadata = body.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise _bad_request("metadata must be an object")
        if resource.namespaced:
            if metadata.get("namespace") and metadata["namespace"] != ns:
                raise _bad_request("the namespace of the provided object does not match the "
                                   "namespace sent on the request")
            metadata["namespace"] = ns
        return body

    def _create(self, request: Request, resource: ResourceType, ns: str) -> bytes:
        body = self._object_body(request, resource, ns)
        if self.require_namespaces and resource.namespaced:
            namespaces = self.resource_type("namespaces", "")
            if self.store.get(namespaces, "", ns) is None:
                raise namespaces.not_found(ns)
        if _arg(request, "dryRun") == "All":
            stored = StoredObject(body, self.store.resource_version)
            return self._json(request, 201, stored.json())
        stored = self.store.create(resource, body)
        self._after_create(resource, stored)
        return self._json(request, 201, encode_object(self._representation(request), resource,
                                                      stored, self._reactor.seconds()))

    @staticmethod
    def _strategy(resource: ResourceType, old: JSONDict, new: JSONDict,
                  sub: str | None) -> JSONDict:
        """What an update may change: the status subresource only status, the rest not it."""
        if sub in ("status", "approval"):
            result: JSONDict = json.loads(json.dumps(old))
            if sub == "status":
                result["status"] = new.get("status", {})
            else:
                result.setdefault("status", {})["conditions"] = (
                    (new.get("status") or {}).get("conditions", []))
            return result
        if "status" in resource.subresources and "status" in old:
            new["status"] = old["status"]
        return new

    def _update(self, request: Request, resource: ResourceType, ns: str, name: str,
                sub: str | None) -> bytes:
        body = self._object_body(request, resource, ns)
        metadata = body["metadata"]
        if metadata.get("name") and metadata["name"] != name:
            raise _bad_request(f"the name of the object ({metadata['name']}) does not match "
                               f"the name on the URL ({name})")
        metadata["name"] = name
        old = self.store.get(resource, ns, name)
        if old is None:
            raise resource.not_found(name)
        expected = self._precondition(metadata.get("resourceVersion"))
        new = self._strategy(resource, old.obj, body, sub)
        stored = self.store.update(resource, new, expected_rv=expected)
        return self._json(request, 200, encode_object(self._representation(request), resource,
                                                      stored, self._reactor.seconds()))

    @staticmethod
    def _precondition(value: Any) -> int | None:
        if value in (None, ""):
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise _bad_request(f"invalid resourceVersion {value!r}") from None

    def _apply_patch(self, old: StoredObject, patch_type: str, patch: Any) -> JSONDict:
        try:
            if patch_type == "merge":
                if not isinstance(patch, dict):
                    raise PatchError("a merge patch must be a JSON object", malformed=True)
                result = merge_patch(old.copy(), patch)
            elif patch_type == "json":
                result = json_patch(old.copy(), patch)
            elif patch_type == "strategic":
                if not isinstance(patch, dict):
                    raise PatchError("a strategic merge patch must be a JSON object",
                                     malformed=True)
                result = strategic_merge_patch(old.copy(), patch)
            else:
                raise ValueError(f"unknown patch type {patch_type!r}")
        except PatchError as error:
            if error.malformed:
                raise _bad_request(str(error)) from None
            raise StatusError(422, "Invalid", str(error)) from None
        if not isinstance(result, dict):
            raise StatusError(422, "Invalid", "the patch did not produce an object")
        metadata = result.setdefault("metadata", {})
        old_meta = old.obj["metadata"]
        metadata["name"] = old_meta["name"]
        if "namespace" in old_meta:
            metadata["namespace"] = old_meta["namespace"]
        return result

    def _patch(self, request: Request, resource: ResourceType, ns: str, name: str,
               sub: str | None) -> bytes:
        media = _media_type(request)
        patch_type = _PATCH_TYPES.get(media)
        if patch_type is None:
            raise StatusError(
                415, "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(_PATCH_TYPES)} (got {media or 'nothing'})",
            )
        raw = b""
        if request.content is not None:
            request.content.seek(0)
            raw = request.content.read()
        try:
            patch = json.loads(raw)
        except ValueError as error:
            raise _bad_request(f"the patch could not be decoded: {error}") from None
        old = self.store.get(resource, ns, name)
        if old is None:
            raise resource.not_found(name)
        patched = self._apply_patch(old, patch_type, patch)
        expected = self._precondition(patched["metadata"].get("resourceVersion"))
        new = self._strategy(resource, old.obj, patched, sub)
        stored = self.store.update(resource, new, expected_rv=expected)
        return self._json(request, 200, encode_object(self._representation(request), resource,
                                                      stored, self._reactor.seconds()))

    def _delete_one(self, request: Request, resource: ResourceType, ns: str,
                    name: str) -> bytes:
        old = self.store.get(resource, ns, name)
        if old is None:
            raise resource.not_found(name)
        options: Any = None
        if request.content is not None:
            request.content.seek(0)
            raw = request.content.read()
            if raw.strip():
                try:
                    options = json.loads(raw)
                except ValueError:
                    raise _bad_request("the DeleteOptions could not be decoded") from None
        preconditions = (options or {}).get("preconditions") or {}
        if preconditions.get("uid") and preconditions["uid"] != old.obj["metadata"].get("uid"):
            raise StatusError(
                409, "Conflict",
                f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in "
                f"object meta: {old.obj['metadata'].get('uid')}",
            )
        wanted_rv = preconditions.get("resourceVersion")
        if wanted_rv and str(wanted_rv) != str(old.rv):
            raise StatusError(
                409, "Conflict",
                f"Precondition failed: ResourceVersion in precondition: {wanted_rv}, "
                f"ResourceVersion in object meta: {old.rv}",
            )
        if _arg(request, "dryRun") == "All":
            return self._json(request, 200, old.json())
        deleted = self._delete(resource, ns, name)
        if resource.plural in ("pods", "namespaces") and not resource.group:
            return self._json(request, 200, deleted.json())
        details: JSONDict = {"name": name, "kind": resource.plural,
                             "uid": deleted.obj["metadata"].get("uid")}
        if resource.group:
            details["group"] = resource.group
        return self._json(request, 200, dumps({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": details,
        }))

    def _delete_collection(self, request: Request, resource: ResourceType,
                           namespace: str | None) -> bytes:
        labels, fields = self._selectors(request, resource)
        doomed = [s for s in self.store.list(resource, namespace)
                  if labels.matches(s.labels) and fields.matches(s.obj)]
        deleted = [self._delete(resource, s.namespace, s.name) for s in doomed]
        body = encode_list(Representation(), resource, deleted, self._reactor.seconds(),
                           resource_version=self.store.resource_version)
        return self._json(request, 200, body)

    # -- subresources -----------------------------------------------------------

    def _token(self, request: Request, resource: ResourceType, ns: str, name: str) -> bytes:
        account = self.store.get(resource, ns, name)
        if account is None:
            raise resource.not_found(name)
        body = self._read_body(request)
        if not isinstance(body, dict):
            raise _bad_request("the request body must be a TokenRequest")
        spec = dict(body.get("spec") or {})
        seconds = int(spec.get("expirationSeconds") or 3600)
        spec["expirationSeconds"] = seconds
        spec.setdefault("audiences", ["https://kubernetes.default.svc.cluster.local"])
        now = int(self._reactor.seconds())
        uid = account.obj["metadata"].get("uid", "")
        claims = {
            "aud": spec["audiences"], "exp": now + seconds, "iat": now, "nbf": now,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": uid}},
            "sub": f"system:serviceaccount:{ns}:{name}",
        }

        def segment(value: Any) -> str:
            raw = value if isinstance(value, bytes) else dumps(value)
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")

        token = ".".join([segment({"alg": "RS256", "kid": "simulated"}), segment(claims),
                          segment(self.store.new_uid().encode())])
        return self._json(request, 201, dumps({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns,
                         "creationTimestamp": format_timestamp(now)},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": format_timestamp(now + seconds)},
        }))

    def _pod_container(self, request: Request, ns: str, name: str) -> tuple[StoredObject, str]:
        pods = self.resource_type("pods", "")
        pod = self.store.get(pods, ns, name)
        if pod is None:
            raise pods.not_found(name)
        containers = [c.get("name", "") for c in (pod.obj.get("spec") or {}).get("containers")
                      or []]
        wanted = _arg(request, "container")
        if wanted:
            if wanted not in containers:
                raise _bad_request(f"container {wanted} is not valid for pod {name}")
            return pod, wanted
        if len(containers) == 1:
            return pod, containers[0]
        if not containers:
            raise _bad_request(f"pod {name} has no containers")
        raise _bad_request(f"a container name must be specified for pod {name}, choose one "
                           f"of: [{' '.join(containers)}]")

    def _log_line(self, pod: StoredObject, container: str, number: int,
                  timestamps: bool) -> bytes:
        now = self._reactor.seconds()
        text = (f"{format_timestamp(now)[:-1]} INFO {container}: log line {number} of "
                f"{pod.namespace}/{pod.name}\n")
        if timestamps:
            text = format_timestamp(now)[:-1] + ".000000000Z " + text
        return text.encode()

    def _log(self, request: Request, resource: ResourceType, ns: str, name: str) -> bytes | int:
        pod, container = self._pod_container(request, ns, name)
        if _flag(request, "previous"):
            raise _bad_request(f'previous terminated container "{container}" in pod "{name}" '
                               "not found")
        timestamps = _flag(request, "timestamps")
        lines = [self._log_line(pod, container, n, timestamps) for n in range(1, 6)]
        tail = _arg(request, "tailLines")
        if tail is not None:
            try:
                count = int(tail)
            except ValueError:
                raise _bad_request(f"invalid tailLines {tail!r}") from None
            lines = lines[len(lines) - count:] if 0 <= count < len(lines) else lines
        request.setHeader(b"content-type", b"text/plain")
        if not _flag(request, "follow"):
            body = b"".join(lines)
            limit = _arg(request, "limitBytes")
            if limit and limit.isdigit():
                body = body[: int(limit)]
            request.setResponseCode(200)
            return body

        def next_line(number: int) -> bytes | None:
            current = self.store.get(resource, ns, name)
            if current is None or current.obj["metadata"].get("uid") != pod.obj["metadata"].get(
                    "uid"):
                return None
            return self._log_line(current, container, number, timestamps)

        request.setResponseCode(200)
        stream = LogStream(request, self._reactor, self._stream_done, next_line=next_line,
                           interval=self.log_interval, first_number=6)
        self._streams[stream] = None
        stream.start(lines)
        return NOT_DONE_YET

    def _exec(self, request: Request, ns: str, name: str) -> bytes | int:
        pod, container = self._pod_container(request, ns, name)
        if not (pod.obj.get("spec") or {}).get("nodeName"):
            raise _bad_request(f"pod {name} does not have a host assigned")
        phase = (pod.obj.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            raise _bad_request(f"cannot exec into a container in a completed pod; current "
                               f"phase is {phase}")
        upgrade = _header(request, "upgrade").lower()
        if upgrade != "websocket":
            raise _bad_request("Upgrade request required (this simulated server speaks "
                               "WebSocket exec: v5.channel.k8s.io, v4.channel.k8s.io)")
        key = _header(request, "sec-websocket-key")
        if not key:
            raise _bad_request("missing Sec-WebSocket-Key")
        offered = [p.strip() for p in _header(request, "sec-websocket-protocol").split(",")]
        chosen = next((p for p in offered if p in CHANNEL_PROTOCOLS), None)
        if chosen is None:
            raise _bad_request(f"none of the offered subprotocols {offered} is supported; "
                               f"use one of {list(CHANNEL_PROTOCOLS)}")
        stdin, stdout, stderr = (_flag(request, n) for n in ("stdin", "stdout", "stderr"))
        if not (stdin or stdout or stderr):
            raise _bad_request("you must specify at least one of stdin, stdout, stderr")
        session = _TrackedExecSession(
            self._reactor, _args(request, "command"), subprotocol=chosen, stdin=stdin,
            stdout=stdout, stderr=stderr, tty=_flag(request, "tty"), pod=name,
        )
        session.on_lost = lambda s: self._exec_sessions.pop(s, None)
        if not take_over_connection(request, handshake_response(key, chosen), session):
            raise StatusError(500, "InternalError",
                              "exec needs a connection accepted by the server's own listener")
        self._exec_sessions[session] = None
        return NOT_DONE_YET

    def _echo_upgrade(self, request: Request) -> bytes | int:
        upgrade = _header(request, "upgrade")
        connection = _header(request, "connection").lower()
        if upgrade.lower() != "echo" or "upgrade" not in connection:
            raise _bad_request("send Connection: Upgrade and Upgrade: echo")
        head = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        if not take_over_connection(request, head, RawEchoProtocol()):
            raise StatusError(500, "InternalError",
                              "upgrades need a connection accepted by the server's own listener")
        return NOT_DONE_YET


class _TrackedExecSession(ExecSession):
    """An exec session that tells the server when its connection is gone."""

    on_lost: Any = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Forget the session, then clean up."""
        super().connectionLost(reason)
        if self.on_lost is not None:
            self.on_lost(self)


_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


def _subresource_entry(resource: ResourceType, sub: str) -> JSONDict:
    entry: JSONDict = {"name": f"{resource.plural}/{sub}", "singularName": "",
                       "namespaced": resource.namespaced, "kind": resource.kind,
                       "verbs": ["get", "patch", "update"]}
    if sub == "log":
        entry["verbs"] = ["get"]
    elif sub == "exec":
        entry.update(kind="PodExecOptions", verbs=["create", "get"])
    elif sub == "token":
        entry.update(group="authentication.k8s.io", version="v1", kind="TokenRequest",
                     verbs=["create"])
    return entry

