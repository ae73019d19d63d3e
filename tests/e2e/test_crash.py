"""Crash consistency of the real ``twistd yurthub`` process: SIGKILLed at random moments of
a storm of watch events and list replacements, restarted, its cache checked every time.

The run is `bench.crash` (the cloud as a process of its own, kubelet-like clients,
the checks); here it is the CI variant, 3 kills in about 10 s. The full one, 20 kills,
is ``python -m bench crash`` (see bench/README.md, "crash").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.trial.unittest import TestCase

from bench import crash


class CrashConsistencyTests(TestCase):
    """After every SIGKILL and restart: every cache file parses, no temp file is served,
    no object is newer than the cloud's, offline lists answer, the cache converges."""

    def test_three_kills_in_a_storm_leave_a_consistent_cache(self) -> None:
        lines: list[str] = []
        results = Path(self.mktemp() + ".json")
        settings = crash.Settings(
            kills=3, seed=int(os.environ.get("YURTHUB_CRASH_SEED", "1")), event_pods=100,
            kill_window=(0.1, 1.5), results_path=results,
        )  # fmt: skip
        status = crash.run(settings, say=lines.append)
        report = "\n".join(lines)
        self.assertEqual(status, 0, report)
        rounds = json.loads(results.read_text())["crash"]["rounds"]
        self.assertEqual(len(rounds), 3, report)
        self.assertTrue(all(r["offline_items"] > 0 for r in rounds), report)
        self.assertIn("problems: 0", report)
