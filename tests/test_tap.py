"""Tests for ``twistd yurthub`` (yurthub/tap.py and the plugin): options, overrides and
how bad input ends start-up."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
from typing import Any

from twisted.application.service import IService
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from yurthub import tap
from yurthub.service import YurtHub
from yurthub.tap import (
    FREEZE_AFTER,
    M_MMAP_THRESHOLD,
    MMAP_THRESHOLD,
    ConfigReloader,
    Options,
    ProcessTuning,
    fix_mmap_threshold,
    makeService,
)

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def run_twistd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``twistd`` with this interpreter."""
    return subprocess.run(
        [*TWISTD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))},
    )


class OptionsTests(SynchronousTestCase):
    """Command-line options override single keys of the config file."""

    def config_file(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_options_override_the_file(self) -> None:
        path = self.config_file("nodeName: edge-1\nservers: [https://a:6443]\ncache: {dir: /a}\n")
        options = Options()
        options.parseOptions(
            [
                "--config", path, "--node-name", "edge-9", "--server", "https://b:6443",
                "--server", "https://c:6443", "--lb-mode", "priority", "--cache-dir", "/b",
                "--hub-listen", "tcp:0:interface=127.0.0.1", "--log-format", "json",
            ]
        )
        config = options.config
        assert config is not None
        self.assertEqual(config.node_name, "edge-9")
        self.assertEqual(config.servers, ("https://b:6443", "https://c:6443"))
        self.assertEqual(config.load_balancing, "priority")
        self.assertEqual(config.cache.dir, "/b")
        self.assertEqual(config.listen.hub, "tcp:0:interface=127.0.0.1")
        self.assertEqual(config.logging.format, "json")

    def test_bad_value_exits_with_one_line_naming_the_key(self) -> None:
        path = self.config_file("servers: [https://a:6443]\nloadBalancing: fastest\n")
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--config", path])
        self.assertEqual(str(caught.exception.code), f"yurthub: {path}: loadBalancing: must be one of rr, priority; got 'fastest'")

    def test_servers_on_the_command_line_need_no_file(self) -> None:
        options = Options()
        options.parseOptions(["--server", "https://a:6443"])
        self.assertEqual(options.config.servers, ("https://a:6443",))  # type: ignore[union-attr]

    def test_demo_points_at_the_simulated_cloud(self) -> None:
        options = Options()
        options.parseOptions(["--demo", "--demo-port", "17443", "--proxy-listen", "tcp:0:interface=127.0.0.1"])
        config = options.config
        assert config is not None
        self.assertEqual(config.servers, ("http://127.0.0.1:17443",))
        self.assertTrue(os.path.isdir(config.cache.dir))
        service = makeService(options)
        self.assertTrue(IService.providedBy(service))

    def test_make_service_builds_a_yurthub(self) -> None:
        options = Options()
        options.parseOptions(["--server", "https://a:6443", "--secure-listen", ""])
        service = makeService(options)
        self.assertEqual([type(s) for s in service], [ProcessTuning, ConfigReloader, YurtHub])  # type: ignore[attr-defined]


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


class _FakeGC:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))


class ProcessTuningTests(SynchronousTestCase):
    """`ProcessTuning` and `fix_mmap_threshold`."""

    def test_threshold_is_fixed_through_mallopt(self) -> None:
        libc = _FakeLibc()
        self.patch(tap.ctypes, "CDLL", lambda name: libc)
        self.assertTrue(fix_mmap_threshold())
        self.assertEqual(libc.calls, [(M_MMAP_THRESHOLD, MMAP_THRESHOLD)])

    def test_no_glibc_changes_nothing(self) -> None:
        self.assertFalse(fix_mmap_threshold(libc_name="libyurthub-no-such-libc.so.6"))

    def test_glibc_takes_the_threshold(self) -> None:
        if platform.libc_ver()[0] != "glibc":
            self.skipTest("not a glibc system")
        self.assertTrue(fix_mmap_threshold())

    def test_start_tunes_collector_and_allocator(self) -> None:
        collector, libc = _FakeGC(), _FakeLibc()
        self.patch(tap, "gc", collector)
        self.patch(tap.ctypes, "CDLL", lambda name: libc)
        ProcessTuning().startService()
        self.assertEqual(
            [name for name, _ in collector.calls], ["set_threshold", "enable", "collect", "freeze"]
        )
        self.assertEqual(libc.calls, [(M_MMAP_THRESHOLD, MMAP_THRESHOLD)])

    def test_with_a_reactor_the_freeze_waits_until_start_up_is_over(self) -> None:
        collector, libc = _FakeGC(), _FakeLibc()
        self.patch(tap, "gc", collector)
        self.patch(tap.ctypes, "CDLL", lambda name: libc)
        self.patch(tap, "dispatch_without_log_context", lambda reactor: None)
        clock = Clock()
        tuning = ProcessTuning(clock)
        tuning.startService()
        self.assertEqual([name for name, _ in collector.calls], ["set_threshold", "enable"])
        clock.advance(FREEZE_AFTER)
        self.assertEqual(
            [name for name, _ in collector.calls], ["set_threshold", "enable", "collect", "freeze"]
        )

    def test_stopped_before_the_freeze_cancels_it(self) -> None:
        collector = _FakeGC()
        self.patch(tap, "gc", collector)
        self.patch(tap, "dispatch_without_log_context", lambda reactor: None)
        clock = Clock()
        tuning = ProcessTuning(clock)
        tuning.startService()
        tuning.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(FREEZE_AFTER)
        self.assertNotIn("freeze", [name for name, _ in collector.calls])


class PluginTests(SynchronousTestCase):
    """The twistd plugin pauses the collector once yurthub is the chosen subcommand."""

    def test_asking_for_the_options_pauses_the_collector(self) -> None:
        from twisted.plugins.yurthub_plugin import yurthub

        self.addCleanup(gc.enable)
        gc.enable()
        self.assertIs(yurthub.options, Options)
        self.assertFalse(gc.isenabled())
        # The real collector, a fake libc, and a clock that never reaches the freeze.
        self.patch(tap.ctypes, "CDLL", lambda name: _FakeLibc())
        self.patch(tap, "dispatch_without_log_context", lambda reactor: None)
        thresholds = gc.get_threshold()
        self.addCleanup(lambda: gc.set_threshold(*thresholds))
        tuning = ProcessTuning(Clock())
        tuning.startService()
        self.addCleanup(tuning.stopService)
        self.assertTrue(gc.isenabled())

    def test_the_plugin_is_found_as_a_service_maker(self) -> None:
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("yurthub", makers)
        self.assertTrue(gc.isenabled())  # found, not chosen: nothing paused


class TwistdTests(SynchronousTestCase):
    """The real ``twistd`` command: the plugin is found, bad input ends start-up cleanly."""

    def test_twistd_lists_yurthub(self) -> None:
        result = run_twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("yurthub", result.stdout)

    def test_bad_config_ends_startup_with_one_line_and_no_traceback(self) -> None:
        cases = {
            "missing": None,
            "syntax": "servers: [https://a\n",
            "unknown key": "servers: [https://a:1]\nproxyPort: 1\n",
            "wrong type": "servers: [https://a:1]\nhealthCheck: {intervalSeconds: soon}\n",
            "bad url": "servers: ['https://a:port']\n",
            "bad endpoint": "servers: [https://a:1]\nlisten: {hub: 'unix'}\n",
            "bad mode": "servers: [https://a:1]\nloadBalancing: least-conn\n",
        }
        for name, text in cases.items():
            path = os.path.abspath(self.mktemp())
            if text is not None:
                with open(path, "w") as f:
                    f.write(text)
            result = run_twistd("--nodaemon", "--pidfile=", "yurthub", "--config", path)
            lines = result.stderr.strip().splitlines()
            self.assertNotEqual(result.returncode, 0, name)
            self.assertEqual(len(lines), 1, f"{name}: {result.stderr}")
            self.assertTrue(lines[0].startswith(f"yurthub: {path}"), f"{name}: {lines[0]}")
            self.assertNotIn("Traceback", result.stderr + result.stdout, name)
