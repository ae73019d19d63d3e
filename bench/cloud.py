"""``python -m bench.cloud``: the simulated kube-apiserver as a process of its own.

The autonomy benchmark needs a cloud it can take away and bring back, and that writes
watch events as fast as it can, without sharing a CPU-bound reactor with yurthub or the
benchmark. This runs `yurthub.testing.apiserver.SimulatedAPIServer` on 127.0.0.1 under the
global reactor, seeded with three sets of pods:

- ``--pods N`` realistic pods (`yurthub.testing.demo.make_pod`, about 2 KB each) in the
  namespace ``bulk``: the big list;
- ``--small-pods K`` the same kind of pods in ``small``: the kubelet-sized list;
- ``--event-pods M`` compact pods in ``events``, padded so that one watch event about
  any of them is ``--event-size`` bytes: the objects the event generator updates.

A second listener, ``--control-port``, is a tiny HTTP API for the benchmark (JSON
answers, 127.0.0.1 only):

- ``GET /state``: the resourceVersion, whether the API listens, the seeded counts, how
  many requests the API received by User-Agent (the server's bounded request log is
  drained into these counts every 0.2 s), and ``in_flight``: how many requests the API
  holds right now and at most at once since the last reset, all of them and those held
  by a delay (with how many delayed requests arrived since the reset);
- ``POST /in-flight/reset``: start a new peak (and delayed count) from now;
- ``POST /delay?prefix=P&seconds=S``: hold every request whose path starts with ``P``
  ``S`` seconds before answering it (``S`` 0 removes the delay);
- ``POST /stop``, ``POST /start``: stop or resume listening on the same port, state kept
  (``stop_listening`` drops every open connection, as if the process had died);
- ``POST /events?count=N``: start updating the ``events`` pods round-robin, N updates,
  each a MODIFIED watch event of ``--event-size`` bytes, in batches of ``--batch`` per
  reactor turn so that the watches are written to while it runs; answers at once;
- ``GET /events``: the last generation's progress, its time, and (once done) every
  ``events`` pod's final resourceVersion;
- ``POST /events?count=N&churn=C``: with ``churn`` C > 0, every C-th update is instead a
  create of a new pod in namespace ``churn`` (at most `CHURN_KEEP` live: the oldest is
  deleted then), so lists change their contents while events flow;
- ``POST /events/stop``: end the running generation now (its figures as ``GET /events``);
- ``GET /pods``: the resourceVersion and every pod's ``{"<namespace>/<name>": rv}``.

It prints one line, ``CLOUD_READY {json}``, when both listeners are up, and stops on
SIGTERM/SIGINT. Every answer of the control API is bounded; nothing here waits forever.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

#: Namespaces of the three pod sets.
BULK_NAMESPACE = "bulk"
SMALL_NAMESPACE = "small"
EVENTS_NAMESPACE = "events"
CHURN_NAMESPACE = "churn"

#: Live pods of the ``churn`` namespace at most; a create beyond it deletes the oldest.
CHURN_KEEP = 40

#: The node every seeded pod runs on (the node yurthub serves is ``edge-1`` too).
NODE = "edge-1"

READY_MARKER = "CLOUD_READY "


def event_pod(name: str, index: int, sequence: int, padding: int) -> dict[str, Any]:
    """A compact pod of the ``events`` set; ``sequence`` is the update number (so every
    update changes the object) and ``padding`` the length of a filler annotation that
    brings one watch event to the wanted size."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": EVENTS_NAMESPACE,
            "labels": {"app": "events", "shard": str(index % 16)},
            "annotations": {"bench/sequence": f"{sequence:09d}", "bench/padding": "x" * padding},
        },
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.9"}],
        },
        "status": {"phase": "Running", "podIP": f"10.244.1.{index % 250 + 2}"},
    }


class EventGenerator:
    """Updates the ``events`` pods round-robin, ``batch`` updates per reactor turn."""

    def __init__(
        self, server: Any, reactor: Any, names: list[str], padding: int, batch: int
    ) -> None:
        self._server = server
        self._reactor = reactor
        self._pods = server.resource_type("pods", "")
        self._names = names
        self._padding = padding
        self._batch = batch
        self._sequence = 0
        self._churned: list[str] = []
        self.churn = 0
        self.running = False
        self.count = 0
        self.generated = 0
        self.started = 0.0
        self.finished = 0.0
        self.first_rv = 0
        self.last_rv = 0

    def start(self, count: int, churn: int = 0) -> None:
        """Begin ``count`` updates (every ``churn``-th a create, and maybe a delete, in
        the ``churn`` namespace); they run on later reactor turns."""
        self.churn = churn
        self.running = True
        self.count = count
        self.generated = 0
        self.started = time.monotonic()
        self.finished = 0.0
        self.first_rv = self.last_rv = 0
        self._reactor.callLater(0, self._step)

    def _step(self) -> None:
        store = self._server.store
        end = min(self.count, self.generated + self._batch)
        names = self._names
        while self.running and self.generated < end:
            self._sequence += 1
            if self.churn and self._sequence % self.churn == 0:
                self.last_rv = self._churn_step()
                self.generated += 1
                continue
            index = self._sequence % len(names)
            # The store takes ownership of a fresh dict: no JSON round trip per update.
            stored = store.update(
                self._pods, event_pod(names[index], index, self._sequence, self._padding)
            )
            if not self.first_rv:
                self.first_rv = stored.rv
            self.last_rv = stored.rv
            self.generated += 1
        if self.running and self.generated < self.count:
            self._reactor.callLater(0, self._step)
        elif self.running:
            self.stop()

    def _churn_step(self) -> int:
        """Create a ``churn`` pod, delete the oldest beyond `CHURN_KEEP`; the last rv."""
        name = f"churn-{self._sequence:09d}"
        pod = event_pod(name, self._sequence, self._sequence, 0)
        pod["metadata"].update(namespace=CHURN_NAMESPACE, labels={"app": "churn"})
        self._server.create(pod)
        self._churned.append(name)
        if len(self._churned) > CHURN_KEEP:
            self._server.delete("pods", CHURN_NAMESPACE, self._churned.pop(0))
        return int(self._server.resource_version)

    def stop(self) -> None:
        """End the generation now (a no-op when none runs)."""
        if self.running:
            self.running = False
            self.finished = time.monotonic()

    def state(self) -> dict[str, Any]:
        """Progress; once done, the final resourceVersion of every events pod."""
        out: dict[str, Any] = {
            "running": self.running,
            "count": self.count,
            "generated": self.generated,
            "first_rv": self.first_rv,
            "last_rv": self.last_rv,
            "started_monotonic": self.started,
            "seconds": (self.finished or time.monotonic()) - self.started if self.started else 0.0,
        }
        if not self.running and self.count:
            out["final"] = {
                s.name: str(s.rv) for s in self._server.store.list(self._pods, EVENTS_NAMESPACE)
            }
        return out


def _padding_for(event_size: int) -> int:
    """The filler length that makes one MODIFIED event line about ``event_size`` bytes
    (resourceVersions of 6 to 7 digits, as they are here)."""
    sample = event_pod("ev-00000", 0, 0, 0)
    sample["metadata"].update(
        uid="00000000-0000-4000-8000-000000000000",
        resourceVersion="1000000",
        creationTimestamp="2024-01-01T00:00:00Z",
        generation=1,
    )
    line = (
        b'{"type":"MODIFIED","object":'
        + json.dumps(sample, separators=(",", ":")).encode()
        + b"}\n"
    )
    return max(0, event_size - len(line))


class RequestCounter:
    """Counts the API's requests by User-Agent. The simulated server keeps a bounded log of
    requests; draining it often keeps every request counted and the log small."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.counts: dict[str, int] = {}

    def drain(self) -> None:
        for record in self._server.requests:
            agent = record.header("user-agent") or ""
            self.counts[agent] = self.counts.get(agent, 0) + 1
        self._server.clear_requests()


class InFlight:
    """The API's requests in flight: now, and the most at once since `reset`; the same for
    requests a delay holds, and how many of those arrived since `reset`."""

    def __init__(self) -> None:
        #: The delays set through the control API, by path prefix (seconds).
        self.delays: dict[str, float] = {}
        self.now = self.peak = 0
        self.delayed_now = self.delayed_peak = self.delayed_arrived = 0

    def reset(self) -> None:
        self.peak, self.delayed_peak, self.delayed_arrived = self.now, self.delayed_now, 0

    def begin(self, request: Request) -> None:
        """Count ``request`` until it is finished or its connection is lost."""
        path = (request.path or b"").decode("latin-1")
        delayed = any(seconds > 0 and path.startswith(p) for p, seconds in self.delays.items())
        self.now += 1
        self.peak = max(self.peak, self.now)
        if delayed:
            self.delayed_now += 1
            self.delayed_arrived += 1
            self.delayed_peak = max(self.delayed_peak, self.delayed_now)
        request.notifyFinish().addBoth(self._end, delayed)

    def _end(self, _: object, delayed: bool) -> None:
        self.now -= 1
        if delayed:
            self.delayed_now -= 1

    def state(self) -> dict[str, int]:
        return {
            "now": self.now,
            "peak": self.peak,
            "delayed_now": self.delayed_now,
            "delayed_peak": self.delayed_peak,
            "delayed_arrived": self.delayed_arrived,
        }


def count_in_flight(server: Any, in_flight: InFlight) -> None:
    """Have ``in_flight`` count every request the simulated server receives. The server
    has no public hook for it: its one resource hands every request to ``_receive``, so
    that is wrapped (on this instance only)."""
    receive = server._receive

    def counted(request: Request) -> bytes | int:
        in_flight.begin(request)
        return receive(request)  # type: ignore[no-any-return]

    server._receive = counted


class _Control(Resource):
    """The control API (see the module docstring)."""

    isLeaf = True

    def __init__(
        self,
        server: Any,
        generator: EventGenerator,
        counts: dict[str, int],
        requests: RequestCounter,
        in_flight: InFlight,
    ) -> None:
        super().__init__()
        self._server = server
        self._generator = generator
        self._counts = counts
        self._requests = requests
        self._in_flight = in_flight

    def _json(self, request: Request, code: int, value: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value).encode()

    def _state(self) -> dict[str, Any]:
        self._requests.drain()
        return {
            "resourceVersion": self._server.resource_version,
            "listening": self._server.listening,
            "url": self._server.url,
            "counts": self._counts,
            "requests_by_agent": self._requests.counts,
            "in_flight": self._in_flight.state(),
        }

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        if request.path == b"/state":
            return self._json(request, 200, self._state())
        if request.path == b"/events":
            return self._json(request, 200, self._generator.state())
        if request.path == b"/pods":
            pods = self._server.resource_type("pods", "")
            every = {
                f"{s.namespace}/{s.name}": str(s.rv) for s in self._server.store.list(pods, None)
            }
            return self._json(
                request, 200, {"resourceVersion": self._server.resource_version, "pods": every}
            )
        return self._json(request, 404, {"error": "unknown path"})

    def _set_delay(self, request: Request) -> bytes:
        args = request.args or {}
        prefix = args.get(b"prefix", [b""])[0].decode("latin-1")
        try:
            seconds = float(args.get(b"seconds", [b""])[0])
        except ValueError:
            seconds = -1.0
        if not prefix.startswith("/") or not 0 <= seconds <= 3600:
            return self._json(
                request, 400, {"error": "needs prefix=/... and seconds between 0 and 3600"}
            )
        self._server.delay(prefix, seconds)
        if seconds:
            self._in_flight.delays[prefix] = seconds
        else:
            self._in_flight.delays.pop(prefix, None)
        return self._json(request, 200, {"delays": self._in_flight.delays})

    def render_POST(self, request: Request) -> bytes | int:  # noqa: N802
        if request.path == b"/delay":
            return self._set_delay(request)
        if request.path == b"/in-flight/reset":
            self._in_flight.reset()
            return self._json(request, 200, self._in_flight.state())
        if request.path == b"/events/stop":
            self._generator.stop()
            return self._json(request, 200, self._generator.state())
        if request.path == b"/events":
            if self._generator.running:
                return self._json(request, 409, {"error": "a generation is running"})
            try:
                count = int((request.args or {}).get(b"count", [b"0"])[0])
            except ValueError:
                count = 0
            try:
                churn = int((request.args or {}).get(b"churn", [b"0"])[0])
            except ValueError:
                churn = -1
            if count <= 0 or churn < 0:
                return self._json(
                    request, 400, {"error": "count must be a positive integer, churn >= 0"}
                )
            self._generator.start(count, churn)
            return self._json(request, 202, {"from_rv": self._server.resource_version})
        if request.path in (b"/stop", b"/start"):
            if request.path == b"/stop":
                d = self._server.stop_listening()
            else:
                d = self._server.start_listening()

            def answer(_: object) -> None:
                request.write(self._json(request, 200, self._state()))
                request.finish()

            def failed(failure: Any) -> None:
                request.write(self._json(request, 500, {"error": failure.getErrorMessage()}))
                request.finish()

            d.addCallbacks(answer, failed)
            return NOT_DONE_YET
        return self._json(request, 404, {"error": "unknown path"})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cloud", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, required=True, help="API port on 127.0.0.1")
    parser.add_argument(
        "--pods", type=int, default=10_000, help="pods in namespace bulk (default 10000)"
    )
    parser.add_argument(
        "--small-pods", type=int, default=100, help="pods in namespace small (default 100)"
    )
    parser.add_argument(
        "--event-pods", type=int, default=1000, help="pods in namespace events (default 1000)"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=0,
        help="updates to generate at start-up (default 0: on demand)",
    )
    parser.add_argument(
        "--event-size", type=int, default=1024, help="bytes of one watch event (default 1024)"
    )
    parser.add_argument(
        "--batch", type=int, default=100, help="updates per reactor turn (default 100)"
    )
    parser.add_argument(
        "--control-port", type=int, default=0, help="control API port on 127.0.0.1 (0: none)"
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=4096,
        help="listen backlog of the API port (default 4096, as kube-apiserver's Go listener "
        "gets from somaxconn; Twisted's own default, 50, would make the connections of a "
        "burst beyond 50 wait for a SYN retransmit; after POST /start it is Twisted's 50)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Seed, listen, print the ready line and run until signalled."""
    args = parse_args(argv)
    from twisted.internet import reactor

    from yurthub.testing.apiserver import SimulatedAPIServer
    from yurthub.testing.demo import make_pod, seed_pods

    seeding = time.monotonic()
    # No BOOKMARKs during a run (they are not events the benchmark counts).
    server = SimulatedAPIServer(reactor, bookmark_interval=3600.0)
    for namespace in (BULK_NAMESPACE, SMALL_NAMESPACE, EVENTS_NAMESPACE, CHURN_NAMESPACE):
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    seed_pods(server, args.pods, namespace=BULK_NAMESPACE, node=NODE, prefix="bulk")
    for n in range(args.small_pods):
        server.create(make_pod(f"small-{n}", SMALL_NAMESPACE, NODE, {"app": "small"}))
    padding = _padding_for(args.event_size)
    names = [f"ev-{n:05d}" for n in range(args.event_pods)]
    for index, name in enumerate(names):
        server.create(event_pod(name, index, 0, padding))
    counts = {
        BULK_NAMESPACE: args.pods,
        SMALL_NAMESPACE: args.small_pods,
        EVENTS_NAMESPACE: args.event_pods,
    }
    generator = EventGenerator(server, reactor, names, padding, max(1, args.batch))
    seeded = time.monotonic() - seeding
    server.clear_requests()
    requests = RequestCounter(server)
    in_flight = InFlight()
    count_in_flight(server, in_flight)
    draining = LoopingCall(requests.drain)
    draining.clock = reactor

    @defer.inlineCallbacks
    def listen() -> Any:
        yield server.start(f"tcp:{args.port}:interface=127.0.0.1:backlog={args.backlog}")
        draining.start(0.2, now=False)
        if args.control_port:
            site = Site(_Control(server, generator, counts, requests, in_flight))
            site.noisy = False
            site.log = lambda request: None  # type: ignore[method-assign]
            reactor.listenTCP(args.control_port, site, interface="127.0.0.1")
        ready = {
            "url": server.url,
            "resourceVersion": server.resource_version,
            "seed_seconds": round(seeded, 2),
        }
        print(READY_MARKER + json.dumps(ready), flush=True)
        if args.events:
            generator.start(args.events)

    def failed(failure: Any) -> None:
        print(
            f"bench.cloud: could not listen: {failure.getErrorMessage()}",
            file=sys.stderr,
            flush=True,
        )
        reactor.stop()

    reactor.callWhenRunning(lambda: listen().addErrback(failed))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
