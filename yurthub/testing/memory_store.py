"""An `IObjectStore` that keeps everything in memory, for tests of the parts that use one.

`MemoryObjectStore` applies the same rules as `FilesystemObjectStore` (the same
`ObjectIndex`: resourceVersion ordering, list replacement, sorted lists, validated document
names) without a directory or a writer thread: `load`, `flush` and `close` fire at once and
its `health` never degrades unless a test sets it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from twisted.internet import defer
from zope.interface import implementer

from yurthub.cache.keys import GVR, CacheKey
from yurthub.cache.store import Covered, IndexedReads, ObjectIndex, StoreHealth, check_document_name
from yurthub.interfaces import IObjectStore


@implementer(IObjectStore)
class MemoryObjectStore(IndexedReads):
    """`IObjectStore` semantics with nothing on disk. ``writes`` counts the writes that a
    filesystem store would have queued (puts and deletes that changed something, keys a
    replace changed, documents), so tests can check that nothing needless is written."""

    def __init__(self) -> None:
        self.health = StoreHealth()
        self.writes = 0
        self.loaded = False
        self.closed = False
        self._index = ObjectIndex()
        self._lock = threading.Lock()  # as the filesystem store's, for the shared reads
        self._documents: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._index)

    def load(self) -> defer.Deferred[None]:
        """Fires at once: there is nothing to read."""
        self.loaded = True
        return defer.succeed(None)

    def put(self, key: CacheKey, resource_version: str, data: bytes) -> bool:
        """Store an object; False if the cached copy is as new or newer."""
        if not self._index.put(key, resource_version, data):
            return False
        self.writes += 1
        return True

    def delete(self, key: CacheKey, resource_version: str | None = None) -> None:
        """Remove an object unless the cached copy is newer than ``resource_version``."""
        if self._index.delete(key, resource_version):
            self.writes += 1

    def replace(
        self,
        component: str,
        gvr: GVR,
        namespace: str | None,
        objects: Mapping[CacheKey, tuple[str, bytes]],
        list_resource_version: str,
        covered: Covered | None = None,
    ) -> None:
        """Make ``objects`` the whole set a list covers (see `IObjectStore.replace`)."""
        self.writes += len(
            self._index.replace(component, gvr, namespace, objects, list_resource_version, covered)
        )

    def put_document(self, name: str, data: bytes) -> None:
        """Store a document under a validated name (`InvalidKey` otherwise)."""
        self._documents[check_document_name(name)] = data
        self.writes += 1

    def get_document(self, name: str) -> bytes | None:
        """The bytes of a document, or None."""
        return self._documents.get(name)

    def flush(self) -> defer.Deferred[None]:
        """Fires at once: nothing is ever pending."""
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        """Fires at once; the objects stay readable."""
        self.closed = True
        return defer.succeed(None)
