"""Server-side printing: ``meta.k8s.io`` Tables as kube-apiserver builds them for kubectl.

`build_table` turns objects into a ``Table`` with the columns kubectl shows for the
resource (pods: Name, Ready, Status, Restarts, Age and, at priority 1 for ``-o wide``,
IP, Node, Nominated Node, Readiness Gates; nodes: Name, Status, Roles, Age, Version, ...;
everything else at least Name and Age). Ages are rendered like Kubernetes'
``HumanDuration`` against the time passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from yurthub.kube.meta import parse_timestamp

__all__ = ["build_table", "human_duration"]

JSONDict = dict[str, Any]
Row = Callable[[JSONDict, float], list[Any]]


def human_duration(seconds: float) -> str:
    """Render a duration as kubectl does (``45s``, ``3m12s``, ``5h``, ``12d``, ``2y``)."""
    total = int(seconds)
    if total < -1:
        return "<invalid>"
    if total < 0:
        return "0s"
    if total < 120:
        return f"{total}s"
    minutes = total // 60
    if minutes < 10:
        rest = total % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = total // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(obj: JSONDict, now: float) -> str:
    created = parse_timestamp(obj.get("metadata", {}).get("creationTimestamp") or "")
    return "<unknown>" if created is None else human_duration(now - created)


def _column(name: str, description: str, priority: int = 0, kind: str = "string",
            fmt: str = "") -> JSONDict:
    return {"name": name, "type": kind, "format": fmt, "description": description,
            "priority": priority}


_NAME = _column("Name", "Name must be unique within a namespace.", fmt="name")
_AGE = _column("Age", "CreationTimestamp is a timestamp representing the server time when "
               "this object was created.")


def _name(obj: JSONDict) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


# -- pods ---------------------------------------------------------------------

_POD_COLUMNS = [
    _NAME,
    _column("Ready", "The aggregate readiness state of this pod for accepting traffic."),
    _column("Status", "The aggregate status of the containers in this pod."),
    _column("Restarts", "The number of times the containers in this pod have been restarted "
            "and when the last container in this pod has restarted."),
    _AGE,
    _column("IP", "IP address allocated to the pod. Routable at least within the cluster.", 1),
    _column("Node", "NodeName is a request to schedule this pod onto a specific node.", 1),
    _column("Nominated Node", "nominatedNodeName is set when this pod preempts other pods "
            "on the node.", 1),
    _column("Readiness Gates", "If specified, all readiness gates will be evaluated for pod "
            "readiness.", 1),
]


def _pod_row(pod: JSONDict, now: float) -> list[Any]:
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    total = len(spec.get("containers") or [])
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for container in reversed(statuses):
        state = container.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            terminated = state["terminated"]
            reason = terminated.get("reason") or (
                f"Signal:{terminated['signal']}" if terminated.get("signal")
                else f"ExitCode:{terminated.get('exitCode', 0)}"
            )
    if pod.get("metadata", {}).get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    if gates:
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        passed = sum(1 for g in gates if conditions.get(g.get("conditionType")) == "True")
        gate_cell = f"{passed}/{len(gates)}"
    else:
        gate_cell = "<none>"
    return [
        _name(pod),
        f"{ready}/{total}",
        reason,
        str(restarts),
        _age(pod, now),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        gate_cell,
    ]


# -- nodes --------------------------------------------------------------------

_NODE_COLUMNS = [
    _NAME,
    _column("Status", "The status of the node"),
    _column("Roles", "The roles of the node"),
    _AGE,
    _column("Version", "Kubelet Version reported by the node."),
    _column("Internal-IP", "List of addresses reachable to the node.", 1),
    _column("External-IP", "List of addresses reachable to the node.", 1),
    _column("OS-Image", "OS Image reported by the node from /etc/os-release.", 1),
    _column("Kernel-Version", "Kernel Version reported by the node.", 1),
    _column("Container-Runtime", "Container Runtime Version reported by the node.", 1),
]


def _node_row(node: JSONDict, now: float) -> list[Any]:
    status = node.get("status") or {}
    ready = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None
    )
    text = "Unknown" if ready is None else ("Ready" if ready.get("status") == "True"
                                            else "NotReady")
    if (node.get("spec") or {}).get("unschedulable"):
        text += ",SchedulingDisabled"
    roles = set()
    for key, value in (node.get("metadata", {}).get("labels") or {}).items():
        if key.startswith("node-role.kubernetes.io/") and key.split("/", 1)[1]:
            roles.add(key.split("/", 1)[1])
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    addresses = status.get("addresses") or []
    info = status.get("nodeInfo") or {}

    def address(kind: str) -> str:
        return next((a["address"] for a in addresses if a.get("type") == kind), "<none>")

    return [
        _name(node),
        text,
        ",".join(sorted(roles)) or "<none>",
        _age(node, now),
        info.get("kubeletVersion", ""),
        address("InternalIP"),
        address("ExternalIP"),
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


# -- the rest -----------------------------------------------------------------

def _service_ports(spec: JSONDict) -> str:
    parts = []
    for port in spec.get("ports") or []:
        text = str(port.get("port"))
        if port.get("nodePort"):
            text += f":{port['nodePort']}"
        parts.append(f"{text}/{port.get('protocol', 'TCP')}")
    return ",".join(parts) or "<none>"


def _service_row(svc: JSONDict, now: float) -> list[Any]:
    spec = svc.get("spec") or {}
    kind = spec.get("type", "ClusterIP")
    external = ",".join(spec.get("externalIPs") or [])
    if kind == "LoadBalancer":
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ips = [i.get("ip") or i.get("hostname") for i in ingress]
        external = ",".join(x for x in [external, *ips] if x) or "<pending>"
    elif kind == "ExternalName":
        external = spec.get("externalName", "")
    selector = spec.get("selector") or {}
    return [
        _name(svc),
        kind,
        spec.get("clusterIP") or "<none>",
        external or "<none>",
        _service_ports(spec),
        _age(svc, now),
        ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>",
    ]


_SERVICE_COLUMNS = [
    _NAME,
    _column("Type", "Type determines how the Service is exposed."),
    _column("Cluster-IP", "clusterIP is the IP address of the service."),
    _column("External-IP", "externalIPs is a list of IP addresses for which nodes in the "
            "cluster will also accept traffic for this service."),
    _column("Port(s)", "The list of ports that are exposed by this service."),
    _AGE,
    _column("Selector", "Route service traffic to pods with label keys and values matching "
            "this selector.", 1),
]


def _endpoints_cell(ep: JSONDict) -> str:
    pairs = []
    for subset in ep.get("subsets") or []:
        ports = [p.get("port") for p in subset.get("ports") or []] or [None]
        for addr in subset.get("addresses") or []:
            for port in ports:
                pairs.append(addr.get("ip", "") + (f":{port}" if port else ""))
    if not pairs:
        return "<none>"
    if len(pairs) > 3:
        return ",".join(pairs[:3]) + f" + {len(pairs) - 3} more..."
    return ",".join(pairs)


def _slice_row(eps: JSONDict, now: float) -> list[Any]:
    ports = ",".join(str(p.get("port")) for p in eps.get("ports") or []) or "<unset>"
    addresses = [a for e in eps.get("endpoints") or [] for a in e.get("addresses") or []]
    shown = ",".join(addresses[:3]) + (f" + {len(addresses) - 3} more..."
                                       if len(addresses) > 3 else "")
    return [_name(eps), eps.get("addressType", ""), ports, shown or "<unset>", _age(eps, now)]


def _event_row(event: JSONDict, now: float) -> list[Any]:
    last = event.get("lastTimestamp") or event.get("eventTime") or ""
    seen = parse_timestamp(last) if last else None
    involved = event.get("involvedObject") or {}
    return [
        "<unknown>" if seen is None else human_duration(now - seen),
        event.get("type", ""),
        event.get("reason", ""),
        f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
        event.get("message", ""),
    ]


def _csr_row(csr: JSONDict, now: float) -> list[Any]:
    spec = csr.get("spec") or {}
    conditions = [c.get("type", "") for c in (csr.get("status") or {}).get("conditions") or []]
    if (csr.get("status") or {}).get("certificate"):
        conditions.append("Issued")
    seconds = spec.get("expirationSeconds")
    return [
        _name(csr), _age(csr, now), spec.get("signerName", ""), spec.get("username", ""),
        human_duration(seconds) if seconds else "<none>", ",".join(conditions) or "Pending",
    ]


def _simple(*cells: Callable[[JSONDict], Any]) -> Row:
    def row(obj: JSONDict, now: float) -> list[Any]:
        values = [cell(obj) for cell in cells]
        return [_name(obj), *values, _age(obj, now)]
    return row


_TABLES: dict[tuple[str, str], tuple[list[JSONDict], Row]] = {
    ("", "pods"): (_POD_COLUMNS, _pod_row),
    ("", "nodes"): (_NODE_COLUMNS, _node_row),
    ("", "services"): (_SERVICE_COLUMNS, _service_row),
    ("", "namespaces"): (
        [_NAME, _column("Status", "The status of the namespace"), _AGE],
        _simple(lambda o: (o.get("status") or {}).get("phase", "Active")),
    ),
    ("", "configmaps"): (
        [_NAME, _column("Data", "Data contains the configuration data.", kind="integer"), _AGE],
        _simple(lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
    ),
    ("", "secrets"): (
        [_NAME, _column("Type", "The type of the secret"),
         _column("Data", "The number of entries in the secret", kind="integer"), _AGE],
        _simple(lambda o: o.get("type", "Opaque"), lambda o: len(o.get("data") or {})),
    ),
    ("", "endpoints"): (
        [_NAME, _column("Endpoints", "Endpoints of the service"), _AGE],
        _simple(_endpoints_cell),
    ),
    ("", "serviceaccounts"): (
        [_NAME, _column("Secrets", "Secrets is a list of the secrets in the same namespace.",
                        kind="integer"), _AGE],
        _simple(lambda o: len(o.get("secrets") or [])),
    ),
    ("", "events"): (
        [_column("Last Seen", "Time of the last occurrence"), _column("Type", "Type"),
         _column("Reason", "Reason"), _column("Object", "The object this event is about"),
         _column("Message", "A human-readable description of the status")],
        _event_row,
    ),
    ("coordination.k8s.io", "leases"): (
        [_NAME, _column("Holder", "The holder of the lease"), _AGE],
        _simple(lambda o: (o.get("spec") or {}).get("holderIdentity", "")),
    ),
    ("discovery.k8s.io", "endpointslices"): (
        [_NAME, _column("AddressType", "The IP protocol for this slice"),
         _column("Ports", "Ports of the slice"), _column("Endpoints", "Endpoints of the slice"),
         _AGE],
        _slice_row,
    ),
    ("certificates.k8s.io", "certificatesigningrequests"): (
        [_NAME, _AGE, _column("SignerName", "The signer"),
         _column("Requestor", "The requesting user"),
         _column("RequestedDuration", "The requested validity"),
         _column("Condition", "The state of the request")],
        _csr_row,
    ),
}


def _partial(obj: JSONDict, api_version: str) -> JSONDict:
    return {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{api_version}",
            "metadata": obj.get("metadata", {})}


def build_table(
    group: str,
    plural: str,
    objects: Iterable[JSONDict],
    now: float,
    *,
    include_object: str = "Metadata",
    version: str = "v1",
    resource_version: str | None = None,
    continue_token: str | None = None,
    with_columns: bool = True,
) -> JSONDict:
    """A ``Table`` of ``objects`` of resource ``group``/``plural`` as of time ``now``.

    ``include_object`` is ``None``, ``Metadata`` (rows carry PartialObjectMetadata, the
    default) or ``Object`` (rows carry the whole object).
    """
    columns, row = _TABLES.get((group, plural), ([_NAME, _AGE], _simple()))
    rows = []
    for obj in objects:
        entry: JSONDict = {"cells": row(obj, now)}
        if include_object == "Object":
            entry["object"] = obj
        elif include_object != "None":
            entry["object"] = _partial(obj, version)
        rows.append(entry)
    metadata: JSONDict = {}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": metadata,
        "columnDefinitions": columns if with_columns else [],
        "rows": rows,
    }
