"""Keeping one certificate current: load it, renew it on time, retry with backoff.

`CertificateRotator` owns one certificate (the node's client certificate, or the serving
certificate of the HTTPS proxy listener). At start it loads ``<pki>/<name>-current.pem``;
without a usable one (missing, corrupted, expired) it asks for a new one at once. Each
certificate gets a rotation deadline drawn uniformly between 70 % and 90 % of its lifetime,
as client-go's certificate manager does, so a fleet of nodes does not renew in lockstep.

The rotator is a `LoopingCall` on an injected clock that checks every 30 s (less up to
10 % at random) and, besides, a timer set for the deadline itself: a certificate that lives
seconds (as in tests) rotates on time, not at the next 30 s tick. Getting a certificate
(`obtain`: key, CSR, signature) that fails is retried after 2 s, then 4, 8, 16 and 32 s at
most, and never stops the loop. Every new certificate is written to disk in a thread and
then handed to ``install`` on the reactor.
"""

from __future__ import annotations

import random as _random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from yurthub.certificates.csr import build_csr, new_private_key
from yurthub.certificates.pki import CertificateStore, Credential

_log = Logger()

CHECK_INTERVAL = 30.0
JITTER = 0.1
ROTATE_FROM, ROTATE_TO = 0.7, 0.9
BACKOFF_FIRST, BACKOFF_MAX = 2.0, 32.0


@dataclass(frozen=True)
class CertificateSpec:
    """What to ask for: the subject, the names, and which signer for which use."""

    name: str  # the store's file prefix: yurthub, yurthub-server
    common_name: str
    organizations: tuple[str, ...]
    signer_name: str
    usages: tuple[str, ...]
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    expiration_seconds: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


#: obtain(spec, csr_pem) -> certificate PEM (awaitable); raises to say why it could not.
Obtain = Callable[[CertificateSpec, bytes], Awaitable[bytes]]
Runner = Callable[..., "defer.Deferred[Any]"]


def rotation_deadline(credential: Credential, draw: float, issued_at: float | None = None) -> float:
    """The moment to renew: ``draw`` (0..1) picks a point between 70 % and 90 % of the
    certificate's lifetime.

    The lifetime counts from ``issued_at`` when the certificate is newer than its
    ``notBefore``: Kubernetes signers backdate ``notBefore`` by five minutes, which for a
    certificate living seconds or minutes would put the deadline in the past and renew it
    over and over.
    """
    start = credential.not_before if issued_at is None else max(credential.not_before, issued_at)
    lifetime = credential.not_after - start
    return start + lifetime * (ROTATE_FROM + (ROTATE_TO - ROTATE_FROM) * draw)


class CertificateRotator:
    """Keeps one certificate of `spec` current in `store`."""

    def __init__(
        self,
        clock: IReactorTime,
        spec: CertificateSpec,
        store: CertificateStore,
        obtain: Obtain,
        install: Callable[[Credential], None],
        *,
        run_in_thread: Runner,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.clock = clock
        self.spec = spec
        self.store = store
        self._obtain = obtain
        self._install = install
        self._run = run_in_thread
        self._random = random
        self.credential: Credential | None = None
        self.deadline = 0.0
        self.last_error = ""
        self.rotations = 0
        self._loop: LoopingCall | None = None
        self._timer: Any = None
        self._backoff = BACKOFF_FIRST
        self._busy = False
        self._stopped = False
        self._retry_at = 0.0
        self._renewing: defer.Deferred[None] | None = None

    # --- life -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self, credential: Credential | None = None):  # type: ignore[no-untyped-def]
        """Load the current certificate (in a thread), install it if usable, then check
        on schedule. Fires once loaded, before any renewal has finished. A ``credential``
        given (one obtained beforehand and already in the store) is used without reading."""
        if credential is None:
            credential = yield self._run(self.store.current)
        if credential is not None and not credential.expired(self.clock.seconds()):
            self._use(credential)
        elif credential is not None:
            self.last_error = "the certificate on disk has expired"
            _log.warn("{name}: the certificate on disk expired; getting a new one", name=self.spec.name)
        if self._stopped:
            return
        loop = LoopingCall(self.check)
        loop.clock = self.clock
        self._loop = loop
        loop.start(CHECK_INTERVAL, now=True)

    def stop(self) -> None:
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._cancel_timer()
        if self._renewing is not None:  # a renewal waiting on the cloud: give it up
            self._renewing.cancel()

    @property
    def valid(self) -> bool:
        """A certificate is installed and has not expired."""
        return self.credential is not None and not self.credential.expired(self.clock.seconds())

    # --- the schedule -------------------------------------------------------------------

    def check(self) -> None:
        """Renew if there is no usable certificate or its deadline has passed (the loop's
        and the timers' function; never raises)."""
        loop = self._loop
        if loop is not None:
            loop.interval = CHECK_INTERVAL * (1 - JITTER * self._random())
            loop.starttime = self.clock.seconds()
        if self._busy or self._stopped or self.clock.seconds() < self._retry_at:
            return  # under way, stopped, or backing off after a failure
        if self.credential is not None and self.clock.seconds() < self.deadline and self.valid:
            return
        self.renew_now()

    def renew_now(self) -> defer.Deferred[None]:
        """Get a new certificate now (unless a renewal is under way)."""
        if self._busy or self._stopped:
            return defer.succeed(None)
        self._busy = True
        self._retry_at = 0.0
        self._cancel_timer()
        d = defer.ensureDeferred(self._renew())
        self._renewing = d
        d.addErrback(self._failed)
        d.addBoth(self._idle)
        return d

    async def _renew(self) -> None:
        spec = self.spec
        key_pem = new_private_key()
        csr_pem = build_csr(
            key_pem, spec.common_name, spec.organizations, dns_names=spec.dns_names, ip_addresses=spec.ip_addresses
        )
        cert_pem = await self._obtain(spec, csr_pem)
        credential = Credential.from_pem(cert_pem, key_pem)
        await self._run(self.store.save, cert_pem, key_pem)
        if self._stopped:
            return
        self.rotations += 1
        self._use(credential, issued_at=self.clock.seconds())
        _log.info(
            "{name}: new certificate for {cn}, valid until {until}, next rotation in {due:.0f}s",
            name=spec.name,
            cn=credential.common_name,
            until=_utc(credential.not_after),
            due=self.deadline - self.clock.seconds(),
        )

    def _use(self, credential: Credential, issued_at: float | None = None) -> None:
        self.credential = credential
        self.deadline = rotation_deadline(credential, self._random(), issued_at)
        self.last_error = ""
        self._retry_at = 0.0
        self._backoff = BACKOFF_FIRST
        self._install(credential)
        self._set_timer(max(0.0, self.deadline - self.clock.seconds()))

    def _failed(self, failure: Any) -> None:
        if self._stopped:
            return
        self.last_error = failure.getErrorMessage() or failure.type.__name__
        _log.warn(
            "{name}: could not get a certificate ({err}); trying again in {wait:g}s",
            name=self.spec.name,
            err=self.last_error,
            wait=self._backoff,
        )
        self._set_timer(self._backoff)
        self._retry_at = self.clock.seconds() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _idle(self, _: object) -> None:
        self._busy = False
        self._renewing = None

    def _set_timer(self, delay: float) -> None:
        self._cancel_timer()
        if not self._stopped:
            self._timer = self.clock.callLater(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.check()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _utc(epoch: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
