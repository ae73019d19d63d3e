"""Where the node's certificates live: kubelet's ``<name>-<timestamp>.pem`` layout on disk.

`CertificateStore` keeps each issued certificate chain and its private key together in one
file, ``<dir>/<name>-YYYY-MM-DD-HH-MM-SS.pem``, and points ``<dir>/<name>-current.pem`` at
the newest one with a symlink, as kubelet's client-certificate store does (so operators find
the files where they expect them). Every step is atomic: a crash at any point leaves the
current link on a complete credential, either the old or the new one. `Credential` is one
parsed pair with the validity window its users need.
"""

from __future__ import annotations

import datetime
import os
import re
import tempfile
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.logger import Logger

__all__ = ["CertificateStore", "Credential"]

_log = Logger()

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL
)

# Older pairs kept besides the current one, so that a bad new certificate can be put back
# by hand.
_KEEP_OLD = 2

_TIMESTAMP = "%Y-%m-%d-%H-%M-%S"


def _public_der(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        raise ValueError("the key type is not supported")
    der: bytes = public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


@dataclass(frozen=True)
class Credential:
    """A certificate chain and the private key of its first certificate, both PEM.

    ``not_before`` and ``not_after`` (POSIX seconds) and ``common_name`` come from the leaf
    certificate; build one with `from_pem`, which refuses a pair that does not belong
    together.
    """

    cert_pem: bytes
    key_pem: bytes
    not_before: float
    not_after: float
    common_name: str

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> Credential:
        """Parse a PEM chain (leaf first) and a PEM private key.

        Raises ``ValueError`` when either does not parse, the chain is empty, or the key is
        not the leaf certificate's.
        """
        try:
            chain = x509.load_pem_x509_certificates(cert_pem)
        except ValueError as e:
            raise ValueError(f"the certificate does not parse: {e}") from None
        if not chain:
            raise ValueError("no certificate in the PEM data")
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as e:
            raise ValueError(f"the private key does not parse: {e}") from None
        leaf = chain[0]
        if _public_der(key.public_key()) != _public_der(leaf.public_key()):
            raise ValueError("the private key does not match the certificate")
        names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = names[0].value if names else ""
        return cls(
            cert_pem=cert_pem,
            key_pem=key_pem,
            not_before=leaf.not_valid_before_utc.timestamp(),
            not_after=leaf.not_valid_after_utc.timestamp(),
            common_name=common_name if isinstance(common_name, str) else common_name.decode(),
        )

    def expired(self, now: float) -> bool:
        """True once ``now`` (POSIX seconds) has reached the end of the validity window."""
        return now >= self.not_after


def _split_pem(data: bytes) -> tuple[bytes, bytes]:
    """Separate a combined file into (certificate blocks, private key block)."""
    certs: list[bytes] = []
    keys: list[bytes] = []
    for match in _PEM_BLOCK.finditer(data):
        block = match.group(0)
        if not block.endswith(b"\n"):
            block += b"\n"
        label = match.group(1)
        if label == b"CERTIFICATE":
            certs.append(block)
        elif label.endswith(b"PRIVATE KEY"):
            keys.append(block)
    if not certs:
        raise ValueError("no certificate in the file")
    if len(keys) != 1:
        raise ValueError(f"expected one private key in the file, found {len(keys)}")
    return b"".join(certs), keys[0]


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CertificateStore:
    """Pairs kept in ``directory`` as ``<name>-<timestamp>.pem`` plus a ``<name>-current.pem`` link.

    `current` reads what the link points at; `save` writes a new pair and moves the link.
    The directory is private to the owner (0700) and the files are 0600. `save` blocks on
    the disk, so run it in a thread; `current` reads one small file.
    """

    def __init__(self, directory: str, name: str = "yurthub") -> None:
        self.directory = directory
        self.name = name
        self._pair_file = re.compile(
            re.escape(name) + r"-(\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d)(?:\.(\d{6}))?\.pem\Z"
        )

    @property
    def current_path(self) -> str:
        """The path of the ``<name>-current.pem`` link."""
        return os.path.join(self.directory, f"{self.name}-current.pem")

    def current(self) -> Credential | None:
        """The credential the current link points at, or None when there is none.

        A missing link is None quietly; a link that cannot be read or whose content is not a
        matching certificate and key (a dangling link, a truncated or garbled file) is None
        with a warning, so the caller bootstraps a new one.
        """
        path = self.current_path
        if not os.path.lexists(path):
            return None
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            cert_pem, key_pem = _split_pem(data)
            return Credential.from_pem(cert_pem, key_pem)
        except (OSError, ValueError) as e:
            _log.warn("ignoring the corrupted certificate {path}: {error}", path=path,
                      error=str(e) or e.__class__.__name__)
            return None

    def save(self, cert_pem: bytes, key_pem: bytes) -> str:
        """Store a new pair and make it current; return the path of the new file.

        Raises ``ValueError`` (writing nothing) when the pair does not parse or match.
        Writes a temporary file, fsyncs and renames it, then replaces the current link by
        renaming a new link over it, and finally removes all but the two newest older
        pairs. Blocking.
        """
        Credential.from_pem(cert_pem, key_pem)
        self._prepare_directory()
        path = self._write_pair(cert_pem, key_pem)
        self._switch_current(path)
        self._prune(path)
        return path

    def _prepare_directory(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        if os.stat(self.directory).st_mode & 0o077:
            os.chmod(self.directory, 0o700)

    def _new_path(self) -> str:
        now = datetime.datetime.fromtimestamp(time.time(), tz=datetime.UTC)
        path = os.path.join(self.directory, f"{self.name}-{now.strftime(_TIMESTAMP)}.pem")
        while os.path.lexists(path):
            stamp = f"{now.strftime(_TIMESTAMP)}.{now.microsecond:06d}"
            path = os.path.join(self.directory, f"{self.name}-{stamp}.pem")
            now += datetime.timedelta(microseconds=1)
        return path

    def _write_pair(self, cert_pem: bytes, key_pem: bytes) -> str:
        if not cert_pem.endswith(b"\n"):
            cert_pem += b"\n"
        fd, temporary = tempfile.mkstemp(prefix=f".{self.name}-", suffix=".tmp",
                                         dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(cert_pem + key_pem)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o600)
            path = self._new_path()
            os.rename(temporary, path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        _fsync_directory(self.directory)
        return path

    def _switch_current(self, path: str) -> None:
        # A relative target keeps the link valid when the directory is moved or mounted
        # elsewhere; rename() replaces the old link in one step.
        temporary = os.path.join(self.directory,
                                 f".{self.name}-current.{os.getpid()}.{time.monotonic_ns()}")
        os.symlink(os.path.basename(path), temporary)
        try:
            os.replace(temporary, self.current_path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        _fsync_directory(self.directory)

    def _prune(self, current: str) -> None:
        older: list[tuple[tuple[str, str], str]] = []
        for entry in os.listdir(self.directory):
            match = self._pair_file.match(entry)
            path = os.path.join(self.directory, entry)
            if match is None or path == current:
                continue
            older.append(((match.group(1), match.group(2) or ""), path))
        older.sort(reverse=True)
        for _, path in older[_KEEP_OLD:]:
            try:
                os.unlink(path)
            except OSError as e:
                _log.warn("could not remove the old certificate {path}: {error}",
                          path=path, error=str(e))
