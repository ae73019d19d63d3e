"""CI smoke test of the benchmarks: ``python -m bench --quick`` runs every scenario.

It starts the real thing (nginx, wrk, twistd yurthub, the simulated cloud) on 127.0.0.1
for about a minute and checks that the run measured: exit status 0, a summary row with a
number for every target, and a PNG chart. No thresholds: a shared CI machine's figures
say nothing about yurthub. nginx and wrk must be installed (``.ci/run`` installs them):
their absence fails the test instead of skipping it, so CI cannot pass without running it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.test_bench_summary import PNG_SIGNATURE, ROW_KEYS

REPO_ROOT = Path(__file__).resolve().parent.parent
#: A quick run takes about a minute; a busy CI machine gets four.
TIMEOUT = 240.0


class BenchQuickTests(SynchronousTestCase):
    """``python -m bench --quick`` measures every scenario of the summary."""

    def test_quick_run_measures_every_scenario(self) -> None:
        out = Path(self.mktemp()).resolve()  # the bench runs from the repo root
        out.mkdir(parents=True)
        results, chart = out / "results.json", out / "chart.png"
        try:
            done = subprocess.run(
                [sys.executable, "-m", "bench", "--quick", "--results", str(results),
                 "--chart", str(chart)],
                cwd=REPO_ROOT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            self.fail(f"python -m bench --quick ran over {TIMEOUT:g} s:\n{e.stdout}\n{e.stderr}")
        output = f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-4000:]}"
        if done.returncode == 2:
            self.fail(f"nginx or wrk missing (.ci/run installs them):\n{output}")
        self.assertEqual(done.returncode, 0, output)

        document = json.loads(results.read_text())
        # The restart is read next to the machine's speed at that moment.
        for restart in document["autonomy"]["restarts"]:
            probes = restart["speed_probe_ms"]
            self.assertEqual(len(probes), 2, restart)
            self.assertTrue(all(p > 0 for p in probes), restart)
        self.assertIn("speed probe", done.stdout)
        summary = document["summary"]
        self.assertTrue(summary["quick"])
        rows = {row["key"]: row for row in summary["rows"]}
        self.assertEqual(sorted(rows), sorted(ROW_KEYS), output)
        for key, row in rows.items():
            self.assertIsInstance(row["value"], int | float, f"{key}: {row}")
            self.assertEqual(row["verdict"], "smoke", f"{key}: {row}")
        self.assertIn("=== summary", done.stdout)
        self.assertEqual(chart.read_bytes()[:8], PNG_SIGNATURE)
