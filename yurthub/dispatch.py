"""Two trims of the reactor's per-event work on the proxy path.

**Dispatch without the legacy log context.**
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

**Writes sent at once.** A TCP transport buffers every write and sends it on the next
reactor turn, after asking epoll to watch the socket for writability and, once sent, to
stop: two more system calls and a whole reactor turn per answer (and per request sent
upstream). `send_now` sends at once when nothing is waiting in the transport's buffer,
and leaves what the socket did not take (or any failure) to the transport's own write,
so ordering, back-pressure on a registered producer and error handling stay Twisted's.
Writes made while a `WRITES` batch is open (while one read from a socket is handled) are
held by their channel and sent together when it closes: the many watch events one
upstream read carries go out in one ``sendmsg``, not one system call each.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from types import MethodType
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.tcp import Connection
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


def _buffers_as_expected() -> bool:
    """Whether this Twisted's TCP transports keep their pending bytes where `send_now`
    looks (checked once; otherwise every write is left to the transport)."""
    return all(hasattr(Connection, name) for name in ("dataBuffer", "offset", "writeSomeData", "connected"))


_SEND_NOW = _buffers_as_expected()


def can_send_now(transport: Any) -> bool:
    """Whether `send_now` may send on ``transport`` itself (a plain TCP connection)."""
    return _SEND_NOW and isinstance(transport, Connection)


def send_pieces_now(transport: Any, pieces: Sequence[bytes]) -> None:
    """`send_now` for several pieces: handed to the socket together (``sendmsg``), not
    joined first (an answer's head and its body: the body is not copied again)."""
    if (
        transport.connected
        and not transport.disconnecting
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.sendmsg(pieces)
        except BlockingIOError:
            sent = 0
        except OSError:
            transport.writeSequence(pieces)  # the transport's own write finds the failure
            return
        for piece in pieces:
            if sent >= len(piece):
                sent -= len(piece)
                continue
            transport.write(piece[sent:] if sent else piece)
            sent = 0
        return
    transport.writeSequence(pieces)


def send_now(transport: Any, data: bytes) -> None:
    """Write ``data`` on a transport `can_send_now` accepted: sent at once when the
    transport has nothing waiting, else (and for whatever the socket did not take)
    through its own ``write``."""
    if (
        transport.connected
        and not transport.disconnecting
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            if sent < len(data):
                transport.write(data[sent:])
            return
        # A failure (the connection is gone): the transport's own write finds it.
    transport.write(data)


class WriteBatch:
    """Holds the writes of channels that ask (``hold``) while it is open; sends each
    channel's together (its ``flush``) when the outermost ``open`` is closed."""

    def __init__(self) -> None:
        self.depth = 0
        self._holding: list[Any] = []

    def open(self) -> None:
        self.depth += 1

    def close(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self._holding:
            holding, self._holding = self._holding, []
            for channel in holding:
                channel.flush()

    def hold(self, channel: Any) -> None:
        """``channel`` holds writes from now until the batch closes."""
        self._holding.append(channel)


#: The reactor thread's batch (opened around the handling of one read).
WRITES = WriteBatch()

