"""The certificate manager end to end, against a TLS simulated cloud that signs CSRs.

yurthub starts with only a bootstrap token and the CA pin, discovers the cluster CA,
gets a client certificate (and the HTTPS listener's serving certificate) and rotates them;
the cloud's request log shows who each request arrived as. The rotation schedule itself
(deadlines, jitter, backoff) is tested on a Clock.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from tests.support import fetch, raw_connect, sleep, start_hub, wait_until
from yurthub.certificates.bootstrap import ca_pin
from yurthub.certificates.csr import build_csr, new_private_key
from yurthub.certificates.pki import CertificateStore, Credential
from yurthub.certificates.rotation import (
    BACKOFF_MAX,
    CHECK_INTERVAL,
    CertificateRotator,
    CertificateSpec,
    rotation_deadline,
)
from yurthub.testing.apiserver import SimulatedAPIServer
from yurthub.testing.pki import TestPKI

TOKEN = "abcdef.0123456789abcdef"
PODS = "/api/v1/namespaces/default/pods"
KUBELET = {b"user-agent": [b"kubelet/v1.31.0"], b"accept": [b"application/json"]}



class CertificateCloud(TestCase):
    """A TLS cloud that publishes a bootstrap token and signs CSRs, and a yurthub."""

    timeout = 120

    async def cloud(self, lifetime: float | None = None) -> SimulatedAPIServer:
        self.pki = TestPKI()
        server = SimulatedAPIServer(reactor, tls=self.pki, seed=True)
        server.csr_auto_approve = True
        server.csr_lifetime = lifetime
        await server.start("tcp:0:interface=127.0.0.1")
        server.add_bootstrap_token(TOKEN)
        self.addCleanup(server.stop)
        return server

    async def hub(self, server: SimulatedAPIServer, **certificates: Any) -> Any:
        self.pki_dir = certificates.pop("dir", None) or os.path.abspath(self.mktemp())
        section = {
            "mode": "token",
            "bootstrapToken": TOKEN,
            "caCertHashes": [ca_pin(self.pki.ca_cert_pem)],
            "dir": self.pki_dir,
            **certificates,
        }
        hub = await start_hub(self, [server.url], certificates=section)
        self.base = f"http://127.0.0.1:{hub.port_of('listen.proxy')}"
        self.hub_url = f"http://127.0.0.1:{hub.port_of('listen.hub')}"
        return hub

    async def readyz(self) -> tuple[int, str]:
        code, _, body = await fetch(self, b"GET", self.hub_url + "/v1/readyz?verbose")
        return code, body.decode()

    def users(self, server: SimulatedAPIServer, path: str = PODS) -> list[str | None]:
        return [r.user for r in server.requests if r.path.split("?")[0] == path]


class BootstrapTests(CertificateCloud):
    async def test_from_a_token_to_a_client_certificate_used_for_every_request(self) -> None:
        server = await self.cloud()
        hub = await self.hub(server)
        await wait_until(lambda: hub.certificates.client.valid, what="a client certificate")
        code, text = await self.readyz()
        self.assertEqual(code, 200, text)
        self.assertIn("system:node:edge-1 valid for", text)
        code, _, _ = await fetch(self, b"GET", self.base + PODS, KUBELET)
        self.assertEqual(code, 200)
        self.assertEqual(self.users(server)[-1], "system:node:edge-1")
        # The CSR went up with the token, as the bootstrap identity.
        csr_posts = [r for r in server.requests if r.method == "POST" and "certificatesigningrequests" in r.path]
        self.assertEqual(csr_posts[0].user, "token:" + TOKEN)
        csr = json.loads(csr_posts[0].body)
        self.assertEqual(csr["spec"]["signerName"], "kubernetes.io/kube-apiserver-client")
        # On disk, in kubelet's layout, private.
        current = os.path.join(self.pki_dir, "yurthub-current.pem")
        self.assertTrue(os.path.islink(current))
        self.assertEqual(os.stat(current).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.pki_dir).st_mode & 0o777, 0o700)
        self.assertTrue(os.path.exists(os.path.join(self.pki_dir, "ca.crt")))

    async def test_a_wrong_pin_gets_no_certificate_and_readyz_says_why(self) -> None:
        server = await self.cloud()
        hub = await self.hub(server, caCertHashes=["sha256:" + "0" * 64])
        await wait_until(lambda: "caCertHashes" in hub.certificates.ca_error, what="the pin refused")
        code, text = await self.readyz()
        self.assertEqual(code, 503)
        self.assertIn("no valid client certificate", text)
        self.assertIn("caCertHashes", text)
        self.assertFalse([r for r in server.requests if "certificatesigningrequests" in r.path])

    async def test_a_denied_csr_is_reported_and_retried(self) -> None:
        server = await self.cloud()
        server.csr_deny = True
        hub = await self.hub(server)
        await wait_until(lambda: "SimulatedDeny" in hub.certificates.client.last_error, what="the denial")
        code, text = await self.readyz()
        self.assertEqual(code, 503)
        self.assertIn("SimulatedDeny", text)
        server.csr_deny = False  # the next attempt (2 s backoff) succeeds
        await wait_until(lambda: hub.certificates.client.valid, timeout=15, what="a certificate after the retry")

    async def test_a_corrupted_certificate_on_disk_is_replaced_by_a_new_bootstrap(self) -> None:
        server = await self.cloud()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory, mode=0o700)
        with open(os.path.join(directory, "yurthub-2026-01-01-00-00-00.pem"), "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        os.symlink("yurthub-2026-01-01-00-00-00.pem", os.path.join(directory, "yurthub-current.pem"))
        hub = await self.hub(server, dir=directory)
        await wait_until(lambda: hub.certificates.client.valid, what="a certificate from a new bootstrap")
        self.assertIsNotNone(CertificateStore(directory).current())
        self.flushLoggedErrors()

    async def test_a_token_posted_to_the_hub_is_used_at_once(self) -> None:
        server = await self.cloud()
        hub = await self.hub(server, bootstrapToken="zzzzzz.0123456789abcdef")  # not the cloud's
        await wait_until(lambda: hub.certificates.ca_error != "", what="the unknown token refused")
        code, _, body = await fetch(
            self, b"POST", self.hub_url + "/v1/token", body=json.dumps({"bootstrapToken": "not a token"}).encode()
        )
        self.assertEqual(code, 400, body)
        code, _, _ = await fetch(self, b"POST", self.hub_url + "/v1/token", body=json.dumps({"jointoken": TOKEN}).encode())
        self.assertEqual(code, 200)
        await wait_until(lambda: hub.certificates.client.valid, what="a certificate with the posted token")


class RotationTests(CertificateCloud):
    async def test_ten_second_certificates_rotate_twice_under_a_loop_of_gets_without_a_failure(self) -> None:
        from yurthub.service import YurtHub

        self.patch(YurtHub, "stream_refresh_seconds", 1.0)
        server = await self.cloud(lifetime=10)
        hub = await self.hub(server)
        await wait_until(lambda: hub.certificates.client.valid, what="the first certificate")
        first = hub.certificates.client.credential
        # A watch opened on the first certificate's connection ends after the rotation.
        watch = await raw_connect(self, hub.port_of("listen.proxy"))
        watch.transport.write(  # type: ignore[union-attr]
            f"GET {PODS}?watch=true HTTP/1.1\r\nHost: hub\r\nUser-Agent: kubelet/v1.31.0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await watch.wait_for(lambda r: b"\r\n\r\n" in r)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool)
        failures: list[Any] = []
        requests = 0
        end = time.monotonic() + 20
        while time.monotonic() < end and hub.certificates.client.rotations < 2 and requests < 20_000:
            try:
                response = await agent.request(b"GET", (self.base + PODS).encode(), Headers(KUBELET))
                await readBody(response)
                if response.code != 200:
                    failures.append(response.code)
            except Exception as e:
                failures.append(repr(e))
            requests += 1
            await sleep(0.01)
        self.assertGreaterEqual(hub.certificates.client.rotations, 2)
        self.assertEqual(failures, [])
        await watch.closed.addTimeout(5, reactor)
        self.assertTrue(watch.received.endswith(b"0\r\n\r\n"))  # ended cleanly: it re-watches
        self.assertNotEqual(hub.certificates.client.credential.cert_pem, first.cert_pem)
        self.assertEqual({u for u in self.users(server)}, {"system:node:edge-1"})

    async def test_a_certificate_that_expired_offline_is_renewed_with_the_token_when_the_cloud_returns(self) -> None:
        server = await self.cloud(lifetime=4)
        hub = await self.hub(server, **{})
        await wait_until(lambda: hub.certificates.client.valid, what="the first certificate")
        first = hub.certificates.client.credential
        await server.stop_listening()
        await wait_until(lambda: time.time() > first.not_after + 0.5, timeout=10, what="expiry")
        self.assertFalse(hub.certificates.client.valid)
        before = len(server.requests)
        await server.start_listening()
        await wait_until(lambda: hub.certificates.client.valid, timeout=10, what="renewed after the cloud returned")
        renewals = [r for r in server.requests[before:] if r.method == "POST" and "certificatesigningrequests" in r.path]
        self.assertEqual(renewals[0].user, "token:" + TOKEN)

    async def test_the_serving_certificate_is_issued_and_swapped_for_new_handshakes(self) -> None:
        server = await self.cloud(lifetime=6)
        hub = await start_hub(
            self,
            [server.url],
            certificates={
                "mode": "token",
                "bootstrapToken": TOKEN,
                "caCertHashes": [ca_pin(self.pki.ca_cert_pem)],
                "dir": os.path.abspath(self.mktemp()),
                "servingIPs": ["10.0.0.7"],
            },
            listen={
                "proxy": "tcp:0:interface=127.0.0.1",
                "secureProxy": "tcp:0:interface=127.0.0.1",
                "hub": "tcp:0:interface=127.0.0.1",
            },
        )
        await wait_until(lambda: hub.certificates.serving is not None and hub.certificates.serving.valid, what="serving")
        port = hub.port_of("listen.secureProxy")
        first = await _peer_certificate(port, self.pki.ca_cert_pem)
        sans = first.extensions.get_extension_for_class(_x509().SubjectAlternativeName).value
        self.assertIn("kubernetes.default.svc", sans.get_values_for_type(_x509().DNSName))
        ips = {str(ip) for ip in sans.get_values_for_type(_x509().IPAddress)}
        self.assertEqual(ips, {"127.0.0.1", "10.0.0.7"})
        await wait_until(lambda: hub.certificates.serving.rotations >= 1 and hub.certificates.serving.credential.not_before > first.not_valid_before_utc.timestamp(), timeout=15, what="a serving rotation")
        second = await _peer_certificate(port, self.pki.ca_cert_pem)
        self.assertNotEqual(first.serial_number, second.serial_number)
        signers = [json.loads(r.body)["spec"]["signerName"] for r in server.requests if r.method == "POST" and "certificatesigningrequests" in r.path]
        self.assertIn("kubernetes.io/kubelet-serving", signers)


def _x509() -> Any:
    from cryptography import x509

    return x509


async def _peer_certificate(port: int, ca_pem: bytes) -> Any:
    """The certificate a TLS handshake with 127.0.0.1:port presents (verified by the CA)."""
    got: defer.Deferred[Any] = defer.Deferred()

    class Peek(Protocol):
        def connectionMade(self) -> None:  # noqa: N802
            self.transport.write(b"GET /v1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            if not got.called:
                got.callback(self.transport.getPeerCertificate().to_cryptography())  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    options = ssl.optionsForClientTLS("127.0.0.1", trustRoot=ssl.Certificate.loadPEM(ca_pem))
    await SSL4ClientEndpoint(reactor, "127.0.0.1", port, options).connect(Factory.forProtocol(Peek))
    return await got.addTimeout(5, reactor)


class KubeletModeTests(TestCase):
    async def test_kubelets_certificate_is_used_and_reloaded_when_it_changes(self) -> None:
        from yurthub.certificates import manager

        self.patch(manager, "KUBELET_POLL", 0.2)
        pki = TestPKI()
        server = SimulatedAPIServer(reactor, tls=pki, seed=True)
        await server.start("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.stop)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca_file, kubelet_file = os.path.join(directory, "ca.crt"), os.path.join(directory, "kubelet-client-current.pem")
        with open(ca_file, "wb") as f:
            f.write(pki.ca_cert_pem)

        def write_kubelet(cn: str) -> None:
            cert, key = pki.issue_client(cn, ["system:nodes"])
            with open(kubelet_file + ".tmp", "wb") as f:
                f.write(cert + key)
            os.replace(kubelet_file + ".tmp", kubelet_file)

        write_kubelet("system:node:edge-1")
        hub = await start_hub(
            self, [server.url], certificates={"mode": "kubelet", "caFile": ca_file, "kubeletCertFile": kubelet_file}
        )
        base = f"http://127.0.0.1:{hub.port_of('listen.proxy')}"
        await wait_until(lambda: hub.certificates.readiness()[0], what="kubelet's certificate")
        await fetch(self, b"GET", base + PODS, KUBELET)
        self.assertEqual(server.requests[-1].user, "system:node:edge-1")
        write_kubelet("system:node:edge-1-renewed")
        await wait_until(lambda: "renewed" in hub.certificates.readiness()[1], what="the new file read")
        await fetch(self, b"GET", base + PODS, KUBELET)
        self.assertEqual(server.requests[-1].user, "system:node:edge-1-renewed")


class ScheduleTests(SynchronousTestCase):
    """The rotation schedule on a Clock: deadline window, jittered checks, backoff."""

    def make(self, results: list[Any], draw: float = 0.5) -> tuple[CertificateRotator, Clock, list[float]]:
        clock = Clock()
        clock.advance(time.time())  # certificates are issued in real time
        pki = TestPKI()
        asked: list[float] = []
        answers = iter(results)

        def obtain(spec: CertificateSpec, csr_pem: bytes) -> Any:
            asked.append(clock.seconds())
            answer = next(answers)
            if isinstance(answer, Exception):
                return defer.fail(answer)
            return defer.succeed(pki.sign_csr(csr_pem, lifetime_seconds=answer))

        directory = self.mktemp()
        rotator = CertificateRotator(
            clock,
            CertificateSpec("yurthub", "system:node:n", ("system:nodes",), "kubernetes.io/kube-apiserver-client", ("client auth",)),
            CertificateStore(directory),
            obtain,
            lambda credential: None,
            run_in_thread=lambda f, *a: defer.maybeDeferred(f, *a),
            random=lambda: draw,
        )
        self.addCleanup(rotator.stop)
        return rotator, clock, asked

    def test_the_deadline_is_between_70_and_90_percent_of_the_lifetime(self) -> None:
        key = new_private_key()
        cert = TestPKI().sign_csr(build_csr(key, "x", ()), lifetime_seconds=1000)
        credential = Credential.from_pem(cert, key)
        lifetime = credential.not_after - credential.not_before
        self.assertAlmostEqual(rotation_deadline(credential, 0.0), credential.not_before + 0.7 * lifetime)
        self.assertAlmostEqual(rotation_deadline(credential, 1.0), credential.not_before + 0.9 * lifetime)

    def test_renews_at_its_deadline_even_between_checks(self) -> None:
        rotator, clock, asked = self.make([1000, 1000], draw=0.5)
        rotator.start()
        self.assertEqual(len(asked), 1)  # nothing on disk: at once
        credential = rotator.credential
        assert credential is not None
        issued = asked[0]  # the signer backdates notBefore; the lifetime counts from issue
        self.assertLess(credential.not_before, issued)
        deadline = rotation_deadline(credential, 0.5, issued)
        self.assertAlmostEqual(deadline, issued + 0.8 * (credential.not_after - issued))
        self.assertEqual(rotator.deadline, deadline)
        clock.advance(deadline - clock.seconds() - 0.01)
        self.assertEqual(len(asked), 1)
        clock.advance(0.02)
        self.assertEqual(len(asked), 2)

    def test_failures_back_off_from_2_to_32_seconds_and_never_stop_the_loop(self) -> None:
        rotator, clock, asked = self.make([RuntimeError("cloud down")] * 8 + [1000])
        rotator.start()
        for _ in range(200):
            clock.advance(1)
        gaps = [round(b - a) for a, b in zip(asked, asked[1:], strict=False)]
        self.assertEqual(gaps[:6], [2, 4, 8, 16, 32, 32])
        self.assertTrue(rotator.valid)
        self.assertLessEqual(max(gaps), BACKOFF_MAX)
        self.assertTrue(rotator._loop is not None and rotator._loop.running)
        self.flushLoggedErrors(RuntimeError)

    def test_checks_come_every_30_seconds_less_up_to_10_percent(self) -> None:
        rotator, clock, _ = self.make([10_000_000], draw=1.0)
        rotator.start()
        loop = rotator._loop
        assert loop is not None
        started = clock.seconds()
        clock.advance(CHECK_INTERVAL)
        self.assertAlmostEqual(loop.interval, CHECK_INTERVAL * 0.9)
        self.assertGreater(clock.seconds(), started)


class WatchTests(CertificateCloud):
    async def test_a_csr_approved_later_is_taken_from_the_watch_at_once(self) -> None:
        server = await self.cloud()
        server.csr_auto_approve = False
        hub = await self.hub(server)
        names: list[str] = []

        def pending() -> bool:
            names[:] = [o["metadata"]["name"] for o in server.list("certificatesigningrequests")]
            return bool(names)

        await wait_until(pending, what="a CSR")
        await sleep(0.3)  # yurthub is watching it now
        watches = [r for r in server.requests if "certificatesigningrequests?watch=true" in r.path]
        self.assertTrue(watches, [r.path for r in server.requests])
        signed_at = time.monotonic()
        server.sign_csr(names[0])
        await wait_until(lambda: hub.certificates.client.valid, what="the certificate from the watch")
        self.assertLess(time.monotonic() - signed_at, 1.0)  # not the next poll
