"""The local proxy: answers from the cache while no cloud backend is healthy.

What each request gets offline (DESIGN.md, "Offline"):

- get, list: 200 from the cache, label and field selectors applied here; 404 if never
  cached; a kubelet pod list that would be empty is a 404, so kubelet never kills its
  pods; a list by ``metadata.name`` of an object never cached is an empty list;
- watch: 200 at once, held open without events until ``timeoutSeconds`` or until the cloud
  is healthy again (then closed, so the client re-lists and re-watches online);
- create: 201 echoing the object (events are kept in the cache);
- update, patch (merge, JSON and strategic merge): applied to the cached copy, stored,
  returned; never replayed to the cloud;
- delete, deletecollection: 403;
- service-account token requests (JSON or protobuf bodies): 201 with a token yurthub signs;
- discovery (``/version``, ``/api``, ``/apis``, ...): the documents cached online;
- ``as=Table`` (kubectl get): a Table built from the cached objects.

List bodies are spliced from the cached bytes of each object, never re-encoded.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import uuid
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.server import Request

from yurthub.cache.keys import CacheKey, InvalidKey
from yurthub.cache.manager import CachedObject, CacheManager, discovery_document_name, gvr_of
from yurthub.filters.chain import FilterChain
from yurthub.kube.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from yurthub.kube.selectors import FieldSelector, LabelSelector, SelectorError, field_paths
from yurthub.kube.tables import build_table
from yurthub.proxy.status import finish_with_status, status_body
from yurthub.requestinfo import RequestInfo

_log = Logger()

#: Longest offline watch when the client gives no timeoutSeconds (kube-apiserver picks
#: 30 to 60 minutes; the client re-watches either way).
DEFAULT_WATCH_SECONDS = 1800

#: Longest life of a token yurthub signs offline.
MAX_TOKEN_SECONDS = 3600

#: Largest request body handled locally.
MAX_LOCAL_BODY = 3 * 1024 * 1024

def _json_answer(request: Request, code: int, body: bytes, content_type: bytes = b"application/json") -> None:
    if getattr(request, "_disconnected", False) or request.finished:
        return
    request.setResponseCode(code)
    request.responseHeaders.setRawHeaders(b"content-type", [content_type])
    request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
    request.write(body)
    request.finish()


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _wants_table(request: Request) -> bool:
    accept = request.getHeader(b"accept") or b""
    return b"as=table" in accept.lower()


def _query(info: RequestInfo, name: str) -> str | None:
    return info.query_value(name)



def list_body(head: bytes, items: list[bytes]) -> bytes:
    """A list answer: ``head`` (the list's JSON object without items) with ``items`` (each
    an encoded object) spliced in, copied once. A 10,000-pod list is ~29 MB: joining the
    items and then adding head and tail copied it three times."""
    parts = [b","] * (2 * len(items) + 1) if items else [b"", b""]
    parts[0] = head[:-1] + b',"items":['
    parts[1:-1:2] = items
    parts[-1] = b"]}"
    return b"".join(parts)

class TokenSigner:
    """Signs short-lived service-account tokens (HS256 JWTs) with a key of this process.

    Nothing in the cloud can verify them; offline, nothing on the node needs to: they let a
    pod's client keep the token it must present, until the cloud issues a real one.
    """

    def __init__(self, clock: IReactorTime, key: bytes | None = None) -> None:
        self._clock = clock
        self._key = key or os.urandom(32)

    def sign(self, namespace: str, name: str, audiences: list[str], seconds: int) -> tuple[str, str]:
        """A token and its expiry timestamp (RFC 3339)."""
        now = int(self._clock.seconds())
        seconds = max(60, min(seconds or MAX_TOKEN_SECONDS, MAX_TOKEN_SECONDS))
        claims = {
            "iss": "yurthub",
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "aud": audiences,
            "iat": now,
            "nbf": now,
            "exp": now + seconds,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name}},
        }
        header = _b64(_encode({"alg": "HS256", "typ": "JWT"}))
        payload = _b64(_encode(claims))
        signature = _b64(hmac.new(self._key, header + b"." + payload, hashlib.sha256).digest())
        expiry = datetime.datetime.fromtimestamp(now + seconds, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (header + b"." + payload + b"." + signature).decode(), expiry


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


#: Offline list answers kept for reuse while the cache is unchanged: up to this size they
#: stay (this much in all); bigger ones (a 10,000-pod list is 28 MB) only while they are
#: asked for again within BIG_ANSWER_IDLE seconds, so a burst of identical big lists is
#: served from one copy and the memory is handed back once it is over.
MEMO_MAX_ANSWER = 2 * 1024 * 1024
MEMO_MAX_BYTES = 8 * 1024 * 1024
BIG_ANSWER_IDLE = 10.0


class LocalProxy:
    """Answers requests from the cache; the `ProxyRoot`'s answer when the cloud is away."""

    def __init__(self, cache: CacheManager, clock: IReactorTime, signer: TokenSigner | None = None) -> None:
        self.cache = cache
        self._clock = clock
        self._signer = signer or TokenSigner(clock)
        self._watches: dict[Request, IDelayedCall] = {}
        # Encoded list answers by what they answer, valid while the store's generation
        # holds: a node's components repeat the same few lists, and building one means
        # decoding every object in it.
        self._lists: dict[tuple[Any, ...], tuple[int, int, bytes]] = {}
        self._memo_bytes = 0
        self._big: dict[tuple[Any, ...], tuple[int, int, bytes]] = {}
        self._big_used: dict[tuple[Any, ...], float] = {}
        self._big_expiry: IDelayedCall | None = None
        #: The response filters, applied to cached answers as to live ones (the cache
        #: holds what each component was given; the filters run again since what they
        #: depend on, such as the node's pool, may have changed since).
        self.filters: FilterChain | None = None

    # --- entry point -----------------------------------------------------------------

    def answer(self, request: Request, info: RequestInfo, reason: str) -> None:
        """Answer ``request`` locally (``reason`` says why the cloud did not)."""
        try:
            self._dispatch(request, info)
        except (InvalidKey, SelectorError, PatchError) as e:
            finish_with_status(request, 400, str(e))

    def answer_if_cached(self, request: Request, info: RequestInfo) -> bool:
        """Answer a get, list or discovery read from the cache when the cache holds what it
        asks for (the object; any object of the list's resource and namespace; the
        document); False, answering nothing, otherwise. Used when the cloud is reachable but
        too slow for the request's own deadline."""
        if info.verb not in ("get", "list"):
            return False
        if not info.is_resource_request:
            name = discovery_document_name(info.path)
            if not name or self.cache.store.get_document(name) is None:
                return False
        elif info.verb == "get":
            if self._find(info) is None:
                return False
        elif not self.cache.objects(info, info.namespace or None):
            return False
        self.answer(request, info, "the cloud did not answer in time")
        return True

    def _dispatch(self, request: Request, info: RequestInfo) -> None:
        if not info.is_resource_request:
            self._discovery(request, info)
            return
        if info.resource == "serviceaccounts" and info.subresource == "token" and info.verb == "create":
            self._token(request, info)
            return
        handler = {
            "get": self._get,
            "list": self._list,
            "watch": self._watch,
            "create": self._create,
            "update": self._update,
            "patch": self._patch,
        }.get(info.verb)
        if handler is None:
            finish_with_status(request, 403, f"{info.verb} is not supported while the cloud is unreachable", "Forbidden")
            return
        if info.subresource not in ("", "status"):
            finish_with_status(request, 503, f"{info.resource}/{info.subresource} needs the cloud, which is unreachable")
            return
        handler(request, info)

    # --- reads -----------------------------------------------------------------------

    def _discovery(self, request: Request, info: RequestInfo) -> None:
        name = discovery_document_name(info.path)
        document = self.cache.store.get_document(name) if name and info.verb == "get" else None
        if document is None:
            finish_with_status(request, 503, f"{info.path} needs the cloud, which is unreachable")
            return
        _json_answer(request, 200, document)

    def _find(self, info: RequestInfo) -> CachedObject | None:
        return self.cache.object(info)

    def _not_found(self, request: Request, info: RequestInfo) -> None:
        what = f"{info.resource}.{info.api_group}" if info.api_group else info.resource
        finish_with_status(request, 404, f'{what} "{info.name}" not found', "NotFound")

    def _get(self, request: Request, info: RequestInfo) -> None:
        found = self._find(info)
        stage = self.filters.for_request(info) if self.filters is not None else None
        obj = None
        if found is not None and stage is not None:
            obj = stage.object(found.obj, info, fresh=False)
            if obj is None:
                found = None
        if found is None:
            self._not_found(request, info)
            return
        if _wants_table(request):
            _json_answer(request, 200, _encode(self._table(request, info, [obj if obj is not None else found.obj])))
            return
        _json_answer(request, 200, found.data if obj is None else _encode(obj))

    def _list(self, request: Request, info: RequestInfo) -> None:
        if _wants_table(request):
            self._answer_list(request, info, table=True)
            return
        memo_key = (info.component, info.api_group, info.api_version, info.resource, info.namespace,
                    info.label_selector, info.field_selector)
        generation = self.cache.store.generation
        memo = self._lists.get(memo_key) or self._big.get(memo_key)
        if memo is not None and memo[0] == generation:
            if memo_key in self._big_used:
                self._big_used[memo_key] = self._clock.seconds()
            _json_answer(request, memo[1], memo[2])
            return
        code, body = self._answer_list(request, info, table=False)
        if body is not None:
            if len(body) > MEMO_MAX_ANSWER:
                self._keep_big(memo_key, (generation, code, body))
                return
            if len(self._lists) > 256 or self._memo_bytes + len(body) > MEMO_MAX_BYTES:
                self._lists.clear()
                self._memo_bytes = 0
            old = self._lists.get(memo_key)
            if old is not None:
                self._memo_bytes -= len(old[2])
            self._lists[memo_key] = (generation, code, body)
            self._memo_bytes += len(body)

    def _keep_big(self, key: tuple[Any, ...], memo: tuple[int, int, bytes]) -> None:
        self._big[key] = memo
        self._big_used[key] = self._clock.seconds()
        if self._big_expiry is None:
            self._big_expiry = self._clock.callLater(BIG_ANSWER_IDLE, self._expire_big)

    def _expire_big(self) -> None:
        """Drop big answers not asked for within BIG_ANSWER_IDLE seconds."""
        self._big_expiry = None
        now = self._clock.seconds()
        for key, used in list(self._big_used.items()):
            if now - used >= BIG_ANSWER_IDLE:
                del self._big_used[key]
                del self._big[key]
        if self._big:
            wait = BIG_ANSWER_IDLE - (now - min(self._big_used.values()))
            self._big_expiry = self._clock.callLater(max(wait, 0.1), self._expire_big)

    def close(self) -> None:
        """Forget every kept answer and stop the expiry timer (at shutdown)."""
        if self._big_expiry is not None and self._big_expiry.active():
            self._big_expiry.cancel()
        self._big_expiry = None
        self._big.clear()
        self._big_used.clear()
        self._lists.clear()

    def _answer_list(self, request: Request, info: RequestInfo, *, table: bool) -> tuple[int, bytes | None]:
        """Answer a list from the cache; returns the code and, for JSON answers, the body."""
        everything = self.cache.objects(info, info.namespace or None)
        stage = self.filters.for_request(info) if self.filters is not None else None
        if stage is not None:
            everything = [
                CachedObject(o.key, _encode(kept))
                for o in everything
                if (kept := stage.object(o.obj, info, fresh=False)) is not None
            ]
        labels = LabelSelector.parse(info.label_selector or None)
        fields = FieldSelector.parse(info.field_selector or None, field_paths(info.api_group, info.resource))
        if labels.empty and fields.empty:
            chosen = everything
        else:
            chosen = [o for o in everything if labels.matches(o.obj.get("metadata", {}).get("labels")) and fields.matches(o.obj)]
        by_name = "metadata.name" in (info.field_selector or "")
        if not chosen and not by_name:
            if not everything or (info.component == "kubelet" and info.resource == "pods"):
                # Never cached; or kubelet would take an empty pod list as "delete all".
                message = f"no cached {info.resource} to answer from while the cloud is unreachable"
                body = status_body(404, message, "NotFound")
                _json_answer(request, 404, body)
                return 404, body
        if table:
            _json_answer(request, 200, _encode(self._table(request, info, [o.obj for o in chosen])))
            return 200, None
        rv = max((_int(o.resource_version) for o in chosen), default=0)
        rv = max(rv, _int(self.cache.bookmarks.get((info.component, gvr_of(info), info.namespace), "")))
        kind = _list_kind(chosen, info)
        api_version = f"{info.api_group}/{info.api_version}" if info.api_group else info.api_version
        head = _encode({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(rv)}})
        body = list_body(head, [o.data for o in chosen])
        _json_answer(request, 200, body)
        return 200, body

    def _table(self, request: Request, info: RequestInfo, objects: list[dict[str, Any]]) -> dict[str, Any]:
        return build_table(
            info.api_group,
            info.resource,
            objects,
            self._clock.seconds(),
            include_object=info.query_value("includeObject") or "Metadata",
            version=info.api_version,
        )

    def _watch(self, request: Request, info: RequestInfo) -> None:
        request.setResponseCode(200)
        request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        request.write(b"")  # headers now, like kube-apiserver
        seconds = _int(_query(info, "timeoutSeconds") or "") or DEFAULT_WATCH_SECONDS
        timer = self._clock.callLater(seconds, self._end_watch, request)
        self._watches[request] = timer
        request.notifyFinish().addBoth(lambda _: self._forget_watch(request))

    def _end_watch(self, request: Request) -> None:
        self._forget_watch(request)
        if not getattr(request, "_disconnected", False) and not request.finished:
            request.finish()

    def _forget_watch(self, request: Request) -> None:
        timer = self._watches.pop(request, None)
        if timer is not None and timer.active():
            timer.cancel()

    def cloud_is_back(self) -> None:
        """The cloud is healthy again: end every offline watch so clients re-watch there."""
        for request in list(self._watches):
            self._end_watch(request)

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    # --- writes ----------------------------------------------------------------------

    def _body(self, request: Request) -> bytes | None:
        content = request.content
        if content is None:
            return b""
        content.seek(0, 2)
        if content.tell() > MAX_LOCAL_BODY:
            finish_with_status(request, 413, "request body too large to handle while the cloud is unreachable")
            return None
        content.seek(0)
        return content.read()

    def _json_body(self, request: Request) -> dict[str, Any] | None:
        body = self._body(request)
        if body is None:
            return None
        try:
            obj = json.loads(body)
        except ValueError:
            finish_with_status(request, 400, "the request body is not JSON")
            return None
        if not isinstance(obj, dict):
            finish_with_status(request, 400, "the request body is not a JSON object")
            return None
        return obj

    def _create(self, request: Request, info: RequestInfo) -> None:
        obj = self._json_body(request)
        if obj is None:
            return
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            finish_with_status(request, 400, "metadata must be an object")
            return
        if info.namespace:
            meta.setdefault("namespace", info.namespace)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault(
            "creationTimestamp",
            datetime.datetime.fromtimestamp(self._clock.seconds(), tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        data = _encode(obj)
        if self.cache.is_agent(info.component) and info.resource == "events":
            self.cache.store.put(self.cache.key(info.component, gvr_of(info), obj, info.namespace), "0", data)
        _json_answer(request, 201, data)

    def _store_changed(self, info: RequestInfo, found: CachedObject, obj: dict[str, Any]) -> bytes:
        """Keep an offline change: same resourceVersion as the copy it changes, so the
        cloud's next version of the object replaces it."""
        obj.setdefault("metadata", {})["resourceVersion"] = found.resource_version
        data = _encode(obj)
        key = CacheKey(found.key.component, found.key.gvr, found.key.namespace, found.key.name)
        self.cache.store.delete(key)
        self.cache.store.put(key, found.resource_version, data)
        return data

    def _update(self, request: Request, info: RequestInfo) -> None:
        obj = self._json_body(request)
        if obj is None:
            return
        found = self._find(info)
        if found is None:
            self._not_found(request, info)
            return
        if info.subresource == "status":
            merged = dict(found.obj)
            merged["status"] = obj.get("status", {})
            obj = merged
        _json_answer(request, 200, self._store_changed(info, found, obj))

    def _patch(self, request: Request, info: RequestInfo) -> None:
        body = self._body(request)
        if body is None:
            return
        found = self._find(info)
        if found is None:
            self._not_found(request, info)
            return
        kind = (request.getHeader(b"content-type") or b"").split(b";", 1)[0].strip().lower()
        try:
            patch = json.loads(body)
        except ValueError:
            finish_with_status(request, 400, "the patch is not JSON")
            return
        if kind == b"application/json-patch+json":
            patched = json_patch(found.obj, patch)
        elif kind == b"application/merge-patch+json":
            patched = merge_patch(found.obj, patch)
        elif kind == b"application/strategic-merge-patch+json":
            patched = strategic_merge_patch(found.obj, patch)
        else:
            finish_with_status(request, 415, f"patch type {kind.decode('latin-1')!r} is not supported offline")
            return
        if not isinstance(patched, dict):
            finish_with_status(request, 422, "the patch does not leave an object", "Invalid")
            return
        _json_answer(request, 200, self._store_changed(info, found, patched))

    # --- tokens ----------------------------------------------------------------------

    def _token(self, request: Request, info: RequestInfo) -> None:
        body = self._body(request)
        if body is None:
            return
        content_type = (request.getHeader(b"content-type") or b"").lower()
        try:
            if b"protobuf" in content_type:
                audiences, seconds = token_request_from_protobuf(body)
            else:
                spec = (json.loads(body) or {}).get("spec") or {} if body else {}
                audiences = [str(a) for a in spec.get("audiences") or []]
                seconds = int(spec.get("expirationSeconds") or MAX_TOKEN_SECONDS)
        except (ValueError, TypeError, AttributeError) as e:
            finish_with_status(request, 400, f"not a TokenRequest: {e}")
            return
        token, expiry = self._signer.sign(info.namespace, info.name, audiences, seconds)
        answer = {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": info.name, "namespace": info.namespace},
            "spec": {"audiences": audiences, "expirationSeconds": seconds},
            "status": {"token": token, "expirationTimestamp": expiry},
        }
        _json_answer(request, 201, _encode(answer))


def _int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return 0


def _list_kind(objects: list[CachedObject], info: RequestInfo) -> str:
    if objects and objects[0].obj.get("kind"):
        return f"{objects[0].obj['kind']}List"
    return f"{info.resource[:1].upper()}{info.resource[1:]}List"


# --- a minimal protobuf reader for TokenRequest bodies ---------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message (varints and byte strings)."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            out.append((number, data[pos : pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def token_request_from_protobuf(body: bytes) -> tuple[list[str], int]:
    """Audiences and expirationSeconds of a protobuf-encoded ``TokenRequest`` (the
    ``k8s\\0`` envelope around ``runtime.Unknown``, whose ``raw`` holds the message)."""
    if not body.startswith(b"k8s\x00"):
        raise ValueError("not a Kubernetes protobuf body")
    raw = next((v for n, v in _fields(body[4:]) if n == 2 and isinstance(v, bytes)), b"")
    spec = next((v for n, v in _fields(raw) if n == 2 and isinstance(v, bytes)), b"")
    audiences: list[str] = []
    seconds = MAX_TOKEN_SECONDS
    for number, value in _fields(spec):
        if number == 1 and isinstance(value, bytes):
            audiences.append(value.decode("utf-8", "replace"))
        elif number == 4 and isinstance(value, int):
            seconds = value
    return audiences, seconds
