"""The report layer: ``report.html`` of a run, sweep or bench folder (:mod:`.build`), markdown tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-markdown table: the header, its rule, one line per row (cells as given)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(folder: str | Path, log: Callable[[str], None] = print) -> Path:
    """:func:`qubocompress.report.build.write_report` (imported when called: matplotlib is slow to import)."""
    from qubocompress.report.build import write_report as write

    return write(folder, log)
