"""Response filters: each filter's rules, the chain on live and cached answers (list, get,
watch), and the cache keeping what the component was given."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.offline_support import make_manager
from tests.support import fetch, raw_connect, sleep, start_hub
from yurthub.cache.keys import GVR
from yurthub.config import parse_config
from yurthub.filters.chain import FilterChain
from yurthub.filters.discardcloudservice import DiscardCloudServiceFilter
from yurthub.filters.inclusterconfig import InClusterConfigFilter
from yurthub.filters.masterservice import MasterServiceFilter
from yurthub.filters.nodepools import NodePools
from yurthub.filters.nodeportisolation import NodePortIsolationFilter, pool_enabled
from yurthub.filters.servicetopology import ServiceTopologyFilter
from yurthub.filters.setup import make_filter_chain, secure_listener_address
from yurthub.requestinfo import parse_request_info
from yurthub.testing.apiserver import SimulatedAPIServer

KUBE_PROXY = {b"user-agent": [b"kube-proxy/v1.31.0"], b"accept": [b"application/vnd.kubernetes.protobuf, application/json"]}
KUBELET = {b"user-agent": [b"kubelet/v1.31.0"], b"accept": [b"application/vnd.kubernetes.protobuf, application/json"]}
SERVICES = GVR("", "v1", "services")


def service(name: str, namespace: str = "default", type_: str = "ClusterIP", **annotations: str) -> dict[str, Any]:
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {"type": type_, "clusterIP": "10.96.0.10", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]},
    }


def node(name: str, pool: str = "") -> dict[str, Any]:
    labels = {"apps.openyurt.io/nodepool": pool} if pool else {}
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "labels": labels}}


def slice_of(service_name: str, *nodes: str) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": f"{service_name}-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [f"10.0.0.{i}"], "nodeName": n} for i, n in enumerate(nodes)],
    }


def info(path: str, agent: str = "kube-proxy", method: str = "GET") -> Any:
    return parse_request_info(method.encode(), path.encode(), f"{agent}/v1".encode())


class FilterRuleTests(SynchronousTestCase):
    """Each filter's rule on single objects."""

    def test_masterservice_points_kubernetes_service_at_the_secure_listener(self) -> None:
        f = MasterServiceFilter("169.254.2.1", 10268)
        svc = service("kubernetes")
        svc["spec"]["clusterIPs"] = ["10.96.0.1"]
        out = f.apply(svc, info("/api/v1/services", "kubelet"))
        assert out is not None
        self.assertEqual(out["spec"]["clusterIP"], "169.254.2.1")
        self.assertEqual(out["spec"]["clusterIPs"], ["169.254.2.1"])
        self.assertEqual(out["spec"]["ports"][0]["port"], 10268)
        other = f.apply(service("web"), info("/api/v1/services", "kubelet"))
        self.assertEqual(other["spec"]["clusterIP"], "10.96.0.10")  # type: ignore[index]

    def test_masterservice_applies_to_kubelet_only(self) -> None:
        f = MasterServiceFilter("169.254.2.1", 10268)
        self.assertTrue(f.applies(info("/api/v1/services", "kubelet")))
        self.assertFalse(f.applies(info("/api/v1/services", "kube-proxy")))
        self.assertFalse(f.applies(info("/api/v1/pods", "kubelet")))

    def test_discardcloudservice_drops_annotated_load_balancers_only(self) -> None:
        f = DiscardCloudServiceFilter()
        i = info("/api/v1/services")
        self.assertIsNone(f.apply(service("lb", type_="LoadBalancer", **{"svc.openyurt.io/discard": "true"}), i))
        self.assertIsNotNone(f.apply(service("lb", type_="LoadBalancer"), i))
        self.assertIsNotNone(f.apply(service("c", **{"svc.openyurt.io/discard": "true"}), i))
        self.assertIsNone(f.apply(service("x-tunnel-server-internal-svc", "kube-system"), i))

    def test_inclusterconfig_comments_out_kubeconfig_once(self) -> None:
        f = InClusterConfigFilter()
        cm = {"metadata": {"name": "kube-proxy", "namespace": "kube-system"},
              "data": {"config.conf": "apiVersion: x\nclientConnection:\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\nmode: iptables\n"}}
        i = info("/api/v1/namespaces/kube-system/configmaps/kube-proxy", "kubelet")
        once = f.apply(cm, i)
        assert once is not None
        self.assertIn("  #kubeconfig: /var/lib/kube-proxy/kubeconfig.conf", once["data"]["config.conf"])
        twice = f.apply(json.loads(json.dumps(once)), i)
        self.assertEqual(twice, once)
        other = {"metadata": {"name": "other", "namespace": "kube-system"}, "data": {"config.conf": "kubeconfig: x"}}
        self.assertEqual(f.apply(other, i)["data"]["config.conf"], "kubeconfig: x")  # type: ignore[index]

    def test_nodeport_listen_annotation_rules(self) -> None:
        self.assertTrue(pool_enabled("a,b", "a"))
        self.assertFalse(pool_enabled("a,b", "c"))
        self.assertFalse(pool_enabled("*,-c", "c"))
        self.assertTrue(pool_enabled("*,-c", "d"))
        self.assertTrue(pool_enabled("c,-c", "c"))  # the first mention counts
        self.assertFalse(pool_enabled("", "c"))

    def test_nodeportisolation_by_the_nodes_pool(self) -> None:
        manager = make_manager()
        manager.store.put(manager.key("kubelet", GVR("", "v1", "nodes"), node("edge-1", "hangzhou")), "5",
                          json.dumps(node("edge-1", "hangzhou")).encode())
        f = NodePortIsolationFilter(NodePools(manager, "edge-1"))
        i = info("/api/v1/services")
        self.assertIsNotNone(f.apply(service("np", type_="NodePort", **{"nodeport.openyurt.io/listen": "hangzhou"}), i))
        self.assertIsNone(f.apply(service("np", type_="NodePort", **{"nodeport.openyurt.io/listen": "beijing"}), i))
        self.assertIsNone(f.apply(service("np", type_="NodePort", **{"nodeport.openyurt.io/listen": "*,-hangzhou"}), i))
        self.assertIsNotNone(f.apply(service("np", type_="NodePort"), i))
        self.assertIsNotNone(f.apply(service("c", **{"nodeport.openyurt.io/listen": "beijing"}), i))

    def test_nodeportisolation_keeps_everything_on_a_node_in_no_pool(self) -> None:
        f = NodePortIsolationFilter(NodePools(make_manager(), "edge-1"))
        self.assertIsNotNone(f.apply(service("np", type_="NodePort", **{"nodeport.openyurt.io/listen": "x"}), info("/api/v1/services")))

    def _topology(self, key: str) -> tuple[ServiceTopologyFilter, Any]:
        manager = make_manager()
        nodes = GVR("", "v1", "nodes")
        for name, pool in (("edge-1", "p1"), ("edge-2", "p1"), ("edge-3", "p2")):
            manager.store.put(manager.key("yurthub", nodes, node(name, pool)), "5", json.dumps(node(name, pool)).encode())
        svc = service("web", **{"openyurt.io/topologyKeys": key})
        manager.store.put(manager.key("kube-proxy", SERVICES, svc), "5", json.dumps(svc).encode())
        return ServiceTopologyFilter(manager, NodePools(manager, "edge-1")), info("/apis/discovery.k8s.io/v1/endpointslices")

    def test_servicetopology_keeps_the_nodes_own_endpoints(self) -> None:
        f, i = self._topology("kubernetes.io/hostname")
        out = f.apply(slice_of("web", "edge-1", "edge-2", "edge-3"), i)
        self.assertEqual([e["nodeName"] for e in out["endpoints"]], ["edge-1"])  # type: ignore[index]

    def test_servicetopology_keeps_the_pools_endpoints(self) -> None:
        for key in ("openyurt.io/nodepool", "kubernetes.io/zone"):
            f, i = self._topology(key)
            out = f.apply(slice_of("web", "edge-1", "edge-2", "edge-3"), i)
            self.assertEqual([e["nodeName"] for e in out["endpoints"]], ["edge-1", "edge-2"])  # type: ignore[index]

    def test_servicetopology_leaves_unannotated_services(self) -> None:
        f, i = self._topology("kubernetes.io/hostname")
        out = f.apply(slice_of("other", "edge-1", "edge-3"), i)
        self.assertEqual(len(out["endpoints"]), 2)  # type: ignore[index]

    def test_servicetopology_on_endpoints(self) -> None:
        f, _ = self._topology("kubernetes.io/hostname")
        endpoints = {"metadata": {"name": "web", "namespace": "default"},
                     "subsets": [{"addresses": [{"ip": "1", "nodeName": "edge-1"}, {"ip": "2", "nodeName": "edge-3"}]}]}
        out = f.apply(endpoints, info("/api/v1/endpoints"))
        self.assertEqual(out["subsets"][0]["addresses"], [{"ip": "1", "nodeName": "edge-1"}])  # type: ignore[index]


class ChainTests(SynchronousTestCase):
    """Which filters a request gets, and whole answers through them."""

    def test_no_filter_for_requests_none_applies_to(self) -> None:
        chain = FilterChain([DiscardCloudServiceFilter()])
        self.assertIsNone(chain.for_request(info("/api/v1/pods", "kubelet")))
        self.assertIsNone(chain.for_request(info("/api/v1/services", "kubelet")))
        self.assertIsNotNone(chain.for_request(info("/api/v1/services", "kube-proxy")))

    def test_a_dropped_watch_object_becomes_deleted(self) -> None:
        stage = FilterChain([DiscardCloudServiceFilter()]).for_request(info("/api/v1/services?watch=1"))
        assert stage is not None
        lb = service("lb", type_="LoadBalancer", **{"svc.openyurt.io/discard": "true"})
        out = json.loads(stage.event_line(json.dumps({"type": "MODIFIED", "object": lb}).encode(), info("/api/v1/services?watch=1")))
        self.assertEqual(out["type"], "DELETED")
        self.assertEqual(out["object"]["metadata"]["name"], "lb")
        bookmark = {"type": "BOOKMARK", "object": {"kind": "Service", "metadata": {"resourceVersion": "9"}}}
        self.assertEqual(json.loads(stage.event_line(json.dumps(bookmark).encode(), info("/api/v1/services?watch=1"))), bookmark)

    def test_config_switches_filters_off(self) -> None:
        config = parse_config({"servers": ["http://127.0.0.1:1"], "nodeName": "edge-1", "filters": ["discardcloudservice"]})
        chain = make_filter_chain(config, make_manager(), NodePools(make_manager(), "edge-1"))
        assert chain is not None
        self.assertEqual([f.name for f in chain.filters], ["discardcloudservice"])
        none = parse_config({"servers": ["http://127.0.0.1:1"], "nodeName": "edge-1", "filters": []})
        self.assertIsNone(make_filter_chain(none, make_manager(), NodePools(make_manager(), "edge-1")))

    def test_secure_listener_address(self) -> None:
        self.assertEqual(secure_listener_address("tcp:10268:interface=169.254.2.1"), ("169.254.2.1", 10268))
        self.assertIsNone(secure_listener_address(""))
        self.assertIsNone(secure_listener_address("tcp:10268"))


async def _cloud(test: TestCase) -> SimulatedAPIServer:
    server = SimulatedAPIServer(reactor)
    await server.start("tcp:0:interface=127.0.0.1")
    test.addCleanup(server.stop)
    server.create(service("web"))
    server.create(service("lb", type_="LoadBalancer", **{"svc.openyurt.io/discard": "true"}))
    return server


async def _wait_cached(hub: Any, component: str, gvr: GVR, check: Any) -> list[str]:
    names: list[str] = []
    for _ in range(100):
        await hub.store.flush()
        names = sorted(k.name for k, _ in hub.store.list(component, gvr, None))
        if check(names):
            break
        await sleep(0.05)
    return names


class LiveAndCachedFilteringTests(TestCase):
    """The chain on live answers and cached ones, through a running yurthub."""

    timeout = 60

    async def test_list_get_watch_filtered_live_and_cached(self) -> None:
        cloud = await _cloud(self)
        hub = await start_hub(self, [cloud.url])
        proxy = f"http://127.0.0.1:{hub.port_of('listen.proxy')}"

        code, headers, body = await fetch(self, b"GET", proxy + "/api/v1/services", KUBE_PROXY)
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        names = [i["metadata"]["name"] for i in json.loads(body)["items"]]
        self.assertIn("web", names)
        self.assertNotIn("lb", names)
        # kubelet is not filtered by discardcloudservice: it sees the service
        _, _, body = await fetch(self, b"GET", proxy + "/api/v1/services", KUBELET)
        self.assertIn("lb", [i["metadata"]["name"] for i in json.loads(body)["items"]])

        code, _, body = await fetch(self, b"GET", proxy + "/api/v1/namespaces/default/services/lb", KUBE_PROXY)
        self.assertEqual((code, json.loads(body)["reason"]), (404, "NotFound"))

        cached = await _wait_cached(hub, "kube-proxy", SERVICES, lambda n: "web" in n)
        self.assertIn("web", cached)
        self.assertNotIn("lb", cached)

        # watch: an object turning discardable arrives as DELETED
        client = await raw_connect(self, hub.port_of("listen.proxy"))
        client.transport.write(  # type: ignore[union-attr]
            b"GET /api/v1/services?watch=1&resourceVersion=" + str(cloud.resource_version).encode()
            + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: kube-proxy/v1.31.0\r\nAccept: application/json\r\n\r\n"
        )
        await client.wait_for(lambda r: b"\r\n\r\n" in r)
        cloud.patch("services", "default", "web", {"spec": {"type": "LoadBalancer"},
                                                   "metadata": {"annotations": {"svc.openyurt.io/discard": "true"}}})
        cloud.create(service("new"))
        received = await client.wait_for(lambda r: b'"new"' in r)
        events = _events(received)
        self.assertEqual([(e["type"], e["object"]["metadata"]["name"]) for e in events], [("DELETED", "web"), ("ADDED", "new")])
        cached = await _wait_cached(hub, "kube-proxy", SERVICES, lambda n: "web" not in n)
        self.assertEqual(cached, ["kubernetes", "new"] if "kubernetes" in cached else ["new"])

        # offline: the cached answers go through the chain too
        cloud.create(service("late-lb", type_="LoadBalancer", **{"svc.openyurt.io/discard": "true"}))
        await cloud.stop_listening()
        for _ in range(100):
            if not any(b.healthy for b in hub.backends):
                break
            await sleep(0.05)
        # a cached copy that predates the filter (written by an older yurthub) is filtered on the way out
        lb = service("old-lb", type_="LoadBalancer", **{"svc.openyurt.io/discard": "true"})
        lb["metadata"]["resourceVersion"] = "1"
        hub.store.put(hub.cache.key("kube-proxy", SERVICES, lb), "1", json.dumps(lb).encode())
        code, _, body = await fetch(self, b"GET", proxy + "/api/v1/services", KUBE_PROXY)
        self.assertEqual(code, 200)
        self.assertNotIn("old-lb", [i["metadata"]["name"] for i in json.loads(body)["items"]])
        code, _, _ = await fetch(self, b"GET", proxy + "/api/v1/namespaces/default/services/old-lb", KUBE_PROXY)
        self.assertEqual(code, 404)

    async def test_protobuf_only_clients_of_filtered_requests_are_refused(self) -> None:
        cloud = await _cloud(self)
        hub = await start_hub(self, [cloud.url])
        proxy = f"http://127.0.0.1:{hub.port_of('listen.proxy')}"
        headers = {b"user-agent": [b"kube-proxy/v1"], b"accept": [b"application/vnd.kubernetes.protobuf"]}
        code, _, body = await fetch(self, b"GET", proxy + "/api/v1/services", headers)
        self.assertEqual(code, 406)
        self.assertIn(b"NotAcceptable", body)  # a protobuf Status, as the client accepts

    async def test_servicetopology_with_the_pool_from_the_cloud(self) -> None:
        cloud = await _cloud(self)
        for name, pool in (("edge-1", "p1"), ("edge-2", "p1"), ("edge-3", "p2")):
            cloud.create(node(name, pool))
        cloud.create(service("topo", **{"openyurt.io/topologyKeys": "openyurt.io/nodepool"}))
        cloud.create(slice_of("topo", "edge-1", "edge-2", "edge-3"))
        hub = await start_hub(self, [cloud.url])
        proxy = f"http://127.0.0.1:{hub.port_of('listen.proxy')}"
        await fetch(self, b"GET", proxy + "/api/v1/services", KUBE_PROXY)
        await _wait_cached(hub, "kube-proxy", SERVICES, lambda n: "topo" in n)
        # the first pool look-up starts the list of the cluster's pooled nodes
        await fetch(self, b"GET", proxy + "/apis/discovery.k8s.io/v1/endpointslices", KUBE_PROXY)
        await _wait_cached(hub, "yurthub", GVR("", "v1", "nodes"), lambda n: len(n) == 3)
        code, _, body = await fetch(self, b"GET", proxy + "/apis/discovery.k8s.io/v1/endpointslices", KUBE_PROXY)
        self.assertEqual(code, 200)
        (item,) = [i for i in json.loads(body)["items"] if i["metadata"]["name"] == "topo-abc"]
        self.assertEqual(sorted(e["nodeName"] for e in item["endpoints"]), ["edge-1", "edge-2"])

    async def test_unfiltered_requests_stream_as_before(self) -> None:
        cloud = await _cloud(self)
        hub = await start_hub(self, [cloud.url])
        proxy = f"http://127.0.0.1:{hub.port_of('listen.proxy')}"
        _, _, direct = await fetch(self, b"GET", cloud.url + "/api/v1/services", {b"accept": [b"application/json"]})
        _, _, body = await fetch(self, b"GET", proxy + "/api/v1/services", {b"user-agent": [b"kubectl/v1"], b"accept": [b"application/json"]})
        self.assertEqual(body, direct)  # byte for byte: nothing decoded or re-encoded


def _events(raw: bytes) -> list[dict[str, Any]]:
    body = raw.split(b"\r\n\r\n", 1)[1]
    out = []
    # chunked encoding: take the JSON lines between chunk sizes
    for line in body.split(b"\r\n"):
        line = line.strip()
        for part in line.split(b"\n"):
            if part.startswith(b"{"):
                out.append(json.loads(part))
    return out
