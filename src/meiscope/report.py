"""The `report` stage's page: one self-contained HTML file (images inlined, no CDN).

The page reads like a results section: a summary of what was run and found (built by
:mod:`meiscope.report_summary`), a table of contents, the provenance (:mod:`meiscope.provenance`),
then the sections of THIS run, then, set apart, the committed summaries that ``make run`` does not
rerun (replicates, ablation). Every number is the metric catalogue's label, value and unit.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from meiscope.atomic import write_text
from meiscope.report_figures import png_width
from meiscope.report_numbers import unit_text
from meiscope.science.catalogue import format_value, lookup

PARTS = {"run": "Results of this run", "committed": "Committed summaries (not rerun by `make run`)"}


@dataclass
class Section:
    """One part of the report: a title, a sentence, headline numbers and figures.

    ``metrics`` maps a row's name to its value. With ``stage`` set, they are ``metrics/<stage>.json``'s
    keys and values, shown with the metric catalogue's labels, formats and units (keys the catalogue does
    not know are left to the JSON file); ``key_rows`` are the few ``(label, value)`` lines shown first, the
    full table then folds away. ``part``: ``"run"`` (this run) or ``"committed"`` (a committed summary,
    ``source`` saying which file and commit).
    """

    title: str
    intro: str
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    note: str = ""
    inline_figures: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG bytes) made on the fly
    grid: list[list[str]] = field(default_factory=list)  # a table with columns: header row, then rows
    stage: Optional[str] = None  # the metrics file ``metrics`` comes from, if any
    key_rows: list[tuple[str, str]] = field(default_factory=list)
    part: str = "run"
    source: str = ""
    anchor: str = ""
    table_title: str = ""  # what the folded full table is (default: every figure of its metrics file)
    folded_figures: list[Path] = field(default_factory=list)  # secondary figures, shown on a click (page length)
    grid_title: str = ""  # when set, the grid folds away under this title

    def __post_init__(self) -> None:
        if not self.anchor:
            self.anchor = re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value, default=str)[:300])
    return html.escape(str(value))


def _metric_rows(section: Section) -> tuple[str, int]:
    """The full table's rows (label, value, unit) and how many keys the catalogue does not know."""
    rows, unknown = [], 0
    for key, value in section.metrics.items():
        metric = lookup(section.stage, key) if section.stage is not None else None
        if section.stage is None:
            rows.append(f"<tr><th>{html.escape(key)}</th><td>{_format(value)}</td><td></td></tr>")
        elif metric is None or isinstance(value, dict):
            unknown += 1
        else:
            rows.append(f'<tr><th title="{html.escape(key)}">{html.escape(metric.label)}</th>'
                        f"<td>{html.escape(format_value(metric, value))}</td>"
                        f'<td class="unit">{html.escape(unit_text(metric))}</td></tr>')
    return "".join(rows), unknown


def _png(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    try:
        size = f' width="{png_width(png)}"'
    except ValueError:
        size = ""
    return (f'<figure><img alt="{html.escape(alt)}"{size} src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _figure(path: Path) -> str:
    return _png(path.read_bytes(), path.stem, path.name)


def _grid(grid: list[list[str]]) -> str:
    """A table whose first row is the header and whose first column labels the rows."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in grid[0])
    body = "".join("<tr><th>" + html.escape(row[0]) + "</th>" + "".join(f"<td>{html.escape(c)}</td>" for c in row[1:])
                   + "</tr>" for row in grid[1:])
    return f'<table class="grid"><tr>{head}</tr>{body}</table>'


def render_section(section: Section) -> str:
    """HTML of one section; missing figures are listed rather than breaking the page."""
    rows, unknown = _metric_rows(section)
    figures = "".join(_figure(p) for p in section.figures if p.is_file())
    figures += "".join(_png(png, caption, caption) for caption, png in section.inline_figures)
    missing = [p.name for p in section.figures + section.folded_figures if not p.is_file()]
    folded = [p for p in section.folded_figures if p.is_file()]
    parts = [f'<section id="{section.anchor}"><h3>{html.escape(section.title)}</h3>']
    if section.source:
        parts.append(f'<p class="source">{html.escape(section.source)}</p>')
    parts.append(f"<p>{html.escape(section.intro)}</p>")
    if section.note:
        parts.append(f'<p class="note">{html.escape(section.note)}</p>')
    if section.key_rows:
        parts.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                         for k, v in section.key_rows) + "</table>")
    if rows and section.key_rows:
        what = section.table_title or f"Every figure of metrics/{section.stage}.json"
        parts.append(f"<details><summary>{html.escape(what)}</summary><table>{rows}</table></details>")
    elif rows:
        parts.append(f"<table>{rows}</table>")
    if unknown:
        parts.append(f'<p class="small">{unknown} further entries of metrics/{html.escape(section.stage or "")}.json '
                     "have no catalogue label and are not shown.</p>")
    if section.grid and section.grid_title:
        parts.append(f"<details><summary>{html.escape(section.grid_title)}</summary>{_grid(section.grid)}</details>")
    elif section.grid:
        parts.append(_grid(section.grid))
    parts.append(f'<div class="figures">{figures}</div>')
    if folded:
        parts.append(f"<details><summary>More figures: {html.escape(', '.join(p.name for p in folded))}</summary>"
                     f'<div class="figures">{"".join(_figure(p) for p in folded)}</div></details>')
    if missing:
        parts.append(f'<p class="note">Not produced: {html.escape(", ".join(missing))}</p>')
    parts.append("</section>")
    return "".join(parts)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem auto;max-width:1100px;padding:0 1rem;
color:#222;line-height:1.45;overflow-wrap:anywhere}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ccc;padding-bottom:.2rem;margin-top:2.2rem}
h3{border-bottom:1px solid #e4e4e4;padding-bottom:.15rem;margin-top:1.6rem}
table{border-collapse:collapse;margin:.5rem 0;display:block;max-width:100%;overflow-x:auto}
th,td{padding:.15rem .8rem;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{font-weight:500;color:#555} td.unit{color:#888;font-size:.85rem} .grid td{white-space:nowrap}
.figures{display:flex;flex-wrap:wrap;gap:1rem} figure{margin:0;max-width:100%}
img{max-width:100%;height:auto;border:1px solid #eee} figcaption{font-size:.8rem;color:#666}
.note{background:#fff7e0;padding:.4rem .6rem;border-left:3px solid #e0b000}
.source{background:#eef3fb;padding:.4rem .6rem;border-left:3px solid #4a78c2}
.summary{background:#f6f8f6;padding:.1rem 1rem .4rem;border:1px solid #dde5dd} .summary li{margin:.3rem 0}
.summary h2{margin-top:.8rem}
.small,.unit{color:#777;font-size:.85rem} nav ol{margin:.2rem 0} details{margin:.4rem 0}
"""


# Marks the page once loaded with how many images decoded and whether it is wider than the window,
# so a headless browser can check it.
LOAD_CHECK = ("<script>window.addEventListener('load',function(){var n=0;for(var i of document.images)"
              "{if(i.complete&&i.naturalWidth>0)n++;}var b=document.body.dataset;b.imagesLoaded=n;"
              "b.imagesTotal=document.images.length;var d=document.documentElement;"
              "b.scrollWidth=d.scrollWidth;b.clientWidth=d.clientWidth;});</script>")


def _toc(sections: list[Section]) -> str:
    """The table of contents: the summary, the provenance, then every section by part."""
    items = ['<li><a href="#summary">Summary</a></li>', '<li><a href="#provenance">Provenance</a></li>']
    for part, heading in PARTS.items():
        inner = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>'
                        for s in sections if s.part == part)
        if inner:
            items.append(f'<li><a href="#part-{part}">{html.escape(heading)}</a><ol>{inner}</ol></li>')
    return f'<nav id="contents"><h2>Contents</h2><ol>{"".join(items)}</ol></nav>'


def _provenance(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<section id="provenance"><h2>Provenance</h2><table>{body}</table></section>'


def render_report(title: str, subtitle: str, sections: list[Section], summary_html: str = "",
                  provenance: Optional[list[tuple[str, str]]] = None) -> str:
    """The whole page as a string: title, summary (HTML, already escaped), contents, provenance
    (``(label, value)`` rows), then the sections of this run and the committed ones."""
    body = [summary_html, _toc(sections), _provenance(provenance or [])]
    for part, heading in PARTS.items():
        mine = [s for s in sections if s.part == part]
        if mine:
            body.append(f'<h2 id="part-{part}">{html.escape(heading)}</h2>' + "".join(render_section(s) for s in mine))
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>"
            f"{''.join(body)}{LOAD_CHECK}</body></html>")


def load_metrics(path: Path) -> dict[str, Any]:
    """A metrics JSON file, or an empty dict when the stage did not run."""
    return json.loads(path.read_text()) if path.is_file() else {}


def write_report(path: Path, title: str, subtitle: str, sections: list[Section], summary_html: str = "",
                 provenance: Optional[list[tuple[str, str]]] = None) -> Path:
    """Render and atomically write the report."""
    write_text(path, render_report(title, subtitle, sections, summary_html, provenance))
    return path
