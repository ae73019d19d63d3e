import gc

from twisted.application.service import ServiceMaker


class _YurtHubMaker(ServiceMaker):
    """twistd asks for ``options`` of the chosen subcommand only, just before it imports
    and builds yurthub: from then until `yurthub.tap.ProcessTuning` starts, the garbage
    collector is paused. Those imports and the cache load allocate much and free little,
    and the collections they triggered cost ~0.1 s of CPU of a restart."""

    @property
    def options(self):  # type: ignore[override]
        gc.disable()
        return super().options


yurthub = _YurtHubMaker("yurthub", "yurthub.tap", "Kubernetes edge-node proxy with offline cache", "yurthub")
