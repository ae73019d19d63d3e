"""masterservice: kubelet's view of ``default/kubernetes`` points at yurthub.

kubelet writes the ``kubernetes`` service's address into every pod's environment
(``KUBERNETES_SERVICE_HOST``/``PORT``), which in-cluster clients use. Pointing it at
yurthub's secure listener (its address as the cluster IP, its port as the ``https`` port)
sends those pods' API traffic through yurthub, so they keep working offline.
"""

from __future__ import annotations

from yurthub.filters.chain import Filter, JSONDict, meta, spec
from yurthub.requestinfo import RequestInfo


class MasterServiceFilter(Filter):
    name = "masterservice"
    components = frozenset({"kubelet"})
    resources = {("", "services"): frozenset({"get", "list", "watch"})}

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def apply(self, obj: JSONDict, info: RequestInfo) -> JSONDict | None:
        m = meta(obj)
        if m.get("name") != "kubernetes" or (m.get("namespace") or info.namespace) != "default":
            return obj
        s = spec(obj)
        if not s:
            return obj
        s["clusterIP"] = self.host
        if "clusterIPs" in s:
            s["clusterIPs"] = [self.host]
        for port in s.get("ports") or []:
            if isinstance(port, dict) and port.get("name") == "https":
                port["port"] = self.port
        return obj
