"""report.html from report.md's lines: the study report is described once, as Markdown
(`tgmae.study.report.report_markdown`), and the HTML is rendered from it, so every section, sentence,
table cell and figure of the .md is in the .html too.

The Markdown is the subset the report writes: `#` headings, `|` tables (header row, `|---|` row,
body rows; cells without `|` in them), `- ` list items, `![caption](path)` figures on a line of their
own, and paragraphs (consecutive other lines; a blank line ends any block). Text is HTML-escaped, so
"T->V" reads the same in both; figures stay links relative to the report, as in the .md.
"""

from __future__ import annotations

import html
import re
from typing import Sequence

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
         "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%}")

_HEADING = re.compile(r"(#{1,6}) (.*)")
_FIGURE = re.compile(r"!\[(.*)\]\((.*)\)")
_RULE = re.compile(r"\|(\s*:?-+:?\s*\|)+")


def _kind(line: str) -> str:
    """Which block a stripped line belongs to: "blank", "heading", "figure", "table", "item" or "text"."""
    if not line:
        return "blank"
    if _HEADING.fullmatch(line):
        return "heading"
    if _FIGURE.fullmatch(line):
        return "figure"
    return "table" if line.startswith("|") else "item" if line.startswith("- ") else "text"


def _table(rows: list[str]) -> str:
    """A `|` table's lines -> <table>: the first row as header cells, the `|---|` row dropped."""
    cells = [[html.escape(c.strip()) for c in row.strip().strip("|").split("|")] for row in rows
             if not _RULE.fullmatch(row.strip())]
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in cells[0]) + "</tr>"
    body = ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:]]
    return "<table>" + "\n".join([head] + body) + "</table>"


def _block(kind: str, lines: list[str]) -> str:
    """One block of same-kind lines (never "blank") as HTML."""
    if kind == "heading":
        return "\n".join(f"<h{len(m[1])}>{html.escape(m[2])}</h{len(m[1])}>" for m in map(_HEADING.fullmatch, lines))
    if kind == "figure":
        return "\n".join(f"<p><img src='{html.escape(m[2])}' alt='{html.escape(m[1])}'></p>"
                         for m in map(_FIGURE.fullmatch, lines))
    if kind == "table":
        return _table(lines)
    if kind == "item":
        return "<ul>" + "".join(f"<li>{html.escape(line[2:])}</li>" for line in lines) + "</ul>"
    return "<p>" + html.escape("\n".join(lines)) + "</p>"


def markdown_to_html(markdown: str | Sequence[str], title: str) -> str:
    """A self-contained HTML page (inline style; figures linked as the Markdown links them) of
    `markdown` (the report's text or its lines, possibly with newlines inside), titled `title`."""
    text = markdown if isinstance(markdown, str) else "\n".join(markdown)
    blocks: list[tuple[str, list[str]]] = []
    for line in (raw.strip() for raw in text.splitlines()):
        kind = _kind(line)
        if blocks and blocks[-1][0] == kind and kind not in ("blank", "heading"):
            blocks[-1][1].append(line)
        else:
            blocks.append((kind, [line]))
    body = [_block(kind, lines) for kind, lines in blocks if kind != "blank"]
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>\n"
            + "\n".join(body) + "\n")
