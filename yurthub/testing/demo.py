"""Sample objects: the small demo cluster and realistic pods for tests and benchmarks.

`seed_demo_objects` fills a `SimulatedAPIServer` with a two-node edge cluster
(namespaces default, kube-system, kube-public, kube-node-lease and demo; nodes edge-1
and edge-2; pods labelled ``app=web``/``app=db``; the ``default/kubernetes`` service and
its endpoints and EndpointSlice; kube-dns; the kube-proxy ConfigMap; a Secret; node
Leases; default ServiceAccounts). `make_pod` builds a pod the way kubelet reports one
(containers, volumes, conditions, container statuses: about 2 KB of JSON) and
`seed_pods` creates many of them for benchmarks.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from yurthub.testing.apiserver import SimulatedAPIServer

__all__ = [
    "DEMO_NODES",
    "make_node",
    "make_pod",
    "seed_demo_objects",
    "seed_pods",
]

JSONDict = dict[str, Any]

DEMO_NODES = ("edge-1", "edge-2")
_STARTED = "2024-01-01T00:00:00Z"


def _pod_ip(name: str, node: str) -> str:
    subnet = (zlib.crc32(node.encode()) % 200) + 1
    return f"10.244.{subnet}.{zlib.crc32(name.encode()) % 250 + 2}"


def make_pod(
    name: str,
    namespace: str = "default",
    node: str | None = "edge-1",
    labels: Mapping[str, str] | None = None,
    *,
    phase: str = "Running",
    image: str = "registry.k8s.io/nginx:1.27.2",
    ip: str | None = None,
    containers: int = 1,
    restarts: int = 0,
) -> JSONDict:
    """A pod as kubelet reports it: spec with containers and volumes, full status.

    A running pod is Ready with running container statuses; ``phase="Pending"`` gives a
    pod whose containers wait in ``ContainerCreating``. About 2 KB as compact JSON.
    """
    labels = dict(labels or {"app": name.rsplit("-", 1)[0]})
    running = phase == "Running"
    pod_ip = ip or (_pod_ip(name, node) if node and running else None)
    names = ["main"] + [f"sidecar-{n}" for n in range(1, containers)]
    specs = []
    statuses = []
    for index, container in enumerate(names):
        specs.append({
            "name": container,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "http", "containerPort": 8080 + index, "protocol": "TCP"}],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                                "fieldPath": "metadata.name"}}},
                {"name": "LOG_LEVEL", "value": "info"},
            ],
            "resources": {"limits": {"cpu": "500m", "memory": "256Mi"},
                          "requests": {"cpu": "100m", "memory": "128Mi"}},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080 + index,
                                           "scheme": "HTTP"},
                               "periodSeconds": 10, "timeoutSeconds": 1,
                               "successThreshold": 1, "failureThreshold": 3},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "volumeMounts": [{"name": "kube-api-access", "readOnly": True,
                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
        })
        state: JSONDict = ({"running": {"startedAt": _STARTED}} if running
                           else {"waiting": {"reason": "ContainerCreating"}})
        status: JSONDict = {
            "name": container, "state": state, "lastState": {}, "ready": running,
            "restartCount": restarts, "image": image, "imageID": "", "started": running,
        }
        if running:
            status["imageID"] = image.split(":")[0] + "@sha256:" + f"{zlib.crc32(image.encode()):08x}" * 8
            status["containerID"] = "containerd://" + f"{zlib.crc32(name.encode()):08x}" * 8
        statuses.append(status)

    def condition(kind: str, ok: bool) -> JSONDict:
        return {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None,
                "lastTransitionTime": _STARTED}

    pod_status: JSONDict = {
        "phase": phase,
        "conditions": [
            condition("PodReadyToStartContainers", running),
            condition("Initialized", True),
            condition("Ready", running),
            condition("ContainersReady", running),
            condition("PodScheduled", node is not None),
        ],
        "qosClass": "Burstable",
    }
    if node:
        pod_status.update(hostIP="192.168.0." + str(11 + zlib.crc32(node.encode()) % 200),
                          startTime=_STARTED, containerStatuses=statuses)
    if pod_ip:
        pod_status.update(podIP=pod_ip, podIPs=[{"ip": pod_ip}])
    spec: JSONDict = {
        "containers": specs,
        "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt",
                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        ]}}],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
             "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
             "effect": "NoExecute", "tolerationSeconds": 300},
        ],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
        "status": pod_status,
    }


def make_node(name: str, *, ready: bool = True, kubelet_version: str = "v1.31.0",
              address: str | None = None, edge: bool = True) -> JSONDict:
    """A node as kubelet registers and reports it (``Ready`` unless ``ready=False``)."""
    address = address or f"192.168.0.{11 + zlib.crc32(name.encode()) % 200}"

    def condition(kind: str, status: str, reason: str) -> JSONDict:
        return {"type": kind, "status": status, "reason": reason, "message": reason,
                "lastHeartbeatTime": _STARTED, "lastTransitionTime": _STARTED}

    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
              "beta.kubernetes.io/arch": "amd64"}
    if edge:
        labels["openyurt.io/is-edge-worker"] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": f"10.244.{zlib.crc32(name.encode()) % 200 + 1}.0/24"},
        "status": {
            "capacity": {"cpu": "4", "memory": "8039876Ki", "pods": "110",
                         "ephemeral-storage": "61202244Ki"},
            "allocatable": {"cpu": "4", "memory": "7937476Ki", "pods": "110",
                            "ephemeral-storage": "56403987978"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                condition("Ready", "True" if ready else "Unknown",
                          "KubeletReady" if ready else "NodeStatusUnknown"),
            ],
            "addresses": [{"type": "InternalIP", "address": address},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": f"{zlib.crc32(name.encode()):08x}" * 4,
                "systemUUID": f"{zlib.crc32(name.encode()):08x}-0000-4000-8000-000000000000",
                "bootID": f"{zlib.crc32(name.encode()):08x}-1111-4000-8000-000000000000",
                "kernelVersion": "6.1.0-18-amd64",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.13",
                "kubeletVersion": kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


def _service(name: str, namespace: str, cluster_ip: str, ports: list[JSONDict],
             selector: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None
             ) -> JSONDict:
    spec: JSONDict = {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                      "ports": ports, "sessionAffinity": "None", "ipFamilies": ["IPv4"],
                      "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"}
    if selector:
        spec["selector"] = dict(selector)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
            "spec": spec, "status": {"loadBalancer": {}}}


def _endpoints(name: str, namespace: str, ips: list[str], ports: list[JSONDict]) -> JSONDict:
    return {"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": namespace},
            "subsets": [{"addresses": [{"ip": ip} for ip in ips], "ports": ports}]}


def _slice(name: str, namespace: str, service: str, ips: list[str],
           ports: list[JSONDict]) -> JSONDict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service,
                                    "endpointslice.kubernetes.io/managed-by":
                                        "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True, "serving": True,
                                                            "terminating": False}}
                          for ip in ips],
            "ports": ports}


_KUBE_PROXY_CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
clusterCIDR: 10.244.0.0/16
mode: iptables
"""

_KUBE_PROXY_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    server: https://10.0.0.10:6443
  name: default
contexts:
- context:
    cluster: default
    namespace: default
    user: default
  name: default
current-context: default
users:
- name: default
  user:
    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
"""


def demo_objects() -> list[JSONDict]:
    """Every object of the demo cluster, in an order that creates namespaces first."""
    objects: list[JSONDict] = []
    for namespace in ("default", "kube-system", "kube-public", "kube-node-lease", "demo"):
        objects.append({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": namespace,
                                     "labels": {"kubernetes.io/metadata.name": namespace}}})
    for node in DEMO_NODES:
        objects.append(make_node(node))
    pods = [
        make_pod("web-1", "default", "edge-1", {"app": "web", "tier": "frontend"}),
        make_pod("web-2", "default", "edge-2", {"app": "web", "tier": "frontend"}),
        make_pod("db-1", "default", "edge-1", {"app": "db", "tier": "backend"}),
        make_pod("web-3", "demo", "edge-1", {"app": "web"}),
        make_pod("coredns-1", "kube-system", "edge-1", {"k8s-app": "kube-dns"},
                 image="registry.k8s.io/coredns/coredns:v1.11.3"),
        make_pod("kube-proxy-e1", "kube-system", "edge-1", {"k8s-app": "kube-proxy"},
                 image="registry.k8s.io/kube-proxy:v1.31.0"),
        make_pod("kube-proxy-e2", "kube-system", "edge-2", {"k8s-app": "kube-proxy"},
                 image="registry.k8s.io/kube-proxy:v1.31.0"),
        make_pod("pending-1", "demo", None, {"app": "batch"}, phase="Pending"),
    ]
    objects.extend(pods)
    https = [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]
    objects.append(_service("kubernetes", "default", "10.96.0.1", https,
                            labels={"component": "apiserver", "provider": "kubernetes"}))
    objects.append(_endpoints("kubernetes", "default", ["10.0.0.10"],
                              [{"name": "https", "port": 6443, "protocol": "TCP"}]))
    objects.append(_slice("kubernetes", "default", "kubernetes", ["10.0.0.10"],
                          [{"name": "https", "port": 6443, "protocol": "TCP"}]))
    web_ips = [p["status"]["podIP"] for p in pods[:2]]
    objects.append(_service("web", "default", "10.96.0.20",
                            [{"name": "http", "port": 80, "protocol": "TCP",
                              "targetPort": 8080}], {"app": "web"}))
    objects.append(_endpoints("web", "default", web_ips,
                              [{"name": "http", "port": 8080, "protocol": "TCP"}]))
    objects.append(_slice("web-x7k2p", "default", "web", web_ips,
                          [{"name": "http", "port": 8080, "protocol": "TCP"}]))
    objects.append(_service("db", "default", "10.96.0.21",
                            [{"name": "pg", "port": 5432, "protocol": "TCP",
                              "targetPort": 8080}], {"app": "db"}))
    dns_ports = [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                 {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                 {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]
    objects.append(_service("kube-dns", "kube-system", "10.96.0.10", dns_ports,
                            {"k8s-app": "kube-dns"}, {"k8s-app": "kube-dns"}))
    dns_ip = pods[4]["status"]["podIP"]
    objects.append(_endpoints("kube-dns", "kube-system", [dns_ip],
                              [{"name": p["name"], "port": p["port"], "protocol": p["protocol"]}
                               for p in dns_ports]))
    objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "kube-proxy", "namespace": "kube-system",
                                 "labels": {"app": "kube-proxy"}},
                    "data": {"config.conf": _KUBE_PROXY_CONFIG,
                             "kubeconfig.conf": _KUBE_PROXY_KUBECONFIG}})
    for namespace in ("default", "kube-system", "demo"):
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "kube-root-ca.crt", "namespace": namespace},
                        "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nsimulated\n"
                                           "-----END CERTIFICATE-----\n"}})
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": "default", "namespace": namespace}})
    objects.append({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "kube-proxy", "namespace": "kube-system"}})
    objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "app-config", "namespace": "demo"},
                    "data": {"greeting": "hello from the edge", "replicas": "2"}})
    objects.append({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "db-credentials", "namespace": "default"},
                    "type": "Opaque",
                    "data": {"username": base64.b64encode(b"admin").decode(),
                             "password": base64.b64encode(b"s3cr3t").decode()}})
    for node in DEMO_NODES:
        objects.append({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": node, "namespace": "kube-node-lease"},
                        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
                                 "renewTime": "2024-01-01T00:00:00.000000Z"}})
    objects.append({"apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": "web-1.17a0000000000001", "namespace": "default"},
                    "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-1",
                                       "apiVersion": "v1"},
                    "reason": "Started", "message": "Started container main",
                    "source": {"component": "kubelet", "host": "edge-1"},
                    "firstTimestamp": _STARTED, "lastTimestamp": _STARTED, "count": 1,
                    "type": "Normal", "reportingComponent": "kubelet",
                    "reportingInstance": "edge-1"})
    return objects


def seed_demo_objects(server: SimulatedAPIServer) -> None:
    """Create the demo cluster's objects in ``server`` (through its direct store access)."""
    for obj in demo_objects():
        server.create(obj)


def seed_pods(
    server: SimulatedAPIServer,
    count: int,
    *,
    namespace: str = "default",
    node: str = "edge-1",
    prefix: str = "bench",
    labels: Mapping[str, str] | None = None,
) -> list[JSONDict]:
    """Create ``count`` realistic running pods ``<prefix>-<n>`` and return them as stored."""
    return [
        server.create(make_pod(f"{prefix}-{n}", namespace, node,
                               dict(labels or {"app": prefix})))
        for n in range(count)
    ]
