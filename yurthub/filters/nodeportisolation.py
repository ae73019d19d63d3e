"""nodeportisolation: a NodePort service listens only in the pools it names.

A NodePort or LoadBalancer service annotated ``nodeport.openyurt.io/listen`` (a comma list
of pool names; ``-pool`` excludes one, ``*`` means every other pool) is given to kube-proxy
only on nodes of an enabled pool, so only they open its node port. A node in no pool sees
every service, as in plain Kubernetes.
"""

from __future__ import annotations

from yurthub.filters.chain import Filter, JSONDict, annotations_of, spec
from yurthub.filters.nodepools import NodePools
from yurthub.requestinfo import RequestInfo

LISTEN_ANNOTATION = "nodeport.openyurt.io/listen"


def pool_enabled(value: str, pool: str) -> bool:
    """Whether an annotation value enables ``pool`` (an entry for a pool counts once, the
    first time it is named)."""
    entries: set[str] = set()
    seen: set[str] = set()
    for raw in value.split(","):
        entry = raw.strip()
        bare = entry.removeprefix("-")
        if bare and bare not in seen:
            seen.add(bare)
            entries.add(entry)
    if pool in entries:
        return True
    if f"-{pool}" in entries:
        return False
    return "*" in entries


class NodePortIsolationFilter(Filter):
    name = "nodeportisolation"
    components = frozenset({"kube-proxy"})
    resources = {("", "services"): frozenset({"get", "list", "watch"})}

    def __init__(self, pools: NodePools) -> None:
        self.pools = pools

    def apply(self, obj: JSONDict, info: RequestInfo) -> JSONDict | None:
        if spec(obj).get("type") not in ("NodePort", "LoadBalancer"):
            return obj
        value = annotations_of(obj).get(LISTEN_ANNOTATION)
        if value is None:
            return obj
        pool = self.pools.own_pool
        if not pool:
            return obj
        return obj if pool_enabled(str(value), pool) else None
