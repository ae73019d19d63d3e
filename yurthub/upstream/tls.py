"""TLS towards the cloud: verified against the cluster CA, optionally presenting the node's
client certificate.

`FileCredentials` reads the CA bundle, client certificate and key from PEM files once, at
construction (before the reactor runs). `replace` swaps them at run time (the certificate
manager does that on rotation); connection creators are cached per host name and dropped on
every swap, so the next new connection uses the new certificate and pooled ones keep theirs.
Host names and IP addresses are both verified against the server certificate
(service_identity, through Twisted's ``optionsForClientTLS``).
"""

from __future__ import annotations

from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from yurthub.interfaces import ICredentialSource


class CredentialError(ValueError):
    """A certificate or key file is missing or unreadable; the message names the file."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CredentialError(f"{what} {path}: {e.strerror}") from None


@implementer(ICredentialSource)
class FileCredentials:
    """The cluster CA and the node's client certificate, from PEM bytes or files."""

    def __init__(self, ca_pem: bytes | None = None, cert_pem: bytes | None = None, key_pem: bytes | None = None) -> None:
        self._creators: dict[tuple[str, bool], IOpenSSLClientConnectionCreator] = {}
        self._trust: ssl.Certificate | None = None
        self._client: ssl.PrivateCertificate | None = None
        self.replace(ca_pem, cert_pem, key_pem)

    @classmethod
    def from_files(cls, ca_file: str = "", cert_file: str = "", key_file: str = "") -> FileCredentials:
        """Read the named PEM files; empty names mean "none" (system trust, no client cert)."""
        ca = _read(ca_file, "CA file") if ca_file else None
        cert = _read(cert_file, "certificate file") if cert_file else None
        key = _read(key_file, "key file") if key_file else None
        try:
            return cls(ca, cert, key)
        except Exception as e:
            names = ", ".join(n for n in (ca_file, cert_file, key_file) if n)
            raise CredentialError(f"cannot load TLS material from {names}: {e}") from None

    def replace(self, ca_pem: bytes | None, cert_pem: bytes | None, key_pem: bytes | None) -> None:
        """Use new material for every connection made from now on."""
        trust = ssl.Certificate.loadPEM(ca_pem) if ca_pem else None
        client = None
        if cert_pem and key_pem:
            client = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
        self._trust, self._client = trust, client
        self._creators = {}

    @property
    def has_client_certificate(self) -> bool:
        return self._client is not None

    def client_creator(self, hostname: str, with_client_certificate: bool) -> IOpenSSLClientConnectionCreator:
        key = (hostname, with_client_certificate)
        creator = self._creators.get(key)
        if creator is None:
            creator = ssl.optionsForClientTLS(
                hostname,
                trustRoot=self._trust if self._trust is not None else ssl.platformTrust(),
                clientCertificate=self._client if with_client_certificate else None,
                extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
            )
            self._creators[key] = creator
        return creator
