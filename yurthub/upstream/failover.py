"""The failover factory: for each request, the backends to try and in which order.

``loadBalancing: rr`` starts each new request at the next backend in turn, so requests (not
TCP connections: pooled connections are shared) spread over the healthy backends;
``priority`` starts every request at the first backend in configured order. Either way the
others follow as fallbacks.

A request gets an `Attempts` from `FailoverFactory.attempts`; the remote proxy calls its
``next`` for the first backend and again after every failed attempt. Health is read at each
call, not when the request arrived: a backend that failed a moment ago (marked unhealthy
by that very failure) or recovered meanwhile is skipped or used accordingly. Each backend is
tried at most once per request.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from zope.interface import implementer

from yurthub.interfaces import IAttempts, IFailoverFactory
from yurthub.requestinfo import RequestInfo
from yurthub.upstream.backends import Backend

MODES = ("rr", "priority")


@implementer(IAttempts)
class Attempts:
    """The backends one request may still try, in its order."""

    __slots__ = ("_order", "tried")

    def __init__(self, order: Sequence[Backend]) -> None:
        self._order = order
        #: The backends handed out so far, in order.
        self.tried: list[Backend] = []

    def next(self) -> Backend | None:
        for backend in self._order:
            if backend.healthy and backend not in self.tried:
                self.tried.append(backend)
                return backend
        return None


@implementer(IFailoverFactory)
class FailoverFactory:
    """Orders the backends per request for ``rr`` or ``priority`` load balancing."""

    def __init__(self, mode: str, backends: Sequence[Backend]) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown load-balancing mode {mode!r}")
        self.mode = mode
        self.replace(backends)

    def replace(self, backends: Sequence[Backend]) -> None:
        """Use these backends from now on (a cluster migration): every later `attempts`
        orders them; the `Attempts` handed out before keep their old order."""
        if not backends:
            raise ValueError("no backends")
        self.backends = list(backends)
        self._rank = {backend: i for i, backend in enumerate(self.backends)}
        self._turn = itertools.count()

    def attempts(self, info: RequestInfo | None = None) -> Attempts:
        if self.mode == "priority" or len(self.backends) == 1:
            return Attempts(self.backends)
        # The turn goes round the healthy backends only, so each gets an equal share even
        # while another is down; the unhealthy ones stay last, in case they recover.
        healthy = [b for b in self.backends if b.healthy]
        if len(healthy) < 2:
            return Attempts(self.backends)
        start = next(self._turn) % len(healthy)
        return Attempts(healthy[start:] + healthy[:start] + [b for b in self.backends if not b.healthy])

    def any_healthy(self) -> bool:
        return any(b.healthy for b in self.backends)

    def first_healthy(self) -> Backend | None:
        """The backend a request would go to first now (rr advances its turn)."""
        return self.attempts(None).next()

    def rank(self, backend: Backend) -> int:
        """The backend's place in the configured order (0 = most preferred)."""
        return self._rank[backend]

    def outranked(self, backend: Backend) -> bool:
        if self.mode != "priority":
            return False
        rank = self._rank.get(backend)
        return rank is not None and any(b.healthy for b in self.backends[:rank])
