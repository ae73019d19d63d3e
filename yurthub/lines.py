"""Newline-delimited streams (watch events) split into lines as bytes arrive.

A watch event can arrive in many chunks. Joining the held partial line with every new
chunk copies it once per chunk, quadratic in its length: a hostile upstream sending one
endless line would burn the CPU. `LineBuffer` keeps the pieces and joins them once, when
the line's end arrives.
"""

from __future__ import annotations


class LineBuffer:
    """The complete lines of a stream, as they complete; ``size`` is the held partial line."""

    __slots__ = ("_pieces", "size")

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self.size = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes (without their ``\\n``); the rest is held."""
        if b"\n" not in data:
            if data:
                self._pieces.append(data)
                self.size += len(data)
            return []
        if self._pieces:
            self._pieces.append(data)
            data = b"".join(self._pieces)
        lines = data.split(b"\n")
        rest = lines.pop()
        self._pieces = [rest] if rest else []
        self.size = len(rest)
        return lines

    def clear(self) -> None:
        self._pieces = []
        self.size = 0
