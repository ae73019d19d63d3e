"""Objects packed in memory (`ObjectIndex.pack`, done by the store's writer when idle)
read back byte for byte and keep every resourceVersion rule."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.offline_support import make_manager
from tests.support import wait_until
from yurthub.cache.keys import GVR, CacheKey
from yurthub.cache.store import PACK_MIN_SIZE, FilesystemObjectStore, ListItems, ObjectIndex
from yurthub.requestinfo import parse_request_info

PODS = GVR("", "v1", "pods")


def key(name: str, namespace: str = "default") -> CacheKey:
    return CacheKey("kubelet", PODS, namespace, name)


def big_pod(name: str, rv: str, namespace: str = "default") -> bytes:
    """A pod of a realistic size (~1.5 KB), most of its text shared with its siblings."""
    obj: dict[str, Any] = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": rv,
            "labels": {"app": name},
        },
        "spec": {
            "containers": [
                {
                    "name": f"c{i}",
                    "image": "registry.k8s.io/nginx:1.27.2",
                    "args": ["--port", str(8080 + i)],
                }
                for i in range(12)
            ]
        },
    }
    return json.dumps(obj, separators=(",", ":")).encode()


def packed_all(index: ObjectIndex) -> int:
    count = 0
    while index.packable:
        count += index.pack(3)
    return count


class ObjectIndexPackingTests(TestCase):
    def filled(self) -> tuple[ObjectIndex, dict[CacheKey, bytes]]:
        index = ObjectIndex()
        objects = {
            key(f"web-{n}", ns): big_pod(f"web-{n}", str(10 + n), ns)
            for n in range(7)
            for ns in ("a", "b")
        }
        objects[key("tiny")] = b'{"metadata":{"name":"tiny","resourceVersion":"3"}}'
        for k, data in objects.items():
            index.set(k, json.loads(data)["metadata"]["resourceVersion"], data)
        return index, objects

    def test_packed_objects_read_back_byte_for_byte(self) -> None:
        index, objects = self.filled()
        before = (index.list("kubelet", PODS), [index.entry(k) for k in objects], index.generation)
        self.assertEqual(packed_all(index), 14)
        self.assertFalse(index.packable)
        after = (index.list("kubelet", PODS), [index.entry(k) for k in objects], index.generation)
        self.assertEqual(after, before)
        for k, data in objects.items():
            self.assertEqual(index.get(k), data)
        self.assertEqual({e[0]: e[2] for e in index.entries()}, objects)

    def test_packing_shrinks_big_objects_and_leaves_small_ones(self) -> None:
        index, objects = self.filled()
        packed_all(index)
        slot = index._slot_of(key("web-3", "a"))
        self.assertIsInstance(slot, tuple)
        self.assertLess(len(slot[1]), len(objects[key("web-3", "a")]) // 4)  # type: ignore[index]
        self.assertLess(len(objects[key("tiny")]), PACK_MIN_SIZE)
        self.assertIs(index._slot_of(key("tiny")), objects[key("tiny")])

    def test_version_rules_hold_for_packed_objects(self) -> None:
        index, objects = self.filled()
        packed_all(index)
        self.assertFalse(index.put(key("web-1", "a"), "11", big_pod("web-1", "11", "a")))
        self.assertFalse(index.delete(key("web-1", "a"), "5"))
        self.assertTrue(index.put(key("web-1", "a"), "99", big_pod("web-1", "99", "a")))
        self.assertEqual(index.get(key("web-1", "a")), big_pod("web-1", "99", "a"))
        self.assertTrue(index.packable)  # the new copy is packed in its turn
        packed_all(index)
        self.assertEqual(index.entry(key("web-1", "a")), ("99", big_pod("web-1", "99", "a")))
        index.forget_versions()
        self.assertEqual(index.entry(key("web-2", "b")), ("", objects[key("web-2", "b")]))
        self.assertTrue(index.put(key("web-2", "b"), "1", big_pod("web-2", "1", "b")))

    def test_a_list_replacement_sees_packed_objects(self) -> None:
        index, objects = self.filled()
        packed_all(index)
        items = ListItems("kubelet", PODS)
        items.add(key("web-0", "a"), "10", objects[key("web-0", "a")])
        seen: list[bytes] = []
        changed = index.replace(
            "kubelet", PODS, "a", items, "100", lambda k, data: seen.append(data) or True
        )
        self.assertEqual(
            sorted(seen),
            sorted(data for k, data in objects.items() if k.namespace == "a" and k.name != "web-0"),
        )
        self.assertEqual(len(changed), 6)
        self.assertEqual(index.get(key("web-0", "a")), objects[key("web-0", "a")])


class StorePackingTests(TestCase):
    async def test_the_writer_packs_when_idle_and_releases_memory(self) -> None:
        released: list[bool] = []
        directory = self.mktemp()
        store = FilesystemObjectStore(
            directory, reactor=reactor, release_memory=lambda: released.append(True)
        )
        await store.load()
        self.addCleanup(store.close)
        objects = {key(f"web-{n}"): big_pod(f"web-{n}", str(n + 1)) for n in range(50)}
        for k, data in objects.items():
            store.put(k, json.loads(data)["metadata"]["resourceVersion"], data)
        await store.flush()
        await wait_until(lambda: released, what="packed and released")
        self.assertFalse(store._index.packable)
        self.assertEqual(dict(store.list("kubelet", PODS)), objects)
        for k, data in objects.items():
            with open(os.path.join(directory, *k.parts), "rb") as f:
                self.assertEqual(f.read(), data)
        # A write after packing reaches disk as given.
        store.put(key("web-7"), "100", big_pod("web-7", "100"))
        await store.flush()
        with open(os.path.join(directory, *key("web-7").parts), "rb") as f:
            self.assertEqual(f.read(), big_pod("web-7", "100"))


class ObjectLookupTests(TestCase):
    """`CacheManager.object` finds what a get reads without reading the other objects."""

    def test_object_is_what_objects_would_find(self) -> None:
        cache = make_manager(("kubelet", "kube-proxy"))
        cache.store.put(key("web-1"), "5", big_pod("web-1", "5"))
        cache.store.put(key("web-2"), "6", big_pod("web-2", "6"))
        other = CacheKey("kube-proxy", PODS, "default", "only-there")
        cache.store.put(other, "7", big_pod("only-there", "7"))
        for agent, name in [
            ("kubelet", "web-1"),
            ("kubelet", "only-there"),  # kubelet has pods: what it has not cached is absent
            ("kubectl", "only-there"),  # not an agent: every component's newest copy
            ("kubectl", "web-2"),
            ("kubelet", "Not-A-Valid-Name"),
        ]:
            info = parse_request_info(
                "GET", f"/api/v1/namespaces/default/pods/{name}", f"{agent}/v1"
            )
            expected = next((o for o in cache.objects(info, "default") if o.key.name == name), None)
            found = cache.object(info)
            self.assertEqual(
                (found.key, found.data) if found else None,
                (expected.key, expected.data) if expected else None,
                (agent, name),
            )
