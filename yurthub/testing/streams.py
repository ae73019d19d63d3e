"""Long-running answers of the simulated kube-apiserver: watches and followed pod logs.

A stream owns one twisted.web request whose headers went out at once. It ends in one of
three ways, each releasing its watcher registration and timers exactly once: `close`
(a clean end, e.g. ``timeoutSeconds``), `abort` (the connection is dropped, as when the
server dies or `SimulatedAPIServer.cut_streams` is called) or the client going away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.server import Request

from yurthub.kube.selectors import FieldSelector, LabelSelector
from yurthub.proxy.status import abort_client
from yurthub.testing.objects import (
    ObjectStore,
    ResourceType,
    StatusError,
    StoredObject,
    WatchEvent,
    dumps,
)
from yurthub.testing.responses import Representation, encode_event

__all__ = ["LogStream", "ResponseStream", "WatchStream"]


class ResponseStream:
    """A streamed response; ``on_done`` is called once when it ends, however it ends."""

    def __init__(
        self,
        request: Request,
        clock: IReactorTime,
        on_done: Callable[[ResponseStream], None],
    ) -> None:
        self.request = request
        self._clock = clock
        self._on_done = on_done
        self.done = False
        self._timers: dict[str, IDelayedCall] = {}
        request.notifyFinish().addBoth(self._request_finished)

    def _request_finished(self, result: object) -> None:
        self._end()

    def _end(self) -> None:
        if self.done:
            return
        self.done = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self._release()
        self._on_done(self)

    def _release(self) -> None:
        """Subclasses drop their registrations here."""

    def _later(self, name: str, seconds: float, function: Callable[[], Any]) -> None:
        old = self._timers.pop(name, None)
        if old is not None and old.active():
            old.cancel()
        self._timers[name] = self._clock.callLater(seconds, function)

    def write(self, data: bytes) -> None:
        """Send ``data`` now (nothing once the stream ended)."""
        if not self.done:
            self.request.write(data)

    def close(self) -> None:
        """End the response cleanly (the final chunk is sent)."""
        if self.done:
            return
        self._end()
        self.request.finish()

    def abort(self) -> None:
        """Drop the connection under the response without a clean end."""
        if self.done:
            return
        self._end()
        abort_client(self.request)


class WatchStream(ResponseStream):
    """A watch: replays or synthesises the first events, then relays the store's events.

    Events are filtered by namespace and selectors the way kube-apiserver's watch cache
    does: an object that stops matching is sent as DELETED, one that starts matching as
    ADDED. With ``bookmark_interval`` set, a BOOKMARK carrying the current
    resourceVersion is sent that often; with ``timeout`` the watch ends cleanly after it.
    """

    def __init__(
        self,
        request: Request,
        clock: IReactorTime,
        on_done: Callable[[ResponseStream], None],
        *,
        store: ObjectStore,
        resource: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        representation: Representation,
        bookmark_interval: float | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(request, clock, on_done)
        self._store = store
        self.resource = resource
        self._namespace = namespace if resource.namespaced else None
        self._labels = labels
        self._fields = fields
        self._rep = representation
        self._bookmark_interval = bookmark_interval
        self._timeout = timeout
        self._registered = False

    def start(self, start_rv: int | None, *, send_initial_events: bool = False) -> None:
        """Send the headers and the first events; from then on relay live events.

        ``start_rv`` None sends ADDED for every current object; otherwise the history
        after ``start_rv`` is replayed, or an ERROR event with a 410 ``Expired`` Status
        ends the watch when that history is gone.
        """
        self.request.write(b"")
        if self.done:
            return
        if start_rv is None or send_initial_events:
            first = [("ADDED", s) for s in self._store.list(self.resource, self._namespace)
                     if self._matches(s)]
        else:
            try:
                events = self._store.events_since(self.resource, start_rv)
            except StatusError as error:
                self.write(dumps({"type": "ERROR", "object": error.status}) + b"\n")
                self.close()
                return
            first = [t for t in (self._translate(e) for e in events) if t is not None]
        self._store.add_watcher(self.resource, self)
        self._registered = True
        now = self._clock.seconds()
        for event_type, stored in first:
            self.write(encode_event(self._rep, self.resource, event_type, stored, now))
        if send_initial_events and self._bookmark_interval is not None:
            self._send_bookmark(initial_events_end=True)
        if self._bookmark_interval is not None and self._bookmark_interval > 0:
            self._later("bookmark", self._bookmark_interval, self._bookmark_tick)
        if self._timeout is not None:
            self._later("timeout", self._timeout, self.close)

    def _release(self) -> None:
        if self._registered:
            self._store.remove_watcher(self.resource, self)
            self._registered = False

    def _matches(self, stored: StoredObject | None) -> bool:
        if stored is None:
            return False
        return self._labels.matches(stored.labels) and self._fields.matches(stored.obj)

    def _translate(self, event: WatchEvent) -> tuple[str, StoredObject] | None:
        if self._namespace is not None and event.current.namespace != self._namespace:
            return None
        if event.type == "ADDED":
            return ("ADDED", event.current) if self._matches(event.current) else None
        if event.type == "DELETED":
            before = event.previous or event.current
            return ("DELETED", event.current) if self._matches(before) else None
        now_matches = self._matches(event.current)
        before_matches = self._matches(event.previous)
        if now_matches:
            return ("MODIFIED" if before_matches else "ADDED", event.current)
        if before_matches and event.previous is not None:
            # The object left the selection: a DELETED of its old state at the new version.
            old = event.previous.copy()
            old["metadata"]["resourceVersion"] = str(event.rv)
            return "DELETED", StoredObject(old, event.rv)
        return None

    def deliver(self, event: WatchEvent) -> None:
        """Relay one store event if it concerns this watch."""
        if self.done:
            return
        translated = self._translate(event)
        if translated is None:
            return
        event_type, stored = translated
        if self._rep.form == "object" and event_type == event.type:
            self.write(event.line())
        else:
            self.write(
                encode_event(self._rep, self.resource, event_type, stored, self._clock.seconds())
            )

    def _bookmark_tick(self) -> None:
        self._send_bookmark()
        if not self.done and self._bookmark_interval:
            self._later("bookmark", self._bookmark_interval, self._bookmark_tick)

    def _send_bookmark(self, *, initial_events_end: bool = False) -> None:
        metadata: dict[str, Any] = {"resourceVersion": str(self._store.resource_version)}
        if initial_events_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        self.write(dumps({
            "type": "BOOKMARK",
            "object": {"kind": self.resource.kind, "apiVersion": self.resource.api_version,
                       "metadata": metadata},
        }) + b"\n")


class LogStream(ResponseStream):
    """A followed pod log: writes a new line every ``interval`` seconds until it ends.

    ``next_line(n)`` makes line number ``n``; it returns None once the pod is gone, which
    ends the stream cleanly.
    """

    def __init__(
        self,
        request: Request,
        clock: IReactorTime,
        on_done: Callable[[ResponseStream], None],
        *,
        next_line: Callable[[int], bytes | None],
        interval: float,
        first_number: int,
    ) -> None:
        super().__init__(request, clock, on_done)
        self._next_line = next_line
        self._interval = interval
        self._number = first_number

    def start(self, lines: list[bytes]) -> None:
        """Send the headers and the existing lines, then follow."""
        self.request.write(b"")
        for line in lines:
            self.write(line)
        if not self.done:
            self._later("tick", self._interval, self._tick)

    def _tick(self) -> None:
        line = self._next_line(self._number)
        if line is None:
            self.close()
            return
        self._number += 1
        self.write(line)
        if not self.done:
            self._later("tick", self._interval, self._tick)
