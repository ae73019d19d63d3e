"""The epoll reactor's event dispatch, without the legacy log context per event.

`EPollReactor.doPoll` hands each ready descriptor to ``log.callWithLogger``, which builds
a legacy-log context (a dict copy and four nested calls) so that an old-style
``log.msg`` written while the event is handled carries the connection's log prefix.
yurthub logs through `twisted.logger` (namespaces, not prefixes), and a proxied request
is four events (client read, upstream write, upstream read, client write): the context
cost about 8 % of the CPU per proxied request. `dispatch_without_log_context` gives one
reactor a ``doIteration`` that hands events straight to ``_doReadOrWrite`` (which already
turns an exception from ``doRead``/``doWrite`` into that connection's loss, logged); an
exception escaping it anyway is logged as ``callWithLogger`` would. Only the process's
own ``twistd yurthub`` gets this (`yurthub.tap.ProcessTuning`).
"""

from __future__ import annotations

import errno
from types import MethodType
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

_log = Logger()


def _do_poll(self: Any, timeout: float | None) -> None:
    if timeout is None:
        timeout = -1  # wait until something happens
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables
    handle = self._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            handle(selectable, fd, event)
        except Exception:
            _log.failure("handling an event of {selectable!r} failed", selectable=selectable)


def dispatch_without_log_context(reactor: Any) -> bool:
    """Make ``reactor`` dispatch events without the legacy log context; False (nothing
    changed) if it is not an epoll reactor."""
    if not isinstance(reactor, EPollReactor):
        return False
    reactor.doIteration = MethodType(_do_poll, reactor)  # type: ignore[method-assign]
    return True
