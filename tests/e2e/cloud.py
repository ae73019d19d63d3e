"""End-to-end fixture: a TLS simulated cloud, a yurthub in front of it, and real clients.

The cloud runs with its own CA and requires nothing of clients; yurthub presents the node's
client certificate (``system:node:edge-1``), so the cloud's request log shows who a request
arrived as. kubectl runs as a child process (never blocking the reactor) with its own
scratch HOME, kubeconfig and discovery cache.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

from twisted.internet import reactor, utils
from twisted.trial.unittest import TestCase

from tests.support import start_hub
from yurthub.service import YurtHub
from yurthub.testing.apiserver import SimulatedAPIServer
from yurthub.testing.demo import seed_demo_objects
from yurthub.testing.pki import TestPKI
from yurthub.upstream.tls import FileCredentials

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"

_AGE = re.compile(rb"(?<=\s)(\d+(s|m|h|d|y))+(?=\s|$)")


def without_ages(table: bytes) -> bytes:
    """A kubectl table with its AGE cells blanked (two runs may straddle a second)."""
    return _AGE.sub(b"<age>", table)


class Cloud:
    """The running parts of one end-to-end scenario."""

    def __init__(self, test: TestCase, pki: TestPKI, server: SimulatedAPIServer, hub: YurtHub, files: dict[str, str]) -> None:
        self.test = test
        self.pki = pki
        self.server = server
        self.hub = hub
        self.files = files
        self.home = os.path.abspath(test.mktemp())
        os.makedirs(self.home)
        self.kubeconfig = os.path.join(self.home, "kubeconfig")
        with open(self.kubeconfig, "w") as f:
            f.write("apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n")

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.hub.port_of('listen.proxy')}"

    def kubectl_args(self, via_hub: bool) -> list[str]:
        """Flags that point kubectl at yurthub, or straight at the cloud as the node."""
        cache = os.path.join(self.home, "cache-hub" if via_hub else "cache-cloud")
        if via_hub:
            return ["--server", self.proxy_url, "--cache-dir", cache]
        return [
            "--server", self.server.url,
            "--certificate-authority", self.files["ca"],
            "--client-certificate", self.files["cert"],
            "--client-key", self.files["key"],
            "--cache-dir", cache,
        ]

    async def kubectl(self, *args: str, via_hub: bool = True, stdin: bytes | None = None) -> tuple[bytes, bytes, int]:
        """Run kubectl; returns (stdout, stderr, exit code)."""
        env = {"HOME": self.home, "KUBECONFIG": self.kubeconfig, "PATH": os.environ.get("PATH", "/usr/bin")}
        argv = [*self.kubectl_args(via_hub), *args]
        out, err, code = await utils.getProcessOutputAndValue(KUBECTL, argv, env=env, reactor=reactor)
        return out, err, code

    async def both(self, *args: str) -> tuple[bytes, bytes]:
        """The same kubectl command through yurthub and straight to the cloud; both must succeed."""
        via_hub, err_hub, code_hub = await self.kubectl(*args, via_hub=True)
        direct, err_direct, code_direct = await self.kubectl(*args, via_hub=False)
        self.test.assertEqual(code_hub, 0, err_hub.decode())
        self.test.assertEqual(code_direct, 0, err_direct.decode())
        return via_hub, direct


async def start_cloud(test: TestCase, *, seed: bool = True, **hub_sections: Any) -> Cloud:
    """A TLS simulated cloud with demo objects and a yurthub holding the node's certificate."""
    if not os.path.exists(KUBECTL):
        test.fail(f"kubectl is needed for the end-to-end tests and is not at {KUBECTL}")
    pki = TestPKI()
    server = SimulatedAPIServer(reactor, tls=pki)
    if seed:
        seed_demo_objects(server)
    await server.start("tcp:0:interface=127.0.0.1")
    test.addCleanup(server.stop)
    cert, key = pki.issue_client("system:node:edge-1", organizations=["system:nodes"])
    directory = os.path.abspath(test.mktemp())
    os.makedirs(directory)
    files = pki.write_files(directory, name="node", cert_pem=cert, key_pem=key)
    credentials = FileCredentials.from_files(files["ca"], files["cert"], files["key"])
    hub = await start_hub(test, [server.url.replace("127.0.0.1", "localhost")], credentials=credentials, **hub_sections)
    return Cloud(test, pki, server, hub, files)
