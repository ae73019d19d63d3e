"""A full or failing cache disk under a running yurthub: proxying goes on with full,
correct answers, ``/v1/readyz`` fails its ``cache`` check with the reason, ``/metrics``
counts the errors, no partial or temp file is left, and caching resumes once the fault
clears (the next list repairs the cache). And a cache directory that cannot be written at
start-up ends ``twistd yurthub`` with one clear line.

The store's own reactions to each failing step are in tests/test_store.py
(`DiskFaultTests`); here the faults are injected at the same seam (`_Disk`) under a whole
yurthub, and for real on a small tmpfs.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import fetch, raw_connect, sleep, start_hub
from yurthub.cache.store import TEMP_PREFIX, FilesystemObjectStore, _Disk
from yurthub.service import YurtHub
from yurthub.testing.apiserver import SimulatedAPIServer
from yurthub.testing.demo import make_pod, seed_pods

KUBELET = {b"user-agent": [b"kubelet/v1.31.0"], b"accept": [b"application/json"]}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FaultyDisk(_Disk):
    """A `_Disk` whose ``write`` or ``fsync`` fails with ``fault`` = (step, errno)."""

    def __init__(self) -> None:
        super().__init__()
        self.fault: tuple[str, int] | None = None
        self.failed = 0

    def _maybe_fail(self, step: str, what: str) -> None:
        if self.fault is not None and self.fault[0] == step:
            self.failed += 1
            code = self.fault[1]
            raise OSError(code, os.strerror(code), what)

    def write(self, fd: int, data: bytes) -> None:
        # Half the bytes reach the file first, as a disk filling up mid-write does.
        if self.fault is not None and self.fault[0] == "write":
            super().write(fd, data[: len(data) // 2])
        self._maybe_fail("write", str(fd))
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._maybe_fail("fsync", str(fd))
        super().fsync(fd)


def cache_state(directory: str) -> tuple[dict[str, str], list[str], list[str]]:
    """kubelet's cached pods (``ns/name`` -> resourceVersion), files that do not parse as
    the object they name, and temp files anywhere below ``directory``."""
    pods: dict[str, str] = {}
    broken: list[str] = []
    temps: list[str] = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if name.startswith(TEMP_PREFIX):
                temps.append(path)
                continue
            relative = os.path.relpath(path, directory).split(os.sep)
            if relative[:2] != ["kubelet", "pods.v1.core"]:
                continue
            try:
                with open(path, "rb") as f:
                    meta = json.loads(f.read())["metadata"]
                assert (meta["namespace"], meta["name"]) == (relative[2], relative[3])
                pods[f"{meta['namespace']}/{meta['name']}"] = meta["resourceVersion"]
            except (ValueError, KeyError, TypeError, AssertionError) as e:
                broken.append(f"{path}: {e!r}")
    return pods, broken, temps


def cloud_pods(server: SimulatedAPIServer) -> dict[str, str]:
    return {
        f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["metadata"]["resourceVersion"]
        for p in server.list("pods")
    }


def listed(body: bytes) -> dict[str, str]:
    return {
        f"{i['metadata']['namespace']}/{i['metadata']['name']}": i["metadata"]["resourceVersion"]
        for i in json.loads(body)["items"]
    }


class _HubCase(TestCase):
    """A simulated cloud, a yurthub in front of it, and what the hub port says."""

    timeout = 60

    async def cloud(self, pods: int) -> SimulatedAPIServer:
        server = SimulatedAPIServer(reactor)
        seed_pods(server, pods)
        await server.start("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.stop)
        return server

    async def list_pods(
        self, hub: YurtHub, server: SimulatedAPIServer, until: Callable[[], bool]
    ) -> None:
        """kubelet lists every pod through yurthub: a full and correct answer; then wait
        (bounded) until ``until`` holds, as the list reaches the cache after the answer."""
        code, _, body = await fetch(
            self, b"GET", f"http://127.0.0.1:{hub.port_of('listen.proxy')}/api/v1/pods", KUBELET
        )
        self.assertEqual(code, 200, body[:300])
        self.assertEqual(listed(body), cloud_pods(server))
        for _ in range(200):
            await hub.store.flush()
            if until():
                return
            await sleep(0.025)
        self.fail(f"the cache did not settle: {hub.store.health.detail()}")

    def written(self, hub: YurtHub, server: SimulatedAPIServer) -> Callable[[], bool]:
        """True once the cache directory holds the cloud's pods, no temp file, nothing pending."""
        directory = hub.store.directory  # type: ignore[attr-defined]

        def check() -> bool:
            pods, broken, temps = cache_state(directory)
            return pods == cloud_pods(server) and not temps and not hub.store.health.pending

        return check

    def failed_more(self, hub: YurtHub, than: int) -> Callable[[], bool]:
        """True once the store counted more disk errors than ``than`` and has nothing pending."""
        return lambda: hub.store.health.errors > than and not hub.store.health.pending

    async def readyz(self, hub: YurtHub) -> tuple[int, str]:
        url = f"http://127.0.0.1:{hub.port_of('listen.hub')}/v1/readyz?verbose"
        code, _, body = await fetch(self, b"GET", url)
        return code, body.decode()

    async def metrics(self, hub: YurtHub) -> dict[str, float]:
        url = f"http://127.0.0.1:{hub.port_of('listen.hub')}/metrics"
        _, _, body = await fetch(self, b"GET", url)
        out = {}
        for line in body.decode().splitlines():
            if line.startswith("yurthub_cache_"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    async def assert_degraded(self, hub: YurtHub, reason: str, errors_before: float) -> float:
        code, text = await self.readyz(hub)
        self.assertNotEqual(code, 200, text)
        cache_line = [line for line in text.splitlines() if line.startswith("[-]cache ")]
        self.assertTrue(
            cache_line and "degraded" in cache_line[0] and reason in cache_line[0], text
        )
        metrics = await self.metrics(hub)
        self.assertEqual(metrics["yurthub_cache_degraded"], 1.0)
        self.assertGreater(metrics["yurthub_cache_disk_errors_total"], errors_before)
        return metrics["yurthub_cache_disk_errors_total"]

    async def assert_healthy(
        self, hub: YurtHub, server: SimulatedAPIServer, directory: str
    ) -> None:
        code, text = await self.readyz(hub)
        self.assertEqual(code, 200, text)
        self.assertEqual((await self.metrics(hub))["yurthub_cache_degraded"], 0.0)
        pods, broken, temps = cache_state(directory)
        self.assertEqual((broken, temps), ([], []))
        self.assertEqual(pods, cloud_pods(server))

    def assert_no_partial_file(self, directory: str, before: dict[str, str]) -> None:
        """Every file parses and is the object it was before the failed writes; no temp."""
        pods, broken, temps = cache_state(directory)
        self.assertEqual(broken, [])
        self.assertEqual(temps, [])
        self.assertEqual(pods, before)


class InjectedDiskFaultTests(_HubCase):
    """ENOSPC and EIO injected at the store's disk seam under a running yurthub."""

    async def test_proxying_goes_on_and_the_cache_recovers_after_enospc_and_eio(self) -> None:
        server = await self.cloud(20)
        directory = os.path.abspath(self.mktemp())
        disk = FaultyDisk()
        store = FilesystemObjectStore(directory, reactor=reactor, disk=disk)
        hub = await start_hub(self, [server.url], store=store, cache={"dir": directory})
        await self.list_pods(hub, server, self.written(hub, server))
        await self.assert_healthy(hub, server, directory)
        before, _, _ = cache_state(directory)
        watcher = await raw_connect(self, hub.port_of("listen.proxy"))
        watcher.transport.write(  # type: ignore[union-attr]
            b"GET /api/v1/pods?watch=true HTTP/1.1\r\nHost: x\r\nUser-Agent: kubelet/v1.31.0\r\n"
            b"Accept: application/json\r\n\r\n"
        )
        await watcher.wait_for(lambda b: b.count(b"ADDED") >= 20)
        errors = 0.0
        for n, (step, code) in enumerate((("write", errno.ENOSPC), ("fsync", errno.EIO))):
            disk.fault = (step, code)
            # A watch event (a single-object write) and a list (a journalled replacement),
            # both answered in full while neither reaches the disk.
            count = hub.store.health.errors
            server.create(make_pod(f"new-{n}", "default", "edge-1"))
            await watcher.wait_for(lambda b, n=n: f'"new-{n}"'.encode() in b)
            for _ in range(200):
                if hub.store.health.errors > count:
                    break
                await sleep(0.025)
            self.assertGreater(hub.store.health.errors, count, "the event's write did not fail")
            server.delete("pods", "default", f"web-{n}")
            await self.list_pods(hub, server, self.failed_more(hub, hub.store.health.errors))
            errors = await self.assert_degraded(hub, errno.errorcode[code], errors)
            self.assert_no_partial_file(directory, before)
        self.assertGreater(disk.failed, 0)
        disk.fault = None
        await self.list_pods(hub, server, self.written(hub, server))  # the next list repairs
        await self.assert_healthy(hub, server, directory)
        self.assertEqual((await self.metrics(hub))["yurthub_cache_disk_errors_total"], errors)


def _mount(test: SynchronousTestCase, directory: str, options: str) -> None:
    """Mount a tmpfs on ``directory`` until the test ends; a clear failure if we cannot."""
    os.makedirs(directory, exist_ok=True)
    if os.geteuid() != 0:
        test.skipTest(f"mounting a tmpfs needs root (euid {os.geteuid()})")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", directory], capture_output=True, text=True
    )
    if done.returncode != 0:
        test.fail(
            f"running as root but `mount -t tmpfs -o {options}` failed ({done.stderr.strip()}):"
            " this test needs a machine (or container with CAP_SYS_ADMIN) that can mount a tmpfs"
        )
    test.addCleanup(subprocess.run, ["umount", "-l", directory], capture_output=True)


class FullFilesystemTests(_HubCase):
    """A real 256 KiB tmpfs filled through caching until ENOSPC, then freed.

    Needs root (to mount the tmpfs): run as root it fails with a clear message when the
    mount is refused; run as another user it is skipped, saying so."""

    async def test_a_full_filesystem_degrades_the_cache_and_freeing_space_resumes_it(self) -> None:
        mount_point = os.path.abspath(self.mktemp())
        _mount(self, mount_point, "size=256k,mode=0700")
        directory = os.path.join(mount_point, "cache")
        filler = os.path.join(mount_point, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * 96 * 1024)
        server = await self.cloud(4)
        hub = await start_hub(self, [server.url], cache={"dir": directory})
        await self.list_pods(hub, server, self.written(hub, server))
        await self.assert_healthy(hub, server, directory)
        # Each pod file takes a 4 KiB page: ~40 more fill what the filler leaves.
        for batch in range(12):
            before, _, _ = cache_state(directory)
            for n in range(8):
                server.create(make_pod(f"fill-{batch}-{n}", "default", "edge-1"))
            written = self.written(hub, server)
            await self.list_pods(hub, server, lambda w=written: w() or self.failed_more(hub, 0)())
            if hub.store.health.errors:
                break
        else:
            self.fail(f"no ENOSPC after caching {len(server.list('pods'))} pods")
        self.assertIn("ENOSPC", hub.store.health.last_error)
        await self.assert_degraded(hub, "ENOSPC", 0)
        # The replacement that failed left the set it replaced, whole.
        self.assert_no_partial_file(directory, before)
        # Still full: answers go on, the retry fails too, nothing is half-written.
        await self.list_pods(hub, server, self.failed_more(hub, hub.store.health.errors))
        self.assert_no_partial_file(directory, before)
        os.unlink(filler)
        await self.list_pods(hub, server, self.written(hub, server))
        await self.assert_healthy(hub, server, directory)


class ReadOnlyCacheAtStartTests(SynchronousTestCase):
    """``twistd yurthub`` on a cache directory it cannot write: one clear line, no
    traceback, and the process ends. Needs root for the read-only tmpfs (see `_mount`)."""

    def test_a_read_only_cache_directory_ends_startup_with_one_line(self) -> None:
        directory = os.path.abspath(self.mktemp())
        _mount(self, directory, "size=64k,ro")
        argv = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "yurthub", "--server", "http://127.0.0.1:1",
            "--node-name", "edge-1", "--cache-dir", directory,
            "--proxy-listen", "tcp:0:interface=127.0.0.1", "--hub-listen", "tcp:0:interface=127.0.0.1",
            "--secure-listen", "",
        ]  # fmt: skip
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, cwd=workdir,
            env={**os.environ, "PYTHONPATH": ROOT},
        )  # fmt: skip
        output = done.stdout + done.stderr
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if "cache directory" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertIn("#critical]", lines[0])
        self.assertIn(directory, lines[0])
        self.assertIn("EROFS", lines[0])
        self.assertEqual(done.returncode, 1)  # a failure for systemd's Restart=on-failure
