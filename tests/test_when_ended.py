"""`yurthub.proxy.status.when_ended`: end hooks on lean requests, Deferreds on others."""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from yurthub.proxy.channel import ChannelLimits
from yurthub.proxy.http11 import LeanChannel, LeanRequest
from yurthub.proxy.root import make_site
from yurthub.proxy.status import when_ended


def _lean_request() -> LeanRequest:
    site = make_site(Resource(), leaf=True, limits=ChannelLimits())
    channel = LeanChannel(site)
    channel.makeConnection(StringTransport())
    request = LeanRequest(channel, b"GET", b"/api", b"HTTP/1.1", Headers(), b"", True)
    channel._current = request
    return request


class WhenEndedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.calls: list[Any] = []

    def _hooks(self) -> tuple[Any, Any]:
        return (lambda: self.calls.append("finished"), lambda reason: self.calls.append(reason.type))

    def test_a_lean_request_calls_finished_once_answered(self) -> None:
        request = _lean_request()
        when_ended(request, *self._hooks())
        self.assertEqual(request.notifications, [])  # no Deferred was made
        request.finish()
        self.assertEqual(self.calls, ["finished"])

    def test_a_lean_request_calls_lost_when_its_client_goes(self) -> None:
        request = _lean_request()
        when_ended(request, *self._hooks())
        request.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.calls, [ConnectionLost])

    def test_a_hook_that_raises_does_not_stop_the_others(self) -> None:
        request = _lean_request()
        when_ended(request, lambda: 1 / 0, lambda reason: None)
        when_ended(request, *self._hooks())
        request.finish()
        self.assertEqual(self.calls, ["finished"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_a_twisted_web_request_uses_notify_finish(self) -> None:
        request = DummyRequest([b"api"])
        when_ended(request, *self._hooks())
        request.finish()
        self.assertEqual(self.calls, ["finished"])
        request = DummyRequest([b"api"])
        when_ended(request, *self._hooks())
        request.processingFailed(Failure(ConnectionLost()))
        self.assertEqual(self.calls, ["finished", ConnectionLost])
