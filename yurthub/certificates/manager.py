"""The node's certificates as yurthub runs them: which ones, from where, and their use.

`CertificateManager` is built by the service when ``certificates.mode`` is ``token`` and
there is something to manage (a bootstrap token, or a certificate from an earlier run in
``certificates.dir``), or when the mode is ``kubelet``.

Mode ``token``:
1. The cluster CA: ``certificates.caFile`` if set, else ``<dir>/ca.crt`` from an earlier
   run, else discovered with the bootstrap token from ``kube-public/cluster-info`` (JWS
   verified, pinned by ``caCertHashes``: `yurthub.certificates.bootstrap`) and saved there.
2. The client certificate (`CertificateRotator`, ``<dir>/yurthub-current.pem``): CN
   ``system:node:<nodeName>``, O ``system:nodes`` (plus ``certificates.organizations``),
   signer ``kubernetes.io/kube-apiserver-client``. Its CSR goes up authenticated by the
   current certificate while it is valid, else by the bootstrap token; an expired one
   (the node was offline past its end) is thus renewed with the token once the cloud is
   back. Without a valid certificate and without a usable token, `/v1/readyz` says so and
   ``POST /v1/token`` on the hub listener sets a new token, which is tried at once.
3. The serving certificate of the HTTPS proxy listener, when that listener is on and no
   ``servingCertFile`` is configured (``<dir>/yurthub-server-current.pem``): signer
   ``kubernetes.io/kubelet-serving``, DNS names ``kubernetes``, ``kubernetes.default``,
   ``kubernetes.default.svc``, ``kubernetes.default.svc.cluster.local``, the listener's IP
   and ``certificates.servingIPs``; asked for with the client certificate.

Mode ``kubelet``: kubelet's own client certificate and key
(``certificates.kubeletCertFile``, default ``/var/lib/kubelet/pki/kubelet-client-current.pem``)
and the CA file, read again whenever the file changes (checked every few seconds).

Every new client certificate is used by the next connection at once (the credential
source is swapped), idle pooled connections that hold the old one are closed, and open
streams are ended within a minute (each at a random moment) so no connection keeps the old
certificate for long.
"""

from __future__ import annotations

import json
import os
import random as _random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

from yurthub.certificates.bootstrap import BootstrapError, BootstrapToken, discover
from yurthub.certificates.csr import CSRDenied, request_certificate
from yurthub.certificates.pki import CertificateStore, Credential
from yurthub.certificates.pki import _split_pem as split_pem
from yurthub.certificates.rotation import CertificateRotator, CertificateSpec
from yurthub.config import Config
from yurthub.interfaces import IReadinessCheck

_log = Logger()

CLIENT_USAGES = ("digital signature", "key encipherment", "client auth")
SERVING_USAGES = ("digital signature", "key encipherment", "server auth")
SERVING_DNS = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
KUBELET_POLL = 5.0
#: The cluster CA in kubelet mode when certificates.caFile is not set (kubeadm's path).
KUBEADM_CA = "/etc/kubernetes/pki/ca.crt"


class CertificateManager:
    """Bootstraps, rotates and installs the node's certificates (see the module doc)."""

    def __init__(
        self,
        reactor: Any,
        config: Config,
        credentials: Any,
        failover: Any,
        *,
        node_agent: Any,
        token_agent: Any,
        on_client_rotated: Callable[[], None] = lambda: None,
        on_serving_rotated: Callable[[Credential], None] | None = None,
        serving_ips: Sequence[str] = (),
        run_in_thread: Callable[..., defer.Deferred[Any]],
        random: Callable[[], float] = _random.random,
        directory: str | None = None,
    ) -> None:
        certs = config.certificates
        self.reactor = reactor
        self.config = config
        self.credentials = credentials
        self.failover = failover
        self.node_agent = node_agent
        self.token_agent = token_agent
        self._on_client_rotated = on_client_rotated
        self._run = run_in_thread
        self.mode = certs.mode
        #: Where files go: ``certificates.dir``, or a staging directory while a migration
        #: bootstraps against another cluster (`bootstrap`, then `relocate`).
        self.directory = directory or certs.dir
        self.token = BootstrapToken.parse(certs.bootstrap_token) if certs.bootstrap_token else None
        self.token_error = ""
        self.ca_pem: bytes | None = None
        self.ca_error = ""
        self.client: CertificateRotator | None = None
        self.serving: CertificateRotator | None = None
        self._kubelet_loop: LoopingCall | None = None
        self._kubelet_seen: tuple[float, int] | None = None
        self.kubelet_error = ""
        self._first_install = True
        self._expiry: Any = None
        if self.mode == "token":
            node = config.node_name
            self.client = CertificateRotator(
                reactor,
                CertificateSpec(
                    name="yurthub",
                    common_name=f"system:node:{node}",
                    organizations=("system:nodes", *certs.organizations),
                    signer_name="kubernetes.io/kube-apiserver-client",
                    usages=CLIENT_USAGES,
                ),
                CertificateStore(self.directory, "yurthub"),
                self._obtain,
                self._install_client,
                run_in_thread=run_in_thread,
                random=random,
            )
            if on_serving_rotated is not None:
                self.serving = CertificateRotator(
                    reactor,
                    CertificateSpec(
                        name="yurthub-server",
                        common_name=f"system:node:{node}",
                        organizations=("system:nodes",),
                        signer_name="kubernetes.io/kubelet-serving",
                        usages=SERVING_USAGES,
                        dns_names=SERVING_DNS,
                        ip_addresses=tuple(dict.fromkeys((*serving_ips, *certs.serving_ips))),
                    ),
                    CertificateStore(self.directory, "yurthub-server"),
                    self._obtain,
                    on_serving_rotated,
                    run_in_thread=run_in_thread,
                    random=random,
                )

    # --- life -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self):  # type: ignore[no-untyped-def]
        """Load what is on disk and start the schedules; fires once loaded."""
        if self.mode == "kubelet":
            self._kubelet_loop = LoopingCall(self._poll_kubelet)
            self._kubelet_loop.clock = self.reactor
            self._kubelet_loop.start(KUBELET_POLL, now=True)
            return
        yield self._load_ca()
        assert self.client is not None
        yield self.client.start()
        if self.serving is not None:
            # The serving certificate is asked for with the client certificate: start once
            # there is one (at once if loaded, else when the first one is installed).
            if self.client.valid:
                yield self.serving.start()

    def stop(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        for rotator in (self.client, self.serving):
            if rotator is not None:
                rotator.stop()
        if self._kubelet_loop is not None and self._kubelet_loop.running:
            self._kubelet_loop.stop()

    # --- a second cluster (migration) ----------------------------------------------------

    async def bootstrap(self) -> tuple[bytes, Credential, Credential | None]:
        """Get everything for the configured cluster now, without starting schedules: the
        CA (discovered with the token and pins, saved as ``ca.crt``), a client certificate
        (with the token) and, when this manager has one, a serving certificate (with the
        new client certificate), each saved in this manager's directory. Raises with the
        reason (`BootstrapError`, `CSRDenied`, ...) at the first failure. For a migration:
        the manager is built on the other cluster's config and a staging directory."""
        assert self.client is not None, "bootstrap is for mode token"
        self.ca_pem = await self._discover_ca()
        self.credentials.replace(self.ca_pem, None, None)
        client = await self._issue(self.client)
        self.credentials.replace(self.ca_pem, client.cert_pem, client.key_pem)
        serving = await self._issue(self.serving) if self.serving is not None else None
        return self.ca_pem, client, serving

    async def _issue(self, rotator: CertificateRotator) -> Credential:
        from yurthub.certificates.csr import build_csr, new_private_key

        spec = rotator.spec
        key_pem = new_private_key()
        csr_pem = build_csr(
            key_pem, spec.common_name, spec.organizations, dns_names=spec.dns_names, ip_addresses=spec.ip_addresses
        )
        cert_pem = await self._obtain(spec, csr_pem)
        credential = Credential.from_pem(cert_pem, key_pem)
        await self._run(rotator.store.save, cert_pem, key_pem)
        return credential

    def relocate(self, directory: str) -> None:
        """Keep the certificates in ``directory`` from now on (the staging directory's
        files have been moved there)."""
        self.directory = directory
        for rotator in (self.client, self.serving):
            if rotator is not None:
                rotator.store = CertificateStore(directory, rotator.spec.name)

    def rebind(
        self,
        credentials: Any,
        failover: Any,
        *,
        node_agent: Any,
        token_agent: Any,
        on_client_rotated: Callable[[], None],
    ) -> None:
        """Work with these collaborators from now on (the running yurthub's, at the switch
        of a migration, instead of the staging ones it bootstrapped with)."""
        self.credentials = credentials
        self.failover = failover
        self.node_agent = node_agent
        self.token_agent = token_agent
        self._on_client_rotated = on_client_rotated

    def adopt(self, ca_pem: bytes, client: Credential, serving: Credential | None) -> None:
        """Run the schedules with this CA and these certificates (from `bootstrap`),
        installing them at once: the client certificate into the credential source, the
        serving one through ``on_serving_rotated``."""
        assert self.client is not None
        self.ca_pem = ca_pem
        self.ca_error = self.token_error = ""
        self._first_install = True
        # The serving rotator first: installing the client certificate starts it otherwise
        # (reading the disk), and it must run once.
        if self.serving is not None and serving is not None:
            self.serving.start(serving).addErrback(lambda f: _log.failure("serving certificate", f))
        self.client.start(client).addErrback(lambda f: _log.failure("client certificate", f))

    # --- the CA -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _load_ca(self):  # type: ignore[no-untyped-def]
        certs = self.config.certificates
        path = certs.ca_file or os.path.join(self.directory, "ca.crt")
        try:
            self.ca_pem = yield self._run(_read, path)
        except OSError:
            self.ca_pem = None
        if self.ca_pem is not None:
            self.credentials.replace(self.ca_pem, None, None)

    async def _discover_ca(self) -> bytes:
        """The cluster CA from cluster-info, verified with the token and the pins, saved."""
        if self.token is None:
            raise BootstrapError("no cluster CA and no bootstrap token to discover it with")
        certs = self.config.certificates
        errors = []
        for backend in self.failover.backends:
            try:
                info = await discover(
                    self.reactor,
                    backend.url,
                    self.token,
                    certs.ca_cert_hashes,
                    unsafe_skip_ca_verification=certs.unsafe_skip_ca_verification,
                )
            except BootstrapError as e:
                errors.append(str(e))
                continue
            await self._run(_write_private, os.path.join(self.directory, "ca.crt"), info.ca_pem)
            _log.info("cluster CA discovered from {url} with the bootstrap token", url=backend.url)
            return info.ca_pem
        raise BootstrapError("; ".join(errors) or "no server to discover the cluster CA from")

    # --- getting certificates signed ----------------------------------------------------

    async def _obtain(self, spec: CertificateSpec, csr_pem: bytes) -> bytes:
        if self.ca_pem is None:
            try:
                self.ca_pem = await self._discover_ca()
                self.ca_error = ""
            except BootstrapError as e:
                self.ca_error = str(e)
                raise
            self.credentials.replace(self.ca_pem, None, None)
        bootstrapping = spec.name == "yurthub" and not (self.client is not None and self.client.valid)
        if bootstrapping and self.token is None:
            raise BootstrapError("no valid certificate and no bootstrap token: set one with POST /v1/token")
        try:
            cert = await request_certificate(
                self._requester(spec),
                self.reactor,
                csr_pem,
                signer_name=spec.signer_name,
                usages=spec.usages,
                watch=self._watcher(spec),
            )
        except CSRDenied:
            raise
        except Exception as e:
            if bootstrapping and _unauthorized(e):
                self.token_error = f"the bootstrap token was refused: {e}"
            raise
        if bootstrapping:
            self.token_error = ""
        return cert

    def _uses_token(self, spec: CertificateSpec) -> bool:
        """Whether a request for ``spec`` goes up with the bootstrap token: only for the
        client certificate, and only while there is no valid one to authenticate with.
        Decided per request: a renewal that outlives its certificate switches to the token."""
        return spec.name == "yurthub" and not (self.client is not None and self.client.valid) and self.token is not None

    def _send(
        self, spec: CertificateSpec, method: bytes, path: str, headers: dict[str, str], body: bytes | None
    ) -> defer.Deferred[Any]:
        """One request for ``spec`` to the first healthy backend; fires with the response."""
        from yurthub.proxy.remote import BytesProducer

        backend = self.failover.attempts(None).next()
        if backend is None:
            return defer.fail(ConnectionError("no healthy cloud backend"))
        use_token = self._uses_token(spec)
        agent = self.token_agent if use_token else self.node_agent
        raw = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
        raw.setRawHeaders(b"user-agent", [b"yurthub/certificates"])
        raw.setRawHeaders(b"host", [backend.host_header])
        if use_token:
            raw.setRawHeaders(b"authorization", [b"Bearer " + str(self.token).encode()])
        producer = BytesProducer(body) if body is not None else None
        return agent.request_to(backend, method, path.encode(), raw, producer)  # type: ignore[no-any-return]

    def _requester(self, spec: CertificateSpec) -> Callable[..., defer.Deferred[tuple[int, bytes]]]:
        @defer.inlineCallbacks
        def request(method: bytes, path: str, headers: dict[str, str], body: bytes | None):  # type: ignore[no-untyped-def]
            response = yield self._send(spec, method, path, headers, body)
            data = yield readBody(response)
            return response.code, data

        return request

    def _watcher(self, spec: CertificateSpec) -> Callable[[str], defer.Deferred[dict[str, Any]]]:
        """watch(path): the object of the first event of a watch, with this spec's
        credentials; cancelling it (the caller's window passed) drops the connection."""

        def watch(path: str) -> defer.Deferred[dict[str, Any]]:
            first = _FirstEvent()
            requesting = self._send(spec, b"GET", path, {"Accept": "application/json"}, None)

            def got(response: Any) -> defer.Deferred[dict[str, Any]]:
                if response.code != 200:
                    discard = _FirstEvent()
                    discard.event.addErrback(lambda _: None)
                    response.deliverBody(discard)
                    raise ConnectionError(f"watch answered HTTP {response.code}")
                response.deliverBody(first)
                return first.event

            result = requesting.addCallback(got)

            def cancel(_: Any) -> None:
                requesting.cancel()
                first.drop()

            outer: defer.Deferred[dict[str, Any]] = defer.Deferred(cancel)
            result.chainDeferred(outer)
            return outer

        return watch

    # --- installing ---------------------------------------------------------------------

    def _install_client(self, credential: Credential) -> None:
        self.credentials.replace(self.ca_pem, credential.cert_pem, credential.key_pem)
        if self._first_install:
            self._first_install = False
        else:
            self._on_client_rotated()
        # When it expires unrenewed (offline), stop presenting it: a server refuses an
        # expired certificate in the handshake, which would fail the health probes too and
        # keep the cloud looking down, so the renewal with the token could never start.
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = self.reactor.callLater(
            max(0.0, credential.not_after - self.reactor.seconds()), self._client_expired, credential
        )
        if self.serving is not None and self.serving._loop is None and not self.serving._stopped:
            self.serving.start().addErrback(lambda f: _log.failure("serving certificate", f))

    def _client_expired(self, credential: Credential) -> None:
        self._expiry = None
        if self.client is None or self.client.credential is not credential:
            return
        _log.warn("the client certificate expired before it could be renewed; renewing with the bootstrap token")
        self.credentials.replace(self.ca_pem, None, None)
        self._on_client_rotated()
        self.client.renew_now()

    def cloud_is_back(self) -> None:
        """A backend is healthy again: renew at once if the certificate is not valid (it
        expired while the node was offline) instead of waiting for the backoff."""
        if self.client is not None and not self.client.valid:
            self.client.renew_now()

    def set_bootstrap_token(self, text: str) -> None:
        """A new bootstrap token (``POST /v1/token``): kept, and tried at once when there is
        no valid certificate. `BootstrapError` when it is malformed."""
        self.token = BootstrapToken.parse(text)
        self.token_error = ""
        _log.info("a new bootstrap token was set (id {id})", id=self.token.id)
        if self.client is not None and not self.client.valid:
            self.client.renew_now()

    # --- kubelet mode -------------------------------------------------------------------

    def _poll_kubelet(self) -> defer.Deferred[None]:
        d = self._run(self._read_kubelet)
        d.addCallbacks(self._kubelet_read, self._kubelet_failed)
        return d

    def _read_kubelet(self) -> tuple[tuple[float, int], bytes, bytes | None] | None:
        certs = self.config.certificates
        path = certs.kubelet_cert_file
        status = os.stat(path)
        seen = (status.st_mtime, status.st_size)
        if seen == self._kubelet_seen:
            return None
        pem = _read(path)
        ca = _read(certs.ca_file or KUBEADM_CA)
        return seen, pem, ca

    def _kubelet_read(self, result: Any) -> None:
        if result is None:
            return
        seen, pem, ca = result
        try:
            cert_pem, key_pem = split_pem(pem)  # kubelet keeps the key in the same file
            credential = Credential.from_pem(cert_pem, key_pem)
        except ValueError as e:
            self.kubelet_error = f"{self.config.certificates.kubelet_cert_file}: {e}"
            _log.warn("kubelet's certificate is not usable: {err}", err=self.kubelet_error)
            return
        first = self._kubelet_seen is None
        self._kubelet_seen = seen
        self.kubelet_error = ""
        self.ca_pem = ca
        self.kubelet_credential = credential
        self.credentials.replace(ca, credential.cert_pem, credential.key_pem)
        _log.info("using kubelet's certificate ({cn})", cn=credential.common_name)
        if not first:
            self._on_client_rotated()

    def _kubelet_failed(self, failure: Any) -> None:
        self.kubelet_error = failure.getErrorMessage()

    # --- readiness ----------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        now = self.reactor.seconds()
        if self.mode == "kubelet":
            credential = getattr(self, "kubelet_credential", None)
            if credential is None:
                return False, f"no kubelet certificate yet: {self.kubelet_error or 'reading'}"
            if credential.expired(now):
                return False, "kubelet's certificate has expired"
            return True, f"kubelet's certificate {credential.common_name}"
        assert self.client is not None
        if self.client.valid:
            credential = self.client.credential
            assert credential is not None
            return True, f"{credential.common_name} valid for {credential.not_after - now:.0f}s"
        why = self.ca_error or self.token_error or self.client.last_error or "being requested"
        if self.token is None:
            why += "; no bootstrap token: POST /v1/token with {\"bootstrapToken\": \"...\"}"
        return False, f"no valid client certificate: {why}"


@implementer(IReadinessCheck)
class CertificateReady:
    """Ready once the node has a valid client certificate."""

    name = "certificate"

    def __init__(self, manager: CertificateManager) -> None:
        #: Replaced when the node moves to another cluster.
        self.manager = manager

    def check(self) -> tuple[bool, str]:
        return self.manager.readiness()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_private(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _unauthorized(error: Exception) -> bool:
    text = str(error)
    return "401" in text or "403" in text or "Unauthorized" in text or "Forbidden" in text


class _FirstEvent(Protocol):
    """Reads a watch stream until its first whole event; ``event`` fires with its object
    (or fails if the stream ends first), and the connection is then dropped."""

    def __init__(self) -> None:
        self.event: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.event.called:
            return
        self._buffer += data
        if b"\n" not in self._buffer:
            if len(self._buffer) > 1 << 20:
                self._fail(ValueError("watch event over 1 MiB"))
            return
        line = self._buffer.split(b"\n", 1)[0]
        try:
            obj = json.loads(line)["object"]
        except (ValueError, KeyError, TypeError) as e:
            self._fail(ValueError(f"watch event does not decode: {e}"))
            return
        self.event.callback(obj)
        self.drop()

    def _fail(self, error: Exception) -> None:
        if not self.event.called:
            self.event.errback(error)
        self.drop()

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if not self.event.called:
            self.event.errback(ConnectionError("the watch ended before an event"))
