"""discardcloudservice: kube-proxy does not see cloud-only services.

A LoadBalancer service annotated ``svc.openyurt.io/discard: "true"`` is served by the
cloud's load balancer and cannot be reached from an edge node, and ``kube-system/
x-tunnel-server-internal-svc`` is the tunnel server's cloud-side service: kube-proxy on
the node is not given them, so it programs no rules for them.
"""

from __future__ import annotations

from yurthub.filters.chain import Filter, JSONDict, annotations_of, meta, spec
from yurthub.requestinfo import RequestInfo

DISCARD_ANNOTATION = "svc.openyurt.io/discard"
TUNNEL_SERVICE = ("kube-system", "x-tunnel-server-internal-svc")


class DiscardCloudServiceFilter(Filter):
    name = "discardcloudservice"
    components = frozenset({"kube-proxy"})
    resources = {("", "services"): frozenset({"get", "list", "watch"})}

    def apply(self, obj: JSONDict, info: RequestInfo) -> JSONDict | None:
        m = meta(obj)
        if (m.get("namespace") or info.namespace, m.get("name")) == TUNNEL_SERVICE:
            return None
        if spec(obj).get("type") == "LoadBalancer" and annotations_of(obj).get(DISCARD_ANNOTATION) == "true":
            return None
        return obj
