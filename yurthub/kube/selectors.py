"""Kubernetes label and field selectors, parsed and matched as kube-apiserver does.

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``
(exists), ``!k`` (does not exist), ``k>n``/``k<n``, joined by commas. Field selectors:
``f=v``, ``f==v``, ``f!=v`` joined by commas (``\\,``, ``\\=`` and ``\\\\`` escape), over the
fields a resource supports; an unknown field is an error, as the real server answers 400.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FieldSelector", "LabelSelector", "SelectorError", "field_value"]


class SelectorError(ValueError):
    """A selector did not parse, or names a field the resource does not support."""


_KEY = re.compile(
    r"^(?:[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_SET = re.compile(r"^(?P<key>[^\s!=<>(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_COMPARE = re.compile(r"^(?P<key>[^\s!=<>(),]+)\s*(?P<op>==|!=|=|>|<)\s*(?P<value>[^\s!=<>(),]*)$")


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        if self.op in ("!=", "notin"):
            return not present or labels[self.key] not in self.values
        if not present:
            return False
        try:
            have, want = int(labels[self.key]), int(self.values[0])
        except ValueError:
            return False
        return have > want if self.op == ">" else have < want


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unable to parse requirement: unbalanced ')' in {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise SelectorError(f"unable to parse requirement: unbalanced '(' in {text!r}")
    parts.append("".join(current))
    return parts


def _check_key(key: str) -> str:
    if not _KEY.match(key):
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if not _VALUE.match(value):
        raise SelectorError(f"unable to parse requirement: invalid label value {value!r}")
    return value


class LabelSelector:
    """A parsed label selector; the empty selector matches everything."""

    def __init__(self, requirements: tuple[_Requirement, ...] = ()) -> None:
        self._requirements = requirements

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        """Parse ``text``; raise `SelectorError` with kube-apiserver-like wording if invalid."""
        if text is None or not text.strip():
            return cls()
        requirements: list[_Requirement] = []
        for raw in _split_top_level(text):
            part = raw.strip()
            if not part:
                raise SelectorError(f"unable to parse requirement: empty requirement in {text!r}")
            if part.startswith("!"):
                requirements.append(_Requirement(_check_key(part[1:].strip()), "!exists"))
                continue
            found = _SET.match(part)
            if found:
                values = tuple(
                    _check_value(v.strip()) for v in found["values"].split(",") if v.strip()
                )
                if not values:
                    raise SelectorError(
                        f"unable to parse requirement: for 'in', 'notin' operators, values "
                        f"set can't be empty in {part!r}"
                    )
                requirements.append(_Requirement(_check_key(found["key"]), found["op"], values))
                continue
            found = _COMPARE.match(part)
            if found:
                op = "=" if found["op"] == "==" else found["op"]
                value = found["value"]
                if op in (">", "<") and not value.lstrip("-").isdigit():
                    raise SelectorError(
                        f"unable to parse requirement: for 'Gt', 'Lt' operators, the value "
                        f"must be an integer in {part!r}"
                    )
                requirements.append(
                    _Requirement(_check_key(found["key"]), op, (_check_value(value),))
                )
                continue
            if re.fullmatch(r"[^\s!=<>(),]+", part):
                requirements.append(_Requirement(_check_key(part), "exists"))
                continue
            raise SelectorError(f"unable to parse requirement: {part!r}")
        return cls(tuple(requirements))

    @property
    def empty(self) -> bool:
        """True when the selector matches every object."""
        return not self._requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether an object with ``labels`` is selected."""
        labels = labels or {}
        return all(r.matches(labels) for r in self._requirements)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string a field selector compares for dotted ``path`` (``""`` when absent)."""
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part)
        if value is None:
            return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _split_escaped(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


class FieldSelector:
    """A parsed field selector over a resource's supported fields; empty matches everything."""

    def __init__(self, terms: tuple[tuple[str, str, bool], ...] = ()) -> None:
        self._terms = terms  # (path, value, equal)
        self._names = {v for p, v, eq in terms if p == "metadata.name" and eq}

    @classmethod
    def parse(cls, text: str | None, supported: Mapping[str, str]) -> FieldSelector:
        """Parse ``text`` for a resource supporting ``supported`` (label -> dotted path).

        Raises `SelectorError` on syntax errors and on unsupported fields
        (``field label not supported: <label>``).
        """
        if text is None or not text.strip():
            return cls()
        terms: list[tuple[str, str, bool]] = []
        for raw in _split_escaped(text, ","):
            part = raw.strip()
            if not part:
                continue
            found = re.match(r"^(?P<key>[^=!]+?)\s*(?P<op>==|!=|=)(?P<value>.*)$", part)
            if not found:
                raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
            key = found["key"].strip()
            if key not in supported:
                raise SelectorError(f"field label not supported: {key}")
            terms.append((supported[key], _unescape(found["value"]), found["op"] != "!="))
        return cls(tuple(terms))

    @property
    def empty(self) -> bool:
        """True when the selector matches every object."""
        return not self._terms

    @property
    def names(self) -> set[str]:
        """The names required by ``metadata.name=`` terms (empty when none)."""
        return self._names

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` is selected."""
        for path, value, equal in self._terms:
            if (field_value(obj, path) == value) != equal:
                return False
        return True


# Field selectors kube-apiserver supports beyond metadata.name and metadata.namespace,
# per (group, resource): the selector label and the dotted path it reads.
POD_FIELDS = (
    ("spec.nodeName", "spec.nodeName"),
    ("spec.restartPolicy", "spec.restartPolicy"),
    ("spec.schedulerName", "spec.schedulerName"),
    ("spec.serviceAccountName", "spec.serviceAccountName"),
    ("spec.hostNetwork", "spec.hostNetwork"),
    ("status.phase", "status.phase"),
    ("status.podIP", "status.podIP"),
    ("status.nominatedNodeName", "status.nominatedNodeName"),
)
EVENT_FIELDS = tuple(
    (f"involvedObject.{f}", f"involvedObject.{f}")
    for f in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
) + (
    ("reason", "reason"),
    ("reportingComponent", "reportingComponent"),
    ("source", "source.component"),
    ("type", "type"),
)

FIELD_LABELS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("", "pods"): POD_FIELDS,
    ("", "services"): (("spec.clusterIP", "spec.clusterIP"), ("spec.type", "spec.type")),
    ("", "secrets"): (("type", "type"),),
    ("", "namespaces"): (("status.phase", "status.phase"),),
    ("", "nodes"): (("spec.unschedulable", "spec.unschedulable"),),
    ("", "events"): EVENT_FIELDS,
    ("events.k8s.io", "events"): EVENT_FIELDS,
    ("certificates.k8s.io", "certificatesigningrequests"): (("spec.signerName", "spec.signerName"),),
}


def field_paths(group: str, resource: str) -> dict[str, str]:
    """Every field selector label kube-apiserver accepts for a resource, and its path."""
    paths = {"metadata.name": "metadata.name", "metadata.namespace": "metadata.namespace"}
    paths.update(FIELD_LABELS.get((group, resource), ()))
    return paths
