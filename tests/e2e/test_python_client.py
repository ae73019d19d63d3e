"""The official ``kubernetes`` Python client through yurthub.

The client is synchronous, so each call runs in a thread (``deferToThread``) while the
reactor keeps serving yurthub and the simulated cloud.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client, watch
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e.cloud import Cloud, start_cloud
from tests.support import fetch, sleep, start_hub
from yurthub.testing.apiserver import SimulatedAPIServer
from yurthub.testing.pki import TestPKI
from yurthub.upstream.tls import FileCredentials

T = TypeVar("T")


def api(cloud: Cloud, via_hub: bool, token: str = "") -> client.CoreV1Api:
    """A CoreV1Api pointed at yurthub (no credentials, or a bearer token) or at the cloud
    as the node."""
    configuration = client.Configuration()
    if via_hub:
        configuration.host = cloud.proxy_url
        if token:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
    else:
        configuration.host = cloud.server.url
        configuration.ssl_ca_cert = cloud.files["ca"]
        configuration.cert_file = cloud.files["cert"]
        configuration.key_file = cloud.files["key"]
    return client.CoreV1Api(client.ApiClient(configuration))


async def in_thread(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await deferToThread(call, *args, **kwargs)  # type: ignore[no-any-return]


class PythonClientTests(TestCase):
    """list, get, create, patch, delete and watch through yurthub."""

    timeout = 120

    async def test_reads_equal_the_cloud(self) -> None:
        cloud = await start_cloud(self)
        hub, direct = api(cloud, True), api(cloud, False)
        self.addCleanup(hub.api_client.close)
        self.addCleanup(direct.api_client.close)
        for call, args in (
            ("list_pod_for_all_namespaces", ()),
            ("list_node", ()),
            ("read_node", ("edge-1",)),
            ("list_namespaced_service", ("default",)),
            ("read_namespaced_config_map", ("kube-proxy", "kube-system")),
        ):
            via_hub = await in_thread(getattr(hub, call), *args, _preload_content=False)
            straight = await in_thread(getattr(direct, call), *args, _preload_content=False)
            self.assertEqual((via_hub.status, via_hub.data), (straight.status, straight.data), call)
        pods = await in_thread(hub.list_namespaced_pod, "default", label_selector="app=web")
        self.assertTrue(pods.items)
        self.assertTrue(all(p.metadata.labels["app"] == "web" for p in pods.items))

    async def test_bearer_token_goes_up_as_it_came(self) -> None:
        cloud = await start_cloud(self)
        with_token, without = api(cloud, True, token="pod-sa-token"), api(cloud, True)
        self.addCleanup(with_token.api_client.close)
        self.addCleanup(without.api_client.close)
        await in_thread(with_token.list_namespaced_pod, "default")
        await in_thread(without.list_namespaced_service, "default")
        users = {r.path.split("?")[0]: r.user for r in cloud.server.requests}
        self.assertEqual(users["/api/v1/namespaces/default/pods"], "token:pod-sa-token")
        self.assertEqual(users["/api/v1/namespaces/default/services"], "system:node:edge-1")

    async def test_create_patch_delete_and_errors(self) -> None:
        cloud = await start_cloud(self)
        hub = api(cloud, True)
        self.addCleanup(hub.api_client.close)
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "py-pod", "labels": {"app": "py"}},
            "spec": {"containers": [{"name": "c", "image": "busybox", "env": [{"name": "A", "value": "1"}]}]},
        }
        created = await in_thread(hub.create_namespaced_pod, "default", body)
        self.assertEqual(created.metadata.name, "py-pod")
        self.assertTrue(created.metadata.uid)
        patched = await in_thread(
            hub.patch_namespaced_pod, "py-pod", "default",
            {"spec": {"containers": [{"name": "c", "env": [{"name": "B", "value": "2"}]}]}},
        )
        env = {e.name: e.value for e in patched.spec.containers[0].env}
        self.assertEqual(env, {"A": "1", "B": "2"})  # strategic merge by name, through yurthub
        self.assertEqual(cloud.server.get("pods", "default", "py-pod")["spec"]["containers"][0]["env"][1]["name"], "B")  # type: ignore[index]
        with self.assertRaises(client.ApiException) as caught:
            await in_thread(hub.create_namespaced_pod, "default", body)
        self.assertEqual(caught.exception.status, 409)
        await in_thread(hub.delete_namespaced_pod, "py-pod", "default")
        self.assertIsNone(cloud.server.get("pods", "default", "py-pod"))
        with self.assertRaises(client.ApiException) as caught:
            await in_thread(hub.read_namespaced_pod, "py-pod", "default")
        self.assertEqual(caught.exception.status, 404)

    async def test_watch_event_arrives_within_one_second(self) -> None:
        cloud = await start_cloud(self)
        hub = api(cloud, True)
        self.addCleanup(hub.api_client.close)
        listed = await in_thread(hub.list_namespaced_pod, "default")
        arrivals: dict[str, float] = {}
        watcher = watch.Watch()

        def follow() -> None:
            for event in watcher.stream(
                hub.list_namespaced_pod, "default",
                resource_version=listed.metadata.resource_version, timeout_seconds=10,
            ):
                name = event["object"].metadata.name
                arrivals.setdefault(name, time.monotonic())
                if name == "watched-py":
                    watcher.stop()
                    return

        following = deferToThread(follow)
        await sleep(1.0)  # the watch is open
        created_at = time.monotonic()
        cloud.server.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "watched-py", "namespace": "default"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            }
        )
        await following.addTimeout(15, reactor)
        self.assertLess(arrivals["watched-py"] - created_at, 1.0)


class UpstreamVerificationTests(TestCase):
    """yurthub refuses a cloud whose certificate its CA did not sign."""

    async def test_wrong_cluster_ca_fails_closed(self) -> None:
        cloud_pki, other_pki = TestPKI(), TestPKI("someone-else")
        server = SimulatedAPIServer(reactor, tls=cloud_pki)
        await server.start("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.stop)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        files = other_pki.write_files(directory)
        hub = await start_hub(self, [server.url], credentials=FileCredentials.from_files(files["ca"]))
        hub.health.stop()
        hub.backends[0].set_healthy(True)
        code, _, body = await fetch(self, b"GET", f"http://127.0.0.1:{hub.port_of('listen.proxy')}/api/v1/namespaces/default/pods")
        status = json.loads(body)
        # The failed handshake marks the backend unhealthy at once (passive health), so the
        # request is answered offline: from the cache, where nothing is, hence 404.
        self.assertEqual(code, 404)
        self.assertEqual(status["kind"], "Status")
        self.assertFalse(hub.backends[0].healthy)
        self.assertIn("TLS handshake failed", hub.backends[0].reason)
        self.assertFalse([r for r in server.requests if r.path.startswith("/api/v1/namespaces/default/pods")])
