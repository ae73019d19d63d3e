"""The defences SECURITY.md lists, one test class each: loopback listeners and the warning,
TLS 1.2 at least on both sides, host-name verification that no config can turn off,
private file modes, no secret in the logs of a full run, loopback-only hub calls, and the
request-body limit.

(Host-name mismatch end to end: tests/test_failover.py
``test_tls_is_verified_against_the_host_name``; cache file modes in detail:
tests/test_store.py; key file modes: tests/test_cert_pki.py.)
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, reactor, ssl
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import classImplements, implementer

from tests.support import fetch, raw_connect, sleep
from tests.test_certificates import KUBELET, PODS, TOKEN, CertificateCloud, wait_until
from yurthub.config import ConfigError, ListenConfig, describe, parse_config
from yurthub.hub import TokenPage
from yurthub.logs import make_observer
from yurthub.service import ServingTLS
from yurthub.testing.pki import TestPKI
from yurthub.upstream.tls import FileCredentials

MIB = 1024 * 1024


class ListenerDefaultsTests(SynchronousTestCase):
    """Every listener binds 127.0.0.1 unless told otherwise; anything else is warned about."""

    def config(self, **listen: str) -> Any:
        return parse_config({"nodeName": "edge-1", "servers": ["https://10.0.0.1:6443"], "listen": listen})

    def test_defaults_are_loopback_and_not_warned_about(self) -> None:
        defaults = ListenConfig()
        for value in (defaults.proxy, defaults.secure_proxy, defaults.hub):
            self.assertIn(":interface=127.0.0.1", value)
        self.assertEqual(list(describe(self.config())), [])

    def test_a_listener_off_loopback_is_warned_about(self) -> None:
        warnings = describe(
            self.config(proxy="tcp:10261", secureProxy="tcp:10268:interface=0.0.0.0", hub="tcp:10267:interface=10.0.0.5")
        )
        self.assertEqual(len(warnings), 3, warnings)
        for key in ("listen.proxy", "listen.secureProxy", "listen.hub"):
            self.assertTrue(any(w.startswith(key + " ") and "not bound to loopback" in w for w in warnings), warnings)

    def test_other_loopback_spellings_are_not_warned_about(self) -> None:
        config = self.config(
            proxy="tcp:10261:interface=127.0.0.2:backlog=50", secureProxy="tcp6:10268:interface=\\:\\:1", hub="unix:/run/yh.sock"
        )
        self.assertEqual(list(describe(config)), [])


def _options(context: SSL.Context) -> int:
    """The context's option bits (OP_NO_TLSv1_1 and the like)."""
    from OpenSSL._util import lib

    return int(lib.SSL_CTX_get_options(context._context))


def _client_connection(creator: Any) -> SSL.Connection:
    """The connection a client creator makes for a new TLS connection."""
    from twisted.internet.testing import StringTransport

    protocol = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(Protocol)).buildProtocol(None)
    protocol.makeConnection(StringTransport())
    connection: SSL.Connection = protocol._tlsConnection
    return connection


@implementer(IOpenSSLContextFactory)
class _LegacyServer:
    """A TLS server that speaks TLS 1.0 and 1.1 only, with a certificate for 127.0.0.1."""

    def __init__(self, pki: TestPKI) -> None:
        cert_pem, key_pem = pki.issue_server()
        self._certificate = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)

    def getContext(self) -> SSL.Context:  # noqa: N802 - the context-factory interface
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_VERSION)
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        context.use_certificate(self._certificate.original)
        context.use_privatekey(self._certificate.privateKey.original)
        return context


class _Handshake(Protocol):
    def __init__(self) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(b"GET / HTTP/1.0\r\n\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self.done.called:
            self.done.callback(None)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if not self.done.called:
            self.done.errback(reason)


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.transport.write(b"hello")  # type: ignore[union-attr]


class TLSMinimumTests(TestCase):
    """TLS 1.2 or later towards the cloud and on the HTTPS listener."""

    def test_the_client_contexts_refuse_tls_below_1_2(self) -> None:
        pki = TestPKI()
        creator = FileCredentials(pki.ca_cert_pem).client_creator("127.0.0.1", False)
        options = _options(_client_connection(creator).get_context())
        self.assertTrue(options & SSL.OP_NO_TLSv1)
        self.assertTrue(options & SSL.OP_NO_TLSv1_1)

    def test_the_https_listener_refuses_tls_below_1_2(self) -> None:
        pki = TestPKI()
        serving = ServingTLS()
        serving.use(*pki.issue_server())
        options = _options(serving.getContext())
        self.assertTrue(options & SSL.OP_NO_TLSv1)
        self.assertTrue(options & SSL.OP_NO_TLSv1_1)

    async def _connect(self, port: int, creator: Any) -> None:
        protocol = _Handshake()
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        await endpoint.connect(Factory.forProtocol(lambda: protocol))
        await protocol.done.addTimeout(5, reactor)

    async def _legacy_port(self, pki: TestPKI) -> int:
        factory = TLSMemoryBIOFactory(_LegacyServer(pki), False, Factory.forProtocol(_Echo))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def test_a_cloud_speaking_only_tls_1_1_is_refused(self) -> None:
        pki = TestPKI()
        port = await self._legacy_port(pki)
        # The same server is reachable by a client that allows TLS 1.1 (else this OpenSSL
        # cannot speak it at all, and the refusal below would prove nothing).
        permissive = ssl.CertificateOptions(
            verify=False,
            insecurelyLowerMinimumTo=ssl.TLSVersion.TLSv1_0,
            acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString("DEFAULT:@SECLEVEL=0"),
        )
        try:
            await self._connect(port, _PlainCreator(permissive))
        except Exception as e:
            raise SkipTest(f"this OpenSSL cannot speak TLS 1.1 even when asked to: {e}") from None
        creator = FileCredentials(pki.ca_cert_pem).client_creator("127.0.0.1", False)
        with self.assertRaises(SSL.Error):
            await self._connect(port, creator)


class _PlainCreator:
    """A client connection creator from `CertificateOptions` (no name checks)."""

    def __init__(self, options: ssl.CertificateOptions) -> None:
        self._options = options

    def clientConnectionForTLS(self, protocol: Any) -> SSL.Connection:  # noqa: N802
        return self._options.clientConnectionForTLS(protocol)


classImplements(_PlainCreator, IOpenSSLClientConnectionCreator)


class HostNameVerificationTests(SynchronousTestCase):
    """Verification of the cloud's certificate and host name has no off switch."""

    def test_no_config_key_turns_verification_off(self) -> None:
        for section, key in (
            ("certificates", "insecureSkipTLSVerify"),
            ("certificates", "insecureSkipVerify"),
            ("certificates", "skipHostnameVerification"),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse_config({"servers": ["https://10.0.0.1:6443"], section: {key: True}})
            self.assertIn("unknown key", str(caught.exception))

    def test_every_client_context_verifies_the_peer(self) -> None:
        pki = TestPKI()
        credentials = FileCredentials(pki.ca_cert_pem)
        for with_certificate in (False, True):
            creator = credentials.client_creator("cloud.example", with_certificate)
            connection = _client_connection(creator)
            self.assertTrue(connection.get_verify_mode() & SSL.VERIFY_PEER)
            self.assertTrue(connection.get_verify_mode() & SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
            # service_identity checks this name against the certificate after the handshake.
            self.assertEqual(creator._hostnameASCII, "cloud.example")  # type: ignore[attr-defined]


class HubLoopbackTests(SynchronousTestCase):
    """``POST /v1/token`` (and ``PUT /v1/cluster``, tests/test_migration.py) answer
    loopback callers only."""

    def post(self, client: Any) -> tuple[int, list[str]]:
        taken: list[str] = []

        class Certificates:
            def set_bootstrap_token(self, token: str) -> None:
                taken.append(token)

        request = DummyRequest([b""])
        request.client = client
        request.method = b"POST"
        request.content = io.BytesIO(json.dumps({"bootstrapToken": TOKEN}).encode())
        TokenPage(Certificates()).render(request)  # type: ignore[no-untyped-call]
        return request.responseCode or 200, taken

    def test_a_caller_not_on_loopback_is_refused_and_nothing_is_set(self) -> None:
        for address in (IPv4Address("TCP", "10.1.2.3", 4000), IPv6Address("TCP", "fd00::1", 4000), None):
            code, taken = self.post(address)
            self.assertEqual((code, taken), (403, []), address)

    def test_a_loopback_caller_sets_the_token(self) -> None:
        self.assertEqual(self.post(IPv4Address("TCP", "127.0.0.1", 4000)), (200, [TOKEN]))


async def _secure_hub(test: Any, server: Any) -> Any:
    """`CertificateCloud.hub` with the HTTPS listener on too (its serving certificate
    issued by the cloud, for 127.0.0.1)."""
    from tests.support import start_hub
    from yurthub.certificates.bootstrap import ca_pin

    test.pki_dir = os.path.abspath(test.mktemp())
    section = {"mode": "token", "bootstrapToken": TOKEN, "caCertHashes": [ca_pin(test.pki.ca_cert_pem)], "dir": test.pki_dir}
    listen = {"proxy": "tcp:0:interface=127.0.0.1", "secureProxy": "tcp:0:interface=127.0.0.1", "hub": "tcp:0:interface=127.0.0.1"}
    hub = await start_hub(test, [server.url], certificates=section, listen=listen)
    test.base = f"http://127.0.0.1:{hub.port_of('listen.proxy')}"
    test.hub_url = f"http://127.0.0.1:{hub.port_of('listen.hub')}"
    return hub


class RequestBodyLimitTests(CertificateCloud):
    """Bodies over 3 MiB are refused with 413 before they are read, on both proxy listeners."""

    async def test_a_body_over_3_mib_gets_413_on_both_listeners(self) -> None:
        server = await self.cloud()
        hub = await _secure_hub(self, server)
        await wait_until(lambda: hub.certificates.client.valid, what="a client certificate")
        head = (
            f"POST {PODS} HTTP/1.1\r\nHost: hub\r\nUser-Agent: kubelet/v1.31.0\r\n"
            f"Content-Type: application/json\r\nContent-Length: {3 * MIB + 1}\r\n\r\n"
        ).encode()
        client = await raw_connect(self, hub.port_of("listen.proxy"))
        client.transport.write(head)  # type: ignore[union-attr]
        answer = await client.wait_for(lambda r: b"\r\n\r\n" in r and r.endswith(b"}"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:200])
        self.assertIn(b'"kind":"Status"', answer.replace(b" ", b""))
        # The same over TLS on the secure listener.
        await wait_until(lambda: hub.serving_tls.options is not None, what="the serving certificate")
        received = await _tls_exchange(hub.port_of("listen.secureProxy"), self.pki, head)
        self.assertTrue(received.startswith(b"HTTP/1.1 413 "), received[:200])

    async def test_a_body_within_the_limit_goes_through(self) -> None:
        server = await self.cloud()
        hub = await self.hub(server)
        await wait_until(lambda: hub.certificates.client.valid, what="a client certificate")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big", "namespace": "default",
               "annotations": {"pad": "x" * (2 * MIB)}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}  # fmt: skip
        code, _, body = await fetch(self, b"POST", self.base + PODS, KUBELET, json.dumps(pod).encode())
        self.assertEqual(code, 201, body[:300])


async def _tls_exchange(port: int, pki: TestPKI, data: bytes) -> bytes:
    """Send ``data`` over TLS (HTTP/1.1, no ALPN) and collect the answer until closed."""
    received: list[bytes] = []
    done: defer.Deferred[None] = defer.Deferred()

    class Client(Protocol):
        def connectionMade(self) -> None:  # noqa: N802
            self.transport.write(data)  # type: ignore[union-attr]

        def dataReceived(self, chunk: bytes) -> None:  # noqa: N802
            received.append(chunk)

        def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
            done.callback(None)

    creator = ssl.optionsForClientTLS("127.0.0.1", trustRoot=ssl.Certificate.loadPEM(pki.ca_cert_pem))
    endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    await endpoint.connect(Factory.forProtocol(Client))
    await done.addTimeout(10, reactor)
    return b"".join(received)


class NoSecretsInLogsTests(CertificateCloud):
    """A full run (bootstrap with a token, rotation, serving certificate, secrets and
    bearer tokens proxied and cached, token calls on the hub, an offline token request)
    with every log event at debug level written as text and as JSON: no token, key or
    certificate material appears; every file holding secrets is 0600 in a 0700 directory."""

    timeout = 120

    async def test_a_full_run_logs_no_secret_and_keeps_secret_files_private(self) -> None:
        text, as_json = io.StringIO(), io.StringIO()
        observers = [make_observer("debug", "text", text), make_observer("debug", "json", as_json)]
        for observer in observers:
            globalLogPublisher.addObserver(observer)
            self.addCleanup(globalLogPublisher.removeObserver, observer)

        secret_value = "s3cr3t-db-password-Zq8"
        bearer = "eyJhbGciOiJSUzI1NiJ9.bearer-token-of-a-pod.c2lnbmF0dXJl"
        server = await self.cloud(lifetime=6)
        server.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "default"},
                       "data": {"password": base64.b64encode(secret_value.encode()).decode()}})  # fmt: skip
        hub = await _secure_hub(self, server)
        await wait_until(lambda: hub.certificates.client.valid, what="the first certificate")
        # The hub calls: a malformed token, the right one, from loopback.
        await fetch(self, b"POST", self.hub_url + "/v1/token",
                    body=json.dumps({"bootstrapToken": "qwerty.notavalidtoken-" + TOKEN.split(".")[1]}).encode())  # fmt: skip
        code, _, _ = await fetch(self, b"POST", self.hub_url + "/v1/token", body=json.dumps({"bootstrapToken": TOKEN}).encode())
        self.assertEqual(code, 200)
        # Secrets proxied (and cached for kubelet), a bearer token passed through.
        code, _, body = await fetch(self, b"GET", self.base + "/api/v1/namespaces/default/secrets/db", KUBELET)
        self.assertEqual(code, 200, body[:200])
        code, _, _ = await fetch(self, b"GET", self.base + "/api/v1/namespaces/default/secrets", KUBELET)
        self.assertEqual(code, 200)
        await fetch(self, b"GET", self.base + PODS, {**KUBELET, b"authorization": [b"Bearer " + bearer.encode()]})
        # A rotation.
        await wait_until(lambda: hub.certificates.client.rotations >= 1, timeout=20, what="a rotation")
        # Offline: a service-account token signed locally, a request with a bearer token.
        await server.stop_listening()
        await wait_until(lambda: not any(b.healthy for b in hub.backends), timeout=10, what="offline")
        await wait_until(lambda: hub.serving_tls.options is not None, what="the serving certificate")
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": ["api"]}}
        code, _, body = await fetch(self, b"POST", self.base + "/api/v1/namespaces/default/serviceaccounts/default/token",
                                    KUBELET, json.dumps(request).encode())  # fmt: skip
        self.assertEqual(code, 201, body[:300])
        local_token = json.loads(body)["status"]["token"]
        await fetch(self, b"GET", self.base + "/api/v1/namespaces/default/secrets/db",
                    {**KUBELET, b"authorization": [b"Bearer " + bearer.encode()]})  # fmt: skip
        await sleep(0.5)

        credential = hub.certificates.client.credential
        serving = hub.certificates.serving.credential if hub.certificates.serving is not None else None
        forbidden = {
            "bootstrap token": TOKEN,
            "bootstrap token secret": TOKEN.split(".")[1],
            "bearer token": bearer,
            "locally signed token": local_token,
            "secret value": secret_value,
            "secret value (base64)": base64.b64encode(secret_value.encode()).decode(),
            "PEM marker": "-----BEGIN",
            "private key marker": "PRIVATE KEY",
        }
        for name, pem in (("client", credential), ("serving", serving)):
            if pem is None:
                continue
            for kind, data in (("key", pem.key_pem), ("certificate", pem.cert_pem)):
                lines = [ln for ln in data.decode().splitlines() if ln and not ln.startswith("-----")]
                for n, line in enumerate(lines):
                    forbidden[f"{name} {kind} line {n}"] = line
        for kind, data in (("CA key", self.pki.ca_key_pem), ("CA certificate", self.pki.ca_cert_pem)):
            for n, line in enumerate(ln for ln in data.decode().splitlines() if ln and not ln.startswith("-----")):
                forbidden[f"{kind} line {n}"] = line
        logs = {"text": text.getvalue(), "json": as_json.getvalue()}
        self.assertGreater(len(logs["text"].splitlines()), 10, "the run logged too little to mean anything")
        found = [
            f"{what} in the {fmt} log: ...{log[max(0, log.find(value) - 80): log.find(value) + 40]!r}..."
            for what, value in forbidden.items()
            for fmt, log in logs.items()
            if value and value in log
        ]
        self.assertEqual(found, [])

        # Files holding secrets: 0600, their directories 0700.
        for top in (self.pki_dir, hub.config.cache.dir):
            for root, _dirs, files in os.walk(top):
                if root != top:
                    self.assertEqual(stat.S_IMODE(os.stat(root).st_mode), 0o700, root)
                for name in files:
                    path = os.path.join(root, name)
                    if not os.path.islink(path):
                        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        self.assertEqual(stat.S_IMODE(os.stat(self.pki_dir).st_mode), 0o700)
        self.flushLoggedErrors()


class IdentityTests(TestCase):
    """Only node components on the loopback listener go up as the node."""

    async def test_a_request_without_a_token_on_the_https_listener_goes_up_anonymous(self) -> None:
        import os

        from twisted.internet import utils

        from tests.support import fetch, start_hub
        from yurthub.testing.apiserver import SimulatedAPIServer
        from yurthub.testing.pki import TestPKI
        from yurthub.upstream.tls import FileCredentials

        pki = TestPKI()
        cloud = SimulatedAPIServer(reactor, tls=pki, seed=True)
        await cloud.start("tcp:0:interface=127.0.0.1")
        self.addCleanup(cloud.stop)
        cert, key = pki.issue_client("system:node:edge-1", ["system:nodes"])
        serving_cert, serving_key = pki.issue_server(hosts=["127.0.0.1", "localhost"])
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        files = pki.write_files(directory, name="serving", cert_pem=serving_cert, key_pem=serving_key)
        hub = await start_hub(
            self,
            [cloud.url],
            credentials=FileCredentials(pki.ca_cert_pem, cert, key),
            listen={"proxy": "tcp:0:interface=127.0.0.1", "secureProxy": "tcp:0:interface=127.0.0.1", "hub": ""},
            certificates={"servingCertFile": files["cert"], "servingKeyFile": files["key"]},
        )
        path = "/api/v1/namespaces/default/configmaps"

        def last_user() -> str | None:
            return [r.user for r in cloud.requests if r.path.startswith(path)][-1]

        await fetch(self, b"GET", f"http://127.0.0.1:{hub.port_of('listen.proxy')}{path}", {b"user-agent": [b"kubelet/v1.31.0"]})
        self.assertEqual(last_user(), "system:node:edge-1")
        secure = f"https://localhost:{hub.port_of('listen.secureProxy')}{path}"
        for extra, user in (([], None), (["-H", "Authorization: Bearer pod-token"], "token:pod-token")):
            _, err, code = await utils.getProcessOutputAndValue(
                "/usr/bin/curl", ["-sS", "--cacert", files["ca"], *extra, secure], reactor=reactor
            )
            self.assertEqual(code, 0, err)
            self.assertEqual(last_user(), user)  # a pod is never taken for the node
