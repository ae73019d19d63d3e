"""Moving a node to another cluster (yurthub/migration.py, ``PUT /v1/cluster``, SIGHUP).

Two TLS simulated clusters with different CAs, each publishing its own bootstrap token and
signing CSRs; yurthub starts on A from a token, then moves to B while a client keeps
reading through it.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from tests.support import fetch, raw_connect, sleep, start_hub, wait_until
from yurthub.certificates.bootstrap import ca_pin
from yurthub.config import ListenConfig, parse_config
from yurthub.hub import ClusterPage, from_loopback
from yurthub.migration import InvalidField, changed_keys, parse_cluster_request
from yurthub.tap import ConfigReloader
from yurthub.testing.apiserver import SimulatedAPIServer
from yurthub.testing.pki import TestPKI

TOKEN_A = "aaaaaa.0123456789abcdef"
TOKEN_B = "bbbbbb.0123456789abcdef"
CONFIGMAP = "/api/v1/namespaces/default/configmaps/where"
KUBELET = {b"user-agent": [b"kubelet/v1.31.0"], b"accept": [b"application/json"]}



class TwoClusters(TestCase):
    """Clusters A and B (different CAs, tokens and objects) and a yurthub on A."""

    timeout = 120

    async def cluster(self, name: str, token: str) -> SimulatedAPIServer:
        server = SimulatedAPIServer(reactor, tls=TestPKI())
        server.csr_auto_approve = True
        await server.start("tcp:0:interface=127.0.0.1")
        server.add_bootstrap_token(token)
        server.create({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "where", "namespace": "default"}, "data": {"cluster": name},
        })
        server.create({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"only-in-{name}", "namespace": "default"}, "data": {},
        })
        self.addCleanup(server.stop)
        return server

    async def setup_hub(self, **sections: Any) -> None:
        self.a = await self.cluster("a", TOKEN_A)
        self.b = await self.cluster("b", TOKEN_B)
        self.pki_dir = os.path.abspath(self.mktemp())
        self.hub = await start_hub(
            self,
            [self.a.url],
            certificates={
                "mode": "token",
                "bootstrapToken": TOKEN_A,
                "caCertHashes": [pin(self.a)],
                "dir": self.pki_dir,
            },
            **sections,
        )
        self.base = f"http://127.0.0.1:{self.hub.port_of('listen.proxy')}"
        self.hub_url = f"http://127.0.0.1:{self.hub.port_of('listen.hub')}"
        await wait_until(lambda: self.hub.certificates.client.valid, what="a certificate from A")

    def body_for_b(self, **changes: Any) -> bytes:
        body = {"servers": [self.b.url], "bootstrapToken": TOKEN_B, "caCertHashes": [pin(self.b)], **changes}
        return json.dumps(body).encode()

    async def put_cluster(self, body: bytes) -> tuple[int, dict[str, Any]]:
        code, _, data = await fetch(self, b"PUT", self.hub_url + "/v1/cluster", body=body)
        return code, json.loads(data)

    async def readyz(self) -> tuple[int, str]:
        code, _, body = await fetch(self, b"GET", self.hub_url + "/v1/readyz?verbose")
        return code, body.decode()

    async def where(self) -> str:
        code, _, body = await fetch(self, b"GET", self.base + CONFIGMAP, KUBELET)
        self.assertEqual(code, 200, body)
        return str(json.loads(body)["data"]["cluster"])


def pin(server: SimulatedAPIServer) -> str:
    assert server.tls is not None
    return ca_pin(server.tls.ca_cert_pem)


class MigrationTests(TwoClusters):
    async def test_a_client_looping_gets_sees_no_failure_and_ends_up_reading_b(self) -> None:
        await self.setup_hub()
        self.assertEqual(await self.where(), "a")
        # A watch open on A ends cleanly at the switch (its client would re-watch on B).
        watcher = await raw_connect(self, self.hub.port_of("listen.proxy"))
        watcher.transport.write(  # type: ignore[union-attr]
            b"GET /api/v1/namespaces/default/configmaps?watch=true HTTP/1.1\r\nHost: x\r\n"
            b"User-Agent: kubelet/v1.31.0\r\n\r\n"
        )
        await watcher.wait_for(lambda b: b"ADDED" in b)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool)
        failures: list[Any] = []
        seen: list[str] = []
        answer: list[tuple[int, dict[str, Any]]] = []

        async def migrate() -> None:
            answer.append(await self.put_cluster(self.body_for_b()))

        from twisted.internet.defer import ensureDeferred

        migrating = ensureDeferred(migrate())
        after = 0
        while after < 30:
            try:
                response = await agent.request(b"GET", (self.base + CONFIGMAP).encode(), Headers(KUBELET))
                data = await readBody(response)
                if response.code != 200:
                    failures.append((response.code, data))
                else:
                    seen.append(json.loads(data)["data"]["cluster"])
            except Exception as e:
                failures.append(repr(e))
            if answer:
                after += 1
            await sleep(0.005)
        await migrating
        self.assertEqual(failures, [])
        code, status = answer[0]
        self.assertEqual(code, 200, status)
        self.assertIn(self.b.url, status["message"])
        self.assertEqual(seen[0], "a")
        self.assertEqual(seen[-1], "b")
        self.assertEqual(seen[seen.index("b"):], ["b"] * len(seen[seen.index("b"):]))  # never back to A
        # Ended cleanly: the last chunk, as kube-apiserver ends a watch.
        await watcher.wait_for(lambda b: b.endswith(b"0\r\n\r\n"))
        # B knows the node by B's certificate; the files of B are current, A's kept aside.
        self.assertEqual([r.user for r in self.b.requests if r.path.startswith(CONFIGMAP)][-1], "system:node:edge-1")
        assert self.b.tls is not None and self.a.tls is not None
        with open(os.path.join(self.pki_dir, "ca.crt"), "rb") as f:
            self.assertEqual(f.read(), self.b.tls.ca_cert_pem)
        with open(os.path.join(self.pki_dir, "previous", "ca.crt"), "rb") as f:
            self.assertEqual(f.read(), self.a.tls.ca_cert_pem)
        self.assertFalse(os.path.exists(os.path.join(self.pki_dir, "migrating")))
        code, text = await self.readyz()
        self.assertEqual(code, 200, text)
        self.assertIn(f"{self.b.url} healthy", text)
        self.assertNotIn(self.a.url, text)
        self.assertEqual(self.hub.config.servers, (self.b.url,))
        # A is not asked again: not by requests, not by probes.
        await sleep(0.5)
        before = len(self.a.requests)
        await sleep(0.6)
        self.assertEqual(len(self.a.requests), before)

    async def test_the_cache_keeps_a_objects_until_b_lists_replace_them(self) -> None:
        await self.setup_hub()
        lister = "/api/v1/namespaces/default/configmaps"
        code, _, _ = await fetch(self, b"GET", self.base + lister, KUBELET)
        self.assertEqual(code, 200)
        code, status = await self.put_cluster(self.body_for_b())
        self.assertEqual(code, 200, status)
        # Offline right after the switch: A's objects are answered from the cache.
        await self.b.stop_listening()
        await wait_until(lambda: not self.hub.backends[0].healthy, what="B seen down")
        code, _, body = await fetch(self, b"GET", self.base + lister + "/only-in-a", KUBELET)
        self.assertEqual(code, 200, body)
        # B back; its list replaces the cached set.
        await self.b.start_listening()
        await wait_until(lambda: self.hub.backends[0].healthy, what="B back")
        code, _, body = await fetch(self, b"GET", self.base + lister, KUBELET)
        self.assertEqual(code, 200, body)
        names = {o["metadata"]["name"] for o in json.loads(body)["items"]}
        self.assertIn("only-in-b", names)
        self.assertNotIn("only-in-a", names)
        await self.hub.cache.drain()
        await self.b.stop_listening()
        await wait_until(lambda: not self.hub.backends[0].healthy, what="B down again")
        code, _, body = await fetch(self, b"GET", self.base + lister + "/only-in-a", KUBELET)
        self.assertEqual(code, 404, body)
        code, _, body = await fetch(self, b"GET", self.base + lister + "/only-in-b", KUBELET)
        self.assertEqual(code, 200, body)

    async def test_invalid_fields_are_400_naming_the_field_and_change_nothing(self) -> None:
        await self.setup_hub()
        cases = {
            "servers": self.body_for_b(servers=["ftp://10.0.0.1"]),
            "bootstrapToken": self.body_for_b(bootstrapToken="not-a-token"),
            "caCertHashes": self.body_for_b(caCertHashes=["md5:abc"]),
            "surprise": self.body_for_b(surprise=1),
        }
        for field, body in cases.items():
            code, status = await self.put_cluster(body)
            self.assertEqual(code, 400, (field, status))
            self.assertEqual((status["kind"], status["reason"]), ("Status", "BadRequest"))
            self.assertIn(field, status["message"])
            self.assertEqual(status["details"]["causes"][0]["field"], field)
        code, status = await self.put_cluster(json.dumps({"servers": [self.b.url]}).encode())
        self.assertEqual(code, 400)
        self.assertIn("bootstrapToken", status["message"])
        code, status = await self.put_cluster(b"{nope")
        self.assertEqual(code, 400)
        self.assertEqual(self.hub.config.servers, (self.a.url,))
        self.assertEqual(self.b.requests, [])
        self.assertEqual(await self.where(), "a")
        code, text = await self.readyz()
        self.assertEqual(code, 200, text)

    async def test_b_unreachable_or_a_wrong_pin_leaves_a_serving_and_says_why(self) -> None:
        await self.setup_hub()
        await self.b.stop_listening()
        code, status = await self.put_cluster(self.body_for_b())
        self.assertEqual(code, 502, status)
        self.assertIn("cannot bootstrap against", status["message"])
        self.assertEqual(await self.where(), "a")
        code, text = await self.readyz()
        self.assertEqual(code, 503, text)
        self.assertIn("[-]migration failed: moving to", text)
        self.assertIn(f"still on {self.a.url}", text)
        await self.b.start_listening()
        code, status = await self.put_cluster(self.body_for_b(caCertHashes=[pin(self.a)]))
        self.assertEqual(code, 502, status)
        self.assertIn("caCertHashes", status["message"])
        self.assertFalse([r for r in self.b.requests if "certificatesigningrequests" in r.path])
        self.assertEqual(await self.where(), "a")
        assert self.a.tls is not None
        with open(os.path.join(self.pki_dir, "ca.crt"), "rb") as f:
            self.assertEqual(f.read(), self.a.tls.ca_cert_pem)  # A's files untouched
        # A later migration that works clears the error.
        code, status = await self.put_cluster(self.body_for_b())
        self.assertEqual(code, 200, status)
        self.assertEqual(await self.where(), "b")
        code, text = await self.readyz()
        self.assertEqual(code, 200, text)

    async def test_sighup_with_a_changed_config_file_moves_the_node(self) -> None:
        await self.setup_hub()
        path = os.path.abspath(self.mktemp())

        def write(servers: str, token: str, hashes: str, extra: str = "") -> None:
            with open(path, "w") as f:
                f.write(
                    f"nodeName: edge-1\nservers: [{servers}]\n"
                    f"certificates: {{mode: token, dir: {self.pki_dir}, bootstrapToken: {token}, caCertHashes: [\"{hashes}\"]}}\n"
                    f"cache: {{dir: {self.hub.config.cache.dir}}}\n"
                    "listen: {proxy: 'tcp:0:interface=127.0.0.1', secureProxy: '', hub: 'tcp:0:interface=127.0.0.1'}\n"
                    "healthCheck: {intervalSeconds: 0.2, timeoutSeconds: 2, healthyThreshold: 1, unhealthyThreshold: 2}\n"
                    + extra
                )

        reloader = ConfigReloader(reactor, self.hub, path, {}, required=True)
        reloader.startService()
        self.addCleanup(reloader.stopService)
        # Unchanged cluster keys, one other key changed: nothing migrates.
        write(self.a.url, TOKEN_A, pin(self.a), "loadBalancing: priority\n")
        self.assertIsNone(await reloader.reload())
        # A file that does not validate changes nothing.
        with open(path, "w") as f:
            f.write("servers: nope\n")
        self.assertIsNone(await reloader.reload())
        # B's keys and a real SIGHUP.
        write(self.b.url, TOKEN_B, pin(self.b))
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(lambda: self.hub.config.servers == (self.b.url,), what="moved by SIGHUP")
        await wait_until(lambda: not self.hub.migration.busy, what="done")
        self.assertEqual(await self.where(), "b")
        self.flushLoggedErrors()


class HubPageTests(SynchronousTestCase):
    """The resource's own rules, with fake requests."""

    def put(self, client: Any, body: bytes = b"{}") -> tuple[int, dict[str, Any]]:
        import io

        request = DummyRequest([b""])
        request.client = client
        request.method = b"PUT"
        request.content = io.BytesIO(body)

        class Refuse:
            def migrate(self, target: Any) -> Any:
                raise AssertionError("must not be reached")

        out = ClusterPage(Refuse()).render(request)  # type: ignore[no-untyped-call]
        return request.responseCode, json.loads(out)

    def test_a_caller_not_on_loopback_gets_403_status(self) -> None:
        code, status = self.put(IPv4Address("TCP", "10.1.2.3", 40000))
        self.assertEqual(code, 403)
        self.assertEqual((status["kind"], status["reason"]), ("Status", "Forbidden"))
        code, _ = self.put(IPv6Address("TCP", "fd00::1", 40000))
        self.assertEqual(code, 403)
        code, _ = self.put(None)  # no address at all
        self.assertEqual(code, 403)

    def test_loopback_addresses(self) -> None:
        def request(address: Any) -> DummyRequest:
            r = DummyRequest([b""])
            r.client = address
            return r

        self.assertTrue(from_loopback(request(IPv4Address("TCP", "127.0.0.1", 1))))
        self.assertTrue(from_loopback(request(IPv4Address("TCP", "127.3.0.1", 1))))
        self.assertTrue(from_loopback(request(IPv6Address("TCP", "::1", 1))))
        self.assertTrue(from_loopback(request(IPv6Address("TCP", "::ffff:127.0.0.1", 1))))
        self.assertTrue(from_loopback(request(UNIXAddress(b"/run/yurthub.sock"))))
        self.assertFalse(from_loopback(request(IPv6Address("TCP", "::ffff:10.0.0.1", 1))))

    def test_a_loopback_caller_with_a_bad_body_gets_400(self) -> None:
        code, status = self.put(IPv4Address("TCP", "127.0.0.1", 40000), b'{"servers": []}')
        self.assertEqual(code, 400)
        self.assertIn("servers", status["message"])

    def test_the_hub_binds_loopback_by_default(self) -> None:
        self.assertIn("interface=127.0.0.1", ListenConfig().hub)


class ParseTests(SynchronousTestCase):
    def test_fields_are_checked_like_the_config_file(self) -> None:
        good = {"servers": ["https://10.0.0.1"], "bootstrapToken": TOKEN_B, "caCertHashes": ["sha256:" + "a" * 64]}
        target = parse_cluster_request(json.dumps(good).encode())
        self.assertEqual(target.servers, ("https://10.0.0.1:443",))
        for field, value in [("servers", []), ("bootstrapToken", ""), ("caCertHashes", []), ("caCertHashes", "x")]:
            with self.assertRaises(InvalidField) as caught:
                parse_cluster_request(json.dumps({**good, field: value}).encode())
            self.assertEqual(caught.exception.field, field)

    def test_changed_keys(self) -> None:
        one = parse_config({"servers": ["https://a:1"], "nodeName": "n"})
        two = parse_config({"servers": ["https://b:1"], "nodeName": "n", "certificates": {"bootstrapToken": TOKEN_A}})
        self.assertEqual(changed_keys(one, two), ["servers", "certificates.bootstrapToken"])
