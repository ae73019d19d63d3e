"""Tests for `bench.summary` and `bench.chart`: the one table and chart of a whole run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench.chart import draw_chart
from bench.summary import NOT_MEASURED, SMOKE, build_summary, summary_table

#: Every row of a summary, in order: one per target of issue 9.
ROW_KEYS = [
    "online_list_rps",
    "offline_small_rps",
    "relay_events_per_second",
    "offline_bulk_p50_ms",
    "offline_bulk_p99_ms",
    "rss_after_caching_mb",
    "restart_first_list_seconds",
    "failover_failed_requests",
    "flowcontrol_overhead",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_MACHINE = {"nproc": 2, "cpu": "test CPU", "python": "3.11", "twisted": "26.10.0"}
_GIT = {"commit": "abc1234", "yurthub_sources_modified": False, "source": "/src"}


def _autonomy_entry(key: str, yurthub: float, anchor: float | None, verdict: str) -> dict[str, Any]:
    return {
        "key": key,
        "yurthub": yurthub,
        "anchor": anchor,
        "anchor_is": "nginx static, same bytes" if anchor else "",
        "ratio": yurthub / anchor if anchor else None,
        "verdict": verdict,
        "note": "",
    }


def _wrk_row(key: str, requests_per_second: float, other: float = 0.0) -> dict[str, Any]:
    return {
        "key": key,
        "requests_per_second": requests_per_second,
        "other_cpu_percent": other,
        "steal_cpu_percent": 1.0,
    }


def reports() -> dict[str, dict[str, Any]]:
    """The parts of the four benchmarks' reports that the summary reads."""
    common = {"machine": _MACHINE, "yurthub_git": _GIT}
    return {
        "proxy-list": {
            **common,
            "request": {"pods": 100},
            "settings": {"connections": 16},
            "rows": [
                _wrk_row("nginx-proxy", 20_000.0),
                _wrk_row("yurthub", 2_000.0, other=60.0),
            ],
            "yurthub_vs_nginx_proxy": {
                "ratio": 0.1,
                "verdict": "FAIL",
                "reason": "below target",
                "nginx_proxy_cpu_us_per_request": 30.0,
                "yurthub_cpu_us_per_request": 300.0,
                "cpu_per_request_ratio": 0.1,
            },
        },
        "autonomy": {
            **common,
            "settings": {"pods": {"bulk": 10_000, "small": 100, "events": 1000}},
            "offline_rows": [
                _wrk_row("yurthub-small", 4_000.0),
                _wrk_row("nginx-small", 10_000.0),
                _wrk_row("yurthub-bulk", 20.0),
                _wrk_row("nginx-bulk", 50.0),
            ],
            "summary": [
                _autonomy_entry("offline_small_rps", 4_000.0, 10_000.0, "PASS"),
                _autonomy_entry("offline_bulk_p50_ms", 100.0, 50.0, "-"),
                _autonomy_entry("offline_bulk_p99_ms", 200.0, 80.0, "-"),
                _autonomy_entry("relay_events_per_second", 14_000.0, 20_000.0, "PASS"),
                _autonomy_entry("cache_converged_seconds", 0.8, None, "PASS"),
                _autonomy_entry("rss_after_caching_mb", 91.0, None, "FAIL"),
                _autonomy_entry("restart_first_list_seconds", 1.4, None, "FAIL"),
            ],
        },
        "failover": {
            **common,
            "rows": [
                {"key": "yurthub", "failed": 0, "requests": 30_000},
                {"key": "nginx-stream", "failed": 8, "requests": 50_000},
            ],
            "verdicts": {"failed": {"value": 0, "target": 0, "verdict": "PASS"}},
        },
        "flowcontrol": {
            **common,
            "limiter_overhead": {
                "summary": {
                    "cpu_us_per_request": {"on": 400.0, "off": 390.0},
                    "overhead_by_cpu_per_request": 0.025,
                    "overhead_of_setting_medians_by_cpu_per_request": 0.0256,
                    "rounds": [{}, {}, {}],
                    "verdict": "PASS",
                    "reason": "",
                }
            },
        },
    }


def summary_of(measured: dict[str, Any], *, quick: bool = False, steal: float = 3.2) -> dict[str, Any]:
    return build_summary(
        measured, quick=quick, elapsed_s=61.0, durations_s={"proxy-list": 10.0}, steal_percent=steal
    )


class BuildSummaryTests(SynchronousTestCase):
    """`build_summary` gives one row per target, with the benchmarks' own verdicts."""

    def test_one_row_per_target_in_order(self) -> None:
        summary = summary_of(reports())
        self.assertEqual([row["key"] for row in summary["rows"]], ROW_KEYS)

    def test_rows_carry_figures_targets_and_verdicts(self) -> None:
        rows = {row["key"]: row for row in summary_of(reports())["rows"]}
        online = rows["online_list_rps"]
        self.assertEqual(
            (online["yurthub"], online["anchor"], online["value"]), (2_000.0, 20_000.0, 0.1)
        )
        self.assertEqual(online["target"], {"op": ">=", "value": 0.25})
        self.assertEqual(online["verdict"], "FAIL")
        self.assertEqual(rows["rss_after_caching_mb"]["target"], {"op": "<=", "value": 80.0})
        self.assertEqual(rows["restart_first_list_seconds"]["target"], {"op": "<=", "value": 1.0})
        self.assertEqual(rows["failover_failed_requests"]["anchor"], 8)
        self.assertEqual(rows["flowcontrol_overhead"]["value"], 0.025)
        self.assertIsNone(rows["offline_bulk_p50_ms"]["target"])

    def test_notes_say_cost_per_request_and_noise_not_the_verdict_again(self) -> None:
        rows = {row["key"]: row for row in summary_of(reports())["rows"]}
        note = rows["online_list_rps"]["note"]
        self.assertIn("by CPU per request 30 / 300 us = 0.100", note)
        self.assertIn("noisy: other work and steal took up to 61 %", note)
        self.assertNotIn("below target", note)
        self.assertEqual(rows["offline_small_rps"]["note"], "")
        self.assertIn("median of 3 paired rounds", rows["flowcontrol_overhead"]["note"])

    def test_a_run_with_much_steal_marks_its_timed_verdicts_noisy(self) -> None:
        rows = {row["key"]: row for row in summary_of(reports(), steal=52.0)["rows"]}
        self.assertEqual(rows["online_list_rps"]["verdict"], "FAIL (noisy)")
        self.assertTrue(rows["flowcontrol_overhead"]["verdict"].endswith(" (noisy)"))
        # Memory and failed requests do not move with steal.
        self.assertEqual(rows["rss_after_caching_mb"]["verdict"], "FAIL")
        self.assertEqual(rows["failover_failed_requests"]["verdict"], "PASS")
        quiet = {row["key"]: row for row in summary_of(reports(), steal=3.2)["rows"]}
        self.assertEqual(quiet["online_list_rps"]["verdict"], "FAIL")

    def test_quick_run_has_no_verdicts(self) -> None:
        summary = summary_of(reports(), quick=True)
        self.assertTrue(summary["quick"])
        self.assertEqual({row["verdict"] for row in summary["rows"]}, {SMOKE})

    def test_benchmark_that_did_not_measure_leaves_its_rows_not_measured(self) -> None:
        measured: dict[str, Any] = dict(reports())
        measured["autonomy"] = None
        rows = summary_of(measured)["rows"]
        self.assertEqual([row["key"] for row in rows], ROW_KEYS)
        missing = [row for row in rows if row["verdict"] == NOT_MEASURED]
        self.assertEqual(len(missing), 6)
        self.assertTrue(all(row["value"] is None for row in missing))

    def test_records_commit_machine_and_steal(self) -> None:
        summary = summary_of(reports())
        self.assertEqual(summary["yurthub_git"]["commit"], "abc1234")
        self.assertEqual(summary["machine"]["nproc"], 2)
        self.assertEqual(summary["machine"]["steal_percent_of_one_core"], 3.2)

    def test_table_names_every_scenario(self) -> None:
        summary = summary_of(reports())
        text = summary_table(summary["rows"])
        for row in summary["rows"]:
            self.assertIn(row["scenario"], text)
        self.assertIn("<= 80 MB", text)
        self.assertIn("+2.5 %", text)

    def test_latency_rows_say_faster_or_slower(self) -> None:
        from bench.summary import value_text

        self.assertEqual(value_text({"value": 0.75, "unit": "times"}), "1.3x faster")
        self.assertEqual(value_text({"value": 3.6, "unit": "times"}), "3.6x slower")
        self.assertEqual(value_text({"value": 1.0, "unit": "times"}), "1.0x slower")


class DrawChartTests(SynchronousTestCase):
    """`draw_chart` writes a PNG, whatever the verdicts and missing rows."""

    def test_writes_png(self) -> None:
        path = Path(self.mktemp()) / "chart.png"
        draw_chart(summary_of(reports()), path)
        self.assertEqual(path.read_bytes()[:8], PNG_SIGNATURE)

    def test_writes_png_with_rows_not_measured(self) -> None:
        measured: dict[str, Any] = dict(reports())
        measured["failover"] = None
        path = Path(self.mktemp()) / "chart.png"
        draw_chart(summary_of(measured, quick=True), path)
        self.assertEqual(path.read_bytes()[:8], PNG_SIGNATURE)


class CommandLineTests(SynchronousTestCase):
    """`python -m bench` options that reach the measurements."""

    def test_cooldown_reaches_every_timed_benchmark(self) -> None:
        from bench.__main__ import parse_args

        args = parse_args(["--cooldown", "20"])
        self.assertEqual(args.cooldown, 20.0)
        self.assertEqual(parse_args([]).cooldown, 0.0)
        import io
        import sys

        self.patch(sys, "stderr", io.StringIO())  # argparse's usage would break the reporter's line
        with self.assertRaises(SystemExit):
            parse_args(["--cooldown", "-1"])
        self.assertIn("--cooldown must be at least 0", sys.stderr.getvalue())

    def test_interleaved_turns_alternate_and_add_up(self) -> None:
        import bench.measure as measure_module
        from bench.wrk import WrkResult

        slept: list[float] = []
        self.patch(measure_module.time, "sleep", slept.append)
        calls: list[tuple[str, float]] = []

        def fake_wrk(wrk: str, url: str, script: Any, *, duration: float, **kwargs: Any) -> WrkResult:
            calls.append((url, duration))
            n = len(calls)
            return WrkResult(requests=100 * n, duration_us=int(duration * 1e6), bytes=1000 * n,
                             latency_us={"p50": float(n), "p99": 10.0 * n, "max": 5.0 * n},
                             errors={"timeout": 1 if url.endswith("b") else 0})  # fmt: skip

        class FakeChild:
            def __init__(self) -> None:
                self.cpu = 0.0

            def check_alive(self) -> None:
                pass

            def cpu_seconds(self) -> float:
                self.cpu += 0.5
                return self.cpu

        self.patch(measure_module, "run_wrk", fake_wrk)
        load = measure_module.Load(wrk="wrk", script=Path("x.lua"), duration=6, warmup=1, connections=1,
                                   threads=1, headers={}, cooldown=2.0)  # fmt: skip
        a, b, up = FakeChild(), FakeChild(), FakeChild()
        targets = [measure_module.Target(k, k, f"http://x/{k}", c, "") for k, c in (("a", a), ("b", b))]  # type: ignore[arg-type]
        rows = measure_module.measure_interleaved(load, targets, up, [a, b, up], 3)  # type: ignore[arg-type]
        self.assertEqual(slept, [2.0])  # one rest for the whole interleaved block
        # Warm-ups first, then turns of 2 s in the order a b, b a, a b.
        self.assertEqual([u[-1] for u, _ in calls], ["a", "b", "a", "b", "b", "a", "a", "b"])
        self.assertEqual([d for _, d in calls], [1, 1, 2, 2, 2, 2, 2, 2])
        by_key = {row.target.key: row for row in rows}
        self.assertEqual([row.target.key for row in rows], ["a", "b"])
        # a's turns were calls 3, 6 and 7: their requests, bytes and time add up.
        self.assertEqual(by_key["a"].result.requests, 100 * (3 + 6 + 7))
        self.assertEqual(by_key["a"].result.bytes, 1000 * (3 + 6 + 7))
        self.assertEqual(by_key["a"].result.duration_us, 6_000_000)
        self.assertEqual(by_key["a"].result.latency_us["max"], 35.0)
        self.assertAlmostEqual(by_key["a"].result.latency_us["p50"], (9 + 36 + 49) / 16, places=1)
        self.assertEqual(by_key["b"].result.errors, {"timeout": 3})
        # Each target's server CPU is taken over its own turns only.
        self.assertGreater(by_key["a"].server_cpu, 0)

    def test_turns_default_to_five_and_one_when_quick(self) -> None:
        from bench.__main__ import parse_args

        self.assertEqual(parse_args([]).turns, 5)
        self.assertEqual(parse_args(["--quick"]).turns, 1)
        self.assertEqual(parse_args(["--turns", "3"]).turns, 3)
        import io
        import sys

        self.patch(sys, "stderr", io.StringIO())
        with self.assertRaises(SystemExit):
            parse_args(["--turns", "0"])
        self.assertIn("--turns must be at least 1", sys.stderr.getvalue())

    def test_together_runs_one_wrk_per_target_at_once(self) -> None:
        import threading

        import bench.measure as measure_module
        from bench.wrk import WrkResult

        self.patch(measure_module.time, "sleep", lambda seconds: None)
        timed = threading.Barrier(2, timeout=10)  # both timed runs must be under way together
        calls: list[tuple[str, float]] = []

        def fake_wrk(wrk: str, url: str, script: Any, *, duration: float, **kwargs: Any) -> WrkResult:
            calls.append((url[-1], duration))
            if duration == 4:
                timed.wait()
            return WrkResult(requests=400 if url.endswith("a") else 200, duration_us=4_000_000,
                             bytes=1, latency_us={"p50": 1.0}, errors={})  # fmt: skip

        class FakeChild:
            def __init__(self, step: float) -> None:
                self.cpu, self.step = 0.0, step

            def check_alive(self) -> None:
                pass

            def cpu_seconds(self) -> float:
                self.cpu += self.step
                return self.cpu

        self.patch(measure_module, "run_wrk", fake_wrk)
        load = measure_module.Load(wrk="wrk", script=Path("x.lua"), duration=4, warmup=1, connections=1,
                                   threads=1, headers={}, cooldown=0)  # fmt: skip
        a, b, up = FakeChild(1.0), FakeChild(2.0), FakeChild(0.0)
        targets = [measure_module.Target(k, k, f"http://x/{k}", c, "") for k, c in (("a", a), ("b", b))]  # type: ignore[arg-type]
        rows = measure_module.measure_together(load, targets, up, [a, b, up])  # type: ignore[arg-type]
        self.assertEqual(sorted(calls), [("a", 1), ("a", 4), ("b", 1), ("b", 4)])
        self.assertEqual([row.target.key for row in rows], ["a", "b"])
        self.assertEqual([row.result.requests for row in rows], [400, 200])
        # b's process used twice the CPU between its samples for half the requests.
        us = [row.server_us_per_request for row in rows]
        self.assertGreater(us[1], us[0])

    def test_together_raises_what_a_wrk_raised(self) -> None:
        import bench.measure as measure_module
        from bench.wrk import WrkFailed

        def failing(*args: Any, **kwargs: Any) -> Any:
            raise WrkFailed("no result")

        self.patch(measure_module, "run_wrk", failing)
        load = measure_module.Load(wrk="wrk", script=Path("x.lua"), duration=1, warmup=0, connections=1,
                                   threads=1, headers={}, cooldown=0)  # fmt: skip

        class Alive:
            def check_alive(self) -> None:
                pass

            def cpu_seconds(self) -> float:
                return 0.0

        child = Alive()
        target = measure_module.Target("t", "t", "http://x/t", child, "")  # type: ignore[arg-type]
        with self.assertRaises(WrkFailed):
            measure_module.measure_together(load, [target], child, [child])  # type: ignore[arg-type]

    def test_merging_one_result_is_that_result(self) -> None:
        import bench.measure as measure_module
        from bench.wrk import WrkResult

        one = WrkResult(requests=5, duration_us=10, bytes=7, latency_us={"p50": 1.0}, errors={})
        self.assertIs(measure_module.merge_results([one]), one)

    def test_measure_rests_before_a_configuration(self) -> None:
        import bench.measure as measure_module

        slept: list[float] = []
        self.patch(measure_module.time, "sleep", slept.append)

        class Stop(Exception):
            pass

        def no_wrk(*args: Any, **kwargs: Any) -> Any:
            raise Stop

        self.patch(measure_module, "run_wrk", no_wrk)
        load = measure_module.Load(wrk="wrk", script=Path("x.lua"), duration=1, warmup=1, connections=1,
                                   threads=1, headers={}, cooldown=7.5)  # fmt: skip
        target = measure_module.Target("t", "t", "http://127.0.0.1:1/", None, "")  # type: ignore[arg-type]
        with self.assertRaises(Stop):
            measure_module.measure(load, target, None, [])  # type: ignore[arg-type]
        self.assertEqual(slept, [7.5])
