"""Tests for yurthub.certificates.csr: keys, CSRs and the CertificateSigningRequest round trip.

The unit tests drive `request_certificate` with a scripted requester on a `Clock`; the
integration tests post real CSRs over HTTPS to the simulated kube-apiserver on 127.0.0.1
(with its ``csr_auto_approve``, ``csr_deny`` and ``csr_lifetime`` switches, tested here too).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, reactor
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from yurthub.certificates.csr import (
    CLIENT_SIGNER,
    CLIENT_USAGES,
    CSR_PATH,
    SERVING_SIGNER,
    SERVING_USAGES,
    CSRDenied,
    CSRError,
    Requester,
    build_csr,
    new_private_key,
    request_certificate,
)
from yurthub.certificates.pki import Credential
from yurthub.testing import SimulatedAPIServer, TestPKI

NODE = "system:node:edge-1"
GROUPS = ["system:nodes"]


def _names(cert_or_csr: x509.Certificate | x509.CertificateSigningRequest,
           oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert_or_csr.subject.get_attributes_for_oid(oid)]


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


class KeyAndCSRTests(SynchronousTestCase):
    def test_new_private_key_is_unencrypted_pkcs8_p256(self) -> None:
        key_pem = new_private_key()
        self.assertTrue(key_pem.startswith(b"-----BEGIN PRIVATE KEY-----"))
        key = serialization.load_pem_private_key(key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(key.curve, ec.SECP256R1)
        self.assertNotEqual(new_private_key(), key_pem)

    def test_csr_carries_subject_and_key(self) -> None:
        key_pem = new_private_key()
        csr = x509.load_pem_x509_csr(build_csr(key_pem, NODE, ["system:nodes", "extra"]))
        self.assertTrue(csr.is_signature_valid)
        self.assertEqual(_names(csr, NameOID.COMMON_NAME), [NODE])
        self.assertEqual(_names(csr, NameOID.ORGANIZATION_NAME), ["system:nodes", "extra"])
        public = csr.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        self.assertIsInstance(public.curve, ec.SECP256R1)
        key = serialization.load_pem_private_key(key_pem, password=None)
        self.assertEqual(_spki(public), _spki(key.public_key()))
        with self.assertRaises(x509.ExtensionNotFound):
            csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)

    def test_csr_carries_sans(self) -> None:
        csr = x509.load_pem_x509_csr(build_csr(
            new_private_key(), NODE, GROUPS, dns_names=["edge-1", "kubernetes.default"],
            ip_addresses=["169.254.2.1", "::1"]))
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["edge-1", "kubernetes.default"])
        self.assertEqual([str(a) for a in sans.get_values_for_type(x509.IPAddress)],
                         ["169.254.2.1", "::1"])

    def test_rsa_keys_are_accepted(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        csr = x509.load_pem_x509_csr(build_csr(key_pem, NODE, GROUPS))
        self.assertTrue(csr.is_signature_valid)

    def test_bad_input_is_a_value_error(self) -> None:
        with self.assertRaises(ValueError):
            build_csr(b"not a key", NODE, GROUPS)
        with self.assertRaises(ValueError):
            build_csr(new_private_key(), NODE, GROUPS, ip_addresses=["not-an-ip"])


# -- request_certificate with a scripted requester -------------------------------------


Answer = tuple[int, bytes] | Exception | None  # None: never answers


class ScriptedAPI:
    """A requester whose answers come from ``respond(method, path, body)``; records calls."""

    def __init__(self, clock: Clock, respond: Callable[[bytes, str, Any], Answer]) -> None:
        self.clock = clock
        self.respond = respond
        self.calls: list[tuple[float, bytes, str, dict[str, str], Any]] = []
        self.cancelled = 0

    def __call__(self, method: bytes, path: str, headers: dict[str, str],
                 body: bytes | None) -> defer.Deferred[tuple[int, bytes]]:
        decoded = json.loads(body) if body is not None else None
        self.calls.append((self.clock.seconds(), method, path, headers, decoded))
        answer = self.respond(method, path, decoded)
        if answer is None:
            def cancel(d: defer.Deferred[Any]) -> None:
                self.cancelled += 1
            return defer.Deferred(cancel)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


def csr_object(name: str = "csr-abcde", status: dict[str, Any] | None = None) -> bytes:
    obj: dict[str, Any] = {"apiVersion": "certificates.k8s.io/v1",
                           "kind": "CertificateSigningRequest",
                           "metadata": {"name": name}, "spec": {}}
    if status is not None:
        obj["status"] = status
    return json.dumps(obj).encode()


def signed_status(pki: TestPKI, csr_pem: bytes) -> dict[str, Any]:
    return {"conditions": [{"type": "Approved", "status": "True"}],
            "certificate": base64.b64encode(pki.sign_csr(csr_pem)).decode()}


class RequestCertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pki = TestPKI()
        self.key_pem = new_private_key()
        self.csr_pem = build_csr(self.key_pem, NODE, GROUPS)

    def run_request(self, api: ScriptedAPI, **options: Any) -> defer.Deferred[bytes]:
        options.setdefault("signer_name", CLIENT_SIGNER)
        options.setdefault("usages", CLIENT_USAGES)
        return defer.Deferred.fromCoroutine(
            request_certificate(api, self.clock, self.csr_pem, **options))

    def advance(self, seconds: float, step: float = 0.5) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)

    def test_posts_a_certificatesigningrequest(self) -> None:
        def respond(method: bytes, path: str, body: Any) -> Answer:
            return 201, csr_object(status=signed_status(self.pki, self.csr_pem))

        api = ScriptedAPI(self.clock, respond)
        result = self.successResultOf(self.run_request(api, expiration_seconds=3600))
        self.assertEqual(len(api.calls), 1)
        _, method, path, headers, body = api.calls[0]
        self.assertEqual((method, path), (b"POST", CSR_PATH))
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(body["apiVersion"], "certificates.k8s.io/v1")
        self.assertEqual(body["kind"], "CertificateSigningRequest")
        self.assertEqual(body["metadata"], {"generateName": "csr-"})
        self.assertEqual(base64.b64decode(body["spec"]["request"]), self.csr_pem)
        self.assertEqual(body["spec"]["signerName"], CLIENT_SIGNER)
        self.assertEqual(body["spec"]["usages"], list(CLIENT_USAGES))
        self.assertEqual(body["spec"]["expirationSeconds"], 3600)
        Credential.from_pem(result, self.key_pem)

    def test_expiration_is_omitted_unless_given(self) -> None:
        api = ScriptedAPI(self.clock, lambda m, p, b: (
            201, csr_object(status=signed_status(self.pki, self.csr_pem))))
        self.successResultOf(self.run_request(api))
        self.assertNotIn("expirationSeconds", api.calls[0][4]["spec"])

    def test_polls_until_the_certificate_appears(self) -> None:
        gets = []

        def respond(method: bytes, path: str, body: Any) -> Answer:
            if method == b"POST":
                return 201, csr_object()
            gets.append(path)
            if len(gets) < 3:
                return 200, csr_object(status={"conditions": [{"type": "Approved"}]})
            return 200, csr_object(status=signed_status(self.pki, self.csr_pem))

        api = ScriptedAPI(self.clock, respond)
        d = self.run_request(api, poll_interval=2.0)
        self.assertNoResult(d)
        self.advance(4)
        Credential.from_pem(self.successResultOf(d), self.key_pem)
        self.assertEqual(gets, [f"{CSR_PATH}/csr-abcde"] * 3)
        # The first look right after the create, then every poll interval.
        self.assertEqual([c[0] for c in api.calls], [0.0, 0.0, 2.0, 4.0])

    def test_denied_condition_raises_csr_denied(self) -> None:
        def respond(method: bytes, path: str, body: Any) -> Answer:
            if method == b"POST":
                return 201, csr_object()
            return 200, csr_object(status={"conditions": [{
                "type": "Denied", "status": "True", "reason": "NotAllowed",
                "message": "node edge-1\nis not\tknown"}]})

        d = self.run_request(ScriptedAPI(self.clock, respond))
        self.advance(2)
        failure = self.failureResultOf(d, CSRDenied)
        self.assertEqual(str(failure.value),
                         "CSR csr-abcde denied: NotAllowed: node edge-1 is not known")

    def test_failed_condition_raises_csr_denied(self) -> None:
        status = {"conditions": [{"type": "Failed", "status": "True", "reason": "SignerError"}]}
        api = ScriptedAPI(self.clock, lambda m, p, b: (201, csr_object(status=status)))
        failure = self.failureResultOf(self.run_request(api), CSRDenied)
        self.assertIn("failed: SignerError", str(failure.value))

    def test_never_approved_times_out(self) -> None:
        def respond(method: bytes, path: str, body: Any) -> Answer:
            return (201 if method == b"POST" else 200), csr_object()

        api = ScriptedAPI(self.clock, respond)
        d = self.run_request(api, timeout=30.0, poll_interval=2.0)
        self.advance(29.5)
        self.assertNoResult(d)
        self.advance(1)
        failure = self.failureResultOf(d, CSRError)
        self.assertIn("timed out after 30 s waiting for CSR csr-abcde", str(failure.value))
        self.assertNotIn("\n", str(failure.value))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hanging_request_is_cut_at_the_deadline(self) -> None:
        api = ScriptedAPI(self.clock, lambda m, p, b: None)
        d = self.run_request(api, timeout=10.0)
        self.advance(9.5)
        self.assertNoResult(d)
        self.advance(1)
        failure = self.failureResultOf(d, CSRError)
        self.assertIn("timed out after 10 s creating the CSR", str(failure.value))
        self.assertEqual(api.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_transient_errors_back_off_doubling_to_32_s(self) -> None:
        posts = []

        def respond(method: bytes, path: str, body: Any) -> Answer:
            if method == b"POST":
                posts.append(self.clock.seconds())
                if len(posts) == 1:
                    return ConnectionRefusedError("refused")
                if len(posts) == 2:
                    return 503, b'{"kind":"Status","message":"etcd is down"}'
                return 201, csr_object()
            gets = len(api.calls) - len(posts)
            if gets <= 6:
                return 429, b"slow down"
            return 200, csr_object(status=signed_status(self.pki, self.csr_pem))

        api = ScriptedAPI(self.clock, respond)
        d = self.run_request(api, timeout=600.0, poll_interval=1.0)
        self.advance(300)
        Credential.from_pem(self.successResultOf(d), self.key_pem)
        self.assertEqual(posts, [0.0, 2.0, 6.0])
        get_times = [c[0] for c in api.calls if c[1] == b"GET"]
        # At once after the create, then backoff 2, 4, 8, 16, 32, 32 between failed polls
        # (plus the poll interval each time); the successful POST reset the backoff.
        gaps = [b - a for a, b in zip([6.0, *get_times], get_times, strict=False)]
        self.assertEqual(gaps, [0.0, 3.0, 5.0, 9.0, 17.0, 33.0, 33.0])

    def test_timeout_reports_the_last_error(self) -> None:
        def respond(method: bytes, path: str, body: Any) -> Answer:
            return 500, b'{"kind":"Status","message":"internal\\nerror"}'

        d = self.run_request(ScriptedAPI(self.clock, respond), timeout=20.0)
        self.advance(21)
        failure = self.failureResultOf(d, CSRError)
        self.assertEqual(str(failure.value), "timed out after 20 s creating the CSR "
                                             "(last error: HTTP 500: internal error)")

    def test_client_errors_are_not_retried(self) -> None:
        api = ScriptedAPI(self.clock, lambda m, p, b: (
            403, b'{"kind":"Status","reason":"Forbidden","message":"user cannot create"}'))
        failure = self.failureResultOf(self.run_request(api), CSRError)
        self.assertEqual(str(failure.value), "creating the CSR: HTTP 403: user cannot create")
        self.assertEqual(len(api.calls), 1)

    def test_non_csr_answer_is_an_error(self) -> None:
        api = ScriptedAPI(self.clock, lambda m, p, b: (201, b"<html>proxy</html>"))
        self.failureResultOf(self.run_request(api), CSRError)

    def test_deleted_csr_is_an_error(self) -> None:
        def respond(method: bytes, path: str, body: Any) -> Answer:
            return (201, csr_object()) if method == b"POST" else (404, b"{}")

        d = self.run_request(ScriptedAPI(self.clock, respond))
        self.advance(2)
        failure = self.failureResultOf(d, CSRError)
        self.assertIn("deleted", str(failure.value))

    def test_certificate_for_another_key_is_an_error(self) -> None:
        other_csr = build_csr(new_private_key(), NODE, GROUPS)
        api = ScriptedAPI(self.clock, lambda m, p, b: (
            201, csr_object(status=signed_status(self.pki, other_csr))))
        failure = self.failureResultOf(self.run_request(api), CSRError)
        self.assertIn("not for the requested key", str(failure.value))

    def test_unparsable_certificate_is_an_error(self) -> None:
        status = {"certificate": base64.b64encode(b"garbage").decode()}
        api = ScriptedAPI(self.clock, lambda m, p, b: (201, csr_object(status=status)))
        failure = self.failureResultOf(self.run_request(api), CSRError)
        self.assertIn("does not parse", str(failure.value))


# -- against the simulated kube-apiserver over HTTPS ----------------------------------


@implementer(IPolicyForHTTPS)
class _TrustTestCA:
    """Trust the test CA; present a client certificate when given one."""

    def __init__(self, ca_pem: bytes, client: tuple[bytes, bytes] | None = None) -> None:
        self._trust = Certificate.loadPEM(ca_pem)
        self._client = PrivateCertificate.loadPEM(client[0] + client[1]) if client else None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:  # noqa: N802
        return optionsForClientTLS(hostname.decode(), trustRoot=self._trust,
                                   clientCertificate=self._client)


class LiveCSRTests(TestCase):
    """Real CSRs over HTTPS to a `SimulatedAPIServer` on 127.0.0.1."""

    def setUp(self) -> defer.Deferred[None]:  # type: ignore[override]
        self.pki = TestPKI()
        self.server = SimulatedAPIServer(reactor, tls=self.pki)
        self.server.csr_auto_approve = True
        self.key_pem = new_private_key()
        self.csr_pem = build_csr(self.key_pem, NODE, GROUPS)
        d = self.server.start("tcp:0:interface=127.0.0.1")
        self.addCleanup(self.server.stop)
        return d.addCallback(lambda _: None)

    def requester(self, *, token: str | None = "abcdef.0123456789abcdef",
                  client: tuple[bytes, bytes] | None = None) -> Requester:
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, contextFactory=_TrustTestCA(self.pki.ca_cert_pem, client),
                      pool=pool)
        base = self.server.url

        def request(method: bytes, path: str, headers: dict[str, str],
                    body: bytes | None) -> defer.Deferred[tuple[int, bytes]]:
            sent = Headers({k: [v] for k, v in headers.items()})
            if token is not None:
                sent.addRawHeader("Authorization", f"Bearer {token}")
            producer = FileBodyProducer(BytesIO(body)) if body is not None else None
            d = agent.request(method, (base + path).encode(), sent, producer)

            def read(response: Any) -> defer.Deferred[tuple[int, bytes]]:
                return readBody(response).addCallback(lambda data: (response.code, data))

            return d.addCallback(read)

        return request

    async def obtain(self, request: Requester | None = None, **options: Any) -> bytes:
        options.setdefault("signer_name", CLIENT_SIGNER)
        options.setdefault("usages", CLIENT_USAGES)
        return await request_certificate(request or self.requester(), reactor, self.csr_pem,
                                         **options)

    def check_issued(self, cert_pem: bytes) -> x509.Certificate:
        credential = Credential.from_pem(cert_pem, self.key_pem)
        self.assertEqual(credential.common_name, NODE)
        cert = x509.load_pem_x509_certificate(cert_pem)
        self.assertEqual(_names(cert, NameOID.ORGANIZATION_NAME), GROUPS)
        cert.verify_directly_issued_by(self.pki.ca_cert)
        return cert

    async def test_auto_approved_certificate_matches_key_and_subject(self) -> None:
        cert = self.check_issued(await self.obtain(expiration_seconds=7200))
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.CLIENT_AUTH])
        lifetime = cert.not_valid_after_utc.timestamp() - time.time()
        self.assertLess(abs(lifetime - 7200), 30)
        created = self.server.list("certificatesigningrequests")
        self.assertEqual(len(created), 1)
        self.assertTrue(created[0]["metadata"]["name"].startswith("csr-"))
        self.assertEqual(created[0]["spec"]["signerName"], CLIENT_SIGNER)
        self.assertEqual(self.server.requests[0].user, "token:abcdef.0123456789abcdef")

    async def test_issued_certificate_authenticates_to_the_server(self) -> None:
        cert_pem = await self.obtain()
        self.check_issued(cert_pem)
        # Renewal: the next CSR goes up with the certificate just issued.
        renew = self.requester(token=None, client=(cert_pem, self.key_pem))
        self.check_issued(await self.obtain(renew))
        self.assertEqual(self.server.requests[-1].user, NODE)

    async def test_serving_certificate_has_sans(self) -> None:
        self.csr_pem = build_csr(self.key_pem, NODE, GROUPS, dns_names=["edge-1"],
                                 ip_addresses=["127.0.0.1"])
        cert = self.check_issued(await self.obtain(signer_name=SERVING_SIGNER,
                                                   usages=SERVING_USAGES))
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.SERVER_AUTH])
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["edge-1"])

    async def test_deny_switch_raises_csr_denied(self) -> None:
        self.server.csr_deny = True
        with self.assertRaises(CSRDenied) as raised:
            await self.obtain(timeout=5.0, poll_interval=0.1)
        self.assertIn("SimulatedDeny", str(raised.exception))
        stored = self.server.list("certificatesigningrequests")[0]
        self.assertNotIn("certificate", stored["status"])
        self.assertEqual([c["type"] for c in stored["status"]["conditions"]], ["Denied"])

    async def test_never_approved_times_out(self) -> None:
        self.server.csr_auto_approve = False
        with self.assertRaises(CSRError) as raised:
            await self.obtain(timeout=0.6, poll_interval=0.1)
        self.assertIn("timed out after 0.6 s waiting for CSR csr-", str(raised.exception))
        self.assertGreaterEqual(sum(r.method == "GET" for r in self.server.requests), 2)

    async def test_approved_later_by_hand(self) -> None:
        self.server.csr_auto_approve = False
        d = defer.Deferred.fromCoroutine(self.obtain(timeout=5.0, poll_interval=0.05))
        while not self.server.list("certificatesigningrequests"):
            await defer.Deferred.fromCoroutine(_sleep(0.02))
        self.server.sign_csr(self.server.list("certificatesigningrequests")[0]["metadata"]["name"])
        self.check_issued(await d)

    async def test_lifetime_switch_overrides_expiration_seconds(self) -> None:
        self.server.csr_lifetime = 90.0
        cert = self.check_issued(await self.obtain(expiration_seconds=86400))
        lifetime = cert.not_valid_after_utc.timestamp() - time.time()
        self.assertLess(abs(lifetime - 90), 30)

    def test_switches_default_to_off(self) -> None:
        server = SimulatedAPIServer(reactor, tls=self.pki)
        self.assertIsNone(server.csr_lifetime)
        self.assertFalse(server.csr_deny)


async def _sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)
