"""The few `zope.interface` interfaces behind which yurthub's parts can be swapped.

Each has a real implementation and a test double; tests call ``verifyObject`` on both.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IBackend(Interface):
    """One cloud API server address."""

    url = Attribute("Normalised base URL, scheme://host:port (str).")
    healthy = Attribute("Whether requests may be sent to it now (bool).")


class IFailoverFactory(Interface):
    """Decides which cloud backends a request goes to, in the order to try them.

    The proxy asks again after every failed attempt, so a backend that failed (or turned
    unhealthy meanwhile) is skipped by the next answer.
    """

    backends = Attribute("Every backend, in configured (priority) order (list of IBackend).")

    def attempts(info):  # noqa: N805 - zope interface methods have no self
        """A fresh `IAttempts` for one request described by a `RequestInfo` (or None)."""

    def any_healthy():  # noqa: N805
        """True if at least one backend is healthy."""

    def outranked(backend):  # noqa: N805
        """True when requests should move off ``backend``: in priority mode, a backend
        configured before it is healthy; never in round-robin mode."""


class IAttempts(Interface):
    """The backends one request may still try."""

    def next():  # noqa: N805
        """The next backend to try (healthy now, not tried yet), or None when none is left."""


class ICredentialSource(Interface):
    """Supplies the TLS settings for connections to the cloud, read anew per connection
    so that a rotated certificate is used by the next connection without a restart."""

    def client_creator(hostname, with_client_certificate):  # noqa: N805
        """An ``IOpenSSLClientConnectionCreator`` for a connection to ``hostname`` that
        verifies the cluster CA and, if asked, presents the node's client certificate."""


class IReadinessCheck(Interface):
    """One thing that must hold for ``/v1/readyz`` to answer 200."""

    name = Attribute("Short name shown in the readiness detail (str).")

    def check():  # noqa: N805
        """Return ``(ok, detail)``: a bool and a one-line explanation."""


class IObjectStore(Interface):
    """The node's copy of what its components read: bytes and keys, nothing about HTTP.

    Reads are answered from memory at once; writes update the in-memory view at once and
    reach disk later, off the reactor thread, atomically and durably. An object is never
    replaced by one with a lower resourceVersion.
    """

    def load():  # noqa: N805
        """Recover from any interrupted write and read the directory into memory; a
        Deferred that fires when the store can answer."""

    def get(key):  # noqa: N805
        """The bytes of the object at `CacheKey` ``key``, or None."""

    def list(component, gvr, namespace=None):  # noqa: N805
        """``[(key, bytes)]`` of a component's objects of a `GVR`, in one namespace or all
        (``None``), sorted by namespace and name."""

    def put(key, resource_version, data):  # noqa: N805
        """Store an object (JSON bytes) at ``resource_version``; False if ignored because
        the cached copy is as new or newer."""

    def delete(key, resource_version=None):  # noqa: N805
        """Remove an object (unless the cached one is newer than ``resource_version``)."""

    def replace(component, gvr, namespace, objects, list_resource_version, covered=None):  # noqa: N805
        """Make ``objects`` ({key: (resource_version, bytes)}) the whole set that a list
        covers: the component's objects of ``gvr`` in ``namespace`` (all if None) for which
        ``covered(key, bytes)`` holds (all if None). Cached objects newer than the list
        are kept. Crash-safe: after a crash the set is the old one or the new one."""

    def components():  # noqa: N805
        """The components that have anything cached, sorted."""

    def forget_versions():  # noqa: N805
        """From now on the next copy of any cached object is taken whatever its
        resourceVersion (the node moved to another cluster)."""

    def put_document(name, data):  # noqa: N805
        """Store a non-object document (discovery) under a validated name."""

    def get_document(name):  # noqa: N805
        """The bytes of a document, or None."""

    def flush():  # noqa: N805
        """A Deferred that fires when every write so far is on disk."""

    def close():  # noqa: N805
        """Finish pending writes and stop the writer; a Deferred."""

    health = Attribute("A `StoreHealth`: errors, last error, pending writes, degraded flag.")
    generation = Attribute("An int that changes whenever any cached object changes.")
