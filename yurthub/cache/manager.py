"""The cache manager: what is cached, how answers become cached objects, and queries.

It decides per request whether the answer is worth keeping (a cache agent's get, list,
watch, create, update or patch of a resource, main object or ``status`` only, never CSRs
or access reviews), asks the cloud for JSON when the client accepts it, and gives the
remote proxy a `ResponseTee` that sees the body as it streams to the client. The tee never
delays the client: whole answers (get, list, create, update, patch) are decoded in a
thread and applied when complete; watch events are applied as each line completes. A
truncated, failed or undecodable answer changes nothing.

Reads for the offline answers go through `objects`, which falls back from the asking
component's own copy to every component's (newest first) so that, say, kubectl on the node
sees what kubelet cached.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Request

from yurthub.cache.keys import GVR, CacheKey, InvalidKey, check_component
from yurthub.cache.store import (
    FilesystemObjectStore,
    ListItems,
    check_document_name,
    peek_resource_version,
)
from yurthub.interfaces import IObjectStore
from yurthub.kube.selectors import FieldSelector, LabelSelector, SelectorError, field_paths
from yurthub.lines import LineBuffer
from yurthub.metrics import ProxyMetrics
from yurthub.proxy.headers import field, set_field
from yurthub.requestinfo import RequestInfo

_log = Logger()

CACHED_VERBS = frozenset({"get", "list", "watch", "create", "update", "patch"})

#: API groups whose objects are never cached (credentials and access decisions).
NEVER_CACHED_GROUPS = frozenset({"authentication.k8s.io", "authorization.k8s.io", "certificates.k8s.io"})

#: Largest whole answer (get/list/...) decoded for the cache; larger ones pass uncached.
MAX_CACHED_BODY = 64 * 1024 * 1024

#: A list answer this large is followed by giving freed memory back to the system.
BIG_ANSWER = 4 * 1024 * 1024

#: Longest watch event line kept while it streams in.
MAX_EVENT_LINE = 16 * 1024 * 1024

T = TypeVar("T")
Runner = Callable[..., "defer.Deferred[Any]"]


def _rv_int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return 0


class CachedObject:
    """One object read back from the cache: its key and bytes, decoded only when asked
    (a list without selectors is spliced from the bytes and never decodes anything)."""

    __slots__ = ("key", "data", "_obj")

    def __init__(self, key: CacheKey, data: bytes) -> None:
        self.key = key
        self.data = data
        self._obj: dict[str, Any] | None = None

    @property
    def obj(self) -> dict[str, Any]:
        if self._obj is None:
            self._obj = _decode(self.data) or {}
        return self._obj

    @property
    def resource_version(self) -> str:
        return _peek_rv(self.data)


def discovery_document_name(path: str) -> str | None:
    """The cache document name for a discovery path (``/apis/apps/v1`` ->
    ``discovery.apis.apps.v1``), or None if the path is not discovery or its segments
    cannot make a document name (a NUL, upper case, ``%``: no such group or version)."""
    path = path.rstrip("/") or "/"
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in ("api", "apis", "version"):
        return None
    if parts[0] == "version" and len(parts) == 1:
        return "discovery.version"
    if (parts[0] == "api" and len(parts) <= 2) or (parts[0] == "apis" and len(parts) <= 3):
        name = "discovery." + ".".join(parts)
        try:
            return check_document_name(name)
        except InvalidKey:
            return None
    return None


def gvr_of(info: RequestInfo) -> GVR:
    """The `GVR` a request addresses (`InvalidKey` if its parts cannot name one)."""
    return GVR(info.api_group, info.api_version, info.resource)


#: How many request infos (and Accept values) the per-request decisions remember.
_MEMO_SIZE = 1024
_ACCEPTS_JSON: dict[bytes, bool] = {}


def accepts_json(accept: bytes | None) -> bool:
    """True if an Accept header admits a plain JSON answer (absent means anything)."""
    if not accept:
        return True
    known = _ACCEPTS_JSON.get(accept)
    if known is None:
        if len(_ACCEPTS_JSON) >= _MEMO_SIZE:
            _ACCEPTS_JSON.clear()
        known = _ACCEPTS_JSON[accept] = _accepts_json(accept)
    return known


def _accepts_json(accept: bytes) -> bool:
    for part in accept.split(b","):
        media = part.split(b";", 1)[0].strip().lower()
        if media in (b"application/json", b"*/*", b"application/*"):
            params = part.lower()
            if b"as=table" not in params and b"as=partialobjectmetadata" not in params:
                return True
    return False


class CacheManager:
    """Keeps the node's copy of what its cache agents read, in an `IObjectStore`."""

    def __init__(
        self,
        store: IObjectStore,
        agents: Iterable[str],
        metrics: ProxyMetrics,
        *,
        run_in_thread: Runner,
        release_memory: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self._release_memory = release_memory
        if isinstance(store, FilesystemObjectStore) and store.release_memory is None:
            # The store packs its objects when idle; the memory that frees goes back too.
            store.release_memory = release_memory
        self.agents = frozenset(agents)
        #: The newest BOOKMARK resourceVersion seen per (component, resource, namespace):
        #: an offline list is at least that new.
        self.bookmarks: dict[tuple[str, GVR, str], str] = {}
        # The resourceVersion of the last list applied per (component, resource, namespace,
        # selectors): the same list at the same version changed nothing, and re-decoding it
        # would cost far more CPU than proxying it.
        self._list_versions: dict[tuple[str, ...], str] = {}
        #: The bytes from the start of such a list up to its version's closing quote, as
        #: they matched that version last time: a repeat starting with them is the same
        #: version, told by one comparison instead of a search of the list's head.
        self._list_heads: dict[tuple[str, ...], bytes] = {}
        self._decoding: set[defer.Deferred[Any]] = set()
        self._cacheable: dict[RequestInfo, bool] = {}
        self._metrics = metrics
        self._run = run_in_thread

    # --- what to cache -------------------------------------------------------------

    def is_agent(self, component: str) -> bool:
        return bool(component) and ("*" in self.agents or component in self.agents)

    def cacheable(self, info: RequestInfo) -> bool:
        """Whether an answer to this request is kept (before content negotiation);
        remembered per request info (a node repeats the same few requests)."""
        known = self._cacheable.get(info)
        if known is None:
            if len(self._cacheable) >= _MEMO_SIZE:
                self._cacheable.clear()
            known = self._cacheable[info] = self._decide_cacheable(info)
        return known

    def _decide_cacheable(self, info: RequestInfo) -> bool:
        if not (info.is_resource_request and info.verb in CACHED_VERBS and self.is_agent(info.component)):
            return False
        if info.subresource not in ("", "status") or info.api_group in NEVER_CACHED_GROUPS:
            return False
        try:
            check_component(info.component)
            gvr_of(info)
        except InvalidKey:
            return False
        return True

    def tee_for(self, info: RequestInfo, request: Request) -> ResponseTee | None:
        """A tee for this request's answer, or None if it is not cached. Asks the cloud for
        JSON when the client accepts JSON (clients decode by Content-Type), so the cache
        always holds JSON; protobuf-only and Table requests pass uncached."""
        if not info.is_resource_request:
            name = discovery_document_name(info.path) if info.verb == "get" else None
            if name is None:
                return None
            # Legacy (unaggregated) discovery in JSON: what can be served offline later.
            request.requestHeaders.setRawHeaders(b"accept", [b"application/json"])
            return DocumentTee(self, info, name)
        if not self.cacheable(info):
            return None
        accept = request.getHeader(b"accept")
        if not accepts_json(accept):
            return None
        if field(request.requestHeaders, b"accept") != [b"application/json"]:
            set_field(request.requestHeaders, b"accept", b"application/json")
        if info.is_watch:
            return WatchTee(self, info)
        return WholeTee(self, info)

    # --- applying answers ----------------------------------------------------------

    def key(self, component: str, gvr: GVR, obj: dict[str, Any], default_namespace: str = "") -> CacheKey:
        meta = obj.get("metadata") or {}
        return CacheKey(component, gvr, meta.get("namespace") or default_namespace, meta.get("name") or "")

    def apply_object(self, info: RequestInfo, obj: dict[str, Any], data: bytes | None = None) -> None:
        """Store one object an answer carried (get, create, update, patch, watch)."""
        if not isinstance(obj, dict) or "metadata" not in obj:
            return
        key = self.key(info.component, gvr_of(info), obj, info.namespace)
        if data is None:
            data = _encode(obj)
        self.store.put(key, str(obj["metadata"].get("resourceVersion", "")), data)

    def _list_id(self, info: RequestInfo) -> tuple[str, ...]:
        return (info.component, info.api_group, info.api_version, info.resource, info.namespace,
                info.label_selector, info.field_selector)

    def list_unchanged(self, info: RequestInfo, body: bytes) -> bool:
        """True if ``body`` is the same list version as the one last applied for it (and
        the store is sound: a degraded store needs the list to repair it)."""
        if self.store.health.degraded:
            return False
        list_id = self._list_id(info)
        known = self._list_versions.get(list_id)
        if not known:
            return False
        head = self._list_heads.get(list_id)
        if head is not None and body.startswith(head):
            return True  # the very bytes up to the version that matched last time
        match = list_head_match(body)
        if match is None or match.group(1).decode("ascii", "replace") != known:
            return False
        if len(self._list_heads) > 10_000:
            self._list_heads.clear()
        self._list_heads[list_id] = body[: match.end()]
        return True

    def apply_list(
        self,
        info: RequestInfo,
        items: Mapping[CacheKey, tuple[str, bytes]],
        list_rv: str,
        covered_keys: frozenset[CacheKey] | None = None,
    ) -> None:
        """Make a list's items (``{key: (resourceVersion, bytes)}``, as `decode_list`
        gives them) the whole set it covers. For a selector list that is the cached
        objects matching the selector: ``covered_keys`` when they were worked out already
        (in a thread, see `WholeTee`), else decided here."""
        covered: Callable[[CacheKey, bytes], bool] | None = None
        if covered_keys is not None:
            covered = lambda key, data: key in covered_keys  # noqa: E731
        else:
            matches = selection(info)
            if matches is not None:
                covered = lambda key, data: matches(data)  # noqa: E731

        self.store.replace(info.component, gvr_of(info), info.namespace or None, items, list_rv, covered)
        if len(self._list_versions) > 10_000:
            self._list_versions.clear()
        list_id = self._list_id(info)
        self._list_versions[list_id] = list_rv
        self._list_heads.pop(list_id, None)

    def forget_versions(self) -> None:
        """The node moved to another cluster, whose resourceVersions do not continue the
        old one's: no cached object, list version or BOOKMARK may keep a new copy out.
        The objects stay and are answered until the new cluster's replace them."""
        self._list_versions.clear()
        self._list_heads.clear()
        self.bookmarks.clear()
        self.store.forget_versions()

    def apply_event(self, info: RequestInfo, event: dict[str, Any], data: bytes | None = None) -> None:
        """Apply one watch event in order (``data``: the object's bytes, when known)."""
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            return
        if kind in ("ADDED", "MODIFIED"):
            self.apply_object(info, obj, data)
        elif kind == "BOOKMARK":
            rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
            self.bookmarks[(info.component, gvr_of(info), info.namespace)] = rv
        elif kind == "DELETED":
            meta = obj.get("metadata") or {}
            self.store.delete(self.key(info.component, gvr_of(info), obj, info.namespace), str(meta.get("resourceVersion", "")) or None)

    def track(self, d: defer.Deferred[Any]) -> None:
        """Remember an answer being decoded until it is applied (see `drain`)."""
        self._decoding.add(d)

        def done(result: Any) -> Any:
            self._decoding.discard(d)
            return result

        d.addBoth(done)

    def drain(self) -> defer.Deferred[Any]:
        """Fires once every answer being decoded now has been applied (at shutdown,
        before the store closes)."""
        return defer.DeferredList(list(self._decoding), consumeErrors=True)

    def count_error(self, what: str) -> None:
        self._metrics.cache_errors.labels(what).inc()

    # --- queries -------------------------------------------------------------------

    def objects(self, info: RequestInfo, namespace: str | None) -> list[CachedObject]:
        """The cached objects a request may read: its component's own copy of the
        resource if it has one, else every component's (newest copy of each object)."""
        gvr = gvr_of(info)
        own = self.store.list(info.component, gvr, namespace) if self.is_agent(info.component) else []
        if own:
            pairs = own
        else:
            newest: dict[tuple[str, str], tuple[int, CacheKey, bytes]] = {}
            for component in self.components():
                for key, data in self.store.list(component, gvr, namespace):
                    obj_id = (key.namespace, key.name)
                    rv = _rv_int(_peek_rv(data))
                    if obj_id not in newest or rv > newest[obj_id][0]:
                        newest[obj_id] = (rv, key, data)
            pairs = [(key, data) for _, key, data in sorted(newest.values(), key=lambda t: (t[1].namespace, t[1].name))]
        return [CachedObject(key, data) for key, data in pairs]

    def object(self, info: RequestInfo) -> CachedObject | None:
        """The cached object a get reads, as `objects` would give it: looked up by its key
        when the asking component holds it (no other object is read, or inflated when
        packed), else found among `objects`."""
        if self.is_agent(info.component):
            try:
                key: CacheKey | None = CacheKey(info.component, gvr_of(info), info.namespace, info.name)
            except InvalidKey:
                key = None
            data = self.store.get(key) if key is not None else None
            if data is not None:
                return CachedObject(key, data)  # type: ignore[arg-type]
        for obj in self.objects(info, info.namespace or None):
            if obj.key.name == info.name:
                return obj
        return None

    def components(self) -> list[str]:
        """Components that have anything cached."""
        return list(self.store.components())


def selection(info: RequestInfo) -> Callable[[bytes], bool] | None:
    """For a selector list, whether an encoded object is one the list covers; None for a
    list of everything (`SelectorError` if a selector does not parse)."""
    labels = LabelSelector.parse(info.label_selector or None)
    fields = FieldSelector.parse(info.field_selector or None, field_paths(info.api_group, info.resource))
    if labels.empty and fields.empty:
        return None

    def matches(data: bytes) -> bool:
        obj = _decode(data)
        return obj is not None and labels.matches(obj.get("metadata", {}).get("labels")) and fields.matches(obj)

    return matches


def decode_list_covering(
    body: list[bytes],
    component: str,
    gvr: GVR,
    namespace: str,
    cached: list[tuple[CacheKey, bytes]],
    matches: Callable[[bytes], bool],
) -> tuple[ListItems, str, frozenset[CacheKey]]:
    """`decode_list`, plus which of the ``cached`` objects a selector list covers: both
    decode every object, so both run in the thread, never on the reactor."""
    items, rv = decode_list(body, component, gvr, namespace)
    return items, rv, frozenset(key for key, data in cached if matches(data))


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _peek_rv(data: bytes) -> str:
    """The resourceVersion of an encoded object, without decoding all of it when it can."""
    peeked = peek_resource_version(data)
    if peeked is not None:
        return peeked
    obj = _decode(data)
    return str((obj or {}).get("metadata", {}).get("resourceVersion", "")) if obj else ""


_LIST_HEAD_RV = re.compile(rb'"metadata"\s*:\s*\{[^{}]*?"resourceVersion"\s*:\s*"([^"]*)"')


def list_head_match(body: bytes) -> re.Match[bytes] | None:
    """Where a list's own resourceVersion is (group 1), read from its head: the first
    2 KiB, before ``items`` (lists put ``metadata`` first); None if it is not there."""
    end = body.find(b'"items"', 0, 2048)
    return _LIST_HEAD_RV.search(body, 0, end if end != -1 else min(len(body), 2048))


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def _after_value(text: str, i: int, closer: str) -> int:
    """Past a value in an object or array: over a ',' (which must lead to another value)
    or up to the ``closer``; the index of what comes next."""
    i = _skip(text, i)
    if text[i : i + 1] == ",":
        i = _skip(text, i + 1)
        if text[i : i + 1] == closer:
            raise ValueError(f"trailing ',' before {closer!r}")
    elif text[i : i + 1] != closer:
        raise ValueError(f"expected ',' or {closer!r}")
    return i


def _walk_list(text: str, on_item: Callable[[Any, str], None], fields: dict[str, Any]) -> None:
    """Fill ``fields`` with the top-level fields of a list document (``items`` itself as
    None) as they are read; each item is handed to ``on_item`` (decoded, raw text) as it
    is read and dropped after, so a huge list never exists as one tree of Python objects."""
    i = _skip(text, 0)
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i = _skip(text, i + 1)
    while text[i : i + 1] != "}":
        name, i = _DECODER.raw_decode(text, i)
        i = _skip(text, i)
        if text[i : i + 1] != ":":
            raise ValueError("expected ':'")
        i = _skip(text, i + 1)
        if name == "items" and text[i : i + 1] == "[":
            i = _skip(text, i + 1)
            while text[i : i + 1] != "]":
                start = i
                item, i = _DECODER.raw_decode(text, i)
                on_item(item, text[start:i])
                del item
                i = _after_value(text, i, "]")
            i += 1
            fields["items"] = None
        else:
            fields[name], i = _DECODER.raw_decode(text, i)
        i = _after_value(text, i, "}")
    if _skip(text, i + 1) != len(text):
        raise ValueError("trailing data after the list")


def decode_list(
    body: bytes | list[bytes], component: str, gvr: GVR, namespace: str
) -> tuple[ListItems, str]:
    """Decode a list answer into cacheable items (with kind and apiVersion filled in, as
    list items omit them) and the list's resourceVersion. Runs in a thread; each item's
    bytes are its own text from the answer, not a re-encoding.

    ``body`` may be handed over in a one-element list, which is emptied, so the answer's
    bytes are freed as soon as they are decoded: a big list then never lives as bytes,
    text and items all at once.
    """
    text = (body.pop() if isinstance(body, list) else body).decode("utf-8")
    fields: dict[str, Any] = {}
    items = ListItems(component, gvr)
    # Items met before the list's kind (rare: kind comes first): (key, resourceVersion,
    # text, kind missing, apiVersion missing), finished once the kind is known.
    early: list[tuple[CacheKey, str, str, bool, bool]] = []
    prefix: list[str] = []

    def item_prefix() -> str:
        if not prefix:
            kind = str(fields.get("kind", ""))
            api_version = fields.get("apiVersion") or (f"{gvr.group}/{gvr.version}" if gvr.group else gvr.version)
            item_kind = kind[:-4] if kind.endswith("List") else kind
            prefix.append(json.dumps({"kind": item_kind, "apiVersion": api_version}, separators=(",", ":"))[:-1])
        return prefix[0]

    def keep(item: Any, raw: str) -> None:
        # Only the item's own text is kept (as bytes once the list's kind is known); the
        # decoded item is dropped by the caller at once.
        if not isinstance(item, dict):
            return
        meta = item.get("metadata") or {}
        key = CacheKey(component, gvr, meta.get("namespace") or namespace, meta.get("name") or "")
        rv = str(meta.get("resourceVersion", ""))
        no_kind, no_version = "kind" not in item, "apiVersion" not in item
        if not no_kind and not no_version:
            items.add(key, rv, raw.encode("utf-8"))
        elif no_kind and no_version and "kind" in fields:
            items.add(key, rv, (item_prefix() + "," + raw[1:]).encode("utf-8"))
        else:
            early.append((key, rv, raw, no_kind, no_version))

    _walk_list(text, keep, fields)
    del text
    if "items" not in fields:
        raise ValueError("not a list")
    for key, rv, raw, no_kind, no_version in early:
        item = json.loads(raw)
        head = json.loads(item_prefix() + "}")
        if no_kind:
            item["kind"] = head["kind"]
        if no_version:
            item["apiVersion"] = head["apiVersion"]
        items.add(key, rv, json.dumps(item, separators=(",", ":")).encode("utf-8"))
    early.clear()
    return items, str((fields.get("metadata") or {}).get("resourceVersion", ""))


_IS_JSON: dict[bytes, bool] = {}


def is_json(content_type: bytes | None) -> bool:
    """Whether a Content-Type value names plain JSON (remembered per value: an upstream
    sends the same few)."""
    if not content_type:
        return False
    known = _IS_JSON.get(content_type)
    if known is None:
        if len(_IS_JSON) >= _MEMO_SIZE:
            _IS_JSON.clear()
        known = _IS_JSON[content_type] = content_type.split(b";", 1)[0].strip().lower() == b"application/json"
    return known


class ResponseTee:
    """Sees an answer's body as it streams to the client; applies it to the cache."""

    def __init__(self, manager: CacheManager, info: RequestInfo) -> None:
        self.manager = manager
        self.info = info
        self.active = True

    def start(self, code: int, content_type: bytes | None) -> bool:
        """The response began; False (and the tee goes quiet) unless it is a 2xx JSON
        answer worth caching."""
        self.active = 200 <= code < 300 and is_json(content_type)
        return self.active

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """The body ended completely."""

    def abandon(self) -> None:
        """The body did not end completely: nothing of it is applied."""
        self.active = False


class WholeTee(ResponseTee):
    """get, list, create, update, patch: the whole body, decoded once it is complete."""

    def __init__(self, manager: CacheManager, info: RequestInfo) -> None:
        self.manager = manager  # ResponseTee's three, set here: one call less per request
        self.info = info
        self.active = True
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> None:
        if not self.active:
            return
        self._size += len(data)
        if self._size > MAX_CACHED_BODY:
            # Relayed whole to the client, but not held for the cache: counted instead.
            self.active = False
            self._chunks = []
            self.manager.count_error("too_large")
            return
        self._chunks.append(data)

    def _take_body(self) -> bytes | None:
        """The whole body, once, freeing the chunks (None if the tee went quiet)."""
        if not self.active:
            return None
        self.active = False
        body = b"".join(self._chunks)
        self._chunks = []
        return body

    def finish(self) -> None:
        body = self._take_body()
        if body is None:
            return
        manager, info = self.manager, self.info
        if info.verb == "list" and manager.list_unchanged(info, body):
            return
        if info.verb == "list":
            holder = [body]  # decode_list empties it: the bytes go once decoded
            del body
            gvr = gvr_of(info)
            try:
                matches = selection(info)
            except SelectorError:
                manager.count_error("decode")
                return
            if matches is None:
                d = manager._run(decode_list, holder, info.component, gvr, info.namespace)
            else:
                cached = manager.store.list(info.component, gvr, info.namespace or None)
                d = manager._run(decode_list_covering, holder, info.component, gvr, info.namespace, cached, matches)
            d.addCallback(lambda result: manager.apply_list(info, *result))
            if self._size > BIG_ANSWER:
                # Decoding a big list frees tens of MB in small blocks; hand them back.
                d.addCallback(lambda _: manager._release_memory())
        else:
            d = manager._run(json.loads, body)
            d.addCallback(lambda obj: manager.apply_object(info, obj, body))
        d.addErrback(self._failed)
        manager.track(d)

    def _failed(self, failure: Any) -> None:
        self.manager.count_error("decode")
        _log.info(
            "answer to {verb} {resource} not cached: {err}",
            verb=self.info.verb,
            resource=self.info.resource,
            err=failure.getErrorMessage(),
        )


class WatchTee(ResponseTee):
    """watch: each newline-terminated event applied as soon as it is complete."""

    def __init__(self, manager: CacheManager, info: RequestInfo) -> None:
        super().__init__(manager, info)
        self._lines = LineBuffer()

    def feed(self, data: bytes) -> None:
        if not self.active:
            return
        lines = self._lines.feed(data)
        if self._lines.size > MAX_EVENT_LINE:
            self.active = False
            self._lines.clear()
            self.manager.count_error("too_large")
            return
        for line in lines:
            if not line.strip():
                continue
            try:
                event, raw = _event_of(line)
                self.manager.apply_event(self.info, event, raw)
            except (ValueError, InvalidKey) as e:
                self.manager.count_error("decode")
                _log.info("watch event not cached: {err}", err=str(e))


def _event_of(line: bytes) -> tuple[dict[str, Any], bytes | None]:
    """A watch event line decoded, with its object's bytes when they can be cut out.

    kube-apiserver writes ``{"type":"MODIFIED","object":{...}}``: the object's own bytes
    are then stored as they came, which spares encoding every object again (a third of the
    relay's CPU). The cut is trusted only if it decodes as one JSON object by itself;
    anything else is decoded whole and the object encoded anew."""
    line = line.strip()
    cut = line.find(b',"object":', 0, 40)
    if line.startswith(b'{"type":"') and cut != -1 and line.endswith(b"}") and line[cut - 1 : cut] == b'"':
        data = line[cut + 10 : -1]
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return {"type": line[9 : cut - 1].decode("ascii", "replace"), "object": obj}, data
    event = json.loads(line)
    if not isinstance(event, dict):
        raise ValueError("a watch event is not a JSON object")
    return event, None


class DocumentTee(WholeTee):
    """Discovery documents, kept whole under a document name."""

    def __init__(self, manager: CacheManager, info: RequestInfo, name: str) -> None:
        super().__init__(manager, info)
        self.name = name

    def finish(self) -> None:
        body = self._take_body()
        if body is None:
            return
        try:
            json.loads(body)
        except ValueError:
            self.manager.count_error("decode")
            return
        self.manager.store.put_document(self.name, body)
