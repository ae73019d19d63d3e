"""Tests for cache housekeeping (yurthub/cache/gc.py)."""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.offline_support import feed_answer, make_manager, pod, pod_list
from tests.support import sleep, start_hub
from yurthub.cache.gc import EVENTS, PODS, CacheJanitor
from yurthub.cache.keys import CacheKey
from yurthub.testing.apiserver import SimulatedAPIServer
from yurthub.testing.demo import make_pod
from yurthub.testing.memory_store import MemoryObjectStore


class EventExpiryTests(SynchronousTestCase):
    """Cached events older than an hour are removed."""

    def test_old_events_expire_and_recent_ones_stay(self) -> None:
        store = MemoryObjectStore()
        clock = Clock()
        clock.advance(1_795_680_000)  # 2026-11-26T...
        janitor = CacheJanitor(clock, store, None, None)  # type: ignore[arg-type]

        def event(name: str, stamp: str) -> bytes:
            return json.dumps({"metadata": {"name": name, "namespace": "default", "creationTimestamp": stamp}, "lastTimestamp": stamp}).encode()

        store.put(CacheKey("kubelet", EVENTS, "default", "old"), "1", event("old", "2026-11-26T05:00:00Z"))
        store.put(CacheKey("kubelet", EVENTS, "default", "new"), "2", event("new", "2026-11-26T07:50:00Z"))
        janitor.start()  # runs now
        self.assertEqual([k.name for k, _ in store.list("kubelet", EVENTS, None)], ["new"])
        clock.advance(3 * 3600)  # the loop runs again
        self.assertEqual(store.list("kubelet", EVENTS, None), [])
        janitor.stop()


class PodCollectionTests(TestCase):
    """At start-up while online, cached kubelet pods the cloud no longer has are removed."""

    async def start(self, pods_in_cloud: list[str], cached: list[str]):  # type: ignore[no-untyped-def]
        server = SimulatedAPIServer(reactor)
        for name in pods_in_cloud:
            server.create(make_pod(name, "default", "edge-1"))
        await server.start("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.stop)
        manager = make_manager()
        feed_answer(manager, b"GET", b"/api/v1/pods", pod_list(*(pod(n) for n in cached)))
        hub = await start_hub(self, [server.url], store=manager.store, cache={"dir": os.path.abspath(self.mktemp())})
        for _ in range(100):  # the hub collects by itself once it is up and online
            if hub.janitor.pods_collected:
                break
            await sleep(0.05)
        self.assertTrue(hub.janitor.pods_collected)
        return hub, manager.store

    async def test_gone_pods_are_removed(self) -> None:
        hub, store = await self.start(["a", "b"], ["a", "b", "c"])
        self.assertEqual([k.name for k, _ in store.list("kubelet", PODS, None)], ["a", "b"])

    async def test_never_all_at_once(self) -> None:
        hub, store = await self.start(["x"], ["a", "b"])
        self.assertEqual(len(store.list("kubelet", PODS, None)), 2)
