"""The endpoint factory behind yurthub's `Agent`s: how a backend URL becomes a connection.

Host names are resolved at every new connection (`HostnameEndpoint`), so a changed DNS
record takes effect without a restart. IP addresses (IPv6 literals included) are connected
to directly: `HostnameEndpoint` would "resolve" them through getaddrinfo in the reactor's
thread pool, and a new connection then waited behind whatever else that pool was doing
(0.3 s of no answers after a failover under load, before this). ``https`` backends are
wrapped in TLS with a connection creator asked of the credential source at connect time.
"""

from __future__ import annotations

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
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
        # Agent asks for an endpoint on every request, pooled connection or not; building a
        # HostnameEndpoint (IDNA-encoding the host) each time was ~9 % of the proxy's CPU.
        # Cached per TLS connection creator, so rotated credentials still take effect.
        self._cache: dict[tuple[str, str, int, object], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:  # noqa: N802 - Twisted's name
        host = uri.host.decode("ascii")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return self.endpoint_for(uri.scheme.decode("ascii"), host, uri.port)

    def endpoint_for(self, scheme: str, host: str, port: int) -> IStreamClientEndpoint:
        """The endpoint for ``scheme://host:port`` (used by the upgrade splicer too); the
        host name is resolved anew at every connection."""
        creator = self._credentials.client_creator(host, self._with_cert) if scheme == "https" else None
        key = (scheme, host, port, creator)
        endpoint = self._cache.get(key)
        if endpoint is None:
            if len(self._cache) > 64:  # old creators after rotations
                self._cache.clear()
            endpoint = _tcp_endpoint(self._reactor, host, port, self._timeout)
            if creator is not None:
                endpoint = wrapClientTLS(creator, endpoint)
            self._cache[key] = endpoint
        return endpoint


def _tcp_endpoint(reactor: IReactorTime, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """A direct TCP endpoint for an IP address, a resolving one for a host name."""
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)
