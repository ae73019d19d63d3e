"""The few `zope.interface` interfaces behind which yurthub's parts can be swapped.

Each has a real implementation and a test double; tests call ``verifyObject`` on both.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IBackend(Interface):
    """One cloud API server address."""

    url = Attribute("Normalised base URL, scheme://host:port (str).")
    healthy = Attribute("Whether requests may be sent to it now (bool).")


class IUpstreamSelector(Interface):
    """Chooses which cloud backends a request goes to, in the order to try them."""

    def backends_for(info):  # noqa: N805 - zope interface methods have no self
        """Return the healthy backends for this `RequestInfo`, first choice first."""

    def any_healthy():  # noqa: N805
        """True if at least one backend is healthy."""


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
