"""`LineBuffer`: lines as they complete, the partial line held without quadratic copies."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from yurthub.lines import LineBuffer


class LineBufferTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.lists(st.binary(max_size=20), max_size=20))
    def test_lines_equal_splitting_the_whole_stream(self, chunks: list[bytes]) -> None:
        buffer = LineBuffer()
        got: list[bytes] = []
        for chunk in chunks:
            got.extend(buffer.feed(chunk))
        *whole, rest = b"".join(chunks).split(b"\n")
        self.assertEqual(got, whole)
        self.assertEqual(buffer.size, len(rest))

    def test_a_long_line_in_small_chunks_is_joined_once(self) -> None:
        buffer = LineBuffer()
        chunk = b"x" * 1024
        started = time.process_time()
        for _ in range(16 * 1024):  # 16 MiB without a line end, 1 KiB at a time
            self.assertEqual(buffer.feed(chunk), [])
        self.assertEqual(buffer.size, 16 * 1024 * 1024)
        self.assertEqual(buffer.feed(b"\n"), [chunk * 16 * 1024])
        # Joining per chunk would copy ~128 GiB here; the pieces take well under a second.
        self.assertLess(time.process_time() - started, 5.0)
