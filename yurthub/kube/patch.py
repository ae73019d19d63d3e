"""The three patch formats kube-apiserver accepts for built-in types.

* `merge_patch`: JSON merge patch (RFC 7386, ``application/merge-patch+json``).
* `json_patch`: JSON patch (RFC 6902, ``application/json-patch+json``): add, remove,
  replace, move, copy, test.
* `strategic_merge_patch` (``application/strategic-merge-patch+json``): a merge patch in
  which lists of objects with a merge key (containers, env, volumes by ``name``;
  conditions by ``type``; ports by ``containerPort``/``port``; ...) are merged item by
  item instead of replaced, with the ``$patch``, ``$retainKeys``,
  ``$deleteFromPrimitiveList/`` and ``$setElementOrder/`` directives honoured.

All functions return a new document and leave their inputs untouched.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["PatchError", "json_patch", "merge_patch", "strategic_merge_patch"]


class PatchError(ValueError):
    """A patch could not be applied; ``malformed`` tells a bad patch from a failed one."""

    def __init__(self, message: str, *, malformed: bool = False) -> None:
        super().__init__(message)
        self.malformed = malformed


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch: objects merge recursively, ``null`` deletes a key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# -- JSON patch ----------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"invalid JSON pointer {path!r}", malformed=True)
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _list_index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not allow_end):
        raise PatchError(f"array index {index} out of bounds")
    return index


def _walk(doc: Any, tokens: list[str], path: str) -> Any:
    """The node ``tokens`` lead to in ``doc`` (`PatchError` if the path does not exist)."""
    node = doc
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"path {path!r} does not exist: missing {token!r}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_list_index(node, token, allow_end=False)]
        else:
            raise PatchError(f"path {path!r} does not exist")
    return node


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    return _walk(doc, tokens[:-1], path)


def _get(doc: Any, path: str) -> Any:
    return _walk(doc, _pointer(path), path)


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_list_index(parent, last, allow_end=True), value)
    else:
        raise PatchError(f"cannot add at {path!r}")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    tokens = _pointer(path)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"unable to remove nonexistent key {last!r} at {path!r}")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_list_index(parent, last, allow_end=False))
    raise PatchError(f"cannot remove at {path!r}")


def json_patch(document: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch (a list of operations) to a copy of ``document``.

    Raises `PatchError` (``malformed=True`` for a patch that is not a valid list of
    operations, else for an operation that fails, including a failed ``test``).
    """
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations", malformed=True)
    doc = copy.deepcopy(document)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise PatchError(f"invalid JSON patch operation {operation!r}", malformed=True)
        op, path = operation["op"], operation["path"]
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchError(f"operation {op!r} needs a value", malformed=True)
        if op == "add":
            doc = _add(doc, path, copy.deepcopy(operation["value"]))
        elif op == "remove":
            doc, _ = _remove(doc, path)
        elif op == "replace":
            _get(doc, path)  # the target must exist
            if _pointer(path):
                doc, _ = _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(operation["value"]))
        elif op in ("move", "copy"):
            source = operation.get("from")
            if source is None:
                raise PatchError(f"operation {op!r} needs 'from'", malformed=True)
            if op == "move":
                if path.startswith(source + "/"):
                    raise PatchError("cannot move a value into one of its children")
                doc, value = _remove(doc, source)
            else:
                value = copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value)
        elif op == "test":
            if _get(doc, path) != operation["value"]:
                raise PatchError(f"testing value {path} failed")
        else:
            raise PatchError(f"unknown JSON patch operation {op!r}", malformed=True)
    return doc


# -- strategic merge patch -----------------------------------------------------

# Lists Kubernetes merges item by item (patchStrategy "merge") and the key it uses.
_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "resourceClaims": "name",
    "conditions": "type",
    "taints": "key",
    "addresses": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "podIPs": "ip",
    "hostIPs": "ip",
    "topologySpreadConstraints": "topologyKey",
    "readinessGates": "conditionType",
}
# Lists of scalars that are merged as sets.
_MERGED_SCALAR_LISTS = {"finalizers"}
_DIRECTIVE_PREFIXES = ("$setElementOrder/", "$deleteFromPrimitiveList/", "$retainKeys")


def _merge_key(field: str | None, patch_items: list[Any], target_items: list[Any]) -> str | None:
    items = [i for i in patch_items + target_items if isinstance(i, dict)]
    if not items or len(items) != len(patch_items) + len(target_items):
        return None
    if field == "ports":
        for key in ("containerPort", "port"):
            if all(key in i or i.get("$patch") for i in items):
                return key
        return None
    if field in _MERGE_KEYS:
        return _MERGE_KEYS[field]
    if field and field.endswith("Statuses"):
        return None
    if all("name" in i or i.get("$patch") for i in items):
        return "name"
    return None


def _merge_list(field: str | None, target: Any, patch: list[Any]) -> list[Any]:
    current = list(target) if isinstance(target, list) else []
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    if field in _MERGED_SCALAR_LISTS and all(not isinstance(i, dict | list) for i in patch):
        return current + [copy.deepcopy(i) for i in patch if i not in current]
    key = _merge_key(field, patch, current)
    if key is None:
        return [_strip_directives(copy.deepcopy(i)) for i in patch]
    result = [copy.deepcopy(i) for i in current]
    for item in patch:
        position = next(
            (n for n, old in enumerate(result) if old.get(key) == item.get(key)), None
        )
        if item.get("$patch") == "delete":
            if position is not None:
                del result[position]
        elif position is None:
            result.append(_strip_directives(copy.deepcopy(item)))
        else:
            result[position] = strategic_merge_patch(result[position], item)
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_directives(v)
            for k, v in value.items()
            if k != "$patch" and not k.startswith(_DIRECTIVE_PREFIXES)
        }
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def strategic_merge_patch(target: Any, patch: Any, field: str | None = None) -> Any:
    """Apply a strategic merge patch (see the module docstring) to a copy of ``target``."""
    if not isinstance(patch, dict):
        if isinstance(patch, list):
            return _merge_list(field, target, patch)
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives(copy.deepcopy(patch))
    if directive == "delete":
        return None
    if directive is not None:
        raise PatchError(f"unknown $patch directive {directive!r}", malformed=True)
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key == "$retainKeys" or key == "$patch":
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(result.get(name), list) and isinstance(value, list):
                result[name] = [v for v in result[name] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        merged = strategic_merge_patch(result.get(key), value, key)
        if merged is None and isinstance(value, dict):
            result.pop(key, None)
        else:
            result[key] = merged
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result
