"""Tenant isolation: no answer of any kind gives a tenant node an object of another
namespace (or a cluster-scoped object it may not see), live or cached; kube-system
service-account tokens are replaced by the tenant's default token, never by nothing."""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import fetch, raw_connect, sleep, start_hub
from yurthub.cache.keys import GVR
from yurthub.filters.tenant import Tenant, TenantTokens, service_account_namespace
from yurthub.requestinfo import parse_request_info
from yurthub.testing.apiserver import SimulatedAPIServer
from yurthub.testing.demo import make_pod

TENANT = {"namespaces": ["tenant-a"]}
KUBELET = {b"user-agent": [b"kubelet/v1.31.0"], b"accept": [b"application/vnd.kubernetes.protobuf, application/json"]}
KUBELET_JSON = {b"user-agent": [b"kubelet/v1.31.0"], b"accept": [b"application/json"]}
KUBECTL_TABLE = {b"user-agent": [b"kubectl/v1.31.0"],
                 b"accept": [b"application/json;as=Table;v=v1;g=meta.k8s.io,application/json"]}
PODS = GVR("", "v1", "pods")


def fake_token(namespace: str, name: str = "default") -> bytes:
    def seg(obj: Any) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=")

    claims = {"sub": f"system:serviceaccount:{namespace}:{name}", "kubernetes.io": {"namespace": namespace}}
    return seg({"alg": "RS256"}) + b"." + seg(claims) + b".sig"


def names(body: bytes) -> list[str]:
    doc = json.loads(body)
    if doc.get("kind") == "Table":
        return sorted(r["object"]["metadata"]["name"] for r in doc["rows"])
    return sorted(i["metadata"]["name"] for i in doc["items"])


class TenantRuleTests(SynchronousTestCase):
    def test_visibility(self) -> None:
        t = Tenant(["tenant-a"], "edge-1", ["storage.k8s.io/csidrivers"])
        info = parse_request_info(b"GET", b"/api/v1/pods", b"kubelet/v1")
        self.assertTrue(t.visible({"metadata": {"name": "p", "namespace": "tenant-a"}}, info))
        self.assertFalse(t.visible({"metadata": {"name": "p", "namespace": "tenant-b"}}, info))
        nodes = parse_request_info(b"GET", b"/api/v1/nodes", b"kubelet/v1")
        self.assertTrue(t.visible({"metadata": {"name": "edge-1"}}, nodes))
        self.assertFalse(t.visible({"metadata": {"name": "edge-2"}}, nodes))
        ns = parse_request_info(b"GET", b"/api/v1/namespaces", b"kubelet/v1")
        self.assertTrue(t.visible({"metadata": {"name": "tenant-a"}}, ns))
        self.assertFalse(t.visible({"metadata": {"name": "kube-system"}}, ns))
        csi = parse_request_info(b"GET", b"/apis/storage.k8s.io/v1/csidrivers", b"kubelet/v1")
        self.assertTrue(t.visible({"metadata": {"name": "x"}}, csi))
        pv = parse_request_info(b"GET", b"/api/v1/persistentvolumes", b"kubelet/v1")
        self.assertFalse(t.visible({"metadata": {"name": "x"}}, pv))

    def test_service_account_namespace_from_claims(self) -> None:
        self.assertEqual(service_account_namespace(fake_token("kube-system").decode()), "kube-system")
        self.assertEqual(service_account_namespace("not-a-jwt"), "")

    def test_tokens_fail_clearly_without_a_cloud(self) -> None:
        class NoBackends:
            def attempts(self, info: Any) -> Any:
                return self

            def next(self) -> None:
                return None

        tokens = TenantTokens(Clock(), NoBackends(), None, "tenant-a")  # type: ignore[arg-type]
        failure = self.failureResultOf(tokens.get())
        self.assertTrue(failure.value.unreachable)  # type: ignore[attr-defined]


async def _cloud(test: TestCase) -> SimulatedAPIServer:
    server = SimulatedAPIServer(reactor)
    await server.start("tcp:0:interface=127.0.0.1")
    test.addCleanup(server.stop)
    for ns in ("tenant-a", "tenant-b", "kube-system"):
        server.create({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": ns}})
    for name in ("edge-1", "edge-2"):
        server.create({"kind": "Node", "apiVersion": "v1", "metadata": {"name": name}})
    server.create(make_pod("mine", "tenant-a", "edge-1", {"app": "x"}))
    server.create(make_pod("theirs", "tenant-b", "edge-1", {"app": "x"}))
    server.create({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "cfg", "namespace": "tenant-b"}, "data": {}})
    server.create({"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"name": "default", "namespace": "tenant-a"}})
    return server


class TenantIsolationTests(TestCase):
    """Every way of asking for another namespace's object, online, offline and by watch."""

    timeout = 60

    async def _hub(self, cloud: SimulatedAPIServer, **tenant: Any) -> tuple[Any, str]:
        hub = await start_hub(self, [cloud.url], tenant={**TENANT, **tenant})
        return hub, f"http://127.0.0.1:{hub.port_of('listen.proxy')}"

    async def test_every_verb_on_another_namespace_is_absent(self) -> None:
        cloud = await _cloud(self)
        hub, proxy = await self._hub(cloud)
        theirs = proxy + "/api/v1/namespaces/tenant-b/pods/theirs"
        before = len(cloud.requests)
        for method, url, body, ctype in (
            (b"GET", theirs, None, None),
            (b"HEAD", theirs, None, None),
            (b"PUT", theirs, b'{"metadata":{"name":"theirs"}}', b"application/json"),
            (b"PATCH", theirs, b"{}", b"application/merge-patch+json"),
            (b"DELETE", theirs, None, None),
            (b"GET", theirs + "/log", None, None),
            (b"GET", theirs + "/status", None, None),
            (b"POST", proxy + "/api/v1/namespaces/tenant-b/pods", b'{"metadata":{"name":"x"}}', b"application/json"),
            (b"DELETE", proxy + "/api/v1/namespaces/tenant-b/pods", None, None),
            (b"GET", proxy + "/api/v1/namespaces/tenant-b", None, None),
            (b"GET", proxy + "/api/v1/namespaces/tenant-b/configmaps/cfg", None, None),
            (b"GET", proxy + "/api/v1/nodes/edge-2", None, None),
            (b"GET", proxy + "/api/v1/namespaces/kube-system", None, None),
        ):
            headers = dict(KUBELET)
            if ctype:
                headers[b"content-type"] = [ctype]
            code, _, answer = await fetch(self, method, url, headers, body)
            self.assertEqual(code, 404, f"{method!r} {url}")
            if method != b"HEAD":
                self.assertIn(b"NotFound", answer)
                self.assertNotIn(b"uid-", answer)
        # none of them reached the cloud
        self.assertEqual([r for r in cloud.requests[before:] if "tenant-b" in r.path or "edge-2" in r.path], [])
        # the cloud's own wording of absence, for a pod that does not exist at all
        code, _, absent = await fetch(self, b"GET", proxy + "/api/v1/namespaces/tenant-a/pods/nothing", KUBELET_JSON)
        code2, _, hidden = await fetch(self, b"GET", theirs.replace("theirs", "nothing"), KUBELET_JSON)
        self.assertEqual((code, code2), (404, 404))
        self.assertEqual(json.loads(absent)["message"], json.loads(hidden)["message"])
        code, _, _ = await fetch(self, b"DELETE", proxy + "/api/v1/pods", KUBELET)
        self.assertEqual(code, 403)
        self.assertIsNotNone(cloud.get("pods", "tenant-b", "theirs"))

    async def test_lists_tables_and_watches_hold_only_the_tenants_objects(self) -> None:
        cloud = await _cloud(self)
        hub, proxy = await self._hub(cloud)
        for url, expected in (
            ("/api/v1/pods", ["mine"]),
            ("/api/v1/namespaces/tenant-b/pods", []),
            ("/api/v1/pods?fieldSelector=metadata.name%3Dtheirs", []),
            ("/api/v1/nodes", ["edge-1"]),
            ("/api/v1/namespaces", ["tenant-a"]),
            ("/api/v1/configmaps", []),
        ):
            for headers in (KUBELET, KUBECTL_TABLE):
                code, _, body = await fetch(self, b"GET", proxy + url, headers)
                self.assertEqual((code, names(body)), (200, expected), f"{url} {headers[b'accept']}")
        code, _, body = await fetch(self, b"GET", proxy + "/api/v1/namespaces/tenant-a/pods/mine", KUBECTL_TABLE)
        self.assertEqual(names(body), ["mine"])

        # a watch from an old resourceVersion replays history: only the tenant's events
        client = await raw_connect(self, hub.port_of("listen.proxy"))
        client.transport.write(  # type: ignore[union-attr]
            b"GET /api/v1/pods?watch=1&resourceVersion=1 HTTP/1.1\r\nHost: x\r\n"
            b"User-Agent: kubelet/v1.31.0\r\nAccept: application/json\r\n\r\n"
        )
        cloud.patch("pods", "tenant-b", "theirs", {"metadata": {"labels": {"changed": "1"}}})
        cloud.create(make_pod("late-theirs", "tenant-b", "edge-1", {"app": "x"}))
        cloud.create(make_pod("late-mine", "tenant-a", "edge-1", {"app": "x"}))
        cloud.delete("pods", "tenant-b", "late-theirs")
        cloud.create(make_pod("last-mine", "tenant-a", "edge-1", {"app": "x"}))
        received = await client.wait_for(lambda r: b'"last-mine"' in r)
        self.assertNotIn(b"tenant-b", received)
        self.assertNotIn(b"theirs", received)
        self.assertIn(b'"late-mine"', received)

        # and nothing of theirs reached the cache
        for _ in range(50):
            await hub.store.flush()
            await sleep(0.02)
        for component in hub.store.components():
            for key, data in hub.store.list(component, PODS, None):
                self.assertEqual(key.namespace, "tenant-a")
                self.assertNotIn(b"tenant-b", data)

    async def test_offline_answers_hold_only_the_tenants_objects(self) -> None:
        cloud = await _cloud(self)
        hub, proxy = await self._hub(cloud)
        await fetch(self, b"GET", proxy + "/api/v1/pods", KUBELET)
        # a copy of another namespace's pod in the cache (from before tenant mode was on)
        theirs = make_pod("planted", "tenant-b", "edge-1", {"app": "x"})
        hub.store.put(hub.cache.key("kubelet", PODS, theirs), "1", json.dumps(theirs).encode())
        await cloud.stop_listening()
        for _ in range(100):
            if not any(b.healthy for b in hub.backends):
                break
            await sleep(0.05)
        self.assertFalse(any(b.healthy for b in hub.backends))
        for headers in (KUBELET, KUBECTL_TABLE):
            code, _, body = await fetch(self, b"GET", proxy + "/api/v1/pods", headers)
            self.assertEqual((code, names(body)), (200, ["mine"]))
        for url in ("/api/v1/namespaces/tenant-b/pods/planted", "/api/v1/namespaces/tenant-b/pods/theirs"):
            code, _, body = await fetch(self, b"GET", proxy + url, KUBELET)
            self.assertEqual(code, 404)
            self.assertNotIn(b"uid-", body)
        code, _, body = await fetch(self, b"GET", proxy + "/api/v1/namespaces/tenant-b/pods", KUBELET)
        self.assertNotIn(b"planted", body)
        # a stand-in for the store: even a lookup that bypasses the request rules is filtered
        info = parse_request_info(b"GET", b"/api/v1/pods", b"kubectl/v1")
        stage = hub.filters.for_request(info)
        self.assertEqual([o.key.name for o in hub.cache.objects(info, None)
                          if stage.object(o.obj, info, fresh=False) is not None], ["mine"])

    async def test_kube_system_tokens_are_swapped_for_the_tenants(self) -> None:
        cloud = await _cloud(self)
        hub, proxy = await self._hub(cloud)
        headers = {**KUBELET, b"authorization": [b"Bearer " + fake_token("kube-system", "coredns")]}
        code, _, body = await fetch(self, b"GET", proxy + "/api/v1/namespaces/tenant-a/pods", headers)
        self.assertEqual(code, 200)
        sent = [r for r in cloud.requests if r.path.startswith("/api/v1/namespaces/tenant-a/pods")][-1]
        token = (sent.header("authorization") or "")[7:]
        self.assertEqual(service_account_namespace(token), "tenant-a")
        self.assertIn("system:serviceaccount:tenant-a:default", base64.urlsafe_b64decode(token.split(".")[1] + "==").decode())
        # other tokens go up as they came
        own = fake_token("tenant-a", "app")
        await fetch(self, b"GET", proxy + "/api/v1/namespaces/tenant-a/pods", {**KUBELET, b"authorization": [b"Bearer " + own]})
        self.assertEqual(cloud.requests[-1].header("authorization"), "Bearer " + own.decode())

    async def test_a_missing_tenant_token_refuses_the_request(self) -> None:
        cloud = await _cloud(self)
        cloud.delete("serviceaccounts", "tenant-a", "default")
        hub, proxy = await self._hub(cloud)
        before = len(cloud.requests)
        headers = {**KUBELET_JSON, b"authorization": [b"Bearer " + fake_token("kube-system")]}
        code, _, body = await fetch(self, b"GET", proxy + "/api/v1/namespaces/tenant-a/pods", headers)
        self.assertEqual(code, 403)
        status = json.loads(body)
        self.assertEqual((status["kind"], status["reason"]), ("Status", "Forbidden"))
        self.assertIn("tenant-a/default", status["message"])
        self.assertEqual([r for r in cloud.requests[before:] if "/pods" in r.path], [])
