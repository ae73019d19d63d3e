"""How the simulated kube-apiserver encodes what it answers: objects, lists, Tables, events.

`negotiate` reads an ``Accept`` header the way kube-apiserver does for JSON: a Table
(``as=Table;g=meta.k8s.io;v=v1``), partial metadata (``as=PartialObjectMetadata[List]``)
or the object itself. Protobuf is never produced: a client that asks only for
``application/vnd.kubernetes.protobuf`` gets JSON, and decodes by ``Content-Type``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from yurthub.kube.tables import build_table
from yurthub.testing.objects import ResourceType, StoredObject, dumps

__all__ = [
    "Representation",
    "encode_event",
    "encode_list",
    "encode_object",
    "negotiate",
]

JSONDict = dict[str, Any]


@dataclass(frozen=True)
class Representation:
    """The form of an answer: ``object``, ``table`` or ``partial`` (meta.k8s.io ``version``)."""

    form: str = "object"
    version: str = "v1"
    include_object: str = "Metadata"


OBJECT = Representation()


def negotiate(accept: str | None, include_object: str | None = None) -> Representation:
    """Pick the representation an ``Accept`` header asks for (first one we serve wins)."""
    include = include_object if include_object in ("None", "Metadata", "Object") else "Metadata"
    for alternative in (accept or "").split(","):
        media, *pieces = alternative.split(";")
        params = {}
        for piece in pieces:
            key, _, value = piece.strip().partition("=")
            params[key.strip()] = value.strip()
        kind = params.get("as")
        if kind is None:
            if media.strip() in ("application/json", "*/*", "application/*", "",
                                 "application/yaml", "application/vnd.kubernetes.protobuf"):
                return OBJECT
            continue
        if params.get("g", "meta.k8s.io") != "meta.k8s.io":
            continue
        version = params.get("v", "v1")
        if version not in ("v1", "v1beta1"):
            continue
        if kind == "Table":
            return Representation("table", version, include)
        if kind in ("PartialObjectMetadata", "PartialObjectMetadataList"):
            return Representation("partial", version, include)
    return OBJECT


def _partial(obj: JSONDict, version: str) -> JSONDict:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": obj.get("metadata", {}),
    }


def encode_object(
    rep: Representation, resource: ResourceType, stored: StoredObject, now: float
) -> bytes:
    """One object (the answer to a get, create, update, patch) in representation ``rep``."""
    if rep.form == "table":
        return dumps(
            build_table(resource.group, resource.plural, [stored.obj], now,
                        include_object=rep.include_object, version=rep.version,
                        resource_version=str(stored.rv))
        )
    if rep.form == "partial":
        return dumps(_partial(stored.obj, rep.version))
    return stored.json()


def encode_list(
    rep: Representation,
    resource: ResourceType,
    items: Sequence[StoredObject],
    now: float,
    *,
    resource_version: int,
    continue_token: str | None = None,
    remaining: int | None = None,
) -> bytes:
    """A list answer: ``<Kind>List`` (items without kind/apiVersion), a Table or partials."""
    if rep.form == "table":
        return dumps(
            build_table(resource.group, resource.plural, [s.obj for s in items], now,
                        include_object=rep.include_object, version=rep.version,
                        resource_version=str(resource_version), continue_token=continue_token)
        )
    metadata: JSONDict = {"resourceVersion": str(resource_version)}
    if continue_token:
        metadata["continue"] = continue_token
        if remaining is not None:
            metadata["remainingItemCount"] = remaining
    if rep.form == "partial":
        return dumps({
            "kind": "PartialObjectMetadataList",
            "apiVersion": f"meta.k8s.io/{rep.version}",
            "metadata": metadata,
            "items": [_partial(s.obj, rep.version) for s in items],
        })
    head = dumps({"kind": resource.list_kind, "apiVersion": resource.api_version,
                  "metadata": metadata})
    return head[:-1] + b',"items":[' + b",".join(s.item_json() for s in items) + b"]}"


def encode_event(
    rep: Representation,
    resource: ResourceType,
    event_type: str,
    stored: StoredObject,
    now: float,
) -> bytes:
    """One watch line (JSON and a newline) carrying ``stored`` in representation ``rep``."""
    if rep.form == "object":
        return b'{"type":"' + event_type.encode() + b'","object":' + stored.json() + b"}\n"
    return (
        b'{"type":"' + event_type.encode() + b'","object":'
        + encode_object(rep, resource, stored, now) + b"}\n"
    )
