"""Tests for yurthub.certificates.pki: the on-disk certificate store and parsed credentials."""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from yurthub.certificates.pki import CertificateStore, Credential
from yurthub.testing.pki import TestPKI

PKI = TestPKI()


def issue(name: str = "system:node:edge-1", lifetime: float = 3600) -> tuple[bytes, bytes]:
    return PKI.issue_client(name, ["system:nodes"], lifetime_seconds=lifetime)


class CredentialTests(SynchronousTestCase):
    def test_from_pem_reads_the_leaf(self) -> None:
        cert, key = issue(lifetime=3600)
        credential = Credential.from_pem(cert, key)
        self.assertEqual(credential.common_name, "system:node:edge-1")
        self.assertEqual(credential.cert_pem, cert)
        self.assertEqual(credential.key_pem, key)
        # TestPKI back-dates by five minutes.
        self.assertEqual(credential.not_after - credential.not_before, 3600 + 300)

    def test_expired_at_not_after(self) -> None:
        credential = Credential.from_pem(*issue())
        self.assertFalse(credential.expired(credential.not_after - 1))
        self.assertTrue(credential.expired(credential.not_after))

    def test_chain_with_ca_is_accepted(self) -> None:
        cert, key = issue()
        credential = Credential.from_pem(cert + PKI.ca_cert_pem, key)
        self.assertEqual(credential.common_name, "system:node:edge-1")

    def test_mismatched_key_is_refused(self) -> None:
        cert, _ = issue()
        _, other_key = issue()
        with self.assertRaises(ValueError):
            Credential.from_pem(cert, other_key)

    def test_garbage_is_refused(self) -> None:
        cert, key = issue()
        for pair in ((b"garbage", key), (cert, b"garbage"), (b"", key), (cert[:100], key)):
            with self.assertRaises(ValueError):
                Credential.from_pem(*pair)


class CertificateStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.directory = os.path.join(self.root, "pki")
        self.store = CertificateStore(self.directory)
        self.warnings: list[dict[str, Any]] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_level") is not None and event["log_level"].name == "warn":
                self.warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def pem_files(self) -> list[str]:
        return sorted(e for e in os.listdir(self.directory)
                      if e.startswith("yurthub-") and e != "yurthub-current.pem")

    def test_empty_directory_has_no_current(self) -> None:
        self.assertIsNone(self.store.current())
        self.assertEqual(self.warnings, [])

    def test_round_trip(self) -> None:
        cert, key = issue()
        path = self.store.save(cert, key)
        self.assertRegex(os.path.basename(path),
                         r"^yurthub-\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d(\.\d{6})?\.pem$")
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(), cert + key)
        current = self.store.current()
        assert current is not None
        self.assertEqual((current.cert_pem, current.key_pem), (cert, key))
        self.assertEqual(current.common_name, "system:node:edge-1")
        link = self.store.current_path
        self.assertTrue(os.path.islink(link))
        self.assertEqual(os.path.realpath(link), os.path.realpath(path))

    def test_name_sets_the_prefix(self) -> None:
        store = CertificateStore(self.directory, "yurthub-server")
        path = store.save(*PKI.issue_server())
        self.assertTrue(os.path.basename(path).startswith("yurthub-server-2"))
        self.assertTrue(os.path.islink(os.path.join(self.directory, "yurthub-server-current.pem")))
        self.assertIsNone(self.store.current())

    def test_permissions(self) -> None:
        path = self.store.save(*issue())
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_looser_directory_is_tightened(self) -> None:
        os.makedirs(self.directory, mode=0o755)
        os.chmod(self.directory, 0o755)
        self.store.save(*issue())
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)

    def test_saves_in_the_same_second_get_distinct_files(self) -> None:
        first = self.store.save(*issue("a"))
        second = self.store.save(*issue("b"))
        self.assertNotEqual(first, second)
        current = self.store.current()
        assert current is not None
        self.assertEqual(current.common_name, "b")

    def test_old_files_are_pruned(self) -> None:
        paths = [self.store.save(*issue(f"n{i}")) for i in range(5)]
        remaining = {os.path.join(self.directory, e) for e in self.pem_files()}
        self.assertEqual(remaining, set(paths[-3:]))
        current = self.store.current()
        assert current is not None
        self.assertEqual(current.common_name, "n4")

    def test_other_names_are_not_pruned(self) -> None:
        other = CertificateStore(self.directory, "yurthub-server")
        server_path = other.save(*PKI.issue_server())
        for i in range(4):
            self.store.save(*issue(f"n{i}"))
        self.assertTrue(os.path.exists(server_path))
        self.assertIsNotNone(other.current())

    def test_unparsable_pair_is_not_saved(self) -> None:
        cert, _ = issue()
        _, key = issue()
        with self.assertRaises(ValueError):
            self.store.save(cert, key)
        self.assertIsNone(self.store.current())

    def test_interrupted_save_leaves_the_old_current(self) -> None:
        old_cert, old_key = issue("old")
        self.store.save(old_cert, old_key)

        def crash(path: str) -> None:
            raise OSError("power cut before the link moved")

        self.store._switch_current = crash  # type: ignore[method-assign]
        with self.assertRaises(OSError):
            self.store.save(*issue("new"))
        current = self.store.current()
        assert current is not None
        self.assertEqual(current.common_name, "old")
        self.assertEqual(self.warnings, [])

    def test_interrupted_link_rename_leaves_the_old_current(self) -> None:
        self.store.save(*issue("old"))
        real_replace = os.replace

        def failing_replace(src: Any, dst: Any) -> None:
            raise OSError("crash during rename")

        os.replace = failing_replace  # type: ignore[assignment]
        try:
            with self.assertRaises(OSError):
                self.store.save(*issue("new"))
        finally:
            os.replace = real_replace
        current = self.store.current()
        assert current is not None
        self.assertEqual(current.common_name, "old")
        leftovers = [e for e in os.listdir(self.directory) if e.startswith(".")]
        self.assertEqual(leftovers, [])

    def test_current_is_always_complete_while_switching(self) -> None:
        # Every file the link may point at is fully written before the link moves.
        self.store.save(*issue("first"))
        seen: list[str] = []
        real_switch = self.store._switch_current

        def switch(path: str) -> None:
            with open(path, "rb") as handle:
                Credential.from_pem(*_halves(handle.read()))
            current = self.store.current()
            assert current is not None
            seen.append(current.common_name)
            real_switch(path)

        self.store._switch_current = switch  # type: ignore[method-assign]
        self.store.save(*issue("second"))
        self.assertEqual(seen, ["first"])
        current = self.store.current()
        assert current is not None
        self.assertEqual(current.common_name, "second")

    def corrupt(self, content: bytes) -> None:
        path = self.store.save(*issue())
        with open(path, "wb") as handle:
            handle.write(content)

    def assert_corrupted(self) -> None:
        self.assertIsNone(self.store.current())
        self.assertEqual(len(self.warnings), 1)

    def test_garbage_current_is_none(self) -> None:
        self.corrupt(b"\x00garbage\xff")
        self.assert_corrupted()

    def test_truncated_current_is_none(self) -> None:
        cert, key = issue()
        self.corrupt((cert + key)[: len(cert) + 40])
        self.assert_corrupted()

    def test_certificate_only_current_is_none(self) -> None:
        cert, _ = issue()
        self.corrupt(cert)
        self.assert_corrupted()

    def test_mismatched_key_current_is_none(self) -> None:
        cert, _ = issue()
        _, key = issue()
        self.corrupt(cert + key)
        self.assert_corrupted()

    def test_dangling_symlink_current_is_none(self) -> None:
        path = self.store.save(*issue())
        os.unlink(path)
        self.assert_corrupted()

    def test_plain_current_file_is_read(self) -> None:
        # An operator may drop a regular file in place of the link.
        os.makedirs(self.directory, mode=0o700)
        cert, key = issue("manual")
        with open(self.store.current_path, "wb") as handle:
            handle.write(cert + key)
        current = self.store.current()
        assert current is not None
        self.assertEqual(current.common_name, "manual")
        self.store.save(*issue("next"))
        self.assertTrue(os.path.islink(self.store.current_path))


def _halves(data: bytes) -> tuple[bytes, bytes]:
    marker = data.index(b"-----BEGIN PRIVATE KEY-----")
    return data[:marker], data[marker:]
