"""Tests for the proxy listeners' root resource and site (yurthub/proxy/root.py)."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyRequest

from yurthub.metrics import ProxyMetrics
from yurthub.proxy import root
from yurthub.proxy.root import ProxyRoot, make_site
from yurthub.requestinfo import parse_request_info

from .support import raw_connect

#: Bigger than Twisted's own send limit (128 KiB), so an answer needs more than one send
#: without yurthub's.
BIG_BODY = b'{"items":[' + b",".join(b'"%06d"' % i for i in range(40_000)) + b"]}"


class _Answer(Resource):
    """Answers every request with ``BIG_BODY`` at once and notes the server transport."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.transports: list[Any] = []

    def render(self, request: Request) -> int:
        self.transports.append(request.channel.transport)
        request.setResponseCode(200)
        request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(BIG_BODY)])
        request.write(BIG_BODY)
        request.finish()
        return NOT_DONE_YET


class ProxySiteTests(TestCase):
    """`make_site` on real loopback connections."""

    async def _serve(self, resource: Resource, *, leaf: bool) -> int:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            make_site(resource, leaf=leaf)
        )
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def test_connections_send_whole_answers(self) -> None:
        """A client connection's transport may send a large answer in one piece, and the
        answer arrives whole, with only the headers the resource set."""
        resource = _Answer()
        port = await self._serve(resource, leaf=True)
        client = await raw_connect(self, port)
        client.transport.write(b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[attr-defined]
        received = await client.wait_for(lambda data: data.endswith(BIG_BODY), timeout=10)
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertEqual(body, BIG_BODY)
        self.assertEqual(
            head,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
            % len(BIG_BODY),
        )
        self.assertEqual(resource.transports[0].SEND_LIMIT, root.SEND_LIMIT)
        self.assertGreater(root.SEND_LIMIT, len(BIG_BODY))

    async def test_keep_alive_answers_stay_in_order(self) -> None:
        """Two requests on one connection get two whole answers."""
        port = await self._serve(_Answer(), leaf=True)
        client = await raw_connect(self, port)
        client.transport.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[attr-defined]
        await client.wait_for(lambda data: data.endswith(BIG_BODY), timeout=10)
        client.transport.write(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[attr-defined]
        received = await client.wait_for(lambda data: data.count(BIG_BODY) == 2, timeout=10)
        self.assertEqual(received.count(b"HTTP/1.1 200 OK"), 2)


class _NoRemote:
    def __init__(self) -> None:
        self.infos: list[Any] = []

    def handle(self, request: Any, info: Any, unavailable: Any) -> None:
        self.infos.append(info)


class ProxyRootRequestInfoTests(SynchronousTestCase):
    """`ProxyRoot.request_info`: resolved once per request line and User-Agent."""

    def _root(self) -> tuple[ProxyRoot, _NoRemote]:
        remote = _NoRemote()
        return ProxyRoot(remote, None, ProxyMetrics()), remote  # type: ignore[arg-type]

    def _request(self, uri: bytes, agent: bytes | None = b"kubelet/v1.31.0") -> DummyRequest:
        request = DummyRequest([])
        request.method = b"GET"
        request.uri = uri
        if agent is not None:
            request.requestHeaders.setRawHeaders(b"user-agent", [agent])
        return request

    def test_same_request_gets_the_same_info(self) -> None:
        proxy_root, remote = self._root()
        for _ in range(2):
            proxy_root.render(self._request(b"/api/v1/namespaces/small/pods"))
        self.assertIs(remote.infos[0], remote.infos[1])
        self.assertEqual(
            remote.infos[0],
            parse_request_info(b"GET", b"/api/v1/namespaces/small/pods", b"kubelet/v1.31.0"),
        )

    def test_user_agent_is_part_of_the_key(self) -> None:
        proxy_root, _ = self._root()
        kubelet = proxy_root.request_info(self._request(b"/api/v1/pods"))
        proxy = proxy_root.request_info(self._request(b"/api/v1/pods", b"kube-proxy/v1.31.0"))
        anonymous = proxy_root.request_info(self._request(b"/api/v1/pods", None))
        self.assertEqual(
            (kubelet.component, proxy.component, anonymous.component), ("kubelet", "kube-proxy", "")
        )

    def test_memo_is_bounded(self) -> None:
        proxy_root, _ = self._root()
        for i in range(root.REQUEST_INFO_MEMO * 3):
            info = proxy_root.request_info(self._request(b"/api/v1/namespaces/n%d/pods" % i))
            self.assertEqual(info.namespace, f"n{i}")
        self.assertLessEqual(len(proxy_root._infos), root.REQUEST_INFO_MEMO)
