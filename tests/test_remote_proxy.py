"""Integration tests of the streaming remote proxy (yurthub/proxy/remote.py, upgrade.py).

The upstream here is a small twisted.web site controlled by each test, so streaming,
back-pressure and failures mid-body can be staged exactly; the simulated kube-apiserver is
used by the e2e tests.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tests.support import fetch, listen_site, raw_connect, sleep, start_hub
from yurthub.testing.failover import ScriptedFailover


class Upstream(Resource):
    """A scriptable upstream: records requests, answers per path with a handler."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []
        self.handlers: dict[bytes, Any] = {}
        self.open_requests: list[Request] = []

    def render(self, request: Request) -> Any:
        path = request.path
        if path in (b"/readyz", b"/healthz"):
            return b"ok"
        self.seen.append(
            {
                "method": request.method,
                "uri": request.uri,
                "headers": {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()},
                "body": request.content.read() if request.content else b"",
            }
        )
        handler = self.handlers.get(path)
        if handler is not None:
            return handler(request)
        request.setHeader(b"content-type", b"application/json")
        request.responseHeaders.setRawHeaders(b"x-multi", [b"one", b"two"])
        request.setHeader(b"connection", b"x-private")
        request.setHeader(b"x-private", b"hop-by-hop")
        return json.dumps({"method": request.method.decode(), "path": request.uri.decode()}).encode()


class ProxyTestCase(TestCase):
    """Starts an upstream and a yurthub in front of it."""

    async def start(self) -> None:
        self.upstream = Upstream()
        port = await listen_site(self, self.upstream)
        self.hub = await start_hub(self, [f"http://127.0.0.1:{port}"])
        self.proxy_port = self.hub.port_of("listen.proxy")
        self.base = f"http://127.0.0.1:{self.proxy_port}"


class RelayTests(ProxyTestCase):
    """Requests and answers cross the proxy intact."""

    async def test_every_method_reaches_upstream_with_its_body(self) -> None:
        await self.start()
        for method in (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE"):
            body = b'{"x":1}' if method in (b"POST", b"PUT", b"PATCH") else None
            code, _, data = await fetch(self, method, self.base + "/api/v1/namespaces/default/pods/p", body=body)
            self.assertEqual(code, 200)
            self.assertEqual(json.loads(data)["method"], method.decode())
            self.assertEqual(self.upstream.seen[-1]["body"], body or b"")
        code, _, data = await fetch(self, b"HEAD", self.base + "/api/v1/pods")
        self.assertEqual((code, data), (200, b""))

    async def test_query_string_and_path_are_kept(self) -> None:
        await self.start()
        uri = "/api/v1/pods?labelSelector=app%3Dweb&limit=5"
        _, _, data = await fetch(self, b"GET", self.base + uri)
        self.assertEqual(json.loads(data)["path"], uri)

    async def test_repeated_headers_kept_and_hop_by_hop_dropped(self) -> None:
        await self.start()
        headers = {
            b"x-trace": [b"a", b"b"],
            b"connection": [b"keep-alive, x-secret"],
            b"x-secret": [b"do not forward"],
            b"te": [b"trailers"],
            b"user-agent": [b"kubelet/v1.31.0 (linux/amd64)"],
        }
        code, response_headers, _ = await fetch(self, b"GET", self.base + "/api/v1/nodes", headers)
        self.assertEqual(code, 200)
        sent = self.upstream.seen[-1]["headers"]
        self.assertEqual(sent[b"x-trace"], [b"a", b"b"])
        self.assertNotIn(b"x-secret", sent)
        self.assertNotIn(b"te", sent)
        self.assertEqual(sent[b"user-agent"], [b"kubelet/v1.31.0 (linux/amd64)"])
        self.assertEqual(sent[b"host"], [f"127.0.0.1:{self.upstream_port()}".encode()])
        self.assertEqual(response_headers.getRawHeaders(b"x-multi"), [b"one", b"two"])

    def upstream_port(self) -> int:
        return self.hub.backends[0].port

    async def test_error_codes_and_bodies_pass_through(self) -> None:
        await self.start()

        def not_found(request: Request) -> bytes:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return b'{"kind":"Status","code":404}'

        self.upstream.handlers[b"/api/v1/namespaces/x/pods/gone"] = not_found
        code, headers, data = await fetch(self, b"GET", self.base + "/api/v1/namespaces/x/pods/gone")
        self.assertEqual((code, data), (404, b'{"kind":"Status","code":404}'))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])

    async def test_requests_are_counted_by_component_verb_resource_and_code(self) -> None:
        await self.start()
        await fetch(self, b"GET", self.base + "/api/v1/namespaces/default/pods", {b"user-agent": [b"kubelet/v1.31"]})
        text = self.hub.metrics.render().decode()
        self.assertIn('yurthub_proxy_requests_total{code="200",component="kubelet",resource="pods",verb="list"} 1.0', text)
        self.assertIn('yurthub_proxy_in_flight_requests{component="kubelet"} 0.0', text)


class StreamingTests(ProxyTestCase):
    """Watches and long bodies stream with back-pressure."""

    async def test_watch_headers_sent_before_any_event_and_each_event_flushed(self) -> None:
        await self.start()
        opened: defer.Deferred[Request] = defer.Deferred()

        def watch(request: Request) -> int:
            request.setHeader(b"content-type", b"application/json")
            request.write(b"")
            opened.callback(request)
            return NOT_DONE_YET

        self.upstream.handlers[b"/api/v1/pods"] = watch
        client = await raw_connect(self, self.proxy_port)
        client.transport.write(b"GET /api/v1/pods?watch=true HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[union-attr]
        upstream_request = await opened
        head = await client.wait_for(lambda b: b"\r\n\r\n" in b)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"))
        self.assertIn(b"Transfer-Encoding: chunked", head)
        for n in range(3):
            event = json.dumps({"type": "ADDED", "object": {"n": n}}).encode() + b"\n"
            upstream_request.write(event)
            await client.wait_for(lambda b, e=event: e in b, timeout=1)
        upstream_request.finish()
        await client.wait_for(lambda b: b.endswith(b"0\r\n\r\n"))

    async def test_slow_client_pauses_the_upstream(self) -> None:
        await self.start()
        produced = {"bytes": 0, "paused": 0}

        class Firehose:
            def __init__(self, request: Request) -> None:
                self.request = request
                self.paused = False
                self.stopped = False

            def resumeProducing(self) -> None:  # noqa: N802
                self.paused = False
                self.pump()

            def pauseProducing(self) -> None:  # noqa: N802
                self.paused = True
                produced["paused"] += 1

            def stopProducing(self) -> None:  # noqa: N802
                self.stopped = True

            def pump(self) -> None:
                if self.paused or self.stopped or produced["bytes"] >= 200_000_000:
                    return
                self.request.write(b"x" * 65536)
                produced["bytes"] += 65536
                reactor.callLater(0, self.pump)  # type: ignore[attr-defined]

        def stream(request: Request) -> int:
            hose = Firehose(request)
            request.registerProducer(hose, True)
            hose.pump()
            return NOT_DONE_YET

        self.upstream.handlers[b"/api/v1/pods"] = stream
        client = await raw_connect(self, self.proxy_port)
        client.transport.write(b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[union-attr]
        await client.wait_for(lambda b: len(b) > 0)
        client.transport.pauseProducing()  # type: ignore[union-attr]  # stop reading
        await sleep(1.5)
        self.assertGreater(produced["paused"], 0)
        self.assertLess(produced["bytes"], 64_000_000, "the upstream kept producing for a client that reads nothing")

    async def test_client_disconnect_cancels_the_upstream_request(self) -> None:
        await self.start()
        upstream_gone: defer.Deferred[None] = defer.Deferred()

        def hang(request: Request) -> int:
            request.write(b"")
            request.notifyFinish().addBoth(lambda _: upstream_gone.callback(None))
            return NOT_DONE_YET

        self.upstream.handlers[b"/api/v1/pods"] = hang
        client = await raw_connect(self, self.proxy_port)
        client.transport.write(b"GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[union-attr]
        await client.wait_for(lambda b: b"\r\n\r\n" in b)
        client.transport.abortConnection()  # type: ignore[union-attr]
        await upstream_gone.addTimeout(2, reactor)

    async def test_client_disconnect_before_response_headers_cancels_too(self) -> None:
        await self.start()
        upstream_gone: defer.Deferred[None] = defer.Deferred()

        def hang(request: Request) -> int:
            request.notifyFinish().addBoth(lambda _: upstream_gone.callback(None))
            return NOT_DONE_YET

        self.upstream.handlers[b"/api/v1/nodes"] = hang
        client = await raw_connect(self, self.proxy_port)
        client.transport.write(b"GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[union-attr]
        await sleep(0.3)
        client.transport.abortConnection()  # type: ignore[union-attr]
        await upstream_gone.addTimeout(2, reactor)
        self.assertEqual(self.hub.metrics.in_flight.labels("").value, 0)

    async def test_upstream_dying_mid_body_aborts_the_client(self) -> None:
        await self.start()

        def truncated(request: Request) -> int:
            request.setHeader(b"content-length", b"1000")
            request.write(b"{" * 100)
            reactor.callLater(0.1, request.channel.transport.abortConnection)  # type: ignore[attr-defined]
            return NOT_DONE_YET

        self.upstream.handlers[b"/api/v1/pods"] = truncated
        with self.assertRaises(ResponseFailed):
            await fetch(self, b"GET", self.base + "/api/v1/pods")

    async def test_upstream_dying_mid_chunked_body_aborts_the_client(self) -> None:
        await self.start()

        def truncated(request: Request) -> int:
            request.write(b"[" * 100)
            reactor.callLater(0.1, request.channel.transport.abortConnection)  # type: ignore[attr-defined]
            return NOT_DONE_YET

        self.upstream.handlers[b"/api/v1/pods"] = truncated
        with self.assertRaises(ResponseFailed):
            await fetch(self, b"GET", self.base + "/api/v1/pods")

    async def test_a_watch_whose_upstream_dies_between_events_ends_cleanly(self) -> None:
        await self.start()
        event = b'{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"a"}}}\n'

        def dying(request: Request) -> int:
            request.write(event)
            reactor.callLater(0.1, request.channel.transport.abortConnection)  # type: ignore[attr-defined]
            return NOT_DONE_YET

        self.upstream.handlers[b"/api/v1/pods"] = dying
        code, _, body = await fetch(self, b"GET", self.base + "/api/v1/pods?watch=true")
        # As after a server-side timeout: the client re-watches from the event it has.
        self.assertEqual((code, body), (200, event))

    async def test_a_list_being_relayed_from_a_backend_turning_unhealthy_is_aborted(self) -> None:
        await self.start()
        started: defer.Deferred[None] = defer.Deferred()

        def slow_list(request: Request) -> int:
            request.setHeader(b"content-length", b"100000")
            request.write(b'{"kind":"PodList","items":[')
            reactor.callLater(0, started.callback, None)
            return NOT_DONE_YET

        self.upstream.handlers[b"/api/v1/pods"] = slow_list
        answer = defer.ensureDeferred(fetch(self, b"GET", self.base + "/api/v1/pods"))
        await started
        await sleep(0.05)  # the head and first bytes are relayed
        self.hub.backends[0].set_healthy(False, "test")
        with self.assertRaises(ResponseFailed):  # never passes for a whole list
            await answer.addTimeout(1.0, reactor)

    async def test_a_watch_whose_upstream_dies_mid_event_is_aborted(self) -> None:
        await self.start()

        def dying(request: Request) -> int:
            request.write(b'{"type":"ADDED","obj')
            reactor.callLater(0.1, request.channel.transport.abortConnection)  # type: ignore[attr-defined]
            return NOT_DONE_YET

        self.upstream.handlers[b"/api/v1/pods"] = dying
        with self.assertRaises(ResponseFailed):
            await fetch(self, b"GET", self.base + "/api/v1/pods?watch=true")


class UnavailableTests(TestCase):
    """No reachable backend: a Status, and failover to the next for idempotent requests."""

    async def test_no_reachable_backend_answers_locally(self) -> None:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = await endpoint.listen(Factory.forProtocol(Protocol))
        dead = port.getHost().port
        await port.stopListening()
        hub = await start_hub(self, [f"http://127.0.0.1:{dead}"])
        base = f"http://127.0.0.1:{hub.port_of('listen.proxy')}"
        code, headers, data = await fetch(self, b"GET", base + "/api/v1/pods")
        status = json.loads(data)
        # Offline answers: a list never cached is a NotFound Status ...
        self.assertEqual((code, status["kind"], status["code"], status["reason"]), (404, "Status", 404, "NotFound"))
        self.assertFalse(hub.backends[0].healthy)
        # ... and what only the cloud can answer is a ServiceUnavailable one.
        code, headers, data = await fetch(self, b"GET", base + "/logs/")
        status = json.loads(data)
        self.assertEqual((code, status["reason"]), (503, "ServiceUnavailable"))

    async def test_get_is_retried_on_the_next_backend_when_one_refuses(self) -> None:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = await endpoint.listen(Factory.forProtocol(Protocol))
        dead = port.getHost().port
        await port.stopListening()
        upstream = Upstream()
        live = await listen_site(self, upstream)
        hub = await start_hub(self, [f"http://127.0.0.1:{dead}", f"http://127.0.0.1:{live}"], loadBalancing="priority")
        hub.backends[0].set_healthy(True)  # as if the probe had not noticed yet
        code, _, _ = await fetch(self, b"GET", f"http://127.0.0.1:{hub.port_of('listen.proxy')}/api/v1/pods")
        self.assertEqual(code, 200)
        self.assertEqual(len(upstream.seen), 1)


    async def test_the_failover_factory_is_asked_again_after_each_failed_attempt(self) -> None:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = await endpoint.listen(Factory.forProtocol(Protocol))
        dead = port.getHost().port
        await port.stopListening()
        upstream = Upstream()
        live = await listen_site(self, upstream)
        hub = await start_hub(self, [f"http://127.0.0.1:{dead}", f"http://127.0.0.1:{live}"])
        hub.health.stop()
        dead_backend, live_backend = hub.backends
        scripted = ScriptedFailover([dead_backend, live_backend])
        hub.remote.failover = scripted
        base = f"http://127.0.0.1:{hub.port_of('listen.proxy')}"
        code, _, _ = await fetch(self, b"GET", base + "/api/v1/pods")
        self.assertEqual(code, 200)
        self.assertEqual(scripted.handed_out, [dead_backend, live_backend])
        self.assertFalse(dead_backend.healthy)  # the refused connection marked it
        # A refused connection sent nothing, so even a POST goes on to the next backend.
        code, _, _ = await fetch(self, b"POST", base + "/api/v1/namespaces/default/configmaps", body=b"{}")
        self.assertEqual(code, 200)
        self.assertEqual(scripted.handed_out[2:], [dead_backend, live_backend])
        self.assertEqual([seen["method"] for seen in upstream.seen], [b"GET", b"POST"])


class EchoUpgrade(Protocol):
    """An upstream that answers any request with 101 and then echoes bytes."""

    def connectionMade(self) -> None:  # noqa: N802
        self.buffer = b""
        self.upgraded = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.upgraded:
            self.transport.write(data)  # type: ignore[union-attr]
            return
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            if b"Upgrade:" not in head:  # a health probe
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            self.factory.heads.append(head)  # type: ignore[attr-defined]
            self.upgraded = True
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")  # type: ignore[union-attr]
            if rest:
                self.transport.write(rest)  # type: ignore[union-attr]


class UpgradeTests(TestCase):
    """Upgrade requests are spliced as raw bytes after the 101."""

    async def test_upgrade_is_spliced_both_ways(self) -> None:
        factory = Factory.forProtocol(EchoUpgrade)
        factory.heads = []  # type: ignore[attr-defined]
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        hub = await start_hub(self, [f"http://127.0.0.1:{port.getHost().port}"])
        client = await raw_connect(self, hub.port_of("listen.proxy"))
        client.transport.write(  # type: ignore[union-attr]
            b"POST /api/v1/namespaces/default/pods/web/exec?command=cat HTTP/1.1\r\n"
            b"Host: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nAuthorization: Bearer abc\r\n\r\n"
        )
        await client.wait_for(lambda b: b"\r\n\r\n" in b)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101"))
        for chunk in (b"hello", b"\x00\x01binary\xff", b"x" * 100_000):
            mark = len(client.received)
            client.transport.write(chunk)  # type: ignore[union-attr]
            await client.wait_for(lambda b, m=mark, c=chunk: b[m:] == c)
        head = factory.heads[0]  # type: ignore[attr-defined]
        self.assertIn(b"Upgrade: websocket", head)
        self.assertIn(b"Connection: Upgrade", head)
        self.assertIn(b"Authorization: Bearer abc", head)
        client.transport.loseConnection()  # type: ignore[union-attr]
        await client.closed
        await sleep(0.1)
        text = hub.metrics.render().decode()
        self.assertIn('code="101"', text)


class SecureListenerTests(TestCase):
    """The HTTPS listener serves with the configured certificate, over HTTP/1.1 and h2."""

    async def test_https_and_http2_reach_the_upstream(self) -> None:
        import os

        from twisted.internet import utils

        from yurthub.testing.pki import TestPKI

        pki = TestPKI()
        cert, key = pki.issue_server(hosts=["127.0.0.1", "localhost"])
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        files = pki.write_files(directory, name="serving", cert_pem=cert, key_pem=key)
        upstream = Upstream()
        port = await listen_site(self, upstream)
        hub = await start_hub(
            self,
            [f"http://127.0.0.1:{port}"],
            listen={"proxy": "", "secureProxy": "tcp:0:interface=127.0.0.1", "hub": ""},
            certificates={"servingCertFile": files["cert"], "servingKeyFile": files["key"]},
        )
        url = f"https://localhost:{hub.port_of('listen.secureProxy')}/api/v1/namespaces/default/pods"
        for flag, version in (("--http1.1", b"HTTP/1.1 200"), ("--http2", b"HTTP/2 200")):
            out, err, code = await utils.getProcessOutputAndValue(
                "/usr/bin/curl", ["-sS", "-i", flag, "--cacert", files["ca"], url], reactor=reactor
            )
            self.assertEqual(code, 0, err)
            self.assertTrue(out.startswith(version), out[:80])
            self.assertIn(b'"path": "/api/v1/namespaces/default/pods"', out)
        self.assertEqual(len(upstream.seen), 2)


class BadRequestTests(ProxyTestCase):
    """What cannot be forwarded gets a 4xx Status and never reaches the cloud."""

    async def test_control_characters_in_the_target_get_400(self) -> None:
        await self.start()
        client = await raw_connect(self, self.proxy_port)
        client.transport.write(b"GET /api/v1/pods?x=\x01y HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[union-attr]
        await client.closed  # twisted.web refuses the request line itself, with a bare 400
        self.assertTrue(client.received.startswith(b"HTTP/1.1 400"), client.received)
        self.assertEqual(self.upstream.seen, [])

    async def test_agent_refuses_an_unsafe_target_with_a_status(self) -> None:
        await self.start()
        agent = self.hub.remote.node_agent
        with self.assertRaises(ValueError):
            await agent.request_to(self.hub.backends[0], b"GET", b"/api/v1/pods?x=\x01", Headers(), None)

    def _request_stub(self) -> Any:
        from twisted.web.test.requesthelper import DummyRequest

        return DummyRequest([b""])
