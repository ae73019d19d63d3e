"""Moving the node to another cluster while it keeps serving.

`ClusterMigration.migrate` takes cluster B's servers, bootstrap token and CA pins (from
``PUT /v1/cluster`` on the hub listener, or from a changed config file and SIGHUP) and:

1. bootstraps against B with a second `CertificateManager` that shares nothing with the
   running one: B's CA is discovered with B's token and pins, a client certificate (and a
   serving certificate when the HTTPS listener is on) is issued by B with B's token, each
   saved in the staging directory ``<certificates.dir>/migrating``. Meanwhile the node is
   served from cluster A and its cache as before; any failure ends the migration there and
   A stays, the reason in the answer and in ``/v1/readyz``;
2. moves A's files (``ca.crt``, ``yurthub-*``) to ``<certificates.dir>/previous`` and B's
   into ``<certificates.dir>`` (in a thread);
3. switches in one reactor turn: A's certificate manager stops, the credential source gets
   B's CA and certificate, the backends become B's (failover order, health probes,
   readiness, open exchanges: see `RemoteProxy.replace_backends`), and B's manager goes on
   rotating B's certificate with the running yurthub's connections.

The cache is kept: A's objects are answered until B's lists replace them.

Any change of the three keys is a migration, even to the same cluster under other
addresses: a new certificate is cheaper than a check that could be fooled.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, threads
from twisted.internet.error import TimeoutError as TimeoutError_
from twisted.logger import Logger
from zope.interface import implementer

from yurthub.certificates.manager import CertificateManager
from yurthub.config import Config, ConfigError, check_value
from yurthub.interfaces import IReadinessCheck
from yurthub.proxy.remote import BackendAgent, make_pool
from yurthub.upstream.backends import Backend
from yurthub.upstream.endpoints import BackendEndpointFactory
from yurthub.upstream.failover import FailoverFactory
from yurthub.upstream.tls import FileCredentials

if TYPE_CHECKING:
    from yurthub.service import YurtHub

_log = Logger()

#: How long a migration may take before it is given up (A stays).
MIGRATION_TIMEOUT = 60.0
STAGING = "migrating"
PREVIOUS = "previous"

#: The keys of the config file a migration changes; the others need a restart.
CLUSTER_KEYS = ("servers", "certificates.bootstrapToken", "certificates.caCertHashes")


@dataclass(frozen=True)
class ClusterTarget:
    """The cluster to move to: its servers, a bootstrap token and its CA pins."""

    servers: tuple[str, ...]
    bootstrap_token: str
    ca_cert_hashes: tuple[str, ...]


class InvalidField(ValueError):
    """A field of a ``PUT /v1/cluster`` body is missing or wrong; ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


class MigrationError(Exception):
    """A migration did not happen; ``code`` is the HTTP code of the answer."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


_FIELDS = {
    "servers": "servers",
    "bootstrapToken": "certificates.bootstrapToken",
    "caCertHashes": "certificates.caCertHashes",
}


def parse_cluster_request(body: bytes) -> ClusterTarget:
    """The target of a ``PUT /v1/cluster`` body, checked as the config file's keys are;
    `InvalidField` naming the first field that is missing, unknown or wrong."""
    try:
        document = json.loads(body or b"null")
    except ValueError as e:
        raise InvalidField("", f"the body is not JSON: {e}") from None
    if not isinstance(document, dict):
        raise InvalidField("", 'expected {"servers": [...], "bootstrapToken": "...", "caCertHashes": [...]}')
    for key in document:
        if key not in _FIELDS:
            raise InvalidField(str(key), f"unknown field (known: {', '.join(_FIELDS)})")
    values: dict[str, Any] = {}
    for field, key in _FIELDS.items():
        if field not in document:
            raise InvalidField(field, "required")
        try:
            values[field] = check_value(key, document[field])
        except ConfigError as e:
            raise InvalidField(field, e.problem) from None
    if not values["bootstrapToken"]:
        raise InvalidField("bootstrapToken", "must not be empty")
    if not values["caCertHashes"]:
        raise InvalidField("caCertHashes", "must list at least one sha256 pin of the new cluster's CA")
    return ClusterTarget(values["servers"], values["bootstrapToken"], values["caCertHashes"])


def target_of(config: Config) -> ClusterTarget:
    """The cluster a config names."""
    certs = config.certificates
    return ClusterTarget(config.servers, certs.bootstrap_token, certs.ca_cert_hashes)


def changed_keys(old: Config, new: Config) -> list[str]:
    """The dotted YAML keys whose values differ between two configs."""
    from dataclasses import fields, is_dataclass

    from yurthub.config import camel

    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        for f in fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            key = prefix + camel(f.name)
            if is_dataclass(x):
                walk(x, y, key + ".")
            elif x != y:
                out.append(key)

    walk(old, new, "")
    return out


@implementer(IReadinessCheck)
class MigrationCheck:
    """``/v1/readyz``: fails after a migration failed (with why, and that the node stays
    on its cluster) until a later one succeeds or names the cluster in use; says what a
    migration under way is doing."""

    name = "migration"

    def __init__(self, migration: ClusterMigration) -> None:
        self._migration = migration

    def check(self) -> tuple[bool, str]:
        m = self._migration
        if m.error:
            return False, m.error
        return True, m.doing


class ClusterMigration:
    """Moves the running yurthub to another cluster (see the module doc)."""

    def __init__(
        self,
        hub: YurtHub,
        *,
        timeout: float = MIGRATION_TIMEOUT,
        run_in_thread: Callable[..., defer.Deferred[Any]] = threads.deferToThread,
    ) -> None:
        self.hub = hub
        self.timeout = timeout
        self._run = run_in_thread
        #: The last failure, until a later migration succeeds ("" when none).
        self.error = ""
        #: What a migration under way is doing ("" when none is).
        self.doing = ""
        self.busy = False
        self.check = MigrationCheck(self)

    # --- entry points ---------------------------------------------------------------------

    def migrate(self, target: ClusterTarget) -> defer.Deferred[str]:
        """Move to ``target``; fires with a one-line summary when the node is switched,
        fails with `MigrationError` (nothing changed) when it cannot be."""
        if self.busy:
            return defer.fail(MigrationError(409, f"a migration is under way ({self.doing})"))
        self.busy = True
        d = defer.ensureDeferred(self._migrate(target))
        d.addErrback(self._failed, target)

        def idle(result: Any) -> Any:
            self.busy = False
            self.doing = ""
            return result

        d.addBoth(idle)
        return d

    def reload(self, config: Config) -> defer.Deferred[str] | None:
        """The config file was read again (SIGHUP): migrate if the cluster keys changed,
        log the other changed keys as needing a restart. Fires with the outcome (never
        fails: the outcome is logged), or None when there is nothing to migrate."""
        current = self.hub.config
        others = [k for k in changed_keys(current, config) if k not in CLUSTER_KEYS]
        for key in others:
            _log.warn("config reload: {key} changed; it takes effect at the next restart", key=key)
        target = target_of(config)
        if target == target_of(current):
            self.error = ""  # the file names the cluster in use: an old failure is history
            return None
        _log.info("config reload: moving to the cluster at {servers}", servers=", ".join(target.servers))
        d = self.migrate(target)

        def logged(result: Any) -> Any:
            if isinstance(result, str):
                _log.info("config reload: {text}", text=result)
            else:
                _log.error("config reload: the migration failed, staying: {err}", err=result.getErrorMessage())
            return result if isinstance(result, str) else result.getErrorMessage()

        return d.addBoth(logged)

    # --- the migration --------------------------------------------------------------------

    async def _migrate(self, target: ClusterTarget) -> str:
        hub = self.hub
        old = hub.certificates
        certs = hub.config.certificates
        if old is None or old.mode != "token" or certs.ca_file:
            raise MigrationError(
                409,
                "migration needs yurthub to manage its certificates (certificates.mode token, "
                "no certFile, no caFile)",
            )
        if target == target_of(hub.config):
            self.error = ""
            return "already on this cluster: " + ", ".join(target.servers)
        config = replace(
            hub.config,
            servers=target.servers,
            certificates=replace(certs, bootstrap_token=target.bootstrap_token, ca_cert_hashes=target.ca_cert_hashes),
        )
        staging = os.path.join(certs.dir, STAGING)
        self.doing = f"bootstrapping against {', '.join(target.servers)}"
        await self._run(_empty_directory, staging)
        credentials = FileCredentials()
        backends = [Backend(url) for url in target.servers]
        pools = [make_pool(hub.reactor, 1, 10.0) for _ in range(2)]
        agents = [
            BackendAgent(hub.reactor, BackendEndpointFactory(hub.reactor, credentials, with_client_certificate=cert), pool)
            for cert, pool in zip((True, False), pools, strict=True)
        ]
        serving_tls = hub.serving_tls
        manager = CertificateManager(
            hub.reactor,
            config,
            credentials,
            FailoverFactory(config.load_balancing, backends),
            node_agent=agents[0],
            token_agent=agents[1],
            on_serving_rotated=(lambda c: serving_tls.use(c.cert_pem, c.key_pem)) if serving_tls is not None else None,
            serving_ips=old.serving.spec.ip_addresses if old.serving is not None else (),
            run_in_thread=self._run,
            directory=staging,
        )
        # Only this step is bounded: once B's certificates exist the switch is quick, and
        # it must not be cut half-way.
        bootstrapping = defer.ensureDeferred(manager.bootstrap())
        bootstrapping.addTimeout(self.timeout, self.hub.reactor)
        try:
            ca_pem, client, serving = await bootstrapping
        except TimeoutError_:
            raise MigrationError(
                504, f"cannot bootstrap against {', '.join(target.servers)}: no answer within {self.timeout:g}s"
            ) from None
        except Exception as e:
            raise MigrationError(502, f"cannot bootstrap against {', '.join(target.servers)}: {e}") from None
        finally:
            for pool in pools:
                pool.closeCachedConnections()
        self.doing = "switching"
        await self._run(_swap_directories, certs.dir, staging)
        self._switch(config, manager, ca_pem, client, serving)
        self.error = ""
        return f"moved to the cluster at {', '.join(config.servers)} ({client.common_name})"

    def _switch(self, config: Config, manager: CertificateManager, ca_pem: bytes, client: Any, serving: Any) -> None:
        """One reactor turn: from now on everything is cluster B's."""
        hub = self.hub
        old = hub.certificates
        if old is not None:
            old.stop()
        hub.credentials.replace(ca_pem, client.cert_pem, client.key_pem)  # type: ignore[union-attr]
        manager.relocate(config.certificates.dir)
        manager.rebind(
            hub.credentials,
            hub.failover,
            node_agent=hub.remote.node_agent,
            token_agent=hub.remote.token_agent,
            on_client_rotated=hub.client_certificate_rotated,
        )
        hub.replace_backends(config.servers)
        hub.replace_certificates(manager)
        hub.config = config
        # B's resourceVersions do not continue A's: a list of B at the version A's list had
        # is not "unchanged", BOOKMARKs of A say nothing about B, and an object B holds at
        # a lower version than A's copy must still replace it.
        hub.cache.forget_versions()
        manager.adopt(ca_pem, client, serving)
        _log.info("moved to the cluster at {servers}", servers=", ".join(config.servers))

    def _failed(self, failure: Any, target: ClusterTarget) -> Any:
        if failure.check(MigrationError) and failure.value.code == 409:
            return failure  # refused up front: not a failed migration
        if not failure.check(MigrationError):
            _log.failure("migration failed", failure)
            failure = MigrationError(500, f"migration failed: {failure.getErrorMessage()}")
        else:
            failure = failure.value
        self.error = f"moving to {', '.join(target.servers)} failed, still on {', '.join(self.hub.config.servers)}: {failure}"
        _log.error("{err}", err=self.error)
        raise failure


def _empty_directory(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, mode=0o700)


def _swap_directories(main: str, staging: str) -> None:
    """A's files (``ca.crt``, ``yurthub-*``) to ``<main>/previous``, B's from staging to
    ``main``. Blocking."""
    previous = os.path.join(main, PREVIOUS)
    shutil.rmtree(previous, ignore_errors=True)
    os.makedirs(previous, mode=0o700)
    for name in _cluster_files(main):
        os.replace(os.path.join(main, name), os.path.join(previous, name))
    for name in os.listdir(staging):
        os.replace(os.path.join(staging, name), os.path.join(main, name))
    os.rmdir(staging)
    fd = os.open(main, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cluster_files(directory: str) -> Sequence[str]:
    return [n for n in os.listdir(directory) if n == "ca.crt" or n.startswith("yurthub-")]


__all__ = [
    "CLUSTER_KEYS",
    "ClusterMigration",
    "ClusterTarget",
    "InvalidField",
    "MigrationCheck",
    "MigrationError",
    "changed_keys",
    "parse_cluster_request",
    "target_of",
]
