"""Builds the filter chain and tenant rules a configuration asks for."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from yurthub.cache.manager import CacheManager
from yurthub.config import Config
from yurthub.filters.chain import Filter, FilterChain
from yurthub.filters.discardcloudservice import DiscardCloudServiceFilter
from yurthub.filters.inclusterconfig import InClusterConfigFilter
from yurthub.filters.masterservice import MasterServiceFilter
from yurthub.filters.nodepools import NodePools
from yurthub.filters.nodeportisolation import NodePortIsolationFilter
from yurthub.filters.servicetopology import ServiceTopologyFilter
from yurthub.filters.tenant import Tenant, TenantFilter, TenantGuard, TenantTokens
from yurthub.interfaces import IFailoverFactory

_log = Logger()


def secure_listener_address(description: str) -> tuple[str, int] | None:
    """The address and port of a ``tcp:PORT:interface=ADDR`` listener description; None
    when it is off, has no fixed port or binds no single address."""
    parts = description.split(":")
    if len(parts) < 2 or parts[0] not in ("tcp", "ssl") or not parts[1].isdigit() or parts[1] == "0":
        return None
    host = next((p[len("interface=") :] for p in parts[2:] if p.startswith("interface=")), "")
    if host in ("", "0.0.0.0", "::"):
        return None
    return host, int(parts[1])


def make_filter_chain(config: Config, cache: CacheManager, pools: NodePools) -> FilterChain | None:
    """The enabled filters (``filters``) and, with ``tenant.namespaces``, the tenant stage
    last; None when there are none."""
    filters: list[Filter] = []
    for name in config.filters:
        if name == "masterservice":
            address = secure_listener_address(config.listen.secure_proxy)
            if address is None:
                _log.warn(
                    "filter masterservice is off: listen.secureProxy {desc!r} names no address and port pods can reach",
                    desc=config.listen.secure_proxy,
                )
                continue
            filters.append(MasterServiceFilter(*address))
        elif name == "servicetopology":
            filters.append(ServiceTopologyFilter(cache, pools))
        elif name == "discardcloudservice":
            filters.append(DiscardCloudServiceFilter())
        elif name == "inclusterconfig":
            filters.append(InClusterConfigFilter())
        elif name == "nodeportisolation":
            filters.append(NodePortIsolationFilter(pools))
    if config.tenant.namespaces:
        filters.append(TenantFilter(tenant_of(config)))
    return FilterChain(filters) if filters else None


def tenant_of(config: Config) -> Tenant:
    return Tenant(config.tenant.namespaces, config.node_name, config.tenant.cluster_resources)


def make_tenant_guard(config: Config, clock: Any, failover: IFailoverFactory, agent: Any) -> TenantGuard | None:
    """The request-side tenant rules, with the token swap, or None without a tenant."""
    if not config.tenant.namespaces:
        return None
    tenant = tenant_of(config)
    return TenantGuard(tenant, TenantTokens(clock, failover, agent, tenant.token_namespace))


def needs_node_pools(config: Config) -> bool:
    return "servicetopology" in config.filters or "nodeportisolation" in config.filters
