"""The `report` stage: one self-contained HTML page (images inlined, no CDN) with every result."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from meiscope.atomic import write_text
from meiscope.science.catalogue import format_value, lookup


@dataclass
class Section:
    """One part of the report: a title, a sentence, headline numbers and figures.

    ``metrics`` maps a row's name to its value. With ``stage`` set, they are ``metrics/<stage>.json``'s
    keys and values, shown with the metric catalogue's labels and formats (the key on hover).
    """

    title: str
    intro: str
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    note: str = ""
    inline_figures: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG bytes) made on the fly
    grid: list[list[str]] = field(default_factory=list)  # a table with columns: header row, then rows
    stage: Optional[str] = None  # the metrics file ``metrics`` comes from, if any


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value, default=str)[:300])
    return html.escape(str(value))


def _metric_row(stage: Optional[str], key: str, value: Any) -> str:
    """One table row: the catalogue's label and format for a known metric of ``stage``, else the key as it is."""
    metric = lookup(stage, key) if stage is not None else None
    if metric is None or isinstance(value, dict):
        return f"<tr><th>{html.escape(key)}</th><td>{_format(value)}</td></tr>"
    return (f'<tr><th title="{html.escape(key)}">{html.escape(metric.label)}</th>'
            f"<td>{html.escape(format_value(metric, value))}</td></tr>")


def _figure(path: Path) -> str:
    return _png(path.read_bytes(), path.stem, path.name)


def _png(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes (for :attr:`Section.inline_figures`)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def render_section(section: Section) -> str:
    """HTML of one section; missing figures are listed rather than breaking the page."""
    rows = "".join(_metric_row(section.stage, k, v) for k, v in section.metrics.items())
    figures = "".join(_figure(p) for p in section.figures if p.is_file())
    figures += "".join(_png(png, caption, caption) for caption, png in section.inline_figures)
    missing = [p.name for p in section.figures if not p.is_file()]
    parts = [f"<section><h2>{html.escape(section.title)}</h2><p>{html.escape(section.intro)}</p>"]
    if section.note:
        parts.append(f'<p class="note">{html.escape(section.note)}</p>')
    if rows:
        parts.append(f"<table>{rows}</table>")
    if section.grid:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in section.grid[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in section.grid[1:])
        parts.append(f"<table><tr>{head}</tr>{body}</table>")
    parts.append(f'<div class="figures">{figures}</div>')
    if missing:
        parts.append(f'<p class="note">Not produced: {html.escape(", ".join(missing))}</p>')
    parts.append("</section>")
    return "".join(parts)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} th,td{padding:.15rem .8rem;border-bottom:1px solid #eee;text-align:left}
th{font-weight:500;color:#555} .figures{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0} img{max-width:100%;border:1px solid #eee} figcaption{font-size:.8rem;color:#777}
.note{background:#fff7e0;padding:.4rem .6rem;border-left:3px solid #e0b000}
"""


# Marks the page once loaded with how many images decoded, so a headless browser can check it.
LOAD_CHECK = ("<script>window.addEventListener('load',function(){var n=0;for(var i of document.images)"
              "{if(i.complete&&i.naturalWidth>0)n++;}document.body.dataset.imagesLoaded=n;"
              "document.body.dataset.imagesTotal=document.images.length;});</script>")


def render_report(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole page as a string."""
    body = "".join(render_section(s) for s in sections)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>"
            f"{body}{LOAD_CHECK}</body></html>")


def load_metrics(path: Path) -> dict[str, Any]:
    """A metrics JSON file, or an empty dict when the stage did not run."""
    return json.loads(path.read_text()) if path.is_file() else {}


def write_report(path: Path, title: str, subtitle: str, sections: list[Section]) -> Path:
    """Render and atomically write the report."""
    write_text(path, render_report(title, subtitle, sections))
    return path
