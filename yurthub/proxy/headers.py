"""Header rules shared by the relay and the upgrade splicer (RFC 9110 section 7.6.1).

Hop-by-hop headers (the fixed set plus every name listed in ``Connection``) are dropped when
a message crosses the proxy; every other header is kept with all its values, in order.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

#: Connection-specific headers never forwarded (the fixed list of RFC 9110 and RFC 7230).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


_NO_TOKENS: frozenset[bytes] = frozenset()

#: Each field name seen, as `Headers` keys it (its canonical form); bounded, since
#: clients choose names.
_KEYS: dict[bytes, bytes] = {}
_MAX_KEYS = 1000


def _key_of(name: bytes) -> bytes:
    """The key `Headers` files ``name`` under, learnt through its public methods."""
    probe = Headers()
    probe.addRawHeader(name, b"")
    key: bytes = next(iter(probe.getAllRawHeaders()))[0]
    if len(_KEYS) < _MAX_KEYS:
        _KEYS[name] = key
    return key


def _fields_reach_raw_headers() -> bool:
    """Whether this Twisted's `Headers` keeps its fields in ``_rawHeaders`` as
    ``{key: [values]}``, so `headers_from` can fill it directly (checked once)."""
    probe = Headers()
    probe.addRawHeader(b"x-probe", b"1")
    raw = getattr(probe, "_rawHeaders", None)
    return isinstance(raw, dict) and raw == {_key_of(b"x-probe"): [b"1"]}


_DIRECT = _fields_reach_raw_headers()


def headers_from(fields: Iterable[tuple[bytes, bytes]]) -> Headers:
    """`Headers` holding ``fields`` in order, as llhttp parsed them: names are tokens
    and values hold no line breaks (llhttp refuses a message otherwise), so the
    per-field name encoding and value clean-up of ``addRawHeader`` (twenty calls per
    proxied request) is done once per distinct name instead."""
    headers = Headers()
    if not _DIRECT:
        for name, value in fields:
            headers.addRawHeader(name, value)
        return headers
    raw = headers._rawHeaders
    keys = _KEYS
    for name, value in fields:
        key = keys.get(name)
        if key is None:
            key = _key_of(name)
        values = raw.get(key)
        if values is None:
            raw[key] = [value]
        else:
            values.append(value)
    return headers


def field(headers: Headers, name: bytes) -> list[bytes] | None:
    """``headers.getRawHeaders(name)`` for a bytes ``name``, read by key: the proxy path
    asks a dozen times per request, and each ask encodes the name again."""
    if _DIRECT:
        return headers._rawHeaders.get(_KEYS.get(name) or _key_of(name)) or None  # type: ignore[return-value]
    return headers.getRawHeaders(name)  # type: ignore[return-value]


def set_field(headers: Headers, name: bytes, value: bytes) -> None:
    """``headers.setRawHeaders(name, [value])`` for a bytes ``value`` holding no line
    break (yurthub's own values), set by key."""
    if _DIRECT:
        headers._rawHeaders[_KEYS.get(name) or _key_of(name)] = [value]
    else:
        headers.setRawHeaders(name, [value])


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """The lower-cased header names listed in ``Connection`` (they are hop-by-hop too)."""
    values = field(headers, b"connection")
    if not values:
        return _NO_TOKENS
    return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())


def strip_hop_by_hop(headers: Headers, *, also_drop: frozenset[bytes] = frozenset()) -> Headers:
    """Remove hop-by-hop fields and ``also_drop`` from ``headers`` in place; return it.

    In place because this runs for every proxied request and response: the message is
    the proxy's own by then, and a copy would cost a header-by-header rebuild.
    """
    listed = connection_tokens(headers)
    if _DIRECT and not listed:
        # The usual case (no Connection header): drop the fixed names by their keys.
        raw = headers._rawHeaders
        keys = _hop_keys(also_drop)
        if not keys.isdisjoint(raw):  # usually there is none: one check, no new set
            for key in [key for key in raw if key in keys]:
                del raw[key]
        return headers
    drop = HOP_BY_HOP | listed | also_drop
    doomed = [name for name, _ in headers.getAllRawHeaders() if name.lower() in drop]
    for name in doomed:
        headers.removeHeader(name)
    return headers


_HOP_KEYS: dict[frozenset[bytes], frozenset[bytes]] = {}


def _hop_keys(also_drop: frozenset[bytes]) -> frozenset[bytes]:
    """The `Headers` keys of the hop-by-hop names plus ``also_drop`` (a caller's constant)."""
    keys = _HOP_KEYS.get(also_drop)
    if keys is None:
        keys = frozenset(_KEYS.get(name) or _key_of(name) for name in HOP_BY_HOP | also_drop)
        if len(_HOP_KEYS) < 16:
            _HOP_KEYS[also_drop] = keys
    return keys


def has_bearer_token(headers: Headers) -> bool:
    """True if the client authenticates itself with ``Authorization: Bearer ...``."""
    values = field(headers, b"authorization")
    return values is not None and any(v[:7].lower() == b"bearer " for v in values)


def is_upgrade(headers: Headers) -> bool:
    """True for a protocol-upgrade request (``Connection: Upgrade`` plus ``Upgrade``)."""
    return b"upgrade" in connection_tokens(headers) and field(headers, b"upgrade") is not None


def request_target(request: IRequest) -> bytes:
    """The origin-form target (path and query) of a request, also for absolute-form URIs."""
    uri: bytes = request.uri  # type: ignore[attr-defined]
    if uri.startswith(b"/"):
        return uri
    scheme_end = uri.find(b"://")
    if scheme_end != -1:
        path_start = uri.find(b"/", scheme_end + 3)
        return uri[path_start:] if path_start != -1 else b"/"
    return b"/" + uri


def presents_node(request: IRequest) -> bool:
    """Whether a request goes up with the node's client certificate: only one without a
    bearer token that came in on the plain loopback listener (node components such as
    kubelet). On the HTTPS listener, the one pods reach, a request without a token goes up
    without the certificate, i.e. anonymous: a pod must never be taken for the node."""
    return not has_bearer_token(request.requestHeaders) and not request.isSecure()
