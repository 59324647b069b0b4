"""The HTML of a report: one self-contained page (inline CSS, figures as ``data:`` URIs, no script,
nothing fetched). Every text passed in as a cell, caption or title is escaped here; only the
``html`` of a :class:`Section` is taken as it is (the report builds it from these helpers)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from qubocompress.report.figures import Figure

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1180px;
       padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { font-size: 1.3em; margin-top: 2.2em;
     border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
p.lead { font-size: 1.08em; } ul.headline li { margin: 0.2em 0; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 70em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.55em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
td.text { text-align: left; white-space: normal; }
tr.failed td { color: #a40000; background: #fff6f6; }
pre { background: #f6f6f6; padding: 0.7em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
"""


@dataclass(frozen=True)
class Section:
    """One ``<h2>`` section of a report: its title (plain text) and its HTML (already escaped)."""

    title: str
    html: str


@dataclass(frozen=True)
class Cell:
    """A table cell whose text is left-aligned and may wrap (a reason, a path); plain text."""

    text: str


def paragraph(text: str, css: str = "") -> str:
    """``<p>`` of plain ``text``."""
    return f'<p class="{css}">{escape(text)}</p>' if css else f"<p>{escape(text)}</p>"


def bullets(items: Sequence[str], css: str = "") -> str:
    """``<ul>`` of plain-text items."""
    attribute = f' class="{css}"' if css else ""
    return f"<ul{attribute}>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>"


def code(lines: Sequence[str]) -> str:
    """``<pre>`` of plain-text lines (commands)."""
    return "<pre>" + escape("\n".join(lines)) + "</pre>"


def table(header: Sequence[str], rows: Sequence[Sequence[str | Cell]], failed: Sequence[bool] = ()) -> str:
    """A table of plain-text cells; rows marked in ``failed`` are drawn as failed cases."""

    def cell(value: str | Cell) -> str:
        if isinstance(value, Cell):
            return f'<td class="text">{escape(value.text)}</td>'
        return f"<td>{escape(value)}</td>"

    head = "".join(f"<th>{escape(name)}</th>" for name in header)
    body = "".join(
        ('<tr class="failed">' if n < len(failed) and failed[n] else "<tr>") + "".join(map(cell, row)) + "</tr>"
        for n, row in enumerate(rows)
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def figure(item: Figure) -> str:
    """``<figure>`` with the PNG embedded as a ``data:`` URI and its caption."""
    data = base64.b64encode(item.png).decode("ascii")
    return (
        f'<figure><img alt="{escape(item.name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(item.caption)}</figcaption></figure>"
    )


def page(title: str, lead: str, sections: Sequence[Section]) -> str:
    """The whole page: ``title`` (plain text), ``lead`` (HTML: the headline) and the sections."""
    body = "".join(f"<h2>{escape(section.title)}</h2>{section.html}" for section in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{lead}{body}</body></html>\n"
    )
