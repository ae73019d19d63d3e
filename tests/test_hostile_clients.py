"""Hostile clients: fuzzed requests through the whole proxy stack, in memory.

The real `YurtHub` wiring (ProxySite, LimitedHTTPChannel, ProxyRoot, flow control, tenant
guard, remote and local proxies, cache manager) is driven with raw request bytes fed into
the site's protocol over a `StringTransport`, on a `MemoryReactorClock`: offline (every
backend unhealthy, so the local proxy answers) and online (the remote proxy's clients
replaced by one that serves a fake upstream in memory). Methods, paths, queries and headers
come from hypothesis: invalid UTF-8, percent-encoded traversal in every segment, NUL and
other control characters, absurd ``limit``/``timeoutSeconds``/``resourceVersion``, repeated
parameters, over-long heads.

Each request must get a whole response head (or a clean close after a ``Status``), never a
500 (nor any 5xx but the offline 503 "needs the cloud"), an error body that is a Kubernetes
``Status``, nothing logged at error level or above, and no cache write outside the cache
directory.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import unquote_to_bytes

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from tests.support import hub_config
from yurthub.cache.keys import CacheKey
from yurthub.proxy.http11 import LeanFactory
from yurthub.service import YurtHub
from yurthub.testing.memory_store import MemoryObjectStore
from yurthub.upstream.http1 import UNSAFE_TARGET, Pending

#: Examples per property; four properties below (10,000 cases), and 120 oversized heads or bodies.
EXAMPLES = 2500

CACHE_DIR = "/nonexistent/yurthub-fuzz-cache"

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class SpyStore(MemoryObjectStore):
    """A memory store that checks every key it is asked to write resolves inside the cache
    directory (what `FilesystemObjectStore` would make of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.escapes: list[str] = []

    def _check(self, key: CacheKey) -> None:
        path = os.path.normpath(os.path.join(CACHE_DIR, *key.parts))
        if not path.startswith(CACHE_DIR + os.sep) or len(key.parts) not in (3, 4):
            self.escapes.append(path)

    def put(self, key: CacheKey, rv: str, data: bytes) -> None:
        self._check(key)
        super().put(key, rv, data)

    def delete(self, key: CacheKey, rv: str | None = None) -> None:
        self._check(key)
        super().delete(key, rv)

    def replace(self, component: str, gvr: Any, namespace: Any, items: Any, list_rv: str, covered: Any = None) -> None:
        for key in items:
            self._check(key)
        super().replace(component, gvr, namespace, items, list_rv, covered)


class _UpstreamTransport(StringTransport):
    """The transport an upstream body is delivered over (a push producer)."""

    def stopProducing(self) -> None:  # noqa: N802
        pass


class _FakeResponse:
    """An `UpstreamResponse` from memory: its body is delivered whole, at once (a watch's
    first event, then the stream stays open)."""

    def __init__(self, payload: bytes, length: int | None) -> None:
        self.code = 200
        self.phrase = b"OK"
        self.fields = [(b"Content-Type", b"application/json")]
        self.content_type = b"application/json"
        self.headers = Headers({b"content-type": [b"application/json"]})
        self.length: Any = length if length is not None else UNKNOWN_LENGTH
        self._payload = payload

    def deliverBody(self, protocol: Any) -> None:  # noqa: N802
        protocol.makeConnection(_UpstreamTransport())
        protocol.dataReceived(self._payload)
        if self.length is not UNKNOWN_LENGTH:
            protocol.connectionLost(Failure(ResponseDone()))


class FakeUpstreamClient:
    """Stands in for the remote proxy's `UpstreamClient`: answers every request at once,
    in memory, as a well-behaved kube-apiserver would (a JSON object or list naming what
    was asked)."""

    def __init__(self) -> None:
        self.requests = 0

    def request_to(self, backend: Any, method: bytes, target: bytes, headers: Headers, body: Any) -> Any:
        self.requests += 1
        if UNSAFE_TARGET.search(target):
            return defer.fail(ValueError(f"invalid request target {target!r}"))
        path = target.split(b"?", 1)[0]
        if b"watch=" in target or b"/watch/" in path:
            payload = b'{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"w","namespace":"default","resourceVersion":"7"}}}\n'
            length: int | None = None
        elif path.rstrip(b"/").endswith(b"pods"):
            payload = json.dumps(
                {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
                 "items": [{"metadata": {"name": "p", "namespace": "default", "resourceVersion": "7"}}]}
            ).encode()
            length = len(payload)
        else:
            payload = json.dumps(
                {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "namespace": "default", "resourceVersion": "7"}}
            ).encode()
            length = len(payload)
        return defer.succeed(_FakeResponse(payload, length))

    def start(
        self, backend: Any, method: bytes, target: bytes, headers: Headers, body: Any,
        answered: Any, failed: Any, context: Any,
    ) -> Any:
        """`UpstreamClient.start`: the same answers, to callables."""
        self.request_to(backend, method, target, headers, body).addCallbacks(
            lambda response: answered(response, context), lambda failure: failed(failure, context)
        )
        return Pending()


class Exchange:
    """One raw request fed to the site over a `StringTransport`; what came back."""

    def __init__(self, hub: YurtHub, reactor: MemoryReactorClock, raw: bytes, *, lean: bool = True) -> None:
        # The plain listener's lean server, or twisted.web (the HTTPS listener's stack).
        factory = LeanFactory(hub.proxy_site) if lean else hub.proxy_site
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        connects = len(reactor.tcpClients)
        protocol.makeConnection(transport)
        protocol.dataReceived(raw)
        reactor.advance(0)
        output = transport.value()
        while output.startswith(b"HTTP/1.1 1"):  # an interim answer (100 Continue) comes first
            output = output.partition(b"\r\n\r\n")[2]
        self.output = output
        self.closed = transport.disconnecting or getattr(transport, "disconnected", False)
        #: An upgrade (exec, attach) is spliced over a connection of its own to the cloud,
        #: which a memory reactor never completes: the request waits for it, rightly.
        self.connecting = len(reactor.tcpClients) > connects
        protocol.connectionLost(ConnectionDone())
        reactor.advance(0)

    @property
    def code(self) -> int | None:
        line = self.output.split(b"\r\n", 1)[0]
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            return None
        try:
            return int(parts[1])
        except ValueError:
            return None

    @property
    def body(self) -> bytes:
        head, _, body = self.output.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            out, rest = b"", body
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0] or b"0", 16)
                if size == 0:
                    break
                out, rest = out + rest[:size], rest[size + 2 :]
            return out
        return body


class _Harness:
    """A yurthub on a memory reactor and store, offline or in front of a fake upstream."""

    def __init__(self, test: SynchronousTestCase, *, online: bool) -> None:
        self.reactor = MemoryReactorClock()
        self.store = SpyStore()
        config = hub_config(
            ["http://127.0.0.1:1"],
            cache={"dir": CACHE_DIR, "agents": ["*"]},
            flowControl={"maxRequestsInFlight": 100000},
        )
        self.hub = YurtHub(config, self.reactor, store=self.store)
        self.hub.proxy_site.reactor = self.reactor
        self.sent = 0
        self.hub.cache._run = lambda f, *args: defer.maybeDeferred(f, *args)
        if online:
            self.agent = FakeUpstreamClient()
            self.hub.remote._node_client = self.agent  # type: ignore[assignment]
            self.hub.remote._token_client = self.agent  # type: ignore[assignment]
        else:
            for backend in self.hub.backends:
                backend.set_healthy(False, "fuzzing offline")
        self.online = online
        self.errors: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            level = event.get("log_level")
            if level is not None and level >= LogLevel.error or event.get("isError"):
                self.errors.append(event)

        globalLogPublisher.addObserver(observe)
        test.addCleanup(globalLogPublisher.removeObserver, observe)
        test.addCleanup(self.hub.local.close)

    def send(self, raw: bytes) -> Exchange:
        # Every other request goes to each HTTP/1.1 stack: both are fuzzed, in one run.
        self.sent += 1
        return Exchange(self.hub, self.reactor, raw, lean=self.sent % 2 == 0)

    def check(self, test: SynchronousTestCase, raw: bytes, exchange: Exchange, *, strict_4xx: bool = False) -> None:
        """The rules every fuzzed request must keep."""
        code = exchange.code
        what = f"{raw[:300]!r} -> {exchange.output[:400]!r}"
        if code is None:
            if not exchange.output and not exchange.closed and (_awaits_body(raw) or exchange.connecting):
                return  # a body promised has not come, or the cloud is being connected to
            test.fail(f"no response head: {what}")
        assert code is not None
        test.assertNotEqual(code, 500, what)
        if code >= 500:
            test.assertFalse(self.online, f"a 5xx online: {what}")
            test.assertEqual(code, 503, what)
        if strict_4xx:
            test.assertTrue(400 <= code < 500, f"expected a 4xx: {what}")
        if code >= 400 and not raw.startswith(b"HEAD "):
            head = exchange.output.partition(b"\r\n\r\n")[0].lower()
            if b"application/vnd.kubernetes.protobuf" in head:
                test.assertTrue(exchange.body.startswith(b"k8s\x00"), what)
            else:
                status = json.loads(exchange.body)
                test.assertEqual((status["kind"], status["code"]), ("Status", code), what)
        test.assertEqual(self.errors, [], f"error logged for {what}: {self.errors[:1]}")
        test.assertEqual(self.store.escapes, [], what)


# --- strategies -------------------------------------------------------------------------

_HOSTILE_SEGMENTS = st.sampled_from(
    [
        "..", ".", "%2e%2e", "..%2f", "..%2F..%2Fetc", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%00", "a%00b",
        "%ff%fe", "\xff", "%c0%af", "%", "%zz", "a%2fb", "%2f", "//", "~", "con", "a" * 300, "-a-",
        "UPPER", "a b", "%20", "*", ";", "a;b", ":", "..;", "\\..\\", "%5c..%5c",
    ]
)
_NORMAL_SEGMENTS = st.sampled_from(["default", "kube-system", "edge-1", "web-0", "p", "x"])
_SEGMENT = st.one_of(_HOSTILE_SEGMENTS, _NORMAL_SEGMENTS, st.text(min_size=0, max_size=12))
_RESOURCES = st.sampled_from(["pods", "nodes", "configmaps", "events", "leases", "services", "secrets", "endpoints"])
_HUGE = st.sampled_from(
    ["-1", "0", "-9223372036854775809", "9223372036854775808", "99999999999999999999999999999", "1e309",
     "NaN", "inf", "-inf", "0x10", "1.5", "", "%00", "\xff", "18446744073709551616", "3", "-0", "+5"]
)
_QUERY_KEYS = st.sampled_from(
    ["limit", "timeoutSeconds", "resourceVersion", "resourceVersionMatch", "continue", "watch",
     "labelSelector", "fieldSelector", "timeout", "allowWatchBookmarks", "sendInitialEvents", "follow",
     "propagationPolicy", "dryRun", "fieldManager", "x"]
)
_SELECTORS = st.sampled_from(
    ["a=b", "a in (b,c)", "!a", "a!=", "=", "(((", "metadata.name=", "metadata.name=x", "spec.nodeName=edge-1",
     "a=b,", ",", "a notin ()", "x=" + "y" * 70, "status.phase==Running", "a==b==c", "%", "\x00"]
)


def _query_value(key: str) -> st.SearchStrategy[str]:
    if key in ("labelSelector", "fieldSelector"):
        return st.one_of(_SELECTORS, st.text(max_size=20))
    if key == "timeout":
        return st.sampled_from(["1s", "32s", "-5s", "0", "1h1h1h", "9999999999h", "1e9s", "s", "", ".s", "1..5s"])
    return st.one_of(_HUGE, st.text(max_size=10))


def _pct(text: str) -> str:
    """Percent-encode what cannot go raw into a request line (space, control, non-ASCII)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in " #?\r\n" or code < 0x21 or code == 0x7F:
            out.append(f"%{code:02X}")
        elif code > 0x7E:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        else:
            out.append(ch)
    return "".join(out)


@st.composite
def _queries(draw: Any) -> str:
    pairs = draw(st.lists(_QUERY_KEYS.flatmap(lambda k: st.tuples(st.just(k), _query_value(k))), max_size=5))
    if draw(st.booleans()) and pairs:
        pairs.append(pairs[0])  # a repeated parameter
    return "&".join(f"{_pct(k)}={_pct(v)}" for k, v in pairs)


@st.composite
def _resource_paths(draw: Any, hostile: bool = False) -> str:
    segment = _HOSTILE_SEGMENTS if hostile else _SEGMENT
    prefix = draw(st.sampled_from(["/api/v1", "/apis/apps/v1", "/apis/coordination.k8s.io/v1", "/api/v1/watch"]))
    namespaced = draw(st.booleans())
    parts = [prefix]
    if namespaced:
        parts += ["namespaces", draw(st.one_of(segment, _NORMAL_SEGMENTS))]
    parts.append(draw(_RESOURCES))
    if draw(st.booleans()):
        parts.append(draw(st.one_of(segment, _NORMAL_SEGMENTS)))
        if draw(st.integers(0, 3)) == 0:
            parts.append(draw(st.sampled_from(["status", "log", "exec", "proxy", "token", "eviction", "..", "%2e%2e"])))
    if hostile:
        # at least one hostile segment somewhere, in any position
        index = draw(st.integers(1, len(parts)))
        parts.insert(index, draw(_HOSTILE_SEGMENTS))
    return "/".join(_pct(p) if not p.startswith("/") else p for p in parts)


_PATHS = st.one_of(
    _resource_paths(),
    st.sampled_from(["/", "/api", "/apis", "/version", "/healthz", "/api/v1", "/apis/apps/v1", "/metrics",
                     "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/api/v1/../../../", "//api//v1//pods",
                     "*", "http://evil/api/v1/pods", "/api/v1/namespaces/default/pods/p/../../../../x"]),
    st.lists(_SEGMENT, max_size=6).map(lambda segs: "/" + "/".join(_pct(s) for s in segs)),
)
_METHODS = st.sampled_from(
    [b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT", b"PROPFIND",
     b"get", b"G\xffT", b"GET\x00", b"", b"X" * 40]
)
_AGENTS = st.sampled_from(
    [b"kubelet/v1.31.0 (linux/amd64)", b"kube-proxy/v1.31", b"../../etc", b"\xff\xfe", b"", b"coredns", b"a" * 500,
     b"kubelet\x00/x", b"Kubelet/UPPER", b"%2e%2e/x", b"/"]
)
_ACCEPTS = st.sampled_from(
    [b"application/json", b"application/vnd.kubernetes.protobuf, application/json", b"application/vnd.kubernetes.protobuf",
     b"application/json;as=Table;v=v1;g=meta.k8s.io", b"*/*", b"text/html", b"\xff", b""]
)
_HEADER_NAMES = st.sampled_from(
    [b"x-a", b"authorization", b"content-type", b"connection", b"upgrade", b"te", b"transfer-encoding",
     b"expect", b"host", b"x-\xff", b"content-length", b"impersonate-user", b"accept-encoding"]
)
_HEADER_VALUES = st.one_of(
    st.sampled_from([b"Bearer x", b"Bearer", b"chunked", b"100-continue", b"close", b"upgrade", b"websocket",
                     b"\xff\xfe", b"-1", b"99999999999999999999", b"application/json-patch+json",
                     b"application/merge-patch+json", b"gzip"]),
    st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
_BODIES = st.one_of(
    st.sampled_from([b"", b"{}", b"[]", b"null", b'{"metadata":{"name":"../../x","namespace":"..","resourceVersion":"-1"}}',
                     b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","namespace":"default"}}',
                     b'[{"op":"replace","path":"/metadata/labels","value":{"a":"b"}}]', b"\xff\xfe", b'{"a":',
                     b'{"spec":{"expirationSeconds":99999999999999999999}}', b"k8s\x00\xff"]),
    st.binary(max_size=40),
)


@st.composite
def requests(draw: Any, path_strategy: Any = _PATHS, methods: Any = _METHODS) -> bytes:
    """One raw HTTP/1.1 request."""
    method = draw(methods)
    path = draw(path_strategy)
    query = draw(st.one_of(st.just(""), _queries()))
    target = path.encode("utf-8", "surrogatepass") + (b"?" + query.encode("utf-8", "surrogatepass") if query else b"")
    if draw(st.integers(0, 9)) == 0:  # raw invalid UTF-8 in the target
        target += b"\xff\xfe%ff"
    headers = [b"Host: 127.0.0.1:10261", b"User-Agent: " + draw(_AGENTS)]
    accept = draw(_ACCEPTS)
    if accept:
        headers.append(b"Accept: " + accept)
    for name, value in draw(st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=4)):
        if name in (b"content-length", b"transfer-encoding") and draw(st.booleans()):
            continue  # mostly keep the framing sane; the other half frames it badly
        headers.append(name + b": " + value)
    body = draw(_BODIES) if method in (b"POST", b"PUT", b"PATCH") or draw(st.integers(0, 5)) == 0 else b""
    if body:
        headers.append(b"Content-Length: %d" % len(body))
    return method + b" " + target + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


#: Segments that, percent-decoded, are a traversal (or hold one) wherever they stand.
_TRAVERSALS = st.sampled_from(
    ["..", ".", "%2e%2e", "%2E%2E", ".%2e", "%2e", "..%2f", "..%2F..%2Fetc", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
     "a%2f..%2fb", "..%2f..%2f..%2froot", "%2f..", "..%00", "%00.."]
)


@st.composite
def _traversal_targets(draw: Any) -> str:
    """A path, resource or not, with a traversal in a random segment."""
    base = draw(st.sampled_from([
        ["api", "v1", "namespaces", "default", "pods", "p"],
        ["api", "v1", "nodes", "edge-1", "status"],
        ["apis", "coordination.k8s.io", "v1", "namespaces", "kube-node-lease", "leases", "edge-1"],
        ["api", "v1", "watch", "namespaces", "default", "configmaps"],
        ["api", "v1", "namespaces", "default", "pods"],
        ["version"], ["apis", "apps", "v1"], ["healthz"],
    ]))
    index = draw(st.integers(0, len(base)))
    if draw(st.booleans()) and base:
        base = base[:]
        base[min(index, len(base) - 1)] = draw(_TRAVERSALS)
    else:
        base = base[:index] + [draw(_TRAVERSALS)] + base[index:]
    return "/" + "/".join(base)


@st.composite
def _absurd_lists(draw: Any) -> str:
    path = draw(st.sampled_from(["/api/v1/namespaces/default/pods", "/api/v1/pods", "/api/v1/nodes",
                                 "/api/v1/namespaces/default/pods/p", "/apis/coordination.k8s.io/v1/leases"]))
    keys = draw(st.lists(st.sampled_from(["limit", "timeoutSeconds", "resourceVersion", "timeout", "watch",
                                          "continue", "resourceVersionMatch"]), min_size=1, max_size=4))
    return path + "?" + "&".join(f"{k}={_pct(draw(_HUGE if k != 'timeout' else _query_value(k)))}" for k in keys)


@st.composite
def _oversized(draw: Any) -> tuple[bytes, int]:
    """A request whose line or head is over the site's limits, and the code it must get."""
    kind = draw(st.sampled_from(["line", "header", "headers", "count", "length", "chunked"]))
    filler = draw(st.sampled_from([b"a", b"\xff", b"%2e", b"\x00"]))
    if kind == "length":
        size = draw(st.sampled_from([3 * 1024 * 1024 + 1, 10**12, 10**30]))
        return b"POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n{" % size, 413
    if kind == "chunked":
        chunk = b"%x\r\n" % (1024 * 1024) + filler * (1024 * 1024) + b"\r\n"
        return (b"POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunk * 4), 413
    if kind == "line":
        target = b"/api/v1/pods?x=" + filler * draw(st.integers(33 * 1024, 40 * 1024))
        return b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414
    if kind == "header":
        value = filler.replace(b"\x00", b"z") * draw(st.integers(65 * 1024, 70 * 1024))
        return b"GET /api/v1/pods HTTP/1.1\r\nHost: h\r\nX-Big: " + value + b"\r\n\r\n", 431
    if kind == "headers":
        line = b"X-H: " + b"v" * 1000 + b"\r\n"
        return b"GET /api/v1/pods HTTP/1.1\r\nHost: h\r\n" + line * 70 + b"\r\n", 431
    return b"GET /api/v1/pods HTTP/1.1\r\nHost: h\r\n" + b"X-N: 1\r\n" * draw(st.integers(101, 150)) + b"\r\n", 431


class OfflineFuzzTests(SynchronousTestCase):
    """Fuzzed requests answered by the offline path (no healthy backend)."""

    def setUp(self) -> None:
        self.harness = _Harness(self, online=False)

    @FUZZ_SETTINGS
    @given(requests())
    def test_any_request_gets_a_status_never_a_500(self, raw: bytes) -> None:
        self.harness.check(self, raw, self.harness.send(raw))

    @FUZZ_SETTINGS
    @given(st.one_of(requests(_traversal_targets()), requests(_absurd_lists(), st.sampled_from([b"GET", b"HEAD"]))))
    def test_traversal_and_absurd_list_options(self, raw: bytes) -> None:
        exchange = self.harness.send(raw)
        target = raw.split(b" ", 2)[1] if raw.count(b" ") >= 2 else b""
        traversal = b"?" not in target.split(b"/", 1)[0] and any(
            t in target.lower() for t in (b"/../", b"/./", b"%2e", b"/..", b"/.")
        )
        self.harness.check(self, raw, exchange, strict_4xx=traversal and _is_traversal(target))


class OnlineFuzzTests(SynchronousTestCase):
    """Fuzzed requests with a healthy (fake) upstream behind the remote proxy."""

    def setUp(self) -> None:
        self.harness = _Harness(self, online=True)

    @FUZZ_SETTINGS
    @given(requests())
    def test_any_request_gets_a_status_never_a_500(self, raw: bytes) -> None:
        self.harness.check(self, raw, self.harness.send(raw))

    @FUZZ_SETTINGS
    @given(st.one_of(requests(_traversal_targets()), requests(_absurd_lists(), st.sampled_from([b"GET", b"HEAD"]))))
    def test_traversal_never_reaches_the_cloud(self, raw: bytes) -> None:
        before = self.harness.agent.requests
        exchange = self.harness.send(raw)
        target = raw.split(b" ", 2)[1] if raw.count(b" ") >= 2 else b""
        strict = _is_traversal(target)
        self.harness.check(self, raw, exchange, strict_4xx=strict)
        if strict:
            self.assertEqual(self.harness.agent.requests, before, raw[:200])


class OversizedHeadTests(SynchronousTestCase):
    """Heads and bodies over the limits get 414/431/413 with a Status, whatever bytes fill them."""

    def setUp(self) -> None:
        self.harnesses = {online: _Harness(self, online=online) for online in (False, True)}

    @settings(max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(_oversized(), st.booleans())
    def test_oversized_heads_and_bodies_get_414_431_or_413(self, case: tuple[bytes, int], online: bool) -> None:
        raw, code = case
        harness = self.harnesses[online]
        exchange = harness.send(raw)
        self.assertEqual(exchange.code, code, exchange.output[:200])
        harness.check(self, raw[:200], exchange)


def _is_traversal(target: bytes) -> bool:
    """Whether the percent-decoded path of ``target`` has a ``.`` or ``..`` segment."""
    path = target.split(b"?", 1)[0]
    segments = unquote_to_bytes(path).split(b"/")
    return any(s in (b".", b"..") for s in segments)


def _awaits_body(raw: bytes) -> bool:
    """Whether the head of ``raw`` frames a body that ``raw`` does not (wholly) hold."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [line.lower() for line in head.split(b"\r\n")[1:]]
    for line in lines:
        name, _, value = line.partition(b":")
        value = value.strip()
        if name == b"transfer-encoding" and value == b"chunked":
            return not body.endswith(b"0\r\n\r\n")
        if name == b"content-length" and value.isdigit() and int(value) > len(body):
            return True
    return False
