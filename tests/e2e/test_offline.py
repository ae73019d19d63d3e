"""Edge autonomy end to end: components read online through yurthub, the cloud goes away,
yurthub restarts on the same cache directory, and every component still gets its answers;
kubectl works offline; when the cloud returns, watches move back to it."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from tests.e2e.cloud import KUBECTL, start_cloud
from tests.support import fetch, raw_connect, sleep, start_hub
from yurthub.service import YurtHub

COMPONENTS = {
    "kubelet/v1.31.0": [
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1",
        "/api/v1/nodes?fieldSelector=metadata.name%3Dedge-1",
        "/api/v1/services",
        "/api/v1/namespaces/kube-system/configmaps",
        "/api/v1/namespaces/default/secrets",
    ],
    "kube-proxy/v1.31.0": [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/nodes",
    ],
    "flanneld/v0.25.0": ["/api/v1/nodes"],
    "coredns/1.11.1": [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/namespaces",
    ],
}


def items_of(body: bytes) -> dict[tuple[str, str], dict[str, Any]]:
    """A list's items by (namespace, name), without the kind/apiVersion lists leave out."""
    out = {}
    for item in json.loads(body)["items"]:
        item = {k: v for k, v in item.items() if k not in ("kind", "apiVersion")}
        out[(item["metadata"].get("namespace", ""), item["metadata"]["name"])] = item
    return out


async def wait_until(check: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await sleep(0.05)
    raise AssertionError("condition not met in time")


class OfflineTests(TestCase):
    """The whole autonomy story with the simulated cloud and real clients."""

    timeout = 180

    async def test_components_and_kubectl_work_offline_across_a_restart(self) -> None:
        cache_dir = os.path.abspath(self.mktemp())
        cloud = await start_cloud(self, cache={"dir": cache_dir, "agents": ["kubelet", "kube-proxy", "flanneld", "coredns"]})
        online: dict[tuple[str, str], bytes] = {}
        for agent, paths in COMPONENTS.items():
            for path in paths:
                code, _, body = await fetch(self, b"GET", cloud.proxy_url + path, {b"user-agent": [agent.encode()], b"accept": [b"application/vnd.kubernetes.protobuf, application/json"]})
                self.assertEqual(code, 200, (agent, path, body))
                online[(agent, path)] = body
        # kubectl online once, so discovery is cached for it.
        out, err, code = await cloud.kubectl("get", "pods", "-A")
        self.assertEqual(code, 0, err)
        # A watch through yurthub keeps the cache current: a pod created now is cached.
        watcher = await raw_connect(self, cloud.hub.port_of("listen.proxy"))
        watcher.transport.write(b"GET /api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dedge-1 HTTP/1.1\r\nHost: x\r\nUser-Agent: kubelet/v1.31.0\r\n\r\n")  # type: ignore[union-attr]
        await watcher.wait_for(lambda b: b"ADDED" in b)
        cloud.server.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "late-pod", "namespace": "default", "labels": {"app": "late"}},
            "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "busybox"}]},
        })
        await watcher.wait_for(lambda b: b"late-pod" in b)
        await cloud.hub.store.flush()

        # The cloud goes away; yurthub restarts on the same cache directory.
        await cloud.server.stop_listening()
        await cloud.hub.stopService()
        hub2 = await start_hub(self, [cloud.server.url], credentials=cloud.hub.credentials, cache={"dir": cache_dir, "agents": ["kubelet", "kube-proxy", "flanneld", "coredns"]})
        await wait_until(lambda: not hub2.failover.any_healthy())
        base = f"http://127.0.0.1:{hub2.port_of('listen.proxy')}"

        for (agent, path), body in online.items():
            code, headers, offline = await fetch(self, b"GET", base + path, {b"user-agent": [agent.encode()]})
            self.assertEqual(code, 200, (agent, path, offline))
            expected = items_of(body)
            if agent.startswith("kubelet") and "pods" in path:
                self.assertIn(("default", "late-pod"), items_of(offline))
                expected = {k: v for k, v in items_of(offline).items() if k in expected or k == ("default", "late-pod")}
            self.assertEqual(items_of(offline), expected, (agent, path))

        # Other selectors than the ones used online, evaluated on the cached objects.
        code, _, body = await fetch(self, b"GET", base + "/api/v1/pods?labelSelector=app%20in%20(web,late)", {b"user-agent": [b"kubelet/v1.31.0"]})
        self.assertEqual(code, 200)
        names = sorted(n for _, n in items_of(body))
        self.assertTrue(names and all(n.startswith(("web", "late")) for n in names), names)
        code, _, body = await fetch(self, b"GET", base + "/api/v1/pods?fieldSelector=status.phase%3DRunning,metadata.namespace%3Ddefault", {b"user-agent": [b"kubelet/v1.31.0"]})
        self.assertEqual(code, 200)
        self.assertTrue(all(i["status"]["phase"] == "Running" for i in items_of(body).values()))

        # kubectl offline, with a fresh discovery cache of its own.
        hub_url = base
        env_home = os.path.abspath(self.mktemp())
        os.makedirs(env_home)
        from twisted.internet import utils

        async def kubectl(*args: str) -> tuple[bytes, bytes, int]:
            return await utils.getProcessOutputAndValue(
                KUBECTL, ["--server", hub_url, "--cache-dir", os.path.join(env_home, "cache"), *args],
                env={"HOME": env_home, "KUBECONFIG": "/dev/null", "PATH": os.environ.get("PATH", "/usr/bin")}, reactor=reactor,
            )

        out, err, code = await kubectl("get", "pods", "-A")
        self.assertEqual(code, 0, err)
        self.assertIn(b"late-pod", out)
        out, err, code = await kubectl("get", "nodes")
        self.assertEqual(code, 0, err)
        self.assertIn(b"edge-1", out)
        out, err, code = await kubectl("get", "pods", "-o", "json", "-l", "app=web")
        self.assertEqual(code, 0, err)
        self.assertTrue(json.loads(out)["items"])

        # An offline watch is held open, then closed once the cloud is back.
        offline_watch = await raw_connect(self, hub2.port_of("listen.proxy"))
        offline_watch.transport.write(b"GET /api/v1/pods?watch=true HTTP/1.1\r\nHost: x\r\nUser-Agent: kubelet/v1.31.0\r\n\r\n")  # type: ignore[union-attr]
        await offline_watch.wait_for(lambda b: b"\r\n\r\n" in b)
        self.assertTrue(offline_watch.received.startswith(b"HTTP/1.1 200"))
        await cloud.server.start_listening()
        await offline_watch.wait_for(lambda b: b.endswith(b"0\r\n\r\n"), timeout=hub2.config.health_check.interval_seconds + 2)
        # Re-established online: a new watch gets the cloud's events again.
        again = await raw_connect(self, hub2.port_of("listen.proxy"))
        again.transport.write(b"GET /api/v1/pods?watch=true HTTP/1.1\r\nHost: x\r\nUser-Agent: kubelet/v1.31.0\r\n\r\n")  # type: ignore[union-attr]
        await again.wait_for(lambda b: b"ADDED" in b)
        cloud.server.create({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "after-pod", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        })
        await again.wait_for(lambda b: b"after-pod" in b)
        self.assertIsInstance(hub2, YurtHub)


class ProcessRestartTests(TestCase):
    """The real ``twistd yurthub`` process: cache online, stop, restart offline, same answers."""

    timeout = 120

    async def test_a_restarted_process_answers_from_the_cache(self) -> None:
        import sys

        from tests.e2e.test_demo import free_port
        from tests.e2e.test_kubectl import LineCollector
        from yurthub.testing.apiserver import SimulatedAPIServer
        from yurthub.testing.demo import seed_pods

        server = SimulatedAPIServer(reactor)
        seed_pods(server, 30)
        await server.start("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.stop)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        config = os.path.join(workdir, "yurthub.yaml")
        with open(config, "w") as f:
            f.write("healthCheck: {intervalSeconds: 0.2, timeoutSeconds: 1, healthyThreshold: 1, unhealthyThreshold: 1}\n")
        proxy, hub = free_port(), free_port()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        argv = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "yurthub", "--config", config,
            "--server", server.url, "--node-name", "edge-1", "--cache-dir", os.path.join(workdir, "cache"),
            "--proxy-listen", f"tcp:{proxy}:interface=127.0.0.1", "--hub-listen", f"tcp:{hub}:interface=127.0.0.1",
            "--secure-listen", "",
        ]

        running: list[tuple[Any, Any]] = []

        def stop_all() -> Any:
            alive = [(p, c) for p, c in running if p.pid is not None]
            for process, _ in alive:
                process.signalProcess("KILL")
            return defer.gatherResults([c.ended for _, c in alive])

        self.addCleanup(stop_all)

        async def run_yurthub() -> Any:
            collector = LineCollector()
            process = reactor.spawnProcess(collector, sys.executable, argv, env={**os.environ, "PYTHONPATH": root})  # type: ignore[attr-defined]
            running.append((process, collector))
            for _ in range(200):
                try:
                    code, _, _ = await fetch(self, b"GET", f"http://127.0.0.1:{hub}/v1/readyz")
                    if code == 200:
                        break
                except Exception:
                    pass
                await sleep(0.05)
            return process, collector

        async def stop(process: Any, collector: Any) -> None:
            process.signalProcess("TERM")
            await collector.ended

        kubelet = {b"user-agent": [b"kubelet/v1.31.0"], b"accept": [b"application/json"]}
        url = f"http://127.0.0.1:{proxy}/api/v1/pods"
        process, collector = await run_yurthub()
        code, _, online = await fetch(self, b"GET", url, kubelet)
        self.assertEqual(code, 200)
        await stop(process, collector)  # a clean stop drains the writer

        await server.stop_listening()
        process, collector = await run_yurthub()
        for _ in range(100):
            _, _, readyz = await fetch(self, b"GET", f"http://127.0.0.1:{hub}/v1/readyz?verbose")
            if b"answering from the cache" in readyz:
                break
            await sleep(0.05)
        code, _, offline = await fetch(self, b"GET", url, kubelet)
        self.assertEqual(code, 200, offline)
        self.assertEqual(items_of(offline), items_of(online))
        self.assertEqual(len(items_of(offline)), 30)
