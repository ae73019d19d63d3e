"""yurthub: the Kubernetes edge-node proxy (streaming, caching, failover, autonomy)."""

__version__ = "0.1.0.dev0"
