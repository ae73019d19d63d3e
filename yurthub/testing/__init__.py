"""Test doubles shipped with yurthub: a simulated kube-apiserver and a throw-away PKI.

`SimulatedAPIServer` is an in-memory, pure-Twisted kube-apiserver that kubectl, client-go
and the official Python client accept (discovery, CRUD, selectors, watches, Tables, pod
logs, exec over WebSockets), with fault controls for tests: blackhole, delays, injected
failures, cut streams, and dying and coming back on the same port. `TestPKI` issues the
CA, server and client certificates it and its clients need. `yurthub.testing.demo` has
the demo cluster's objects and realistic pods for benchmarks.
"""

from __future__ import annotations

from yurthub.testing.apiserver import RequestRecord, SimulatedAPIServer
from yurthub.testing.demo import make_node, make_pod, seed_demo_objects, seed_pods
from yurthub.testing.objects import StatusError
from yurthub.testing.pki import TestPKI

__all__ = [
    "RequestRecord",
    "SimulatedAPIServer",
    "StatusError",
    "TestPKI",
    "make_node",
    "make_pod",
    "seed_demo_objects",
    "seed_pods",
]
