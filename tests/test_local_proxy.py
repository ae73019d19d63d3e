"""Tests for the offline answers (yurthub/proxy/local.py), in memory on a Clock."""

from __future__ import annotations

import base64
import json

from twisted.trial.unittest import SynchronousTestCase

from tests.offline_support import Answer, ask, feed_answer, make_local, pod, pod_list
from yurthub.proxy.local import list_body, token_request_from_protobuf


def seeded():  # type: ignore[no-untyped-def]
    local, manager, clock = make_local()
    feed_answer(
        manager,
        b"GET",
        b"/api/v1/pods",
        pod_list(
            pod("web-1", app="web", tier="front"),
            pod("web-2", app="web"),
            pod("db-1", app="db"),
            pod("other", namespace="kube-system", node="edge-2", app="dns"),
        ),
    )
    node = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": "edge-1", "resourceVersion": "5", "labels": {}}, "status": {}}
    feed_answer(manager, b"GET", b"/api/v1/nodes/edge-1", node)
    return local, manager, clock


def names(answer: Answer) -> list[str]:
    return [i["metadata"]["name"] for i in answer.json()["items"]]


class ReadTests(SynchronousTestCase):
    """get and list from the cache, with any selector."""

    def test_get_from_the_cache_and_404_when_never_cached(self) -> None:
        local, _, _ = seeded()
        answer, _ = ask(local, b"GET", b"/api/v1/namespaces/default/pods/web-1")
        assert answer is not None
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json()["metadata"]["name"], "web-1")
        self.assertEqual(answer.json()["kind"], "Pod")  # filled in from the list's kind
        answer, _ = ask(local, b"GET", b"/api/v1/namespaces/default/pods/nope")
        assert answer is not None
        self.assertEqual((answer.code, answer.json()["reason"], answer.json()["kind"]), (404, "NotFound", "Status"))

    def test_cluster_scoped_get(self) -> None:
        local, _, _ = seeded()
        answer, _ = ask(local, b"GET", b"/api/v1/nodes/edge-1")
        assert answer is not None
        self.assertEqual((answer.code, answer.json()["metadata"]["name"]), (200, "edge-1"))

    def test_label_selectors_of_every_kind(self) -> None:
        local, _, _ = seeded()
        cases = {
            b"app=web": ["web-1", "web-2"],
            b"app==web": ["web-1", "web-2"],
            b"app!=web": ["db-1", "other"],
            b"app%20in%20(db,dns)": ["db-1", "other"],
            b"app%20notin%20(db,dns)": ["web-1", "web-2"],
            b"tier": ["web-1"],
            b"!tier": ["db-1", "web-2", "other"],
            b"app=web,tier=front": ["web-1"],
        }
        for selector, expected in cases.items():
            answer, _ = ask(local, b"GET", b"/api/v1/pods?labelSelector=" + selector)
            assert answer is not None
            self.assertEqual(answer.code, 200, selector)
            self.assertEqual(sorted(names(answer)), sorted(expected), selector)

    def test_field_selectors(self) -> None:
        local, _, _ = seeded()
        cases = {
            b"spec.nodeName%3Dedge-2": ["other"],
            b"metadata.namespace%3Ddefault": ["db-1", "web-1", "web-2"],
            b"metadata.name%3Dweb-2": ["web-2"],
            b"status.phase%3DRunning,spec.nodeName!%3Dedge-2": ["db-1", "web-1", "web-2"],
        }
        for selector, expected in cases.items():
            answer, _ = ask(local, b"GET", b"/api/v1/pods?fieldSelector=" + selector)
            assert answer is not None
            self.assertEqual(sorted(names(answer)), sorted(expected), selector)
        answer, _ = ask(local, b"GET", b"/api/v1/pods?fieldSelector=spec.bogus%3Dx")
        assert answer is not None
        self.assertEqual(answer.code, 400)

    def test_namespace_list_and_list_body_splices_cached_bytes(self) -> None:
        local, manager, _ = seeded()
        answer, _ = ask(local, b"GET", b"/api/v1/namespaces/kube-system/pods")
        assert answer is not None
        self.assertEqual(names(answer), ["other"])
        document = answer.json()
        self.assertEqual((document["kind"], document["apiVersion"]), ("PodList", "v1"))
        cached = [data for _, data in manager.store.list("kubelet", manager_gvr(), "kube-system")]
        self.assertIn(cached[0], answer.body)

    def test_empty_kubelet_pod_list_is_404(self) -> None:
        local, _, _ = seeded()
        answer, _ = ask(local, b"GET", b"/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-9")
        assert answer is not None
        self.assertEqual(answer.code, 404)
        answer, _ = ask(local, b"GET", b"/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-9", agent=b"kube-proxy/v1.31.0")
        assert answer is not None
        self.assertEqual(answer.code, 200)  # others get the (empty) truth

    def test_list_by_name_never_cached_is_an_empty_list(self) -> None:
        local, _, _ = seeded()
        answer, _ = ask(local, b"GET", b"/api/v1/nodes?fieldSelector=metadata.name%3Dedge-7")
        assert answer is not None
        self.assertEqual((answer.code, answer.json()["items"]), (200, []))

    def test_a_repeated_list_follows_changes_to_the_cache(self) -> None:
        local, manager, _ = seeded()
        first, _ = ask(local, b"GET", b"/api/v1/namespaces/default/pods")
        again, _ = ask(local, b"GET", b"/api/v1/namespaces/default/pods")
        assert first is not None and again is not None
        self.assertEqual(first.body, again.body)
        feed_answer(manager, b"GET", b"/api/v1/namespaces/default/pods/new-1", {"kind": "Pod", **pod("new-1", rv=300)})
        third, _ = ask(local, b"GET", b"/api/v1/namespaces/default/pods")
        assert third is not None
        self.assertIn("new-1", names(third))
        patched, _ = ask(local, b"PATCH", b"/api/v1/namespaces/default/pods/new-1",
                         headers={b"content-type": [b"application/merge-patch+json"]}, body=b'{"metadata":{"labels":{"x":"y"}}}')
        assert patched is not None
        fourth, _ = ask(local, b"GET", b"/api/v1/namespaces/default/pods?labelSelector=x%3Dy")
        assert fourth is not None
        self.assertEqual(names(fourth), ["new-1"])

    def test_never_cached_resource_is_404(self) -> None:
        local, _, _ = seeded()
        answer, _ = ask(local, b"GET", b"/api/v1/configmaps")
        assert answer is not None
        self.assertEqual(answer.code, 404)

    def test_other_components_read_what_agents_cached(self) -> None:
        local, _, _ = seeded()
        answer, _ = ask(local, b"GET", b"/api/v1/pods?labelSelector=app%3Ddb", agent=b"kubectl/v1.32.4")
        assert answer is not None
        self.assertEqual(names(answer), ["db-1"])

    def test_table_for_kubectl(self) -> None:
        local, _, _ = seeded()
        accept = [b"application/json;as=Table;v=v1;g=meta.k8s.io,application/json"]
        answer, _ = ask(local, b"GET", b"/api/v1/pods", agent=b"kubectl/v1.32.4", headers={b"accept": accept})
        assert answer is not None
        table = answer.json()
        self.assertEqual(table["kind"], "Table")
        columns = [c["name"] for c in table["columnDefinitions"]]
        for column in ("Name", "Ready", "Status", "Restarts", "Age"):
            self.assertIn(column, columns)
        self.assertEqual(len(table["rows"]), 4)
        self.assertEqual(table["rows"][0]["object"]["kind"], "PartialObjectMetadata")


def manager_gvr():  # type: ignore[no-untyped-def]
    from yurthub.cache.keys import GVR

    return GVR("", "v1", "pods")


class WatchTests(SynchronousTestCase):
    """Offline watches are held open, then end at timeoutSeconds or when the cloud is back."""

    def test_watch_is_held_until_timeout(self) -> None:
        local, _, clock = seeded()
        answer, request = ask(local, b"GET", b"/api/v1/pods?watch=true&timeoutSeconds=30")
        self.assertIsNone(answer)
        self.assertTrue(request.startedWriting)
        self.assertEqual(request.code, 200)
        clock.advance(29)
        self.assertFalse(request.finished)
        clock.advance(1)
        self.assertTrue(request.finished)
        self.assertEqual(local.open_watches, 0)

    def test_watch_ends_when_the_cloud_is_back(self) -> None:
        local, _, _ = seeded()
        _, request = ask(local, b"GET", b"/api/v1/pods?watch=1")
        self.assertEqual(local.open_watches, 1)
        local.cloud_is_back()
        self.assertTrue(request.finished)
        self.assertEqual(local.open_watches, 0)


class WriteTests(SynchronousTestCase):
    """create, update and patch offline stick; delete is refused."""

    def test_create_echoes_and_keeps_events(self) -> None:
        local, manager, _ = seeded()
        event = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "web-1."}, "reason": "Started"}
        answer, _ = ask(local, b"POST", b"/api/v1/namespaces/default/events", body=json.dumps(event).encode())
        assert answer is not None
        self.assertEqual(answer.code, 201)
        created = answer.json()
        self.assertTrue(created["metadata"]["name"].startswith("web-1."))
        self.assertEqual(created["reason"], "Started")
        listed, _ = ask(local, b"GET", b"/api/v1/namespaces/default/events")
        assert listed is not None
        self.assertEqual(names(listed), [created["metadata"]["name"]])

    def test_update_and_patches_apply_to_the_cached_copy(self) -> None:
        local, _, _ = seeded()
        answer, _ = ask(local, b"GET", b"/api/v1/namespaces/default/pods/web-1")
        assert answer is not None
        obj = answer.json()
        obj["metadata"]["labels"]["updated"] = "yes"
        updated, _ = ask(local, b"PUT", b"/api/v1/namespaces/default/pods/web-1", body=json.dumps(obj).encode())
        assert updated is not None
        self.assertEqual((updated.code, updated.json()["metadata"]["labels"]["updated"]), (200, "yes"))
        for content_type, patch, check in (
            (b"application/merge-patch+json", {"metadata": {"labels": {"m": "1"}}}, lambda o: o["metadata"]["labels"]["m"] == "1"),
            (b"application/json-patch+json", [{"op": "add", "path": "/metadata/labels/j", "value": "2"}], lambda o: o["metadata"]["labels"]["j"] == "2"),
            (b"application/strategic-merge-patch+json", {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}, lambda o: o["spec"]["containers"] == [{"name": "c", "image": "nginx"}]),
        ):
            patched, _ = ask(local, b"PATCH", b"/api/v1/namespaces/default/pods/web-1", headers={b"content-type": [content_type]}, body=json.dumps(patch).encode())
            assert patched is not None
            self.assertEqual(patched.code, 200, patched.body)
            again, _ = ask(local, b"GET", b"/api/v1/namespaces/default/pods/web-1")
            assert again is not None
            self.assertTrue(check(again.json()), (content_type, again.json()))
        self.assertEqual(again.json()["metadata"]["labels"]["updated"], "yes")  # every change stuck

    def test_status_update_changes_only_status(self) -> None:
        local, _, _ = seeded()
        body = {"metadata": {"name": "edge-1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}, "spec": {"unschedulable": True}}
        answer, _ = ask(local, b"PUT", b"/api/v1/nodes/edge-1/status", body=json.dumps(body).encode())
        assert answer is not None
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json()["status"]["conditions"][0]["type"], "Ready")
        self.assertNotIn("unschedulable", answer.json().get("spec", {}))

    def test_patch_of_an_uncached_object_is_404(self) -> None:
        local, _, _ = seeded()
        answer, _ = ask(local, b"PATCH", b"/api/v1/namespaces/default/pods/ghost", headers={b"content-type": [b"application/merge-patch+json"]}, body=b"{}")
        assert answer is not None
        self.assertEqual(answer.code, 404)

    def test_delete_and_deletecollection_are_forbidden(self) -> None:
        local, _, _ = seeded()
        for path in (b"/api/v1/namespaces/default/pods/web-1", b"/api/v1/namespaces/default/pods"):
            answer, _ = ask(local, b"DELETE", path)
            assert answer is not None
            self.assertEqual((answer.code, answer.json()["reason"]), (403, "Forbidden"))
        still, _ = ask(local, b"GET", b"/api/v1/namespaces/default/pods/web-1")
        assert still is not None
        self.assertEqual(still.code, 200)

    def test_bad_bodies_get_400(self) -> None:
        local, _, _ = seeded()
        for body in (b"not json", b"[1,2]"):
            answer, _ = ask(local, b"POST", b"/api/v1/namespaces/default/events", body=body)
            assert answer is not None
            self.assertEqual(answer.code, 400)


def _jwt_claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def _pb_string(number: int, value: bytes) -> bytes:
    return bytes([number << 3 | 2, len(value)]) + value


class TokenTests(SynchronousTestCase):
    """Service-account token requests get a locally signed short-lived token."""

    def test_json_token_request(self) -> None:
        local, _, clock = seeded()
        body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": ["api"], "expirationSeconds": 600}}).encode()
        answer, _ = ask(local, b"POST", b"/api/v1/namespaces/default/serviceaccounts/default/token", body=body)
        assert answer is not None
        self.assertEqual(answer.code, 201)
        status = answer.json()["status"]
        claims = _jwt_claims(status["token"])
        self.assertEqual(claims["sub"], "system:serviceaccount:default:default")
        self.assertEqual(claims["aud"], ["api"])
        self.assertEqual(claims["exp"], int(clock.seconds()) + 600)

    def test_protobuf_token_request(self) -> None:
        spec = _pb_string(1, b"https://kubernetes.default.svc") + bytes([4 << 3 | 0]) + bytes([0x90, 0x1C])  # 3600
        raw = _pb_string(2, spec)
        unknown = _pb_string(1, _pb_string(1, b"authentication.k8s.io/v1") + _pb_string(2, b"TokenRequest")) + _pb_string(2, raw)
        body = b"k8s\x00" + unknown
        self.assertEqual(token_request_from_protobuf(body), (["https://kubernetes.default.svc"], 3600))
        local, _, _ = seeded()
        answer, _ = ask(local, b"POST", b"/api/v1/namespaces/kube-system/serviceaccounts/coredns/token",
                        headers={b"content-type": [b"application/vnd.kubernetes.protobuf"]}, body=body)
        assert answer is not None
        self.assertEqual(answer.code, 201)
        self.assertEqual(_jwt_claims(answer.json()["status"]["token"])["sub"], "system:serviceaccount:kube-system:coredns")

    def test_garbage_protobuf_is_400(self) -> None:
        local, _, _ = seeded()
        answer, _ = ask(local, b"POST", b"/api/v1/namespaces/default/serviceaccounts/x/token",
                        headers={b"content-type": [b"application/vnd.kubernetes.protobuf"]}, body=b"k8s\x00\xff\xff\xff")
        assert answer is not None
        self.assertEqual(answer.code, 400)


class DiscoveryTests(SynchronousTestCase):
    """Discovery documents cached online are served offline."""

    def test_cached_discovery_is_served_and_missing_is_503(self) -> None:
        local, manager, _ = seeded()
        feed_answer(manager, b"GET", b"/api/v1", {"kind": "APIResourceList", "groupVersion": "v1", "resources": []}, agent=b"kubectl/v1.32")
        answer, _ = ask(local, b"GET", b"/api/v1", agent=b"kubectl/v1.32")
        assert answer is not None
        self.assertEqual((answer.code, answer.json()["kind"]), (200, "APIResourceList"))
        answer, _ = ask(local, b"GET", b"/apis", agent=b"kubectl/v1.32")
        assert answer is not None
        self.assertEqual(answer.code, 503)


class HostileInputTests(SynchronousTestCase):
    """Whatever a client sends offline gets a 4xx Status and nothing outside the cache."""

    def test_traversal_and_garbage_in_every_position(self) -> None:
        local, manager, _ = seeded()
        paths = [
            b"/api/v1/namespaces/../pods/web-1",
            b"/api/v1/namespaces/default/pods/..",
            b"/api/v1/namespaces/default/pods/..%2F..%2Fetc%2Fpasswd",
            b"/api/v1/namespaces/%2E%2E/pods",
            b"/api/v1/namespaces/default/" + b"x" * 300 + b"/a",
            b"/apis/../v1/pods",
            b"/api/v1/namespaces/default/pods/" + b"n" * 300,
            b"/api/v1/namespaces/default/pods?labelSelector=%ZZ",
            b"/api/v1/namespaces/default/pods?labelSelector=a%20in%20(",
            b"/api/v1/namespaces/default/pods?fieldSelector=%00",
        ]
        for method in (b"GET", b"PUT", b"PATCH", b"POST", b"DELETE"):
            for path in paths:
                answer, _ = ask(local, method, path, headers={b"content-type": [b"application/merge-patch+json"]},
                                body=b'{"metadata":{"name":"../../x","namespace":"default"}}')
                assert answer is not None, (method, path)
                self.assertGreaterEqual(answer.code, 200, (method, path))
                # A 4xx, or 503 for what only the cloud can answer; never an internal error.
                self.assertTrue(answer.code < 500 or answer.code == 503, (method, path, answer.body))
                if answer.code >= 400:
                    self.assertEqual(answer.json()["kind"], "Status", (method, path))
        # Nothing new appeared in the cache under a strange name.
        for component in manager.store.components():
            self.assertIn(component, ("kubelet",))


class ListMemoTests(SynchronousTestCase):
    """Offline list answers are reused while the cache is unchanged, within a memory bound."""

    def test_small_answers_are_reused_and_big_ones_rebuilt_not_kept(self) -> None:
        from yurthub.proxy import local as local_module

        local, _, clock = seeded()
        first, _ = ask(local, b"GET", b"/api/v1/namespaces/default/pods")
        assert first is not None
        self.assertEqual(len(local._lists), 1)
        again, _ = ask(local, b"GET", b"/api/v1/namespaces/default/pods")
        assert again is not None
        self.assertEqual(again.body, first.body)
        self.patch(local_module, "MEMO_MAX_ANSWER", len(first.body) - 1)
        local._lists.clear()
        big, _ = ask(local, b"GET", b"/api/v1/namespaces/default/pods")
        assert big is not None
        self.assertEqual(big.body, first.body)  # answered the same ...
        self.assertEqual(local._lists, {})  # ... not kept with the small ones ...
        self.assertEqual(len(local._big), 1)  # ... but while it is asked for again
        clock.advance(local_module.BIG_ANSWER_IDLE - 1)
        ask(local, b"GET", b"/api/v1/namespaces/default/pods")
        clock.advance(local_module.BIG_ANSWER_IDLE - 1)
        self.assertEqual(len(local._big), 1)
        clock.advance(1.5)
        self.assertEqual(local._big, {})  # idle for BIG_ANSWER_IDLE: memory handed back


class ListBodyTests(SynchronousTestCase):
    """Cached objects spliced into a list answer's bytes."""

    def test_items_are_spliced_between_head_and_tail(self) -> None:
        head = b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"5"}}'
        for items in ([], [b'{"a":1}'], [b'{"a":1}', b'{"b": [2]}', b'{"c":"3,4"}']):
            body = list_body(head, items)
            self.assertEqual(
                json.loads(body),
                {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "5"},
                 "items": [json.loads(i) for i in items]},
            )  # fmt: skip
