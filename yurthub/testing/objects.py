"""The simulated kube-apiserver's object store: resource types, Status errors, watch history.

`ObjectStore` keeps every object of a resource in a dict per namespace and hands out a
global, strictly increasing resourceVersion on every change, as etcd does for
kube-apiserver. Each change is a `WatchEvent`, pushed to the resource's watchers (one call
per watcher) and kept in a bounded per-resource history so that a watch can resume from
a resourceVersion; a resume from before the history's floor raises `StatusError` 410
``Expired``, as kube-apiserver's watch cache does.

Stored objects are never mutated after they are stored: updates replace them. That lets a
`StoredObject` cache its JSON encoding, so lists and watch fan-out serialise each
object once.
"""

from __future__ import annotations

import builtins
import datetime
import json
import random
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from yurthub.kube.meta import parse_timestamp
from yurthub.kube.selectors import FIELD_LABELS

__all__ = [
    "DEFAULT_RESOURCE_TYPES",
    "ObjectStore",
    "ResourceType",
    "StatusError",
    "StoredObject",
    "WatchEvent",
    "Watcher",
    "dumps",
    "format_timestamp",
    "parse_timestamp",
    "status_body",
]

JSONDict = dict[str, Any]


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact JSON bytes (the form every response uses)."""
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def format_timestamp(seconds: float) -> str:
    """Format POSIX ``seconds`` as a Kubernetes RFC 3339 timestamp (``2024-01-02T03:04:05Z``)."""
    moment = datetime.datetime.fromtimestamp(int(seconds), tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(
    code: int, reason: str, message: str, details: JSONDict | None = None
) -> JSONDict:
    """Build a failure ``Status`` object as kube-apiserver sends it."""
    body: JSONDict = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details:
        body["details"] = details
    body["code"] = code
    return body


class StatusError(Exception):
    """A request failed; ``status`` is the ``Status`` object and ``code`` its HTTP code."""

    def __init__(
        self, code: int, reason: str, message: str, details: JSONDict | None = None
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.status = status_body(code, reason, message, details)


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives in the API and how discovery describes it.

    ``field_labels`` maps the field selectors the resource supports beyond
    ``metadata.name``/``metadata.namespace`` to the dotted path they read.
    """

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    field_labels: tuple[tuple[str, str], ...] = ()

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``<group>/<version>`` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_name(self) -> str:
        """The name kube-apiserver uses in messages: ``pods``, ``leases.coordination.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        """The kind of a list of these objects (``PodList``)."""
        return self.kind + "List"

    def field_paths(self) -> dict[str, str]:
        """Every supported field selector label and the dotted path it reads."""
        paths = {"metadata.name": "metadata.name", "metadata.namespace": "metadata.namespace"}
        paths.update(dict(self.field_labels))
        return paths

    def not_found(self, name: str) -> StatusError:
        """The 404 ``NotFound`` error for object ``name`` of this resource."""
        return StatusError(
            404,
            "NotFound",
            f'{self.qualified_name} "{name}" not found',
            {"name": name, "group": self.group, "kind": self.plural} if self.group
            else {"name": name, "kind": self.plural},
        )


_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

DEFAULT_RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "pods", "Pod", True, "pod", ("po",), ("status", "log", "exec"),
                 ("all",), FIELD_LABELS[("", "pods")]),
    ResourceType("", "v1", "services", "Service", True, "service", ("svc",), ("status",),
                 ("all",), FIELD_LABELS[("", "services")]),
    ResourceType("", "v1", "endpoints", "Endpoints", True, "endpoints", ("ep",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, "configmap", ("cm",)),
    ResourceType("", "v1", "secrets", "Secret", True, "secret", (), (), (),
                 FIELD_LABELS[("", "secrets")]),
    ResourceType("", "v1", "namespaces", "Namespace", False, "namespace", ("ns",),
                 ("status",), (), FIELD_LABELS[("", "namespaces")]),
    ResourceType("", "v1", "nodes", "Node", False, "node", ("no",), ("status",), (),
                 FIELD_LABELS[("", "nodes")]),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, "serviceaccount",
                 ("sa",), ("token",)),
    ResourceType("", "v1", "events", "Event", True, "event", ("ev",), (), (), FIELD_LABELS[("", "events")]),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True,
                 "endpointslice"),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True, "lease"),
    ResourceType("certificates.k8s.io", "v1", "certificatesigningrequests",
                 "CertificateSigningRequest", False, "certificatesigningrequest", ("csr",),
                 ("status", "approval"), (), FIELD_LABELS[("certificates.k8s.io", "certificatesigningrequests")]),
)


class StoredObject:
    """An object as stored, with its resourceVersion and lazily cached JSON encodings."""

    __slots__ = ("obj", "rv", "_json", "_item_json")

    def __init__(self, obj: JSONDict, rv: int) -> None:
        self.obj = obj
        self.rv = rv
        self._json: bytes | None = None
        self._item_json: bytes | None = None

    @property
    def namespace(self) -> str:
        """The object's namespace, ``""`` when cluster-scoped."""
        return str(self.obj.get("metadata", {}).get("namespace", ""))

    @property
    def name(self) -> str:
        """The object's name."""
        return str(self.obj["metadata"]["name"])

    @property
    def labels(self) -> dict[str, str]:
        """The object's labels (empty when it has none)."""
        return self.obj.get("metadata", {}).get("labels") or {}

    def json(self) -> bytes:
        """The object encoded as compact JSON (as a get or a watch event carries it)."""
        if self._json is None:
            self._json = dumps(self.obj)
        return self._json

    def item_json(self) -> bytes:
        """The object as an item of a list: without ``kind`` and ``apiVersion``."""
        if self._item_json is None:
            self._item_json = dumps(
                {k: v for k, v in self.obj.items() if k not in ("kind", "apiVersion")}
            )
        return self._item_json

    def copy(self) -> JSONDict:
        """A deep copy of the object that the caller may change freely."""
        copied: JSONDict = json.loads(self.json())
        return copied


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``type`` is ADDED, MODIFIED or DELETED; ``previous`` is set for MODIFIED."""

    type: str
    resource: ResourceType
    current: StoredObject
    previous: StoredObject | None = None
    _line: list[bytes] = field(default_factory=list, compare=False, repr=False)

    @property
    def rv(self) -> int:
        """The resourceVersion the change was made at."""
        return self.current.rv

    def line(self) -> bytes:
        """The event as a JSON watch line (``{"type":...,"object":...}`` and a newline)."""
        if not self._line:
            self._line.append(
                b'{"type":"' + self.type.encode() + b'","object":' + self.current.json() + b"}\n"
            )
        return self._line[0]


class Watcher(Protocol):
    """Receives the events of the resource it watches, in order, one call per event."""

    def deliver(self, event: WatchEvent) -> None:
        """Handle ``event``; must not raise."""


class Clock(Protocol):
    """The part of a reactor the store needs: the current time."""

    def seconds(self) -> float:
        """The current POSIX time."""
        ...


_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


class ObjectStore:
    """In-memory objects of a set of resource types, with global resourceVersions and watches.

    Objects are indexed per resource type and namespace (``""`` for cluster-scoped ones).
    All methods run on the reactor thread; none blocks. ``history_limit`` bounds the
    per-resource event history that watches resume from.
    """

    def __init__(
        self,
        clock: Clock,
        resource_types: Iterable[ResourceType] = DEFAULT_RESOURCE_TYPES,
        *,
        history_limit: int = 1000,
        seed: int = 0,
        initial_resource_version: int = 1,
    ) -> None:
        self._clock = clock
        self.resource_types: tuple[ResourceType, ...] = tuple(resource_types)
        self._by_path = {(t.group, t.version, t.plural): t for t in self.resource_types}
        self._by_kind = {(t.api_version, t.kind): t for t in self.resource_types}
        self._objects: dict[ResourceType, dict[str, dict[str, StoredObject]]] = {
            t: {} for t in self.resource_types
        }
        self._history: dict[ResourceType, deque[WatchEvent]] = {
            t: deque() for t in self.resource_types
        }
        self._floor: dict[ResourceType, int] = {t: 0 for t in self.resource_types}
        self._watchers: dict[ResourceType, dict[Watcher, None]] = {
            t: {} for t in self.resource_types
        }
        self.history_limit = history_limit
        self._rv = initial_resource_version
        self._random = random.Random(seed)
        self._next_cluster_ip = 10

    # -- lookup ---------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion (the one the latest change got)."""
        return self._rv

    def resource_type(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The resource type served at ``group``/``version``/``plural``, if any."""
        return self._by_path.get((group, version, plural))

    def resource_type_for(self, api_version: str, kind: str) -> ResourceType | None:
        """The resource type of objects with this ``apiVersion`` and ``kind``, if any."""
        return self._by_kind.get((api_version, kind))

    def get(self, resource: ResourceType, namespace: str, name: str) -> StoredObject | None:
        """The stored object, or ``None``."""
        return self._objects[resource].get(namespace if resource.namespaced else "", {}).get(name)

    def list(self, resource: ResourceType, namespace: str | None = None) -> list[StoredObject]:
        """Objects of ``resource`` (in ``namespace`` if given), sorted by namespace and name."""
        index = self._objects[resource]
        if namespace is not None and resource.namespaced:
            names = index.get(namespace, {})
            return [names[n] for n in sorted(names)]
        return [index[ns][n] for ns in sorted(index) for n in sorted(index[ns])]

    def count(self, resource: ResourceType) -> int:
        """How many objects of ``resource`` are stored."""
        return sum(len(names) for names in self._objects[resource].values())

    def iter_all(self, resource: ResourceType) -> Iterator[StoredObject]:
        """Every object of ``resource`` in no particular order (cheaper than `list`)."""
        for names in self._objects[resource].values():
            yield from names.values()

    # -- changes --------------------------------------------------------------

    def _bump(self) -> int:
        self._rv += 1
        return self._rv

    def new_uid(self) -> str:
        """A random (seeded) version-4 UUID string."""
        return str(uuid.UUID(int=self._random.getrandbits(128), version=4))

    def generate_name(self, prefix: str) -> str:
        """``prefix`` and five random characters, as kube-apiserver's generateName does."""
        return prefix + "".join(self._random.choice(_NAME_CHARS) for _ in range(5))

    def _check_kind(self, resource: ResourceType, obj: JSONDict) -> None:
        kind = obj.setdefault("kind", resource.kind)
        api_version = obj.setdefault("apiVersion", resource.api_version)
        if kind != resource.kind or api_version != resource.api_version:
            raise StatusError(
                400,
                "BadRequest",
                f"the API version in the data ({api_version}) and kind ({kind}) do not match "
                f"the resource {resource.qualified_name} ({resource.api_version}, "
                f"{resource.kind})",
            )

    def _defaults(self, resource: ResourceType, obj: JSONDict) -> None:
        if resource.api_version != "v1":
            return
        if resource.plural == "pods":
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        elif resource.plural == "namespaces":
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("status", {}).setdefault("phase", "Active")
        elif resource.plural == "services":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if spec["type"] != "ExternalName" and not spec.get("clusterIP"):
                ip = self._next_cluster_ip
                self._next_cluster_ip += 1
                spec["clusterIP"] = f"10.96.{ip // 250}.{ip % 250 + 1}"
            if spec.get("clusterIP") and not spec.get("clusterIPs"):
                spec["clusterIPs"] = [spec["clusterIP"]]
            obj.setdefault("status", {}).setdefault("loadBalancer", {})

    def create(self, resource: ResourceType, obj: JSONDict) -> StoredObject:
        """Store the new object ``obj`` (the store takes ownership of the dict).

        Fills in uid, creationTimestamp, resourceVersion, generation, a generated name and
        resource defaults (pod phase, service clusterIP). Raises `StatusError` 409
        ``AlreadyExists`` or 422 ``Invalid``.
        """
        self._check_kind(resource, obj)
        metadata = obj.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise StatusError(400, "BadRequest", "metadata must be an object")
        if not metadata.get("name"):
            prefix = metadata.get("generateName")
            if not prefix:
                raise StatusError(
                    422,
                    "Invalid",
                    f"{resource.kind} \"\" is invalid: metadata.name: Required value: "
                    "name or generateName is required",
                    {"kind": resource.kind},
                )
            for _ in range(10):
                metadata["name"] = self.generate_name(prefix)
                if self.get(resource, metadata.get("namespace", ""), metadata["name"]) is None:
                    break
        name = metadata["name"]
        _validate_name(resource, name)
        namespace = metadata.get("namespace", "") if resource.namespaced else ""
        if resource.namespaced and not namespace:
            raise StatusError(400, "BadRequest", "the namespace of the object is required")
        if not resource.namespaced:
            metadata.pop("namespace", None)
        if self.get(resource, namespace, name) is not None:
            raise StatusError(
                409,
                "AlreadyExists",
                f'{resource.qualified_name} "{name}" already exists',
                {"name": name, "group": resource.group, "kind": resource.plural}
                if resource.group else {"name": name, "kind": resource.plural},
            )
        for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            metadata.pop(key, None)
        metadata["uid"] = self.new_uid()
        metadata["creationTimestamp"] = format_timestamp(self._clock.seconds())
        if "spec" in obj:
            metadata["generation"] = 1
        self._defaults(resource, obj)
        rv = self._bump()
        metadata["resourceVersion"] = str(rv)
        stored = StoredObject(obj, rv)
        self._objects[resource].setdefault(namespace, {})[name] = stored
        self._emit(WatchEvent("ADDED", resource, stored))
        return stored

    def update(
        self, resource: ResourceType, obj: JSONDict, *, expected_rv: int | None = None
    ) -> StoredObject:
        """Replace the stored object named by ``obj`` with ``obj`` (ownership passes).

        ``expected_rv``, when given, must be the stored object's resourceVersion, else
        `StatusError` 409 ``Conflict``; a missing object is 404 ``NotFound``. uid and
        creationTimestamp are kept; generation increases when ``spec`` changed. An update
        that changes nothing keeps the old resourceVersion and sends no event.
        """
        self._check_kind(resource, obj)
        metadata = obj.setdefault("metadata", {})
        name = metadata.get("name", "")
        namespace = metadata.get("namespace", "") if resource.namespaced else ""
        old = self.get(resource, namespace, name)
        if old is None:
            raise resource.not_found(name)
        if expected_rv is not None and expected_rv != old.rv:
            raise StatusError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.qualified_name} "{name}": the '
                "object has been modified; please apply your changes to the latest version "
                "and try again",
                {"name": name, "group": resource.group, "kind": resource.plural}
                if resource.group else {"name": name, "kind": resource.plural},
            )
        old_meta = old.obj["metadata"]
        for key in ("uid", "creationTimestamp", "deletionTimestamp"):
            if key in old_meta:
                metadata[key] = old_meta[key]
        if "generation" in old_meta or "spec" in obj:
            generation = old_meta.get("generation", 1)
            if obj.get("spec") != old.obj.get("spec"):
                generation += 1
            metadata["generation"] = generation
        metadata["resourceVersion"] = old_meta["resourceVersion"]
        if obj == old.obj:
            return old
        rv = self._bump()
        metadata["resourceVersion"] = str(rv)
        stored = StoredObject(obj, rv)
        self._objects[resource][namespace][name] = stored
        self._emit(WatchEvent("MODIFIED", resource, stored, old))
        return stored

    def delete(self, resource: ResourceType, namespace: str, name: str) -> StoredObject:
        """Remove the object and return its final state (carrying the deletion's resourceVersion).

        Raises `StatusError` 404 when there is no such object.
        """
        namespace = namespace if resource.namespaced else ""
        names = self._objects[resource].get(namespace, {})
        old = names.pop(name, None)
        if old is None:
            raise resource.not_found(name)
        if not names:
            self._objects[resource].pop(namespace, None)
        final = old.copy()
        rv = self._bump()
        final["metadata"]["resourceVersion"] = str(rv)
        stored = StoredObject(final, rv)
        self._emit(WatchEvent("DELETED", resource, stored, old))
        return stored

    # -- watches --------------------------------------------------------------

    def _emit(self, event: WatchEvent) -> None:
        history = self._history[event.resource]
        history.append(event)
        while len(history) > self.history_limit:
            self._floor[event.resource] = history.popleft().rv
        for watcher in list(self._watchers[event.resource]):
            watcher.deliver(event)

    def add_watcher(self, resource: ResourceType, watcher: Watcher) -> None:
        """Deliver every later event of ``resource`` to ``watcher``."""
        self._watchers[resource][watcher] = None

    def remove_watcher(self, resource: ResourceType, watcher: Watcher) -> None:
        """Stop delivering events to ``watcher`` (no error if it was not registered)."""
        self._watchers[resource].pop(watcher, None)

    def watcher_count(self) -> int:
        """How many watchers are registered over all resources."""
        return sum(len(w) for w in self._watchers.values())

    def events_since(self, resource: ResourceType, rv: int) -> builtins.list[WatchEvent]:
        """The events of ``resource`` after resourceVersion ``rv``, oldest first.

        Raises `StatusError` 410 ``Expired`` when events after ``rv`` were already dropped
        from the bounded history.
        """
        floor = self._floor[resource]
        if rv < floor:
            raise StatusError(
                410, "Expired", f"too old resource version: {rv} ({floor + 1})"
            )
        history = self._history[resource]
        if not history or history[-1].rv <= rv:
            return []
        if history[0].rv > rv:
            return list(history)
        # Histories are ordered by rv: walk back from the newest until rv.
        found: builtins.list[WatchEvent] = []
        for event in reversed(history):
            if event.rv <= rv:
                break
            found.append(event)
        found.reverse()
        return found

    def compact(self) -> None:
        """Forget all history, as an etcd compaction does: every older resourceVersion expires."""
        for resource in self.resource_types:
            self._history[resource].clear()
            self._floor[resource] = self._rv


def _validate_name(resource: ResourceType, name: Any) -> None:
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 253
        or name in (".", "..")
        or any(c in name for c in "/%")
    ):
        raise StatusError(
            422,
            "Invalid",
            f'{resource.kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": '
            "a valid name must not be empty, '.', '..', or contain '/' or '%'",
            {"name": str(name), "kind": resource.kind},
        )
