"""A scripted `IFailoverFactory` for tests of the parts that ask one.

`ScriptedFailover` hands every request the same fixed order, whatever the backends' health,
and records what it was asked: a test of the remote proxy can then say "the first attempt
goes to A, the retry to B" without arranging health states, and check how many attempts a
request made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from zope.interface import implementer

from yurthub.interfaces import IAttempts, IFailoverFactory


@implementer(IAttempts)
class ScriptedAttempts:
    """The fixed order, one backend per ``next`` call, then None."""

    def __init__(self, order: Sequence[Any], record: list[Any]) -> None:
        self._left = list(order)
        self._record = record

    def next(self) -> Any:
        backend = self._left.pop(0) if self._left else None
        self._record.append(backend)
        return backend


@implementer(IFailoverFactory)
class ScriptedFailover:
    """Every request tries ``order`` in turn; ``outranked`` names the backends that
    should give their watches up; ``handed_out`` lists every answer to ``next``."""

    def __init__(self, order: Sequence[Any], *, outranked: Sequence[Any] = ()) -> None:
        self.backends = list(order)
        self.outranked_backends = set(outranked)
        self.requests = 0
        self.handed_out: list[Any] = []

    def attempts(self, info: Any = None) -> ScriptedAttempts:
        self.requests += 1
        return ScriptedAttempts(self.backends, self.handed_out)

    def any_healthy(self) -> bool:
        return any(b.healthy for b in self.backends)

    def outranked(self, backend: Any) -> bool:
        return backend in self.outranked_backends
