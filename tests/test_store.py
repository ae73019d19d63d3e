"""Tests for `yurthub.cache.store` and `yurthub.testing.memory_store`.

The semantic rules (resourceVersion ordering, list replacement, sorting, documents) are
written once in `StoreSemanticsMixin` and run against both stores. The filesystem store's
writer thread runs on the real reactor; faults and crashes are injected through a `_Disk`
whose every step can be counted, failed with an errno, held at a gate or turned into a
crash that stops the writer dead.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import TYPE_CHECKING, Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

import yurthub.cache.store as store_module
from yurthub.cache.keys import GVR, CacheKey, InvalidKey
from yurthub.cache.store import (
    DOCUMENTS_DIR,
    JOURNAL_DIR,
    TEMP_PREFIX,
    FilesystemObjectStore,
    ListItems,
    ObjectIndex,
    StoreError,
    StoreHealth,
    _Disk,
    check_document_name,
    is_as_new,
    is_newer,
    peek_resource_version,
)
from yurthub.interfaces import IObjectStore
from yurthub.testing.memory_store import MemoryObjectStore

PODS = GVR("", "v1", "pods")
NODES = GVR("", "v1", "nodes")
SERVICES = GVR("", "v1", "services")
SLICES = GVR("discovery.k8s.io", "v1", "endpointslices")


def pod_key(name: str, namespace: str = "default", component: str = "kubelet") -> CacheKey:
    return CacheKey(component, PODS, namespace, name)


def pod(name: str, rv: str, namespace: str = "default", **labels: str) -> bytes:
    """A pod's JSON bytes, as the cloud would send them."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "resourceVersion": rv}
    if labels:
        meta["labels"] = labels
    return json.dumps(
        {"apiVersion": "v1", "kind": "Pod", "metadata": meta}, separators=(",", ":")
    ).encode()


def write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def files_under(directory: str) -> dict[str, bytes]:
    """Every regular file below ``directory`` (relative path -> bytes), symlinks not followed."""
    out = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    out[os.path.relpath(path, directory)] = f.read()
    return out


def temp_files(directory: str) -> list[str]:
    return [p for p in files_under(directory) if os.path.basename(p).startswith(TEMP_PREFIX)]


def journals(directory: str) -> list[str]:
    journal_dir = os.path.join(directory, DOCUMENTS_DIR, JOURNAL_DIR)
    return os.listdir(journal_dir) if os.path.isdir(journal_dir) else []


class Crash(BaseException):
    """A simulated crash: the writer thread stops where it is, nothing cleans up."""


class ScriptedDisk(_Disk):
    """A `_Disk` whose steps (every system call that changes the disk) can be counted once
    ``armed``, failed with an errno (``faults[step_name]``), turned into a `Crash` at step
    ``crash_at``, or held at ``gate`` when a temp file is about to be created."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.steps = 0
        self.step_names: list[str] = []
        self.crash_at: int | None = None
        self.crashed = threading.Event()
        self.faults: dict[str, int] = {}
        self.renamed: list[str] = []
        self.gate: threading.Event | None = None
        self.waiting = threading.Event()

    def _step(self, name: str, path: str) -> None:
        gate = self.gate
        if gate is not None and name == "create_temp":
            self.waiting.set()
            if not gate.wait(10):
                raise RuntimeError("the test never opened the gate")
        if not self.armed:
            return
        if self.crash_at is not None and self.steps == self.crash_at:
            self.crashed.set()
            raise Crash(f"crash at step {self.steps} ({name} {path})")
        self.steps += 1
        self.step_names.append(name)
        code = self.faults.get(name)
        if code:
            raise OSError(code, os.strerror(code), path)

    def makedir(self, path: str) -> bool:
        self._step("makedir", path)
        return super().makedir(path)

    def create_temp(self, directory: str, name: str | None = None) -> tuple[int, str]:
        self._step("create_temp", directory)
        return super().create_temp(directory, name)

    def write(self, fd: int, data: bytes) -> None:
        self._step("write", str(fd))
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._step("fsync", str(fd))
        super().fsync(fd)

    def close(self, fd: int) -> None:
        self._step("close", str(fd))
        super().close(fd)

    def rename(self, source: str, target: str) -> None:
        self._step("rename", target)
        super().rename(source, target)
        self.renamed.append(target)

    def unlink(self, path: str) -> None:
        self._step("unlink", path)
        super().unlink(path)

    def fsync_dir(self, path: str) -> None:
        self._step("fsync_dir", path)
        super().fsync_dir(path)

    def writes_to(self, path: str) -> int:
        """How many times a file was renamed into place at ``path``."""
        return self.renamed.count(path)


# --- semantics shared by both stores ---------------------------------------------------


if TYPE_CHECKING:
    _MixinBase = TestCase
else:
    _MixinBase = object


class StoreSemanticsMixin(_MixinBase):
    """What every `IObjectStore` promises; the test case supplies `make_store`."""

    def make_store(self) -> defer.Deferred[Any]:
        raise NotImplementedError

    @defer.inlineCallbacks
    def test_provides_the_object_store_interface(self):
        store = yield self.make_store()
        self.assertTrue(verifyObject(IObjectStore, store))
        self.assertIsInstance(store.health, StoreHealth)

    @defer.inlineCallbacks
    def test_get_returns_the_bytes_that_were_put(self):
        store = yield self.make_store()
        data = pod("web-1", "5")
        self.assertTrue(store.put(pod_key("web-1"), "5", data))
        self.assertIs(store.get(pod_key("web-1")), data)
        self.assertIsNone(store.get(pod_key("web-2")))
        self.assertIsNone(store.get(CacheKey("kube-proxy", PODS, "default", "web-1")))

    @defer.inlineCallbacks
    def test_list_is_sorted_by_namespace_and_name(self):
        store = yield self.make_store()
        for ns, name in [
            ("kube-system", "b"),
            ("default", "z"),
            ("kube-system", "a"),
            ("default", "a"),
        ]:
            store.put(pod_key(name, ns), "1", pod(name, "1", ns))
        listed = [(k.namespace, k.name) for k, _ in store.list("kubelet", PODS)]
        self.assertEqual(
            listed, [("default", "a"), ("default", "z"), ("kube-system", "a"), ("kube-system", "b")]
        )
        self.assertEqual(
            [k.name for k, _ in store.list("kubelet", PODS, "kube-system")], ["a", "b"]
        )
        self.assertEqual(store.list("kubelet", PODS, "other"), [])

    @defer.inlineCallbacks
    def test_list_holds_one_component_and_resource(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "1", pod("a", "1"))
        store.put(pod_key("b", component="kube-proxy"), "1", pod("b", "1"))
        store.put(CacheKey("kubelet", NODES, "", "edge-1"), "1", b'{"metadata":{}}')
        self.assertEqual([k.name for k, _ in store.list("kubelet", PODS)], ["a"])
        self.assertEqual([k.name for k, _ in store.list("kubelet", NODES)], ["edge-1"])
        self.assertEqual(store.list("coredns", PODS), [])
        self.assertEqual(store.components(), ["kube-proxy", "kubelet"])

    @defer.inlineCallbacks
    def test_older_put_is_ignored(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "10", pod("a", "10"))
        self.assertFalse(store.put(pod_key("a"), "9", pod("a", "9")))
        self.assertEqual(store.get(pod_key("a")), pod("a", "10"))

    @defer.inlineCallbacks
    def test_put_at_the_same_resource_version_is_ignored(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "10", pod("a", "10"))
        self.assertFalse(store.put(pod_key("a"), "10", b"{}"))
        self.assertEqual(store.get(pod_key("a")), pod("a", "10"))

    @defer.inlineCallbacks
    def test_resource_versions_compare_as_numbers(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "9", pod("a", "9"))
        self.assertTrue(store.put(pod_key("a"), "10", pod("a", "10")))
        self.assertFalse(store.put(pod_key("a"), "010", pod("a", "010")))

    @defer.inlineCallbacks
    def test_unknown_resource_versions_take_the_newer_write(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "10", pod("a", "10"))
        self.assertTrue(store.put(pod_key("a"), "", b"1"))
        self.assertTrue(store.put(pod_key("a"), "opaque", b"2"))
        self.assertTrue(store.put(pod_key("a"), "5", b"3"))
        self.assertEqual(store.get(pod_key("a")), b"3")

    @defer.inlineCallbacks
    def test_delete_removes_the_object(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "10", pod("a", "10"))
        store.delete(pod_key("a"), "11")
        self.assertIsNone(store.get(pod_key("a")))
        self.assertEqual(store.list("kubelet", PODS), [])
        self.assertEqual(store.components(), [])
        store.delete(pod_key("a"))  # deleting what is not there is fine

    @defer.inlineCallbacks
    def test_delete_without_version_removes_whatever_is_cached(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "10", pod("a", "10"))
        store.delete(pod_key("a"))
        self.assertIsNone(store.get(pod_key("a")))

    @defer.inlineCallbacks
    def test_delete_of_an_older_version_keeps_the_newer_copy(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "10", pod("a", "10"))
        store.delete(pod_key("a"), "9")
        self.assertEqual(store.get(pod_key("a")), pod("a", "10"))
        store.delete(pod_key("a"), "10")
        self.assertIsNone(store.get(pod_key("a")))

    @defer.inlineCallbacks
    def test_replace_makes_the_list_the_whole_set(self):
        store = yield self.make_store()
        for name in "abc":
            store.put(pod_key(name), "1", pod(name, "1"))
        store.replace(
            "kubelet",
            PODS,
            None,
            {pod_key("a"): ("5", pod("a", "5")), pod_key("d"): ("4", pod("d", "4"))},
            "5",
        )
        self.assertEqual(
            [(k.name, d) for k, d in store.list("kubelet", PODS)],
            [("a", pod("a", "5")), ("d", pod("d", "4"))],
        )

    @defer.inlineCallbacks
    def test_replace_keeps_cached_copies_newer_than_the_listed_ones(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "7", pod("a", "7"))
        store.replace("kubelet", PODS, None, {pod_key("a"): ("5", pod("a", "5"))}, "5")
        self.assertEqual(store.get(pod_key("a")), pod("a", "7"))

    @defer.inlineCallbacks
    def test_replace_keeps_objects_that_appeared_after_the_list(self):
        store = yield self.make_store()
        store.put(pod_key("new"), "8", pod("new", "8"))
        store.put(pod_key("old"), "3", pod("old", "3"))
        store.put(pod_key("same"), "5", pod("same", "5"))
        store.replace("kubelet", PODS, None, {}, "5")
        self.assertEqual([k.name for k, _ in store.list("kubelet", PODS)], ["new"])

    @defer.inlineCallbacks
    def test_replace_with_an_unknown_list_version_removes_what_is_missing(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "8", pod("a", "8"))
        store.replace("kubelet", PODS, None, {}, "")
        self.assertEqual(store.list("kubelet", PODS), [])

    @defer.inlineCallbacks
    def test_replace_of_a_namespace_leaves_other_namespaces(self):
        store = yield self.make_store()
        store.put(pod_key("a", "default"), "1", pod("a", "1", "default"))
        store.put(pod_key("a", "kube-system"), "1", pod("a", "1", "kube-system"))
        store.replace("kubelet", PODS, "default", {}, "5")
        self.assertEqual(
            [(k.namespace, k.name) for k, _ in store.list("kubelet", PODS)], [("kube-system", "a")]
        )

    @defer.inlineCallbacks
    def test_replace_removes_only_what_the_list_covers(self):
        store = yield self.make_store()
        store.put(pod_key("mine"), "1", pod("mine", "1", app="web"))
        store.put(pod_key("other"), "1", pod("other", "1", app="db"))

        def covered(key: CacheKey, data: bytes) -> bool:
            return json.loads(data)["metadata"].get("labels", {}).get("app") == "web"

        store.replace("kubelet", PODS, None, {}, "5", covered)
        self.assertEqual([k.name for k, _ in store.list("kubelet", PODS)], ["other"])

    @defer.inlineCallbacks
    def test_replace_leaves_other_components_and_resources(self):
        store = yield self.make_store()
        store.put(pod_key("a", component="kube-proxy"), "1", pod("a", "1"))
        store.put(CacheKey("kubelet", NODES, "", "edge-1"), "1", b"{}")
        store.replace("kubelet", PODS, None, {}, "5")
        self.assertEqual(len(store.list("kube-proxy", PODS)), 1)
        self.assertEqual(len(store.list("kubelet", NODES)), 1)

    @defer.inlineCallbacks
    def test_replace_refuses_objects_outside_its_scope(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "1", pod("a", "1"))
        for stray in (
            pod_key("x", component="kube-proxy"),
            CacheKey("kubelet", NODES, "", "x"),
            pod_key("x", "other"),
        ):
            self.assertRaises(
                ValueError, store.replace, "kubelet", PODS, "default", {stray: ("2", b"{}")}, "2"
            )
        self.assertEqual([k.name for k, _ in store.list("kubelet", PODS)], ["a"])

    @defer.inlineCallbacks
    def test_replace_changes_nothing_when_covered_raises(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "1", pod("a", "1"))

        def covered(key: CacheKey, data: bytes) -> bool:
            raise RuntimeError("boom")

        self.assertRaises(
            RuntimeError,
            store.replace,
            "kubelet",
            PODS,
            None,
            {pod_key("b"): ("2", b"{}")},
            "2",
            covered,
        )
        self.assertEqual([k.name for k, _ in store.list("kubelet", PODS)], ["a"])

    @defer.inlineCallbacks
    def test_documents_are_stored_by_name(self):
        store = yield self.make_store()
        self.assertIsNone(store.get_document("discovery.api.v1"))
        store.put_document("discovery.api.v1", b'{"kind":"APIResourceList"}')
        self.assertEqual(store.get_document("discovery.api.v1"), b'{"kind":"APIResourceList"}')

    @defer.inlineCallbacks
    def test_invalid_document_names_are_refused(self):
        store = yield self.make_store()
        for name in ("", "../x", "a/b", "UPPER", ".hidden", "journal", "a\0b", "x" * 201):
            self.assertRaises(InvalidKey, store.put_document, name, b"{}")


    @defer.inlineCallbacks
    def test_list_gives_back_keys_equal_to_those_put(self):
        store = yield self.make_store()
        keys = [
            pod_key("b", "kube-system"),
            pod_key("a"),
            CacheKey("kubelet", NODES, "", "edge-1"),
            CacheKey("kubelet", SLICES, "default", "web-x1"),
        ]
        for key in keys:
            store.put(key, "1", pod(key.name, "1", key.namespace))
        listed = [
            key
            for gvr in (PODS, NODES, SLICES)
            for key, _ in store.list("kubelet", gvr)
        ]
        self.assertEqual(listed, [keys[1], keys[0], keys[2], keys[3]])
        for key in listed:
            self.assertIs(type(key), CacheKey)
            self.assertEqual(hash(key), hash(CacheKey(key.component, key.gvr, key.namespace, key.name)))
            self.assertIsNotNone(store.get(key))
        self.assertEqual({k for k, _ in store.list("kubelet", PODS, "default")}, {keys[1]})

    @defer.inlineCallbacks
    def test_a_resource_version_the_bytes_do_not_give_back_is_kept(self):
        store = yield self.make_store()
        odd = {
            "a": (b'{"metadata": {"name": "a", "resourceVersion": "5"}}', "9"),  # spaced
            "b": (pod("b", "5"), "9"),  # the bytes say 5, the caller 9
            "c": (b'{"metadata":{"name":"c","resourceVersion":"\\u0039"}}', "9"),  # escaped
            "d": (b'{"metadata":{"name":"d"}}', "9"),  # none in the bytes
        }
        for name, (data, rv) in odd.items():
            self.assertTrue(store.put(pod_key(name), rv, data))
        for name, (data, _) in odd.items():
            self.assertFalse(store.put(pod_key(name), "8", pod(name, "8")), name)
            self.assertIs(store.get(pod_key(name)), data)
        store.replace("kubelet", PODS, None, {}, "8")  # all newer than the list: kept
        self.assertEqual(len(store.list("kubelet", PODS)), 4)
        store.replace("kubelet", PODS, None, {}, "9")
        self.assertEqual(store.list("kubelet", PODS), [])

    @defer.inlineCallbacks
    def test_many_objects_keep_little_memory_beside_their_bytes(self):
        # Per object the index holds its name and bytes; nothing of the list (keys,
        # tuples, the mapping it came in) stays once the replacement is written.
        store = yield self.make_store()
        count = 2000
        gc.collect()
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        objects = {}
        for n in range(count):
            objects[pod_key(f"pod-{n:05d}", "bulk")] = (str(100 + n), pod(f"pod-{n:05d}", str(100 + n), "bulk"))
        store.replace("kubelet", PODS, "bulk", objects, "5000")
        del objects
        yield store.flush()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        data = sum(sys.getsizeof(d) for _, d in store.list("kubelet", PODS, "bulk"))
        self.assertEqual(len(store), count)
        # name (~64 bytes) and a dict slot (~50): ~115; a key, a tuple and copies of the
        # namespace and resourceVersion would be ~230 more.
        self.assertLess((held - data) / count, 150)


class MemoryObjectStoreTests(StoreSemanticsMixin, TestCase):
    """The in-memory store keeps the same rules as the filesystem store."""

    def make_store(self) -> defer.Deferred[Any]:
        store = MemoryObjectStore()
        return store.load().addCallback(lambda _: store)

    @defer.inlineCallbacks
    def test_counts_only_writes_that_change_something(self):
        store = yield self.make_store()
        store.put(pod_key("a"), "2", pod("a", "2"))
        store.put(pod_key("a"), "2", pod("a", "2"))
        store.put(pod_key("a"), "1", pod("a", "1"))
        store.replace("kubelet", PODS, None, {pod_key("a"): ("2", pod("a", "2"))}, "2")
        self.assertEqual(store.writes, 1)
        yield store.flush()
        yield store.close()
        self.assertFalse(store.health.degraded)
        self.assertEqual(store.health.pending, 0)


# --- the filesystem store ----------------------------------------------------------------


class FilesystemStoreCase(TestCase):
    """Builds loaded filesystem stores on temp directories and closes them after the test."""

    def new_store(self, directory: str | None = None, **kwargs: Any) -> FilesystemObjectStore:
        store = FilesystemObjectStore(directory or self.mktemp(), reactor=reactor, **kwargs)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def loaded_store(self, directory: str | None = None, **kwargs: Any):
        store = self.new_store(directory, **kwargs)
        yield store.load()
        return store


class FilesystemObjectStoreTests(StoreSemanticsMixin, FilesystemStoreCase):
    """The filesystem store: same rules, plus files in OpenYurt's layout."""

    def make_store(self) -> defer.Deferred[Any]:
        return self.loaded_store()

    @defer.inlineCallbacks
    def test_objects_are_files_in_openyurt_layout_with_private_permissions(self):
        directory = os.path.join(self.mktemp(), "cache")
        store = yield self.loaded_store(directory)
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        data = pod("web-1", "5")
        store.put(pod_key("web-1"), "5", data)
        store.put(
            CacheKey("kubelet", NODES, "", "edge-1"), "3", b'{"metadata":{"resourceVersion":"3"}}'
        )
        store.put(
            CacheKey("coredns", SLICES, "default", "x"),
            "4",
            b'{"metadata":{"resourceVersion":"4"}}',
        )
        store.put_document("discovery.api.v1", b"{}")
        yield store.flush()
        self.assertEqual(
            sorted(p for p in files_under(directory)),
            [
                "_yurthub/discovery.api.v1",
                "coredns/endpointslices.v1.discovery.k8s.io/default/x",
                "kubelet/nodes.v1.core/edge-1",
                "kubelet/pods.v1.core/default/web-1",
            ],
        )
        self.assertEqual(files_under(directory)["kubelet/pods.v1.core/default/web-1"], data)
        for root, _dirs, files in os.walk(directory):
            self.assertEqual(stat.S_IMODE(os.stat(root).st_mode), 0o700, root)
            for name in files:
                self.assertEqual(
                    stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode), 0o600, name
                )

    @defer.inlineCallbacks
    def test_writes_leave_no_temp_files_and_no_journal(self):
        store = yield self.loaded_store()
        for i in range(20):
            store.put(pod_key(f"p{i}"), "1", pod(f"p{i}", "1"))
        store.replace("kubelet", PODS, None, {pod_key("p1"): ("2", pod("p1", "2"))}, "2")
        store.put_document("discovery.version", b"{}")
        yield store.flush()
        self.assertEqual(temp_files(store.directory), [])
        self.assertEqual(journals(store.directory), [])
        self.assertEqual(
            list(files_under(os.path.join(store.directory, "kubelet"))), ["pods.v1.core/default/p1"]
        )

    @defer.inlineCallbacks
    def test_delete_removes_the_file(self):
        store = yield self.loaded_store()
        store.put(pod_key("a"), "1", pod("a", "1"))
        yield store.flush()
        store.delete(pod_key("a"), "1")
        yield store.flush()
        self.assertFalse(os.path.exists(store.path_of(pod_key("a"))))
        self.assertEqual(store.health.errors, 0)

    @defer.inlineCallbacks
    def test_what_memory_holds_is_what_a_restart_loads(self):
        directory = self.mktemp()
        store = yield self.loaded_store(directory)
        for i in range(30):
            store.put(pod_key(f"p{i}", f"ns{i % 3}"), "1", pod(f"p{i}", "1", f"ns{i % 3}"))
        store.delete(pod_key("p3", "ns0"))
        store.replace(
            "kubelet", PODS, "ns1", {pod_key("p1", "ns1"): ("9", pod("p1", "9", "ns1"))}, "9"
        )
        store.put(
            CacheKey("kubelet", NODES, "", "edge-1"), "1", b'{"metadata":{"resourceVersion":"1"}}'
        )
        store.put_document("discovery.api", b'{"versions":["v1"]}')
        before = store.list("kubelet", PODS) + store.list("kubelet", NODES)
        yield store.close()
        again = yield self.loaded_store(directory)
        self.assertEqual(again.list("kubelet", PODS) + again.list("kubelet", NODES), before)
        self.assertEqual(again.get_document("discovery.api"), b'{"versions":["v1"]}')
        # The loaded resourceVersions keep the rules going across the restart.
        self.assertFalse(again.put(pod_key("p1", "ns1"), "8", pod("p1", "8", "ns1")))

    @defer.inlineCallbacks
    def test_an_equal_resource_version_is_never_rewritten(self):
        disk = ScriptedDisk()
        store = yield self.loaded_store(disk=disk)
        path = store.path_of(pod_key("a"))
        store.put(pod_key("a"), "5", pod("a", "5"))
        yield store.flush()
        self.assertEqual(disk.writes_to(path), 1)
        self.assertFalse(store.put(pod_key("a"), "5", pod("a", "5")))
        self.assertFalse(store.put(pod_key("a"), "4", pod("a", "4")))
        store.replace("kubelet", PODS, None, {pod_key("a"): ("5", pod("a", "5"))}, "5")
        yield store.flush()
        self.assertEqual(disk.writes_to(path), 1)
        self.assertTrue(store.put(pod_key("a"), "6", pod("a", "6")))
        yield store.flush()
        self.assertEqual(disk.writes_to(path), 2)

    @defer.inlineCallbacks
    def test_a_hot_key_is_written_a_few_times_not_once_per_change(self):
        disk = ScriptedDisk()
        store = yield self.loaded_store(disk=disk)
        for rv in range(1, 1001):
            store.put(pod_key("hot"), str(rv), pod("hot", str(rv)))
        yield store.flush()
        self.assertLessEqual(disk.writes_to(store.path_of(pod_key("hot"))), 10)
        with open(store.path_of(pod_key("hot")), "rb") as f:
            self.assertEqual(f.read(), pod("hot", "1000"))

    @defer.inlineCallbacks
    def test_changes_made_while_the_writer_is_busy_coalesce_into_one_write(self):
        disk = ScriptedDisk()
        store = yield self.loaded_store(disk=disk)
        disk.gate = threading.Event()
        store.put(pod_key("first"), "1", pod("first", "1"))
        self.assertTrue(disk.waiting.wait(5))  # the writer holds "first" at the gate
        for rv in range(1, 1001):
            store.put(pod_key("hot"), str(rv), pod("hot", str(rv)))
        store.put(pod_key("gone"), "1", pod("gone", "1"))
        store.delete(pod_key("gone"))
        self.assertEqual(store.health.pending, 3)  # first (in flight), hot, gone
        disk.gate.set()
        yield store.flush()
        self.assertEqual(disk.writes_to(store.path_of(pod_key("hot"))), 1)
        self.assertEqual(disk.writes_to(store.path_of(pod_key("gone"))), 0)
        self.assertFalse(os.path.exists(store.path_of(pod_key("gone"))))
        self.assertEqual(store.health.pending, 0)

    @defer.inlineCallbacks
    def test_a_full_queue_drops_writes_from_disk_until_the_next_list_repairs_them(self):
        disk = ScriptedDisk()
        store = yield self.loaded_store(disk=disk, max_pending=5)
        disk.gate = threading.Event()
        store.put(pod_key("p00"), "1", pod("p00", "1"))
        self.assertTrue(disk.waiting.wait(5))
        for i in range(1, 21):
            self.assertTrue(store.put(pod_key(f"p{i:02}"), "1", pod(f"p{i:02}", "1")))
        self.assertEqual(store.health.dropped, 15)
        self.assertTrue(store.health.degraded)
        self.assertIn("queue full", store.health.reason)
        self.assertEqual(len(store.list("kubelet", PODS)), 21)  # memory has everything
        disk.gate.set()
        yield store.flush()
        on_disk = files_under(os.path.join(store.directory, "kubelet"))
        self.assertEqual(len(on_disk), 6)
        self.assertTrue(store.health.degraded)
        self.assertIn("15 cached objects not on disk", store.health.detail())

        listed = {pod_key(f"p{i:02}"): ("1", pod(f"p{i:02}", "1")) for i in range(21)}
        store.replace("kubelet", PODS, None, listed, "1")
        yield store.flush()
        self.assertEqual(len(files_under(os.path.join(store.directory, "kubelet"))), 21)
        self.assertFalse(store.health.degraded)
        self.assertEqual(store.health.stale, 0)
        self.assertEqual(store.health.dropped, 15)  # a count, not a state

    @defer.inlineCallbacks
    def test_a_later_write_of_a_dropped_key_repairs_it(self):
        disk = ScriptedDisk()
        store = yield self.loaded_store(disk=disk, max_pending=1)
        disk.gate = threading.Event()
        store.put(pod_key("a"), "1", pod("a", "1"))
        self.assertTrue(disk.waiting.wait(5))
        store.put(pod_key("b"), "1", pod("b", "1"))
        store.put(pod_key("c"), "1", pod("c", "1"))  # dropped
        disk.gate.set()
        yield store.flush()
        self.assertTrue(store.health.degraded)
        store.put(pod_key("c"), "2", pod("c", "2"))
        yield store.flush()
        self.assertFalse(store.health.degraded)
        self.assertEqual(
            files_under(store.directory)["kubelet/pods.v1.core/default/c"], pod("c", "2")
        )

    @defer.inlineCallbacks
    def test_writes_made_while_loading_apply_to_the_loaded_view(self):
        directory = self.mktemp()
        write_file(os.path.join(directory, "kubelet/pods.v1.core/default/a"), pod("a", "10"))
        write_file(os.path.join(directory, "kubelet/pods.v1.core/default/b"), pod("b", "10"))
        store = self.new_store(directory)
        loading = store.load()
        store.put(pod_key("a"), "5", pod("a", "5"))  # older than the file: must lose
        store.delete(pod_key("b"))
        store.put(pod_key("c"), "1", pod("c", "1"))
        yield loading
        self.assertEqual(store.get(pod_key("a")), pod("a", "10"))
        self.assertIsNone(store.get(pod_key("b")))
        yield store.flush()
        self.assertEqual(
            sorted(files_under(directory)),
            ["kubelet/pods.v1.core/default/a", "kubelet/pods.v1.core/default/c"],
        )

    @defer.inlineCallbacks
    def test_close_finishes_pending_writes_and_stops_the_writer(self):
        store = yield self.loaded_store()
        for i in range(50):
            store.put(pod_key(f"p{i}"), "1", pod(f"p{i}", "1"))
        yield store.close()
        self.assertEqual(len(files_under(os.path.join(store.directory, "kubelet"))), 50)
        assert store._thread is not None
        store._thread.join(5)
        self.assertFalse(store._thread.is_alive())
        store.put(pod_key("late"), "1", pod("late", "1"))  # memory only, no error
        self.assertIsNotNone(store.get(pod_key("late")))
        yield store.flush()
        yield store.close()
        self.assertFalse(os.path.exists(store.path_of(pod_key("late"))))

    @defer.inlineCallbacks
    def test_close_before_load_does_nothing(self):
        directory = self.mktemp()
        store = FilesystemObjectStore(directory, reactor=reactor)
        yield store.close()
        self.assertFalse(os.path.exists(directory))

    @defer.inlineCallbacks
    def test_load_may_be_called_once(self):
        store = yield self.loaded_store()
        yield self.assertFailure(store.load(), StoreError)

    @defer.inlineCallbacks
    def test_health_detail_is_one_line(self):
        store = yield self.loaded_store()
        self.assertTrue(store.health.detail().startswith("ok"))
        store.health.last_error = "EIO: bad\nthing: /x"
        store.health.degraded, store.health.reason = True, "because"
        self.assertNotIn("\n", store.health.detail())
        store.health.degraded = False


class DiskFaultTests(FilesystemStoreCase):
    """Disk errors are counted and reported, never raised; memory stays right."""

    @defer.inlineCallbacks
    def faulty_store(self, **kwargs: Any):
        disk = ScriptedDisk()
        store = yield self.loaded_store(disk=disk, **kwargs)
        disk.armed = True
        return store, disk

    @defer.inlineCallbacks
    def test_a_full_disk_is_counted_and_leaves_no_partial_file(self):
        store, disk = yield self.faulty_store()
        disk.faults["write"] = errno.ENOSPC
        self.assertTrue(store.put(pod_key("a"), "1", pod("a", "1")))
        yield store.flush()
        self.assertEqual(store.get(pod_key("a")), pod("a", "1"))
        self.assertEqual(store.health.errors, 1)
        self.assertTrue(store.health.degraded)
        self.assertIn("ENOSPC", store.health.last_error)
        self.assertIn(store.path_of(pod_key("a")), store.health.last_error)
        self.assertNotIn("\n", store.health.detail())
        self.assertEqual(files_under(os.path.join(store.directory, "kubelet")), {})
        self.assertEqual(temp_files(store.directory), [])

    @defer.inlineCallbacks
    def test_writes_succeed_again_when_the_fault_clears(self):
        store, disk = yield self.faulty_store()
        disk.faults["fsync"] = errno.EIO
        store.put(pod_key("a"), "1", pod("a", "1"))
        store.put(pod_key("b"), "1", pod("b", "1"))
        yield store.flush()
        self.assertEqual(store.health.errors, 2)
        self.assertIn("EIO", store.health.last_error)
        del disk.faults["fsync"]
        store.put(pod_key("a"), "2", pod("a", "2"))
        yield store.flush()
        self.assertTrue(store.health.degraded)  # b is still only in memory
        store.put(pod_key("b"), "2", pod("b", "2"))
        yield store.flush()
        self.assertFalse(store.health.degraded)
        self.assertEqual(store.health.errors, 2)
        self.assertEqual(
            files_under(os.path.join(store.directory, "kubelet")),
            {"pods.v1.core/default/a": pod("a", "2"), "pods.v1.core/default/b": pod("b", "2")},
        )
        self.assertEqual(temp_files(store.directory), [])

    @defer.inlineCallbacks
    def test_a_failed_rename_or_permission_error_is_counted(self):
        store, disk = yield self.faulty_store()
        disk.faults["create_temp"] = errno.EACCES
        store.put(pod_key("a"), "1", pod("a", "1"))
        store.put_document("discovery.api", b"{}")
        yield store.flush()
        self.assertEqual(store.health.errors, 2)
        self.assertIn("EACCES", store.health.last_error)
        self.assertEqual(store.health.stale, 2)
        disk.faults = {"rename": errno.EIO}
        store.put(pod_key("a"), "2", pod("a", "2"))
        yield store.flush()
        self.assertEqual(store.health.errors, 3)
        self.assertEqual(temp_files(store.directory), [])

    @defer.inlineCallbacks
    def test_a_replace_failing_after_its_temp_files_removes_them_all(self):
        store, disk = yield self.faulty_store()
        store.put(pod_key("a"), "1", pod("a", "1"))
        yield store.flush()
        old = files_under(os.path.join(store.directory, "kubelet"))
        disk.faults["fsync_dir"] = errno.EIO
        disk.step_names.clear()
        objects = {pod_key(f"p{n}"): ("2", pod(f"p{n}", "2")) for n in range(5)}
        store.replace("kubelet", PODS, None, objects, "2")
        yield store.flush()
        self.assertEqual(disk.step_names.count("create_temp"), 5)  # all written, then it failed
        self.assertEqual(files_under(os.path.join(store.directory, "kubelet")), old)
        self.assertEqual(temp_files(store.directory), [])
        self.assertEqual(journals(store.directory), [])
        del disk.faults["fsync_dir"]
        store.replace("kubelet", PODS, None, objects, "3")
        yield store.flush()
        self.assertFalse(store.health.degraded)
        self.assertEqual(
            sorted(files_under(os.path.join(store.directory, "kubelet"))),
            sorted(f"pods.v1.core/default/p{n}" for n in range(5)),
        )

    @defer.inlineCallbacks
    def test_a_failed_replace_keeps_the_old_set_and_the_next_list_repairs_it(self):
        store, disk = yield self.faulty_store()
        for name in "ab":
            store.put(pod_key(name), "1", pod(name, "1"))
        yield store.flush()
        old = files_under(os.path.join(store.directory, "kubelet"))
        disk.faults["write"] = errno.ENOSPC
        store.replace(
            "kubelet",
            PODS,
            None,
            {pod_key("a"): ("2", pod("a", "2")), pod_key("c"): ("2", pod("c", "2"))},
            "2",
        )
        yield store.flush()
        self.assertEqual(files_under(os.path.join(store.directory, "kubelet")), old)
        self.assertEqual(temp_files(store.directory), [])
        self.assertEqual(journals(store.directory), [])
        self.assertTrue(store.health.degraded)
        self.assertEqual([k.name for k, _ in store.list("kubelet", PODS)], ["a", "c"])
        del disk.faults["write"]
        store.replace(
            "kubelet",
            PODS,
            None,
            {pod_key("a"): ("2", pod("a", "2")), pod_key("c"): ("2", pod("c", "2"))},
            "2",
        )
        yield store.flush()
        self.assertFalse(store.health.degraded)
        self.assertEqual(
            files_under(os.path.join(store.directory, "kubelet")),
            {"pods.v1.core/default/a": pod("a", "2"), "pods.v1.core/default/c": pod("c", "2")},
        )

    @defer.inlineCallbacks
    def test_an_unwritable_directory_fails_load_with_one_line_naming_it(self):
        disk = ScriptedDisk()
        disk.armed = True
        disk.faults["create_temp"] = errno.EROFS
        directory = self.mktemp()
        store = self.new_store(directory, disk=disk)
        error = yield self.assertFailure(store.load(), StoreError)
        message = str(error)
        self.assertIn(os.path.abspath(directory), message)
        self.assertIn("EROFS", message)
        self.assertNotIn("\n", message)
        self.assertTrue(store.health.degraded)
        yield self.assertFailure(store.flush(), StoreError)

    @defer.inlineCallbacks
    def test_a_read_only_directory_fails_load(self):
        directory = os.path.abspath(self.mktemp())
        if os.geteuid() == 0:
            # root writes through permission bits: a read-only file system it is.
            os.makedirs(directory)
            mounted = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", directory], capture_output=True
            )
            if mounted.returncode != 0:
                raise SkipTest(f"cannot mount a read-only tmpfs here: {mounted.stderr!r}")
            self.addCleanup(subprocess.run, ["umount", directory], capture_output=True)
        else:
            os.makedirs(directory, 0o500)
            self.addCleanup(os.chmod, directory, 0o700)
        store = self.new_store(directory)
        error = yield self.assertFailure(store.load(), StoreError)
        self.assertIn(os.path.abspath(directory), str(error))

    @defer.inlineCallbacks
    def test_a_file_in_place_of_the_directory_fails_load(self):
        directory = self.mktemp()
        write_file(directory, b"not a directory")
        store = self.new_store(directory)
        error = yield self.assertFailure(store.load(), StoreError)
        self.assertIn(os.path.abspath(directory), str(error))


class CrashSafetyTests(FilesystemStoreCase):
    """A crash at any step leaves each object old or new and each list's set old or new."""

    OLD = {name: pod(name, "1") for name in ("a", "b", "c")}
    NEW = {"a": pod("a", "5"), "b": pod("b", "1"), "d": pod("d", "5")}

    def old_directory(self) -> str:
        directory = self.mktemp()
        for name, data in self.OLD.items():
            write_file(os.path.join(directory, "kubelet/pods.v1.core/default", name), data)
        return directory

    def replace_new(self, store: FilesystemObjectStore) -> None:
        store.replace(
            "kubelet",
            PODS,
            "default",
            {pod_key(n): (n == "b" and "1" or "5", d) for n, d in self.NEW.items()},
            "5",
        )

    @defer.inlineCallbacks
    def on_disk_after_restart(self, directory: str, skipped: int = 0):
        """The objects a new store loads from ``directory`` (the same as the files there)."""
        store = yield self.loaded_store(directory)
        self.assertEqual(temp_files(directory), [])
        self.assertEqual(journals(directory), [])
        self.assertEqual(store.health.corrupt_files, skipped)
        loaded = {k.name: d for k, d in store.list("kubelet", PODS)}
        yield store.close()
        self.assertEqual(
            {
                os.path.basename(p): d
                for p, d in files_under(os.path.join(directory, "kubelet")).items()
            },
            loaded,
        )
        return loaded

    @defer.inlineCallbacks
    def crash_at(self, step: int | None, operation: Any):
        """Run ``operation`` on a store over the old directory, crashing at ``step`` (or
        not at all); the directory and how many steps ran."""
        directory = self.old_directory()
        disk = ScriptedDisk()
        store = FilesystemObjectStore(directory, reactor=reactor, disk=disk)
        yield store.load()
        disk.crash_at = step
        disk.armed = True
        operation(store)
        if step is None:
            yield store.close()
        else:
            yield self.assertFailure(store.flush(), StoreError)
            self.assertTrue(disk.crashed.is_set())
            self.assertTrue(store.health.degraded)
            self.assertIn("writer stopped", store.health.reason)
        return directory, disk.steps

    @defer.inlineCallbacks
    def test_a_crash_at_any_step_of_a_replace_leaves_the_old_or_the_new_set(self):
        directory, steps = yield self.crash_at(None, self.replace_new)
        self.assertEqual((yield self.on_disk_after_restart(directory)), self.NEW)
        self.assertGreater(steps, 15)
        outcomes = []
        for step in range(steps):
            directory, _ = yield self.crash_at(step, self.replace_new)
            found = yield self.on_disk_after_restart(directory)
            self.assertIn(found, (self.OLD, self.NEW), f"crash at step {step}")
            outcomes.append("new" if found == self.NEW else "old")
        self.assertEqual(outcomes[0], "old")
        self.assertEqual(outcomes[-1], "new")
        # Once the journal is on disk every later crash rolls forward.
        self.assertEqual(outcomes, sorted(outcomes, key=lambda o: o == "new"))

    @defer.inlineCallbacks
    def test_a_crash_at_any_step_of_a_put_leaves_the_old_or_the_new_object(self):
        def put(store: FilesystemObjectStore) -> None:
            store.put(pod_key("a"), "2", pod("a", "2"))
            store.delete(pod_key("c"))

        directory, steps = yield self.crash_at(None, put)
        self.assertGreater(steps, 5)
        for step in range(steps):
            directory, _ = yield self.crash_at(step, put)
            found = yield self.on_disk_after_restart(directory)
            self.assertIn(found["a"], (pod("a", "1"), pod("a", "2")), f"crash at step {step}")
            self.assertEqual(found["b"], pod("b", "1"))

    @defer.inlineCallbacks
    def test_a_complete_journal_is_rolled_forward_at_load(self):
        directory = self.old_directory()
        base = os.path.join(directory, "kubelet/pods.v1.core/default")
        write_file(os.path.join(base, ".tmp-1"), pod("a", "5"))
        write_file(os.path.join(base, ".tmp-2"), pod("d", "5"))
        plan = {
            "renames": [
                ["kubelet/pods.v1.core/default/.tmp-1", "kubelet/pods.v1.core/default/a"],
                ["kubelet/pods.v1.core/default/.tmp-2", "kubelet/pods.v1.core/default/d"],
            ],
            "deletes": ["kubelet/pods.v1.core/default/c"],
        }
        write_file(
            os.path.join(directory, DOCUMENTS_DIR, JOURNAL_DIR, "1-1.json"),
            json.dumps(plan).encode(),
        )
        self.assertEqual((yield self.on_disk_after_restart(directory)), self.NEW)

    @defer.inlineCallbacks
    def test_a_journal_interrupted_while_applied_is_finished(self):
        directory = self.old_directory()
        base = os.path.join(directory, "kubelet/pods.v1.core/default")
        write_file(os.path.join(base, "a"), pod("a", "5"))  # first rename done
        write_file(os.path.join(base, ".tmp-2"), pod("d", "5"))
        plan = {
            "renames": [
                ["kubelet/pods.v1.core/default/.tmp-1", "kubelet/pods.v1.core/default/a"],
                ["kubelet/pods.v1.core/default/.tmp-2", "kubelet/pods.v1.core/default/d"],
            ],
            "deletes": ["kubelet/pods.v1.core/default/c"],
        }
        write_file(
            os.path.join(directory, DOCUMENTS_DIR, JOURNAL_DIR, "1-1.json"),
            json.dumps(plan).encode(),
        )
        self.assertEqual((yield self.on_disk_after_restart(directory)), self.NEW)

    @defer.inlineCallbacks
    def test_a_journal_missing_temp_files_is_discarded(self):
        directory = self.old_directory()
        base = os.path.join(directory, "kubelet/pods.v1.core/default")
        write_file(os.path.join(base, ".tmp-1"), pod("a", "5"))  # .tmp-2 never written
        write_file(os.path.join(base, ".tmp-3"), pod("e", "5"))
        plan = {
            "renames": [
                ["kubelet/pods.v1.core/default/.tmp-1", "kubelet/pods.v1.core/default/a"],
                ["kubelet/pods.v1.core/default/.tmp-2", "kubelet/pods.v1.core/default/d"],
                ["kubelet/pods.v1.core/default/.tmp-3", "kubelet/pods.v1.core/default/e"],
            ],
            "deletes": ["kubelet/pods.v1.core/default/c"],
        }
        write_file(
            os.path.join(directory, DOCUMENTS_DIR, JOURNAL_DIR, "1-1.json"),
            json.dumps(plan).encode(),
        )
        self.assertEqual((yield self.on_disk_after_restart(directory, skipped=1)), self.OLD)

    @defer.inlineCallbacks
    def test_a_journal_naming_paths_outside_the_cache_is_discarded(self):
        directory = self.old_directory()
        outside = os.path.abspath(self.mktemp())
        write_file(outside, b"keep me")
        for plan in (
            {"renames": [], "deletes": [os.path.relpath(outside, directory)]},
            {"renames": [], "deletes": ["kubelet/pods.v1.core/default/../../../../x"]},
            {"renames": [["../.tmp-1", "kubelet/pods.v1.core/default/a"]], "deletes": []},
            {"renames": "nonsense"},
        ):
            write_file(
                os.path.join(directory, DOCUMENTS_DIR, JOURNAL_DIR, "1-1.json"),
                json.dumps(plan).encode(),
            )
            self.assertEqual((yield self.on_disk_after_restart(directory, skipped=1)), self.OLD)
        write_file(os.path.join(directory, DOCUMENTS_DIR, JOURNAL_DIR, "2-2.json"), b"{torn")
        self.assertEqual((yield self.on_disk_after_restart(directory, skipped=1)), self.OLD)
        with open(outside, "rb") as f:
            self.assertEqual(f.read(), b"keep me")

    @defer.inlineCallbacks
    def test_leftover_temp_files_are_removed_at_load(self):
        directory = self.old_directory()
        write_file(os.path.join(directory, "kubelet/pods.v1.core/default/.tmp-x"), b'{"half')
        write_file(os.path.join(directory, "kubelet/pods.v1.core/.tmp-y"), b"")
        write_file(os.path.join(directory, DOCUMENTS_DIR, ".tmp-z"), b"")
        write_file(os.path.join(directory, DOCUMENTS_DIR, JOURNAL_DIR, ".tmp-j"), b"{")
        self.assertEqual((yield self.on_disk_after_restart(directory)), self.OLD)


class LoadTests(FilesystemStoreCase):
    """Reading a cache directory: OpenYurt's as it is, damaged entries skipped and counted."""

    @defer.inlineCallbacks
    def test_a_cold_load_reads_ahead_in_batches_takes_every_object_and_leaves_no_descriptor(self):
        self.patch(store_module, "PREFETCH_BATCH", 7)  # many batches, one ending mid-directory
        self.patch(store_module, "COLD_READ_SECONDS", 0.0)  # every read "from the disk": read ahead
        directory = self.mktemp()
        for i in range(40):
            write_file(os.path.join(directory, f"kubelet/pods.v1.core/ns{i % 2}/p{i}"), pod(f"p{i}", "3", f"ns{i % 2}"))
        for i in range(9):
            write_file(os.path.join(directory, f"kubelet/nodes.v1.core/n{i}"), b'{"metadata":{"name":"n%d","resourceVersion":"1"}}' % i)
        os.symlink("/etc/passwd", os.path.join(directory, "kubelet/pods.v1.core/ns0/evil"))
        write_file(os.path.join(directory, "kubelet/pods.v1.core/ns1/.tmp-half"), b'{"half')
        store = yield self.loaded_store(directory)
        self.assertEqual(len(store.list("kubelet", PODS)), 40)
        self.assertEqual(len(store.list("kubelet", NODES)), 9)
        self.assertIsNone(store.get(pod_key("evil", "ns0")))
        self.assertEqual(store.get(pod_key("p7", "ns1")), pod("p7", "3", "ns1"))
        self.assertFalse(os.path.exists(os.path.join(directory, "kubelet/pods.v1.core/ns1/.tmp-half")))
        self.assertTrue(store._reading_ahead)
        self.assertEqual(store._disk._prefetched, {})  # every descriptor read or closed

    @defer.inlineCallbacks
    def test_an_openyurt_cache_directory_loads_as_it_is(self):
        directory = self.mktemp()
        files = {
            "kubelet/pods.v1.core/default/web-1": pod("web-1", "101"),
            "kubelet/nodes.v1.core/edge-1": b'{"kind":"Node","metadata":{"name":"edge-1","resourceVersion":"7"}}',
            "kube-proxy/services.v1.core/default/kubernetes": b'{"kind":"Service","metadata":{"name":"kubernetes","namespace":"default","resourceVersion":"12"}}',
            "coredns/endpointslices.v1.discovery.k8s.io/default/x": b'{"kind":"EndpointSlice","metadata":{"name":"x","namespace":"default","resourceVersion":"33"}}',
        }
        for path, data in files.items():
            write_file(os.path.join(directory, path), data)
        store = yield self.loaded_store(directory)
        self.assertEqual(store.health.corrupt_files, 0)
        self.assertEqual(store.components(), ["coredns", "kube-proxy", "kubelet"])
        self.assertEqual(store.get(pod_key("web-1")), files["kubelet/pods.v1.core/default/web-1"])
        self.assertEqual(
            store.get(CacheKey("kubelet", NODES, "", "edge-1")),
            files["kubelet/nodes.v1.core/edge-1"],
        )
        self.assertEqual(
            store.list("kube-proxy", SERVICES, "default"),
            [
                (
                    CacheKey("kube-proxy", SERVICES, "default", "kubernetes"),
                    files["kube-proxy/services.v1.core/default/kubernetes"],
                )
            ],
        )
        self.assertEqual([k.name for k, _ in store.list("coredns", SLICES)], ["x"])
        self.assertFalse(store.put(CacheKey("coredns", SLICES, "default", "x"), "33", b"{}"))
        yield store.flush()
        self.assertEqual({p: d for p, d in files_under(directory).items()}, files)

    @defer.inlineCallbacks
    def test_damaged_entries_are_skipped_counted_and_logged(self):
        directory = self.mktemp()
        outside = os.path.abspath(self.mktemp())
        write_file(os.path.join(outside, "stolen"), pod("stolen", "1"))
        base = os.path.join(directory, "kubelet/pods.v1.core/default")
        write_file(os.path.join(base, "good"), pod("good", "3"))
        write_file(os.path.join(base, "norv"), b'{"metadata":{"name":"norv"}}')
        # path -> (what is written there, the entry reported as skipped)
        bad = {
            "kubelet/pods.v1.core/default/empty": (b"", None),
            "kubelet/pods.v1.core/default/blank": (b"  \n", None),
            "kubelet/pods.v1.core/default/notjson": (b"{nope", None),
            "kubelet/pods.v1.core/default/array": (b"[1, 2]", None),
            "kubelet/pods.v1.core/default/nometa": (b'{"kind":"Pod"}', None),
            "kubelet/pods.v1.core/default/.hidden": (pod("x", "1"), None),
            "kubelet/notaresource/x": (pod("x", "1"), "kubelet/notaresource"),
            "Kubelet/pods.v1.core/default/x": (pod("x", "1"), "Kubelet"),
            "kubelet/pods.v1.core/Bad_NS/x": (pod("x", "1"), "kubelet/pods.v1.core/Bad_NS"),
            "stray-file": (b"{}", None),
        }
        for path, (data, _) in bad.items():
            write_file(os.path.join(directory, path), data)
        reported = [
            os.path.abspath(os.path.join(directory, entry or path))
            for path, (_, entry) in bad.items()
        ]
        links = [
            os.path.join(base, "link"),
            os.path.join(directory, "kubelet/pods.v1.core/linked-ns"),
        ]
        os.symlink(os.path.join(outside, "stolen"), links[0])
        os.symlink(outside, links[1])
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        store = yield self.loaded_store(directory)
        self.assertEqual([k.name for k, _ in store.list("kubelet", PODS)], ["good", "norv"])
        self.assertEqual(store.components(), ["kubelet"])
        self.assertEqual(store.health.corrupt_files, len(bad) + len(links))
        self.assertFalse(store.health.degraded)
        logged = {e.get("path") for e in events}
        for path in [*reported, *links]:
            self.assertIn(os.path.abspath(path), logged)
        # A missing resourceVersion loads as "0": any real version replaces it.
        self.assertFalse(store.put(pod_key("norv"), "0", b"{}"))
        self.assertTrue(store.put(pod_key("norv"), "1", pod("norv", "1")))
        self.assertTrue(os.path.exists(os.path.join(outside, "stolen")))

    @defer.inlineCallbacks
    def test_writes_never_follow_a_symlinked_directory(self):
        directory = self.mktemp()
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        os.makedirs(os.path.join(directory, "kubelet"))
        os.symlink(outside, os.path.join(directory, "kubelet/pods.v1.core"))
        store = yield self.loaded_store(directory)
        store.put(pod_key("a"), "1", pod("a", "1"))
        yield store.flush()
        self.assertEqual(os.listdir(outside), [])
        self.assertEqual(store.health.errors, 1)
        self.assertIn("ENOTDIR", store.health.last_error)

    @defer.inlineCallbacks
    def test_ten_thousand_objects_load_in_well_under_a_second(self):
        directory = self.mktemp()
        filler = "x" * 2300
        for i in range(10000):
            ns = f"ns-{i % 20}"
            data = json.dumps(
                {
                    "kind": "Pod",
                    "metadata": {"name": f"p{i}", "namespace": ns, "resourceVersion": str(i)},
                    "spec": {"f": filler},
                }
            )
            write_file(os.path.join(directory, "kubelet/pods.v1.core", ns, f"p{i}"), data.encode())
        store = self.new_store(directory)
        started = time.monotonic()
        yield store.load()
        elapsed = time.monotonic() - started
        self.assertEqual(len(store), 10000)
        self.assertEqual(len(store.list("kubelet", PODS, "ns-3")), 500)
        self.assertLess(elapsed, 2.0)  # about 0.3 s here; the slack is for busy CI machines


def _odd_pod(name: str, rv: str, shape: int, namespace: str = "default") -> bytes:
    """Pod bytes whose resourceVersion the index can (0) or cannot read back: spaced (1),
    another version in the bytes (2), none at all (3)."""
    if shape == 1:
        return json.dumps({"metadata": {"name": name, "resourceVersion": rv}}).encode()
    if shape == 2:
        return pod(name, rv + "0", namespace)
    if shape == 3:
        return json.dumps({"metadata": {"name": name}}, separators=(",", ":")).encode()
    return pod(name, rv, namespace)


_versions = st.sampled_from(["", "1", "5", "9", "12", "x"])
_objects = st.dictionaries(
    st.tuples(st.sampled_from(["default", "kube-system"]), st.sampled_from("abcd")),
    st.tuples(_versions, st.integers(0, 3)),
    max_size=8,
)


class ObjectIndexTests(TestCase):
    """A `ListItems` replacement (the fast path) does what the same mapping as a dict does."""

    @settings(max_examples=200, deadline=None)
    @given(
        cached=_objects,
        listed=_objects,
        list_rv=_versions,
        namespace=st.sampled_from([None, "default"]),
        selective=st.booleans(),
    )
    def test_list_items_replace_like_a_dict(self, cached, listed, list_rv, namespace, selective):
        if namespace is not None:
            listed = {k: v for k, v in listed.items() if k[0] == namespace}
        as_dict = {}
        items = ListItems("kubelet", PODS)
        for (ns, name), (rv, shape) in listed.items():
            data = _odd_pod(name, rv, shape, ns)
            as_dict[pod_key(name, ns)] = (rv, data)
            items.add(pod_key(name, ns), rv, data)
        self.assertEqual(dict(items), as_dict)
        covered = (lambda key, data: key.name in "ab") if selective else None  # noqa: E731
        results = []
        for objects in (as_dict, items):
            index = ObjectIndex()
            for (ns, name), (rv, shape) in cached.items():
                index.set(pod_key(name, ns), rv, _odd_pod(name, rv, shape, ns))
            generation = index.generation
            changed = index.replace("kubelet", PODS, namespace, objects, list_rv, covered)
            results.append(
                (
                    sorted(changed, key=lambda k: (k.namespace, k.name)),
                    [(k, index.entry(k)) for k, _ in index.list("kubelet", PODS)],
                    len(index),
                    index.generation - generation == len(changed),
                )
            )
        self.assertEqual(results[0], results[1])

    def test_list_items_outside_the_list_are_refused(self):
        index = ObjectIndex()
        items = ListItems("kubelet", PODS)
        items.add(pod_key("a", "kube-system"), "1", pod("a", "1", "kube-system"))
        with self.assertRaisesRegex(ValueError, "kube-system"):
            index.replace("kubelet", PODS, "default", items, "1")
        with self.assertRaises(ValueError):
            index.replace("kube-proxy", PODS, None, items, "1")
        self.assertEqual(len(index), 0)


    def test_fill_is_set_of_each_slot(self):
        by_set, by_fill = ObjectIndex(), ObjectIndex()
        for index in (by_set, by_fill):
            index.set(pod_key("a"), "1", pod("a", "1"))
        slots = {"a": pod("a", "2"), "b": ("7", pod("b", "5"))}
        by_set.set(pod_key("a"), "2", pod("a", "2"))
        by_set.set(pod_key("b"), "7", pod("b", "5"))
        generation = by_fill.generation
        by_fill.fill("kubelet", PODS, "default", slots)
        by_fill.fill("kubelet", PODS, "other", {"c": pod("c", "3", "other")})
        by_set.set(pod_key("c", "other"), "3", pod("c", "3", "other"))
        by_fill.fill("kubelet", PODS, "empty", {})
        self.assertGreater(by_fill.generation, generation)
        self.assertEqual(len(by_fill), len(by_set), 3)
        self.assertEqual(
            [(k, by_fill.entry(k)) for k, _ in by_fill.list("kubelet", PODS)],
            [(k, by_set.entry(k)) for k, _ in by_set.list("kubelet", PODS)],
        )
        self.assertEqual(by_fill.entry(pod_key("b")), ("7", pod("b", "5")))


class DiskReadTests(TestCase):
    """`_Disk.read`, with and without the length a checksum record expects."""

    def file(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_any_expected_length_reads_the_whole_file(self):
        data = os.urandom(70_000)
        path = self.file(data)
        for expected in (None, 0, 1, 69_999, 70_000, 70_001, 200_000, -5):
            self.assertEqual(_Disk().read(path, expected), data, expected)

    def test_too_big_is_refused_whatever_is_expected(self):
        path = self.file(b"x" * 2048)
        self.patch(store_module, "MAX_FILE_SIZE", 1024)
        for expected in (None, 10, 1024, 2048):
            with self.assertRaises(OSError) as raised:
                _Disk().read(path, expected)
            self.assertEqual(raised.exception.errno, errno.EFBIG, expected)

    def test_symlinks_are_not_followed(self):
        target = self.file(b"{}")
        link = self.mktemp()
        os.symlink(target, link)
        with self.assertRaises(OSError):
            _Disk().read(link, 2)
        disk = _Disk()
        disk.prefetch([link])  # nor read ahead: the read still refuses it
        with self.assertRaises(OSError):
            disk.read(link, 2)

    def test_prefetched_files_read_the_same_and_leave_no_descriptor_open(self):
        paths = [self.file(b"%d" % i * 100) for i in range(5)]
        before = len(os.listdir("/proc/self/fd"))
        disk = _Disk()
        disk.prefetch([*paths, paths[0], self.mktemp()])  # a repeat and a missing file: skipped
        self.assertEqual(len(os.listdir("/proc/self/fd")), before + 5)
        self.assertEqual(disk.read(paths[1], 100), b"1" * 100)
        self.assertEqual(disk.read(paths[1], 100), b"1" * 100)  # opened anew the second time
        self.assertEqual(len(os.listdir("/proc/self/fd")), before + 4)
        disk.drop_prefetched()
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)
        self.assertEqual(disk.read(paths[4]), b"4" * 100)


class KeyPathTests(TestCase):
    """No key or document name can name a file outside the cache directory."""

    def test_a_trusted_key_equals_the_validated_one(self):
        for parts in [("kubelet", PODS, "default", "web-1"), ("kube-proxy", NODES, "", "edge-1")]:
            key = CacheKey.trusted(*parts)
            self.assertEqual(key, CacheKey(*parts))
            self.assertEqual(hash(key), hash(CacheKey(*parts)))
            self.assertEqual(key.parts, CacheKey(*parts).parts)
            self.assertEqual(repr(key), repr(CacheKey(*parts)))
            with self.assertRaises(AttributeError):
                key.name = "other"  # type: ignore[misc]

    def test_parts_that_could_climb_out_are_refused_before_any_disk_access(self):
        for namespace, name in [
            ("default", ".."),
            ("..", "x"),
            ("default", "a/b"),
            ("a/b", "x"),
            ("default", "a\0b"),
            ("default", "x" * 254),
            ("x" * 64, "x"),
            ("default", ""),
        ]:
            self.assertRaises(InvalidKey, CacheKey, "kubelet", PODS, namespace, name)
        for component in ("..", "a/b", "a\0", "", "x" * 64, "_yurthub"):
            self.assertRaises(InvalidKey, CacheKey, component, PODS, "default", "x")
        self.assertRaises(InvalidKey, GVR, "..", "v1", "pods")
        self.assertRaises(InvalidKey, GVR, "", "v1", "../pods")

    @settings(max_examples=300, deadline=None)
    @given(
        component=st.one_of(
            st.text(max_size=70), st.sampled_from(["kubelet", "..", "a..b", "_yurthub", "."])
        ),
        namespace=st.one_of(
            st.text(max_size=70), st.text(alphabet="a./\x00-9", max_size=70), st.just("")
        ),
        name=st.one_of(st.text(max_size=300), st.text(alphabet="aZ./\x00-_:9", max_size=260)),
        group=st.one_of(st.just(""), st.text(max_size=30), st.text(alphabet="a./-", max_size=20)),
    )
    def test_every_valid_key_resolves_inside_the_directory(
        self, component: str, namespace: str, name: str, group: str
    ) -> None:
        store = FilesystemObjectStore("cache-root", reactor=reactor)
        try:
            key = CacheKey(component, GVR(group, "v1", "pods"), namespace, name)
        except InvalidKey:
            return
        path = os.path.normpath(store.path_of(key))
        self.assertTrue(path.startswith(store.directory + os.sep), path)
        self.assertEqual(os.path.relpath(path, store.directory).split(os.sep), list(key.parts))
        self.assertNotEqual(key.parts[0], DOCUMENTS_DIR)

    @settings(max_examples=200, deadline=None)
    @given(name=st.one_of(st.text(max_size=220), st.text(alphabet="a./\x00-_9", max_size=210)))
    def test_every_valid_document_name_resolves_inside_the_documents_directory(
        self, name: str
    ) -> None:
        store = FilesystemObjectStore("cache-root", reactor=reactor)
        try:
            path = store.document_path(name)
        except InvalidKey:
            return
        self.assertEqual(
            os.path.dirname(os.path.normpath(path)), os.path.join(store.directory, DOCUMENTS_DIR)
        )
        self.assertNotEqual(check_document_name(name), JOURNAL_DIR)


class ResourceVersionTests(TestCase):
    """The resourceVersion comparisons behind every write."""

    def test_peek_reads_the_first_plain_resource_version(self):
        self.assertEqual(peek_resource_version(pod("a", "123")), "123")
        self.assertEqual(peek_resource_version(b'{"metadata":{"resourceVersion":""}}'), "")
        self.assertEqual(
            peek_resource_version(b'{"metadata":{"resourceVersion":"1"},"x":{"resourceVersion":"2"}}'),
            "1",
        )
        # White space around the colon, as Python's json.dumps writes it by default.
        self.assertEqual(peek_resource_version(b'{"metadata": {"resourceVersion": "7"}}'), "7")
        self.assertEqual(peek_resource_version(b'{"metadata":{"resourceVersion" :\n"8"}}'), "8")
        for data in (
            b"",
            b'{"metadata":{"name":"a"}}',
            b'{"metadata":{"resourceVersion": "1\\"2"}}',
            b'{"metadata":{"resourceVersion":"1\\"2"}}',
            '{"metadata":{"resourceVersion":"\u00e9"}}'.encode(),
            b'{"metadata":{"resourceVersion":"1',
        ):
            self.assertIsNone(peek_resource_version(data), data)

    def test_decimal_versions_compare_as_integers(self):
        self.assertTrue(is_as_new("10", "9"))
        self.assertTrue(is_as_new("10", "10"))
        self.assertFalse(is_as_new("9", "10"))
        self.assertTrue(is_newer("10", "9"))
        self.assertFalse(is_newer("10", "10"))

    def test_unknown_versions_are_never_as_new_unless_identical(self):
        for cached, new in [
            ("", ""),
            ("10", ""),
            ("", "10"),
            ("a", "b"),
            ("1_0", "9"),
            ("-1", "0"),
            ("²", "1"),
        ]:
            self.assertFalse(is_as_new(cached, new), (cached, new))
            self.assertFalse(is_newer(cached, new), (cached, new))
        self.assertTrue(is_as_new("opaque", "opaque"))
        self.assertFalse(is_newer("10", None))
