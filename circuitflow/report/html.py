"""The run report: one self-contained HTML file (the README).

Figures are embedded as base64 ``data:`` URIs and the style sheet is inline, so the file opens from
disk, mailed or archived, with no network and no sibling files.  Every piece of text from the
caller (titles, paragraphs, table cells, settings) is HTML-escaped.  The output is a pure function
of the arguments (no timestamp unless the caller puts one in ``settings``): the same run gives the
same bytes.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import polars as pl

from circuitflow.io import write_atomic

MAX_TABLE_ROWS = 1000

_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #eee; }
nav ol { columns: 2; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, caption { font-size: .9rem; color: #555; text-align: left; padding: .3rem 0; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .2rem .5rem; }
th { background: #f5f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f5f5f7; padding: .8rem; overflow-x: auto; font-size: .85rem; }
.note { font-size: .85rem; color: #777; }
""".strip()


@dataclass(frozen=True)
class ReportSection:
    """One section of the report, rendered in this order: text, figures, tables.

    title:   the heading (also gives the section's anchor).
    text:    plain text, HTML-escaped; a blank line starts a new paragraph.
    figures: image files (PNG, SVG, JPEG, GIF, WebP) to embed; the file name is the caption.
    tables:  ``(caption, DataFrame)`` pairs.
    """

    title: str
    text: str = ""
    figures: Sequence[str | Path] = field(default_factory=tuple)
    tables: Sequence[tuple[str, pl.DataFrame]] = field(default_factory=tuple)


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _anchor(index: int, title: str) -> str:
    """A unique, readable fragment id: ``s{n}-{slug}``."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:48]
    return f"s{index + 1}-{slug}" if slug else f"s{index + 1}"


def _paragraphs(text: str) -> list[str]:
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
    return [f"<p>{_esc(b)}</p>" for b in blocks]


def _figure(path: str | Path) -> str:
    path = Path(path)
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"Cannot embed figure {path}: the report takes {', '.join(sorted(_MIME))} files.")
    if not path.is_file():
        raise ValueError(f"Figure {path} does not exist; run the figures step before writing the report.")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:{mime};base64,{data}" alt="{_esc(path.stem)}">'
        f"<figcaption>{_esc(path.name)}</figcaption></figure>"
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return format(value, ".6g")
    return str(value)


def _table(caption: str, frame: pl.DataFrame, max_rows: int | None) -> str:
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"Table {caption!r} must be a polars DataFrame, got {type(frame).__name__}.")
    numeric = [dtype.is_numeric() for dtype in frame.dtypes]
    shown = frame if max_rows is None else frame.head(max_rows)
    head = "".join(f"<th>{_esc(name)}</th>" for name in frame.columns)
    rows = []
    for row in shown.iter_rows():
        cells = "".join(
            f'<td class="num">{_esc(_cell(v))}</td>' if num else f"<td>{_esc(_cell(v))}</td>"
            for v, num in zip(row, numeric)
        )
        rows.append(f"<tr>{cells}</tr>")
    note = ""
    if shown.height < frame.height:
        note = f'<p class="note">Showing the first {shown.height} of {frame.height} rows.</p>'
    return (
        f"<table><caption>{_esc(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>\n" + "\n".join(rows) + f"\n</tbody></table>{note}"
    )


def render_report(
    sections: Sequence[ReportSection], settings: dict, title: str, *, max_table_rows: int | None = MAX_TABLE_ROWS
) -> str:
    """The report's HTML text (see ``write_report``)."""
    anchors = [_anchor(i, s.title) for i, s in enumerate(sections)]
    toc = "".join(f'<li><a href="#{a}">{_esc(s.title)}</a></li>' for a, s in zip(anchors, sections))
    toc += '<li><a href="#settings">Settings</a></li>'
    body = []
    for anchor, section in zip(anchors, sections):
        parts = [f'<section id="{anchor}"><h2>{_esc(section.title)}</h2>']
        parts += _paragraphs(section.text)
        parts += [_figure(f) for f in section.figures]
        parts += [_table(caption, frame, max_table_rows) for caption, frame in section.tables]
        parts.append('<p class="note"><a href="#top">back to contents</a></p></section>')
        body.append("\n".join(parts))
    settings_text = json.dumps(settings, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_esc(title)}</title>",
            f"<style>\n{_CSS}\n</style>",
            "</head>",
            "<body>",
            f'<h1 id="top">{_esc(title)}</h1>',
            f"<nav><h2>Contents</h2><ol>{toc}</ol></nav>",
            *body,
            f'<section id="settings"><h2>Settings</h2><pre>{_esc(settings_text)}</pre></section>',
            "</body>",
            "</html>",
            "",
        ]
    )


def write_report(
    path: str | Path,
    sections: Sequence[ReportSection],
    settings: dict,
    title: str,
    *,
    max_table_rows: int | None = MAX_TABLE_ROWS,
) -> Path:
    """Write the report as one self-contained HTML file (UTF-8), atomically; returns ``path``.

    sections: rendered in order, each with an anchor linked from the table of contents.
    settings: the run's parameters, shown as sorted, indented JSON (values JSON cannot hold,
              such as paths, are shown as ``str(value)``).
    max_table_rows: longer tables show their first rows and say how many were left out
              (``None``: every row).
    Figures are read now and embedded; a missing figure file is an error naming it.
    """
    text = render_report(sections, settings, title, max_table_rows=max_table_rows)
    write_atomic(path, lambda tmp: tmp.write_bytes(text.encode("utf-8")))
    return Path(path)


__all__ = ["ReportSection", "render_report", "write_report"]
