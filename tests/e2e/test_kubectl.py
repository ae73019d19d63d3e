"""The real kubectl through yurthub: every answer equals the one straight from the cloud."""

from __future__ import annotations

import json
import os
import time

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from tests.e2e.cloud import KUBECTL, start_cloud, without_ages
from tests.support import sleep


class KubectlReadTests(TestCase):
    """get and list, as tables and as JSON, equal through yurthub and direct."""

    timeout = 120

    async def test_reads_equal_the_cloud(self) -> None:
        cloud = await start_cloud(self)
        for args in (
            ["get", "pods", "-A"],
            ["get", "nodes"],
            ["get", "pods", "-o", "wide", "-n", "default"],
            ["get", "services", "-A"],
        ):
            via_hub, direct = await cloud.both(*args)
            self.assertTrue(via_hub.strip(), args)
            self.assertEqual(without_ages(via_hub), without_ages(direct), args)
        for args in (
            ["get", "pods", "-A", "-o", "json"],
            ["get", "pods", "-o", "json", "-l", "app=web"],
            ["get", "nodes", "-o", "json"],
            ["get", "configmap", "-n", "kube-system", "kube-proxy", "-o", "yaml"],
            ["get", "endpointslices", "-A", "-o", "json"],
        ):
            via_hub, direct = await cloud.both(*args)
            self.assertEqual(via_hub, direct, args)
        pods = json.loads((await cloud.both("get", "pods", "-o", "json", "-l", "app=web"))[0])
        self.assertTrue(pods["items"])
        self.assertTrue(all(p["metadata"]["labels"]["app"] == "web" for p in pods["items"]))

    async def test_requests_reach_the_cloud_as_the_node(self) -> None:
        cloud = await start_cloud(self)
        await cloud.kubectl("get", "nodes")
        users = {r.user for r in cloud.server.requests if r.path.startswith("/api/v1/nodes")}
        self.assertEqual(users, {"system:node:edge-1"})


class KubectlWriteTests(TestCase):
    """create, patch and delete through yurthub change the cloud."""

    timeout = 120

    async def test_create_patch_delete(self) -> None:
        cloud = await start_cloud(self)
        manifest = os.path.join(cloud.home, "pod.json")
        with open(manifest, "w") as f:
            json.dump(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "e2e-pod", "namespace": "default", "labels": {"app": "e2e"}},
                    "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "busybox"}]},
                },
                f,
            )
        out, err, code = await cloud.kubectl("create", "-f", manifest)
        self.assertEqual((code, out.strip()), (0, b"pod/e2e-pod created"), err)
        self.assertIsNotNone(cloud.server.get("pods", "default", "e2e-pod"))

        out, err, code = await cloud.kubectl("patch", "pod", "e2e-pod", "-n", "default", "-p", '{"metadata":{"labels":{"tier":"edge"}}}')
        self.assertEqual((code, out.strip()), (0, b"pod/e2e-pod patched"), err)
        self.assertEqual(cloud.server.get("pods", "default", "e2e-pod")["metadata"]["labels"]["tier"], "edge")  # type: ignore[index]

        out, err, code = await cloud.kubectl("patch", "pod", "e2e-pod", "-n", "default", "--type", "json", "-p", '[{"op":"remove","path":"/metadata/labels/tier"}]')
        self.assertEqual(code, 0, err)
        self.assertNotIn("tier", cloud.server.get("pods", "default", "e2e-pod")["metadata"]["labels"])  # type: ignore[index]

        out, err, code = await cloud.kubectl("delete", "pod", "e2e-pod", "-n", "default", "--wait=false")
        self.assertEqual((code, out.strip()), (0, b'pod "e2e-pod" deleted'), err)
        self.assertIsNone(cloud.server.get("pods", "default", "e2e-pod"))

        out, err, code = await cloud.kubectl("get", "pod", "e2e-pod", "-n", "default")
        self.assertEqual(code, 1)
        self.assertIn(b'pods "e2e-pod" not found', err)


class LineCollector(protocol.ProcessProtocol):
    """Collects a child's stdout and notes when a marker first appears."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.waiting: list[tuple[bytes, defer.Deferred[float]]] = []
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.out += data
        for marker, d in list(self.waiting):
            if marker in self.out:
                self.waiting.remove((marker, d))
                d.callback(time.monotonic())

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.err += data

    def processEnded(self, reason: object) -> None:  # noqa: N802
        for _, d in self.waiting:
            d.errback(AssertionError(f"kubectl ended; stdout={self.out!r} stderr={self.err!r}"))
        self.waiting = []
        self.ended.callback(None)

    def seen(self, marker: bytes, timeout: float) -> defer.Deferred[float]:
        d: defer.Deferred[float] = defer.Deferred()
        if marker in self.out:
            d.callback(time.monotonic())
            return d
        self.waiting.append((marker, d))
        return d.addTimeout(timeout, reactor)


class KubectlStreamTests(TestCase):
    """watch and exec (the upgrade path) through yurthub."""

    timeout = 120

    async def test_watch_sees_a_cloud_event_within_one_second(self) -> None:
        cloud = await start_cloud(self)
        collector = LineCollector()
        env = {"HOME": cloud.home, "KUBECONFIG": cloud.kubeconfig, "PATH": os.environ.get("PATH", "/usr/bin")}
        argv = [KUBECTL, *cloud.kubectl_args(True), "get", "pods", "-n", "default", "--watch", "-o", "name"]
        process = reactor.spawnProcess(collector, KUBECTL, argv, env=env)  # type: ignore[attr-defined]

        def stop() -> defer.Deferred[None]:
            if process.pid is not None:
                process.signalProcess("KILL")
            return collector.ended

        self.addCleanup(stop)
        try:
            await collector.seen(b"pod/web-1", timeout=20)  # the initial list arrived: the watch is open
        except defer.TimeoutError:
            self.fail(f"no initial events from kubectl: {collector.out!r} {collector.err!r}")
        await sleep(0.5)
        created_at = time.monotonic()
        cloud.server.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "watched-pod", "namespace": "default"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            }
        )
        seen_at = await collector.seen(b"pod/watched-pod", timeout=5)
        self.assertLess(seen_at - created_at, 1.0)

    async def test_exec_is_spliced_through(self) -> None:
        cloud = await start_cloud(self)
        pods = json.loads((await cloud.kubectl("get", "pods", "-n", "default", "-o", "json"))[0])
        name = pods["items"][0]["metadata"]["name"]
        via_hub, direct = await cloud.both("exec", "-n", "default", name, "--", "echo", "hello", "edge")
        self.assertEqual(via_hub, b"hello edge\n")
        self.assertEqual(via_hub, direct)
        text = cloud.hub.metrics.render().decode()
        self.assertIn('yurthub_proxy_requests_total{code="101",component="kubectl",resource="pods"', text)
