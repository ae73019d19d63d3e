"""Cache housekeeping: kubelet pods gone from the cloud, and events past their life.

`CacheJanitor.collect_pods` runs once, the first time the cloud is healthy after start-up:
it lists this node's pods in the cloud (one request, as the node) and removes the pods
kubelet has cached that the cloud no longer has, so a node that was offline while its pods were deleted does not restart
them from the cache on the next offline reboot. It never removes every cached pod at once:
if the cloud denies all of them, that looks like the wrong cluster or a broken cloud, and
it keeps them and says so.

`expire_events` drops cached events older than `EVENT_TTL` (kube-apiserver's default event
TTL), including the ones created offline; a `LoopingCall` runs it, and a failure is
logged without stopping the loop.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from yurthub.cache.keys import GVR
from yurthub.interfaces import IFailoverFactory, IObjectStore
from yurthub.kube.meta import parse_timestamp

_log = Logger()

PODS = GVR("", "v1", "pods")
EVENTS = GVR("", "v1", "events")
EVENT_TTL = 3600.0


class CacheJanitor:
    """Removes cached objects that no longer deserve to be served."""

    def __init__(
        self,
        clock: IReactorTime,
        store: IObjectStore,
        failover: IFailoverFactory,
        agent: Any,
        node_name: str = "",
    ) -> None:
        self._clock = clock
        self._node_name = node_name
        self._store = store
        self._failover = failover
        self._agent = agent
        self._events_loop: LoopingCall | None = None
        self._asking: defer.Deferred[Any] | None = None
        self._stopped = False
        self.pods_collected = False

    def start(self, interval: float = 600.0) -> None:
        """Expire events now and every ``interval`` seconds."""
        self._events_loop = LoopingCall(self._expire_safely)
        self._events_loop.clock = self._clock
        self._events_loop.start(interval, now=True)

    def stop(self) -> None:
        """Stop expiring events and abandon a pod collection under way."""
        self._stopped = True
        if self._events_loop is not None and self._events_loop.running:
            self._events_loop.stop()
        if self._asking is not None:
            self._asking.cancel()

    def _expire_safely(self) -> None:
        try:
            self.expire_events()
        except Exception:
            _log.failure("expiring cached events failed; will try again")

    def expire_events(self) -> int:
        """Remove cached events last seen more than `EVENT_TTL` ago; returns how many."""
        now = self._clock.seconds()
        removed = 0
        for component in self._store.components():
            for key, data in self._store.list(component, EVENTS, None):
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                stamps = [
                    parse_timestamp(str(event.get(field) or ""))
                    for field in ("lastTimestamp", "eventTime", "firstTimestamp")
                ]
                stamps.append(parse_timestamp(str((event.get("metadata") or {}).get("creationTimestamp") or "")))
                seen = max((s for s in stamps if s is not None), default=None)
                if seen is None or now - seen > EVENT_TTL:
                    self._store.delete(key)
                    removed += 1
        return removed

    @defer.inlineCallbacks
    def collect_pods(self):  # type: ignore[no-untyped-def]
        """Ask the cloud (one list of this node's pods) which of the pods kubelet cached
        still exist, and remove the others. Returns how many were removed (0 when it
        refused to remove them all, or could not ask)."""
        if self.pods_collected or self._stopped:
            return 0
        cached = [key for key, _ in self._store.list("kubelet", PODS, None)]
        backend = self._failover.attempts(None).next()
        if not cached:
            self.pods_collected = backend is not None
            return 0
        if backend is None:
            return 0  # offline: try again when the cloud is back
        selector = quote(f"spec.nodeName={self._node_name}", safe="")
        target = f"/api/v1/pods?fieldSelector={selector}".encode()
        headers = Headers({b"user-agent": [b"yurthub/gc"], b"accept": [b"application/json"]})
        try:
            self._asking = self._agent.request_to(backend, b"GET", target, headers, None)
            response = yield self._asking
            self._asking = readBody(response)
            body = yield self._asking
        except Exception as e:
            _log.info("pod collection paused: {err}", err=str(e) or e.__class__.__name__)
            return 0
        finally:
            self._asking = None
        if response.code != 200:
            _log.info("pod collection paused: the cloud answered {code}", code=response.code)
            return 0
        try:
            items = json.loads(body)["items"]
            present = {
                (
                    (i.get("metadata") or {}).get("namespace", ""),
                    (i.get("metadata") or {}).get("name", ""),
                )
                for i in items
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            _log.info("pod collection paused: the cloud's pod list did not decode")
            return 0
        self.pods_collected = True
        gone = [key for key in cached if (key.namespace, key.name) not in present]
        if gone and len(gone) == len(cached):
            _log.warn(
                "the cloud has none of the {n} pods kubelet cached; keeping them (wrong cluster or broken cloud?)",
                n=len(cached),
            )
            return 0
        for key in gone:
            self._store.delete(key)
        if gone:
            _log.info("removed {n} cached kubelet pods the cloud no longer has", n=len(gone))
        return len(gone)
