"""The node's object cache on disk: one file per object, written off the reactor thread.

`FilesystemObjectStore` keeps every cached object in memory (an `ObjectIndex`: bytes as
given, indexed per component and resource) and mirrors it to a directory in OpenYurt's
layout, ``<dir>/<component>/<resource>.<version>.<group|core>/[<namespace>/]<name>``, one
file per object holding exactly the object's bytes (files 0600, directories 0700).
Documents that are not objects (discovery) live in ``<dir>/_yurthub/<name>``; ``_yurthub``
cannot be a component name, so nothing collides.

Reads never touch the disk. Writes change the memory view at once and mark the key dirty;
ONE daemon writer thread takes all dirty keys at each turn and writes what memory holds
for them then, so a hot key is written once per turn however often it changes, and a
delete after a pending put simply removes the file. More than ``max_pending`` keys waiting
means later writes reach memory only: they are counted as dropped and the store reports
itself degraded until a ``replace`` of that resource (the next list) rewrites them. Disk
errors never reach the caller: they are counted in `StoreHealth`, the temp file is
removed, and the keys concerned stay marked until a later write or list repairs them.

Every file write is atomic and durable: a temp file ``.tmp-<random>`` in the target's
directory, write, fsync, rename over the target, fsync the directory. A delete is unlink
and fsync of the directory.

A list replacement (``replace``) must leave after a crash either the old set or the new
one, so the keys it changed are written through a journal:

1. every new object is written to a temp file beside its target
   (``.tmp-<random token of the replacement>-<index>``) and fsynced, and the directories
   holding them are fsynced;
2. the journal ``<dir>/_yurthub/journal/<id>.json`` (``{"renames": [[temp, target], ...],
   "deletes": [path, ...]}``, paths relative to ``<dir>``) is written atomically: temp
   file, fsync, rename, fsync of the journal directory. From here on the change is decided;
3. the renames are applied in journal order, then the deletes, then the directories are
   fsynced;
4. the journal is removed and its directory fsynced.

`load` first recovers: a journal whose temp files are all present, or missing only as a
prefix of its renames (those renames were applied before the crash), is rolled forward
(remaining renames, then all deletes, which are idempotent) and removed; a journal that
cannot be parsed or whose missing temp files are not such a prefix (it cannot have been
complete) is removed without being applied. Then every ``.tmp-*`` file left anywhere is
deleted: a temp file not taken by a journal belongs to a write that never happened.

`load` then reads the directory. Entries whose names cannot form a `CacheKey`, symlinks
(never followed: ``O_NOFOLLOW`` and ``lstat``), empty files, files that are not JSON
objects or have no ``metadata`` are skipped, counted in ``health.corrupt_files`` and
logged with their path. An object whose metadata has no resourceVersion loads at ``"0"``.

Decoding every file to check it and find its resourceVersion is most of a load's time, so
the writer keeps a checksum record, ``<dir>/_yurthub/checksums``: per object file its
length, CRC-32 and the resourceVersion the check above finds in those bytes (see
`ChecksumRecord`). A file whose length and CRC-32 match its entry is as the writer left
it and is taken without being decoded; any other file (changed, added or damaged behind
the record's back, or written after the record) is checked in full. Entries describe
bytes, not keys, so a record that is old, missing or unreadable costs time, never a wrong
answer; the record carries a CRC-32 of itself and is ignored whole if that does not match.
It is rewritten atomically, like any file here, when the writer is idle and enough
entries changed (`RECORD_MIN_CHANGES`; or any did, `RECORD_MAX_AGE` ago), and at `close`.
"""

from __future__ import annotations

import builtins
import errno
import json
import operator
import os
import re
import secrets
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from yurthub.cache.keys import GVR, CacheKey, InvalidKey, check_component, check_name
from yurthub.interfaces import IObjectStore

_log = Logger()

#: Directory below the cache directory for documents and journals (never a component).
DOCUMENTS_DIR = "_yurthub"
#: Directory below `DOCUMENTS_DIR` holding list-replacement journals.
JOURNAL_DIR = "journal"
#: File below `DOCUMENTS_DIR` holding the checksum record (see `ChecksumRecord`).
CHECKSUMS_NAME = "checksums"
#: Every temp file's name starts with this (never a valid key part).
TEMP_PREFIX = ".tmp-"

#: Largest file read back at load; anything larger is skipped as corrupt.
MAX_FILE_SIZE = 64 * 1024 * 1024
#: Object files read ahead together at load (`_Disk.prefetch`): enough requests in flight
#: for a disk, few descriptors open at once.
PREFETCH_BATCH = 128
#: Time per read above which a load's files are taken to come from the disk (a file in
#: the page cache takes ~3 us here, one from the disk ~80 us).
COLD_READ_SECONDS = 20e-6

#: The writer packs objects in memory (`ObjectIndex.pack`) once it has had nothing to
#: write for this long, this many per hold of the lock (~5 ms), and gives the memory
#: freed back to the system when none is left to pack.
PACK_DELAY = 0.5
PACK_CHUNK = 200

#: The idle writer rewrites the checksum record once this many of its entries changed
#: (a list's worth), and at least this share of them, or once any did and the record on
#: disk is this many seconds old. An entry missing from it costs one decode at the next
#: load (~30 us); rewriting it costs ~30 bytes per object: a trickle of watch events
#: does not rewrite it, and each change costs at most ~0.5 KB of record writes.
RECORD_MIN_CHANGES = 256
RECORD_MIN_SHARE = 1 / 16
RECORD_MAX_AGE = 600.0

_DOCUMENT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,199}$")
_RESERVED_DOCUMENT_NAMES = frozenset({JOURNAL_DIR, CHECKSUMS_NAME})
_MAX_LOGGED_PROBLEMS = 20

Covered = Callable[[CacheKey, bytes], bool]


class StoreError(Exception):
    """The cache directory cannot be used; the message is one line naming it."""


def check_document_name(name: str) -> str:
    """``name`` if it can name a document (``[a-z0-9][a-z0-9._-]*``, at most 200
    characters, not ``journal`` nor ``checksums``), else `InvalidKey`."""
    if (
        not isinstance(name, str)
        or not _DOCUMENT_NAME.match(name)
        or name in _RESERVED_DOCUMENT_NAMES
    ):
        raise InvalidKey(f"invalid document name {name!r}")
    return name


# --- resourceVersion rules -------------------------------------------------------------


def _rv_number(rv: str) -> int | None:
    if isinstance(rv, str) and 0 < len(rv) <= 40 and rv.isascii() and rv.isdigit():
        return int(rv)
    return None


def is_as_new(cached: str, new: str) -> bool:
    """True if an object cached at resourceVersion ``cached`` needs no rewrite by the same
    object at ``new``: both are decimal and ``cached >= new``, or both are the same
    non-empty opaque string. An RV that is not decimal is unknown: the write is taken."""
    a, b = _rv_number(cached), _rv_number(new)
    if a is not None and b is not None:
        return a >= b
    return bool(cached) and cached == new


def is_newer(cached: str, than: str | None) -> bool:
    """True if ``cached`` is known to be strictly newer than ``than`` (both decimal)."""
    if than is None:
        return False
    a, b = _rv_number(cached), _rv_number(than)
    return a is not None and b is not None and a > b


# --- health ----------------------------------------------------------------------------


class StoreHealth:
    """How the disk side of a store is doing, for ``/v1/readyz`` and the logs.

    ``errors`` counts failed disk operations, ``corrupt_files`` the entries skipped at load,
    ``dropped`` the writes not queued because too many were waiting, ``stale`` the objects
    whose file may differ from memory. ``degraded`` holds while anything is stale or the
    writer cannot run; ``reason`` says why and ``last_error`` is the last disk error, one
    line with its path. ``pending`` is how many keys wait for the writer right now.
    """

    def __init__(self, pending: Callable[[], int] | None = None) -> None:
        self.errors = 0
        self.corrupt_files = 0
        self.dropped = 0
        self.stale = 0
        self.degraded = False
        self.reason = ""
        self.last_error = ""
        self._pending = pending

    @property
    def pending(self) -> int:
        """Keys (and documents) waiting to be written."""
        return self._pending() if self._pending is not None else 0

    def detail(self) -> str:
        """A one-line summary: ``ok`` or ``degraded: <reason>`` and the counters."""
        counters = f"pending={self.pending} errors={self.errors} dropped={self.dropped} corrupt_files={self.corrupt_files}"
        if not self.degraded:
            return f"ok ({counters})"
        text = f"degraded: {self.reason} ({counters})"
        if self.last_error:
            text += f"; last error: {self.last_error}"
        return " ".join(text.split())

    def __repr__(self) -> str:
        return f"<StoreHealth {self.detail()}>"


# --- the in-memory view ----------------------------------------------------------------

_RV_SPACED = re.compile(rb'"resourceVersion"\s*:\s*"([^"]*)"')
_RV_MARKER = b'"resourceVersion":"'

#: What the index keeps per object: its bytes alone when `peek_resource_version` reads
#: its resourceVersion back from them (nearly always: ``metadata`` comes first), else
#: ``(resource_version, bytes)``. A bare ``bytes`` costs nothing beyond the object's own
#: bytes; a tuple and a resourceVersion string cost ~110 bytes more per object. Once
#: packed (see `ObjectIndex.pack`) it is ``(resource_version, _Packed)``.
_Slot = bytes | tuple[str, bytes]
_Entry = tuple[CacheKey, str, bytes]
_Group = tuple[str, GVR]

#: Objects smaller than this stay as they are: packing would save less than it costs.
PACK_MIN_SIZE = 256


class _Packed(bytes):
    """An object's bytes deflated (raw deflate, level 1) against its resource's preset
    dictionary: one object of the same resource. Objects of one resource share most of
    their text (field names, images, conditions), so a 2.8 KB pod packs to ~150 bytes."""

    __slots__ = ()


def _deflate(data: bytes, dictionary: bytes) -> _Packed:
    packer = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, dictionary)
    return _Packed(packer.compress(data) + packer.flush())


def _inflate(packed: bytes, dictionary: bytes | None) -> bytes:
    unpacker = zlib.decompressobj(-15, dictionary or b"")
    return unpacker.decompress(packed) + unpacker.flush()


def peek_resource_version(data: bytes) -> str | None:
    """The text of the first ``"resourceVersion":"..."`` in ``data`` (white space around
    the colon allowed, as Python's and some servers' encoders write it), if it is plain
    ASCII without escapes; else None. Not a JSON parse: the index uses it only to avoid
    keeping a resourceVersion that these bytes give back anyway, and offline lists to find
    their version without decoding every object."""
    start = data.find(_RV_MARKER)
    if start != -1:
        start += len(_RV_MARKER)
        end = data.find(b'"', start)
        if end == -1:
            return None
    else:
        spaced = _RV_SPACED.search(data)
        if spaced is None:
            return None
        start, end = spaced.span(1)
    raw = data[start:end]
    if b"\\" in raw or not raw.isascii():
        return None
    return raw.decode("ascii")


def _slot(resource_version: str, data: bytes) -> _Slot:
    if peek_resource_version(data) == resource_version:
        return data
    return (resource_version, data)


def _slot_rv(slot: _Slot) -> str:
    if isinstance(slot, tuple):
        return slot[0]
    return peek_resource_version(slot)  # type: ignore[return-value]  # peeked when stored


def _slot_data(slot: _Slot, dictionary: bytes | None = None) -> bytes:
    """The object's bytes (inflated with its resource's ``dictionary`` if packed)."""
    if isinstance(slot, tuple):
        data = slot[1]
        return _inflate(data, dictionary) if type(data) is _Packed else data
    return slot


def _slot_with_rv(slot: _Slot, resource_version: str) -> _Slot:
    """``slot`` holding the same (possibly packed) bytes at another resourceVersion."""
    data = slot[1] if isinstance(slot, tuple) else slot
    return (resource_version, data) if type(data) is _Packed else _slot(resource_version, data)


class ObjectIndex:
    """Cached objects in memory: bytes and resourceVersion by `CacheKey`, grouped per
    (component, `GVR`) and namespace, so a list costs what that resource holds.

    It applies the resourceVersion rules (`is_as_new`, `is_newer`) and keeps the bytes as
    given; it is not thread-safe (callers serialise writes). Per object it keeps only the
    name and the bytes (and the resourceVersion where the bytes do not give it back, see
    `_Slot`): component, resource and namespace are held once per group, and the keys
    that `list` answers with are built anew from those parts, equal to the keys stored.
    """

    def __init__(self) -> None:
        # (component, gvr) -> namespace ("" when cluster-scoped) -> name -> slot
        self._resources: dict[tuple[str, GVR], dict[str, dict[str, _Slot]]] = {}
        self._count = 0
        # Per resource, the preset dictionary its packed objects were deflated against
        # (never changed once set), and the (resource, namespace) buckets that may hold
        # objects not yet packed.
        self._dictionaries: dict[_Group, bytes] = {}
        self._unpacked: dict[tuple[_Group, str], None] = {}
        #: Goes up with every change, so readers can keep answers derived from the view.
        self.generation = 0

    def __len__(self) -> int:
        return self._count

    def _slot_of(self, key: CacheKey) -> _Slot | None:
        by_namespace = self._resources.get((key.component, key.gvr))
        names = by_namespace.get(key.namespace) if by_namespace else None
        return names.get(key.name) if names else None

    def entry(self, key: CacheKey) -> tuple[str, bytes] | None:
        """``(resource_version, bytes)`` of a cached object, or None."""
        slot = self._slot_of(key)
        if slot is None:
            return None
        return _slot_rv(slot), self._data((key.component, key.gvr), slot)

    def get(self, key: CacheKey) -> bytes | None:
        """The bytes of a cached object, or None."""
        slot = self._slot_of(key)
        return self._data((key.component, key.gvr), slot) if slot is not None else None

    def stored(self, key: CacheKey) -> tuple[bytes, str | None] | None:
        """The bytes of a cached object and its resourceVersion where the index keeps it
        apart from them (None where `peek_resource_version` reads it back from the
        bytes), or None if nothing is cached: what the writer needs to record a file."""
        slot = self._slot_of(key)
        if slot is None:
            return None
        if isinstance(slot, tuple):
            return self._data((key.component, key.gvr), slot), slot[0]
        return slot, None

    def _data(self, group: _Group, slot: _Slot) -> bytes:
        return _slot_data(slot, self._dictionaries.get(group))

    def _groups(
        self, component: str, gvr: GVR, namespace: str | None
    ) -> builtins.list[tuple[str, dict[str, _Slot]]]:
        """``[(namespace, {name: slot})]`` of a resource in one namespace or all."""
        by_namespace = self._resources.get((component, gvr))
        if not by_namespace:
            return []
        if namespace:
            names = by_namespace.get(namespace)
            return [(namespace, names)] if names else []
        return list(by_namespace.items())

    def list(
        self, component: str, gvr: GVR, namespace: str | None = None
    ) -> builtins.list[tuple[CacheKey, bytes]]:
        """``[(key, bytes)]`` of one resource, in one namespace or all (None or ``""``),
        sorted by namespace and name."""
        trusted = CacheKey.trusted
        dictionary = self._dictionaries.get((component, gvr))
        out: builtins.list[tuple[CacheKey, bytes]] = []
        for ns, names in sorted(self._groups(component, gvr, namespace), key=_first):
            out.extend(
                (trusted(component, gvr, ns, name), _slot_data(names[name], dictionary))
                for name in sorted(names)
            )
        return out

    def components(self) -> builtins.list[str]:
        """Components with anything cached, sorted."""
        return sorted({component for component, _ in self._resources})

    def entries(self) -> Iterator[_Entry]:
        """Every cached ``(key, resource_version, bytes)``."""
        trusted = CacheKey.trusted
        for (component, gvr), by_namespace in builtins.list(self._resources.items()):
            dictionary = self._dictionaries.get((component, gvr))
            for ns, names in builtins.list(by_namespace.items()):
                for name, slot in builtins.list(names.items()):
                    yield (
                        trusted(component, gvr, ns, name),
                        _slot_rv(slot),
                        _slot_data(slot, dictionary),
                    )

    def set(self, key: CacheKey, resource_version: str, data: bytes) -> None:
        """Store an object whatever the cached copy's resourceVersion."""
        self._set_slot(key, _slot(resource_version, data))

    def _set_slot(self, key: CacheKey, slot: _Slot) -> None:
        by_namespace = self._resources.get((key.component, key.gvr))
        if by_namespace is None:
            by_namespace = self._resources[(key.component, key.gvr)] = {}
        names = by_namespace.get(key.namespace)
        if names is None:
            names = by_namespace[key.namespace] = {}
        if key.name not in names:
            self._count += 1
        names[key.name] = slot
        self._unpacked[((key.component, key.gvr), key.namespace)] = None
        self.generation += 1

    def fill(self, component: str, gvr: GVR, namespace: str, slots: dict[str, _Slot]) -> None:
        """Take the slots a load read from one directory (names already checked), as
        `_set_slot` of each would: a bucket is filled at once rather than key by key."""
        if not slots:
            return
        group = (component, gvr)
        by_namespace = self._resources.get(group)
        if by_namespace is None:
            by_namespace = self._resources[group] = {}
        names = by_namespace.get(namespace)
        if names is None:
            by_namespace[namespace] = slots
            self._count += len(slots)
        else:
            self._count += sum(1 for name in slots if name not in names)
            names.update(slots)
        self._unpacked[(group, namespace)] = None
        self.generation += 1

    def forget_versions(self) -> None:
        """Treat every cached object as of an unknown resourceVersion, so the next copy of
        it is taken whatever its version (the node moved to another cluster, whose
        versions do not continue these)."""
        for by_namespace in self._resources.values():
            for names in by_namespace.values():
                for name, slot in names.items():
                    names[name] = _slot_with_rv(slot, "")
        self.generation += 1

    def remove(self, key: CacheKey) -> bool:
        """Forget an object; True if it was cached."""
        by_namespace = self._resources.get((key.component, key.gvr))
        names = by_namespace.get(key.namespace) if by_namespace else None
        if not names or names.pop(key.name, None) is None:
            return False
        self._count -= 1
        self.generation += 1
        if not names:
            del by_namespace[key.namespace]  # type: ignore[union-attr]
            if not by_namespace:
                del self._resources[(key.component, key.gvr)]
        return True

    def put(self, key: CacheKey, resource_version: str, data: bytes) -> bool:
        """Store an object unless the cached copy is as new (`is_as_new`); True if stored."""
        slot = self._slot_of(key)
        if slot is not None and is_as_new(_slot_rv(slot), resource_version):
            return False
        self.set(key, resource_version, data)
        return True

    def delete(self, key: CacheKey, resource_version: str | None = None) -> bool:
        """Forget an object unless the cached copy is newer than ``resource_version``;
        True if it was removed."""
        slot = self._slot_of(key)
        if slot is None or is_newer(_slot_rv(slot), resource_version):
            return False
        return self.remove(key)

    def replace(
        self,
        component: str,
        gvr: GVR,
        namespace: str | None,
        objects: Mapping[CacheKey, tuple[str, bytes]],
        list_resource_version: str,
        covered: Covered | None = None,
    ) -> builtins.list[CacheKey]:
        """Make ``objects`` the set a list covers (see `IObjectStore.replace`); the keys
        whose cached state changed. `ValueError` if an object is outside the list's scope.
        Nothing changes if ``covered`` raises."""
        namespace = namespace or None
        if isinstance(objects, ListItems):
            return self._replace_items(
                component, gvr, namespace, objects, list_resource_version, covered
            )
        for key in objects:
            if (
                key.component != component
                or key.gvr != gvr
                or (namespace is not None and key.namespace != namespace)
            ):
                raise ValueError(
                    f"{key} is not in the list of {component} {gvr.dirname} {namespace or ''}"
                )
        # A key is built for each cached object to look it up and dropped at once unless
        # it is to be removed: nothing per object piles up.
        trusted = CacheKey.trusted
        dictionary = self._dictionaries.get((component, gvr))
        removals = []
        for ns, names in self._groups(component, gvr, namespace):
            for name, slot in names.items():
                key = trusted(component, gvr, ns, name)
                if (
                    key not in objects
                    and (covered is None or covered(key, _slot_data(slot, dictionary)))
                    and not is_newer(_slot_rv(slot), list_resource_version)
                ):
                    removals.append(key)
        changed = []
        for key in removals:
            self.remove(key)
            changed.append(key)
        for key, (rv, data) in objects.items():
            if self.put(key, rv, data):
                changed.append(key)
        return changed

    def _replace_items(
        self,
        component: str,
        gvr: GVR,
        namespace: str | None,
        items: ListItems,
        list_resource_version: str,
        covered: Covered | None,
    ) -> builtins.list[CacheKey]:
        """`replace` for a `ListItems`: its objects are looked up and taken over by
        namespace and name, so a key is made only for each object that changes."""
        listed = items._by_namespace
        outside = [ns for ns in listed if namespace is not None and ns != namespace]
        if items.component != component or items.gvr != gvr or outside:
            key = (
                next(iter(items))
                if not outside
                else CacheKey.trusted(
                    items.component, items.gvr, outside[0], next(iter(listed[outside[0]]))
                )
            )
            raise ValueError(
                f"{key} is not in the list of {component} {gvr.dirname} {namespace or ''}"
            )
        trusted = CacheKey.trusted
        dictionary = self._dictionaries.get((component, gvr))
        removals = []
        for ns, names in self._groups(component, gvr, namespace):
            kept = listed.get(ns) or {}
            for name, slot in names.items():
                if name in kept:
                    continue
                key = trusted(component, gvr, ns, name)
                if (covered is None or covered(key, _slot_data(slot, dictionary))) and not is_newer(
                    _slot_rv(slot), list_resource_version
                ):
                    removals.append(key)
        changed = []
        for key in removals:
            self.remove(key)
            changed.append(key)
        rvs = items._rvs
        for ns, new in listed.items():
            if not new:
                continue
            by_namespace = self._resources.get((component, gvr))
            if by_namespace is None:
                by_namespace = self._resources[(component, gvr)] = {}
            bucket = by_namespace.get(ns)
            if bucket is None:
                bucket = by_namespace[ns] = {}
            for name, data in new.items():
                # Without an entry in rvs, the bytes give the resourceVersion back.
                rv = rvs.get((ns, name)) if rvs else None
                cached = bucket.get(name)
                if cached is None:
                    self._count += 1
                elif is_as_new(_slot_rv(cached), _listed_rv(rv, data)):
                    continue
                bucket[name] = data if rv is None else (rv, data)
                self._unpacked[((component, gvr), ns)] = None
                self.generation += 1
                changed.append(trusted(component, gvr, ns, name))
        return changed

    @property
    def packable(self) -> bool:
        """True while some objects may not be packed yet (see `pack`)."""
        return bool(self._unpacked)

    def pack(self, budget: int) -> int:
        """Deflate up to ``budget`` objects not yet packed, each against its resource's
        preset dictionary (the first object of the resource packed); how many were
        packed. Reads are unaffected (`get` and `list` give the same bytes back) and
        `generation` does not move. Packing keeps 10,000 pods in ~2 MB instead of ~29.
        Not thread-safe, as every write: the caller holds the store's lock; a reader
        without it sees each slot either packed or not."""
        done = 0
        while self._unpacked and done < budget:
            bucket = next(iter(self._unpacked))
            group, namespace = bucket
            by_namespace = self._resources.get(group)
            names = by_namespace.get(namespace) if by_namespace else None
            finished = True
            for name in builtins.list(names or ()):
                slot = names[name]  # type: ignore[index]
                data = slot[1] if isinstance(slot, tuple) else slot
                if type(data) is _Packed or len(data) < PACK_MIN_SIZE:
                    continue
                if done >= budget:
                    finished = False
                    break
                dictionary = self._dictionaries.get(group)
                if dictionary is None:
                    dictionary = self._dictionaries[group] = bytes(data)
                packed = _deflate(data, dictionary)
                if len(packed) + 64 < len(data):
                    names[name] = (_slot_rv(slot), packed)  # type: ignore[index]
                done += 1
            if finished:
                del self._unpacked[bucket]
        return done


def _listed_rv(rv: str | None, data: bytes) -> str:
    """The resourceVersion of a `ListItems` object: ``rv`` if it was kept apart, else
    what its bytes give back."""
    return rv if rv is not None else peek_resource_version(data) or ""


def _first(pair: tuple[str, Any]) -> str:
    return pair[0]


class ListItems(Mapping[CacheKey, tuple[str, bytes]]):
    """A list's objects as `IObjectStore.replace` takes them, ``{key: (resourceVersion,
    bytes)}``, in the order they were added (grouped by namespace); what the cache
    manager decodes a list answer into.

    Per object it holds only the name and the bytes, plus the resourceVersion where
    `peek_resource_version` does not read it back from the bytes; keys and pairs are
    made as they are asked for and dropped after. Decoding a list then leaves nothing
    per object between the names the cache goes on holding (10,000 keys and tuples
    allocated beside those names kept ~5 MB of the allocator's memory in the process
    after they were freed), and `ObjectIndex.replace` takes its objects over without
    making a key for each.
    """

    def __init__(self, component: str, gvr: GVR) -> None:
        self.component = component
        self.gvr = gvr
        self._by_namespace: dict[str, dict[str, bytes]] = {}
        self._rvs: dict[tuple[str, str], str] = {}
        self._count = 0

    def add(self, key: CacheKey, resource_version: str, data: bytes) -> None:
        """Add (or replace) an object; ``key`` must be of this list's component and
        resource, and is not kept."""
        if key.component != self.component or key.gvr != self.gvr:
            raise ValueError(f"{key} is not an object of {self.component} {self.gvr.dirname}")
        names = self._by_namespace.get(key.namespace)
        if names is None:
            names = self._by_namespace[key.namespace] = {}
        if key.name not in names:
            self._count += 1
        names[key.name] = data
        if peek_resource_version(data) != resource_version:
            self._rvs[(key.namespace, key.name)] = resource_version
        elif self._rvs:
            self._rvs.pop((key.namespace, key.name), None)

    def _pair(self, namespace: str, name: str, data: bytes) -> tuple[str, bytes]:
        rv = self._rvs.get((namespace, name)) if self._rvs else None
        return (peek_resource_version(data) if rv is None else rv, data)  # type: ignore[return-value]

    def __getitem__(self, key: CacheKey) -> tuple[str, bytes]:
        if key not in self:
            raise KeyError(key)
        return self._pair(key.namespace, key.name, self._by_namespace[key.namespace][key.name])

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, CacheKey) or key.component != self.component or key.gvr != self.gvr:
            return False
        names = self._by_namespace.get(key.namespace)
        return names is not None and key.name in names

    def __iter__(self) -> Iterator[CacheKey]:
        trusted, component, gvr = CacheKey.trusted, self.component, self.gvr
        for namespace, names in self._by_namespace.items():
            for name in names:
                yield trusted(component, gvr, namespace, name)

    def __len__(self) -> int:
        return self._count

    def items(self) -> Iterator[tuple[CacheKey, tuple[str, bytes]]]:  # type: ignore[override]
        """``(key, (resourceVersion, bytes))`` of every object, made one at a time."""
        trusted, component, gvr = CacheKey.trusted, self.component, self.gvr
        for namespace, names in self._by_namespace.items():
            for name, data in names.items():
                yield trusted(component, gvr, namespace, name), self._pair(namespace, name, data)


class IndexedReads:
    """The read side both stores share: every read answered from the `ObjectIndex`."""

    _index: ObjectIndex
    _lock: threading.Lock

    def get(self, key: CacheKey) -> bytes | None:
        """The bytes of the object at ``key``, or None."""
        return self._index.get(key)

    def list(
        self, component: str, gvr: GVR, namespace: str | None = None
    ) -> list[tuple[CacheKey, bytes]]:
        """``[(key, bytes)]`` of a component's objects of ``gvr`` in ``namespace`` (all if
        None or ``""``), sorted by namespace and name."""
        return self._index.list(component, gvr, namespace)

    def components(self) -> builtins.list[str]:
        """Components that have anything cached."""
        return self._index.components()

    @property
    def generation(self) -> int:
        """A number that changes whenever the cached objects change."""
        return self._index.generation

    def forget_versions(self) -> None:
        """The cached objects' resourceVersions stop counting (see `ObjectIndex`)."""
        with self._lock:
            self._index.forget_versions()


# --- the disk --------------------------------------------------------------------------


class _Disk:
    """The file operations the store uses, one method per system call that matters, so
    tests can inject faults (ENOSPC, EIO) or a crash at any step."""

    #: Descriptors `prefetch` opened, by path, until `read` takes them.
    _prefetched: dict[str, int]

    def __init__(self) -> None:
        self._prefetched = {}

    def makedir(self, path: str) -> bool:
        """Create a 0700 directory; True if created, False if a directory (not a symlink)
        is already there."""
        try:
            os.mkdir(path, 0o700)
            return True
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise OSError(errno.ENOTDIR, "exists and is not a directory", path) from None
            return False

    def create_temp(self, directory: str, name: str | None = None) -> tuple[int, str]:
        """A new 0600 temp file in ``directory`` (named ``name``, which must start with
        `TEMP_PREFIX`, else a random name): its descriptor and path."""
        path = os.path.join(directory, name or TEMP_PREFIX + secrets.token_hex(8))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(path, flags, 0o600), path

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, source: str, target: str) -> None:
        os.rename(source, target)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def prefetch(self, paths: Iterable[str]) -> None:
        """Open these files and ask the kernel to read them ahead (``WILLNEED``), all at
        once: files not in the page cache (after a reboot, or evicted) then come from the
        disk in parallel rather than one `read` at a time. A hint only: a file that cannot
        be opened is skipped (its `read` finds out). The next `read` of each takes its
        open descriptor; `drop_prefetched` closes the ones not read."""
        held = self._prefetched
        for path in paths:
            if path in held:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            held[path] = fd
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass

    def drop_prefetched(self) -> None:
        """Close the descriptors `prefetch` opened that no `read` took."""
        held, self._prefetched = self._prefetched, {}
        for fd in held.values():
            os.close(fd)

    def read(self, path: str, expected: int | None = None) -> bytes:
        """A regular file's bytes, never through a symlink. ``expected`` is the length the
        caller believes it has (a checksum record's): then it is not asked (no ``fstat``),
        and a file of another length is read to its end all the same."""
        fd = self._prefetched.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if expected is None or not 0 <= expected <= MAX_FILE_SIZE:
                expected = os.fstat(fd).st_size
                if expected > MAX_FILE_SIZE:
                    raise OSError(errno.EFBIG, "larger than the largest cached object", path)
            # Nearly always one read, of the size expected, does it (saves a read per
            # file at load); a file of another size is read to its end, up to the limit.
            first = os.read(fd, expected + 1)
            if len(first) == expected:
                return first
            chunks = [first]
            total = len(first)
            while total <= MAX_FILE_SIZE and (chunk := os.read(fd, max(expected + 1, 65536))):
                chunks.append(chunk)
                total += len(chunk)
            if total > MAX_FILE_SIZE:
                raise OSError(errno.EFBIG, "larger than the largest cached object", path)
            return b"".join(chunks)
        finally:
            os.close(fd)

    # composite operations, made of the steps above

    def write_temp(self, directory: str, data: bytes, name: str | None = None) -> str:
        """Write ``data`` to a new fsynced temp file in ``directory`` (see `create_temp`
        for ``name``); its path. On an error the temp file is removed and the error
        raised."""
        fd, path = self.create_temp(directory, name) if name else self.create_temp(directory)
        try:
            self.write(fd, data)
            self.fsync(fd)
        except OSError:
            _quietly(self.close, fd)
            _quietly(self.unlink, path)
            raise
        except BaseException:
            _quietly(os.close, fd)
            raise
        try:
            self.close(fd)
        except OSError:
            _quietly(self.unlink, path)
            raise
        return path

    def write_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` by a file holding ``data``: temp file, fsync, rename (the
        caller fsyncs the directory). No temp file is left on an error."""
        temp = self.write_temp(os.path.dirname(path), data)
        try:
            self.rename(temp, path)
        except OSError:
            _quietly(self.unlink, temp)
            raise


def _temp_name(token: str, index: int) -> str:
    return f"{TEMP_PREFIX}{token}-{index}"


def _json_text(text: str) -> bytes:
    """``text`` as a JSON string, ASCII-only bytes."""
    return encode_basestring_ascii(text).encode("ascii")


def _quietly(operation: Callable[..., object], *args: Any) -> None:
    try:
        operation(*args)
    except OSError:
        pass


def _describe(exc: OSError, path: str) -> str:
    code = errno.errorcode.get(exc.errno or 0, "error")
    text = f"{code}: {exc.strerror or exc}: {path}"
    return " ".join(text.split())


# --- the checksum record ---------------------------------------------------------------

_RECORD_MAGIC = b"yurthub-checksums 1"

#: An entry of the record: ``length << 32 | crc32`` of a file's bytes when
#: `peek_resource_version` reads the resourceVersion a load would find back from them,
#: else that and the resourceVersion. One int per object: 10,000 entries take ~0.7 MB.
_Signature = int | tuple[int, str]


def _signature(data: bytes, resource_version: str) -> _Signature:
    """The record entry of ``data``, whose resourceVersion (as a load finds it) is
    ``resource_version``."""
    signature = len(data) << 32 | zlib.crc32(data)
    if peek_resource_version(data) == resource_version:
        return signature
    return (signature, resource_version)


def _written_signature(data: bytes, kept: str | None) -> _Signature | None:
    """The record entry of bytes the writer wrote for an object the index holds at
    resourceVersion ``kept`` (None: the one `peek_resource_version` reads from them), or
    None if a load would refuse them.

    The cache manager decoded these bytes and took the resourceVersion from their
    ``metadata``; where the first one in the bytes is that one, it is what a load's full
    check finds too, and nothing is decoded here. Anything else (a version kept apart
    from the bytes, none at all, bytes that do not look like an object) is decoded, so
    the record never says more than a load would find."""
    peeked = peek_resource_version(data)
    rv = peeked if kept is None else kept
    if rv and peeked == rv and data[:1] == b"{" and data[-1:] == b"}":
        return len(data) << 32 | zlib.crc32(data)
    found = _resource_version(data)
    if isinstance(found, _Corrupt):
        return None
    return _signature(data, found)


def _recorded_length(entry: Any) -> int | None:
    """The file length a record ``entry`` (as decoded from the file) gives, if any."""
    if type(entry) is list and len(entry) == 2:
        entry = entry[0]
    return entry >> 32 if type(entry) is int and entry >= 0 else None


def _recorded_version(entry: Any, signature: int) -> str | None:
    """The resourceVersion a record ``entry`` (as decoded from the file) of the
    ``[signature, resourceVersion]`` form keeps for bytes whose length and CRC-32 make
    ``signature``; None unless it matches. (A bare matching signature says the bytes give
    their version back: `FilesystemObjectStore._read_object` keeps them alone.)"""
    if type(entry) is list and len(entry) == 2 and entry[0] == signature:
        rv = entry[1]
        return rv if type(rv) is str else None
    return None


class ChecksumRecord:
    """What the writer knows of the object files it wrote or loaded: per directory
    (relative to the cache directory, as in `CacheKey.parts`) and file name, a
    `_Signature`. Writer-thread only.

    An entry is a fact about bytes, not about a key: a load uses it only for a file whose
    length and CRC-32 are the ones recorded, so an entry that a later write, a failed
    write or a crash left behind is never wrong, only unused. ``changes`` counts entries
    changed since the record was last written.

    On disk: one line ``yurthub-checksums 1 <crc32 of the rest, hex> <length of the
    rest>``, then a JSON object ``{directory: {name: signature}}``, a signature being the
    `_Signature` int or ``[int, resourceVersion]``.
    """

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, _Signature]] = {}
        self.changes = 0

    @property
    def worth_writing(self) -> bool:
        """True once enough entries changed to rewrite the record (`RECORD_MIN_CHANGES`,
        `RECORD_MIN_SHARE`)."""
        changes = self.changes
        if changes < RECORD_MIN_CHANGES:
            return False
        entries = sum(len(section) for section in self.sections.values())
        return changes >= RECORD_MIN_SHARE * entries

    @staticmethod
    def directory_of(key: CacheKey) -> str:
        """The record's directory for ``key``'s file."""
        if key.namespace:
            return f"{key.component}/{key.gvr.dirname}/{key.namespace}"
        return f"{key.component}/{key.gvr.dirname}"

    def put(self, key: CacheKey, data: bytes, kept: str | None) -> None:
        """``data`` was written for ``key`` (see `_written_signature` for ``kept``)."""
        signature = _written_signature(data, kept)
        if signature is None:
            self.remove(key)
            return
        directory = self.directory_of(key)
        section = self.sections.get(directory)
        if section is None:
            section = self.sections[directory] = {}
        if section.get(key.name) != signature:
            section[key.name] = signature
            self.changes += 1

    def remove(self, key: CacheKey) -> None:
        """``key``'s file was removed."""
        section = self.sections.get(self.directory_of(key))
        if section is not None and section.pop(key.name, None) is not None:
            self.changes += 1

    def encode(self) -> bytes:
        """The record as its file holds it. Built into one buffer, entry by entry, so
        that no object per entry outlives its line."""
        body = bytearray(b"{")
        for directory in sorted(self.sections):
            section = self.sections[directory]
            if not section:
                del self.sections[directory]
                continue
            if len(body) > 1:
                body += b","
            body += _json_text(directory) + b":{"
            first = True
            for name, signature in section.items():
                if not first:
                    body += b","
                first = False
                if type(signature) is int:
                    body += b"%s:%d" % (_json_text(name), signature)
                else:
                    number, rv = signature  # type: ignore[misc]
                    body += b"%s:[%d,%s]" % (_json_text(name), number, _json_text(rv))
            body += b"}"
        body += b"}"
        return b"%s %08x %d\n%s" % (_RECORD_MAGIC, zlib.crc32(body), len(body), body)

    @staticmethod
    def decode(data: bytes) -> dict[str, Any] | None:
        """``{directory: {name: entry}}`` from a record file's bytes, entries as decoded
        (`_recorded_version` checks each as it is used); None unless the bytes are a
        whole record of this version."""
        head, newline, body = data.partition(b"\n")
        magic, _, rest = head.rpartition(b" ")
        magic, _, crc = magic.rpartition(b" ")
        if not newline or magic != _RECORD_MAGIC:
            return None
        try:
            if int(crc, 16) != zlib.crc32(body) or int(rest) != len(body):
                return None
            sections = json.loads(body)
        except ValueError:
            return None
        if not isinstance(sections, dict) or not all(
            isinstance(section, dict) for section in sections.values()
        ):
            return None
        return sections


# --- the writer's work -----------------------------------------------------------------


@dataclass
class _Batch:
    """One writer turn. A replacement's keys, bytes and kept resourceVersions (see
    `ObjectIndex.stored`) are parallel lists rather than a list of triples: after a
    10,000-object list that is 10,000 fewer small objects."""

    turn: int
    plain: list[tuple[CacheKey, bytes | None, str | None]]
    group: list[CacheKey]
    group_data: list[bytes | None]
    group_rvs: list[str | None]
    documents: list[tuple[str, bytes | None]]
    waiters: list[defer.Deferred[None]]


@dataclass
class _Loaded:
    index: ObjectIndex
    documents: dict[str, bytes]
    problems: list[tuple[str, str]] = field(default_factory=list)
    recovered: int = 0
    seconds: float = 0.0
    #: The checksum record as the load leaves it, how many files it could not vouch for
    #: (decoded in full), and why the record on disk was not used, if it was not.
    record: ChecksumRecord = field(default_factory=ChecksumRecord)
    checked: int = 0
    record_note: str = ""


_NEW, _LOADING, _RUNNING, _CLOSING, _CLOSED, _FAILED = (
    "new",
    "loading",
    "running",
    "closing",
    "closed",
    "failed",
)


@implementer(IObjectStore)
class FilesystemObjectStore(IndexedReads):
    """`IObjectStore` on a directory in OpenYurt's layout, written by one daemon thread.

    ``reactor`` is used only for ``callFromThread``; ``max_pending`` bounds the keys waiting
    to be written (beyond it writes reach memory only, see `StoreHealth`); ``disk`` replaces
    the file operations (tests); ``release_memory`` is called in the writer thread after
    it has packed objects (see `ObjectIndex.pack`), to hand the freed memory back. Call
    `load` once before anything else; writes made before it has fired are applied again on
    the loaded view. After `close`, writes change memory only.
    """

    def __init__(
        self,
        directory: str,
        *,
        reactor: Any = None,
        max_pending: int = 10000,
        disk: _Disk | None = None,
        release_memory: Callable[[], None] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.directory = os.path.abspath(directory)
        self.max_pending = max_pending
        self.health = StoreHealth(self._pending_count)
        self._reactor = reactor
        self._disk = disk if disk is not None else _Disk()
        #: Whether this load reads object files ahead (`_prefetching`), and the time the
        #: reads of the current batch took.
        self._reading_ahead = False
        self._read_seconds = 0.0
        self._reads = 0
        #: Called (writer thread, no lock held) once objects were packed; may be set
        #: after construction.
        self.release_memory = release_memory
        self._index = ObjectIndex()
        self._documents: dict[str, bytes] = {}
        # Everything below is shared with the writer thread and guarded by _lock.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._state = _NEW
        self._turn = 0
        self._dirty: dict[CacheKey, None] = {}
        self._group: dict[CacheKey, None] = {}
        self._dirty_documents: dict[str, None] = {}
        self._in_flight = 0
        self._waiters: list[defer.Deferred[None]] = []
        # Keys whose file may differ from memory -> the first writer turn that can fix them.
        self._stale: dict[CacheKey, int] = {}
        self._stale_documents: dict[str, int] = {}
        self._stale_cause = ""
        self._leftover_journals: list[str] = []
        self._writer_error = ""
        # Writes made before the loaded view is installed, to apply again on it.
        self._replay: list[tuple[str, tuple[Any, ...]]] | None = []
        self._loading: defer.Deferred[None] | None = None
        self._closing: list[defer.Deferred[None]] = []
        self._thread: threading.Thread | None = None
        self._installed = threading.Event()
        # Writer-thread only.
        self._known_dirs: set[str] = set()
        self._error_streak = 0
        self._record = ChecksumRecord()
        # When the record was last written (or the store loaded), and when a write of it
        # that failed may be tried again (monotonic seconds).
        self._record_written_at = 0.0
        self._record_retry_at = 0.0

    def __repr__(self) -> str:
        return f"<FilesystemObjectStore {self.directory} {len(self._index)} objects {self._state}>"

    # --- paths ---------------------------------------------------------------------

    def path_of(self, key: CacheKey) -> str:
        """The file of ``key``: always inside the cache directory (keys are validated; this
        checks again that no part can climb out)."""
        for part in key.parts:
            if (
                not part
                or part in (".", "..")
                or "/" in part
                or "\0" in part
                or part.startswith(TEMP_PREFIX)
            ):
                raise InvalidKey(f"invalid key part {part!r}")
        return os.path.join(self.directory, *key.parts)

    def document_path(self, name: str) -> str:
        """The file of a document (`InvalidKey` for an invalid name)."""
        return os.path.join(self.directory, DOCUMENTS_DIR, check_document_name(name))

    @property
    def _journal_dir(self) -> str:
        return os.path.join(self.directory, DOCUMENTS_DIR, JOURNAL_DIR)

    @property
    def _record_path(self) -> str:
        return os.path.join(self.directory, DOCUMENTS_DIR, CHECKSUMS_NAME)

    # --- reads ---------------------------------------------------------------------

    def get_document(self, name: str) -> bytes | None:
        """The bytes of a document, or None."""
        return self._documents.get(name)

    def __len__(self) -> int:
        return len(self._index)

    # --- writes --------------------------------------------------------------------

    def put(self, key: CacheKey, resource_version: str, data: bytes) -> bool:
        """Store an object at ``resource_version``; False (nothing written) if the cached
        copy is as new or newer."""
        with self._lock:
            if not self._index.put(key, resource_version, data):
                return False
            if self._replay is not None:
                self._replay.append(("put", (key, resource_version, data)))
            else:
                self._changed(key)
            return True

    def delete(self, key: CacheKey, resource_version: str | None = None) -> None:
        """Remove an object, unless the cached copy is newer than ``resource_version``."""
        with self._lock:
            if self._replay is not None:
                self._index.delete(key, resource_version)
                self._replay.append(("delete", (key, resource_version)))
            elif self._index.delete(key, resource_version):
                self._changed(key)

    def replace(
        self,
        component: str,
        gvr: GVR,
        namespace: str | None,
        objects: Mapping[CacheKey, tuple[str, bytes]],
        list_resource_version: str,
        covered: Covered | None = None,
    ) -> None:
        """Make ``objects`` the whole set a list covers: objects in it replace cached ones
        unless those are as new; covered cached objects missing from it are removed unless
        newer than ``list_resource_version``. The changed keys (and any of this resource's
        keys left stale by dropped or failed writes) reach disk through one journal, so a
        crash leaves the old set or the new one."""
        with self._lock:
            changed = self._index.replace(
                component, gvr, namespace, objects, list_resource_version, covered
            )
            if self._replay is not None:
                self._replay.append(
                    (
                        "replace",
                        (component, gvr, namespace, objects, list_resource_version, covered),
                    )
                )
                return
            if self._state not in (_LOADING, _RUNNING, _CLOSING):
                return
            repaired = [k for k in self._stale if k.component == component and k.gvr == gvr]
            for key in (*changed, *repaired):
                self._dirty.pop(key, None)
                self._group[key] = None
            if changed or repaired:
                self._wake.notify()

    def put_document(self, name: str, data: bytes) -> None:
        """Store a document (discovery) under a validated name (`InvalidKey` otherwise)."""
        check_document_name(name)
        with self._lock:
            self._documents[name] = data
            if self._replay is not None:
                self._replay.append(("put_document", (name, data)))
            elif self._state in (_LOADING, _RUNNING, _CLOSING):
                self._dirty_documents[name] = None
                self._wake.notify()

    def _changed(self, key: CacheKey) -> None:
        """Queue a key whose memory state changed (lock held)."""
        if (
            self._state not in (_LOADING, _RUNNING, _CLOSING)
            or key in self._dirty
            or key in self._group
        ):
            return
        if len(self._dirty) + len(self._group) >= self.max_pending:
            self.health.dropped += 1
            self._stale[key] = max(self._stale.get(key, 0), self._turn)
            self._stale_cause = f"write queue full (more than {self.max_pending} keys waiting); the next list of the resource rewrites them"
            self._update_health()
            return
        self._dirty[key] = None
        self._wake.notify()

    def _pending_count(self) -> int:
        return len(self._dirty) + len(self._group) + len(self._dirty_documents) + self._in_flight

    def _update_health(self) -> None:
        """Recompute the degraded flag and reason (lock held)."""
        health = self.health
        health.stale = len(self._stale) + len(self._stale_documents)
        if self._writer_error:
            health.degraded, health.reason = True, self._writer_error
        elif health.stale:
            health.degraded, health.reason = (
                True,
                f"{health.stale} cached objects not on disk: {self._stale_cause}",
            )
        elif self._leftover_journals:
            health.degraded, health.reason = True, "a finished journal could not be removed"
        else:
            health.degraded, health.reason = False, ""

    # --- lifecycle -----------------------------------------------------------------

    def load(self) -> defer.Deferred[None]:
        """Recover from an interrupted write, read the directory into memory (in the writer
        thread) and start writing. Fires when the store can answer; fails with `StoreError`
        if the directory cannot be created, written or read."""
        with self._lock:
            if self._state != _NEW:
                return defer.fail(
                    StoreError(f"cache directory {self.directory}: load() may be called once")
                )
            self._state = _LOADING
        self._loading = defer.Deferred()
        self._thread = threading.Thread(target=self._run, name="yurthub-cache-writer", daemon=True)
        self._thread.start()
        return self._loading

    def flush(self) -> defer.Deferred[None]:
        """Fires when every write made before the call has been processed (written, or
        counted as an error). Fails with `StoreError` if the writer has stopped on an
        unexpected error."""
        with self._lock:
            if self._state == _CLOSED:
                return defer.succeed(None)
            if self._state == _FAILED:
                return defer.fail(
                    StoreError(
                        self.health.reason or f"cache directory {self.directory} is not in use"
                    )
                )
            d: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(d)
            self._wake.notify()
            return d

    def close(self) -> defer.Deferred[None]:
        """Finish the pending writes and stop the writer thread; fires when it has."""
        with self._lock:
            if self._state in (_CLOSED, _FAILED):
                return defer.succeed(None)
            if self._state == _NEW:
                self._state = _CLOSED
                self._replay = None
                return defer.succeed(None)
            self._state = _CLOSING
            d: defer.Deferred[None] = defer.Deferred()
            self._closing.append(d)
            self._wake.notify()
            return d

    # --- the writer thread ---------------------------------------------------------

    def _run(self) -> None:
        batch: _Batch | None = None
        try:
            try:
                loaded = self._read_directory()
            except StoreError as exc:
                self._reactor.callFromThread(self._load_failed, exc)
                return
            self._record = loaded.record
            self._record_written_at = time.monotonic()
            self._reactor.callFromThread(self._install, loaded)
            # Writes made while loading are queued by the install, on the loaded view.
            self._installed.wait()
            while True:
                with self._wake:
                    self._wait_idle()
                    if not self._has_work():
                        self._state = _CLOSED
                        break
                    batch = self._take_batch()
                try:
                    self._write_batch(batch)
                except Exception:
                    self._batch_raised(batch, Failure())
                with self._lock:
                    self._in_flight = 0
                waiters, batch = batch.waiters, None
                if waiters:
                    self._reactor.callFromThread(_fire, waiters, None)
            # Writes from now on reach memory only: the record can be brought up to date.
            if self._record.worth_writing:
                self._write_record()
            self._reactor.callFromThread(self._writer_stopped)
        except BaseException as exc:  # the thread is dying: say so, never hang callers
            self._writer_died(exc, batch.waiters if batch is not None else [])

    def _wait_idle(self) -> None:
        """Wait for work (lock held); meanwhile, once idle for `PACK_DELAY`, write the
        checksum record if it is due, pack the objects in memory a chunk at a time and
        then release the memory they freed."""
        idle = packed = False
        while not self._has_work() and self._state != _CLOSING:
            due = self._record_due()
            if not idle:
                if self._index.packable or due is not None:
                    idle = not self._wake.wait(PACK_DELAY)
                else:
                    self._wake.wait()
                continue
            if due == 0:
                self._lock.release()
                try:
                    self._write_record()
                finally:
                    self._lock.acquire()
            elif self._index.packable:
                packed = self._index.pack(PACK_CHUNK) > 0 or packed
                self._wake.wait(0.001)  # let the reactor's writes in between chunks
            elif packed and self.release_memory is not None:
                packed = False
                release = self.release_memory
                self._lock.release()
                try:
                    release()
                finally:
                    self._lock.acquire()
            else:
                self._wake.wait(due)

    def _record_due(self) -> float | None:
        """Seconds until the idle writer should write the checksum record: 0 now, None
        while it is up to date."""
        changes = self._record.changes
        if not changes:
            return None
        now = time.monotonic()
        if self._record.worth_writing:
            wait = 0.0
        else:
            wait = self._record_written_at + RECORD_MAX_AGE - now
        return max(0.0, wait, self._record_retry_at - now)

    def _write_record(self) -> None:
        """Write the checksum record (writer thread, no lock held). It is only ever a
        shortcut for the next load, so a failure is logged at debug level and tried again
        `RECORD_MAX_AGE` later, never counted as a disk error."""
        now = time.monotonic()
        changes, self._record.changes = self._record.changes, 0
        try:
            self._ensure_dir(os.path.dirname(self._record_path))
            self._disk.write_atomic(self._record_path, self._record.encode())
            self._disk.fsync_dir(os.path.dirname(self._record_path))
        except OSError as exc:
            self._record.changes += changes
            self._record_retry_at = now + RECORD_MAX_AGE
            self._reactor.callFromThread(
                _log.debug,
                "cache: checksum record not written: {error}",
                error=_describe(exc, exc.filename or self._record_path),
            )
            return
        self._record_written_at = now

    def _has_work(self) -> bool:
        return bool(self._dirty or self._group or self._dirty_documents or self._waiters)

    def _take_batch(self) -> _Batch:
        """Everything queued, with the bytes memory holds for it now (lock held)."""
        stored = self._index.stored
        group = builtins.list(self._group)
        group_data: builtins.list[bytes | None] = []
        group_rvs: builtins.list[str | None] = []
        for key in group:
            found = stored(key)
            group_data.append(found[0] if found is not None else None)
            group_rvs.append(found[1] if found is not None else None)
        plain: builtins.list[tuple[CacheKey, bytes | None, str | None]] = []
        for key in self._dirty:
            if key not in self._group:
                found = stored(key)
                plain.append((key, *found) if found is not None else (key, None, None))
        documents = [(name, self._documents.get(name)) for name in self._dirty_documents]
        batch = _Batch(self._turn, plain, group, group_data, group_rvs, documents, self._waiters)
        self._turn += 1
        self._in_flight = len(group) + len(plain) + len(documents)
        self._dirty, self._group, self._dirty_documents, self._waiters = {}, {}, {}, []
        return batch

    def _write_batch(self, batch: _Batch) -> None:
        written: builtins.list[CacheKey] = []
        failed: builtins.list[CacheKey] = []
        self._retry_journals()
        if batch.group:
            ok, bad = self._write_group(batch.turn, batch.group, batch.group_data, batch.group_rvs)
            written += ok
            failed += bad
        by_dir: dict[str, builtins.list[CacheKey]] = {}
        for key, data, kept in batch.plain:
            path = self.path_of(key)
            try:
                changed = self._write_file(path, data)
            except OSError as exc:
                self._disk_error(exc, path)
                failed.append(key)
                continue
            if data is None:
                self._record.remove(key)
            else:
                self._record.put(key, data, kept)
            if not changed:
                written.append(key)
            for directory in changed:
                by_dir.setdefault(directory, [])
            if changed:
                by_dir[changed[-1]].append(key)
        written_docs: builtins.list[str] = []
        failed_docs: builtins.list[str] = []
        doc_dir = os.path.join(self.directory, DOCUMENTS_DIR)
        for name, doc in batch.documents:
            path = os.path.join(doc_dir, name)
            try:
                for directory in self._write_file(path, doc):
                    by_dir.setdefault(directory, [])
                written_docs.append(name)
            except OSError as exc:
                self._disk_error(exc, path)
                failed_docs.append(name)
        for directory, keys in by_dir.items():
            try:
                self._disk.fsync_dir(directory)
                written += keys
            except OSError as exc:
                self._disk_error(exc, directory)
                failed += keys
                if directory == doc_dir:
                    failed_docs += written_docs
                    written_docs = []
        self._settle(batch.turn, written, failed, written_docs, failed_docs)

    def _write_file(self, path: str, data: bytes | None) -> builtins.list[str]:
        """Write or remove one file (``data`` None); the directories the caller must
        fsync for it to last, the file's own last ([] if there was nothing to remove)."""
        if data is None:
            try:
                self._disk.unlink(path)
            except FileNotFoundError:
                return []
            return [os.path.dirname(path)]
        changed = self._ensure_dir(os.path.dirname(path))
        self._disk.write_atomic(path, data)
        return [*changed, os.path.dirname(path)]

    def _ensure_dir(self, path: str) -> builtins.list[str]:
        """Create ``path`` and its parents below the cache directory (0700, refusing
        symlinks); the parents whose entries changed."""
        if path in self._known_dirs or path == self.directory:
            return []
        parent = os.path.dirname(path)
        changed = self._ensure_dir(parent)
        if self._disk.makedir(path):
            changed.append(parent)
        self._known_dirs.add(path)
        return changed

    def _write_group(
        self,
        turn: int,
        keys: builtins.list[CacheKey],
        datas: builtins.list[bytes | None],
        rvs: builtins.list[str | None],
    ) -> tuple[builtins.list[CacheKey], builtins.list[CacheKey]]:
        """Write a replacement (``datas[i]`` for ``keys[i]``, None to delete; ``rvs[i]``
        as `ObjectIndex.stored` gives it) through a journal (see the module docstring);
        the keys now on disk and those that failed.

        Nothing per key is held across the steps: the temp file of ``keys[i]`` is named
        from this group's random token and ``i``, and paths are worked out again where
        they are needed, so that writing 10,000 objects does not hold 10,000 paths (which
        would keep megabytes of the allocator's memory in the process after they went).
        """
        disk = self._disk
        token = secrets.token_hex(8)
        journal = os.path.join(self._journal_dir, f"{time.time_ns():020d}-{turn:010d}.json")
        path = journal
        made = 0  # entries before this one have their temp file written (if they have one)
        try:
            to_sync: set[str] = set()
            renames = bytearray()
            deletes = bytearray()
            for i, key in enumerate(keys):
                path = self.path_of(key)
                relative = "/".join(key.parts)
                data = datas[i]
                if data is None:
                    deletes += b"," + _json_text(relative)
                    made = i + 1
                    continue
                parent = os.path.dirname(path)
                to_sync.update(self._ensure_dir(parent))
                temp_name = _temp_name(token, i)
                disk.write_temp(parent, data, temp_name)
                made = i + 1
                renames += b",[" + _json_text(relative.rpartition("/")[0] + "/" + temp_name)
                renames += b"," + _json_text(relative) + b"]"
                to_sync.add(parent)
            for directory in sorted(to_sync):
                path = directory
                disk.fsync_dir(directory)
            path = journal
            plan = b'{"renames":[%s],"deletes":[%s]}' % (renames[1:], deletes[1:])
            del renames, deletes
            disk.write_atomic(journal, plan)
            del plan
            disk.fsync_dir(self._journal_dir)
        except OSError as exc:
            self._disk_error(exc, path)
            for i in range(made):
                if datas[i] is not None:
                    _quietly(disk.unlink, self._temp_path(keys[i], token, i))
            return [], builtins.list(keys)
        ok: dict[str, builtins.list[CacheKey]] = {}
        failed: builtins.list[CacheKey] = []
        gone: builtins.list[CacheKey] = []
        for i, key in enumerate(keys):
            if datas[i] is None:
                continue
            target = self.path_of(key)
            temp = self._temp_path(key, token, i)
            try:
                disk.rename(temp, target)
                ok.setdefault(os.path.dirname(target), []).append(key)
            except OSError as exc:
                self._disk_error(exc, target)
                _quietly(disk.unlink, temp)
                failed.append(key)
                continue
            self._record.put(key, datas[i], rvs[i])  # type: ignore[arg-type]  # not None
        for i, key in enumerate(keys):
            if datas[i] is not None:
                continue
            target = self.path_of(key)
            try:
                disk.unlink(target)
            except FileNotFoundError:
                gone.append(key)
                self._record.remove(key)
                continue
            except OSError as exc:
                self._disk_error(exc, target)
                failed.append(key)
                continue
            ok.setdefault(os.path.dirname(target), []).append(key)
            self._record.remove(key)
        written: builtins.list[CacheKey] = gone
        for directory, done in ok.items():
            try:
                disk.fsync_dir(directory)
                written += done
            except OSError as exc:
                self._disk_error(exc, directory)
                failed += done
        self._remove_journal(journal)
        return written, failed

    def _temp_path(self, key: CacheKey, token: str, index: int) -> str:
        """The temp file `_write_group` writes ``key``'s bytes to."""
        return os.path.join(os.path.dirname(self.path_of(key)), _temp_name(token, index))

    def _remove_journal(self, journal: str) -> None:
        try:
            self._disk.unlink(journal)
            self._disk.fsync_dir(self._journal_dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # Left in place it would be rolled forward at the next load, undoing later
            # writes; retried before every turn until it goes.
            self._disk_error(exc, journal)
            with self._lock:
                self._leftover_journals.append(journal)
                self._update_health()

    def _retry_journals(self) -> None:
        with self._lock:
            journals, self._leftover_journals = self._leftover_journals, []
        for journal in journals:
            self._remove_journal(journal)
        if journals:
            with self._lock:
                self._update_health()

    def _settle(
        self,
        turn: int,
        written: builtins.list[CacheKey],
        failed: builtins.list[CacheKey],
        written_docs: builtins.list[str],
        failed_docs: builtins.list[str],
    ) -> None:
        """Record which keys are now on disk and which are stale."""
        failed_set = set(failed)
        with self._lock:
            for key in written:
                if key not in failed_set and self._stale.get(key, turn + 1) <= turn:
                    del self._stale[key]
            for name in written_docs:
                if self._stale_documents.get(name, turn + 1) <= turn:
                    del self._stale_documents[name]
            for key in failed:
                self._stale[key] = max(self._stale.get(key, 0), turn)
            for name in failed_docs:
                self._stale_documents[name] = max(self._stale_documents.get(name, 0), turn)
            if failed or failed_docs:
                self._stale_cause = (
                    "disk errors; a later write or list of the resource rewrites them"
                )
            self._update_health()
        if (written or written_docs) and not (failed or failed_docs) and self._error_streak:
            self._reactor.callFromThread(
                _log.info,
                "cache writes succeed again after {count} failed disk operations",
                count=self._error_streak,
            )
            self._error_streak = 0

    def _disk_error(self, exc: OSError, path: str) -> None:
        line = _describe(exc, path)
        self._known_dirs.clear()
        with self._lock:
            self.health.errors += 1
            self.health.last_error = line
        self._error_streak += 1
        if self._error_streak == 1:
            self._reactor.callFromThread(
                _log.error,
                "cache write failed: {error} (counted, not logged again until a turn succeeds)",
                error=line,
            )

    def _batch_raised(self, batch: _Batch, failure: Failure) -> None:
        with self._lock:
            self.health.errors += 1
            self.health.last_error = f"cache writer: {failure.getErrorMessage()}"
        keys = batch.group + [k for k, _, _ in batch.plain]
        self._settle(batch.turn, [], keys, [], [n for n, _ in batch.documents])
        self._reactor.callFromThread(_log.failure, "cache writer turn failed", failure)

    def _writer_died(
        self, exc: BaseException, waiters: builtins.list[defer.Deferred[None]]
    ) -> None:
        with self._lock:
            self._state = _FAILED
            self._writer_error = f"cache writer stopped: {exc!r}"
            self._update_health()
            waiters, self._waiters = waiters + self._waiters, []
            closing, self._closing = self._closing, []
        try:
            self._reactor.callFromThread(_log.critical, "{reason}", reason=self.health.reason)
            self._reactor.callFromThread(self._loading_failed, StoreError(self.health.reason))
            self._reactor.callFromThread(_fire, closing, None)
            self._reactor.callFromThread(_fire, waiters, StoreError(self.health.reason))
        except BaseException:  # the reactor is gone too: nothing left to tell
            pass

    # --- reactor-thread completions ------------------------------------------------

    def _install(self, loaded: _Loaded) -> None:
        with self._lock:
            replay, self._replay = self._replay or [], None
            self._index = loaded.index
            for name, data in loaded.documents.items():
                self._documents.setdefault(name, data)
            self.health.corrupt_files += len(loaded.problems)
            if self._state == _LOADING:
                self._state = _RUNNING
        try:
            for operation, args in replay:
                try:
                    getattr(self, operation)(*args)
                except Exception:
                    _log.failure("cache: a write made while loading failed on the loaded view")
        finally:
            self._installed.set()
        for path, why in loaded.problems[:_MAX_LOGGED_PROBLEMS]:
            _log.warn("cache: skipped {path}: {why}", path=path, why=why)
        if len(loaded.problems) > _MAX_LOGGED_PROBLEMS:
            _log.warn(
                "cache: skipped {count} more entries",
                count=len(loaded.problems) - _MAX_LOGGED_PROBLEMS,
            )
        if loaded.record_note:
            _log.debug(
                "cache: {note}; every object file is checked in full", note=loaded.record_note
            )
        _log.info(
            "cache: loaded {objects} objects and {documents} documents from {directory} in {seconds:.3f}s,"
            " {checked} files checked in full ({recovered} interrupted replacements recovered)",
            objects=len(loaded.index),
            documents=len(loaded.documents),
            directory=self.directory,
            seconds=loaded.seconds,
            checked=loaded.checked,
            recovered=loaded.recovered,
        )
        d, self._loading = self._loading, None
        if d is not None:
            d.callback(None)

    def _load_failed(self, exc: StoreError) -> None:
        with self._lock:
            self._state = _FAILED
            self._replay = None
            self.health.degraded = True
            self.health.reason = self.health.last_error = str(exc)
            waiters, self._waiters = self._waiters, []
            closing, self._closing = self._closing, []
        _fire(closing, None)
        _fire(waiters, StoreError(str(exc)))
        d, self._loading = self._loading, None
        if d is not None:
            d.errback(exc)

    def _loading_failed(self, exc: StoreError) -> None:
        d, self._loading = self._loading, None
        if d is not None:
            d.errback(exc)

    def _writer_stopped(self) -> None:
        closing, self._closing = self._closing, []
        _fire(closing, None)

    # --- load (writer thread) ------------------------------------------------------

    def _read_directory(self) -> _Loaded:
        started = time.monotonic()
        root = self.directory
        try:
            if not os.path.isdir(root):
                os.makedirs(root, 0o700)
            self._disk.makedir(os.path.join(root, DOCUMENTS_DIR))
            self._disk.makedir(self._journal_dir)
            self._disk.unlink(self._disk.write_temp(self._journal_dir, b""))
        except OSError as exc:
            raise StoreError(
                f"cache directory {root} is not usable: {_describe(exc, exc.filename or root)}"
            ) from exc
        loaded = _Loaded(ObjectIndex(), {})
        try:
            loaded.recovered = self._recover(loaded.problems)
        except OSError as exc:
            raise StoreError(
                f"cache directory {root}: cannot finish an interrupted replacement: {_describe(exc, exc.filename or root)}"
            ) from exc
        known = self._read_record(loaded)
        try:
            self._walk(loaded, known)
        except OSError as exc:
            raise StoreError(
                f"cache directory {root} cannot be read: {_describe(exc, exc.filename or root)}"
            ) from exc
        loaded.seconds = time.monotonic() - started
        return loaded

    def _recover(self, problems: builtins.list[tuple[str, str]]) -> int:
        """Roll complete journals forward, drop the others; how many were applied."""
        journal_dir = self._journal_dir
        applied = 0
        for name in sorted(os.listdir(journal_dir)):
            path = os.path.join(journal_dir, name)
            if name.startswith(TEMP_PREFIX):
                self._disk.unlink(path)
                continue
            try:
                plan = (
                    self._parse_journal(self._disk.read(path)) if name.endswith(".json") else None
                )
            except OSError as exc:
                plan = None
                problems.append((path, f"unreadable journal: {exc.strerror}"))
            if plan is None:
                problems.append((path, "not a journal; removed without applying it"))
                self._remove_entry(path)
                continue
            renames, deletes = plan
            present = [os.path.lexists(temp) for temp, _ in renames]
            first = present.index(True) if True in present else len(present)
            if not all(present[first:]):
                problems.append(
                    (path, "incomplete journal (temp files missing); removed without applying it")
                )
                self._disk.unlink(path)
                continue
            dirs = set()
            for temp, target in renames[first:]:
                self._disk.rename(temp, target)
                dirs.add(os.path.dirname(target))
            for target in deletes:
                try:
                    self._disk.unlink(target)
                    dirs.add(os.path.dirname(target))
                except FileNotFoundError:
                    pass
            for directory in sorted(dirs):
                self._disk.fsync_dir(directory)
            self._disk.unlink(path)
            self._disk.fsync_dir(journal_dir)
            applied += 1
        return applied

    def _remove_entry(self, path: str) -> None:
        try:
            self._disk.unlink(path)
        except IsADirectoryError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.EPERM):
                raise

    def _parse_journal(
        self, data: bytes
    ) -> tuple[builtins.list[tuple[str, str]], builtins.list[str]] | None:
        """A journal's renames and deletes as absolute paths, or None unless every path
        names a cache key (temps: a ``.tmp-`` file beside their target)."""
        try:
            plan = json.loads(data)
            renames = [(str(temp), str(target)) for temp, target in plan["renames"]]
            deletes = [str(target) for target in plan["deletes"]]
        except (ValueError, TypeError, KeyError):
            return None
        out_renames = []
        for temp, target in renames:
            temp_dir, _, temp_name = temp.rpartition("/")
            if _key_from_relative(target) is None or not temp_name.startswith(TEMP_PREFIX):
                return None
            if temp_dir != target.rpartition("/")[0] or "\0" in temp_name:
                return None
            out_renames.append(
                (
                    os.path.join(self.directory, *temp.split("/")),
                    os.path.join(self.directory, *target.split("/")),
                )
            )
        out_deletes = []
        for target in deletes:
            if _key_from_relative(target) is None:
                return None
            out_deletes.append(os.path.join(self.directory, *target.split("/")))
        return out_renames, out_deletes

    def _read_record(self, loaded: _Loaded) -> dict[str, Any]:
        """The checksum record's sections as decoded (`ChecksumRecord.decode`), or ``{}``
        if there is no usable record (why goes to ``loaded.record_note``). ``loaded``'s
        new record starts with as many changes as the old one has entries: each entry
        that a file then matches takes one off."""
        try:
            data = self._disk.read(self._record_path)
        except FileNotFoundError:
            loaded.record_note = "no checksum record"
            return {}
        except OSError as exc:
            loaded.record_note = f"checksum record unreadable: {_describe(exc, self._record_path)}"
            return {}
        sections = ChecksumRecord.decode(data)
        if sections is None:
            loaded.record_note = (
                f"checksum record {self._record_path} is damaged or of another version"
            )
            return {}
        loaded.record.changes = sum(len(section) for section in sections.values())
        return sections

    def _walk(self, loaded: _Loaded, known: dict[str, Any]) -> None:
        problems = loaded.problems
        with os.scandir(self.directory) as top:
            components = sorted(top, key=_entry_name)
        for entry in components:
            if entry.name == DOCUMENTS_DIR and entry.is_dir(follow_symlinks=False):
                self._walk_documents(entry.path, loaded)
                continue
            if self._leftover(entry):
                continue
            if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                problems.append(
                    (entry.path, "symlink" if entry.is_symlink() else "not a component directory")
                )
                continue
            try:
                check_component(entry.name)
            except InvalidKey as exc:
                problems.append((entry.path, str(exc)))
                continue
            self._walk_component(entry.name, entry.path, loaded, known)

    def _walk_component(
        self, component: str, path: str, loaded: _Loaded, known: dict[str, Any]
    ) -> None:
        problems = loaded.problems
        for entry in _scan(path, problems):
            if self._leftover(entry):
                continue
            if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                problems.append(
                    (entry.path, "symlink" if entry.is_symlink() else "not a resource directory")
                )
                continue
            try:
                gvr = GVR.from_dirname(entry.name)
            except InvalidKey as exc:
                problems.append((entry.path, str(exc)))
                continue
            files = _Section(f"{component}/{gvr.dirname}", known, loaded.record)
            slots: dict[str, _Slot] = {}
            for item in self._prefetching(_scan(entry.path, problems)):
                if self._leftover(item):
                    continue
                if item.is_symlink():
                    problems.append((item.path, "symlink"))
                elif item.is_dir(follow_symlinks=False):
                    self._walk_namespace(component, gvr, item.name, item.path, loaded, known)
                else:
                    self._read_object(item, loaded, files, slots)
            loaded.index.fill(component, gvr, "", slots)

    def _walk_namespace(
        self,
        component: str,
        gvr: GVR,
        namespace: str,
        path: str,
        loaded: _Loaded,
        known: dict[str, Any],
    ) -> None:
        try:
            CacheKey(component, gvr, namespace, "x")
        except InvalidKey as exc:
            loaded.problems.append((path, str(exc)))
            return
        files = _Section(f"{component}/{gvr.dirname}/{namespace}", known, loaded.record)
        slots: dict[str, _Slot] = {}
        for item in self._prefetching(_scan(path, loaded.problems)):
            if self._leftover(item):
                continue
            if item.is_symlink() or item.is_dir(follow_symlinks=False):
                loaded.problems.append(
                    (item.path, "symlink" if item.is_symlink() else "unexpected directory")
                )
            else:
                self._read_object(item, loaded, files, slots)
        loaded.index.fill(component, gvr, namespace, slots)

    def _prefetching(self, entries: builtins.list[os.DirEntry[str]]) -> Iterator[os.DirEntry[str]]:
        """``entries`` in order, `PREFETCH_BATCH` at a time. Once the reads of a batch took
        longer than `COLD_READ_SECONDS` each (its files came from the disk, not the page
        cache: after a reboot, or evicted), the object files of every later batch of this load
        are read ahead together (`_Disk.prefetch`) before they are handed out. A warm
        cache is read as it is: reading ahead costs a system call per file."""
        disk = self._disk
        try:
            for start in range(0, len(entries), PREFETCH_BATCH):
                batch = entries[start : start + PREFETCH_BATCH]
                if self._reading_ahead:
                    disk.prefetch(
                        item.path for item in batch
                        if not item.name.startswith(TEMP_PREFIX) and item.is_file(follow_symlinks=False)
                    )  # fmt: skip
                self._read_seconds, self._reads = 0.0, 0
                yield from batch
                if self._reading_ahead:
                    disk.drop_prefetched()
                elif self._read_seconds > COLD_READ_SECONDS * max(self._reads, 8):
                    self._reading_ahead = True
        finally:
            disk.drop_prefetched()

    def _read_object(
        self,
        entry: os.DirEntry[str],
        loaded: _Loaded,
        files: _Section,
        slots: dict[str, _Slot],
    ) -> None:
        """Load one object file into its directory's ``slots``: taken as it is if the
        checksum record vouches for its bytes, else checked in full (and refused if it is
        not an object). The directory's other parts (component, resource, namespace) were
        checked once for it."""
        name = entry.name
        try:
            check_name(name)
        except InvalidKey as exc:
            loaded.problems.append((entry.path, str(exc)))
            return
        if not entry.is_file(follow_symlinks=False):
            loaded.problems.append((entry.path, "not a regular file"))
            return
        recorded = files.known.get(name) if files.known else None
        began = time.perf_counter()
        try:
            data = self._disk.read(entry.path, _recorded_length(recorded))
        except OSError as exc:
            loaded.problems.append((entry.path, f"unreadable: {exc.strerror}"))
            return
        finally:
            self._read_seconds += time.perf_counter() - began
            self._reads += 1
        signature = len(data) << 32 | zlib.crc32(data)
        if type(recorded) is int and recorded == signature:
            # The writer left these very bytes and found that they give their
            # resourceVersion back (a bare signature): kept alone (see `_slot`).
            files.matched(name, signature)
            slots[name] = data
            return
        rv = _recorded_version(recorded, signature)
        if rv is not None:
            entry_of: _Signature = (signature, rv)
            files.matched(name, entry_of)
        else:
            found = _resource_version(data)
            loaded.checked += 1
            if isinstance(found, _Corrupt):
                loaded.problems.append((entry.path, found.why))
                return
            rv = found
            entry_of = _signature(data, rv)
            files.checked(name, entry_of)
        slots[name] = data if type(entry_of) is int else (rv, data)

    def _walk_documents(self, path: str, loaded: _Loaded) -> None:
        for entry in _scan(path, loaded.problems):
            if entry.name == JOURNAL_DIR and entry.is_dir(follow_symlinks=False):
                continue
            if entry.name == CHECKSUMS_NAME:  # read by `_read_record`, never a document
                continue
            if self._leftover(entry):
                continue
            if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                loaded.problems.append(
                    (entry.path, "symlink" if entry.is_symlink() else "not a document file")
                )
                continue
            try:
                check_document_name(entry.name)
                loaded.documents[entry.name] = self._disk.read(entry.path)
            except InvalidKey as exc:
                loaded.problems.append((entry.path, str(exc)))
            except OSError as exc:
                loaded.problems.append((entry.path, f"unreadable: {exc.strerror}"))

    def _leftover(self, entry: os.DirEntry[str]) -> bool:
        """Delete a temp file no journal took; True if ``entry`` was one."""
        if not entry.name.startswith(TEMP_PREFIX) or entry.is_dir(follow_symlinks=False):
            return False
        self._disk.unlink(entry.path)
        return True


class _Section:
    """One directory of object files as a load meets it: what the checksum record on
    disk says of its files (``known``) and the new record's entries for them."""

    __slots__ = ("known", "_directory", "_record", "_entries")

    def __init__(self, directory: str, known: dict[str, Any], record: ChecksumRecord) -> None:
        found = known.get(directory)
        self.known: dict[str, Any] | None = found if isinstance(found, dict) else None
        self._directory = directory
        self._record = record
        self._entries: dict[str, _Signature] | None = None

    def _add(self, name: str, signature: _Signature) -> None:
        if self._entries is None:
            self._entries = self._record.sections.setdefault(self._directory, {})
        self._entries[name] = signature

    def matched(self, name: str, signature: _Signature) -> None:
        """``name``'s bytes are as its entry on disk says: kept, not a change."""
        self._add(name, signature)
        self._record.changes -= 1

    def checked(self, name: str, signature: _Signature) -> None:
        """``name`` was checked in full: a new entry, a change to write."""
        self._add(name, signature)
        self._record.changes += 1


class _Corrupt:
    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def _resource_version(data: bytes) -> str | _Corrupt:
    """The resourceVersion of a cached file's object, or why it cannot be one."""
    if not data or data.isspace():
        return _Corrupt("empty file")
    try:
        obj = json.loads(data)
    except ValueError:
        return _Corrupt("not JSON")
    if not isinstance(obj, dict):
        return _Corrupt("not a JSON object")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return _Corrupt("no metadata")
    rv = meta.get("resourceVersion")
    if rv is None or rv == "":
        return "0"
    return rv if isinstance(rv, str) else str(rv)


_entry_name = operator.attrgetter("name")


def _scan(path: str, problems: list[tuple[str, str]]) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return sorted(entries, key=_entry_name)
    except OSError as exc:
        problems.append((path, f"unreadable directory: {exc.strerror}"))
        return []


def _key_from_relative(path: str) -> CacheKey | None:
    parts = path.split("/")
    try:
        if len(parts) == 3:
            return CacheKey(parts[0], GVR.from_dirname(parts[1]), "", parts[2])
        if len(parts) == 4:
            return CacheKey(parts[0], GVR.from_dirname(parts[1]), parts[2], parts[3])
    except InvalidKey:
        return None
    return None


def _fire(deferreds: list[defer.Deferred[None]], error: Exception | None) -> None:
    for d in deferreds:
        if error is None:
            d.callback(None)
        else:
            d.errback(error)
