"""The filter chain: which filters apply to a request, and applying them to answers.

A `Filter` names the components, resources and verbs it applies to and rewrites one
object at a time (`Filter.apply`: the object, changed or not, or None to withhold it). The
`FilterChain` memoises which filters apply to a request kind, so a request none applies to
costs one dictionary look-up and keeps the zero-copy streaming path. `RequestFilters`
applies the chosen filters to whole answers: a list (items), a get (its object), a Table
(its rows' objects) and each watch event line, where an object withheld by a plain filter
turns its event into DELETED (the client forgets it) and an object hidden by tenant
isolation drops its event (the client must not learn it exists).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from typing import Any

from yurthub.requestinfo import RequestInfo

JSONDict = dict[str, Any]

#: The verbs whose answers carry objects to filter.
READ_VERBS = frozenset({"get", "list", "watch"})


class Filter:
    """One response filter. Subclasses set `name`, `components` (``"*"``: every one),
    `resources` (``{(group, resource): verbs}``) and implement `apply`.

    ``hides`` filters (tenant isolation) withhold objects as if they did not exist: a
    withheld watch event is dropped, never turned into DELETED.
    """

    name = ""
    components: frozenset[str] = frozenset()
    resources: dict[tuple[str, str], frozenset[str]] = {}
    hides = False

    def applies(self, info: RequestInfo) -> bool:
        if "*" not in self.components and info.component not in self.components:
            return False
        verbs = self.resources.get((info.api_group, info.resource))
        return verbs is not None and info.verb in verbs and info.subresource == ""

    def apply(self, obj: JSONDict, info: RequestInfo) -> JSONDict | None:
        """The object as the component may see it (may be changed in place), or None."""
        raise NotImplementedError


class FilterChain:
    """The enabled filters, in order; `for_request` gives those that apply to a request."""

    def __init__(self, filters: Iterable[Filter]) -> None:
        self.filters: tuple[Filter, ...] = tuple(filters)
        self._memo: dict[tuple[str, str, str, str, str], RequestFilters | None] = {}

    def for_request(self, info: RequestInfo) -> RequestFilters | None:
        """The filters for this request, or None when none applies (the common case)."""
        if not info.is_resource_request:
            return None
        key = (info.component, info.verb, info.api_group, info.resource, info.subresource)
        try:
            return self._memo[key]
        except KeyError:
            pass
        chosen = [f for f in self.filters if f.applies(info)]
        found = RequestFilters(chosen) if chosen else None
        if len(self._memo) > 1024:
            self._memo.clear()
        self._memo[key] = found
        return found


class FilterError(ValueError):
    """An answer that should be filtered cannot be read (not JSON, not the expected shape)."""


class RequestFilters:
    """The filters that apply to one kind of request, applied to its answers."""

    def __init__(self, filters: Sequence[Filter]) -> None:
        self.filters = tuple(filters)
        self.hides = any(f.hides for f in self.filters)
        self.names = tuple(f.name for f in self.filters)

    def object(self, obj: Any, info: RequestInfo, *, fresh: bool = True) -> JSONDict | None:
        """One object through every filter; ``fresh=False`` copies it first (it belongs to
        someone else, e.g. the cache's decoded copy)."""
        if not isinstance(obj, dict):
            return None if self.hides else obj
        if not fresh:
            obj = copy.deepcopy(obj)
        result: JSONDict = obj
        for f in self.filters:
            kept = f.apply(result, info)
            if kept is None:
                return None
            result = kept
        return result

    def objects(self, objs: Iterable[Any], info: RequestInfo, *, fresh: bool = True) -> list[JSONDict]:
        out = []
        for obj in objs:
            kept = self.object(obj, info, fresh=fresh)
            if kept is not None:
                out.append(kept)
        return out

    def document(self, doc: Any, info: RequestInfo) -> JSONDict | None:
        """A decoded answer (object, list or Table) filtered; None if the object is withheld."""
        if not isinstance(doc, dict):
            raise FilterError("the answer is not a JSON object")
        kind = str(doc.get("kind", ""))
        if kind == "Table":
            doc["rows"] = self._rows(doc.get("rows"), info)
            return doc
        if kind.endswith("List") and isinstance(doc.get("items"), list):
            doc["items"] = self.objects(doc["items"], info)
            return doc
        if kind == "Status":
            return doc
        return self.object(doc, info)

    def _rows(self, rows: Any, info: RequestInfo) -> list[Any]:
        kept = []
        for row in rows if isinstance(rows, list) else []:
            obj = row.get("object") if isinstance(row, dict) else None
            if not isinstance(obj, dict):
                if not self.hides:  # without its object a row cannot be judged: tenants fail closed
                    kept.append(row)
                continue
            filtered = self.object(obj, info)
            if filtered is not None:
                row["object"] = filtered
                kept.append(row)
        return kept

    def body(self, body: bytes, info: RequestInfo) -> bytes | None:
        """A whole JSON answer filtered and encoded again; None if its object is withheld."""
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise FilterError(f"the answer is not JSON: {e}") from None
        kept = self.document(doc, info)
        return None if kept is None else _encode(kept)

    def event_line(self, line: bytes, info: RequestInfo) -> bytes:
        """One watch event line (without its newline) filtered; b"" drops the event."""
        if not line.strip():
            return b""
        try:
            event = json.loads(line)
        except ValueError as e:
            raise FilterError(f"a watch event is not JSON: {e}") from None
        if not isinstance(event, dict):
            raise FilterError("a watch event is not a JSON object")
        kind = event.get("type")
        obj = event.get("object")
        if kind not in ("ADDED", "MODIFIED", "DELETED") or not isinstance(obj, dict):
            if kind == "ERROR" or kind == "BOOKMARK":
                return _encode(event)
            return b"" if self.hides else _encode(event)
        if obj.get("kind") == "Table":
            event["object"] = self.document(obj, info)
            return _encode(event)
        original = copy.deepcopy(obj) if not self.hides else None
        kept = self.object(obj, info)
        if kept is None:
            if self.hides:
                return b""
            # Withheld: the client forgets it (DELETED of the object as the cloud sent it).
            return _encode({"type": "DELETED", "object": original})
        event["object"] = kept
        return _encode(event)


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def meta(obj: JSONDict) -> JSONDict:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def annotations_of(obj: JSONDict) -> dict[str, Any]:
    a = meta(obj).get("annotations")
    return a if isinstance(a, dict) else {}


def spec(obj: JSONDict) -> JSONDict:
    s = obj.get("spec")
    return s if isinstance(s, dict) else {}
