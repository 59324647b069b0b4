"""Progress bars on the long steps (training, fine-tuning, the analysis passes, the searches).

Shown only when the command line turns them on (:func:`enable`; a library shows none unless
asked) and stderr is an interactive terminal: never in a pipe, a log file or under ``--quiet``.
One rich display holds every open bar, so bars nest (an epoch's batches under the epochs).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_state: dict[str, Any] = {"enabled": False, "display": None, "open": 0}


def log_line(line: str) -> None:
    """The default ``log`` of the pipeline, sweeps and API: ``line`` to the ``qubocompress``
    logger, at WARNING when it starts "warning:" after any indent (so that ``--quiet``, and Python's default of
    warnings only, still show it), else at INFO."""
    level = logging.WARNING if line.lstrip().startswith("warning:") else logging.INFO
    logging.getLogger("qubocompress").log(level, line)


def enable(on: bool = True) -> None:
    """Show progress bars from now on (when stderr is a terminal), or stop showing them."""
    _state["enabled"] = on


def shown() -> bool:
    """Whether bars are drawn now: enabled and stderr an interactive terminal."""
    return bool(_state["enabled"]) and sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """``items`` as they are, with a transient bar ``description`` advancing by one per item."""
    if not shown():
        yield from items
        return
    with counting(description, total if total is not None else _length(items)) as advance:
        for item in items:
            yield item
            advance()


@contextmanager
def counting(description: str, total: int | None = None) -> Iterator[Callable[[], None]]:
    """A bar ``description`` for the block; the block calls the yielded ``advance()`` once per step
    (for work driven by callbacks, such as the plans a search scores). A no-op when not shown."""
    if not shown():
        yield lambda: None
        return
    display = _display()
    task = display.add_task(description, total=total)
    _state["open"] += 1
    try:
        yield lambda: display.advance(task)
    finally:
        display.remove_task(task)
        _state["open"] -= 1
        if _state["open"] == 0:
            display.stop()
            _state["display"] = None


def _display() -> Any:
    """The one rich display of every open bar, started with the first."""
    if _state["display"] is None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        display = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        display.start()
        _state["display"] = display
    return _state["display"]


def _length(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None
