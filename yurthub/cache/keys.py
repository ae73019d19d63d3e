"""Cache keys: which object of which component, and where it lives on disk.

The layout is OpenYurt's, so an existing OpenYurt cache directory is read as it is::

    <dir>/<component>/<resource>.<version>.<group|core>/<namespace>/<name>   (namespaced)
    <dir>/<component>/<resource>.<version>.<group|core>/<name>               (cluster-scoped)

Every part is validated before a key exists (`InvalidKey` otherwise): no part can be empty,
``.`` or ``..``, contain ``/``, NUL or anything outside the characters Kubernetes allows in
that position, or be longer than Kubernetes allows, so no key can name a path outside the
cache directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_COMPONENT = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_RESOURCE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_VERSION = re.compile(r"^v[0-9]+([a-z]+[0-9]+)?$")
_GROUP = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Kubernetes path-segment names: anything but "/" and "%", not "." or ".."; we are stricter
# and allow the characters real object names use (DNS subdomains, plus ":" and "_").
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._:-]{0,251}[A-Za-z0-9_])?$")


class InvalidKey(ValueError):
    """A key part that cannot name a cached object; the message says which and why."""


@dataclass(frozen=True, slots=True)
class GVR:
    """A resource of an API group and version (group ``""`` is the core group)."""

    group: str
    version: str
    resource: str

    def __post_init__(self) -> None:
        if self.group and (len(self.group) > 253 or not _GROUP.match(self.group)):
            raise InvalidKey(f"invalid API group {self.group!r}")
        if not _VERSION.match(self.version):
            raise InvalidKey(f"invalid API version {self.version!r}")
        if not _RESOURCE.match(self.resource):
            raise InvalidKey(f"invalid resource {self.resource!r}")

    @property
    def dirname(self) -> str:
        """``pods.v1.core``, ``endpointslices.v1.discovery.k8s.io``."""
        return f"{self.resource}.{self.version}.{self.group or 'core'}"

    @classmethod
    def from_dirname(cls, text: str) -> GVR:
        """Parse a directory name written by `dirname`."""
        resource, _, rest = text.partition(".")
        version, _, group = rest.partition(".")
        if not group:
            raise InvalidKey(f"not a resource directory: {text!r}")
        return cls("" if group == "core" else group, version, resource)


@dataclass(frozen=True, slots=True)
class CacheKey:
    """One cached object of one component; ``namespace`` is ``""`` when cluster-scoped."""

    component: str
    gvr: GVR
    namespace: str
    name: str

    def __post_init__(self) -> None:
        check_component(self.component)
        if self.namespace and not _NAMESPACE.match(self.namespace):
            raise InvalidKey(f"invalid namespace {self.namespace!r}")
        check_name(self.name)

    @classmethod
    def trusted(cls, component: str, gvr: GVR, namespace: str, name: str) -> CacheKey:
        """A key from parts that were validated already, as a key (the object index
        rebuilding keys for a list): equal to ``CacheKey(...)`` of the same parts, made
        without checking them again, and sharing the strings it is given."""
        key = _new(cls)
        _set_component(key, component)
        _set_gvr(key, gvr)
        _set_namespace(key, namespace)
        _set_name(key, name)
        return key

    @property
    def parts(self) -> tuple[str, ...]:
        """The path components below the cache directory."""
        if self.namespace:
            return (self.component, self.gvr.dirname, self.namespace, self.name)
        return (self.component, self.gvr.dirname, self.name)


# The slots' own setters: they bypass the frozen dataclass's __setattr__ (for `trusted`).
_new = object.__new__
_set_component, _set_gvr, _set_namespace, _set_name = (
    CacheKey.__dict__[part].__set__ for part in ("component", "gvr", "namespace", "name")
)


def check_component(component: str) -> str:
    """``component`` if it can name a cache directory, else `InvalidKey`."""
    if not _COMPONENT.match(component) or ".." in component:
        raise InvalidKey(f"invalid component {component!r}")
    return component


def check_name(name: str) -> str:
    """``name`` if it can name a cached object (a file), else `InvalidKey`."""
    if not _NAME.match(name) or ".." in name:
        raise InvalidKey(f"invalid object name {name!r}")
    return name
