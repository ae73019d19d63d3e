"""Connection bookkeeping for the simulated kube-apiserver: tracking, aborting, upgrading.

`ConnectionTrackingFactory` wraps the HTTP site's factory so that the server knows every
open connection (to drop them all "as if the process died") and can tell when the last
one has gone. Each connection's `SwitchableProtocol` can hand the connection from the
HTTP channel to another protocol after a ``101 Switching Protocols`` answer, which is how
exec websockets and raw ``Upgrade`` streams leave twisted.web behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IProtocol, IProtocolNegotiationFactory, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from yurthub.proxy.status import abort_transport

__all__ = [
    "ConnectionTrackingFactory",
    "RawEchoProtocol",
    "SwitchableProtocol",
    "take_over_connection",
]


class SwitchableProtocol(ProtocolWrapper):
    """The protocol of one connection: the HTTP channel until `switch_to` hands it over."""

    upgraded = False

    def switch_to(self, protocol: IProtocol, leftover: bytes = b"") -> None:
        """Make ``protocol`` the receiver of this connection's bytes from now on.

        ``protocol`` is connected with this wrapper as its transport; ``leftover`` are
        bytes that arrived after the upgrade request and are delivered first.
        """
        self.upgraded = True
        self.wrappedProtocol = protocol
        protocol.makeConnection(cast(ITransport, self))
        if leftover:
            protocol.dataReceived(leftover)

    def abort(self) -> None:
        """Drop the connection at once, without flushing (like a process dying)."""
        abort_transport(self.transport)


@implementer(IProtocolNegotiationFactory)
class ConnectionTrackingFactory(WrappingFactory):
    """Wraps a factory; knows its open connections and can abort them all.

    Under TLS it answers ALPN itself (``protocols``, HTTP/1.1 only by default): Twisted
    asks the factory right under the TLS layer, and a factory with no answer makes the
    handshake fail for every client that offers ALPN, as Go clients do.
    """

    protocol = SwitchableProtocol

    def __init__(self, wrapped_factory: Any, protocols: Sequence[bytes] = (b"http/1.1",)) -> None:
        super().__init__(wrapped_factory)
        self.protocols_offered = list(protocols)
        self._idle_waiters: list[defer.Deferred[None]] = []

    def acceptableProtocols(self) -> list[bytes]:
        """The ALPN protocols offered to TLS clients, most preferred first."""
        return list(self.protocols_offered)

    @property
    def connections(self) -> list[SwitchableProtocol]:
        """The currently open connections."""
        return [cast(SwitchableProtocol, p) for p in self.protocols]

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        """Forget a closed connection; fire `when_idle` waiters when it was the last."""
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def abort_all(self) -> None:
        """Abort every open connection."""
        for connection in self.connections:
            connection.abort()

    def when_idle(self) -> defer.Deferred[None]:
        """A Deferred that fires once no connection is open (at once if none is)."""
        if not self.protocols:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter


def take_over_connection(request: Request, head: bytes, protocol: Protocol) -> bool:
    """Answer ``request`` with the raw response ``head`` and give its connection to ``protocol``.

    ``head`` is the complete ``HTTP/1.1 101 ...`` status line and headers, ending in a blank
    line. Returns False (and does nothing) when the connection does not come through a
    `ConnectionTrackingFactory`, e.g. when a resource is driven by an in-memory fake.
    """
    channel: Any = request.channel
    wrapper = getattr(channel, "transport", None)
    if not isinstance(wrapper, SwitchableProtocol):
        return False
    channel.setTimeout(None)
    leftover = b"".join(getattr(channel, "_dataBuffer", []))
    channel._dataBuffer = []
    wrapper.unregisterProducer()
    wrapper.write(head)
    wrapper.switch_to(protocol, leftover)
    # The HTTP channel may have paused reading while it handled the request.
    resume = getattr(wrapper.transport, "resumeProducing", None)
    if resume is not None:
        resume()
    return True


class RawEchoProtocol(Protocol):
    """Echoes every byte back: the far side of a generic ``Upgrade`` for proxy tests."""

    def dataReceived(self, data: bytes) -> None:
        """Send ``data`` straight back."""
        assert self.transport is not None
        self.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Nothing to clean up."""
