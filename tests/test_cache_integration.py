"""The cache inside a running yurthub: disk failures and broken upstreams never reach the
client's answer, are counted and shown, and the next list repairs the cache."""

from __future__ import annotations

import errno
import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseFailed
from twisted.web.server import NOT_DONE_YET, Request

from tests.support import fetch, listen_site, sleep, start_hub
from tests.test_remote_proxy import Upstream
from yurthub.cache.keys import GVR
from yurthub.cache.store import FilesystemObjectStore, _Disk
from yurthub.testing.apiserver import SimulatedAPIServer
from yurthub.testing.demo import seed_pods

PODS = GVR("", "v1", "pods")
KUBELET = {b"user-agent": [b"kubelet/v1.31.0"], b"accept": [b"application/vnd.kubernetes.protobuf, application/json"]}


class FullDisk(_Disk):
    """A disk that answers ENOSPC to every file write while ``full``."""

    full = False

    def write_atomic(self, path: str, data: bytes) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        super().write_atomic(path, data)


class DiskFailureTests(TestCase):
    """A full disk: answers stay whole, the failure is counted and shown, then repaired."""

    timeout = 60

    async def test_full_disk_never_hurts_the_answer_and_the_next_list_repairs(self) -> None:
        server = SimulatedAPIServer(reactor)
        seed_pods(server, 50)
        await server.start("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.stop)
        disk = FullDisk()
        directory = os.path.abspath(self.mktemp())
        store = FilesystemObjectStore(directory, reactor=reactor, disk=disk)
        hub = await start_hub(self, [server.url], store=store, cache={"dir": directory})
        proxy = f"http://127.0.0.1:{hub.port_of('listen.proxy')}"
        hub_url = f"http://127.0.0.1:{hub.port_of('listen.hub')}"

        disk.full = True
        code, _, body = await fetch(self, b"GET", proxy + "/api/v1/pods", KUBELET)
        _, _, direct = await fetch(self, b"GET", server.url + "/api/v1/pods")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["items"], json.loads(direct)["items"])
        for _ in range(100):  # decoded in a thread, then (failing to be) written
            await store.flush()
            if store.health.degraded:
                break
            await sleep(0.05)
        self.assertTrue(store.health.degraded)
        _, _, metrics = await fetch(self, b"GET", hub_url + "/metrics")
        self.assertRegex(metrics.decode(), r"yurthub_cache_disk_errors_total [1-9]")
        self.assertIn("yurthub_cache_degraded 1.0", metrics.decode())
        code, _, readyz = await fetch(self, b"GET", hub_url + "/v1/readyz")
        self.assertEqual(code, 503)
        self.assertIn(b"[-]cache failed: degraded", readyz)
        self.assertIn(b"ENOSPC", readyz)

        disk.full = False
        await fetch(self, b"GET", proxy + "/api/v1/pods", KUBELET)
        for _ in range(100):  # the list is decoded in a thread, then written: wait for both
            await store.flush()
            if not store.health.degraded:
                break
            await sleep(0.05)
        self.assertFalse(store.health.degraded, store.health.detail())
        on_disk = os.listdir(os.path.join(directory, "kubelet", "pods.v1.core", "default"))
        self.assertEqual(len(on_disk), 50)


class BrokenUpstreamTests(TestCase):
    """An upstream that dies mid-list or sends garbage leaves the cache as it was."""

    async def test_truncated_or_garbage_lists_change_nothing(self) -> None:
        upstream = Upstream()
        good = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "5"},
                "items": [{"metadata": {"name": n, "namespace": "default", "resourceVersion": "5"}} for n in ("a", "b")]}
        mode = {"now": "good"}

        def pods(request: Request) -> object:
            request.setHeader(b"content-type", b"application/json")
            if mode["now"] == "good":
                return json.dumps(good).encode()
            if mode["now"] == "garbage":
                return b'{"kind":"PodList","items":[{"metadata":{"name":"zzz"'
            request.setHeader(b"content-length", b"100000")
            request.write(b'{"kind":"PodList","metadata":{"resourceVersion":"9"},"items":[')
            reactor.callLater(0.05, request.channel.transport.abortConnection)  # type: ignore[attr-defined]
            return NOT_DONE_YET

        upstream.handlers[b"/api/v1/pods"] = pods
        port = await listen_site(self, upstream)
        hub = await start_hub(self, [f"http://127.0.0.1:{port}"])
        proxy = f"http://127.0.0.1:{hub.port_of('listen.proxy')}/api/v1/pods"
        code, _, _ = await fetch(self, b"GET", proxy, KUBELET)
        self.assertEqual(code, 200)
        for _ in range(100):  # decoded in a thread, then applied: the answer may be out first
            await hub.cache.drain()
            await hub.store.flush()
            if hub.store.list("kubelet", PODS, None):
                break
            await sleep(0.02)
        before = [(k.name, d) for k, d in hub.store.list("kubelet", PODS, None)]
        self.assertEqual([n for n, _ in before], ["a", "b"])
        mode["now"] = "garbage"
        code, _, _ = await fetch(self, b"GET", proxy, KUBELET)
        self.assertEqual(code, 200)  # passed on as it came
        mode["now"] = "truncated"
        with self.assertRaises(ResponseFailed):  # the client sees the cut, not a short list
            await fetch(self, b"GET", proxy, KUBELET)
        await hub.cache.drain()
        await hub.store.flush()
        self.assertEqual([(k.name, d) for k, d in hub.store.list("kubelet", PODS, None)], before)
        self.assertIn(b'yurthub_cache_errors_total{kind="decode"} 1.0', hub.metrics.render())
