"""Progress bars: drawn on a terminal when enabled, never in a pipe; the items pass through unchanged."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from qubocompress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@contextmanager
def stderr_as(stream: io.StringIO) -> Iterator[io.StringIO]:
    """``stream`` as sys.stderr inside the test body (pytest's capture resets it between phases)."""
    previous, sys.stderr = sys.stderr, stream
    try:
        yield stream
    finally:
        sys.stderr = previous
        progress.enable(False)


def test_bars_nest_on_a_terminal_and_items_pass_through():
    with stderr_as(Terminal()) as screen:
        progress.enable(True)
        assert progress.shown()
        seen = [
            (epoch, list(progress.track(range(3), f"epoch {epoch}"))) for epoch in progress.track(range(2), "training")
        ]
        assert progress._state["display"] is None and progress._state["open"] == 0
    assert seen == [(0, [0, 1, 2]), (1, [0, 1, 2])]
    assert screen.getvalue()  # drawn (transient bars leave their clearing codes)


def test_nothing_is_drawn_unless_enabled_or_in_a_pipe():
    with stderr_as(Terminal()) as screen:
        assert not progress.shown()
        assert list(progress.track(iter("abc"), "letters")) == ["a", "b", "c"]
    assert screen.getvalue() == ""
    with stderr_as(io.StringIO()) as pipe:
        progress.enable(True)
        assert not progress.shown() and list(progress.track(range(2), "x")) == [0, 1]
    assert pipe.getvalue() == ""


def test_a_bar_closes_when_its_loop_breaks():
    with stderr_as(Terminal()):
        progress.enable(True)
        for item in progress.track(range(10), "early stop"):
            if item == 3:
                break
        assert progress._state["open"] == 0 and progress._state["display"] is None


def test_a_counting_bar_advances_per_call_and_closes():
    with stderr_as(Terminal()) as screen:
        progress.enable(True)
        with progress.counting("plans scored", 3) as advance:
            for _ in range(3):
                advance()
            assert progress._state["open"] == 1
        assert progress._state["open"] == 0 and progress._state["display"] is None
    assert screen.getvalue()
    with progress.counting("not shown") as advance:  # disabled: a no-op
        advance()
