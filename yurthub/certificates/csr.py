"""Keys, certificate signing requests, and getting them signed through ``certificates.k8s.io/v1``.

`new_private_key` and `build_csr` make what a node sends (an EC P-256 key and a PEM CSR
built with ``cryptography``'s x509 API, since pyOpenSSL no longer has a CSR type).
`request_certificate` posts the CSR as a ``CertificateSigningRequest`` and polls it until
the signer fills in ``status.certificate``, as client-go's ``util/certificate/csr`` does
for kubelet: a ``Denied`` or ``Failed`` condition ends the wait with `CSRDenied`, anything
else that goes wrong (an unexpected answer, the deadline) with `CSRError`. Transport
errors and 5xx/429 answers are retried with a doubling backoff until the deadline.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

__all__ = [
    "CLIENT_SIGNER",
    "CLIENT_USAGES",
    "CSRDenied",
    "CSRError",
    "Requester",
    "SERVING_SIGNER",
    "SERVING_USAGES",
    "build_csr",
    "new_private_key",
    "request_certificate",
]

_log = Logger()

#: (method, path with query, headers, body) -> (status code, body). The caller picks the
#: backend and the credentials (bootstrap token or the current certificate).
Requester = Callable[[bytes, str, dict[str, str], bytes | None], Deferred[tuple[int, bytes]]]

CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client"
CLIENT_USAGES = ("digital signature", "key encipherment", "client auth")
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
SERVING_USAGES = ("digital signature", "key encipherment", "server auth")

CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"

_INITIAL_BACKOFF = 2.0
_MAX_BACKOFF = 32.0


class CSRDenied(Exception):
    """The CSR got a ``Denied`` or ``Failed`` condition; the message names its reason."""


class CSRError(Exception):
    """The certificate could not be obtained for another reason: a bad answer, the deadline."""


def new_private_key() -> bytes:
    """A new EC P-256 private key as unencrypted PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def build_csr(
    key_pem: bytes,
    common_name: str,
    organizations: Sequence[str],
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> bytes:
    """A PEM CSR for ``key_pem`` (EC or RSA) with subject O=``organizations``, CN=``common_name``.

    ``dns_names`` and ``ip_addresses`` become subject alternative names (serving
    certificates need them). Raises ``ValueError`` for an unusable key or a bad address.
    """
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("only EC and RSA keys can sign a CSR here")
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _answer_error(status: int, body: bytes) -> str:
    """A short description of a non-success answer, using a Status message when present."""
    message = ""
    try:
        decoded = json.loads(body)
        if isinstance(decoded, dict):
            message = str(decoded.get("message") or decoded.get("reason") or "")
    except ValueError:
        message = body[:200].decode("utf-8", "replace")
    return _one_line(f"HTTP {status}" + (f": {message}" if message else ""))


def _transient(status: int) -> bool:
    return status == 429 or status >= 500


def _denial(obj: dict[str, Any]) -> str | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if not isinstance(condition, dict):
            continue
        kind = condition.get("type")
        if kind in ("Denied", "Failed") and condition.get("status", "True") != "False":
            reason = condition.get("reason") or "no reason given"
            message = condition.get("message") or ""
            what = "denied" if kind == "Denied" else "failed"
            return _one_line(f"{what}: {reason}" + (f": {message}" if message else ""))
    return None


def _issued(obj: dict[str, Any], csr_pem: bytes) -> bytes | None:
    """The certificate in ``status.certificate``, checked against the CSR's key; None if unset."""
    encoded = (obj.get("status") or {}).get("certificate")
    if not encoded:
        return None
    name = (obj.get("metadata") or {}).get("name", "?")
    try:
        cert_pem = base64.b64decode(encoded, validate=True)
        chain = x509.load_pem_x509_certificates(cert_pem)
    except (ValueError, TypeError, binascii.Error) as e:
        raise CSRError(_one_line(f"CSR {name}: the issued certificate does not parse: {e}")) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    wanted = x509.load_pem_x509_csr(csr_pem).public_key().public_bytes(
        serialization.Encoding.DER, spki)
    if chain[0].public_key().public_bytes(serialization.Encoding.DER, spki) != wanted:
        raise CSRError(f"CSR {name}: the issued certificate is not for the requested key")
    return cert_pem


#: watch(path) -> Deferred firing with the object of the first event on that watch path;
#: it fails when the watch ends or breaks first.
Watcher = Callable[[str], Deferred[dict[str, Any]]]

#: Longest single watch before looking again with a GET.
WATCH_WINDOW = 30.0


async def _watch_once(watch: Watcher, waiter: _Waiter, name: str, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The CSR as the next watch event shows it, or None (window over, watch broken: the
    caller looks with a GET; a broken watch waits the backoff first)."""
    rv = (obj.get("metadata") or {}).get("resourceVersion") or ""
    selector = quote(f"metadata.name={name}", safe="")
    path = f"{CSR_PATH}?watch=true&fieldSelector={selector}&resourceVersion={quote(str(rv), safe='')}"
    window = min(WATCH_WINDOW, max(waiter.remaining(), 0.0))
    event = watch(path)
    event.addTimeout(window, waiter.clock)
    try:
        changed = await event
    except (TimeoutError, defer.TimeoutError, defer.CancelledError):
        return None  # the window passed: look with a GET
    except Exception as e:
        waiter.last_error = _one_line(str(e) or e.__class__.__name__)
        await waiter.sleep(_INITIAL_BACKOFF)
        return None
    if isinstance(changed, dict) and changed.get("kind") == "CertificateSigningRequest":
        return changed
    return None


class _Waiter:
    """One CSR's round trips under one deadline, with the retry backoff."""

    def __init__(self, request: Requester, clock: IReactorTime, timeout: float) -> None:
        self._request = request
        self._clock = clock
        self.clock = clock
        self._timeout = timeout
        self._deadline = clock.seconds() + timeout
        self._backoff = _INITIAL_BACKOFF
        self.last_error = ""

    def remaining(self) -> float:
        return self._deadline - self._clock.seconds()

    def timed_out(self, doing: str) -> CSRError:
        detail = f" (last error: {self.last_error})" if self.last_error else ""
        return CSRError(_one_line(f"timed out after {self._timeout:g} s {doing}{detail}"))

    async def sleep(self, seconds: float) -> None:
        seconds = min(seconds, max(self.remaining(), 0.0))
        await deferLater(self._clock, seconds, lambda: None)

    async def call(self, method: bytes, path: str, body: bytes | None,
                   doing: str) -> tuple[int, bytes] | None:
        """One round trip cut at the deadline; None after a transient failure (backed off)."""
        remaining = self.remaining()
        if remaining <= 0:
            raise self.timed_out(doing)
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        answer: Deferred[tuple[int, bytes]] = self._request(method, path, headers, body)
        answer.addTimeout(remaining, self._clock)
        try:
            status, content = await answer
        except Exception as e:
            if self.remaining() <= 0:
                raise self.timed_out(doing) from None
            self.last_error = _one_line(str(e) or e.__class__.__name__)
        else:
            if not _transient(status):
                self._backoff = _INITIAL_BACKOFF
                return status, content
            self.last_error = _answer_error(status, content)
        _log.info("CSR: {doing} failed ({error}); retrying in {delay:g} s",
                  doing=doing, error=self.last_error, delay=self._backoff)
        await self.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
        return None


def _decode(status: int, body: bytes, doing: str) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if not isinstance(obj, dict) or obj.get("kind") != "CertificateSigningRequest":
        raise CSRError(_one_line(f"{doing}: HTTP {status} without a CertificateSigningRequest"))
    return obj


async def request_certificate(
    request: Requester,
    clock: IReactorTime,
    csr_pem: bytes,
    *,
    signer_name: str,
    usages: Sequence[str],
    expiration_seconds: int | None = None,
    timeout: float = 300.0,
    poll_interval: float = 2.0,
    watch: Watcher | None = None,
) -> bytes:
    """Post ``csr_pem`` as a CertificateSigningRequest and return the issued certificate PEM.

    Creates ``csr-<random>`` (``generateName``), then GETs it at once and every
    ``poll_interval`` seconds after until ``status.certificate`` is set; the certificate must be for the CSR's key.
    With ``watch``, the wait between looks is a watch of that one CSR from the version
    last seen (its first event, or at most ``WATCH_WINDOW`` seconds, then a GET), so
    the certificate is taken the moment it is issued; without, a GET every interval.
    Transport errors, 5xx and 429 are retried after 2 s, doubling up to 32 s. Raises
    `CSRDenied` on a Denied/Failed condition and `CSRError` on any other answer or when
    ``timeout`` seconds (on ``clock``) pass first.
    """
    spec: dict[str, Any] = {
        "request": base64.b64encode(csr_pem).decode("ascii"),
        "signerName": signer_name,
        "usages": list(usages),
    }
    if expiration_seconds is not None:
        spec["expirationSeconds"] = expiration_seconds
    body = json.dumps({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "csr-"},
        "spec": spec,
    }).encode()
    waiter = _Waiter(request, clock, timeout)

    doing = "creating the CSR"
    while True:
        answer = await waiter.call(b"POST", CSR_PATH, body, doing)
        if answer is None:
            continue
        status, content = answer
        if status not in (200, 201):
            raise CSRError(_one_line(f"{doing}: {_answer_error(status, content)}"))
        obj = _decode(status, content, doing)
        break
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise CSRError("the created CSR has no name")
    _log.info("CSR {name} created for signer {signer}", name=name, signer=signer_name)

    doing = f"waiting for CSR {name} to be signed"
    path = f"{CSR_PATH}/{name}"
    # An approver that acts on create (as auto-approvers do) has usually signed by the
    # time the create answer arrives, so the first look is at once; then every interval.
    delay = 0.0
    while True:
        denial = _denial(obj)
        if denial is not None:
            raise CSRDenied(f"CSR {name} {denial}")
        cert_pem = _issued(obj, csr_pem)
        if cert_pem is not None:
            return cert_pem
        if waiter.remaining() <= 0:
            raise waiter.timed_out(doing)
        if delay and watch is not None:
            changed = await _watch_once(watch, waiter, name, obj)
            if changed is not None:
                obj = changed
                continue
        elif delay:
            await waiter.sleep(delay)
        delay = poll_interval
        answer = await waiter.call(b"GET", path, None, doing)
        if answer is None:
            continue
        status, content = answer
        if status == 404:
            raise CSRError(f"CSR {name} was deleted before it was signed")
        if status != 200:
            raise CSRError(_one_line(f"{doing}: {_answer_error(status, content)}"))
        obj = _decode(status, content, doing)
