"""``twistd yurthub``: command-line options and the service maker.

The options read the config file (``--config``, default ``/etc/yurthub/yurthub.yaml``) and
let single keys be overridden. Any problem with them ends start-up with one line naming the
file and the key and a non-zero exit status, never a traceback. ``--demo`` starts the
simulated kube-apiserver in the same process, seeded with sample objects, and points yurthub
at it: a whole edge node's view of a cluster with nothing else installed.
"""

from __future__ import annotations

import ctypes
import gc
import signal
import sys
import tempfile
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python import usage

from yurthub import logs
from yurthub.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from yurthub.dispatch import dispatch_without_log_context
from yurthub.upstream.tls import CredentialError

DEMO_CLOUD_PORT = 16443

#: ``mallopt`` parameter number of glibc's mmap threshold (``M_MMAP_THRESHOLD``, malloc.h).
M_MMAP_THRESHOLD = -3

#: Blocks this big or bigger are mapped on their own and unmapped when freed. glibc's own
#: threshold starts at 128 KiB and rises to the largest block freed so far (up to 32 MiB):
#: after one big list answer (28 MB for 10,000 pods) every later big block comes from the
#: heap, whose free space then stays in the process (2.5 MB more RSS after caching it).
#: Fixed here, the threshold stops moving; 4 MiB keeps a list answer's per-request copies
#: (hundreds of KB) in the heap, where they cost no page faults.
MMAP_THRESHOLD = 4 * 1024 * 1024

_log = Logger()


class Options(usage.Options):
    """``twistd yurthub`` options; each override replaces one key of the config file."""

    synopsis = "[options]"
    longdesc = (
        "Run yurthub, the Kubernetes edge-node proxy. Settings come from the config file; "
        "the options below override single keys. --demo runs against a simulated cloud."
    )
    optFlags = [
        ["demo", None, "start a simulated kube-apiserver in-process and proxy to it"],
    ]
    optParameters = [
        ["config", "c", None, f"config file (default {DEFAULT_CONFIG_PATH})"],
        ["node-name", None, None, "nodeName: this node's name"],
        ["lb-mode", None, None, "loadBalancing: rr or priority"],
        ["cache-dir", None, None, "cache.dir: where cached objects are kept"],
        ["proxy-listen", None, None, "listen.proxy: endpoint string of the HTTP proxy"],
        ["secure-listen", None, None, "listen.secureProxy: endpoint string of the HTTPS proxy"],
        ["hub-listen", None, None, "listen.hub: endpoint string of the hub (health, metrics)"],
        ["ca-file", None, None, "certificates.caFile: the cluster CA bundle"],
        ["cert-file", None, None, "certificates.certFile: client certificate for the cloud"],
        ["key-file", None, None, "certificates.keyFile: its private key"],
        ["log-level", None, None, "logging.level: debug, info, warn or error"],
        ["log-format", None, None, "logging.format: text or json"],
        ["demo-port", None, str(DEMO_CLOUD_PORT), "port of the simulated cloud with --demo"],
    ]

    _KEYS = {
        "node-name": "nodeName",
        "lb-mode": "loadBalancing",
        "cache-dir": "cache.dir",
        "proxy-listen": "listen.proxy",
        "secure-listen": "listen.secureProxy",
        "hub-listen": "listen.hub",
        "ca-file": "certificates.caFile",
        "cert-file": "certificates.certFile",
        "key-file": "certificates.keyFile",
        "log-level": "logging.level",
        "log-format": "logging.format",
    }

    def __init__(self) -> None:
        super().__init__()
        self["servers"] = []
        self.config: Config | None = None

    def opt_server(self, url: str) -> None:
        """servers: a cloud API server URL; repeat for several (replaces the file's list)"""
        self["servers"].append(url)

    def overrides(self) -> dict[str, object]:
        """The config keys given on the command line, as dotted YAML keys."""
        out: dict[str, object] = {key: self[opt] for opt, key in self._KEYS.items() if self[opt] is not None}
        if self["servers"]:
            out["servers"] = list(self["servers"])
        return out

    def postOptions(self) -> None:  # noqa: N802
        overrides = self.overrides()
        if self["demo"]:
            try:
                port = int(self["demo-port"])
            except ValueError:
                raise SystemExit(f"yurthub: --demo-port: must be a port number, got {self['demo-port']!r}") from None
            overrides.setdefault("servers", [f"http://127.0.0.1:{port}"])
            overrides.setdefault("nodeName", "edge-1")
            overrides.setdefault("cache.dir", tempfile.mkdtemp(prefix="yurthub-demo-cache-"))
        path = self["config"] or DEFAULT_CONFIG_PATH
        # The default file may be absent when the command line (or the demo) says enough.
        required = self["config"] is not None or "servers" not in overrides
        try:
            self.config = load_config(path, overrides, required=required)
        except ConfigError as e:
            raise SystemExit(f"yurthub: {e}") from None
        parent: Any = self.parent
        if parent is not None and not parent.get("logger"):
            logs.configure(self.config.logging.level, self.config.logging.format)
            parent["logger"] = "yurthub.logs.observer"


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD, libc_name: str = "libc.so.6") -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (see `MMAP_THRESHOLD`); False
    where there is no glibc to ask (musl, macOS), which changes nothing else."""
    try:
        return bool(ctypes.CDLL(libc_name).mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


#: Seconds after start-up before the collector is run and what survives is frozen: the
#: cache is loaded and the first requests answered by then, and neither waits for it.
FREEZE_AFTER = 5.0


class ProcessTuning(Service):
    """Garbage-collector and allocator settings for a long-running proxy process.

    The youngest generation is collected every 20,000 allocations instead of 700: the
    proxy allocates many short-lived objects per request, almost all freed by reference
    counting, and scanning them that often cost about 8 % of its CPU per request under
    load (20 % more requests per second in the 100-pod list benchmark). `FREEZE_AFTER`
    seconds after start everything built by then (modules, config, the resource tree, the
    loaded cache index) is collected once and moved out of the collector's sight with
    ``gc.freeze()``: done later rather than at start, the full collection (about 30 ms)
    does not delay the listeners or the first answer after a restart. glibc's mmap
    threshold is fixed (`fix_mmap_threshold`). From the moment twistd picks the yurthub
    subcommand until this service starts, the collector is paused (the plugin,
    ``twisted/plugins/yurthub_plugin.py``): the imports and the building of the service
    allocate much and free little, and the collections they triggered cost ~0.1 s of CPU
    of a start; this service turns it back on. Only the process's own ``twistd yurthub``
    gets this; tests and embedders keep Python's and glibc's defaults. The epoll reactor
    dispatches events without the legacy log context (`yurthub.dispatch`).
    """

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor
        self._freezing: Any = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        fix_mmap_threshold()
        gc.set_threshold(20_000, 20, 20)
        gc.enable()  # paused by the twistd plugin while yurthub was imported and built
        if self._reactor is None:
            self.freeze()
            return
        dispatch_without_log_context(self._reactor)
        self._freezing = self._reactor.callLater(FREEZE_AFTER, self.freeze)

    def stopService(self) -> None:  # noqa: N802
        super().stopService()
        if self._freezing is not None and self._freezing.active():
            self._freezing.cancel()
        self._freezing = None

    def freeze(self) -> None:
        """Collect once, then keep everything alive now out of later collections."""
        self._freezing = None
        gc.collect()
        gc.freeze()


class ConfigReloader(Service):
    """SIGHUP reads the config file again (with the same command-line overrides): changed
    ``servers``, ``certificates.bootstrapToken`` or ``certificates.caCertHashes`` move the
    node to that cluster (`yurthub.migration`); other changed keys are logged as taking
    effect at the next restart; a file that does not validate is logged and changes
    nothing. The handler is installed while the service runs."""

    def __init__(self, reactor: Any, hub: Any, path: str, overrides: dict[str, object], required: bool) -> None:
        self._reactor = reactor
        self._hub = hub
        self._path = path
        self._overrides = overrides
        self._required = required
        self._previous: Any = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _hangup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self._reload_logged)

    def _reload_logged(self) -> None:
        self.reload().addErrback(lambda f: _log.failure("config reload failed", f))

    def reload(self) -> defer.Deferred[Any]:
        """Read the file again (in a thread: no disk work on the reactor) and act on it;
        fires with the migration's result, or None when nothing is to be done."""
        d = threads.deferToThread(load_config, self._path, self._overrides, required=self._required)
        d.addCallbacks(self._reloaded, self._invalid)
        return d

    def _invalid(self, failure: Any) -> None:
        failure.trap(ConfigError)
        _log.error("config reload: {err}; nothing changed", err=failure.getErrorMessage())

    def _reloaded(self, config: Config) -> Any:
        migration = getattr(self._hub, "migration", None)
        if migration is None:
            _log.warn("config reload: nothing can change without a restart (certificates are not managed by yurthub)")
            return None
        return migration.reload(config)


class _Announce(Service):
    """Prints how to use the demo once everything listens."""

    def __init__(self, hub: Any, cloud_url: str) -> None:
        self._hub = hub
        self._cloud_url = cloud_url

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self._hub.started().addCallback(lambda _: self._print())

    def _print(self) -> None:
        proxy = self._hub.port_of("listen.proxy")
        hub = self._hub.port_of("listen.hub")
        print(
            "\n".join(
                [
                    "",
                    f"yurthub demo: simulated cloud at {self._cloud_url}, yurthub proxy at http://127.0.0.1:{proxy}",
                    "try:",
                    f"  kubectl --server http://127.0.0.1:{proxy} get pods -A",
                    f"  kubectl --server http://127.0.0.1:{proxy} get nodes",
                    f"  curl -s http://127.0.0.1:{hub}/v1/readyz?verbose",
                    f"  curl -s http://127.0.0.1:{hub}/metrics | grep yurthub_",
                    "",
                ]
            ),
            flush=True,
        )


def makeService(options: Options) -> IService:  # noqa: N802 - twistd's name
    """Build the yurthub service (plus the simulated cloud with ``--demo``)."""
    from twisted.internet import reactor

    from yurthub.service import YurtHub

    config = options.config
    if config is None:  # parseOptions was not run (a caller building options by hand)
        options.postOptions()
        config = options.config
    assert config is not None
    try:
        hub = YurtHub(config, reactor)
    except (CredentialError, OSError) as e:
        print(f"yurthub: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    top = MultiService()
    ProcessTuning(reactor).setServiceParent(top)
    overrides = options.overrides()
    ConfigReloader(
        reactor,
        hub,
        options["config"] or DEFAULT_CONFIG_PATH,
        overrides,
        required=options["config"] is not None or "servers" not in overrides,
    ).setServiceParent(top)
    if not options["demo"]:
        hub.setServiceParent(top)
        return top
    from yurthub.testing.apiserver import SimulatedAPIServer
    from yurthub.testing.demo import seed_demo_objects

    cloud = SimulatedAPIServer(reactor)
    seed_demo_objects(cloud)
    _CloudService(cloud, f"tcp:{int(options['demo-port'])}:interface=127.0.0.1").setServiceParent(top)
    hub.setServiceParent(top)
    _Announce(hub, config.servers[0]).setServiceParent(top)
    return top


class _CloudService(Service):
    """Runs the simulated cloud of ``--demo`` for the life of the process."""

    def __init__(self, cloud: Any, endpoint: str) -> None:
        self._cloud = cloud
        self._endpoint = endpoint

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self._cloud.start(self._endpoint)

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        return self._cloud.stop()
