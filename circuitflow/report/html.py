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

WIDE_PIXELS = 1000  # a PNG wider than this spans the figure grid's row
COLLAPSE_ROWS = 12  # longer tables start folded (<details>), with their caption as the summary

# A laptop screen: at most ~76rem of text, figures two to a row where they fit, wide tables scroll
# inside their own box instead of widening the page.
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1rem auto;
       max-width: 76rem; padding: 0 1rem; color: #1d1d1f; line-height: 1.4; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .2rem; margin: .4rem 0; font-size: 1.6rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid #eee; font-size: 1.3rem; }
section:first-of-type h2 { margin-top: .6rem; }
nav { font-size: .85rem; }
nav ol { display: flex; flex-wrap: wrap; gap: .2rem 1.2rem; padding: 0; margin: .3rem 0; list-style: none; }
p { margin: .4rem 0; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 30rem), 1fr)); gap: .8rem; }
figure { margin: .5rem 0; }
figure.wide { grid-column: 1 / -1; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, caption, summary { font-size: .85rem; color: #444; text-align: left; padding: .25rem 0; }
summary { cursor: pointer; }
.tables { display: flex; flex-wrap: wrap; gap: 0 1.2rem; align-items: flex-start; }
.scroll { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: .4rem 0; font-size: .85rem; }
th, td { border: 1px solid #ddd; padding: .15rem .45rem; }
th { background: #f5f5f7; }
td:first-child, th { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.passes { background: #e6f4ea; } td.fails { background: #fce8e6; } td.na { color: #777; }
pre { background: #f5f5f7; padding: .8rem; overflow-x: auto; font-size: .8rem; }
.note { font-size: .8rem; color: #777; }
""".strip()


Figure = str | Path | tuple[str | Path, str]  # a file, or (file, caption)


@dataclass(frozen=True)
class ReportSection:
    """One section of the report, rendered in this order: text, tables, figures.

    title:   the heading (also gives the section's anchor).
    text:    plain text, HTML-escaped; a blank line starts a new paragraph.
    tables:  ``(caption, DataFrame)`` pairs; a table of more than ``COLLAPSE_ROWS`` rows starts
             folded (``<details>``) under its caption.  ``side_by_side``: small tables share a row.
    figures: image files (PNG, SVG, JPEG, GIF, WebP) to embed, each a path or ``(path, caption)``;
             the caption says what the figure shows and how to read it (default: the file name).
    """

    title: str
    text: str = ""
    figures: Sequence[Figure] = field(default_factory=tuple)
    tables: Sequence[tuple[str, pl.DataFrame]] = field(default_factory=tuple)
    side_by_side: bool = False


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _anchor(index: int, title: str) -> str:
    """A unique, readable fragment id: ``s{n}-{slug}``."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:48]
    return f"s{index + 1}-{slug}" if slug else f"s{index + 1}"


def _paragraphs(text: str) -> list[str]:
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
    return [f"<p>{_esc(b)}</p>" for b in blocks]


def _figure(figure: Figure) -> str:
    path, caption = (Path(figure[0]), figure[1]) if isinstance(figure, tuple) else (Path(figure), Path(figure).name)
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"Cannot embed figure {path}: the report takes {', '.join(sorted(_MIME))} files.")
    if not path.is_file():
        raise ValueError(f"Figure {path} does not exist; run the figures step before writing the report.")
    raw = path.read_bytes()
    data = base64.b64encode(raw).decode("ascii")
    # a PNG wider than WIDE_PIXELS (a grid of circuits) takes the whole row instead of one column
    wide = mime == "image/png" and raw[12:16] == b"IHDR" and int.from_bytes(raw[16:20], "big") > WIDE_PIXELS
    return (
        ('<figure class="wide">' if wide else "<figure>") + f'<img src="data:{mime};base64,{data}" alt="{_esc(path.stem)}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
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


def _td(value: Any, numeric: bool) -> str:
    """One cell; Table 1's outcomes ("passes (p=...)", "fails ...", "not applicable ...") coloured."""
    text = _cell(value)
    if numeric:
        return f'<td class="num">{_esc(text)}</td>'
    outcome = next((css for word, css in (("passes", "passes"), ("fails", "fails"), ("not applicable", "na")) if text.startswith(word)), None)
    return f'<td class="{outcome}">{_esc(text)}</td>' if outcome else f"<td>{_esc(text)}</td>"


def _table(caption: str, frame: pl.DataFrame, max_rows: int | None) -> str:
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"Table {caption!r} must be a polars DataFrame, got {type(frame).__name__}.")
    numeric = [dtype.is_numeric() for dtype in frame.dtypes]
    shown = frame if max_rows is None else frame.head(max_rows)
    head = "".join(f"<th>{_esc(name)}</th>" for name in frame.columns)
    rows = ["<tr>" + "".join(_td(v, num) for v, num in zip(row, numeric)) + "</tr>" for row in shown.iter_rows()]
    note = ""
    if shown.height < frame.height:
        note = f'<p class="note">Showing the first {shown.height} of {frame.height} rows.</p>'
    body = f"<thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    if frame.height > COLLAPSE_ROWS:  # folded: the caption is the summary line, with the row count
        return (f'<details><summary>{_esc(caption)} ({frame.height} rows)</summary><div class="scroll"><table>{body}</div>'
                f"{note}</details>")
    return f'<div class="scroll"><table><caption>{_esc(caption)}</caption>{body}</div>{note}'


def _section(anchor: str, section: ReportSection, max_table_rows: int | None) -> str:
    parts = [f'<section id="{anchor}"><h2>{_esc(section.title)}</h2>', *_paragraphs(section.text)]
    tables = [_table(caption, frame, max_table_rows) for caption, frame in section.tables]
    if tables:
        parts.append('<div class="tables">' + "\n".join(tables) + "</div>" if section.side_by_side else "\n".join(tables))
    if section.figures:
        parts.append('<div class="figures">' + "\n".join(_figure(f) for f in section.figures) + "</div>")
    parts.append('<p class="note"><a href="#top">back to contents</a></p></section>')
    return "\n".join(parts)


def render_report(
    sections: Sequence[ReportSection], settings: dict, title: str, *, max_table_rows: int | None = MAX_TABLE_ROWS
) -> str:
    """The report's HTML text (see ``write_report``): the title, a one-line table of contents,
    then the sections in order (the first is the first screen) and the settings."""
    anchors = [_anchor(i, s.title) for i, s in enumerate(sections)]
    toc = "".join(f'<li><a href="#{a}">{_esc(s.title)}</a></li>' for a, s in zip(anchors, sections))
    toc += '<li><a href="#settings">Settings</a></li>'
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
            f'<nav aria-label="Contents"><ol>{toc}</ol></nav>',
            *(_section(anchor, section, max_table_rows) for anchor, section in zip(anchors, sections)),
            (f'<section id="settings"><h2>Settings</h2><details><summary>params.yaml as this run read it</summary>'
             f"<pre>{_esc(settings_text)}</pre></details></section>"),
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
