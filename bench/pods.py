"""A deterministic ``PodList`` body of realistic but compact pods.

kubelet's biggest routine read is the list of its node's pods. The body built here has
the fields kube-apiserver always puts in such a list (name, namespace, uid and
resourceVersion; the node and one container; the phase), serialised compactly as
kube-apiserver does: about 24 KiB for 100 pods. Real pods carry more (labels, owners,
status conditions); these are trimmed to the size the benchmark is defined with.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

#: The size the 100-pod body is tuned to (24 KiB); `pod_list_body` lands within a few %.
TARGET_BYTES = 24 * 1024

_APPS = ("web", "api", "worker", "cache", "ingest", "metrics", "auth", "search")
_IMAGES = ("nginx:1.25", "redis:7.2", "busybox:1.36", "pause:3.9")


def _pod(rng: random.Random, index: int, node_name: str) -> dict[str, Any]:
    app = _APPS[index % len(_APPS)]
    replica_set = f"{app}-{rng.getrandbits(40):010x}"  # deployment-<10-hex pod-template-hash>
    name = f"{replica_set}-{rng.getrandbits(20):05x}"
    return {
        "metadata": {
            "name": name,
            "namespace": "default" if index % 3 else "kube-system",
            "uid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "resourceVersion": str(100000 + rng.randrange(900000)),
        },
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": app, "image": _IMAGES[index % len(_IMAGES)]}],
        },
        "status": {"phase": "Running"},
    }


def pod_list_body(count: int = 100, *, node_name: str = "bench", seed: int = 1) -> bytes:
    """The JSON bytes of a ``PodList`` of ``count`` pods on ``node_name``, the same for the
    same arguments (seeded), compact and ending in a newline like kube-apiserver's."""
    rng = random.Random(seed)
    document = {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "987654"},
        "items": [_pod(rng, i, node_name) for i in range(count)],
    }
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"
