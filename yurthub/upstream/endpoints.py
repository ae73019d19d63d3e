"""The endpoint factory behind yurthub's `Agent`s: how a backend URL becomes a connection.

Host names are resolved at every new connection (`HostnameEndpoint`), so a changed DNS
record takes effect without a restart, and IPv6 literals work. ``https`` backends are
wrapped in TLS with a connection creator asked of the credential source at connect time.
"""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from yurthub.interfaces import ICredentialSource


@implementer(IAgentEndpointFactory)
class BackendEndpointFactory:
    """Endpoints for backend URLs, presenting the node's client certificate or not.

    Two agents use two of these: one for requests that go up as the node (with the client
    certificate) and one for requests that carry their own bearer token (without it, because
    kube-apiserver would otherwise authenticate them as the node).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        credentials: ICredentialSource,
        *,
        with_client_certificate: bool,
        connect_timeout: float = 5.0,
    ) -> None:
        self._reactor = reactor
        self._credentials = credentials
        self._with_cert = with_client_certificate
        self._timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:  # noqa: N802 - Twisted's name
        host = uri.host.decode("ascii")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return self.endpoint_for(uri.scheme.decode("ascii"), host, uri.port)

    def endpoint_for(self, scheme: str, host: str, port: int) -> IStreamClientEndpoint:
        """A fresh endpoint for ``scheme://host:port`` (used by the upgrade splicer too)."""
        endpoint: IStreamClientEndpoint = HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
        if scheme == "https":
            endpoint = wrapClientTLS(self._credentials.client_creator(host, self._with_cert), endpoint)
        return endpoint
