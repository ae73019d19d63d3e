"""Kubernetes request info for a proxied request, resolved the way kube-apiserver resolves it.

Every request yurthub proxies is first described by a :class:`RequestInfo`: whether it
names an API resource, which verb, group, version, namespace, resource, subresource and
name it addresses, and which component (from the User-Agent) sent it. The throttle, the
router, the proxies and the cache manager all key their decisions on it, so it has to agree
with kube-apiserver's own ``RequestInfoFactory`` (``k8s.io/apiserver/pkg/endpoints/request``)
even where that is surprising: the path is percent-decoded before it is split on ``/`` (so
``%2F`` adds a segment), ``..`` and empty segments are taken literally, and a list or watch
narrowed with ``fieldSelector=metadata.name=X`` carries name ``X``.

:func:`parse_request_info` never raises, whatever it is given: invalid UTF-8 becomes
U+FFFD, malformed percent-escapes in the path are kept literally, and a malformed query
pair is dropped as Go's ``url.ParseQuery`` drops it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from urllib.parse import unquote, unquote_to_bytes

__all__ = ["RequestInfo", "component_from_user_agent", "parse_request_info"]

# Path segments that kube-apiserver reads as a verb rather than a resource (legacy forms
# such as /api/v1/watch/pods); "proxy" additionally swallows everything after the name.
_SPECIAL_VERBS = frozenset({"proxy", "watch"})
_VERBS_WITHOUT_SUBRESOURCES = frozenset({"proxy"})
# /namespaces/<ns>/<x>: x is a subresource of the namespace, not a namespaced resource.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
_VERBS_WITH_SELECTORS = frozenset({"list", "watch", "deletecollection"})
# The query parameters request info depends on; others are not decoded.
_LIST_OPTION_KEYS = frozenset(
    {"watch", "limit", "timeoutSeconds", "fieldSelector", "labelSelector"}
)
_FOLLOW_KEY = frozenset({"follow"})

_LONG_RUNNING_VERBS = frozenset({"watch", "proxy"})
_LONG_RUNNING_SUBRESOURCES = frozenset({"exec", "attach", "portforward", "proxy"})

_HEX_BYTES = {
    high + low: bytes((int(high + low, 16),))
    for high in "0123456789abcdefABCDEF"
    for low in "0123456789abcdefABCDEF"
}
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What one HTTP request addresses, as kube-apiserver would resolve it.

    For a resource request (``/api/<v>/...`` or ``/apis/<g>/<v>/...`` with a resource)
    ``verb`` is the Kubernetes verb (get list watch create update patch delete
    deletecollection, or proxy for the legacy ``/proxy/`` form; "" for an HTTP method
    kube-apiserver has no verb for); for anything else it is the lower-cased HTTP method and
    every API field is empty. ``path`` is the percent-decoded path without the query,
    ``parts`` the segments from the resource on, ``component`` the lower-cased User-Agent
    product. ``field_selector`` and ``label_selector`` hold the first raw selector of a list,
    watch or deletecollection (as kube-apiserver records them for authorization) and
    ``query`` the raw query string without ``?``. Instances are immutable and hashable.
    """

    is_resource_request: bool
    path: str
    verb: str
    api_prefix: str
    api_group: str
    api_version: str
    namespace: str
    resource: str
    subresource: str
    name: str
    parts: tuple[str, ...]
    component: str
    field_selector: str = ""
    label_selector: str = ""
    query: str = ""
    #: The hash, computed once: an info is a key of several per-request memos (each
    #: look-up would otherwise hash its fifteen fields again).
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(tuple(getattr(self, f.name) for f in _COMPARED)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def is_watch(self) -> bool:
        """True when the request is a watch (``?watch=`` or the legacy ``/watch/`` path)."""
        return self.verb == "watch"

    @property
    def is_long_running(self) -> bool:
        """True for requests that legitimately stay open: they get no timeout or in-flight slot.

        That is kube-apiserver's default rule (verbs watch and proxy; subresources exec,
        attach, portforward and proxy; non-resource ``/debug/pprof/...``), except that a
        ``log`` subresource counts only when it follows the log (``follow`` set to anything
        but ``0``/``false``, kube-apiserver's boolean query rule): a plain log fetch ends.
        """
        if self.verb in _LONG_RUNNING_VERBS:
            return True
        if not self.is_resource_request:
            return self.path.startswith("/debug/pprof/")
        if self.subresource in _LONG_RUNNING_SUBRESOURCES:
            return True
        if self.subresource == "log":
            return _query_bool(_parse_query(self.query, _FOLLOW_KEY).get("follow"))
        return False

    @property
    def group_version_resource(self) -> str:
        """``<resource>.<version>.<group>`` (group ``core`` for ""), e.g. ``pods.v1.core``.

        This is OpenYurt's cache directory name for the resource; it is "" for non-resource
        requests and for resource requests that name no resource.
        """
        if not self.is_resource_request or not self.resource:
            return ""
        return f"{self.resource}.{self.api_version}.{self.api_group or 'core'}"

    def query_value(self, key: str) -> str | None:
        """The first percent-decoded value of query parameter *key*, or None if absent.

        Pairs are read as Go's ``url.ParseQuery`` reads them (``&``-separated, ``+`` is a
        space, pairs with ``;`` or a bad escape are dropped), which is what kube-apiserver
        sees.
        """
        return _parse_query(self.query, frozenset((key,))).get(key)


def component_from_user_agent(user_agent: str | bytes | None) -> str:
    """The client component named by a User-Agent: the text before the first ``/``.

    The result is stripped and lower-cased (``kubelet/v1.31.0 (linux/amd64)`` gives
    ``kubelet``, ``Go-http-client/1.1`` gives ``go-http-client``); it is "" when there is no
    User-Agent. Never raises.
    """
    if not user_agent:
        return ""
    text = _text(user_agent)
    return text.partition("/")[0].strip().lower()


def parse_request_info(
    method: str | bytes, path: str | bytes, user_agent: str | bytes | None = None
) -> RequestInfo:
    """Resolve a request line (method and request target) into a :class:`RequestInfo`.

    *path* is the request target as received, optionally with ``?query``; an absolute-form
    target (``http://host/api/...``) is reduced to its path. The method may be in any case.
    Resolution follows kube-apiserver's rules exactly, apart from two points: methods are
    matched case-insensitively, and a malformed percent-escape in the path (which Go's
    server would reject with 400) is kept literally. Never raises, on any input.
    """
    method_text = _text(method)
    path_bytes_or_text = path if isinstance(path, (bytes, bytearray, memoryview)) else _text(path)
    url_path, query = _split_target(path_bytes_or_text)
    component = component_from_user_agent(user_agent)
    lower_method = method_text.lower()

    trimmed = url_path.strip("/")
    segments = trimmed.split("/") if trimmed else []
    count = len(segments)
    prefix = segments[0] if segments else ""
    if count < 3 or (prefix != "api" and prefix != "apis") or (prefix == "apis" and count < 4):
        return _unresolved(False, url_path, lower_method, "", "", "", component, query)

    if prefix == "api":
        group = ""
        version = segments[1]
        rest = segments[2:]
    else:
        group = segments[1]
        version = segments[2]
        rest = segments[3:]

    verb_via_path = False
    if rest[0] in _SPECIAL_VERBS:
        if len(rest) < 2:
            # kube-apiserver fails the request here (500) after filling in this much.
            return _unresolved(
                True, url_path, lower_method, prefix, group, version, component, query
            )
        verb = rest[0]
        rest = rest[1:]
        verb_via_path = True
    else:
        verb = _METHOD_VERBS.get(method_text.upper(), "")

    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]

    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 and verb not in _VERBS_WITHOUT_SUBRESOURCES else ""

    field_selector = ""
    label_selector = ""
    params: dict[str, str] | None = None
    if not name and verb == "get":
        params = _parse_query(query, _LIST_OPTION_KEYS)
        verb, name = _list_or_watch(params)
    if not name and verb == "delete":
        verb = "deletecollection"
    if not verb_via_path and verb in _VERBS_WITH_SELECTORS:
        if params is None:
            params = _parse_query(query, _LIST_OPTION_KEYS)
        field_selector = params.get("fieldSelector", "")
        label_selector = params.get("labelSelector", "")

    return RequestInfo(
        is_resource_request=True,
        path=url_path,
        verb=verb,
        api_prefix=prefix,
        api_group=group,
        api_version=version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
        parts=tuple(rest),
        component=component,
        field_selector=field_selector,
        label_selector=label_selector,
        query=query,
    )


def _unresolved(
    is_resource_request: bool,
    path: str,
    verb: str,
    api_prefix: str,
    api_group: str,
    api_version: str,
    component: str,
    query: str,
) -> RequestInfo:
    """A RequestInfo that stops short of naming a resource."""
    return RequestInfo(
        is_resource_request=is_resource_request,
        path=path,
        verb=verb,
        api_prefix=api_prefix,
        api_group=api_group,
        api_version=api_version,
        namespace="",
        resource="",
        subresource="",
        name="",
        parts=(),
        component=component,
        query=query,
    )


def _text(value: object) -> str:
    """Any input as text: bytes are decoded as UTF-8 with U+FFFD for invalid sequences."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if value is None:
        return ""
    try:
        return str(value)
    except Exception:
        return ""


def _split_target(target: str | bytes | bytearray | memoryview) -> tuple[str, str]:
    """The percent-decoded path and the raw query of a request target."""
    if isinstance(target, str):
        raw_path, _, query = target.partition("?")
        raw_path = _origin_path(raw_path)
        if "%" in raw_path:
            raw_path = unquote(raw_path, errors="replace")
        return raw_path, query
    data = bytes(target)
    raw, _, raw_query = data.partition(b"?")
    raw = _origin_path_bytes(raw)
    if b"%" in raw:
        # Decode escapes to bytes first so an escaped multi-byte character stays whole.
        raw = unquote_to_bytes(raw)
    return raw.decode("utf-8", "replace"), raw_query.decode("utf-8", "replace")


def _origin_path(raw: str) -> str:
    """The path of an absolute-form target (``scheme://authority/path``); others unchanged."""
    if not raw or raw[0] == "/":
        return raw
    at = raw.find("://")
    if at <= 0:
        return raw
    slash = raw.find("/", at + 3)
    return raw[slash:] if slash >= 0 else ""


def _origin_path_bytes(raw: bytes) -> bytes:
    """:func:`_origin_path` for a target still in bytes."""
    if not raw or raw[0] == 0x2F:
        return raw
    at = raw.find(b"://")
    if at <= 0:
        return raw
    slash = raw.find(b"/", at + 3)
    return raw[slash:] if slash >= 0 else b""


def _parse_query(query: str, wanted: frozenset[str] | None = None) -> dict[str, str]:
    """First value per key of a raw query string, decoded as Go's ``url.ParseQuery`` does.

    With *wanted*, other keys are skipped without decoding their values.
    """
    values: dict[str, str] = {}
    if not query:
        return values
    for pair in query.split("&"):
        if not pair or ";" in pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        # Most keys and values need no decoding; skip the call for them.
        key = _query_unescape(raw_key) if "%" in raw_key or "+" in raw_key else raw_key
        if key is None or key in values or (wanted is not None and key not in wanted):
            continue
        if "%" in raw_value or "+" in raw_value:
            value = _query_unescape(raw_value)
            if value is None:
                continue
        else:
            value = raw_value
        values[key] = value
    return values


def _query_unescape(text: str) -> str | None:
    """A query component with ``+`` as space and ``%XX`` decoded; None for a bad escape."""
    if "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    pieces = text.split("%")
    if not text.isascii():
        for piece in pieces[1:]:
            if piece[:2] not in _HEX_BYTES:
                return None
        return unquote(text, errors="replace")
    # urllib's unquote costs microseconds; escapes in selectors are on the hot path.
    out = [pieces[0].encode("ascii")]
    for piece in pieces[1:]:
        byte = _HEX_BYTES.get(piece[:2])
        if byte is None:
            return None
        out.append(byte)
        out.append(piece[2:].encode("ascii"))
    return b"".join(out).decode("utf-8", "replace")


def _query_bool(value: str | None) -> bool:
    """kube-apiserver's query boolean: present and anything but ``0`` or ``false``."""
    if value is None:
        return False
    return not (value == "0" or (len(value) <= 16 and value.casefold() == "false"))


def _list_or_watch(params: dict[str, str]) -> tuple[str, str]:
    """Verb and name for a GET without a name in the path, as kube-apiserver decides them.

    kube-apiserver decodes the query as ListOptions; when that works, ``watch`` decides
    between list and watch and an exact ``metadata.name`` field selector supplies the name.
    When decoding fails (a malformed field selector, a non-integer limit or timeoutSeconds)
    the name is left empty and ``watch`` is read on its own. Label selectors are not
    validated here; a request with a malformed one is rejected upstream anyway.
    """
    watch = params.get("watch")
    decoded = _int64_or_absent(params.get("limit")) and _int64_or_absent(
        params.get("timeoutSeconds")
    )
    name = ""
    selector = params.get("fieldSelector")
    if decoded and selector:
        ok, selected = _exact_match(selector, "metadata.name")
        if not ok:
            decoded = False
        elif selected is not None and _is_valid_path_segment_name(selected):
            name = selected
    if decoded:
        is_watch = _query_bool(watch)
    else:
        is_watch = watch is not None and watch.lower() not in ("false", "0")
    return ("watch" if is_watch else "list"), name


def _int64_or_absent(value: str | None) -> bool:
    """True when *value* is absent or parses as Go's ``strconv.ParseInt(v, 10, 64)``."""
    if value is None:
        return True
    negative = value[:1] == "-"
    digits = value[1:] if value[:1] in ("+", "-") else value
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    significant = digits.lstrip("0")
    if len(significant) > 19:
        return False
    number = int(significant or "0")
    return number <= (-_INT64_MIN if negative else _INT64_MAX)


def _exact_match(selector: str, field: str) -> tuple[bool, str | None]:
    """Parse a field selector as apimachinery does and find the value *field* must equal.

    Returns ``(False, None)`` when the selector does not parse, else ``(True, value)`` with
    the value of the first ``field=value``/``field==value`` term in sorted term order, or
    None when no term pins *field*.
    """
    terms = _split_terms(selector)
    terms.sort()
    found: str | None = None
    for term in terms:
        if not term:
            continue
        equals = term.find("=")
        if equals == -1:
            return False, None
        if equals > 0 and term[equals - 1] == "!":
            lhs, rhs, exact = term[: equals - 1], term[equals + 1 :], False
        elif term[equals + 1 : equals + 2] == "=":
            lhs, rhs, exact = term[:equals], term[equals + 2 :], True
        else:
            lhs, rhs, exact = term[:equals], term[equals + 1 :], True
        value = _unescape_selector_value(rhs)
        if value is None:
            return False, None
        if exact and found is None and lhs == field:
            found = value
    return True, found


def _split_terms(selector: str) -> list[str]:
    """Split a field selector on commas that are not backslash-escaped."""
    if "\\" not in selector:
        return selector.split(",")
    terms: list[str] = []
    start = 0
    escaped = False
    for index, char in enumerate(selector):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            terms.append(selector[start:index])
            start = index + 1
    terms.append(selector[start:])
    return terms


def _unescape_selector_value(text: str) -> str | None:
    r"""Undo ``\\``, ``\,`` and ``\=`` in a selector value; None if it is malformed."""
    if "\\" not in text and "," not in text and "=" not in text:
        return text
    out: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            if char not in "\\,=":
                return None
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "," or char == "=":
            return None
        else:
            out.append(char)
    if escaped:
        return None
    return "".join(out)


def _is_valid_path_segment_name(name: str) -> bool:
    """apimachinery's ``IsValidPathSegmentName``: not ``.``/``..``, no ``/`` or ``%``."""
    return name != "." and name != ".." and "/" not in name and "%" not in name


#: The fields an info is compared and hashed by.
_COMPARED = tuple(f for f in fields(RequestInfo) if f.compare)

