"""Tests for yurthub.requestinfo: request info resolved the way kube-apiserver resolves it.

The tables restate, with our own data, the cases of kube-apiserver's requestinfo_test.go
(TestGetAPIRequestInfo, TestGetNonAPIRequestInfo, TestSelectorParsing), then pin down the
quirks yurthub must share with it and the yurthub-specific helpers.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from yurthub.requestinfo import RequestInfo, component_from_user_agent, parse_request_info

PROPERTY_EXAMPLES = 2000

# method, target, verb, api_prefix, api_group, api_version, namespace, resource,
# subresource, name, parts
RESOURCE_CASES: list[tuple[str, str, str, str, str, str, str, str, str, str, tuple[str, ...]]] = [
    # resource paths
    ("GET", "/api/v1/namespaces", "list", "api", "", "v1", "", "namespaces", "", "", ("namespaces",)),
    ("GET", "/api/v1/namespaces/kube-system", "get", "api", "", "v1", "kube-system", "namespaces", "", "kube-system", ("namespaces", "kube-system")),
    ("GET", "/api/v1/namespaces/edge/configmaps", "list", "api", "", "v1", "edge", "configmaps", "", "", ("configmaps",)),
    ("GET", "/api/v1/namespaces/edge/configmaps/kube-root-ca.crt", "get", "api", "", "v1", "edge", "configmaps", "", "kube-root-ca.crt", ("configmaps", "kube-root-ca.crt")),
    ("HEAD", "/api/v1/namespaces/edge/configmaps/kube-root-ca.crt", "get", "api", "", "v1", "edge", "configmaps", "", "kube-root-ca.crt", ("configmaps", "kube-root-ca.crt")),
    ("GET", "/api/v1/nodes", "list", "api", "", "v1", "", "nodes", "", "", ("nodes",)),
    ("HEAD", "/api/v1/nodes", "list", "api", "", "v1", "", "nodes", "", "", ("nodes",)),
    ("GET", "/api/v1/nodes/edge-node-1", "get", "api", "", "v1", "", "nodes", "", "edge-node-1", ("nodes", "edge-node-1")),
    ("PATCH", "/api/v1/namespaces/edge", "patch", "api", "", "v1", "edge", "namespaces", "", "edge", ("namespaces", "edge")),
    # verbs carried in the path (legacy forms)
    ("GET", "/api/v1/proxy/namespaces/edge/services/web", "proxy", "api", "", "v1", "edge", "services", "", "web", ("services", "web")),
    ("GET", "/api/v1/proxy/namespaces/edge/services/web/healthz/deep", "proxy", "api", "", "v1", "edge", "services", "", "web", ("services", "web", "healthz", "deep")),
    ("GET", "/api/v1/watch/nodes", "watch", "api", "", "v1", "", "nodes", "", "", ("nodes",)),
    ("GET", "/api/v1/nodes?watch=true", "watch", "api", "", "v1", "", "nodes", "", "", ("nodes",)),
    ("GET", "/api/v1/nodes?watch=false", "list", "api", "", "v1", "", "nodes", "", "", ("nodes",)),
    ("GET", "/api/v1/watch/namespaces/edge/secrets", "watch", "api", "", "v1", "edge", "secrets", "", "", ("secrets",)),
    ("GET", "/api/v1/namespaces/edge/secrets?watch=1", "watch", "api", "", "v1", "edge", "secrets", "", "", ("secrets",)),
    ("GET", "/api/v1/namespaces/edge/secrets?watch=0", "list", "api", "", "v1", "edge", "secrets", "", "", ("secrets",)),
    ("GET", "/api/v1/watch/namespaces/edge/secrets/token", "watch", "api", "", "v1", "edge", "secrets", "", "token", ("secrets", "token")),
    # subresources
    ("GET", "/api/v1/namespaces/edge/pods/web-0/status", "get", "api", "", "v1", "edge", "pods", "status", "web-0", ("pods", "web-0", "status")),
    ("GET", "/api/v1/namespaces/edge/pods/web-0/proxy/metrics", "get", "api", "", "v1", "edge", "pods", "proxy", "web-0", ("pods", "web-0", "proxy", "metrics")),
    ("PUT", "/api/v1/namespaces/edge/finalize", "update", "api", "", "v1", "edge", "namespaces", "finalize", "edge", ("namespaces", "edge", "finalize")),
    ("PUT", "/api/v1/namespaces/edge/status", "update", "api", "", "v1", "edge", "namespaces", "status", "edge", ("namespaces", "edge", "status")),
    ("PATCH", "/api/v1/nodes/edge-node-1/status", "patch", "api", "", "v1", "", "nodes", "status", "edge-node-1", ("nodes", "edge-node-1", "status")),
    # verbs from the HTTP method
    ("PATCH", "/api/v1/namespaces/edge/pods/web-0", "patch", "api", "", "v1", "edge", "pods", "", "web-0", ("pods", "web-0")),
    ("DELETE", "/api/v1/namespaces/edge/pods/web-0", "delete", "api", "", "v1", "edge", "pods", "", "web-0", ("pods", "web-0")),
    ("POST", "/api/v1/namespaces/edge/pods", "create", "api", "", "v1", "edge", "pods", "", "", ("pods",)),
    ("PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-node-1", "update", "apis", "coordination.k8s.io", "v1", "kube-node-lease", "leases", "", "edge-node-1", ("leases", "edge-node-1")),
    ("OPTIONS", "/api/v1/nodes/edge-node-1", "", "api", "", "v1", "", "nodes", "", "edge-node-1", ("nodes", "edge-node-1")),
    # deletecollection
    ("DELETE", "/api/v1/nodes", "deletecollection", "api", "", "v1", "", "nodes", "", "", ("nodes",)),
    ("DELETE", "/api/v1/namespaces", "deletecollection", "api", "", "v1", "", "namespaces", "", "", ("namespaces",)),
    ("DELETE", "/api/v1/namespaces/edge/pods", "deletecollection", "api", "", "v1", "edge", "pods", "", "", ("pods",)),
    ("DELETE", "/apis/apps/v1/namespaces/edge/deployments", "deletecollection", "apis", "apps", "v1", "edge", "deployments", "", "", ("deployments",)),
    # named groups and versions
    ("POST", "/apis/apps/v1/namespaces/edge/deployments", "create", "apis", "apps", "v1", "edge", "deployments", "", "", ("deployments",)),
    ("POST", "/apis/batch/v1beta1/namespaces/edge/cronjobs", "create", "apis", "batch", "v1beta1", "edge", "cronjobs", "", "", ("cronjobs",)),
    ("GET", "/apis/discovery.k8s.io/v1/endpointslices?watch=true", "watch", "apis", "discovery.k8s.io", "v1", "", "endpointslices", "", "", ("endpointslices",)),
    ("GET", "/apis/apps/v1/namespaces/edge/deployments/web/scale", "get", "apis", "apps", "v1", "edge", "deployments", "scale", "web", ("deployments", "web", "scale")),
]  # fmt: skip

RESOURCE_PATHS = [
    "/api/v1/configmaps",
    "/apis/apps/v1/deployments/web/scale",
    "/api/v1/nodes/edge-node-1/status",
    "/apis/batch/v1/jobs",
    "/apis/batch/v1/jobs/nightly",
    "/apis/batch/v1/jobs/nightly/status",
    "/api/v1/watch",
]

NON_RESOURCE_PATHS = [
    "",
    "/",
    "/api",
    "/api/",
    "/api/v1",
    "/api/v1/",
    "/apis",
    "/apis/apps",
    "/apis/apps/v1",
    "/apis/apps/v1/",
    "/apis/v1/pods",
    "/healthz",
    "/version",
    "/openapi/v2",
    "/not-api/v1/pods",
    "/API/v1/pods",
]


class ParseRequestInfoTests(SynchronousTestCase):
    """parse_request_info resolves paths, methods and queries as kube-apiserver does."""

    def test_resource_requests_resolve_like_kube_apiserver(self) -> None:
        failures = []
        for method, target, *expected in RESOURCE_CASES:
            info = parse_request_info(method, target)
            actual = [
                info.verb,
                info.api_prefix,
                info.api_group,
                info.api_version,
                info.namespace,
                info.resource,
                info.subresource,
                info.name,
                info.parts,
            ]
            if not info.is_resource_request or actual != expected:
                failures.append(f"{method} {target}: expected {expected}, got {actual}")
        self.assertEqual(failures, [])

    def test_paths_with_a_resource_are_resource_requests(self) -> None:
        for path in RESOURCE_PATHS:
            self.assertTrue(parse_request_info("GET", path).is_resource_request, path)

    def test_paths_without_a_resource_are_non_resource_requests(self) -> None:
        for path in NON_RESOURCE_PATHS:
            info = parse_request_info("GET", path)
            self.assertFalse(info.is_resource_request, path)
            self.assertEqual(
                (info.api_prefix, info.api_group, info.api_version, info.resource, info.parts),
                ("", "", "", "", ()),
                path,
            )

    def test_non_resource_verb_is_the_lower_cased_method(self) -> None:
        self.assertEqual(parse_request_info("POST", "/healthz").verb, "post")
        self.assertEqual(parse_request_info("GET", "/version").verb, "get")
        self.assertEqual(parse_request_info(b"OPTIONS", b"/").verb, "options")

    def test_method_case_does_not_matter(self) -> None:
        self.assertEqual(parse_request_info("get", "/api/v1/nodes").verb, "list")
        self.assertEqual(parse_request_info("Delete", "/api/v1/nodes/n1").verb, "delete")

    def test_path_keeps_no_query(self) -> None:
        info = parse_request_info("GET", "/api/v1/pods?watch=true&resourceVersion=5")
        self.assertEqual(info.path, "/api/v1/pods")
        self.assertEqual(info.query, "watch=true&resourceVersion=5")

    def test_bytes_and_text_give_the_same_info(self) -> None:
        target = "/apis/apps/v1/namespaces/edge/deployments?watch=1"
        self.assertEqual(
            parse_request_info(b"GET", target.encode(), b"kubelet/v1.31.0"),
            parse_request_info("GET", target, "kubelet/v1.31.0"),
        )

    def test_component_comes_from_the_user_agent(self) -> None:
        info = parse_request_info("GET", "/api/v1/pods", "kube-proxy/v1.31.0 (linux/arm64)")
        self.assertEqual(info.component, "kube-proxy")
        self.assertEqual(parse_request_info("GET", "/healthz").component, "")

    def test_watch_is_anything_but_false_or_zero(self) -> None:
        # kube-apiserver's query booleans: present and not "0"/"false" (any case) is true.
        for query in ("watch=true", "watch=1", "watch=TRUE", "watch=yes", "watch=", "watch"):
            self.assertEqual(
                parse_request_info("GET", f"/api/v1/pods?{query}").verb, "watch", query
            )
        for query in ("watch=false", "watch=FALSE", "watch=False", "watch=0", "", "watcher=1"):
            self.assertEqual(parse_request_info("GET", f"/api/v1/pods?{query}").verb, "list", query)

    def test_first_watch_value_wins(self) -> None:
        self.assertEqual(parse_request_info("GET", "/api/v1/pods?watch=0&watch=1").verb, "list")
        self.assertEqual(parse_request_info("GET", "/api/v1/pods?watch=1&watch=0").verb, "watch")

    def test_watch_query_is_ignored_when_the_path_names_an_object(self) -> None:
        self.assertEqual(parse_request_info("GET", "/api/v1/nodes/n1?watch=true").verb, "get")

    def test_percent_encoded_watch_key_and_value_count(self) -> None:
        self.assertEqual(parse_request_info("GET", "/api/v1/pods?%77atch=%74rue").verb, "watch")

    def test_query_pairs_go_would_drop_are_dropped(self) -> None:
        # Go's url.ParseQuery drops pairs with ";" or with a malformed escape.
        self.assertEqual(parse_request_info("GET", "/api/v1/pods?watch=1;x=2").verb, "list")
        self.assertEqual(parse_request_info("GET", "/api/v1/pods?watch=%zz").verb, "list")

    def test_percent_encoded_slash_splits_the_path(self) -> None:
        # kube-apiserver splits the decoded URL path, so %2F is a separator.
        info = parse_request_info("GET", "/api/v1/namespaces/a%2Fb/pods")
        self.assertEqual((info.namespace, info.resource, info.name), ("a", "b", "pods"))
        self.assertEqual(info.path, "/api/v1/namespaces/a/b/pods")

    def test_percent_encoded_name_is_decoded(self) -> None:
        info = parse_request_info("GET", "/api/v1/namespaces/edge/configmaps/my%20cm%C3%A9")
        self.assertEqual(info.name, "my cmé")

    def test_plus_in_path_is_not_a_space(self) -> None:
        self.assertEqual(parse_request_info("GET", "/api/v1/nodes/a+b").name, "a+b")

    def test_malformed_percent_escape_in_path_is_kept_literally(self) -> None:
        self.assertEqual(parse_request_info("GET", "/api/v1/nodes/50%zz").name, "50%zz")

    def test_invalid_utf8_becomes_replacement_characters(self) -> None:
        info = parse_request_info(b"GET", b"/api/v1/nodes/n\xff%FE1", b"\xffagent/1")
        self.assertEqual(info.name, "n\ufffd\ufffd1")
        self.assertEqual(info.component, "\ufffdagent")

    def test_trailing_slash_is_ignored(self) -> None:
        info = parse_request_info("GET", "/api/v1/namespaces/edge/pods/")
        self.assertEqual((info.verb, info.resource, info.name), ("list", "pods", ""))

    def test_empty_segments_are_kept_as_kube_apiserver_keeps_them(self) -> None:
        info = parse_request_info("GET", "/api//v1/pods")
        self.assertEqual(
            (info.api_version, info.resource, info.name, info.verb), ("", "v1", "pods", "get")
        )
        info = parse_request_info("GET", "/api/v1//pods")
        self.assertEqual((info.resource, info.name), ("", "pods"))

    def test_dot_dot_segments_are_not_cleaned(self) -> None:
        info = parse_request_info("GET", "/api/v1/namespaces/../pods")
        self.assertEqual((info.namespace, info.resource, info.name), ("..", "pods", ""))

    def test_special_verb_without_resource_stops_after_the_version(self) -> None:
        # kube-apiserver answers 500 here; the info it had built so far is what we return.
        info = parse_request_info("GET", "/apis/apps/v1/watch")
        self.assertTrue(info.is_resource_request)
        self.assertEqual(
            (info.verb, info.api_group, info.api_version, info.resource, info.parts),
            ("get", "apps", "v1", "", ()),
        )

    def test_legacy_proxy_verb_has_no_subresource(self) -> None:
        info = parse_request_info("GET", "/api/v1/proxy/nodes/n1/stats/summary")
        self.assertEqual((info.verb, info.name, info.subresource), ("proxy", "n1", ""))

    def test_namespaces_subresource_is_only_status_or_finalize(self) -> None:
        info = parse_request_info("GET", "/api/v1/namespaces/edge/events")
        self.assertEqual((info.namespace, info.resource, info.verb), ("edge", "events", "list"))
        info = parse_request_info("PUT", "/api/v1/namespaces/edge/finalize/extra")
        self.assertEqual(info.parts, ("namespaces", "edge", "finalize", "extra"))

    def test_absolute_form_target_is_reduced_to_its_path(self) -> None:
        info = parse_request_info("GET", "https://10.0.0.1:6443/api/v1/nodes/n1?watch=1")
        self.assertEqual((info.path, info.resource, info.name), ("/api/v1/nodes/n1", "nodes", "n1"))
        self.assertEqual(parse_request_info(b"GET", b"http://host").path, "")

    def test_result_is_hashable_and_immutable(self) -> None:
        info = parse_request_info("GET", "/api/v1/pods")
        self.assertEqual(hash(info), hash(parse_request_info("GET", "/api/v1/pods")))
        with self.assertRaises(AttributeError):
            info.verb = "watch"  # type: ignore[misc]


# method, target, verb, name, field_selector, label_selector
SELECTOR_CASES: list[tuple[str, str, str, str, str, str]] = [
    ("GET", "/apis/g/v1/widgets", "list", "", "", ""),
    ("GET", "/apis/g/v1/widgets?fieldSelector=metadata.name=w1", "list", "w1", "metadata.name=w1", ""),
    ("GET", "/apis/g/v1/widgets?watch=true&fieldSelector=metadata.name=w1", "watch", "w1", "metadata.name=w1", ""),
    ("GET", "/apis/g/v1/widgets?fieldSelector=spec.size=2&labelSelector=tier=edge", "list", "", "spec.size=2", "tier=edge"),
    ("GET", "/apis/g/v1/widgets?fieldSelector=metadata.name=w1,junk", "list", "", "metadata.name=w1,junk", ""),
    ("GET", "/apis/g/v1/widgets?fieldSelector=metadata.name=w1,junk&watch=true", "watch", "", "metadata.name=w1,junk", ""),
    ("GET", "/apis/g/v1/widgets?fieldSelector=metadata.name=w1,junk&watch=false", "list", "", "metadata.name=w1,junk", ""),
    ("DELETE", "/apis/g/v1/widgets?fieldSelector=spec.size=2&labelSelector=tier=edge", "deletecollection", "", "spec.size=2", "tier=edge"),
    ("GET", "/apis/g/v1/widgets?fieldSelector=metadata.name=w1&fieldSelector=metadata.name=w2&labelSelector=a=1&labelSelector=a=2", "list", "w1", "metadata.name=w1", "a=1"),
    ("GET", "/apis/g/v1/widgets/w1?fieldSelector=spec.size=2&labelSelector=a=1", "get", "w1", "", ""),
    ("GET", "/apis/g/v1/watch/widgets?fieldSelector=metadata.name=w1&labelSelector=a=1", "watch", "", "", ""),
    ("GET", "/apis/g/v1/watch/widgets/w1?fieldSelector=metadata.name=w9&labelSelector=a=1", "watch", "w1", "", ""),
]  # fmt: skip


class FieldSelectorNameTests(SynchronousTestCase):
    """A list or watch pinned to one name by its field selector carries that name."""

    def test_selectors_resolve_like_kube_apiserver(self) -> None:
        failures = []
        for method, target, *expected in SELECTOR_CASES:
            info = parse_request_info(method, target)
            actual = [info.verb, info.name, info.field_selector, info.label_selector]
            if actual != expected:
                failures.append(f"{method} {target}: expected {expected}, got {actual}")
        self.assertEqual(failures, [])

    def _name(self, query: str, path: str = "/api/v1/nodes") -> str:
        return parse_request_info("GET", f"{path}?{query}").name

    def test_double_equals_pins_the_name(self) -> None:
        self.assertEqual(self._name("fieldSelector=metadata.name==edge-node-1"), "edge-node-1")

    def test_not_equals_does_not_pin_the_name(self) -> None:
        self.assertEqual(self._name("fieldSelector=metadata.name!=edge-node-1"), "")

    def test_encoded_selector_is_decoded(self) -> None:
        self.assertEqual(self._name("fieldSelector=metadata.name%3Dedge-node-1"), "edge-node-1")

    def test_name_among_other_terms_is_found(self) -> None:
        self.assertEqual(
            self._name("fieldSelector=spec.unschedulable=false,metadata.name=n2"), "n2"
        )

    def test_first_name_term_in_sorted_order_wins(self) -> None:
        self.assertEqual(
            self._name("fieldSelector=metadata.name=zeta,metadata.name=alpha"), "alpha"
        )

    def test_escaped_comma_is_part_of_the_name(self) -> None:
        self.assertEqual(self._name("fieldSelector=metadata.name=a%5C,b"), "a,b")

    def test_malformed_escape_or_bare_equals_spoils_the_selector(self) -> None:
        self.assertEqual(self._name("fieldSelector=metadata.name=a%5Cb"), "")
        self.assertEqual(self._name("fieldSelector=metadata.name=a=b"), "")
        self.assertEqual(self._name("fieldSelector=metadata.name=a%5C"), "")

    def test_names_that_are_not_path_segments_are_ignored(self) -> None:
        for bad in ("..", ".", "a%2Fb", "a%25b"):
            self.assertEqual(self._name(f"fieldSelector=metadata.name={bad}"), "", bad)

    def test_selector_field_is_matched_exactly(self) -> None:
        self.assertEqual(self._name("fieldSelector=metadata.name+=n1"), "")
        self.assertEqual(self._name("fieldSelector=metadata.namespace=n1"), "")

    def test_namespaces_list_by_name_leaves_namespace_empty(self) -> None:
        # Only a namespace in the path counts in kube-apiserver, even for namespaces.
        info = parse_request_info("GET", "/api/v1/namespaces?fieldSelector=metadata.name=edge")
        self.assertEqual((info.resource, info.name, info.namespace), ("namespaces", "edge", ""))

    def test_undecodable_list_options_drop_the_name_but_keep_watch(self) -> None:
        info = parse_request_info("GET", "/api/v1/nodes?fieldSelector=metadata.name=n1&limit=ten")
        self.assertEqual((info.verb, info.name), ("list", ""))
        info = parse_request_info(
            "GET", "/api/v1/nodes?fieldSelector=metadata.name=n1&timeoutSeconds=1.5&watch=1"
        )
        self.assertEqual((info.verb, info.name), ("watch", ""))

    def test_integer_list_options_are_accepted(self) -> None:
        query = "fieldSelector=metadata.name=n1&limit=%2B500&timeoutSeconds=-9223372036854775808"
        self.assertEqual(self._name(query), "n1")
        self.assertEqual(self._name("fieldSelector=metadata.name=n1&limit=9223372036854775808"), "")

    def test_deletecollection_does_not_take_a_name_from_the_selector(self) -> None:
        info = parse_request_info("DELETE", "/api/v1/nodes?fieldSelector=metadata.name=n1")
        self.assertEqual((info.verb, info.name), ("deletecollection", ""))


class ComponentFromUserAgentTests(SynchronousTestCase):
    """component_from_user_agent names the client by its User-Agent product."""

    def test_known_agents(self) -> None:
        cases = {
            "kubelet/v1.31.0 (linux/amd64) kubernetes/abc": "kubelet",
            "kube-proxy/v1.31.0": "kube-proxy",
            "coredns/1.11.1": "coredns",
            "Go-http-client/1.1": "go-http-client",
            "flanneld/0.25.1 (linux/amd64)": "flanneld",
        }
        for agent, component in cases.items():
            self.assertEqual(component_from_user_agent(agent), component, agent)

    def test_missing_agent_gives_empty_component(self) -> None:
        self.assertEqual(component_from_user_agent(None), "")
        self.assertEqual(component_from_user_agent(""), "")
        self.assertEqual(component_from_user_agent(b""), "")

    def test_agent_without_slash_is_used_whole(self) -> None:
        self.assertEqual(component_from_user_agent("Curl"), "curl")

    def test_component_is_stripped(self) -> None:
        self.assertEqual(component_from_user_agent("  Kubelet /v1"), "kubelet")
        self.assertEqual(component_from_user_agent("/v1.2"), "")

    def test_bytes_agent_is_decoded(self) -> None:
        self.assertEqual(component_from_user_agent(b"KUBELET/v1.31.0"), "kubelet")


class IsLongRunningTests(SynchronousTestCase):
    """RequestInfo.is_long_running flags requests that stay open by design."""

    def _long_running(self, method: str, target: str) -> bool:
        return parse_request_info(method, target).is_long_running

    def test_watches_are_long_running(self) -> None:
        self.assertTrue(self._long_running("GET", "/api/v1/pods?watch=true"))
        self.assertTrue(self._long_running("GET", "/api/v1/watch/namespaces/edge/pods"))
        self.assertTrue(parse_request_info("GET", "/api/v1/pods?watch=1").is_watch)

    def test_streaming_subresources_are_long_running(self) -> None:
        for sub in ("exec", "attach", "portforward", "proxy"):
            target = f"/api/v1/namespaces/edge/pods/web-0/{sub}"
            self.assertTrue(self._long_running("POST", target), sub)
            self.assertTrue(self._long_running("GET", target), sub)

    def test_legacy_proxy_verb_is_long_running(self) -> None:
        self.assertTrue(self._long_running("GET", "/api/v1/proxy/nodes/n1/stats"))

    def test_followed_log_is_long_running(self) -> None:
        for follow in ("true", "1", "TRUE"):
            target = f"/api/v1/namespaces/edge/pods/web-0/log?container=c&follow={follow}"
            self.assertTrue(self._long_running("GET", target), follow)

    def test_plain_log_is_not_long_running(self) -> None:
        for query in ("", "?follow=false", "?follow=0", "?tailLines=10"):
            target = f"/api/v1/namespaces/edge/pods/web-0/log{query}"
            self.assertFalse(self._long_running("GET", target), query)

    def test_ordinary_requests_are_not_long_running(self) -> None:
        self.assertFalse(self._long_running("GET", "/api/v1/pods"))
        self.assertFalse(self._long_running("GET", "/api/v1/namespaces/edge/pods/web-0"))
        self.assertFalse(self._long_running("PUT", "/api/v1/namespaces/edge/pods/web-0/status"))
        self.assertFalse(self._long_running("GET", "/healthz"))
        self.assertFalse(parse_request_info("GET", "/api/v1/pods").is_watch)

    def test_profiling_is_long_running(self) -> None:
        self.assertTrue(self._long_running("GET", "/debug/pprof/profile?seconds=30"))
        self.assertFalse(self._long_running("GET", "/debug/pprof"))


class GroupVersionResourceTests(SynchronousTestCase):
    """RequestInfo.group_version_resource names the cache directory of the resource."""

    def test_core_group_is_named_core(self) -> None:
        gvr = parse_request_info("GET", "/api/v1/namespaces/edge/pods").group_version_resource
        self.assertEqual(gvr, "pods.v1.core")

    def test_named_group_is_kept(self) -> None:
        info = parse_request_info("GET", "/apis/discovery.k8s.io/v1/endpointslices")
        self.assertEqual(info.group_version_resource, "endpointslices.v1.discovery.k8s.io")

    def test_subresource_is_not_part_of_it(self) -> None:
        info = parse_request_info("PATCH", "/api/v1/nodes/n1/status")
        self.assertEqual(info.group_version_resource, "nodes.v1.core")

    def test_requests_without_resource_have_none(self) -> None:
        self.assertEqual(parse_request_info("GET", "/healthz").group_version_resource, "")
        self.assertEqual(parse_request_info("GET", "/api/v1/watch").group_version_resource, "")


class QueryValueTests(SynchronousTestCase):
    """RequestInfo.query_value reads query parameters as kube-apiserver sees them."""

    def test_first_decoded_value_is_returned(self) -> None:
        info = parse_request_info("GET", "/api/v1/pods?timeoutSeconds=30&timeoutSeconds=5&x=a+b%21")
        self.assertEqual(info.query_value("timeoutSeconds"), "30")
        self.assertEqual(info.query_value("x"), "a b!")

    def test_absent_key_gives_none(self) -> None:
        info = parse_request_info("GET", "/api/v1/pods?watch")
        self.assertIsNone(info.query_value("limit"))
        self.assertEqual(info.query_value("watch"), "")


def _exercise(info: RequestInfo) -> None:
    """Touch every derived attribute, so a property test also covers them."""
    assert isinstance(info.is_watch, bool)
    assert isinstance(info.is_long_running, bool)
    assert isinstance(info.group_version_resource, str)
    info.query_value("watch")
    hash(info)


_METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get"])
_SEGMENTS = st.sampled_from(
    [
        "api", "apis", "v1", "apps", "namespaces", "edge", "pods", "watch", "proxy", "status",
        "finalize", "log", "exec", "", ".", "..", "%2F", "%", "%zz", "%C3%A9", "\xff", "?",
    ]
)  # fmt: skip
_QUERY_PARTS = st.sampled_from(
    [
        "watch", "watch=1", "watch=false", "follow=1", "limit=1", "limit=x", "timeoutSeconds=-1",
        "fieldSelector=metadata.name=a", "fieldSelector=metadata.name==b,x=y",
        "fieldSelector=metadata.name%3D%5C%2C", "fieldSelector=a!=b", "fieldSelector=,,",
        "fieldSelector=\\", "labelSelector=a", "%", "%zz=1", ";", "=", "&", "+", "\udcff",
    ]
)  # fmt: skip
_SEGMENT_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/"),
    min_size=1,
    max_size=12,
)
_RESERVED_RESOURCES = {"watch", "proxy", "namespaces", "status", "finalize"}


@st.composite
def _resource_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    """A well-formed resource request and the fields it was built from."""
    group = draw(
        st.one_of(
            st.just(""), st.from_regex(r"[a-z][a-z0-9-]{0,8}(\.[a-z]{1,6}){0,2}", fullmatch=True)
        )
    )
    version = draw(st.from_regex(r"v[1-9][0-9]?((alpha|beta)[1-9])?", fullmatch=True))
    namespace = draw(st.one_of(st.just(""), _SEGMENT_TEXT))
    resource = draw(_SEGMENT_TEXT.filter(lambda r: r not in _RESERVED_RESOURCES))
    name = draw(st.one_of(st.just(""), _SEGMENT_TEXT))
    subresource = draw(_SEGMENT_TEXT) if name and draw(st.booleans()) else ""
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]))
    method = draw(st.sampled_from([method, method.lower(), method.title()]))
    segments = ["api", version] if not group else ["apis", group, version]
    if namespace:
        segments += ["namespaces", namespace]
    segments += [s for s in (resource, name, subresource) if s]
    target = "/" + "/".join(quote(s, safe="") for s in segments)
    if draw(st.booleans()):
        target += "/"
    fields = {
        "group": group,
        "version": version,
        "namespace": namespace,
        "resource": resource,
        "name": name,
        "subresource": subresource,
        "method": method.upper(),
    }
    return method, target, fields


_EXPECTED_VERBS = {
    ("GET", True): "get",
    ("HEAD", True): "get",
    ("GET", False): "list",
    ("HEAD", False): "list",
    ("POST", True): "create",
    ("POST", False): "create",
    ("PUT", True): "update",
    ("PUT", False): "update",
    ("PATCH", True): "patch",
    ("PATCH", False): "patch",
    ("DELETE", True): "delete",
    ("DELETE", False): "deletecollection",
}


class ParseRequestInfoPropertyTests(SynchronousTestCase):
    """parse_request_info never raises, and gives back what a well-formed path encodes."""

    @settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
    @given(method=st.text(), target=st.text(), agent=st.one_of(st.none(), st.text()))
    def test_never_raises_on_any_text(self, method: str, target: str, agent: str | None) -> None:
        info = parse_request_info(method, target, agent)
        _exercise(info)
        self.assertNotIn("?", info.path)

    @settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
    @given(method=st.binary(), target=st.binary(), agent=st.one_of(st.none(), st.binary()))
    def test_never_raises_on_any_bytes(
        self, method: bytes, target: bytes, agent: bytes | None
    ) -> None:
        info = parse_request_info(method, target, agent)
        _exercise(info)
        self.assertEqual(info.path.encode("utf-8").count(b"?"), 0)

    @settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
    @given(
        method=_METHODS,
        segments=st.lists(_SEGMENTS, max_size=9),
        query=st.lists(_QUERY_PARTS, max_size=5),
        as_bytes=st.booleans(),
    )
    def test_never_raises_on_api_like_paths(
        self, method: str, segments: list[str], query: list[str], as_bytes: bool
    ) -> None:
        target = "/" + "/".join(segments) + ("?" + "&".join(query) if query else "")
        if as_bytes:
            info = parse_request_info(method.encode(), target.encode("utf-8", "surrogateescape"))
        else:
            info = parse_request_info(method, target)
        _exercise(info)
        if info.is_resource_request:
            self.assertIn(info.api_prefix, ("api", "apis"))

    @settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
    @given(request=_resource_requests(), as_bytes=st.booleans())
    def test_well_formed_resource_paths_round_trip(
        self, request: tuple[str, str, dict[str, str]], as_bytes: bool
    ) -> None:
        method, target, fields = request
        if as_bytes:
            info = parse_request_info(method.encode(), target.encode("ascii"))
        else:
            info = parse_request_info(method, target)
        self.assertTrue(info.is_resource_request)
        self.assertEqual(
            (
                info.api_group,
                info.api_version,
                info.namespace,
                info.resource,
                info.name,
                info.subresource,
            ),
            (
                fields["group"],
                fields["version"],
                fields["namespace"],
                fields["resource"],
                fields["name"],
                fields["subresource"],
            ),
        )
        self.assertEqual(info.api_prefix, "apis" if fields["group"] else "api")
        self.assertEqual(info.verb, _EXPECTED_VERBS[fields["method"], bool(fields["name"])])
        expected_parts = tuple(
            s for s in (fields["resource"], fields["name"], fields["subresource"]) if s
        )
        self.assertEqual(info.parts, expected_parts)


class HashTests(SynchronousTestCase):
    """Infos are memo keys: equal infos hash alike, the hash is the fields', once."""

    def test_equal_infos_hash_alike_and_others_not(self) -> None:
        a = parse_request_info(b"GET", b"/api/v1/namespaces/default/pods?watch=1", b"kubelet/v1.31.0")
        b = parse_request_info(b"GET", b"/api/v1/namespaces/default/pods?watch=1", b"kubelet/v1.31.0")
        self.assertIsNot(a, b)
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        self.assertEqual({a: 1}[b], 1)
        other = dataclasses.replace(a, verb="list")
        self.assertNotEqual(other, a)
        self.assertNotEqual(hash(other), hash(a))
        self.assertNotIn("_hash", repr(a))
