"""Kubernetes ``Status`` error bodies, the way kube-apiserver writes them.

Every error yurthub itself produces (bad request, no backend, deadline passed, too many
requests) goes out as a ``v1 Status`` with the HTTP code in ``code`` and the matching
``reason``, so client-go and kubectl report it the way they report the cloud's own errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure
from twisted.web.server import Request

#: HTTP code -> Kubernetes StatusReason, for the codes yurthub answers itself.
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    414: "RequestURITooLong",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    431: "RequestHeaderFieldsTooLarge",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_body(code: int, message: str, reason: str | None = None, details: dict[str, Any] | None = None) -> bytes:
    """The JSON bytes of a failure ``Status`` with this code, message and reason."""
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        status["details"] = details
    return json.dumps(status, separators=(",", ":")).encode()


PROTOBUF = b"application/vnd.kubernetes.protobuf"


def wants_protobuf(accept: bytes | None) -> bool:
    """True when the client's ``Accept`` prefers Kubernetes protobuf to JSON (it lists
    protobuf before any JSON or wildcard type); JSON otherwise, and by default."""
    for part in (accept or b"").split(b","):
        media = part.split(b";", 1)[0].strip().lower()
        if media == PROTOBUF:
            return True
        if media in (b"application/json", b"*/*", b"application/*"):
            return False
    return False


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def status_protobuf(code: int, message: str, reason: str | None = None) -> bytes:
    """A failure ``Status`` in Kubernetes' protobuf envelope (``k8s\\0`` + runtime.Unknown
    holding apiVersion v1, kind Status and the meta.v1.Status message), as kube-apiserver
    answers a client that asked for protobuf."""
    status = (
        _bytes_field(1, b"")  # metadata: an empty ListMeta
        + _bytes_field(2, b"Failure")
        + _bytes_field(3, message.encode())
        + _bytes_field(4, (reason or REASONS.get(code, "Unknown")).encode())
        + _varint(6 << 3) + _varint(code)
    )
    type_meta = _bytes_field(1, b"v1") + _bytes_field(2, b"Status")
    return b"k8s\x00" + _bytes_field(1, type_meta) + _bytes_field(2, status)


def write_status(request: Request, code: int, message: str, reason: str | None = None) -> bytes:
    """Set the response code and headers for a ``Status`` and return the body to write.

    The caller writes the returned bytes (a resource returns them from ``render``), so the
    same helper serves synchronous and asynchronous answers.
    """
    if wants_protobuf(request.getHeader(b"accept")):
        body, content_type = status_protobuf(code, message, reason), PROTOBUF
    else:
        body, content_type = status_body(code, message, reason), b"application/json"
    request.setResponseCode(code)
    request.responseHeaders.setRawHeaders(b"content-type", [content_type])
    request.responseHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
    request.responseHeaders.removeHeader(b"transfer-encoding")
    return body


def finish_with_status(request: Request, code: int, message: str, reason: str | None = None) -> None:
    """Answer an asynchronous request with a ``Status``, unless the client is gone or
    response headers have already been sent (then the connection is aborted instead, so a
    client never mistakes a cut-off answer for a whole one)."""
    if getattr(request, "_disconnected", False) or request.finished:
        return
    if request.startedWriting:
        abort_client(request)
        return
    request.write(write_status(request, code, message, reason))
    request.finish()


def abort_client(request: Request) -> None:
    """Drop the client's connection at once (used when a body cannot be completed)."""
    channel = request.channel
    abort_transport(getattr(channel, "transport", None) if channel is not None else None)


def abort_transport(transport: Any) -> None:
    """Drop a connection at once without flushing, as a dying process would; transports
    that cannot abort are closed, and ``None`` (already gone) is ignored."""
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


def when_ended(request: Any, finished: Callable[[], object], lost: Callable[[Failure], object]) -> None:
    """Call ``finished()`` once ``request`` has been answered whole, or ``lost(reason)``
    if its connection goes first. A `yurthub.proxy.http11.LeanRequest` keeps the pair in
    its ``end_hooks`` (a Deferred per request and per listener cost more than the rest of
    this bookkeeping); any other request gets them on its ``notifyFinish`` Deferred."""
    hooks = getattr(request, "end_hooks", None)
    if hooks is not None:
        hooks.append((finished, lost))
        return
    request.notifyFinish().addCallbacks(lambda _: finished(), lost)

