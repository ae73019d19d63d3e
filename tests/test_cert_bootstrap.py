"""Tests for `yurthub.certificates.bootstrap`: token discovery of the cluster CA.

The parsers and the signature check run without sockets; `discover` runs against the
simulated kube-apiserver (and a few hand-made TLS servers) on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import socket
import subprocess
import time
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from yurthub.certificates.bootstrap import (
    BootstrapError,
    BootstrapToken,
    ClusterInfo,
    ca_pin,
    discover,
    verify_cluster_info,
)
from yurthub.testing.apiserver import SimulatedAPIServer
from yurthub.testing.pki import TestPKI
from yurthub.testing.upgrade import ConnectionTrackingFactory

TOKEN_TEXT = "abcdef.0123456789abcdef"
TOKEN = BootstrapToken.parse(TOKEN_TEXT)
CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
WRONG_PIN = "sha256:" + "0" * 64

_token_alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _sign(kubeconfig: str, token_id: str, secret: str, header: dict[str, Any] | None = None) -> str:
    """A detached JWS computed here, independently of the code under test."""
    head = _b64url(json.dumps(header or {"alg": "HS256", "kid": token_id}).encode())
    mac = hmac.new(
        secret.encode(), f"{head}.{_b64url(kubeconfig.encode())}".encode(), hashlib.sha256
    )
    return f"{head}..{_b64url(mac.digest())}"


def _published(
    pki: TestPKI, token: str = TOKEN_TEXT, url: str = "https://127.0.0.1:6443"
) -> dict[str, Any]:
    """The cluster-info ConfigMap the simulated apiserver publishes for ``token``."""
    server = SimulatedAPIServer(Clock(), tls=pki)
    return server.add_bootstrap_token(token, server_url=url)


class BootstrapTokenTests(SynchronousTestCase):
    """`BootstrapToken.parse` accepts exactly [a-z0-9]{6}.[a-z0-9]{16}."""

    def test_parse_splits_id_and_secret(self) -> None:
        token = BootstrapToken.parse(TOKEN_TEXT)
        self.assertEqual((token.id, token.secret), ("abcdef", "0123456789abcdef"))
        self.assertEqual(str(token), TOKEN_TEXT)

    def test_repr_hides_the_secret(self) -> None:
        self.assertNotIn("0123456789abcdef", repr(BootstrapToken.parse(TOKEN_TEXT)))

    def test_malformed_tokens_are_refused_without_echoing_them(self) -> None:
        for text in [
            "",
            "abcdef",
            "abcdef.",
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789ABCDEF",
            "abcde.0123456789abcdefg",
            "abcdefg.0123456789abcde",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdef0",
            "abcdef:0123456789abcdef",
            "abcdef.0123456789abcdef\n",
            " abcdef.0123456789abcdef",
            "abc-ef.0123456789abcdef",
            "abcdef.0123456789abcdef.x",
        ]:
            with self.assertRaises(BootstrapError, msg=repr(text)) as caught:
                BootstrapToken.parse(text)
            message = str(caught.exception)
            self.assertIn("malformed bootstrap token", message)
            self.assertNotIn("\n", message)
            if text.strip():
                self.assertNotIn(text.strip(), message)

    @given(
        st.text(_token_alphabet, min_size=6, max_size=6),
        st.text(_token_alphabet, min_size=16, max_size=16),
    )
    def test_every_well_formed_token_round_trips(self, token_id: str, secret: str) -> None:
        token = BootstrapToken.parse(f"{token_id}.{secret}")
        self.assertEqual(str(token), f"{token_id}.{secret}")

    @given(st.text(max_size=30))
    def test_anything_else_is_refused(self, text: str) -> None:
        head, dot, tail = text.partition(".")
        well_formed = (
            dot == "."
            and len(head) == 6
            and len(tail) == 16
            and all(c in _token_alphabet for c in head + tail)
        )
        if well_formed:
            self.assertEqual(str(BootstrapToken.parse(text)), text)
        else:
            self.assertRaises(BootstrapError, BootstrapToken.parse, text)


class CAPinTests(SynchronousTestCase):
    """`ca_pin` is kubeadm's sha256 of the CA's SubjectPublicKeyInfo."""

    def test_pin_matches_a_hand_computation(self) -> None:
        for key_type in ("ec", "rsa"):
            pki = TestPKI(key_type=key_type)
            cert = x509.load_pem_x509_certificate(pki.ca_cert_pem)
            spki = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            self.assertEqual(ca_pin(pki.ca_cert_pem), "sha256:" + hashlib.sha256(spki).hexdigest())

    def test_pin_matches_openssl(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise self.skipTest("openssl is not installed")
        pki = TestPKI(key_type="rsa")
        pubkey = subprocess.run(
            [openssl, "x509", "-pubkey", "-noout"],
            input=pki.ca_cert_pem,
            capture_output=True,
            check=True,
        ).stdout
        der = subprocess.run(
            [openssl, "pkey", "-pubin", "-outform", "der"],
            input=pubkey,
            capture_output=True,
            check=True,
        ).stdout
        self.assertEqual(ca_pin(pki.ca_cert_pem), "sha256:" + hashlib.sha256(der).hexdigest())

    def test_pin_of_garbage_is_a_bootstrap_error(self) -> None:
        self.assertRaises(BootstrapError, ca_pin, b"not a certificate")


class VerifyClusterInfoTests(SynchronousTestCase):
    """`verify_cluster_info` checks the detached JWS and reads the kubeconfig."""

    def setUp(self) -> None:
        self.pki = TestPKI()
        self.configmap = _published(self.pki)

    def assertRefused(
        self, configmap: dict[str, Any], *words: str, token: BootstrapToken = TOKEN
    ) -> str:
        with self.assertRaises(BootstrapError) as caught:
            verify_cluster_info(configmap, token)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertNotIn(token.secret, message)
        for word in words:
            self.assertIn(word, message)
        return message

    def test_good_signature_gives_server_and_ca(self) -> None:
        info = verify_cluster_info(self.configmap, TOKEN)
        self.assertEqual(
            info,
            ClusterInfo(
                self.configmap["data"]["kubeconfig"], "https://127.0.0.1:6443", self.pki.ca_cert_pem
            ),
        )

    def test_independently_signed_kubeconfig_is_accepted(self) -> None:
        data = self.configmap["data"]
        data["jws-kubeconfig-abcdef"] = _sign(data["kubeconfig"], "abcdef", "0123456789abcdef")
        self.assertEqual(verify_cluster_info(self.configmap, TOKEN).ca_pem, self.pki.ca_cert_pem)

    def test_tampered_kubeconfig_fails_the_signature(self) -> None:
        data = self.configmap["data"]
        data["kubeconfig"] = data["kubeconfig"].replace("127.0.0.1:6443", "10.6.6.6:6443")
        self.assertRefused(self.configmap, "signature", "jws-kubeconfig-abcdef")

    def test_tampered_signature_fails(self) -> None:
        data = self.configmap["data"]
        head, _, signature = data["jws-kubeconfig-abcdef"].partition("..")
        flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
        data["jws-kubeconfig-abcdef"] = f"{head}..{flipped}"
        self.assertRefused(self.configmap, "signature")

    def test_wrong_secret_fails_the_signature(self) -> None:
        self.assertRefused(
            self.configmap, "signature", token=BootstrapToken("abcdef", "fedcba9876543210")
        )

    def test_missing_signature_for_this_token_id(self) -> None:
        self.assertRefused(
            self.configmap,
            "jws-kubeconfig-zzzzzz",
            token=BootstrapToken("zzzzzz", "0123456789abcdef"),
        )

    def test_other_algorithms_and_key_ids_are_refused(self) -> None:
        data = self.configmap["data"]
        kubeconfig = data["kubeconfig"]
        data["jws-kubeconfig-abcdef"] = _sign(
            kubeconfig, "abcdef", "0123456789abcdef", {"alg": "none", "kid": "abcdef"}
        )
        self.assertRefused(self.configmap, "HS256")
        data["jws-kubeconfig-abcdef"] = _sign(
            kubeconfig, "abcdef", "0123456789abcdef", {"alg": "HS256", "kid": "other1"}
        )
        self.assertRefused(self.configmap, "key id")
        data["jws-kubeconfig-abcdef"] = _sign(
            kubeconfig, "abcdef", "0123456789abcdef", {"alg": "HS256"}
        )
        self.assertRefused(self.configmap, "key id")

    def test_non_detached_or_garbled_jws_is_refused(self) -> None:
        data = self.configmap["data"]
        head, _, signature = data["jws-kubeconfig-abcdef"].partition("..")
        payload = _b64url(data["kubeconfig"].encode())
        for bad in [
            f"{head}.{payload}.{signature}",
            "nonsense",
            f"{head}..",
            f"!!..{signature}",
            f"{head}..a+b/",
        ]:
            data["jws-kubeconfig-abcdef"] = bad
            self.assertRefused(self.configmap, "jws-kubeconfig-abcdef")

    def test_missing_data_or_kubeconfig(self) -> None:
        self.assertRefused({}, "no data")
        self.assertRefused({"data": {"jws-kubeconfig-abcdef": "x..y"}}, "no kubeconfig")

    def test_signed_kubeconfig_without_ca_or_server(self) -> None:
        def signed(config: dict[str, Any]) -> dict[str, Any]:
            text = yaml.safe_dump(config)
            return {
                "data": {
                    "kubeconfig": text,
                    "jws-kubeconfig-abcdef": _sign(text, "abcdef", "0123456789abcdef"),
                }
            }

        self.assertRefused(signed({"clusters": []}), "no clusters")
        self.assertRefused(
            signed({"clusters": [{"name": "", "cluster": {"server": "https://x"}}]}),
            "certificate-authority-data",
        )
        ca = base64.b64encode(self.pki.ca_cert_pem).decode()
        self.assertRefused(
            signed({"clusters": [{"name": "", "cluster": {"certificate-authority-data": ca}}]}),
            "server",
        )
        garbage = base64.b64encode(b"garbage").decode()
        cluster = {"server": "https://x", "certificate-authority-data": garbage}
        self.assertRefused(signed({"clusters": [{"name": "", "cluster": cluster}]}), "PEM")
        text = "clusters: [unclosed"
        bad_yaml = {
            "data": {
                "kubeconfig": text,
                "jws-kubeconfig-abcdef": _sign(text, "abcdef", "0123456789abcdef"),
            }
        }
        self.assertRefused(bad_yaml, "YAML")


class _QuietSite(Site):
    noisy = False

    def log(self, request: Any) -> None:
        """No access log."""


class _ChangingClusterInfo(Resource):
    """Serves the simulated apiserver's API, but rewrites cluster-info after the first read
    of it: the second read then returns a different (still validly signed) kubeconfig."""

    isLeaf = True

    def __init__(self, server: SimulatedAPIServer) -> None:
        super().__init__()
        self._server = server
        self.reads = 0

    def render(self, request: Request) -> bytes | int:
        answer = self._server.resource().render(request)
        if request.path == CLUSTER_INFO.encode():
            self.reads += 1
            if self.reads == 1:
                self._server.add_bootstrap_token(TOKEN_TEXT, server_url="https://10.6.6.6:6443")
        return answer


class _Fixed(Resource):
    """Answers every request with one status and body."""

    isLeaf = True

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__()
        self._code = code
        self._body = body

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self._code)
        return self._body


class DiscoverTests(TestCase):
    """`discover` against servers on 127.0.0.1."""

    timeout = 30

    def setUp(self) -> defer.Deferred[Any]:  # type: ignore[override]  # trial waits on it
        self.pki = TestPKI()
        self.server = SimulatedAPIServer(reactor, tls=self.pki)
        self.addCleanup(self.server.stop)
        return self.server.start("tcp:0:interface=127.0.0.1").addCallback(
            lambda _: self.server.add_bootstrap_token(TOKEN_TEXT)
        )

    def discover(
        self, url: str | None = None, pins: list[str] | None = None, **kwargs: Any
    ) -> defer.Deferred[ClusterInfo]:
        pins = [self.pki.ca_cert_hash] if pins is None else pins
        return defer.Deferred.fromCoroutine(
            discover(reactor, url or self.server.url, kwargs.pop("token", TOKEN), pins, **kwargs)
        )

    async def refused(self, *words: str, **kwargs: Any) -> str:
        try:
            await self.discover(**kwargs)
        except BootstrapError as e:
            message = str(e)
        else:
            self.fail("discover succeeded")
        self.assertNotIn("\n", message)
        self.assertNotIn(TOKEN.secret, message)
        for word in words:
            self.assertIn(word, message)
        return message

    def listen_tls(
        self, resource: Resource, pki: TestPKI, hosts: tuple[str, ...] = ("127.0.0.1",)
    ) -> str:
        """Serve ``resource`` over TLS with a ``pki`` certificate for ``hosts``; its URL."""
        cert, key = pki.issue_server(list(hosts))
        connections = ConnectionTrackingFactory(_QuietSite(resource))
        factory = TLSMemoryBIOFactory(
            PrivateCertificate.loadPEM(cert + key).options(), False, connections
        )
        factory.noisy = False
        port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]

        def stop() -> defer.Deferred[Any]:
            stopped = defer.maybeDeferred(port.stopListening)
            connections.abort_all()
            return defer.gatherResults([stopped, connections.when_idle()])

        self.addCleanup(stop)
        return f"https://127.0.0.1:{port.getHost().port}"

    async def test_good_token_and_pin_give_the_servers_ca(self) -> None:
        info = await self.discover()
        self.assertEqual(info.ca_pem, self.pki.ca_cert_pem)
        self.assertEqual(info.server, self.server.url)
        published = self.server.get("configmaps", "kube-public", "cluster-info")
        assert published is not None
        self.assertEqual(info.kubeconfig, published["data"]["kubeconfig"])
        reads = [r for r in self.server.requests if r.path == CLUSTER_INFO]
        self.assertEqual(len(reads), 2)
        for read in reads:
            self.assertIsNone(read.user)  # neither a client certificate nor the token was sent
            self.assertIsNone(read.header("authorization"))

    async def test_pins_may_be_upper_case_and_one_of_several(self) -> None:
        info = await self.discover(
            pins=[WRONG_PIN, self.pki.ca_cert_hash.upper().replace("SHA256", "sha256")]
        )
        self.assertEqual(info.ca_pem, self.pki.ca_cert_pem)

    async def test_wrong_pin_is_refused(self) -> None:
        message = await self.refused("caCertHashes", pins=[WRONG_PIN])
        self.assertIn(self.pki.ca_cert_hash, message)

    async def test_empty_pins_need_the_unsafe_switch(self) -> None:
        await self.refused("caCertHashes is empty", "unsafeSkipCAVerification", pins=[])

    async def test_unsafe_skip_allows_no_pins(self) -> None:
        info = await self.discover(pins=[], unsafe_skip_ca_verification=True)
        self.assertEqual(info.ca_pem, self.pki.ca_cert_pem)

    async def test_unsafe_skip_still_enforces_given_pins(self) -> None:
        await self.refused("caCertHashes", pins=[WRONG_PIN], unsafe_skip_ca_verification=True)

    async def test_malformed_pin_is_refused(self) -> None:
        await self.refused("caCertHashes entry", pins=["md5:1234"])
        self.assertEqual(self.server.requests, [])

    async def test_tampered_kubeconfig_fails_the_signature(self) -> None:
        configmap = self.server.get("configmaps", "kube-public", "cluster-info")
        assert configmap is not None
        configmap["data"]["kubeconfig"] = configmap["data"]["kubeconfig"].replace(
            "127.0.0.1", "localhost"
        )
        self.server.update(configmap)
        await self.refused("signature")

    async def test_tampered_signature_fails(self) -> None:
        configmap = self.server.get("configmaps", "kube-public", "cluster-info")
        assert configmap is not None
        head, _, signature = configmap["data"]["jws-kubeconfig-abcdef"].partition("..")
        configmap["data"]["jws-kubeconfig-abcdef"] = f"{head}..{signature[::-1]}"
        self.server.update(configmap)
        await self.refused("signature")

    async def test_token_id_without_a_signature_is_refused(self) -> None:
        await self.refused(
            "jws-kubeconfig-zzzzzz", token=BootstrapToken("zzzzzz", "0123456789abcdef")
        )

    async def test_second_read_that_differs_is_refused(self) -> None:
        pki = self.pki
        inner = SimulatedAPIServer(reactor, tls=pki)
        changing = _ChangingClusterInfo(inner)
        url = self.listen_tls(changing, pki)
        inner.add_bootstrap_token(TOKEN_TEXT, server_url=url)
        await self.refused("second", "different kubeconfig", url=url)
        self.assertEqual(changing.reads, 2)

    async def test_server_not_certified_by_the_published_ca_is_refused(self) -> None:
        # A man in the middle replays the real cluster-info (signed, real CA) with his own
        # certificate: the signature and the pin pass, the verified second read does not.
        published = self.server.get("configmaps", "kube-public", "cluster-info")
        url = self.listen_tls(_Fixed(200, json.dumps(published).encode()), TestPKI())
        await self.refused("TLS", url=url)

    async def test_server_certificate_for_another_host_is_refused(self) -> None:
        published = self.server.get("configmaps", "kube-public", "cluster-info")
        url = self.listen_tls(
            _Fixed(200, json.dumps(published).encode()), self.pki, hosts=("other.example",)
        )
        await self.refused("TLS", "does not name the host", url=url)

    async def test_error_answers_are_refused(self) -> None:
        self.server.fail(CLUSTER_INFO, 403, "Forbidden")
        await self.refused("HTTP 403")
        self.server.clear_failures()
        self.server.delete("configmaps", "kube-public", "cluster-info")
        await self.refused("HTTP 404")

    async def test_non_json_answer_is_refused(self) -> None:
        url = self.listen_tls(_Fixed(200, b"<html>hello</html>"), self.pki)
        await self.refused("JSON", url=url)

    async def test_oversized_answer_is_refused(self) -> None:
        url = self.listen_tls(_Fixed(200, b"{" + b" " * (2 << 20) + b"}"), self.pki)
        await self.refused("larger than", url=url)

    async def test_non_https_url_is_refused(self) -> None:
        for url in [
            self.server.url.replace("https", "http"),
            "https://",
            "https://h:99999",
            "https://hé.example",
        ]:
            await self.refused("https://", url=url)

    async def test_unreachable_server_is_refused(self) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        await self.refused("cannot read", url=f"https://127.0.0.1:{port}")

    async def test_silent_server_times_out(self) -> None:
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts; nobody ever answers
        started = time.monotonic()
        message = await self.refused(
            url=f"https://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5
        )
        self.assertLess(time.monotonic() - started, 3.0)
        self.assertIn("0.5 s", message)

    async def test_cancelling_discovery_is_a_cancellation(self) -> None:
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        d = self.discover(url=f"https://127.0.0.1:{silent.getsockname()[1]}")
        reactor.callLater(0.2, d.cancel)
        with self.assertRaises(defer.CancelledError):
            await d
