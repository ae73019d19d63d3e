"""inclusterconfig: kube-proxy uses its in-cluster config, which leads through yurthub.

kubelet mounts ``kube-system/kube-proxy``'s ConfigMap into kube-proxy; its ``config.conf``
names a kubeconfig that points at the cloud. Commenting that line out makes kube-proxy
use in-cluster config, i.e. the ``kubernetes`` service, which masterservice points at
yurthub.
"""

from __future__ import annotations

import re

from yurthub.filters.chain import Filter, JSONDict, meta
from yurthub.requestinfo import RequestInfo

_KUBECONFIG_LINE = re.compile(r"^(\s*)kubeconfig:", re.MULTILINE)


class InClusterConfigFilter(Filter):
    name = "inclusterconfig"
    components = frozenset({"kubelet"})
    resources = {("", "configmaps"): frozenset({"get", "list", "watch"})}

    def apply(self, obj: JSONDict, info: RequestInfo) -> JSONDict | None:
        m = meta(obj)
        if (m.get("namespace") or info.namespace, m.get("name")) != ("kube-system", "kube-proxy"):
            return obj
        data = obj.get("data")
        if isinstance(data, dict) and isinstance(data.get("config.conf"), str):
            data["config.conf"] = _KUBECONFIG_LINE.sub(r"\1#kubeconfig:", data["config.conf"])
        return obj
