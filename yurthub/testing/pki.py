"""An in-memory certificate authority for tests, demos and the simulated kube-apiserver.

`TestPKI` makes a self-signed CA (CN ``yurthub-test-ca``) and issues server and client
certificates the way a Kubernetes control plane would: servers get their IP addresses
as IP SANs and their names as DNS SANs, clients carry the user name as CN and the groups
as O. Everything stays in memory as PEM bytes until `TestPKI.write_files` puts a pair
and the CA on disk (key files mode 0600).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PrivateKey", "TestPKI"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# Certificates start this long before "now" so that small clock differences between
# the process that issues and the one that verifies do not make them "not yet valid".
_BACKDATE = datetime.timedelta(minutes=5)


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}: use 'ec' or 'rsa'")


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _split_hosts(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


class TestPKI:
    """A throw-away certificate authority whose certificates Go and OpenSSL clients accept.

    The CA key never leaves the object. ``now`` returns the current POSIX time and decides
    validity periods (tests may pass a fake clock's ``seconds``); certificates are
    back-dated by five minutes to tolerate clock skew.
    """

    __test__ = False  # not a test case, whatever a collector guesses from the name

    def __init__(
        self,
        common_name: str = "yurthub-test-ca",
        *,
        key_type: str = "ec",
        lifetime_seconds: int = 10 * 365 * 86400,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._key_type = key_type
        self._now = now
        self._ca_key = _new_key(key_type)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        start = self._start()
        public_key = self._ca_key.public_key()
        self.ca_cert: x509.Certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + _BACKDATE + datetime.timedelta(seconds=lifetime_seconds))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_cert_pem: bytes = self.ca_cert.public_bytes(serialization.Encoding.PEM)
        self.ca_key_pem: bytes = _key_pem(self._ca_key)

    def _start(self) -> datetime.datetime:
        now = datetime.datetime.fromtimestamp(self._now(), tz=datetime.UTC)
        return now.replace(microsecond=0) - _BACKDATE

    @property
    def ca_cert_hash(self) -> str:
        """The kubeadm-style CA pin: ``sha256:`` and the hex SHA-256 of the CA's public key info."""
        spki = self.ca_cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "sha256:" + hashlib.sha256(spki).hexdigest()

    def _issue(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        *,
        lifetime_seconds: float,
        usages: Sequence[x509.ObjectIdentifier],
        sans: Sequence[x509.GeneralName] = (),
    ) -> bytes:
        start = self._start()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + _BACKDATE + datetime.timedelta(seconds=lifetime_seconds))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue_server(
        self,
        hosts: Iterable[str] = ("127.0.0.1", "localhost", "::1"),
        *,
        common_name: str | None = None,
        lifetime_seconds: float = 365 * 86400,
    ) -> tuple[bytes, bytes]:
        """Issue a serving certificate; return ``(cert_pem, key_pem)``.

        Every host that parses as an IP address becomes an IP SAN, every other one a DNS
        SAN; the CN is ``common_name`` or the first host.
        """
        hosts = list(hosts)
        if not hosts:
            raise ValueError("a server certificate needs at least one host")
        key = _new_key(self._key_type)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or hosts[0])])
        cert = self._issue(
            subject,
            key.public_key(),
            lifetime_seconds=lifetime_seconds,
            usages=[ExtendedKeyUsageOID.SERVER_AUTH],
            sans=_split_hosts(hosts),
        )
        return cert, _key_pem(key)

    def issue_client(
        self,
        common_name: str,
        organizations: Iterable[str] = (),
        *,
        lifetime_seconds: float = 365 * 86400,
    ) -> tuple[bytes, bytes]:
        """Issue a client certificate for user ``common_name`` in groups ``organizations``.

        Returns ``(cert_pem, key_pem)``; the certificate is valid for client auth only, as
        kube-apiserver's client signer issues them.
        """
        key = _new_key(self._key_type)
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        cert = self._issue(
            x509.Name(attributes),
            key.public_key(),
            lifetime_seconds=lifetime_seconds,
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        return cert, _key_pem(key)

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        lifetime_seconds: float = 365 * 86400,
        usages: Iterable[str] = ("client auth",),
    ) -> bytes:
        """Sign a PEM certificate signing request as the Kubernetes CSR signers do.

        The subject and the SANs come from the request; ``usages`` takes the names used by
        ``certificates.k8s.io`` (``client auth``, ``server auth``). Raises ``ValueError``
        on a request whose signature does not verify.
        """
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise ValueError("the certificate signing request's signature is invalid")
        oids = {"client auth": ExtendedKeyUsageOID.CLIENT_AUTH,
                "server auth": ExtendedKeyUsageOID.SERVER_AUTH}
        wanted = [oids[u] for u in usages if u in oids] or [ExtendedKeyUsageOID.CLIENT_AUTH]
        sans: list[x509.GeneralName] = []
        try:
            extension = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            sans = list(extension.value)
        except x509.ExtensionNotFound:
            pass
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError("only EC and RSA keys are supported")
        return self._issue(
            csr.subject, public_key, lifetime_seconds=lifetime_seconds, usages=wanted, sans=sans
        )

    def write_files(
        self,
        directory: str | os.PathLike[str],
        name: str = "client",
        cert_pem: bytes | None = None,
        key_pem: bytes | None = None,
    ) -> dict[str, str]:
        """Write ``ca.crt`` and, when given, ``<name>.crt`` and ``<name>.key`` (mode 0600).

        The directory is created if missing. Returns the paths as
        ``{"ca": ..., "cert": ..., "key": ...}`` (``cert``/``key`` absent when not written).
        """
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        paths: dict[str, str] = {}
        ca_path = target / "ca.crt"
        ca_path.write_bytes(self.ca_cert_pem)
        paths["ca"] = str(ca_path)
        if cert_pem is not None:
            cert_path = target / f"{name}.crt"
            cert_path.write_bytes(cert_pem)
            paths["cert"] = str(cert_path)
        if key_pem is not None:
            key_path = target / f"{name}.key"
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key_pem)
            os.chmod(key_path, 0o600)
            paths["key"] = str(key_path)
        return paths
