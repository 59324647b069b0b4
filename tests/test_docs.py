"""The documentation's Python examples run as they stand."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs"


def test_python_api_page_runs_in_order(tmp_path, monkeypatch):
    text = (DOCS / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "python_api_example"}
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)  # our own page, not a user's file
    assert namespace["result"].metrics.ratio >= 8
