"""Progress bars: drawn on a terminal when enabled, never in a pipe; the items pass through unchanged."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

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


def test_log_line_sends_warning_lines_at_warning_level_even_indented(monkeypatch: pytest.MonkeyPatch) -> None:
    from qubocompress.progress import log_line

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("qubocompress")
    monkeypatch.setattr(logger, "handlers", [handler])  # whatever the command line's tests installed
    level = logger.level
    logger.setLevel(logging.INFO)  # (setLevel, not the attribute: it clears the loggers' cached levels)
    try:
        for line in ("training lenet5", "warning: --device cuda: none", "  warning: could not cache", "a warning: no"):
            log_line(line)
    finally:
        logger.setLevel(level)
    assert [(record.levelname, record.getMessage()) for record in records] == [
        ("INFO", "training lenet5"),
        ("WARNING", "warning: --device cuda: none"),
        ("WARNING", "  warning: could not cache"),
        ("INFO", "a warning: no"),
    ]
