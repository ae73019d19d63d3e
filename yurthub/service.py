"""The composition root: every part of yurthub built from a `Config` and wired together.

`YurtHub` is the `MultiService` that ``twistd yurthub`` runs and that integration tests
start directly. It is the only place where parts meet: each part gets its collaborators
(reactor, metrics, selector, credentials) passed in here, so tests can build a yurthub on
a port-0 listener, or build any part alone with fakes.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, ssl, threads
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLContextFactory,
    IProtocolFactory,
    IReactorCore,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site
from zope.interface import implementer

from yurthub.cache.gc import CacheJanitor
from yurthub.cache.manager import CacheManager
from yurthub.cache.store import FilesystemObjectStore
from yurthub.certificates.manager import CertificateManager, CertificateReady
from yurthub.config import Config, describe
from yurthub.filters.nodepools import NodeListRefresher, NodePools
from yurthub.filters.setup import make_filter_chain, make_tenant_guard, needs_node_pools
from yurthub.hub import BackendsReachable, Flag, StoreHealthy, make_hub_root
from yurthub.interfaces import ICredentialSource, IObjectStore
from yurthub.metrics import ProxyMetrics, StoreHealthCollector
from yurthub.migration import ClusterMigration
from yurthub.proxy.channel import ChannelLimits, ConnectionCap, OpenConnections
from yurthub.proxy.flowcontrol import InFlightLimiter
from yurthub.proxy.http11 import LeanFactory
from yurthub.proxy.local import LocalProxy
from yurthub.proxy.remote import RemoteProxy
from yurthub.proxy.root import ProxyRoot, ProxySite, make_site
from yurthub.proxy.upgrade import UpgradeSplicer
from yurthub.upstream.backends import Backend
from yurthub.upstream.endpoints import BackendEndpointFactory
from yurthub.upstream.failover import FailoverFactory
from yurthub.upstream.health import HealthChecker
from yurthub.upstream.tls import FileCredentials

_log = Logger()


class Listener(Service):
    """Listens on a Twisted endpoint string with a protocol factory while running.

    A listener that cannot bind (port taken, permission) logs one line naming its config
    key and stops the reactor, so the process does not run half-deaf.
    """

    def __init__(self, reactor: Any, key: str, description: str, factory: IProtocolFactory) -> None:
        self._reactor = reactor
        self.key = key
        self.description = description
        self.factory = factory
        self.port: IListeningPort | None = None
        self.listening: defer.Deferred[IListeningPort] = defer.Deferred()

    def startService(self) -> None:  # noqa: N802
        super().startService()
        endpoint = serverFromString(self._reactor, self.description)
        d = endpoint.listen(self.factory)
        d.addCallbacks(self._bound, self._failed)

    def _bound(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        _log.info("{key} listening on {host}:{port}", key=self.key, host=address.host, port=address.port)  # type: ignore[attr-defined]
        self.listening.callback(port)

    def _failed(self, failure: Any) -> None:
        _log.critical(
            "cannot listen on {key} ({desc}): {err}",
            key=self.key,
            desc=self.description,
            err=failure.getErrorMessage(),
        )
        self.listening.errback(failure)
        self.listening.addErrback(lambda _: None)
        if IReactorCore.providedBy(self._reactor) and self._reactor.running:
            self._reactor.stop()

    def stopService(self) -> defer.Deferred[None] | None:  # noqa: N802
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)  # type: ignore[call-overload, no-any-return]
        return None

    @property
    def bound_port(self) -> int:
        """The TCP port actually bound (useful with port 0)."""
        assert self.port is not None, f"{self.key} is not listening"
        return self.port.getHost().port  # type: ignore[attr-defined, no-any-return]


@implementer(IOpenSSLContextFactory)
class ServingTLS:
    """The HTTPS proxy listener's TLS settings, swappable while it listens: each new
    handshake takes the current certificate (TLS 1.2 or later, HTTP/2 by ALPN), so a
    renewed serving certificate is used without a restart. Before there is one, handshakes
    fail."""

    def __init__(self) -> None:
        self.options: ssl.CertificateOptions | None = None

    def use(self, cert_pem: bytes, key_pem: bytes) -> None:
        certificate = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
        self.options = ssl.CertificateOptions(
            privateKey=certificate.privateKey.original,
            certificate=certificate.original,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            acceptableProtocols=[b"h2", b"http/1.1"],
        )

    def getContext(self) -> Any:  # noqa: N802 - the context-factory interface
        if self.options is None:
            raise ValueError("no serving certificate yet")
        return self.options.getContext()


def serving_tls_factory(cert_file: str, key_file: str, site: Site) -> TLSMemoryBIOFactory:
    """TLS around a site with the serving certificate and key in these files."""
    with open(cert_file, "rb") as f:
        cert_pem = f.read()
    with open(key_file, "rb") as f:
        key_pem = f.read()
    tls = ServingTLS()
    tls.use(cert_pem, key_pem)
    return TLSMemoryBIOFactory(tls, False, site)


def release_free_memory() -> None:
    """Ask glibc to return freed heap memory to the system (``malloc_trim``): after a big
    list is cached, Python has freed tens of MB in blocks the allocator would otherwise
    keep, and an edge node counts every one. A no-op where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def certificates_managed(config: Config) -> bool:
    """Whether the certificate manager runs: mode ``kubelet``, or mode ``token`` without a
    configured ``certFile`` and with a bootstrap token or a certificate from an earlier run."""
    certs = config.certificates
    if certs.cert_file:
        return False
    if certs.mode == "kubelet":
        return True
    return bool(certs.bootstrap_token) or os.path.lexists(os.path.join(certs.dir, "yurthub-current.pem"))


#: Listen backlog of the proxy listeners (Twisted's default is 50): a node's components
#: reconnecting at once after a restart would otherwise wait on SYN retransmits.
PROXY_BACKLOG = 1024


def _with_backlog(description: str) -> str:
    """A TCP/SSL endpoint description with ``backlog=`` set unless it says one itself."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={PROXY_BACKLOG}"
    return description


def _interface_ips(description: str) -> tuple[str, ...]:
    """The IP address a listener endpoint binds (``interface=``), if a specific one."""
    for part in description.split(":"):
        if part.startswith("interface="):
            address = part[len("interface=") :]
            if address not in ("", "0.0.0.0", "::"):
                return (address,)
    return ()


class YurtHub(MultiService):
    """One yurthub: proxy listeners, hub listener, remote proxy and health checker."""

    #: After a new client certificate, open watches end within this many seconds (each at
    #: a random moment), so no connection keeps presenting the old certificate for long.
    stream_refresh_seconds = 60.0

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        credentials: ICredentialSource | None = None,
        store: IObjectStore | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.metrics = ProxyMetrics()
        self.backends = [Backend(url, on_change=self._backend_changed) for url in config.servers]
        self.failover = FailoverFactory(config.load_balancing, self.backends)
        certs = config.certificates
        managed = certificates_managed(config)
        if credentials is None:
            if managed:  # the certificate manager fills it in
                credentials = FileCredentials.from_files(certs.ca_file if certs.mode == "token" else "")
            else:
                credentials = FileCredentials.from_files(certs.ca_file, certs.cert_file, certs.key_file)
        self.credentials = credentials
        node_endpoints = BackendEndpointFactory(reactor, self.credentials, with_client_certificate=True)
        token_endpoints = BackendEndpointFactory(reactor, self.credentials, with_client_certificate=False)
        self.store = store if store is not None else FilesystemObjectStore(config.cache.dir, reactor=reactor)
        # Decoding answers for the cache gets threads of its own: in the reactor's pool it
        # would delay what else runs there (getaddrinfo for a new connection to a backend
        # named by host name, in the middle of a failover).
        self.decode_pool = ThreadPool(minthreads=0, maxthreads=2, name="yurthub-cache-decode")
        self.cache = CacheManager(
            self.store,
            config.cache.agents,
            self.metrics,
            run_in_thread=lambda f, *args: threads.deferToThreadPool(reactor, self.decode_pool, f, *args),
            release_memory=release_free_memory,
        )
        self.local = LocalProxy(self.cache, reactor)
        self.loading: defer.Deferred[Any] = defer.succeed(None)
        self._wanted = False
        self._stopped = False
        self.remote = RemoteProxy(
            reactor,
            self.failover,
            node_endpoints,
            token_endpoints,
            self.metrics,
            cache=self.cache,
            return_grace=config.health_check.return_grace_seconds,
        )
        self.remote.stand_in = self.local.answer_if_cached
        self.upgrades = UpgradeSplicer(reactor, self.failover, node_endpoints, token_endpoints, self.metrics)
        self.metrics.registry.register(StoreHealthCollector(lambda: self.store.health))
        self.janitor = CacheJanitor(reactor, self.store, self.failover, self.remote.node_agent, config.node_name)
        self.health = HealthChecker(reactor, self.backends, node_endpoints, config.health_check, self.metrics)
        flow = config.flow_control
        self.limiter = InFlightLimiter(
            flow.max_requests_in_flight, self.metrics, exempt_long_running=flow.exempt_long_running
        )
        self.root = ProxyRoot(
            self.remote, self.upgrades, self.metrics, unavailable=self.local.answer, limiter=self.limiter
        )
        # Response filters and tenant isolation (yurthub/filters/).
        self.node_pools = NodePools(self.cache, config.node_name)
        self.filters = make_filter_chain(config, self.cache, self.node_pools)
        self.remote.filters = self.local.filters = self.filters
        self.root.guard = make_tenant_guard(config, reactor, self.failover, self.remote.node_agent)
        self.pool_refresher = (
            NodeListRefresher(reactor, self.cache, self.failover, self.remote.node_agent)
            if needs_node_pools(config)
            else None
        )
        if self.pool_refresher is not None:
            self.node_pools.on_first_use = self.pool_refresher.start
        self.listening = Flag("listeners", "proxy listener not bound yet")
        self.cache_loaded = Flag("cache-loaded", "the cache is being read from disk")
        self.checks = [
            self.listening,
            self.cache_loaded,
            StoreHealthy(self.store),
            BackendsReachable(self.backends, offline_ok=lambda: self.cache_loaded.ok),
        ]
        # Both proxy listeners share one site, one in-flight limit and one connection count.
        self.connections = OpenConnections(flow.max_connections, self.metrics)
        self.proxy_site: ProxySite = make_site(
            self.root,
            leaf=True,
            timeout=flow.idle_timeout_seconds,
            limits=ChannelLimits(
                max_request_line_bytes=flow.max_request_line_bytes,
                max_header_bytes=flow.max_header_bytes,
                max_headers=flow.max_headers,
                head_timeout=flow.request_head_timeout_seconds,
            ),
            on_refused=self.connections.refused,
        )
        self.sites = [self.proxy_site]
        self.listeners: dict[str, Listener] = {}
        listen = config.listen
        if listen.proxy:
            # The plain listener (kubelet and the node's other components) is served by the
            # lean HTTP/1.1 server; the TLS one by twisted.web, which also speaks HTTP/2.
            self._listen(
                "listen.proxy", _with_backlog(listen.proxy), ConnectionCap(LeanFactory(self.proxy_site), self.connections)
            )
        self.serving_tls: ServingTLS | None = None
        if listen.secure_proxy:
            if certs.serving_cert_file:
                factory = serving_tls_factory(certs.serving_cert_file, certs.serving_key_file, self.proxy_site)
                self._listen(
                    "listen.secureProxy", _with_backlog(listen.secure_proxy), ConnectionCap(factory, self.connections)
                )
            elif managed and certs.mode == "token":
                # The certificate manager gets a serving certificate and renews it.
                self.serving_tls = ServingTLS()
                factory = TLSMemoryBIOFactory(self.serving_tls, False, self.proxy_site)
                self._listen(
                    "listen.secureProxy", _with_backlog(listen.secure_proxy), ConnectionCap(factory, self.connections)
                )
            else:
                _log.warn(
                    "listen.secureProxy is off: no serving certificate "
                    "(set certificates.servingCertFile and servingKeyFile)"
                )
        self.certificates: CertificateManager | None = None
        if managed:
            serving = self.serving_tls
            self.certificates = CertificateManager(
                reactor,
                config,
                self.credentials,
                self.failover,
                node_agent=self.remote.node_agent,
                token_agent=self.remote.token_agent,
                on_client_rotated=self._client_certificate_rotated,
                on_serving_rotated=(lambda c: serving.use(c.cert_pem, c.key_pem)) if serving is not None else None,
                serving_ips=_interface_ips(listen.secure_proxy),
                run_in_thread=lambda f, *args: threads.deferToThread(f, *args),
            )
            self.checks.append(CertificateReady(self.certificates))
        self.migration: ClusterMigration | None = None
        if self.certificates is not None and certs.mode == "token":
            self.migration = ClusterMigration(self)
            self.checks.append(self.migration.check)
        self.hub_root = make_hub_root(self.metrics, self.checks, self.certificates, self.migration)
        if listen.hub:
            hub_site = make_site(self.hub_root)
            self.sites.append(hub_site)
            self._listen("listen.hub", listen.hub, hub_site)

    def _listen(self, key: str, description: str, factory: IProtocolFactory) -> None:
        listener = Listener(self.reactor, key, description, factory)
        listener.setServiceParent(self)
        self.listeners[key] = listener

    def port_of(self, key: str) -> int:
        """The bound port of ``listen.proxy``, ``listen.secureProxy`` or ``listen.hub``."""
        return self.listeners[key].bound_port

    def _backend_changed(self, backend: Backend) -> None:
        self.metrics.backend_healthy.labels(backend.url).set(1 if backend.healthy else 0)
        self.health.backend_changed(backend)
        self.remote.backend_changed(backend)
        if backend.healthy:
            # Offline watches end as soon as the cloud is back, so clients re-watch there.
            self.local.cloud_is_back()
            if self.certificates is not None:
                self.certificates.cloud_is_back()
            self._collect_pods()

    def replace_backends(self, servers: Sequence[str]) -> None:
        """Use these cloud servers from now on (a cluster migration): new requests, health
        probes and readiness follow them; exchanges open on the old ones leave
        (`RemoteProxy.replace_backends`)."""
        old, self.backends = self.backends, [Backend(url, on_change=self._backend_changed) for url in servers]
        for backend in old:
            backend.retire()
        self.failover.replace(self.backends)
        self.health.replace(self.backends)
        self.remote.replace_backends(self.backends)
        for check in self.checks:
            if isinstance(check, BackendsReachable):
                check.use(self.backends)

    def replace_certificates(self, manager: CertificateManager) -> None:
        """The certificate manager from now on (a cluster migration)."""
        self.certificates = manager
        for check in self.checks:
            if isinstance(check, CertificateReady):
                check.manager = manager
        token_page: Any = self.hub_root.getStaticEntity(b"v1").getStaticEntity(b"token")  # type: ignore[attr-defined]
        token_page.certificates = manager

    def client_certificate_rotated(self) -> None:
        """What a new client certificate needs (see `_client_certificate_rotated`)."""
        self._client_certificate_rotated()

    def _collect_pods(self) -> None:
        if self.cache_loaded.ok and not self.janitor.pods_collected and not self._stopped:
            self.janitor.collect_pods().addErrback(lambda f: _log.failure("pod collection failed", f))

    def _client_certificate_rotated(self) -> None:
        """A new client certificate is installed: idle connections that hold the old one
        are closed, open streams end within a minute (each at a random moment)."""
        for pool in (*self.remote.pools, self.health.pool):
            pool.closeCachedConnections()
        self.remote.end_streams_within(self.stream_refresh_seconds)

    def startService(self) -> None:  # noqa: N802
        for warning in describe(self.config):
            _log.warn("{text}", text=warning)
        # Listeners open once the cache is in memory: nothing is answered from half of it.
        self._wanted = True
        self.decode_pool.start()
        self.loading = self.store.load()
        self.loading.addCallbacks(self._loaded, self._load_failed)
        self.health.start()
        if self.certificates is not None:
            self.certificates.start().addErrback(lambda f: _log.failure("certificate manager failed to start", f))
        _log.info(
            "yurthub for node {node} proxying to {servers} ({mode})",
            node=self.config.node_name,
            servers=", ".join(self.config.servers),
            mode=self.config.load_balancing,
        )

    def _load_failed(self, failure: Any) -> None:
        _log.critical("cannot use the cache directory: {err}", err=failure.getErrorMessage())
        for listener in self.listeners.values():
            if not listener.listening.called:
                listener.listening.errback(failure)
                listener.listening.addErrback(lambda _: None)
        if IReactorCore.providedBy(self.reactor) and self.reactor.running:
            # Exit status 1 once the reactor has shut down, so systemd's Restart=on-failure
            # (and an operator's shell) sees a failure; twistd itself would exit 0.
            self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
            self.reactor.stop()

    def _loaded(self, _: object) -> None:
        self.cache_loaded.ok = True
        if not self._wanted:  # stopped while loading
            return
        self.janitor.start()
        self.reactor.callLater(0, self._collect_pods)
        super().startService()
        proxy = self.listeners.get("listen.proxy") or self.listeners.get("listen.secureProxy")
        if proxy is not None:
            proxy.listening.addCallback(lambda _: setattr(self.listening, "ok", True))
        else:
            self.listening.ok = True

    @defer.inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]  # noqa: N802
        if self._stopped:
            return
        self._stopped = True
        self._wanted = False
        if self.running:
            yield defer.maybeDeferred(super().stopService)
        for site in self.sites:
            site.close_connections()
        yield self.health.stop()
        if self.certificates is not None:
            self.certificates.stop()
        self.janitor.stop()
        if self.pool_refresher is not None:
            self.pool_refresher.stop()
        self.local.close()
        yield self.remote.close()
        yield self.loading
        yield self.cache.drain()
        if self.decode_pool.started:
            self.decode_pool.stop()
        yield self.store.close()

    def started(self) -> defer.Deferred[Any]:
        """Fires when every listener is bound (errbacks if one cannot bind)."""
        return defer.gatherResults([listener.listening for listener in self.listeners.values()], consumeErrors=True)
