"""servicetopology: a service's endpoints limited to this node or its pool.

For a service annotated ``openyurt.io/topologyKeys``, kube-proxy and coredns are given only
the endpoints on this node (``kubernetes.io/hostname``) or on nodes of this node's pool
(``openyurt.io/nodepool`` or ``kubernetes.io/zone``), in its EndpointSlices and Endpoints.
The services' annotations are read from the cache (kube-proxy and coredns read services
through yurthub); the pools from `NodePools`.
"""

from __future__ import annotations

import json

from yurthub.cache.keys import GVR, CacheKey, InvalidKey
from yurthub.cache.manager import CacheManager
from yurthub.filters.chain import Filter, JSONDict, meta
from yurthub.filters.nodepools import NodePools
from yurthub.requestinfo import RequestInfo

TOPOLOGY_ANNOTATION = "openyurt.io/topologyKeys"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_HOSTNAME = "kubernetes.io/hostname"
_POOL_KEYS = frozenset({"openyurt.io/nodepool", "kubernetes.io/zone"})
_SERVICES = GVR("", "v1", "services")


class ServiceTopologyFilter(Filter):
    name = "servicetopology"
    components = frozenset({"kube-proxy", "coredns", "nginx-ingress-controller"})
    _verbs = frozenset({"get", "list", "watch"})
    resources = {
        ("discovery.k8s.io", "endpointslices"): _verbs,
        ("", "endpoints"): _verbs,
    }

    def __init__(self, cache: CacheManager, pools: NodePools) -> None:
        self.cache = cache
        self.pools = pools

    def _topology(self, namespace: str, service: str) -> str:
        for component in self.cache.components():
            try:
                data = self.cache.store.get(CacheKey(component, _SERVICES, namespace, service))
            except InvalidKey:
                return ""
            if data is None:
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                continue
            value = ((obj.get("metadata") or {}).get("annotations") or {}).get(TOPOLOGY_ANNOTATION)
            return str(value) if value else ""
        return ""

    def _nodes(self, topology: str) -> frozenset[str] | None:
        """The nodes whose endpoints stay; None when the annotation asks for nothing known."""
        node = self.pools.node_name
        if topology == _HOSTNAME:
            return frozenset({node})
        if topology in _POOL_KEYS:
            pool = self.pools.own_pool
            return self.pools.members(pool) | {node} if pool else frozenset({node})
        return None

    def apply(self, obj: JSONDict, info: RequestInfo) -> JSONDict | None:
        m = meta(obj)
        namespace = m.get("namespace") or info.namespace
        if info.resource == "endpointslices":
            service = ((m.get("labels") or {}).get(SERVICE_NAME_LABEL)) or ""
        else:
            service = m.get("name") or ""
        if not service:
            return obj
        nodes = self._nodes(self._topology(namespace, service))
        if nodes is None:
            return obj
        if info.resource == "endpointslices":
            endpoints = obj.get("endpoints")
            if isinstance(endpoints, list):
                obj["endpoints"] = [e for e in endpoints if isinstance(e, dict) and e.get("nodeName") in nodes]
        else:
            for subset in obj.get("subsets") or []:
                if not isinstance(subset, dict):
                    continue
                for field in ("addresses", "notReadyAddresses"):
                    if isinstance(subset.get(field), list):
                        subset[field] = [a for a in subset[field] if isinstance(a, dict) and a.get("nodeName") in nodes]
            if isinstance(obj.get("subsets"), list):
                obj["subsets"] = [s for s in obj["subsets"] if s.get("addresses") or s.get("notReadyAddresses")]
        return obj
