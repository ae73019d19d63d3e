"""Tests for yurthub.testing.pki: the throw-away CA behind TLS tests."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.trial.unittest import SynchronousTestCase

from yurthub.testing.pki import TestPKI


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


class TestPKITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = TestPKI()

    def test_ca_is_a_self_signed_authority(self) -> None:
        ca = load(self.pki.ca_cert_pem)
        self.assertEqual(ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
                         "yurthub-test-ca")
        self.assertEqual(ca.subject, ca.issuer)
        self.assertTrue(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        ca.verify_directly_issued_by(ca)
        self.assertIsInstance(ca.public_key(), ec.EllipticCurvePublicKey)

    def test_server_certificate_has_ip_and_dns_sans(self) -> None:
        cert_pem, key_pem = self.pki.issue_server(["127.0.0.1", "localhost", "::1"])
        cert = load(cert_pem)
        cert.verify_directly_issued_by(load(self.pki.ca_cert_pem))
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.IPAddress),
                         [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")])
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["localhost"])
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(usages), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        # The key matches the certificate (Twisted can use the pair as is).
        PrivateCertificate.loadPEM(cert_pem + key_pem)

    def test_client_certificate_carries_user_groups_and_lifetime(self) -> None:
        cert_pem, _ = self.pki.issue_client("system:node:edge-1", organizations=["system:nodes"],
                                            lifetime_seconds=3600)
        cert = load(cert_pem)
        self.assertEqual(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
                         "system:node:edge-1")
        self.assertEqual(
            [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)],
            ["system:nodes"])
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(usages), [ExtendedKeyUsageOID.CLIENT_AUTH])
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertEqual(lifetime, datetime.timedelta(seconds=3600 + 300))
        now = datetime.datetime.now(datetime.UTC)
        self.assertLess(cert.not_valid_before_utc, now)
        self.assertGreater(cert.not_valid_after_utc, now + datetime.timedelta(minutes=59))

    def test_validity_follows_the_given_clock(self) -> None:
        pki = TestPKI(now=lambda: 1_000_000_000.0)
        cert = load(pki.issue_client("u", lifetime_seconds=60)[0])
        self.assertEqual(cert.not_valid_after_utc.timestamp(), 1_000_000_060.0)

    def test_write_files(self) -> None:
        cert_pem, key_pem = self.pki.issue_client("admin")
        directory = os.path.join(self.mktemp(), "nested")
        paths = self.pki.write_files(directory, name="admin", cert_pem=cert_pem, key_pem=key_pem)
        self.assertEqual(paths, {"ca": os.path.join(directory, "ca.crt"),
                                 "cert": os.path.join(directory, "admin.crt"),
                                 "key": os.path.join(directory, "admin.key")})
        with open(paths["cert"], "rb") as handle:
            self.assertEqual(handle.read(), cert_pem)
        with open(paths["ca"], "rb") as handle:
            self.assertEqual(handle.read(), self.pki.ca_cert_pem)
        self.assertEqual(stat.S_IMODE(os.stat(paths["key"]).st_mode), 0o600)
        self.assertEqual(self.pki.write_files(directory), {"ca": paths["ca"]})

    def test_ca_cert_hash_is_the_kubeadm_pin(self) -> None:
        spki = load(self.pki.ca_cert_pem).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.assertEqual(self.pki.ca_cert_hash, "sha256:" + hashlib.sha256(spki).hexdigest())

    def test_sign_csr(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "system:node:n")]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName("n.local")]),
                              critical=False)
               .sign(key, hashes.SHA256()))
        cert = load(self.pki.sign_csr(csr.public_bytes(serialization.Encoding.PEM),
                                      lifetime_seconds=120, usages=["server auth"]))
        cert.verify_directly_issued_by(load(self.pki.ca_cert_pem))
        der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        self.assertEqual(cert.public_key().public_bytes(*der), key.public_key().public_bytes(*der))
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["n.local"])
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(usages), [ExtendedKeyUsageOID.SERVER_AUTH])

    def test_rsa_keys(self) -> None:
        pki = TestPKI(key_type="rsa")
        cert_pem, key_pem = pki.issue_server(["example.test"])
        self.assertIsInstance(load(cert_pem).public_key(), rsa.RSAPublicKey)
        Certificate.loadPEM(cert_pem)
        with self.assertRaises(ValueError):
            TestPKI(key_type="dsa")

    def test_a_server_certificate_needs_a_host(self) -> None:
        with self.assertRaises(ValueError):
            self.pki.issue_server([])

    def test_separate_authorities_do_not_trust_each_other(self) -> None:
        other = TestPKI()
        cert = load(other.issue_client("x")[0])
        with self.assertRaises(Exception):  # noqa: B017 - cryptography raises InvalidSignature
            cert.verify_directly_issued_by(load(self.pki.ca_cert_pem))
