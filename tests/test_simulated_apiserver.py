"""Tests for yurthub.testing: the simulated kube-apiserver that the rest of the suite leans on.

Most tests drive the server in memory: a real twisted.web HTTP channel from the server's
own protocol factory over a `StringTransport`, with a `MemoryReactorClock` for time.
Integration tests use real 127.0.0.1 sockets (TLS, fault controls, upgrades), and the
end-to-end ones run the real kubectl and the official Python client against it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, protocol, reactor, utils
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from yurthub.kube.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from yurthub.kube.selectors import FieldSelector, LabelSelector, SelectorError
from yurthub.kube.tables import human_duration
from yurthub.testing import SimulatedAPIServer, TestPKI, make_pod, seed_pods
from yurthub.testing.exec import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameDecoder,
    encode_frame,
    websocket_accept,
)
from yurthub.testing.objects import StatusError

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"

# A fixed "now" so that ages and timestamps are predictable.
START = 1_700_000_000.0


# -- in-memory HTTP -------------------------------------------------------------


class Response:
    """A parsed HTTP response; ``body`` is what arrived so far (chunks decoded)."""

    def __init__(self, raw: bytes) -> None:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.code = int(lines[0].split()[1])
        self.headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())
        self.complete = False
        if self.header("transfer-encoding") == "chunked":
            self.body = b""
            while True:
                size_line, sep, after = rest.partition(b"\r\n")
                if not sep:
                    break
                size = int(size_line, 16)
                if size == 0:
                    self.complete = True
                    break
                if len(after) < size + 2:
                    break
                self.body += after[:size]
                rest = after[size + 2:]
        else:
            length = self.header("content-length")
            self.body = rest[: int(length)] if length is not None else rest
            self.complete = length is not None and len(rest) >= int(length)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


class AbortableTransport(StringTransport):
    """A StringTransport whose abort tells the protocol the connection is gone, as TCP does."""

    owner: protocol.Protocol | None = None

    def abortConnection(self) -> None:  # noqa: N802
        if not self.disconnecting:
            super().abortConnection()
            if self.owner is not None:
                self.owner.connectionLost(protocol.connectionDone)


class Wire:
    """One in-memory client connection to the server's own HTTP factory."""

    def __init__(self, server: SimulatedAPIServer) -> None:
        self.protocol = server.protocol_factory().buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000)
        )
        assert self.protocol is not None
        self.transport = AbortableTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport.owner = self.protocol
        self.protocol.makeConnection(self.transport)

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        self.protocol.dataReceived(raw)

    def response(self) -> Response:
        return Response(self.transport.value())

    def disconnect(self) -> None:
        self.protocol.connectionLost(protocol.connectionDone)


def call(server: SimulatedAPIServer, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> Response:
    """Send one request and return the response as it stands."""
    wire = Wire(server)
    raw = None
    headers = dict(headers or {})
    if body is not None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    wire.send(method, path, raw, headers)
    return wire.response()


def pod_body(name: str, labels: dict[str, str] | None = None, node: str = "edge-1",
             namespace: str | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running"},
    }
    if namespace:
        pod["metadata"]["namespace"] = namespace
    return pod


class ServerTestCase(SynchronousTestCase):
    """A fresh seeded server on a memory reactor whose clock starts at START."""

    seed = True

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(START)
        self.server = SimulatedAPIServer(self.clock, seed=self.seed)

    def assertStatus(self, response: Response, code: int, reason: str) -> dict[str, Any]:  # noqa: N802
        self.assertEqual(response.code, code, response.body)
        self.assertEqual(response.header("content-type"), "application/json")
        status = response.json()
        self.assertEqual(
            {k: status[k] for k in ("kind", "apiVersion", "metadata", "status", "reason", "code")},
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
             "reason": reason, "code": code},
        )
        self.assertTrue(status["message"])
        return dict(status)


# -- discovery -------------------------------------------------------------------


class DiscoveryTests(ServerTestCase):
    def test_version_reports_kubernetes_version(self) -> None:
        response = call(self.server, "GET", "/version")
        self.assertEqual(response.code, 200)
        info = response.json()
        self.assertEqual((info["major"], info["minor"], info["gitVersion"]), ("1", "31", "v1.31.0"))

    def test_core_discovery_lists_resources_with_verbs_and_scope(self) -> None:
        versions = call(self.server, "GET", "/api").json()
        self.assertEqual((versions["kind"], versions["versions"]), ("APIVersions", ["v1"]))
        resources = {r["name"]: r for r in call(self.server, "GET", "/api/v1").json()["resources"]}
        pods = resources["pods"]
        self.assertEqual((pods["kind"], pods["namespaced"], pods["singularName"]),
                         ("Pod", True, "pod"))
        self.assertIn("watch", pods["verbs"])
        self.assertEqual(pods["shortNames"], ["po"])
        self.assertFalse(resources["nodes"]["namespaced"])
        self.assertFalse(resources["namespaces"]["namespaced"])
        for sub in ("pods/status", "pods/log", "pods/exec", "nodes/status",
                    "services/status", "serviceaccounts/token"):
            self.assertIn(sub, resources)
        self.assertEqual(resources["serviceaccounts/token"]["kind"], "TokenRequest")

    def test_aggregated_discovery_request_gets_plain_documents_as_json(self) -> None:
        accept = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
                  "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
                  "application/json")
        response = call(self.server, "GET", "/apis", headers={"Accept": accept})
        self.assertEqual(response.header("content-type"), "application/json")
        groups = {g["name"]: g for g in response.json()["groups"]}
        self.assertEqual(set(groups), {"discovery.k8s.io", "coordination.k8s.io",
                                       "certificates.k8s.io"})
        self.assertEqual(groups["coordination.k8s.io"]["preferredVersion"]["groupVersion"],
                         "coordination.k8s.io/v1")
        api = call(self.server, "GET", "/api", headers={"Accept": accept})
        self.assertEqual(api.json()["kind"], "APIVersions")

    def test_group_version_discovery(self) -> None:
        listing = call(self.server, "GET", "/apis/coordination.k8s.io/v1").json()
        self.assertEqual(listing["groupVersion"], "coordination.k8s.io/v1")
        self.assertEqual([r["name"] for r in listing["resources"]], ["leases"])
        group = call(self.server, "GET", "/apis/discovery.k8s.io").json()
        self.assertEqual(group["kind"], "APIGroup")
        self.assertStatus(call(self.server, "GET", "/apis/apps/v1"), 404, "NotFound")

    def test_health_endpoints_answer_ok_until_made_unhealthy(self) -> None:
        for path in ("/healthz", "/readyz", "/livez", "/readyz?verbose"):
            response = call(self.server, "GET", path)
            self.assertEqual((response.code, response.body), (200, b"ok"))
        self.server.set_healthy(False)
        self.assertEqual(call(self.server, "GET", "/readyz").code, 500)

    def test_unknown_paths_are_status_404(self) -> None:
        self.assertStatus(call(self.server, "GET", "/nope"), 404, "NotFound")
        self.assertStatus(call(self.server, "GET", "/api/v1/widgets"), 404, "NotFound")
        self.assertStatus(call(self.server, "GET", "/api/v2/pods"), 404, "NotFound")

    def test_openapi_v3_advertises_server_side_field_validation(self) -> None:
        index = call(self.server, "GET", "/openapi/v3").json()
        url = index["paths"]["api/v1"]["serverRelativeURL"]
        document = call(self.server, "GET", url).json()
        patch = document["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"]
        self.assertEqual(patch["x-kubernetes-group-version-kind"]["kind"], "ConfigMap")
        self.assertIn("fieldValidation", [p["name"] for p in patch["parameters"]])
        self.assertEqual(call(self.server, "GET", "/openapi/v2").code, 404)


# -- CRUD ---------------------------------------------------------------------------


class CreateTests(ServerTestCase):
    def test_create_fills_in_server_side_metadata(self) -> None:
        before = self.server.resource_version
        response = call(self.server, "POST", "/api/v1/namespaces/default/pods", pod_body("new"))
        self.assertEqual(response.code, 201)
        metadata = response.json()["metadata"]
        self.assertEqual(metadata["namespace"], "default")
        self.assertEqual(int(metadata["resourceVersion"]), before + 1)
        self.assertEqual(metadata["creationTimestamp"], "2023-11-14T22:13:20Z")
        self.assertEqual(len(metadata["uid"]), 36)
        self.assertEqual(self.server.resource_version, before + 1)

    def test_generate_name_appends_five_characters(self) -> None:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "cfg-"}}
        name = call(self.server, "POST", "/api/v1/namespaces/default/configmaps",
                    body).json()["metadata"]["name"]
        self.assertTrue(name.startswith("cfg-"))
        self.assertEqual(len(name), 9)

    def test_duplicate_create_is_already_exists(self) -> None:
        status = self.assertStatus(
            call(self.server, "POST", "/api/v1/namespaces/default/pods", pod_body("web-1")),
            409, "AlreadyExists")
        self.assertEqual(status["message"], 'pods "web-1" already exists')
        self.assertEqual(status["details"], {"name": "web-1", "kind": "pods"})

    def test_bad_bodies_are_rejected(self) -> None:
        self.assertStatus(call(self.server, "POST", "/api/v1/namespaces/default/pods", b"{nope"),
                          400, "BadRequest")
        self.assertStatus(
            call(self.server, "POST", "/api/v1/namespaces/default/pods",
                 pod_body("x", namespace="other")), 400, "BadRequest")
        self.assertStatus(
            call(self.server, "POST", "/api/v1/namespaces/default/pods", b"\x0a\x02k8s",
                 headers={"Content-Type": "application/vnd.kubernetes.protobuf"}),
            415, "UnsupportedMediaType")
        self.assertStatus(
            call(self.server, "POST", "/api/v1/namespaces/default/configmaps",
                 {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}), 422, "Invalid")
        self.assertStatus(
            call(self.server, "POST", "/api/v1/namespaces/default/configmaps",
                 {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}),
            400, "BadRequest")

    def test_yaml_bodies_are_accepted(self) -> None:
        body = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n"
        response = call(self.server, "POST", "/api/v1/namespaces/default/configmaps", body,
                        headers={"Content-Type": "application/yaml"})
        self.assertEqual(response.code, 201)
        self.assertEqual(self.server.get("configmaps", "default", "from-yaml")["data"],  # type: ignore[index]
                         {"k": "v"})

    def test_missing_namespace_is_404_when_required(self) -> None:
        self.server.require_namespaces = True
        self.assertStatus(call(self.server, "POST", "/api/v1/namespaces/ghost/pods",
                               pod_body("p")), 404, "NotFound")

    def test_services_get_a_cluster_ip(self) -> None:
        body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"},
                "spec": {"ports": [{"port": 80}]}}
        spec = call(self.server, "POST", "/api/v1/namespaces/default/services",
                    body).json()["spec"]
        self.assertTrue(spec["clusterIP"].startswith("10.96."))
        self.assertEqual(spec["type"], "ClusterIP")


class ReadTests(ServerTestCase):
    def test_get_returns_the_object_with_kind(self) -> None:
        response = call(self.server, "GET", "/api/v1/namespaces/default/pods/web-1")
        self.assertEqual(response.code, 200)
        pod = response.json()
        self.assertEqual((pod["kind"], pod["apiVersion"], pod["metadata"]["name"]),
                         ("Pod", "v1", "web-1"))

    def test_get_missing_is_not_found_status(self) -> None:
        status = self.assertStatus(call(self.server, "GET", "/api/v1/namespaces/default/pods/x"),
                                   404, "NotFound")
        self.assertEqual(status["message"], 'pods "x" not found')
        lease = self.assertStatus(
            call(self.server, "GET", "/apis/coordination.k8s.io/v1/namespaces/a/leases/b"),
            404, "NotFound")
        self.assertEqual(lease["message"], 'leases.coordination.k8s.io "b" not found')

    def test_list_has_resource_version_and_items_without_kind(self) -> None:
        listing = call(self.server, "GET", "/api/v1/namespaces/default/pods").json()
        self.assertEqual((listing["kind"], listing["apiVersion"]), ("PodList", "v1"))
        self.assertEqual(listing["metadata"]["resourceVersion"],
                         str(self.server.resource_version))
        self.assertEqual([p["metadata"]["name"] for p in listing["items"]],
                         ["db-1", "web-1", "web-2"])
        self.assertNotIn("kind", listing["items"][0])

    def test_list_across_namespaces_is_sorted_by_namespace_and_name(self) -> None:
        items = call(self.server, "GET", "/api/v1/pods").json()["items"]
        keys = [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in items]
        self.assertEqual(keys, sorted(keys))
        self.assertEqual(len(keys), 8)

    def test_cluster_scoped_resources(self) -> None:
        nodes = call(self.server, "GET", "/api/v1/nodes").json()["items"]
        self.assertEqual([n["metadata"]["name"] for n in nodes], ["edge-1", "edge-2"])
        self.assertNotIn("namespace", nodes[0]["metadata"])
        self.assertEqual(call(self.server, "GET", "/api/v1/namespaces/kube-system").code, 200)
        self.assertStatus(call(self.server, "GET", "/api/v1/namespaces/default/nodes"),
                          404, "NotFound")

    def test_protobuf_only_accept_is_answered_with_json(self) -> None:
        response = call(self.server, "GET", "/api/v1/nodes/edge-1",
                        headers={"Accept": "application/vnd.kubernetes.protobuf"})
        self.assertEqual(response.header("content-type"), "application/json")
        self.assertEqual(response.json()["kind"], "Node")

    def test_partial_object_metadata(self) -> None:
        accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        listing = call(self.server, "GET", "/api/v1/nodes", headers={"Accept": accept}).json()
        self.assertEqual(listing["kind"], "PartialObjectMetadataList")
        self.assertEqual(set(listing["items"][0]), {"kind", "apiVersion", "metadata"})

    def test_wrong_method_is_405(self) -> None:
        self.assertStatus(call(self.server, "POST", "/api/v1/namespaces/default/pods/web-1",
                               pod_body("web-1")), 405, "MethodNotAllowed")
        self.assertStatus(call(self.server, "PUT", "/api/v1/namespaces/default/pods", {}),
                          405, "MethodNotAllowed")


class PaginationTests(ServerTestCase):
    seed = False

    def test_limit_and_continue_walk_every_item_once(self) -> None:
        seed_pods(self.server, 7)
        seen: list[str] = []
        path = "/api/v1/namespaces/default/pods?limit=3"
        pages = 0
        while True:
            listing = call(self.server, "GET", path).json()
            pages += 1
            seen += [p["metadata"]["name"] for p in listing["items"]]
            token = listing["metadata"].get("continue")
            if not token:
                break
            self.assertEqual(listing["metadata"]["remainingItemCount"], 7 - len(seen))
            path = f"/api/v1/namespaces/default/pods?limit=3&continue={token}"
        self.assertEqual(pages, 3)
        self.assertEqual(seen, sorted(f"bench-{n}" for n in range(7)))

    def test_resource_version_zero_ignores_limit_as_the_watch_cache_does(self) -> None:
        seed_pods(self.server, 4)
        listing = call(self.server, "GET", "/api/v1/pods?limit=2&resourceVersion=0").json()
        self.assertEqual(len(listing["items"]), 4)
        self.assertNotIn("continue", listing["metadata"])

    def test_garbage_continue_token_is_bad_request(self) -> None:
        self.assertStatus(call(self.server, "GET", "/api/v1/pods?continue=%%%"), 400,
                          "BadRequest")


class UpdateTests(ServerTestCase):
    def current(self, name: str = "web-1") -> dict[str, Any]:
        pod = self.server.get("pods", "default", name)
        assert pod is not None
        return pod

    def test_update_bumps_resource_version_and_keeps_identity(self) -> None:
        pod = self.current()
        pod["metadata"]["labels"]["new"] = "yes"
        pod["metadata"]["uid"] = "forged"
        response = call(self.server, "PUT", "/api/v1/namespaces/default/pods/web-1", pod)
        self.assertEqual(response.code, 200)
        updated = response.json()
        self.assertEqual(updated["metadata"]["labels"]["new"], "yes")
        self.assertEqual(updated["metadata"]["uid"], self.current()["metadata"]["uid"])
        self.assertNotEqual(updated["metadata"]["uid"], "forged")
        self.assertGreater(int(updated["metadata"]["resourceVersion"]),
                           int(pod["metadata"]["resourceVersion"]))

    def test_stale_resource_version_is_conflict(self) -> None:
        pod = self.current()
        call(self.server, "PUT", "/api/v1/namespaces/default/pods/web-1", pod)
        pod["metadata"]["labels"]["again"] = "x"
        call(self.server, "PUT", "/api/v1/namespaces/default/pods/web-1", pod)  # moves on
        pod["metadata"]["labels"]["third"] = "x"
        status = self.assertStatus(
            call(self.server, "PUT", "/api/v1/namespaces/default/pods/web-1", pod),
            409, "Conflict")
        self.assertIn("the object has been modified", status["message"])

    def test_update_of_missing_object_is_not_found(self) -> None:
        self.assertStatus(call(self.server, "PUT", "/api/v1/namespaces/default/pods/ghost",
                               pod_body("ghost")), 404, "NotFound")

    def test_name_mismatch_is_bad_request(self) -> None:
        self.assertStatus(call(self.server, "PUT", "/api/v1/namespaces/default/pods/web-1",
                               pod_body("web-2")), 400, "BadRequest")

    def test_status_goes_through_the_status_subresource_only(self) -> None:
        pod = self.current()
        pod["status"]["phase"] = "Failed"
        pod["metadata"]["labels"]["l"] = "v"
        main = call(self.server, "PUT", "/api/v1/namespaces/default/pods/web-1", pod).json()
        self.assertEqual(main["status"]["phase"], "Running")
        self.assertEqual(main["metadata"]["labels"]["l"], "v")
        pod = self.current()
        pod["status"]["phase"] = "Succeeded"
        pod["metadata"]["labels"]["ignored"] = "v"
        sub = call(self.server, "PUT", "/api/v1/namespaces/default/pods/web-1/status", pod).json()
        self.assertEqual(sub["status"]["phase"], "Succeeded")
        self.assertNotIn("ignored", sub["metadata"]["labels"])

    def test_unchanged_update_keeps_the_resource_version(self) -> None:
        pod = self.current()
        before = self.server.resource_version
        updated = call(self.server, "PUT", "/api/v1/namespaces/default/pods/web-1", pod).json()
        self.assertEqual(updated["metadata"]["resourceVersion"], pod["metadata"]["resourceVersion"])
        self.assertEqual(self.server.resource_version, before)

    def test_node_status_patch(self) -> None:
        patch = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
        node = call(self.server, "PATCH", "/api/v1/nodes/edge-1/status", patch,
                    headers={"Content-Type": "application/strategic-merge-patch+json"}).json()
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        self.assertEqual(conditions["Ready"], "False")
        self.assertEqual(conditions["MemoryPressure"], "False")  # merged by type, not replaced


class DeleteTests(ServerTestCase):
    def test_deleting_a_pod_returns_it(self) -> None:
        response = call(self.server, "DELETE", "/api/v1/namespaces/default/pods/web-1")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json()["kind"], "Pod")
        self.assertIsNone(self.server.get("pods", "default", "web-1"))
        self.assertStatus(call(self.server, "DELETE", "/api/v1/namespaces/default/pods/web-1"),
                          404, "NotFound")

    def test_deleting_other_objects_returns_success_status(self) -> None:
        status = call(self.server, "DELETE", "/api/v1/namespaces/default/secrets/db-credentials")
        body = status.json()
        self.assertEqual((status.code, body["kind"], body["status"]), (200, "Status", "Success"))
        self.assertEqual(body["details"]["name"], "db-credentials")

    def test_uid_precondition(self) -> None:
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "x"}}
        self.assertStatus(call(self.server, "DELETE", "/api/v1/namespaces/default/pods/web-1",
                               options), 409, "Conflict")

    def test_delete_collection_honours_selectors(self) -> None:
        response = call(self.server, "DELETE", "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb")
        self.assertEqual([p["metadata"]["name"] for p in response.json()["items"]],
                         ["web-1", "web-2"])
        self.assertEqual([p["metadata"]["name"] for p in self.server.list("pods", "default")],
                         ["db-1"])

    def test_deleting_a_namespace_empties_it(self) -> None:
        call(self.server, "DELETE", "/api/v1/namespaces/demo")
        self.assertEqual(self.server.list("pods", "demo"), [])
        self.assertEqual(self.server.list("configmaps", "demo"), [])
        self.assertEqual(len(self.server.list("pods", "default")), 3)


class DirectAccessTests(ServerTestCase):
    seed = False

    def test_direct_calls_round_trip_and_copy(self) -> None:
        created = self.server.create(pod_body("direct"))
        self.assertEqual(created["metadata"]["namespace"], "default")
        created["metadata"]["labels"]["mutated"] = "locally"
        fetched = self.server.get("pods", "default", "direct")
        assert fetched is not None
        self.assertNotIn("mutated", fetched["metadata"]["labels"])
        fetched["status"]["phase"] = "Succeeded"
        self.assertEqual(self.server.update(fetched)["status"]["phase"], "Succeeded")
        patched = self.server.patch("pods", "default", "direct", {"metadata": {"labels": {"p": "1"}}})
        self.assertEqual(patched["metadata"]["labels"], {"p": "1"})
        self.assertEqual(self.server.delete("pod", "default", "direct")["metadata"]["name"],  # type: ignore[index]
                         "direct")
        self.assertIsNone(self.server.delete("pods", "default", "direct"))
        self.assertIsNone(self.server.get("pods", "default", "direct"))

    def test_group_is_found_from_the_resource_name(self) -> None:
        self.server.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                            "metadata": {"name": "l", "namespace": "kube-node-lease"}})
        self.assertIsNotNone(self.server.get("leases", "kube-node-lease", "l"))
        self.assertIsNotNone(self.server.get("leases", "kube-node-lease", "l",
                                             group="coordination.k8s.io", version="v1"))
        with self.assertRaises(KeyError):
            self.server.get("leases", "kube-node-lease", "l", group="")

    def test_conflicts_raise_status_errors(self) -> None:
        self.server.create(pod_body("p"))
        with self.assertRaises(StatusError) as caught:
            self.server.create(pod_body("p"))
        self.assertEqual(caught.exception.code, 409)
        with self.assertRaises(StatusError):
            self.server.update(pod_body("ghost"))

    def test_unknown_kind_is_a_value_error(self) -> None:
        with self.assertRaises(ValueError):
            self.server.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {}})

    def test_request_log_is_bounded(self) -> None:
        for _ in range(11_001):
            self.server._record(_FakeRequest())  # type: ignore[arg-type]
        self.assertLessEqual(len(self.server.requests), 11_000)
        self.assertGreaterEqual(len(self.server.requests), 10_000)


class _FakeRequest:
    """Just enough of a request for the request log."""

    method = b"GET"
    uri = b"/api"
    content = None
    channel = None

    class requestHeaders:  # noqa: N801
        @staticmethod
        def getAllRawHeaders() -> list[tuple[bytes, list[bytes]]]:  # noqa: N802
            return []

    @staticmethod
    def getHeader(name: str) -> None:  # noqa: N802
        return None


# -- subresources ---------------------------------------------------------------------


class SubresourceTests(ServerTestCase):
    def test_token_request_returns_a_token(self) -> None:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": ["api"], "expirationSeconds": 600}}
        response = call(self.server, "POST", "/api/v1/namespaces/default/serviceaccounts/default/token",
                        body)
        self.assertEqual(response.code, 201)
        status = response.json()["status"]
        self.assertEqual(status["token"].count("."), 2)
        claims = json.loads(base64.urlsafe_b64decode(status["token"].split(".")[1] + "=="))
        self.assertEqual(claims["sub"], "system:serviceaccount:default:default")
        self.assertEqual(status["expirationTimestamp"], "2023-11-14T22:23:20Z")
        self.assertStatus(call(self.server, "POST",
                               "/api/v1/namespaces/default/serviceaccounts/nobody/token", body),
                          404, "NotFound")

    def test_pod_log_is_plain_text(self) -> None:
        response = call(self.server, "GET", "/api/v1/namespaces/default/pods/web-1/log")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"), "text/plain")
        self.assertEqual(len(response.body.splitlines()), 5)
        tail = call(self.server, "GET", "/api/v1/namespaces/default/pods/web-1/log?tailLines=2")
        self.assertEqual(len(tail.body.splitlines()), 2)
        self.assertStatus(
            call(self.server, "GET", "/api/v1/namespaces/default/pods/web-1/log?container=x"),
            400, "BadRequest")

    def test_followed_log_writes_a_line_per_interval_until_the_client_leaves(self) -> None:
        wire = Wire(self.server)
        wire.send("GET", "/api/v1/namespaces/default/pods/web-1/log?follow=true")
        self.assertEqual(len(wire.response().body.splitlines()), 5)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(len(wire.response().body.splitlines()), 7)
        self.assertEqual(self.server.open_streams, 1)
        wire.disconnect()
        self.assertEqual(self.server.open_streams, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_followed_log_ends_when_the_pod_goes(self) -> None:
        wire = Wire(self.server)
        wire.send("GET", "/api/v1/namespaces/default/pods/web-1/log?follow=true")
        self.server.delete("pods", "default", "web-1")
        self.clock.advance(1)
        self.assertTrue(wire.response().complete)

    def test_exec_without_upgrade_is_bad_request(self) -> None:
        self.assertStatus(
            call(self.server, "POST",
                 "/api/v1/namespaces/default/pods/web-1/exec?command=ls&stdout=true"),
            400, "BadRequest")
        self.assertStatus(
            call(self.server, "GET",
                 "/api/v1/namespaces/demo/pods/pending-1/exec?command=ls&stdout=true"),
            400, "BadRequest")

    def test_csr_can_be_signed(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        pki = TestPKI()
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([
                   x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                   x509.NameAttribute(NameOID.COMMON_NAME, "system:node:edge-1")]))
               .sign(key, hashes.SHA256()))
        body = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"generateName": "csr-"},
                "spec": {"request": base64.b64encode(csr.public_bytes(
                    serialization.Encoding.PEM)).decode(),
                         "signerName": "kubernetes.io/kube-apiserver-client",
                         "usages": ["digital signature", "client auth"],
                         "expirationSeconds": 3600}}
        created = call(self.server, "POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests",
                       body).json()
        signed = self.server.sign_csr(created["metadata"]["name"], pki=pki)
        cert = x509.load_pem_x509_certificate(base64.b64decode(signed["status"]["certificate"]))
        self.assertEqual(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
                         "system:node:edge-1")
        self.assertEqual(signed["status"]["conditions"][0]["type"], "Approved")


class BootstrapTests(ServerTestCase):
    seed = False

    def test_cluster_info_is_signed_with_the_token(self) -> None:
        import hashlib
        import hmac

        import yaml

        self.server.tls = TestPKI()
        info = self.server.add_bootstrap_token("abcdef.0123456789abcdef",
                                               server_url="https://127.0.0.1:6443")
        kubeconfig = info["data"]["kubeconfig"]
        cluster = yaml.safe_load(kubeconfig)["clusters"][0]["cluster"]
        self.assertEqual(cluster["server"], "https://127.0.0.1:6443")
        self.assertEqual(base64.b64decode(cluster["certificate-authority-data"]),
                         self.server.tls.ca_cert_pem)
        header, empty, signature = info["data"]["jws-kubeconfig-abcdef"].split(".")
        self.assertEqual(empty, "")
        payload = base64.urlsafe_b64encode(kubeconfig.encode()).decode().rstrip("=")
        expected = hmac.new(b"0123456789abcdef", f"{header}.{payload}".encode(),
                            hashlib.sha256).digest()
        self.assertEqual(base64.urlsafe_b64decode(signature + "=="), expected)
        secret = self.server.get("secrets", "kube-system", "bootstrap-token-abcdef")
        assert secret is not None
        self.assertEqual(base64.b64decode(secret["data"]["token-secret"]), b"0123456789abcdef")
        again = self.server.add_bootstrap_token("ghijkl.0123456789abcdef",
                                                server_url="https://127.0.0.1:6443")
        self.assertEqual(sorted(again["data"]),
                         ["jws-kubeconfig-abcdef", "jws-kubeconfig-ghijkl", "kubeconfig"])
        with self.assertRaises(ValueError):
            self.server.add_bootstrap_token("short")

    def test_csrs_can_be_approved_automatically(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.server.tls = TestPKI()
        self.server.csr_auto_approve = True
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n")]))
               .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
        request = base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode()
        self.server.create({"apiVersion": "certificates.k8s.io/v1",
                            "kind": "CertificateSigningRequest", "metadata": {"name": "auto"},
                            "spec": {"request": request,
                                     "signerName": "kubernetes.io/kube-apiserver-client",
                                     "usages": ["client auth"]}})
        signed = self.server.get("certificatesigningrequests", None, "auto")
        assert signed is not None
        self.assertTrue(signed["status"]["certificate"])


# -- selectors --------------------------------------------------------------------------


class LabelSelectorTests(SynchronousTestCase):
    labels = {"app": "web", "tier": "frontend", "n": "5"}

    def test_operators(self) -> None:
        cases = {
            "app=web": True, "app==web": True, "app!=web": False, "app!=db": True,
            "app in (web,db)": True, "app in (db)": False, "app notin (db, cache)": True,
            "app notin (web)": False, "tier": True, "missing": False, "!missing": True,
            "!app": False, "missing!=x": True, "n>3": True, "n<3": False,
            "app=web,tier=frontend": True, "app=web,tier=backend": False, "": True,
            "example.com/role notin (a)": True,
        }
        for text, expected in cases.items():
            self.assertEqual(LabelSelector.parse(text).matches(self.labels), expected, text)

    def test_parse_errors(self) -> None:
        for text in ("app in web", "a=b=c", "app in ()", "app in (a", "=x", "a,,b", "n>x"):
            with self.assertRaises(SelectorError, msg=text):
                LabelSelector.parse(text)

    @given(st.dictionaries(st.sampled_from("abc"), st.sampled_from(["x", "y", "z"])),
           st.sampled_from("abc"), st.sets(st.sampled_from(["x", "y", "z"]), min_size=1))
    def test_in_and_notin_partition_objects(self, labels: dict[str, str], key: str,
                                            values: set[str]) -> None:
        text = ",".join(sorted(values))
        within = LabelSelector.parse(f"{key} in ({text})").matches(labels)
        outside = LabelSelector.parse(f"{key} notin ({text})").matches(labels)
        self.assertNotEqual(within, outside)
        self.assertEqual(within, labels.get(key) in values)


class FieldSelectorTests(ServerTestCase):
    def names(self, query: str) -> list[str]:
        response = call(self.server, "GET", "/api/v1/pods?" + query)
        self.assertEqual(response.code, 200, response.body)
        return [p["metadata"]["name"] for p in response.json()["items"]]

    def test_supported_fields(self) -> None:
        self.assertEqual(self.names("fieldSelector=spec.nodeName%3Dedge-2"), ["web-2", "kube-proxy-e2"])
        self.assertEqual(self.names("fieldSelector=metadata.name%3D%3Dweb-1"), ["web-1"])
        self.assertEqual(self.names("fieldSelector=status.phase!%3DRunning"), ["pending-1"])
        self.assertEqual(
            self.names("fieldSelector=metadata.namespace%3Ddefault,spec.nodeName%3Dedge-1"),
            ["db-1", "web-1"])
        self.assertEqual(self.names("labelSelector=app%3Dweb&fieldSelector=spec.nodeName%3Dedge-1"),
                         ["web-1", "web-3"])

    def test_unknown_field_is_bad_request(self) -> None:
        status = self.assertStatus(call(self.server, "GET", "/api/v1/pods?fieldSelector=spec.foo%3Dx"),
                                   400, "BadRequest")
        self.assertIn("spec.foo", status["message"])
        self.assertStatus(call(self.server, "GET", "/api/v1/pods?labelSelector=a%20in%20b"),
                          400, "BadRequest")

    def test_escapes_and_missing_fields(self) -> None:
        selector = FieldSelector.parse(r"metadata.name=a\,b", {"metadata.name": "metadata.name"})
        self.assertTrue(selector.matches({"metadata": {"name": "a,b"}}))
        empty = FieldSelector.parse("spec.nodeName=", {"spec.nodeName": "spec.nodeName"})
        self.assertTrue(empty.matches({"spec": {}}))


# -- patches ----------------------------------------------------------------------------


class PatchFunctionTests(SynchronousTestCase):
    def test_merge_patch(self) -> None:
        target = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]}
        self.assertEqual(merge_patch(target, {"b": {"c": None, "e": 4}, "l": [3]}),
                         {"a": 1, "b": {"d": 3, "e": 4}, "l": [3]})
        self.assertEqual(target["b"], {"c": 2, "d": 3})

    def test_json_patch_operations(self) -> None:
        doc = {"a": {"b": [1, 2]}, "c": "x"}
        result = json_patch(doc, [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "add", "path": "/a/b/0", "value": 0},
            {"op": "replace", "path": "/c", "value": "y"},
            {"op": "copy", "from": "/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e"},
            {"op": "remove", "path": "/a/b/1"},
            {"op": "test", "path": "/e", "value": "y"},
            {"op": "add", "path": "/k~1v", "value": True},
        ])
        self.assertEqual(result, {"a": {"b": [0, 2, 3]}, "c": "y", "e": "y", "k/v": True})
        self.assertEqual(doc, {"a": {"b": [1, 2]}, "c": "x"})

    def test_json_patch_failures(self) -> None:
        with self.assertRaises(PatchError) as failed:
            json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])
        self.assertFalse(failed.exception.malformed)
        with self.assertRaises(PatchError):
            json_patch({"a": 1}, [{"op": "remove", "path": "/b"}])
        with self.assertRaises(PatchError) as malformed:
            json_patch({"a": 1}, {"op": "remove"})
        self.assertTrue(malformed.exception.malformed)

    def test_strategic_merge_patch_merges_lists_by_key(self) -> None:
        pod = {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}],
             "ports": [{"containerPort": 80}], "args": ["x"]},
            {"name": "b", "image": "b:1"},
        ]}, "status": {"conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "Initialized", "status": "True"}]}}
        patch = {
            "spec": {"containers": [
                {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}],
                 "ports": [{"containerPort": 81}], "args": ["y"]},
                {"name": "b", "$patch": "delete"},
                {"name": "c", "image": "c:1"},
            ], "$setElementOrder/containers": [{"name": "a"}, {"name": "c"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        }
        result = strategic_merge_patch(pod, patch)
        containers = result["spec"]["containers"]
        self.assertEqual([c["name"] for c in containers], ["a", "c"])
        self.assertEqual(containers[0]["image"], "a:2")
        self.assertEqual([e["name"] for e in containers[0]["env"]], ["X", "Y"])
        self.assertEqual([p["containerPort"] for p in containers[0]["ports"]], [80, 81])
        self.assertEqual(containers[0]["args"], ["y"])
        self.assertEqual(result["status"]["conditions"],
                         [{"type": "Ready", "status": "False"},
                          {"type": "Initialized", "status": "True"}])
        self.assertNotIn("$setElementOrder/containers", result["spec"])

    def test_strategic_directives(self) -> None:
        self.assertEqual(strategic_merge_patch({"a": {"x": 1}}, {"a": {"$patch": "replace", "y": 2}}),
                         {"a": {"y": 2}})
        self.assertEqual(strategic_merge_patch({"a": {"x": 1}, "b": 1}, {"a": {"$patch": "delete"}}),
                         {"b": 1})
        self.assertEqual(strategic_merge_patch({"metadata": {"finalizers": ["a"]}},
                                               {"metadata": {"finalizers": ["b"]}}),
                         {"metadata": {"finalizers": ["a", "b"]}})
        self.assertEqual(strategic_merge_patch(
            {"metadata": {"finalizers": ["a", "b"]}},
            {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            {"metadata": {"finalizers": ["b"]}})


class PatchEndpointTests(ServerTestCase):
    path = "/api/v1/namespaces/default/pods/web-1"

    def send_patch(self, content_type: str, body: Any) -> Response:
        return call(self.server, "PATCH", self.path, body, headers={"Content-Type": content_type})

    def test_each_patch_type(self) -> None:
        merged = self.send_patch("application/merge-patch+json", {"metadata": {"labels": {"m": "1"}}})
        self.assertEqual(merged.json()["metadata"]["labels"]["m"], "1")
        jsoned = self.send_patch("application/json-patch+json",
                            [{"op": "add", "path": "/metadata/labels/j", "value": "2"}])
        self.assertEqual(jsoned.json()["metadata"]["labels"]["j"], "2")
        strategic = self.send_patch("application/strategic-merge-patch+json",
                               {"spec": {"containers": [{"name": "main", "image": "new:1"}]}})
        containers = strategic.json()["spec"]["containers"]
        self.assertEqual((len(containers), containers[0]["image"]), (1, "new:1"))
        self.assertIn("ports", containers[0])

    def test_patch_errors(self) -> None:
        self.assertStatus(self.send_patch("application/apply-patch+yaml", b"kind: Pod"),
                          415, "UnsupportedMediaType")
        self.assertStatus(self.send_patch("application/json", {}), 415, "UnsupportedMediaType")
        self.assertStatus(self.send_patch("application/json-patch+json",
                                     [{"op": "test", "path": "/kind", "value": "Node"}]),
                          422, "Invalid")
        self.assertStatus(self.send_patch("application/merge-patch+json", b"[1"), 400, "BadRequest")
        self.assertStatus(
            call(self.server, "PATCH", "/api/v1/namespaces/default/pods/ghost", {},
                 headers={"Content-Type": "application/merge-patch+json"}), 404, "NotFound")

    def test_resource_version_in_a_patch_is_a_precondition(self) -> None:
        self.assertStatus(self.send_patch("application/merge-patch+json",
                                     {"metadata": {"resourceVersion": "1"}}), 409, "Conflict")

    def test_patch_cannot_rename(self) -> None:
        renamed = self.send_patch("application/merge-patch+json", {"metadata": {"name": "other"}})
        self.assertEqual(renamed.json()["metadata"]["name"], "web-1")


# -- tables -----------------------------------------------------------------------------

TABLE_ACCEPT = ("application/json;as=Table;v=v1;g=meta.k8s.io,"
                "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")


class TableTests(ServerTestCase):
    def table(self, path: str, accept: str = TABLE_ACCEPT) -> dict[str, Any]:
        response = call(self.server, "GET", path, headers={"Accept": accept})
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"), "application/json")
        return dict(response.json())

    def test_pod_table(self) -> None:
        self.clock.advance(300)
        table = self.table("/api/v1/namespaces/default/pods")
        self.assertEqual((table["kind"], table["apiVersion"]), ("Table", "meta.k8s.io/v1"))
        columns = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
        self.assertEqual(columns[:5], [("Name", 0), ("Ready", 0), ("Status", 0), ("Restarts", 0),
                                       ("Age", 0)])
        self.assertEqual(columns[5:7], [("IP", 1), ("Node", 1)])
        row = table["rows"][1]
        self.assertEqual(row["cells"][:5], ["web-1", "1/1", "Running", "0", "5m"])
        self.assertEqual(row["cells"][6], "edge-1")
        self.assertEqual(row["object"]["kind"], "PartialObjectMetadata")
        self.assertEqual(row["object"]["metadata"]["namespace"], "default")
        self.assertEqual(table["metadata"]["resourceVersion"], str(self.server.resource_version))

    def test_pending_pod_and_include_object(self) -> None:
        table = self.table("/api/v1/namespaces/demo/pods/pending-1?includeObject=Object")
        self.assertEqual(table["rows"][0]["cells"][1:3], ["0/1", "Pending"])
        self.assertEqual(table["rows"][0]["object"]["kind"], "Pod")
        none = self.table("/api/v1/namespaces/demo/pods?includeObject=None")
        self.assertNotIn("object", none["rows"][0])

    def test_node_table(self) -> None:
        node = self.server.get("nodes", None, "edge-2")
        assert node is not None
        node["metadata"]["labels"]["node-role.kubernetes.io/edge"] = ""
        node["spec"]["unschedulable"] = True
        self.server.update(node)
        rows = self.table("/api/v1/nodes")["rows"]
        self.assertEqual(rows[0]["cells"][:5], ["edge-1", "Ready", "<none>", "0s", "v1.31.0"])
        self.assertEqual(rows[1]["cells"][1:3], ["Ready,SchedulingDisabled", "edge"])

    def test_v1beta1_and_generic_tables(self) -> None:
        accept = "application/json;as=Table;v=v1beta1;g=meta.k8s.io"
        table = self.table("/apis/discovery.k8s.io/v1/endpointslices", accept)
        self.assertEqual(table["apiVersion"], "meta.k8s.io/v1beta1")
        generic = self.table("/api/v1/namespaces/default/services")
        self.assertEqual([c["name"] for c in generic["columnDefinitions"]][:5],
                         ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)"])

    def test_human_duration(self) -> None:
        cases = {0: "0s", 59: "59s", 119: "119s", 120: "2m", 150: "2m30s", 600: "10m",
                 3 * 3600: "3h", 3 * 3600 + 300: "3h5m", 9 * 3600: "9h", 50 * 3600: "2d2h",
                 30 * 86400: "30d", 800 * 86400: "2y70d", 3000 * 86400: "8y", -5: "<invalid>"}
        for seconds, text in cases.items():
            self.assertEqual(human_duration(seconds), text, seconds)


# -- watches ----------------------------------------------------------------------------


class WatchTests(ServerTestCase):
    def watch(self, query: str, path: str = "/api/v1/namespaces/default/pods",
              accept: str | None = None) -> Wire:
        wire = Wire(self.server)
        wire.send("GET", f"{path}?watch=true&{query}",
                  headers={"Accept": accept} if accept else None)
        return wire

    def events(self, wire: Wire) -> list[tuple[str, str]]:
        return [(e["type"], e["object"].get("metadata", {}).get("name", ""))
                for e in wire.response().lines()]

    def test_headers_go_out_at_once_and_existing_objects_come_as_added(self) -> None:
        wire = self.watch("")
        response = wire.response()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("transfer-encoding"), "chunked")
        self.assertEqual(response.header("content-type"), "application/json")
        self.assertEqual(self.events(wire), [("ADDED", "db-1"), ("ADDED", "web-1"),
                                             ("ADDED", "web-2")])

    def test_live_events_follow(self) -> None:
        rv = self.server.resource_version
        wire = self.watch(f"resourceVersion={rv}")
        self.assertEqual(wire.response().body, b"")
        self.server.create(pod_body("fresh"))
        self.server.patch("pods", "default", "fresh", {"metadata": {"labels": {"a": "b"}}})
        self.server.delete("pods", "default", "fresh")
        self.server.create(pod_body("elsewhere", namespace="demo"))
        self.assertEqual(self.events(wire), [("ADDED", "fresh"), ("MODIFIED", "fresh"),
                                             ("DELETED", "fresh")])
        rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in wire.response().lines()]
        self.assertEqual(rvs, sorted(rvs))

    def test_resource_version_replays_later_events(self) -> None:
        rv = self.server.resource_version
        self.server.create(pod_body("one"))
        self.server.delete("pods", "default", "web-2")
        wire = self.watch(f"resourceVersion={rv}")
        self.assertEqual(self.events(wire), [("ADDED", "one"), ("DELETED", "web-2")])

    def test_too_old_resource_version_is_410_expired(self) -> None:
        self.server.store.history_limit = 2
        rv = self.server.resource_version
        for n in range(3):
            self.server.create(pod_body(f"p{n}"))
        wire = self.watch(f"resourceVersion={rv}")
        response = wire.response()
        self.assertEqual(response.code, 200)
        self.assertTrue(response.complete)
        (event,) = response.lines()
        self.assertEqual(event["type"], "ERROR")
        self.assertEqual((event["object"]["code"], event["object"]["reason"]), (410, "Expired"))
        self.assertIn("too old resource version", event["object"]["message"])

    def test_compaction_expires_every_older_version(self) -> None:
        rv = self.server.resource_version
        self.server.compact()
        self.server.create(pod_body("after"))
        self.assertEqual(self.watch(f"resourceVersion={rv - 1}").response().lines()[0]["type"],
                         "ERROR")

    def test_timeout_seconds_ends_the_watch(self) -> None:
        wire = self.watch("timeoutSeconds=5&resourceVersion=1")
        self.clock.advance(4.9)
        self.assertFalse(wire.response().complete)
        self.clock.advance(0.2)
        self.assertTrue(wire.response().complete)
        self.assertEqual(self.server.open_streams, 0)
        self.assertEqual(self.server.store.watcher_count(), 0)

    def test_bookmarks_when_allowed(self) -> None:
        self.server.bookmark_interval = 10
        quiet = self.watch(f"resourceVersion={self.server.resource_version}")
        wire = self.watch(f"allowWatchBookmarks=true&resourceVersion={self.server.resource_version}")
        self.clock.advance(10)
        self.server.create(pod_body("x", namespace="demo"))
        self.clock.advance(10)
        bookmarks = [e for e in wire.response().lines() if e["type"] == "BOOKMARK"]
        self.assertEqual(len(bookmarks), 2)
        self.assertEqual(bookmarks[1]["object"]["metadata"]["resourceVersion"],
                         str(self.server.resource_version))
        self.assertEqual(bookmarks[0]["object"]["kind"], "Pod")
        self.assertEqual(quiet.response().body, b"")

    def test_send_initial_events_ends_with_an_annotated_bookmark(self) -> None:
        wire = self.watch("sendInitialEvents=true&allowWatchBookmarks=true"
                          "&resourceVersionMatch=NotOlderThan")
        lines = wire.response().lines()
        self.assertEqual([e["type"] for e in lines], ["ADDED"] * 3 + ["BOOKMARK"])
        self.assertEqual(lines[-1]["object"]["metadata"]["annotations"],
                         {"k8s.io/initial-events-end": "true"})

    def test_selectors_turn_changes_into_added_and_deleted(self) -> None:
        wire = self.watch(f"labelSelector=app%3Dweb&resourceVersion={self.server.resource_version}")
        self.server.patch("pods", "default", "web-1", {"metadata": {"labels": {"app": "db"}}})
        self.server.patch("pods", "default", "db-1", {"metadata": {"labels": {"app": "web"}}})
        self.server.patch("pods", "default", "web-2", {"metadata": {"labels": {"x": "y"}}})
        self.assertEqual(self.events(wire), [("DELETED", "web-1"), ("ADDED", "db-1"),
                                             ("MODIFIED", "web-2")])
        deleted = wire.response().lines()[0]["object"]
        self.assertEqual(deleted["metadata"]["labels"]["app"], "web")

    def test_field_selector_on_node_name(self) -> None:
        wire = self.watch("fieldSelector=spec.nodeName%3Dedge-2", path="/api/v1/pods")
        self.server.create(pod_body("on-2", node="edge-2"))
        self.server.create(pod_body("on-1", node="edge-1"))
        self.assertEqual(self.events(wire), [("ADDED", "web-2"), ("ADDED", "kube-proxy-e2"),
                                             ("ADDED", "on-2")])

    def test_legacy_watch_path_and_single_object_watch(self) -> None:
        wire = Wire(self.server)
        wire.send("GET", "/api/v1/watch/namespaces/default/pods/web-1")
        self.server.patch("pods", "default", "web-2", {"metadata": {"labels": {"x": "1"}}})
        self.server.patch("pods", "default", "web-1", {"metadata": {"labels": {"x": "1"}}})
        self.assertEqual(self.events(wire), [("ADDED", "web-1"), ("MODIFIED", "web-1")])

    def test_client_leaving_unregisters_the_watch(self) -> None:
        wire = self.watch("allowWatchBookmarks=true&timeoutSeconds=100")
        self.assertEqual(self.server.store.watcher_count(), 1)
        wire.disconnect()
        self.assertEqual(self.server.store.watcher_count(), 0)
        self.assertEqual(self.server.open_streams, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_table_watch(self) -> None:
        wire = self.watch(f"resourceVersion={self.server.resource_version}", accept=TABLE_ACCEPT)
        self.server.create(pod_body("tabled"))
        (event,) = wire.response().lines()
        self.assertEqual(event["object"]["kind"], "Table")
        self.assertEqual(event["object"]["rows"][0]["cells"][0], "tabled")

    def test_bad_watch_parameters_are_bad_requests(self) -> None:
        self.assertStatus(call(self.server, "GET", "/api/v1/pods?watch=1&resourceVersion=x"),
                          400, "BadRequest")
        self.assertStatus(call(self.server, "GET", "/api/v1/pods?watch=1&fieldSelector=a%3Db"),
                          400, "BadRequest")

    def test_fan_out_reaches_every_watcher(self) -> None:
        wires = [self.watch(f"resourceVersion={self.server.resource_version}") for _ in range(20)]
        self.server.create(pod_body("many"))
        for wire in wires:
            self.assertEqual(self.events(wire), [("ADDED", "many")])


class InMemoryFaultTests(ServerTestCase):
    def test_delay_and_blackhole_in_memory(self) -> None:
        self.server.delay("/api/v1/nodes", 2.0)
        wire = Wire(self.server)
        wire.send("GET", "/api/v1/nodes")
        self.clock.advance(1.9)
        self.assertEqual(wire.transport.value(), b"")
        self.clock.advance(0.2)
        self.assertEqual(wire.response().code, 200)
        self.server.delay("/api/v1/nodes", 0)
        self.server.blackhole(True)
        held = Wire(self.server)
        held.send("GET", "/version")
        gone = Wire(self.server)
        gone.send("GET", "/version")
        gone.disconnect()
        self.clock.advance(100)
        self.assertEqual(held.transport.value(), b"")
        self.server.blackhole(False)
        self.assertEqual(held.response().code, 200)
        self.assertEqual(gone.transport.value(), b"")

    def test_injected_failures(self) -> None:
        self.server.fail("/api/v1/pods", 503, "ServiceUnavailable", count=1)
        self.assertStatus(call(self.server, "GET", "/api/v1/pods"), 503, "ServiceUnavailable")
        self.assertEqual(call(self.server, "GET", "/api/v1/pods").code, 200)
        self.server.fail("/api", 500)
        self.assertEqual(call(self.server, "GET", "/api/v1/nodes").code, 500)
        self.server.clear_failures()
        self.assertEqual(call(self.server, "GET", "/api/v1/nodes").code, 200)

    def test_requests_are_recorded(self) -> None:
        call(self.server, "POST", "/api/v1/namespaces/default/configmaps?fieldManager=x",
             {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "r"}},
             headers={"Authorization": "Bearer abc.def", "User-Agent": "kubelet/v1.31"})
        record = self.server.requests[-1]
        self.assertEqual((record.method, record.path, record.user),
                         ("POST", "/api/v1/namespaces/default/configmaps?fieldManager=x",
                          "token:abc.def"))
        self.assertEqual(record.headers["user-agent"], ["kubelet/v1.31"])
        self.assertEqual(record.header("User-Agent"), "kubelet/v1.31")
        self.assertEqual(json.loads(record.body)["metadata"]["name"], "r")
        call(self.server, "GET", "/version")
        self.assertIsNone(self.server.requests[-1].user)

    def test_stop_cleans_up_in_memory_streams_and_timers(self) -> None:
        self.server.delay("/slow", 5)
        Wire(self.server).send("GET", "/slow")
        wire = Wire(self.server)
        wire.send("GET", "/api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=60")
        self.successResultOf(self.server.stop())
        self.assertEqual(self.server.open_streams, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


# -- websocket frames -----------------------------------------------------------------------


class FrameTests(SynchronousTestCase):
    def test_round_trip_of_every_length_class(self) -> None:
        for size in (0, 5, 125, 126, 65535, 65536, 70000):
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            decoder = FrameDecoder(masked=True)
            frame = encode_frame(OP_BINARY, payload, mask=b"\x01\x02\x03\x04")
            self.assertEqual(decoder.feed(frame[:3]) + decoder.feed(frame[3:]),
                             [(OP_BINARY, payload)])

    def test_fragments_and_interleaved_control_frames(self) -> None:
        decoder = FrameDecoder(masked=False)
        data = (encode_frame(OP_BINARY, b"he", fin=False) + encode_frame(OP_PING, b"p")
                + encode_frame(0, b"llo"))
        self.assertEqual(decoder.feed(data), [(OP_PING, b"p"), (OP_BINARY, b"hello")])

    def test_accept_key_from_rfc6455(self) -> None:
        self.assertEqual(websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
                         "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")


class ExecSessionTests(SynchronousTestCase):
    """The simulated container, driven without a network."""

    def session(self, *command: str, **streams: Any) -> tuple[Any, StringTransport, Any]:
        from twisted.internet.task import Clock

        from yurthub.testing.exec import ExecSession

        clock = Clock()
        session = ExecSession(clock, list(command), subprotocol="v5.channel.k8s.io",
                              pod="web-1", **streams)
        transport = StringTransport()
        session.makeConnection(transport)
        return session, transport, clock

    @staticmethod
    def frames(transport: StringTransport) -> list[tuple[int, bytes]]:
        return FrameDecoder(masked=False).feed(transport.value())

    def test_close_handshake_times_out_without_a_reply(self) -> None:
        session, transport, clock = self.session("hostname")
        self.assertEqual(self.frames(transport)[0], (OP_BINARY, b"\x01web-1\n"))
        self.assertFalse(transport.disconnecting)
        clock.advance(session.close_timeout)
        self.assertTrue(transport.disconnecting)

    def test_sleep_then_success(self) -> None:
        session, transport, clock = self.session("sleep", "2")
        clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.1)
        self.assertEqual(session.exit_code, 0)

    def test_missing_executable_is_an_internal_error_status(self) -> None:
        session, transport, _ = self.session("nope")
        status = json.loads(self.frames(transport)[0][1][1:])
        self.assertEqual((status["reason"], status["code"]), ("InternalError", 500))
        self.assertIn("executable file not found", status["message"])

    def test_tty_merges_stderr_into_stdout(self) -> None:
        session, transport, _ = self.session("sh", "-c", "exit x", tty=True)
        self.assertEqual(self.frames(transport)[0][1][:1], b"\x01")
        self.assertEqual(session.exit_code, 2)

    def test_bad_framing_closes_with_protocol_error(self) -> None:
        session, transport, _ = self.session("cat", stdin=True)
        session.dataReceived(encode_frame(OP_BINARY, b"\x00unmasked"))
        self.assertEqual(self.frames(transport)[-1], (OP_CLOSE, struct.pack("!H", 1002)))
        self.assertTrue(transport.disconnecting)


# -- real sockets ------------------------------------------------------------------------------


@implementer(IPolicyForHTTPS)
class _ClientTLS:
    """Trust the test CA and present an optional client certificate."""

    def __init__(self, pki: TestPKI, client: tuple[bytes, bytes] | None) -> None:
        self._trust = Certificate.loadPEM(pki.ca_cert_pem)
        self._client = PrivateCertificate.loadPEM(client[0] + client[1]) if client else None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:  # noqa: N802
        return optionsForClientTLS(hostname.decode(), trustRoot=self._trust,
                                   clientCertificate=self._client)


class LiveServerTestCase(TestCase):
    """A seeded server on a real 127.0.0.1 port, stopped after each test."""

    tls: TestPKI | None = None

    async def start_server(self, **options: Any) -> SimulatedAPIServer:
        server = SimulatedAPIServer(reactor, tls=self.tls, seed=True, **options)
        await server.start()
        self.addCleanup(server.stop)
        return server

    def agent(self, client: tuple[bytes, bytes] | None = None) -> Agent:
        pool = HTTPConnectionPool(reactor, persistent=False)
        if self.tls is not None:
            return Agent(reactor, contextFactory=_ClientTLS(self.tls, client), pool=pool)
        return Agent(reactor, pool=pool)

    async def get(self, server: SimulatedAPIServer, path: str, agent: Agent | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        agent = agent or self.agent()
        response = await agent.request(
            b"GET", (server.url + path).encode(),
            Headers({k: [v] for k, v in (headers or {}).items()}))
        return response.code, await readBody(response)


class _LineCollector(protocol.Protocol):
    """Collects bytes of a raw connection and tells when it closes."""

    def __init__(self) -> None:
        self.data = b""
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._waiting: list[tuple[Callable[[bytes], bool], defer.Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data
        for item in list(self._waiting):
            if item[0](self.data):
                self._waiting.remove(item)
                item[1].callback(self.data)

    def when(self, condition: Callable[[bytes], bool]) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        if condition(self.data):
            d.callback(self.data)
        else:
            self._waiting.append((condition, d))
        return d.addTimeout(5, reactor)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.closed.callback(None)


async def raw_connect(server: SimulatedAPIServer) -> _LineCollector:
    collector = _LineCollector()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), collector)
    return collector


class FaultControlTests(LiveServerTestCase):
    async def test_blackhole_holds_requests_until_lifted(self) -> None:
        server = await self.start_server()
        server.blackhole(True)
        answered = defer.ensureDeferred(self.get(server, "/version"))
        await deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(answered.called)
        server.blackhole(False)
        code, _ = await answered
        self.assertEqual(code, 200)

    async def test_delay_postpones_matching_paths(self) -> None:
        server = await self.start_server()
        server.delay("/api/v1/pods", 0.3)
        started = reactor.seconds()
        await self.get(server, "/api/v1/pods")
        self.assertGreaterEqual(reactor.seconds() - started, 0.29)
        started = reactor.seconds()
        await self.get(server, "/api/v1/nodes")
        self.assertLess(reactor.seconds() - started, 0.25)
        server.clear_delays()

    async def test_stop_listening_drops_connections_and_start_listening_reuses_the_port(self) -> None:
        server = await self.start_server()
        port = server.port
        watch = await raw_connect(server)
        watch.transport.write(b"GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[union-attr]
        await watch.when(lambda data: b"kube-proxy-e2" in data)
        server.create(pod_body("before-stop"))
        await server.stop_listening()
        await watch.closed
        self.assertFalse(server.listening)
        with self.assertRaises(ConnectionRefusedError):
            await self.get(server, "/version")
        await server.start_listening()
        self.assertEqual(server.port, port)
        code, body = await self.get(server, "/api/v1/namespaces/default/pods/before-stop")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["metadata"]["name"], "before-stop")

    async def test_cut_streams_aborts_watches_but_keeps_serving(self) -> None:
        server = await self.start_server()
        watch = await raw_connect(server)
        watch.transport.write(b"GET /api/v1/nodes?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[union-attr]
        await watch.when(lambda data: b"edge-2" in data)
        self.assertEqual(server.open_streams, 1)
        server.cut_streams()
        await watch.closed
        self.assertEqual(server.open_streams, 0)
        code, _ = await self.get(server, "/api/v1/nodes")
        self.assertEqual(code, 200)

    async def test_watch_event_is_flushed_as_it_happens(self) -> None:
        server = await self.start_server()
        watch = await raw_connect(server)
        watch.transport.write(  # type: ignore[union-attr]
            f"GET /api/v1/namespaces/default/pods?watch=1&resourceVersion="
            f"{server.resource_version} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await watch.when(lambda data: b"\r\n\r\n" in data)
        self.assertIn(b"Transfer-Encoding: chunked", watch.data)
        server.create(pod_body("flushed"))
        await watch.when(lambda data: b'"flushed"' in data)
        watch.transport.loseConnection()  # type: ignore[union-attr]
        await watch.closed


class UpgradeTests(LiveServerTestCase):
    async def test_raw_echo_upgrade(self) -> None:
        server = await self.start_server()
        client = await raw_connect(server)
        client.transport.write(b"GET /simulator/echo HTTP/1.1\r\nHost: x\r\n"  # type: ignore[union-attr]
                               b"Connection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        await client.when(lambda data: b"\r\n\r\n" in data)
        self.assertTrue(client.data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        client.transport.write(b"ping \x00\xff bytes")  # type: ignore[union-attr]
        data = await client.when(lambda data: data.endswith(b"bytes"))
        self.assertTrue(data.endswith(b"\r\n\r\nping \x00\xff bytes"))
        server.cut_streams()
        await client.closed

    async def exec(self, server: SimulatedAPIServer, query: str,
                   protocol_name: str = "v5.channel.k8s.io") -> _LineCollector:
        client = await raw_connect(server)
        client.transport.write(  # type: ignore[union-attr]
            f"GET /api/v1/namespaces/default/pods/web-1/exec?{query} HTTP/1.1\r\n"
            f"Host: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Protocol: {protocol_name}\r\n\r\n".encode())
        head = await client.when(lambda data: b"\r\n\r\n" in data)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", head)
        self.assertIn(f"Sec-WebSocket-Protocol: {protocol_name}".encode(), head)
        return client

    async def finish(self, client: _LineCollector) -> None:
        """Answer the server's close frame, as a WebSocket client does, and wait for the end."""
        await client.when(lambda data: any(op == OP_CLOSE for op, _ in self.frames_in(data)))
        assert client.transport is not None
        client.transport.write(encode_frame(OP_CLOSE, struct.pack("!H", 1000),
                                            mask=b"\x01\x02\x03\x04"))
        await client.closed

    @staticmethod
    def frames_in(data: bytes) -> list[tuple[int, bytes]]:
        return FrameDecoder(masked=False).feed(data.partition(b"\r\n\r\n")[2])

    @staticmethod
    def frames(client: _LineCollector) -> list[tuple[int, bytes]]:
        return FrameDecoder(masked=False).feed(client.data.partition(b"\r\n\r\n")[2])

    async def test_exec_echo_over_websocket(self) -> None:
        server = await self.start_server()
        client = await self.exec(server, "command=echo&command=hello&command=edge&stdout=true"
                                         "&stderr=true")
        await self.finish(client)
        frames = self.frames(client)
        self.assertEqual(frames[0], (OP_BINARY, b"\x01hello edge\n"))
        self.assertEqual(frames[1][1][:1], b"\x03")
        self.assertEqual(json.loads(frames[1][1][1:]), {"metadata": {}, "status": "Success"})
        self.assertEqual(frames[2], (OP_CLOSE, struct.pack("!H", 1000)))

    async def test_exec_cat_echoes_stdin_until_v5_close(self) -> None:
        server = await self.start_server()
        client = await self.exec(server, "command=cat&stdin=true&stdout=true")
        mask = b"\x11\x22\x33\x44"
        assert client.transport is not None
        client.transport.write(encode_frame(OP_BINARY, b"\x00line one\n", mask=mask))
        client.transport.write(encode_frame(OP_PING, b"hb", mask=mask))
        client.transport.write(encode_frame(OP_BINARY, b"\x04{\"Width\":80}", mask=mask))
        await client.when(lambda data: b"line one" in data)
        client.transport.write(encode_frame(OP_BINARY, b"\xff\x00", mask=mask))
        await client.when(lambda data: b"Success" in data)
        client.transport.write(encode_frame(OP_CLOSE, struct.pack("!H", 1000), mask=mask))
        await client.closed
        frames = self.frames(client)
        self.assertIn((OP_PONG, b"hb"), frames)
        self.assertIn((OP_BINARY, b"\x01line one\n"), frames)

    async def test_exec_exit_code_on_v4(self) -> None:
        server = await self.start_server()
        client = await self.exec(server, "command=sh&command=-c&command=exit%203&stdout=true",
                                 "v4.channel.k8s.io")
        await self.finish(client)
        status = json.loads(self.frames(client)[0][1][1:])
        self.assertEqual((status["status"], status["reason"]), ("Failure", "NonZeroExitCode"))
        self.assertEqual(status["details"]["causes"], [{"reason": "ExitCode", "message": "3"}])

    async def test_cut_streams_ends_exec_sessions(self) -> None:
        server = await self.start_server()
        client = await self.exec(server, "command=sleep&command=30&stdout=true")
        server.cut_streams()
        await client.closed
        self.assertEqual(self.frames(client), [])


class TLSTests(LiveServerTestCase):
    def setUp(self) -> None:
        self.tls = TestPKI()

    async def test_client_certificate_user_is_recorded(self) -> None:
        assert self.tls is not None
        server = await self.start_server()
        self.assertTrue(server.url.startswith("https://127.0.0.1:"))
        client = self.tls.issue_client("system:node:edge-1", organizations=["system:nodes"])
        code, _ = await self.get(server, "/api/v1/nodes", self.agent(client))
        self.assertEqual(code, 200)
        record = server.requests[-1]
        self.assertEqual((record.user, record.groups), ("system:node:edge-1", ("system:nodes",)))

    async def test_client_certificates_are_optional(self) -> None:
        server = await self.start_server()
        await self.get(server, "/version", headers={"Authorization": "Bearer t0ken"})
        self.assertEqual(server.requests[-1].user, "token:t0ken")
        await self.get(server, "/version")
        self.assertIsNone(server.requests[-1].user)

    async def test_certificates_from_another_ca_are_refused(self) -> None:
        server = await self.start_server()
        stranger = TestPKI("stranger").issue_client("mallory")
        with self.assertRaises(Exception):  # noqa: B017 - the TLS failure comes wrapped
            await self.get(server, "/version", self.agent(stranger))
        self.assertEqual(server.requests, [])


# -- real clients ---------------------------------------------------------------------------


class KubectlTests(LiveServerTestCase):
    def setUp(self) -> None:
        if not os.path.exists(KUBECTL):
            raise self.skipTest("kubectl is not installed")
        self.home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.home, True)

    async def kubectl(self, server: SimulatedAPIServer, *args: str,
                      extra: tuple[str, ...] = ()) -> tuple[str, str, int]:
        argv = ["--server", server.url, "--cache-dir", os.path.join(self.home, "cache"),
                *extra, *args]
        env = {"HOME": self.home, "KUBECONFIG": "/dev/null", "PATH": os.environ.get("PATH", "")}
        out, err, code = await utils.getProcessOutputAndValue(KUBECTL, argv, env=env,
                                                              reactor=reactor)
        return out.decode(), err.decode(), code

    async def test_get_prints_tables_like_a_real_cluster(self) -> None:
        server = await self.start_server()
        out, err, code = await self.kubectl(server, "get", "pods", "-A")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS",
                                            "AGE"])
        self.assertEqual(lines[1].split()[:5], ["default", "db-1", "1/1", "Running", "0"])
        self.assertEqual(len(lines), 9)
        out, err, code = await self.kubectl(server, "get", "nodes")
        self.assertEqual(out.splitlines()[0].split(), ["NAME", "STATUS", "ROLES", "AGE", "VERSION"])
        self.assertEqual(out.splitlines()[1].split()[:3], ["edge-1", "Ready", "<none>"])
        out, err, code = await self.kubectl(server, "get", "pods", "-o", "wide")
        self.assertIn("NODE", out.splitlines()[0].split())
        out, err, code = await self.kubectl(server, "get", "pods", "-o", "json", "-l", "app=web")
        self.assertEqual([p["metadata"]["name"] for p in json.loads(out)["items"]],
                         ["web-1", "web-2"])

    async def test_create_patch_delete(self) -> None:
        server = await self.start_server()
        manifest = os.path.join(self.home, "cm.yaml")
        with open(manifest, "w") as handle:
            handle.write("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: k\ndata:\n  a: '1'\n")
        out, err, code = await self.kubectl(server, "create", "-f", manifest)
        self.assertEqual((code, out.strip()), (0, "configmap/k created"), err)
        out, err, code = await self.kubectl(server, "patch", "configmap", "k", "-p",
                                            '{"data":{"b":"2"}}')
        self.assertEqual(code, 0, err)
        out, err, code = await self.kubectl(server, "patch", "configmap", "k", "--type", "json",
                                            "-p", '[{"op":"remove","path":"/data/a"}]')
        self.assertEqual(code, 0, err)
        self.assertEqual(server.get("configmaps", "default", "k")["data"], {"b": "2"})  # type: ignore[index]
        out, err, code = await self.kubectl(server, "apply", "-f", manifest)
        self.assertEqual(code, 0, err)
        out, err, code = await self.kubectl(server, "delete", "configmap", "k")
        self.assertEqual((code, out.strip()), (0, 'configmap "k" deleted'), err)
        self.assertIsNone(server.get("configmaps", "default", "k"))
        out, err, code = await self.kubectl(server, "get", "configmap", "k")
        self.assertEqual(code, 1)
        self.assertIn('Error from server (NotFound): configmaps "k" not found', err)

    async def test_exec_and_logs(self) -> None:
        server = await self.start_server()
        out, err, code = await self.kubectl(server, "exec", "web-1", "--", "echo", "hello")
        self.assertEqual((code, out), (0, "hello\n"), err)
        out, err, code = await self.kubectl(server, "exec", "web-1", "--", "sh", "-c", "exit 4")
        self.assertEqual(code, 4, err)
        out, err, code = await self.kubectl(server, "logs", "web-1", "--tail", "1")
        self.assertEqual(len(out.splitlines()), 1)

    async def test_watch_prints_new_objects(self) -> None:
        server = await self.start_server()
        watching = defer.ensureDeferred(
            self.kubectl(server, "get", "pods", "--watch", "--request-timeout", "3s"))
        for _ in range(100):
            if server.open_streams:
                break
            await deferLater(reactor, 0.05, lambda: None)
        server.create(pod_body("watched"))
        out, err, code = await watching
        self.assertIn("watched", out)

    async def test_https_with_client_certificate(self) -> None:
        pki = self.tls = TestPKI()
        server = await self.start_server()
        cert, key = pki.issue_client("admin", organizations=["system:masters"])
        files = pki.write_files(os.path.join(self.home, "pki"), name="admin", cert_pem=cert,
                                key_pem=key)
        out, err, code = await self.kubectl(
            server, "get", "nodes", "-o", "name",
            extra=("--certificate-authority", files["ca"], "--client-certificate", files["cert"],
                   "--client-key", files["key"]))
        self.assertEqual((code, out.split()), (0, ["node/edge-1", "node/edge-2"]), err)
        self.assertEqual({r.user for r in server.requests}, {"admin"})


class PythonClientTests(LiveServerTestCase):
    async def test_list_create_patch_watch_delete_and_read_nodes(self) -> None:
        server = await self.start_server()

        def scenario() -> dict[str, Any]:
            from kubernetes import client, watch

            configuration = client.Configuration()
            configuration.host = server.url
            api_client = client.ApiClient(configuration)
            try:
                api: Any = client.CoreV1Api(api_client)
                seen: dict[str, Any] = {}
                seen["pods"] = [p.metadata.name for p in api.list_namespaced_pod("default").items]
                seen["kubelet"] = api.read_node("edge-1").status.node_info.kubelet_version
                api.create_namespaced_pod("default", make_pod("py", node="edge-2"))
                patched = api.patch_namespaced_pod("py", "default",
                                                   {"metadata": {"labels": {"py": "yes"}}})
                seen["labels"] = patched.metadata.labels
                events = watch.Watch().stream(api.list_namespaced_pod, "default",
                                              label_selector="py=yes", timeout_seconds=1)
                seen["events"] = [(e["type"], e["object"].metadata.name) for e in events]
                api.delete_namespaced_pod("py", "default")
                try:
                    api.read_namespaced_pod("py", "default")
                except client.ApiException as error:
                    seen["after_delete"] = error.status
                return seen
            finally:
                api_client.close()

        seen = await deferToThread(scenario)
        self.assertEqual(seen["pods"], ["db-1", "web-1", "web-2"])
        self.assertEqual(seen["kubelet"], "v1.31.0")
        self.assertEqual(seen["labels"], {"app": "py", "py": "yes"})
        self.assertEqual(seen["events"], [("ADDED", "py")])
        self.assertEqual(seen["after_delete"], 404)
