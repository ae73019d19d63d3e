"""Token discovery of the cluster CA, as ``kubeadm join`` does it.

A bootstrap token ``<id>.<secret>`` lets a node trust a cluster it knows nothing about yet.
`discover` reads ``kube-public/cluster-info`` over TLS without verifying the server, checks
the detached JWS ``jws-kubeconfig-<id>`` (HS256 keyed by the token secret) over the
ConfigMap's kubeconfig, checks the kubeconfig's CA against the ``caCertHashes`` pins
(``sha256:`` of the CA's SubjectPublicKeyInfo), then reads the ConfigMap a second time,
now verifying the server with that CA, and requires the same kubeconfig. The signature
proves the kubeconfig comes from someone holding the token; the pin proves the CA is the
one the operator meant; the second read proves the server holds a certificate of that CA.

Every failure is a `BootstrapError` whose text is one line saying what is wrong; no error
text contains the token secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

__all__ = [
    "BootstrapError",
    "BootstrapToken",
    "ClusterInfo",
    "ca_pin",
    "discover",
    "verify_cluster_info",
]

CLUSTER_INFO_PATH = "/api/v1/namespaces/kube-public/configmaps/cluster-info"

#: cluster-info is a few kilobytes; an unverified server must not make us buffer more.
MAX_BODY_BYTES = 1 << 20

_TOKEN = re.compile(r"([a-z0-9]{6})\.([a-z0-9]{16})")
_PIN = re.compile(r"sha256:[0-9a-f]{64}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class BootstrapError(Exception):
    """Discovery failed; ``str(error)`` is one line naming what is wrong."""


@dataclass(frozen=True)
class BootstrapToken:
    """A bootstrap token: a public ``id`` (6 characters) and a ``secret`` (16 characters).

    The secret is left out of the repr so that logging the object does not leak it.
    """

    id: str
    secret: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> BootstrapToken:
        """The token written as ``<id>.<secret>``; `BootstrapError` when it is not
        ``[a-z0-9]{6}.[a-z0-9]{16}`` (the message never repeats the text)."""
        match = _TOKEN.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise BootstrapError(
                "malformed bootstrap token: it must match [a-z0-9]{6}.[a-z0-9]{16}"
            )
        return cls(match.group(1), match.group(2))

    def __str__(self) -> str:
        """The token as written: ``<id>.<secret>``."""
        return f"{self.id}.{self.secret}"


@dataclass(frozen=True)
class ClusterInfo:
    """The verified contents of ``cluster-info``: the kubeconfig text as published, the API
    server URL it names, and its CA bundle (PEM, one or more certificates)."""

    kubeconfig: str
    server: str
    ca_pem: bytes


def ca_pin(cert_pem: bytes) -> str:
    """The kubeadm CA pin of a PEM certificate: ``sha256:`` and the hex SHA-256 of its
    DER SubjectPublicKeyInfo. `BootstrapError` when ``cert_pem`` holds no certificate."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise BootstrapError(f"not a PEM certificate: {_one_line(e)}") from None
    return _pin_of(cert)


def _pin_of(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _b64url_decode(text: str) -> bytes:
    if not _BASE64URL.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _check_signature(detached: str, kubeconfig: str, token: BootstrapToken, key: str) -> None:
    parts = detached.split(".")
    if len(parts) != 3 or parts[1] != "" or not parts[0] or not parts[2]:
        raise BootstrapError(f"cluster-info {key} is not a detached JWS (header..signature)")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        signature = _b64url_decode(parts[2])
    except (ValueError, binascii.Error):
        raise BootstrapError(
            f"cluster-info {key} is not a detached JWS (bad base64url or header)"
        ) from None
    if not isinstance(header, dict):
        raise BootstrapError(f"cluster-info {key} has a JWS header that is not a JSON object")
    if header.get("alg") != "HS256":
        raise BootstrapError(
            f"cluster-info {key} is signed with alg {header.get('alg')!r}, not HS256"
        )
    if header.get("kid") != token.id:
        raise BootstrapError(
            f"cluster-info {key} names key id {header.get('kid')!r}, not {token.id!r}"
        )
    signed = f"{parts[0]}.{_b64url_encode(kubeconfig.encode('utf-8'))}".encode("ascii")
    expected = hmac.new(token.secret.encode("ascii"), signed, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise BootstrapError(
            f"cluster-info JWS signature {key} does not match its kubeconfig: "
            "wrong token secret or tampered cluster-info"
        )


def _cluster_of(config: dict[str, Any]) -> dict[str, Any]:
    """The cluster the kubeconfig's current context names, else its first cluster."""
    clusters = [c for c in config.get("clusters") or [] if isinstance(c, dict)]
    if not clusters:
        raise BootstrapError("cluster-info kubeconfig has no clusters")
    wanted = None
    current = config.get("current-context")
    for context in config.get("contexts") or []:
        if isinstance(context, dict) and current and context.get("name") == current:
            wanted = (context.get("context") or {}).get("cluster")
    for entry in clusters:
        if wanted is None or entry.get("name") == wanted:
            cluster = entry.get("cluster")
            if isinstance(cluster, dict):
                return cluster
    raise BootstrapError("cluster-info kubeconfig has no usable cluster entry")


def verify_cluster_info(configmap: dict[str, Any], token: BootstrapToken) -> ClusterInfo:
    """Check the ``jws-kubeconfig-<id>`` signature of a cluster-info ConfigMap (as decoded
    JSON) and return the kubeconfig it signs with its server and CA.

    The signature is a compact detached JWS (``header..signature``) whose header says
    ``alg: HS256`` and ``kid: <token id>``; the HMAC-SHA256 with the token secret over
    ``header.base64url(kubeconfig)`` must match (compared in constant time). The CA is not
    checked against any pin here: `discover` does that.
    """
    data = configmap.get("data") if isinstance(configmap, dict) else None
    if not isinstance(data, dict):
        raise BootstrapError("cluster-info ConfigMap has no data")
    kubeconfig = data.get("kubeconfig")
    if not isinstance(kubeconfig, str) or not kubeconfig:
        raise BootstrapError("cluster-info ConfigMap has no kubeconfig")
    key = f"jws-kubeconfig-{token.id}"
    detached = data.get(key)
    if not isinstance(detached, str) or not detached:
        raise BootstrapError(
            f"cluster-info has no JWS signature {key}: token id {token.id!r} is not valid for this cluster"
        )
    _check_signature(detached, kubeconfig, token, key)
    try:
        config = yaml.safe_load(kubeconfig)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        raise BootstrapError(f"cluster-info kubeconfig is not valid YAML: {problem}") from None
    if not isinstance(config, dict):
        raise BootstrapError("cluster-info kubeconfig is not a kubeconfig (not a mapping)")
    cluster = _cluster_of(config)
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise BootstrapError("cluster-info kubeconfig names no server")
    ca_data = cluster.get("certificate-authority-data")
    if not isinstance(ca_data, str) or not ca_data:
        raise BootstrapError("cluster-info kubeconfig has no certificate-authority-data")
    try:
        ca_pem = base64.b64decode(ca_data, validate=True)
        x509.load_pem_x509_certificates(ca_pem)
    except (ValueError, binascii.Error):
        raise BootstrapError(
            "cluster-info certificate-authority-data is not a PEM certificate"
        ) from None
    return ClusterInfo(kubeconfig=kubeconfig, server=server, ca_pem=ca_pem)


def _check_pins(info: ClusterInfo, pins: Sequence[str], unsafe_skip_ca_verification: bool) -> None:
    """kubeadm's rule: an empty pin set is allowed only with the unsafe switch; pins that
    are given are always enforced, and any certificate of the bundle may match one."""
    if not pins:
        if unsafe_skip_ca_verification:
            return
        raise BootstrapError("caCertHashes is empty; set it or unsafeSkipCAVerification: true")
    found = [_pin_of(cert) for cert in x509.load_pem_x509_certificates(info.ca_pem)]
    if not set(found) & set(pins):
        raise BootstrapError(f"cluster-info CA pin {found[0]} is not in caCertHashes")


def _normalise_pins(pins: Sequence[str]) -> list[str]:
    if isinstance(pins, str):
        pins = [pins]
    normal = []
    for pin in pins:
        lowered = pin.strip().lower() if isinstance(pin, str) else ""
        if not _PIN.fullmatch(lowered):
            raise BootstrapError(f"caCertHashes entry {pin!r} is not sha256:<64 hex digits>")
        normal.append(lowered)
    return normal


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """TLS that accepts any server certificate: only for the first, signature-checked read."""

    def __init__(self, hostname: str) -> None:
        self._options = ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        is_ip = isIPAddress(hostname) or isIPv6Address(hostname)
        self._server_name = None if is_ip else hostname.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """A client connection without peer verification (SNI still sent for names)."""
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


@implementer(IPolicyForHTTPS)
class _OneCreator:
    """An HTTPS policy that answers every host with one connection creator."""

    def __init__(self, creator: Any) -> None:
        self._creator = creator

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """The creator given at construction."""
        return self._creator


class _BoundedBody(Protocol):
    """Collects a response body up to ``limit`` bytes into ``finished``."""

    def __init__(self, finished: defer.Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._finished.errback(
                BootstrapError(f"cluster-info answer is larger than {self._limit} bytes")
            )
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(reason)


def _read_body(response: IResponse) -> defer.Deferred[bytes]:
    def cancel(d: defer.Deferred[bytes]) -> None:
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.stopProducing()

    finished: defer.Deferred[bytes] = defer.Deferred(cancel)
    protocol = _BoundedBody(finished, MAX_BODY_BYTES)
    response.deliverBody(protocol)
    return finished


def _describe(failure: Failure) -> str:
    """One line for a failed request, looking inside Twisted's wrapper exceptions."""
    value = failure.value
    if isinstance(value, ResponseNeverReceived | ResponseFailed) and value.reasons:
        inner = value.reasons[0]
        if isinstance(inner, Failure):
            return _describe(inner)
    if isinstance(value, VerificationError):
        return "TLS failed: the server certificate does not name the host in the URL"
    if isinstance(value, SSL.Error):
        # pyOpenSSL's args are [[(library, function, reason), ...]]; the reasons say it.
        details = value.args[0] if value.args and isinstance(value.args[0], list) else []
        reasons = [str(d[-1]) for d in details if isinstance(d, tuple) and d[-1]]
        return "TLS failed: " + (", ".join(reasons) or "handshake error")
    return _one_line(value) or type(value).__name__


def _cancelled(failure: Failure) -> bool:
    """Whether the request ended by a cancellation (Agent wraps it in its own errors)."""
    if failure.check(defer.CancelledError):
        return True
    value = failure.value
    if isinstance(value, ResponseNeverReceived | ResponseFailed):
        return any(isinstance(r, Failure) and _cancelled(r) for r in value.reasons)
    return False


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _status_message(body: bytes) -> str:
    try:
        status = json.loads(body)
    except ValueError:
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return _one_line(message)[:200] if isinstance(message, str) else ""


async def _fetch(reactor: Any, url: str, creator: Any, timeout: float) -> dict[str, Any]:
    """GET ``url`` through TLS made by ``creator``; the decoded JSON object.

    Each call has its own connection pool, so a connection opened without verification is
    never reused for the verified read; the pool is closed before returning.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.retryAutomatically = False
    agent = Agent(reactor, contextFactory=_OneCreator(creator), connectTimeout=timeout, pool=pool)
    headers = Headers({b"accept": [b"application/json"], b"user-agent": [b"yurthub/bootstrap"]})

    def read(response: IResponse) -> defer.Deferred[tuple[int, bytes]]:
        return _read_body(response).addCallback(lambda body: (response.code, body))

    answer = agent.request(b"GET", url.encode("ascii"), headers).addCallback(read)
    # Our own timer rather than addTimeout: Agent wraps the cancellation in
    # ResponseNeverReceived, and a cancellation by our caller must stay a cancellation.
    expired = []

    def expire() -> None:
        expired.append(True)
        answer.cancel()

    timer = reactor.callLater(timeout, expire)
    try:
        code, body = await answer
    except BootstrapError:
        raise
    except Exception:
        failure = Failure()
        if expired:
            raise BootstrapError(f"no answer from {url} within {timeout:g} s") from None
        if _cancelled(failure):
            raise defer.CancelledError() from None
        raise BootstrapError(f"cannot read {url}: {_describe(failure)}") from None
    finally:
        if timer.active():
            timer.cancel()
        await pool.closeCachedConnections()
    if code != 200:
        message = _status_message(body)
        raise BootstrapError(f"{url} answered HTTP {code}" + (f": {message}" if message else ""))
    try:
        decoded = json.loads(body)
    except ValueError:
        raise BootstrapError(f"{url} did not answer JSON") from None
    if not isinstance(decoded, dict):
        raise BootstrapError(f"{url} did not answer a JSON object")
    return decoded


def _trust_root(ca_pem: bytes) -> Any:
    certificates = [
        ssl.Certificate.loadPEM(cert.public_bytes(serialization.Encoding.PEM))
        for cert in x509.load_pem_x509_certificates(ca_pem)
    ]
    return ssl.trustRootFromCertificates(certificates)


async def discover(
    reactor: Any,
    server_url: str,
    token: BootstrapToken,
    pins: Sequence[str],
    *,
    unsafe_skip_ca_verification: bool = False,
    timeout: float = 10.0,
) -> ClusterInfo:
    """Discover and verify the cluster CA from ``server_url`` (``https://host[:port]``).

    Reads cluster-info without verifying the server (no client certificate, no token),
    checks its JWS with ``token`` (`verify_cluster_info`) and its CA against ``pins``
    (an empty ``pins`` is an error unless ``unsafe_skip_ca_verification``; pins that are
    given are always enforced, as in kubeadm), then reads it again verifying the server
    and its host name with that CA and requires the identical kubeconfig. Each read is
    bounded by ``timeout`` seconds. Fires with the `ClusterInfo`; fails with
    `BootstrapError` only (or `CancelledError` when the caller cancels it).
    """
    normal_pins = _normalise_pins(pins)
    try:
        parts = urlsplit(server_url.strip())
        parts.port  # noqa: B018  (raises ValueError on a bad port)
        url = f"https://{parts.netloc}{parts.path.rstrip('/')}{CLUSTER_INFO_PATH}"
        url.encode("ascii")
        host = parts.hostname or ""
        unverified = _UnverifiedTLS(host)
    except (ValueError, UnicodeError):
        host = ""
    if parts.scheme != "https" or not host:
        raise BootstrapError(f"bootstrap server {server_url!r} is not an https://host[:port] URL")

    insecure = await _fetch(reactor, url, unverified, timeout)
    info = verify_cluster_info(insecure, token)
    _check_pins(info, normal_pins, unsafe_skip_ca_verification)

    verified_creator = ssl.optionsForClientTLS(
        host,
        trustRoot=_trust_root(info.ca_pem),
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
    )
    secure = await _fetch(reactor, url, verified_creator, timeout)
    data = secure.get("data")
    kubeconfig = data.get("kubeconfig") if isinstance(data, dict) else None
    if kubeconfig != info.kubeconfig:
        raise BootstrapError(
            "the second, CA-verified read of cluster-info holds a different kubeconfig"
        )
    return info
