"""The README's demo: the real ``twistd yurthub --demo`` process, used with kubectl."""

from __future__ import annotations

import os
import re
import socket
import sys

from twisted.internet import reactor, utils
from twisted.trial.unittest import TestCase

from tests.e2e.cloud import KUBECTL
from tests.e2e.test_kubectl import LineCollector


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoTests(TestCase):
    """``twistd --nodaemon yurthub --demo`` serves a seeded cluster through yurthub."""

    timeout = 120

    async def test_demo_serves_kubectl(self) -> None:
        collector = LineCollector()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        argv = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "yurthub", "--demo",
            "--demo-port", str(free_port()),
            "--proxy-listen", "tcp:0:interface=127.0.0.1",
            "--hub-listen", "tcp:0:interface=127.0.0.1",
            "--secure-listen", "",
        ]
        env = {**os.environ, "PYTHONPATH": root}
        process = reactor.spawnProcess(collector, sys.executable, argv, env=env)  # type: ignore[attr-defined]

        def stop() -> object:
            if process.pid is not None:
                process.signalProcess("TERM")
            return collector.ended

        self.addCleanup(stop)
        await collector.seen(b"get nodes", timeout=30)
        proxy = re.search(rb"yurthub proxy at (http://127\.0\.0\.1:\d+)", collector.out)
        assert proxy is not None, collector.out
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        out, err, code = await utils.getProcessOutputAndValue(
            KUBECTL,
            ["--server", proxy.group(1).decode(), "--cache-dir", os.path.join(home, "cache"), "get", "pods", "-A"],
            env={"HOME": home, "KUBECONFIG": "/dev/null", "PATH": os.environ.get("PATH", "/usr/bin")},
            reactor=reactor,
        )
        self.assertEqual(code, 0, err.decode())
        self.assertIn(b"NAMESPACE", out)
        self.assertIn(b"Running", out)
