"""`yurthub.dispatch`: the epoll reactor without the legacy log context per event.

Each test drives a reactor of its own (not the one trial runs), iterating it by hand, so
the real epoll dispatch is exercised: connections, data, a protocol that raises.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from yurthub.dispatch import can_send_now, dispatch_without_log_context, send_now, send_pieces_now


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.transport.write(data.upper())  # type: ignore[union-attr]


class _Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Any = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.lost = reason


class _Raises(Protocol):
    def __init__(self) -> None:
        self.lost: Any = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        raise RuntimeError("a bug in a protocol")

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.lost = reason


class DispatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = EPollReactor()
        self.addCleanup(self._close)
        self.assertTrue(dispatch_without_log_context(self.reactor))

    def _close(self) -> None:
        self.reactor.disconnectAll()
        self.reactor._poller.close()

    def _iterate_until(self, done: Any, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            self.assertLess(time.monotonic(), deadline, "the reactor did not get there in time")
            self.reactor.iterate(0.01)

    def _connect(self, server: Protocol) -> _Client:
        port = self.reactor.listenTCP(0, Factory.forProtocol(lambda: server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = _Client()
        self.reactor.connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(lambda: client))
        self._iterate_until(lambda: client.transport is not None and client.transport.connected)
        return client

    def test_events_reach_protocols(self) -> None:
        client = self._connect(_Echo())
        client.transport.write(b"hello")  # type: ignore[union-attr]
        self._iterate_until(lambda: client.received == b"HELLO")

    def test_a_protocol_that_raises_loses_its_connection_and_is_logged(self) -> None:
        server = _Raises()
        client = self._connect(server)
        client.transport.write(b"boom")  # type: ignore[union-attr]
        self._iterate_until(lambda: server.lost is not None and client.lost is not None)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_the_dispatch_is_the_reactors_own_iteration(self) -> None:
        self.assertEqual(self.reactor.doIteration.__func__.__module__, "yurthub.dispatch")  # type: ignore[attr-defined]


class SendNowTests(DispatchTests):
    """`send_now` on a real TCP connection of a reactor of the test's own."""

    def _pair(self) -> tuple[_Client, Any]:
        server = _Client()
        client = self._connect(server)
        self._iterate_until(lambda: server.transport is not None)
        return client, server.transport

    def test_an_empty_buffer_is_skipped(self) -> None:
        client, transport = self._pair()
        self.assertTrue(can_send_now(transport))
        send_now(transport, b"at once")
        self.assertNotIn(transport, self.reactor.getWriters())  # nothing left for a later turn
        self._iterate_until(lambda: client.received == b"at once")

    def test_bytes_already_waiting_go_first(self) -> None:
        client, transport = self._pair()
        transport.write(b"first ")
        send_now(transport, b"second")
        self._iterate_until(lambda: client.received == b"first second")

    def test_what_the_socket_does_not_take_is_buffered_in_order(self) -> None:
        client, transport = self._pair()
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        client.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # type: ignore[union-attr]
        data = bytes(range(256)) * 8_000  # 2 MB: more than the socket takes at once
        send_now(transport, data)
        self.assertIn(transport, self.reactor.getWriters())
        send_now(transport, b"end")  # must queue behind the rest
        self._iterate_until(lambda: len(client.received) == len(data) + 3, seconds=30)
        self.assertEqual(client.received, data + b"end")

    def test_a_closing_connection_is_left_to_the_transport(self) -> None:
        client, transport = self._pair()
        transport.write(b"pending ")
        transport.loseConnection()
        send_now(transport, b"then closed")  # as Twisted's write: flushed before the close
        self._iterate_until(lambda: client.lost is not None)
        self.assertEqual(client.received, b"pending then closed")

    def test_pieces_go_together_and_in_order(self) -> None:
        client, transport = self._pair()
        send_pieces_now(transport, [b"head ", b"", b"body"])
        self.assertNotIn(transport, self.reactor.getWriters())
        transport.write(b" pending")
        send_pieces_now(transport, [b" more", b" end"])  # behind what is waiting
        self._iterate_until(lambda: client.received == b"head body pending more end")

    def test_pieces_the_socket_does_not_take_are_buffered_in_order(self) -> None:
        client, transport = self._pair()
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        client.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # type: ignore[union-attr]
        pieces = [bytes([i]) * 300_000 for i in range(1, 7)]  # 1.8 MB: cut somewhere inside
        send_pieces_now(transport, pieces)
        send_pieces_now(transport, [b"end"])
        expected = b"".join(pieces) + b"end"
        self._iterate_until(lambda: len(client.received) == len(expected), seconds=30)
        self.assertEqual(client.received, expected)

    def test_only_tcp_transports_qualify(self) -> None:
        self.assertFalse(can_send_now(StringTransport()))


class OtherReactorTests(SynchronousTestCase):
    def test_other_reactors_are_left_alone(self) -> None:
        reactor = SelectReactor()
        before = reactor.doIteration
        self.assertFalse(dispatch_without_log_context(reactor))
        self.assertEqual(reactor.doIteration, before)
