"""The ``qubocompress`` command (placeholder until the pipeline lands)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    raise SystemExit("qubocompress: not wired yet")
