"""The node's pool and its pool's members, from the nodes in the cache.

A node's pool is its label ``apps.openyurt.io/nodepool``. The node's own Node object is
in the cache because kubelet reads it through yurthub; the other nodes of the cluster are
listed from the cloud by `NodeListRefresher` (as yurthub, with the node's credentials,
every ``interval`` seconds while the cloud is healthy) and kept in the cache under the
``yurthub`` component, so the pools are known offline and after a restart too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from yurthub.cache.keys import GVR
from yurthub.cache.manager import CacheManager, decode_list
from yurthub.interfaces import IFailoverFactory
from yurthub.requestinfo import parse_request_info

_log = Logger()

POOL_LABEL = "apps.openyurt.io/nodepool"
_NODES_TARGET = b"/api/v1/nodes?labelSelector=" + POOL_LABEL.encode()
_NODES = parse_request_info(b"GET", _NODES_TARGET, b"yurthub")
_ALL_NODES_GVR = GVR("", "v1", "nodes")


class NodePools:
    """Answers which pool a node is in, from the cached Node objects (re-read whenever the
    cache changes)."""

    def __init__(self, cache: CacheManager, node_name: str) -> None:
        self.cache = cache
        self.node_name = node_name
        self._generation = -1
        self._pools: dict[str, str] = {}
        #: Called the first time a pool is asked for (starts the `NodeListRefresher`, so a
        #: node whose components never need pools never lists nodes).
        self.on_first_use: Callable[[], None] | None = None

    def _refresh(self) -> None:
        if self.on_first_use is not None:
            first, self.on_first_use = self.on_first_use, None
            first()
        generation = self.cache.store.generation
        if generation == self._generation:
            return
        pools: dict[str, str] = {}
        newest: dict[str, int] = {}
        for component in self.cache.components():
            for key, data in self.cache.store.list(component, _ALL_NODES_GVR, None):
                try:
                    obj = json.loads(data)
                    rv = int((obj.get("metadata") or {}).get("resourceVersion") or 0)
                except (ValueError, TypeError, AttributeError):
                    continue
                if key.name in newest and newest[key.name] >= rv:
                    continue
                newest[key.name] = rv
                labels = (obj.get("metadata") or {}).get("labels") or {}
                pools[key.name] = str(labels.get(POOL_LABEL, "")) if isinstance(labels, dict) else ""
        self._pools = pools
        self._generation = generation

    def pool_of(self, node: str) -> str:
        """The pool of ``node`` ("" if it is in none or unknown)."""
        self._refresh()
        return self._pools.get(node, "")

    @property
    def own_pool(self) -> str:
        return self.pool_of(self.node_name)

    def members(self, pool: str) -> frozenset[str]:
        """The nodes known to be in ``pool`` (this node always, if it is in it)."""
        self._refresh()
        if not pool:
            return frozenset()
        return frozenset(n for n, p in self._pools.items() if p == pool)


class NodeListRefresher:
    """Lists the pooled nodes in the cloud every ``interval`` seconds into the cache."""

    def __init__(
        self, clock: IReactorTime, cache: CacheManager, failover: IFailoverFactory, agent: Any, interval: float = 60.0
    ) -> None:
        self._clock = clock
        self._cache = cache
        self._failover = failover
        self._agent = agent
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._asking: defer.Deferred[Any] | None = None
        self._stopped = False

    def start(self) -> None:
        if self._stopped or self._loop is not None:
            return
        self._loop = LoopingCall(self._safely)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._asking is not None:
            self._asking.cancel()

    def _safely(self) -> defer.Deferred[Any]:
        d = defer.ensureDeferred(self.refresh())
        d.addErrback(lambda f: _log.info("listing the node pools failed: {err}", err=f.getErrorMessage()))
        return d

    async def refresh(self) -> bool:
        """One list of the pooled nodes into the cache; False if the cloud could not answer."""
        backend = self._failover.attempts(None).next()
        if backend is None:
            return False
        headers = Headers({b"user-agent": [b"yurthub/nodepools"], b"accept": [b"application/json"]})
        try:
            self._asking = self._agent.request_to(backend, b"GET", _NODES_TARGET, headers, None)
            response = await self._asking
            self._asking = readBody(response)
            body = await self._asking
        except defer.CancelledError:
            return False
        finally:
            self._asking = None
        if response.code != 200:
            _log.info("listing the node pools: the cloud answered {code}", code=response.code)
            return False
        items, rv = decode_list(body, "yurthub", _ALL_NODES_GVR, "")
        self._cache.apply_list(_NODES, items, rv)
        return True
