"""Tests for yurthub/cache/manager.py: what is cached and how answers are applied."""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from tests.offline_support import feed_answer, make_manager, pod, pod_list
from yurthub.cache.keys import GVR, CacheKey
from yurthub.cache.manager import accepts_json, decode_list, discovery_document_name
from yurthub.cache.store import ListItems
from yurthub.requestinfo import parse_request_info

PODS = GVR("", "v1", "pods")


def cached_names(manager, component="kubelet", namespace=None):  # type: ignore[no-untyped-def]
    return sorted(key.name for key, _ in manager.store.list(component, PODS, namespace))


class CacheabilityTests(SynchronousTestCase):
    """Which requests are cached."""

    def test_rules(self) -> None:
        manager = make_manager()
        cases = [
            (b"GET", b"/api/v1/pods", b"kubelet/v1.31", True),
            (b"GET", b"/api/v1/pods?watch=1", b"kube-proxy/v1.31", True),
            (b"PUT", b"/api/v1/nodes/edge-1/status", b"kubelet/v1.31", True),
            (b"PATCH", b"/api/v1/namespaces/d/pods/p", b"kubelet/v1.31", True),
            (b"POST", b"/api/v1/namespaces/d/events", b"kubelet/v1.31", True),
            (b"GET", b"/api/v1/pods", b"kubectl/v1.32", False),  # not an agent
            (b"DELETE", b"/api/v1/namespaces/d/pods/p", b"kubelet/v1.31", False),
            (b"GET", b"/api/v1/namespaces/d/pods/p/log", b"kubelet/v1.31", False),
            (b"POST", b"/apis/certificates.k8s.io/v1/certificatesigningrequests", b"kubelet/v1.31", False),
            (b"POST", b"/apis/authorization.k8s.io/v1/subjectaccessreviews", b"kubelet/v1.31", False),
            (b"POST", b"/apis/authentication.k8s.io/v1/tokenreviews", b"kubelet/v1.31", False),
        ]
        for method, path, agent, expected in cases:
            self.assertEqual(manager.cacheable(parse_request_info(method, path, agent)), expected, (method, path, agent))

    def test_star_caches_every_component(self) -> None:
        manager = make_manager(("*",))
        self.assertTrue(manager.cacheable(parse_request_info(b"GET", b"/api/v1/pods", b"my-operator/1.0")))
        self.assertFalse(manager.cacheable(parse_request_info(b"GET", b"/api/v1/pods", b"../../etc/1.0")))

    def test_json_is_asked_for_when_the_client_accepts_it(self) -> None:
        manager = make_manager()
        info = parse_request_info(b"GET", b"/api/v1/pods", b"kubelet/v1.31")
        request = Request(DummyChannel())
        request.requestHeaders = Headers({b"accept": [b"application/vnd.kubernetes.protobuf, application/json"]})
        self.assertIsNotNone(manager.tee_for(info, request))
        self.assertEqual(request.requestHeaders.getRawHeaders(b"accept"), [b"application/json"])
        request.requestHeaders = Headers({b"accept": [b"application/vnd.kubernetes.protobuf"]})
        self.assertIsNone(manager.tee_for(info, request))  # protobuf-only: proxied uncached

    def test_accepts_json(self) -> None:
        self.assertTrue(accepts_json(None))
        self.assertTrue(accepts_json(b"*/*"))
        self.assertTrue(accepts_json(b"application/vnd.kubernetes.protobuf, application/json"))
        self.assertFalse(accepts_json(b"application/json;as=Table;v=v1;g=meta.k8s.io"))
        self.assertFalse(accepts_json(b"application/vnd.kubernetes.protobuf"))


class ApplyTests(SynchronousTestCase):
    """Lists replace what they cover; watch events apply in order; bad answers change nothing."""

    def test_list_replaces_the_namespace_it_covers(self) -> None:
        manager = make_manager()
        feed_answer(manager, b"GET", b"/api/v1/pods", pod_list(pod("a"), pod("b"), pod("c", namespace="kube-system")))
        feed_answer(manager, b"GET", b"/api/v1/namespaces/default/pods", pod_list(pod("a", rv=11), rv=200))
        self.assertEqual(cached_names(manager), ["a", "c"])

    def test_after_forgetting_versions_another_clusters_lower_versions_replace_the_cache(self) -> None:
        manager = make_manager()
        key = CacheKey("kubelet", PODS, "default", "a")
        feed_answer(manager, b"GET", b"/api/v1/namespaces/default/pods", pod_list(pod("a", rv=500, app="old"), rv=500))
        # Cluster B's copy at a lower version is refused while A's version counts ...
        manager.apply_object(parse_request_info("GET", "/api/v1/namespaces/default/pods/a", "kubelet/v1.31.0"), pod("a", rv=7, app="new"))
        self.assertIn(b'"old"', manager.store.get(key))
        # ... and taken once the node moved (the object itself is still answered meanwhile).
        manager.forget_versions()
        self.assertIn(b'"old"', manager.store.get(key))
        manager.apply_object(parse_request_info("GET", "/api/v1/namespaces/default/pods/a", "kubelet/v1.31.0"), pod("a", rv=7, app="new"))
        self.assertIn(b'"new"', manager.store.get(key))
        # The same list version as A's last one is applied, not skipped as unchanged.
        feed_answer(manager, b"GET", b"/api/v1/namespaces/default/pods", pod_list(pod("a", rv=500, app="old"), rv=500))
        manager.forget_versions()
        feed_answer(manager, b"GET", b"/api/v1/namespaces/default/pods", pod_list(pod("b", rv=3), rv=500))
        self.assertEqual(cached_names(manager), ["b"])

    def test_selector_list_replaces_only_matching_objects(self) -> None:
        manager = make_manager()
        feed_answer(manager, b"GET", b"/api/v1/pods", pod_list(pod("a", app="web"), pod("b", app="db")))
        feed_answer(manager, b"GET", b"/api/v1/pods?labelSelector=app%3Dweb", pod_list(rv=200))
        self.assertEqual(cached_names(manager), ["b"])

    def test_the_same_list_version_is_not_decoded_again(self) -> None:
        manager = make_manager()
        body = json.dumps(pod_list(pod("a"), rv=100)).encode()
        feed_answer(manager, b"GET", b"/api/v1/pods", body)
        writes = manager.store.writes
        manager.store.delete(CacheKey("kubelet", PODS, "default", "a"))  # would come back if re-applied
        feed_answer(manager, b"GET", b"/api/v1/pods", body)
        self.assertEqual(cached_names(manager), [])
        feed_answer(manager, b"GET", b"/api/v1/pods", pod_list(pod("a", rv=101), rv=101))
        self.assertEqual(cached_names(manager), ["a"])
        self.assertGreater(manager.store.writes, writes)

    def test_a_repeated_list_is_told_unchanged_by_its_head_until_another_version_lands(self) -> None:
        manager = make_manager()
        info = parse_request_info(b"GET", b"/api/v1/pods", b"kubelet/v1.31.0")
        v100 = json.dumps(pod_list(pod("a"), rv=100)).encode()
        v100_spaced = json.dumps(pod_list(pod("a"), rv=100), indent=1).encode()
        v101 = json.dumps(pod_list(pod("a", rv=101), rv=101)).encode()
        self.assertFalse(manager.list_unchanged(info, v100))  # nothing applied yet
        feed_answer(manager, b"GET", b"/api/v1/pods", v100)
        for _ in range(3):  # the first repeat is read by the version search, the rest by the head
            self.assertTrue(manager.list_unchanged(info, v100))
        self.assertTrue(manager.list_unchanged(info, v100_spaced))  # same version, other bytes
        self.assertFalse(manager.list_unchanged(info, v101))
        self.assertFalse(manager.list_unchanged(info, v100[:40]))  # no version in it at all
        feed_answer(manager, b"GET", b"/api/v1/pods", v101)
        self.assertFalse(manager.list_unchanged(info, v100))  # the old head no longer vouches
        self.assertTrue(manager.list_unchanged(info, v101))
        manager.forget_versions()
        self.assertFalse(manager.list_unchanged(info, v101))
        # Another User-Agent version of the same component shares the list's version.
        feed_answer(manager, b"GET", b"/api/v1/pods", v101)
        self.assertTrue(manager.list_unchanged(parse_request_info(b"GET", b"/api/v1/pods", b"kubelet/v1.32.1"), v101))

    def test_list_version_is_read_from_the_head(self) -> None:
        from yurthub.cache.manager import list_head_match

        found = list_head_match(b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"42"},"items":[]}')
        self.assertEqual(found.group(1) if found else None, b"42")
        self.assertIsNone(list_head_match(b'{"kind":"PodList","items":[{"metadata":{"resourceVersion":"7"}}]}'))

    def test_list_decoding_item_by_item_matches_a_whole_decode(self) -> None:
        document = pod_list(pod("a", app="x"), pod("b"), rv=9)
        document["items"].append({"kind": "Pod", "metadata": {"name": "c", "namespace": "default", "resourceVersion": "3"}})
        for body in (json.dumps(document).encode(), json.dumps(document, indent=2).encode(),
                     json.dumps({"items": document["items"], "metadata": document["metadata"], "kind": "PodList", "apiVersion": "v1"}).encode()):
            items, rv = decode_list(body, "kubelet", PODS, "")
            self.assertEqual(rv, "9")
            decoded = [json.loads(data) for _, data in items.values()]
            expected = [{"kind": "Pod", "apiVersion": "v1", **item} for item in document["items"]]
            self.assertEqual(decoded, expected)
            self.assertEqual([k.name for k in items], ["a", "b", "c"])
        for broken in (b'{"kind":"PodList","items":[{"metadata":{}}', b'{"items":[1,]}', b"[]", b'{"items":[]} x'):
            with self.assertRaises(ValueError):
                decode_list(broken, "kubelet", PODS, "")

    def test_list_items_get_kind_and_api_version(self) -> None:
        items, rv = decode_list(json.dumps(pod_list(pod("a"), rv=7)).encode(), "kubelet", PODS, "")
        self.assertEqual(rv, "7")
        obj = json.loads(items[CacheKey("kubelet", PODS, "default", "a")][1])
        self.assertEqual((obj["kind"], obj["apiVersion"]), ("Pod", "v1"))

    def test_truncated_or_garbage_answers_change_nothing(self) -> None:
        manager = make_manager()
        feed_answer(manager, b"GET", b"/api/v1/pods", pod_list(pod("a"), pod("b")))
        feed_answer(manager, b"GET", b"/api/v1/pods", b'{"kind":"PodList","items":[{"metadata":')
        feed_answer(manager, b"GET", b"/api/v1/pods", b"<html>oops</html>")
        self.assertEqual(cached_names(manager), ["a", "b"])
        self.assertIn(b'yurthub_cache_errors_total{kind="decode"} 2.0', manager._metrics.render())

    def test_abandoned_answer_changes_nothing(self) -> None:
        manager = make_manager()
        info = parse_request_info(b"GET", b"/api/v1/pods", b"kubelet/v1")
        request = Request(DummyChannel())
        tee = manager.tee_for(info, request)
        assert tee is not None
        tee.start(200, b"application/json")
        tee.feed(json.dumps(pod_list(pod("x"))).encode())
        tee.abandon()
        tee.finish()
        self.assertEqual(cached_names(manager), [])

    def test_watch_events_apply_in_order_across_chunk_boundaries(self) -> None:
        manager = make_manager()
        events = [
            {"type": "ADDED", "object": {"kind": "Pod", "apiVersion": "v1", **pod("a", rv=20)}},
            {"type": "ADDED", "object": {"kind": "Pod", "apiVersion": "v1", **pod("b", rv=21)}},
            {"type": "MODIFIED", "object": {"kind": "Pod", "apiVersion": "v1", **pod("a", rv=22, changed="yes")}},
            {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "23"}}},
            {"type": "DELETED", "object": {"kind": "Pod", "apiVersion": "v1", **pod("b", rv=24)}},
        ]
        stream = b"".join(json.dumps(e).encode() + b"\n" for e in events)
        feed_answer(manager, b"GET", b"/api/v1/pods?watch=true", stream, chunks=37)
        self.assertEqual(cached_names(manager), ["a"])
        self.assertEqual(manager.bookmarks[("kubelet", PODS, "")], "23")
        data = manager.store.get(CacheKey("kubelet", PODS, "default", "a"))
        self.assertEqual(json.loads(data)["metadata"]["labels"], {"changed": "yes"})

    def test_older_object_never_replaces_newer(self) -> None:
        manager = make_manager()
        feed_answer(manager, b"GET", b"/api/v1/namespaces/default/pods/a", {"kind": "Pod", **pod("a", rv=50, v="new")})
        feed_answer(manager, b"GET", b"/api/v1/namespaces/default/pods/a", {"kind": "Pod", **pod("a", rv=40, v="old")})
        data = manager.store.get(CacheKey("kubelet", PODS, "default", "a"))
        self.assertEqual(json.loads(data)["metadata"]["labels"], {"v": "new"})

    def test_path_traversal_names_are_never_cached(self) -> None:
        manager = make_manager()
        for name in ("../../etc/passwd", "a/b", "..", "x" * 300):
            feed_answer(manager, b"GET", b"/api/v1/namespaces/default/pods/x", {"kind": "Pod", **pod(name)})
        self.assertEqual(cached_names(manager), [])


class ListItemsTests(SynchronousTestCase):
    """A decoded list is a mapping {key: (resourceVersion, bytes)} holding only names and
    bytes, and nothing of the answer stays once it is applied."""

    def test_a_list_is_a_mapping_of_keys_to_versions_and_bytes(self) -> None:
        document = pod_list(pod("a", rv=3), pod("b", rv=4), pod("a", namespace="kube-system", rv=5), rv=9)
        for body in (json.dumps(document, separators=(",", ":")).encode(), json.dumps(document, indent=2).encode()):
            items, rv = decode_list(body, "kubelet", PODS, "")
            keys = [CacheKey("kubelet", PODS, "default", "a"), CacheKey("kubelet", PODS, "default", "b"),
                    CacheKey("kubelet", PODS, "kube-system", "a")]
            self.assertEqual((rv, len(items), list(items)), ("9", 3, keys))
            self.assertEqual([hash(k) for k in items], [hash(k) for k in keys])
            self.assertEqual([v for v, _ in items.values()], ["3", "4", "5"])  # spaced: kept apart
            for key, (version, data) in items.items():
                self.assertIn(key, items)
                self.assertEqual(items[key], (version, data))
                self.assertEqual(json.loads(data)["metadata"]["name"], key.name)
            self.assertEqual(dict(items), {k: items[k] for k in keys})

    def test_other_keys_are_not_in_it(self) -> None:
        items = ListItems("kubelet", PODS)
        items.add(CacheKey("kubelet", PODS, "default", "a"), "1", b'{"metadata":{"resourceVersion":"1"}}')
        for other in (CacheKey("kube-proxy", PODS, "default", "a"), CacheKey("kubelet", GVR("", "v1", "nodes"), "default", "a"),
                      CacheKey("kubelet", PODS, "other", "a"), CacheKey("kubelet", PODS, "default", "b"), "a"):
            self.assertNotIn(other, items)
            self.assertRaises(KeyError, items.__getitem__, other)
        self.assertRaises(ValueError, items.add, CacheKey("kube-proxy", PODS, "default", "a"), "1", b"{}")

    def test_a_repeated_object_counts_once_and_the_last_wins(self) -> None:
        items = ListItems("kubelet", PODS)
        key = CacheKey("kubelet", PODS, "default", "a")
        items.add(key, "7", b"{}")
        items.add(key, "2", b'{"metadata":{"resourceVersion":"2"}}')
        self.assertEqual((len(items), items[key]), (1, ("2", b'{"metadata":{"resourceVersion":"2"}}')))

    def test_decoding_empties_the_holder_of_the_answer(self) -> None:
        holder = [json.dumps(pod_list(pod("a"))).encode()]
        decode_list(holder, "kubelet", PODS, "")
        self.assertEqual(holder, [])

    def test_nothing_of_a_list_answer_stays_but_its_objects(self) -> None:
        manager = make_manager()
        count = 2000
        pods = pod_list(*(pod(f"pod-{n:05d}", namespace="bulk", rv=100 + n) for n in range(count)))
        body = json.dumps(pods, separators=(",", ":")).encode()  # compact, as kube-apiserver sends it
        del pods
        gc.collect()
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        size = len(body)
        feed_answer(manager, b"GET", b"/api/v1/namespaces/bulk/pods", body, chunks=50)
        del body
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        cached = manager.store.list("kubelet", PODS, "bulk")
        self.assertEqual(len(cached), count)
        data = sum(sys.getsizeof(d) for _, d in cached)
        del cached
        # ~115 bytes per object beside its bytes (its name and a dict slot); the answer
        # itself, or keys and tuples per object, would be far more.
        self.assertLess(held - data, 150 * count)
        self.assertLess(held - data, size // 2)  # the answer itself would be all of size


class WatchEventCutTests(SynchronousTestCase):
    """A watch event's object bytes are stored as they came when they can be cut out
    safely; anything else is decoded whole."""

    def test_the_object_of_a_canonical_event_is_cut_out(self) -> None:
        from yurthub.cache.manager import _event_of

        obj = {"kind": "Pod", "metadata": {"name": "a", "resourceVersion": "5"}, "spec": {"x": "},\"object\":"}}
        line = json.dumps({"type": "MODIFIED", "object": obj}, separators=(",", ":")).encode()
        event, data = _event_of(line)
        self.assertEqual(event, {"type": "MODIFIED", "object": obj})
        self.assertEqual(data, json.dumps(obj, separators=(",", ":")).encode())

    def test_other_shapes_are_decoded_whole(self) -> None:
        from yurthub.cache.manager import _event_of

        obj = {"metadata": {"name": "a"}}
        for line in (
            json.dumps({"type": "ADDED", "object": obj}).encode(),  # spaces
            b'{"type":"ADDED","object":{"metadata":{"name":"a"}},"extra":{"b":1}}',  # a key after the object
            b'{"object":{"metadata":{"name":"a"}},"type":"ADDED"}',  # object first
        ):
            event, data = _event_of(line)
            self.assertEqual(event["object"], obj, line)
            self.assertIsNone(data, line)
        self.assertRaises(ValueError, _event_of, b'{"type":"ADDED","object":{"metadata"')
        self.assertRaises(ValueError, _event_of, b"[1,2]")

    @given(st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=12), st.integers()), max_size=5))
    def test_a_cut_object_is_always_the_decoded_one(self, extra: dict[str, Any]) -> None:
        from yurthub.cache.manager import _event_of

        obj = {"metadata": {"name": "a"}, **extra}
        for line in (
            json.dumps({"type": "MODIFIED", "object": obj}, separators=(",", ":")).encode(),
            json.dumps({"type": "MODIFIED", "object": obj, "z": extra}, separators=(",", ":")).encode(),
        ):
            event, data = _event_of(line)
            self.assertEqual(event["object"], obj)
            if data is not None:
                self.assertEqual(json.loads(data), obj)


class DiscoveryNameTests(SynchronousTestCase):
    """Which discovery paths name a cache document."""

    def test_discovery_paths(self) -> None:
        self.assertEqual(discovery_document_name("/api"), "discovery.api")
        self.assertEqual(discovery_document_name("/apis/apps/v1/"), "discovery.apis.apps.v1")
        self.assertEqual(discovery_document_name("/version"), "discovery.version")
        self.assertIsNone(discovery_document_name("/api/v1/pods"))

    def test_segments_that_cannot_name_a_document_are_not_cached(self) -> None:
        # Found by the online fuzz test: the answer was relayed, then caching it raised.
        for path in ("/apis/apps/\x00..", "/apis/Apps", "/apis/a%2fb/v1", "/api/" + "v" * 300):
            self.assertIsNone(discovery_document_name(path), path)
