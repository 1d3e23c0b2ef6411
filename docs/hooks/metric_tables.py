"""MkDocs hook: result tables generated from ``metrics/*.json``, never typed into a page.

A page asks for a table with an HTML comment on a line of its own; the hook replaces it with a
markdown table when the site is built. Paths are relative to the repository root (the folder of
``mkdocs.yml``):

``<!-- metrics-table: train -->``
    every figure of ``metrics/train.json`` (one stage of the default run); a stage with several
    per-kind figures (``..._simple``, ``..._complex``, ``..._conjunction``, and any other kind the
    cortex has) gets one column per kind. A figure with an interval over cells shows it beside its
    value, and a stage whose figures say which cells they cover (``validate``) gets a ``cells`` column.
``<!-- replicates-table: metrics/replicates-container.json [more files] -->``
    a replicate summary (``meiscope replicate``): mean [95% interval over replicates] and each
    replicate's value, with its interval over that replicate's cells where the summary has one;
    with several files, one column per file.
``<!-- conclusions-table: metrics/replicates-container.json -->``
    the verdicts of a replicate summary, one column per kind of cell.
``<!-- ablation-table: metrics/ablation-container.json -->``
    a stimulus ablation (``meiscope ablation``): one row per arm, one column per figure.
``<!-- compare-table: metrics/replicates-container.json metrics/replicates-container-gabor_family.json -->``
    two replicate summaries of the same seeds on two cortices (``meiscope replicate --profile``): the
    study's figures that say most, per kind of cell, mean [95% interval over replicates] of each, how far the
    first is from the second, and the MEI vs optimal Gabor verdicts in truth and on the held-out model.

The README is not built by MkDocs, so its tables are written into it: a placeholder there is followed by
its table and ``<!-- end of generated table -->``; ``python docs/hooks/metric_tables.py README.md``
(``make readme``) rewrites what lies between them, and a test checks that nothing there is stale.

Labels, row order and number formats come from the metric catalogue
(:mod:`meiscope.science.catalogue`), so the docs read the same as the report and the terminal.
A missing file or an unknown kind of table raises :class:`MetricTableError`, which fails the build
with the page and the file named.

The functions below take the repository root explicitly, so tests can call :func:`render` on a
string without MkDocs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

from meiscope.replicate import protocol_of
from meiscope.science import catalogue

# a placeholder: `<!-- <kind>-table: <argument> -->` alone on its line
PLACEHOLDER = re.compile(r"^[ \t]*<!--\s*([a-z]+)-table:\s*(.*?)\s*-->[ \t]*$", re.MULTILINE)
KINDS: tuple[str, ...] = getattr(catalogue, "KINDS", ("simple", "complex", "conjunction"))
# pooled counts whose per-kind counts have another stem (``n_simple``, ``n_truth_simple``): one row for both
POOLED_COUNTS = {"n_responsive": "n", "n_truth_responsive": "n_truth"}


class MetricTableError(Exception):
    """A placeholder that cannot be turned into a table (missing file, unknown kind, wrong shape)."""


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _load(root: Path, relative: str) -> dict[str, Any]:
    path = root / relative
    if not path.is_file():
        raise MetricTableError(f"{relative}: no such metrics file (looked for {path})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MetricTableError(f"{relative}: not valid JSON ({err})") from err


def _table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def _metric(name: str) -> Optional[catalogue.Metric]:
    stage, _, key = name.partition(".")
    return catalogue.lookup(stage, key)


def _kind_of(metric: catalogue.Metric) -> Optional[str]:
    """The cell kind of a per-kind figure (key ``..._<kind>``, label ``... (<kind>)``), else None; any kind
    the catalogue knows, the default three and those of other cortices (e.g. ``centre_surround``)."""
    if not metric.label.endswith(")") or " (" not in metric.label:
        return None
    kind = metric.label.rsplit(" (", 1)[1][:-1]
    return kind if kind.isidentifier() and metric.key.endswith(f"_{kind}") else None


def _interval(metric: Optional[catalogue.Metric], entry: dict[str, Any], confidence: float = 0.95) -> str:
    """``mean [low, high]`` in the metric's own format, as the report shows it: recomputed from the replicate
    values on the metric's scale (geometric for ratios) and kept inside the figure's range; ``-`` without
    a mean."""
    from meiscope.report_numbers import display_entry

    entry = display_entry(metric, entry, confidence)
    if entry.get("mean") is None:
        return "-"
    mean = catalogue.format_value(metric, entry.get("mean"))
    if entry.get("ci_low") is None or entry.get("ci_high") is None:
        return mean
    low, high = (catalogue.format_value(metric, entry[k]) for k in ("ci_low", "ci_high"))
    return f"{mean} [{low}, {high}]"


def _each(metric: Optional[catalogue.Metric], entry: dict[str, Any]) -> str:
    """Each replicate's value, ``" / "``-joined, with its interval over that replicate's cells where the summary
    has one (``per_replicate_ci``: ``0.91 [0.88, 0.93] / 0.89 [0.85, 0.92]``)."""
    values, ends = entry.get("values") or [], entry.get("per_replicate_ci") or []
    shown = []
    for i, value in enumerate(values):
        text = catalogue.format_value(metric, value)
        pair = ends[i] if i < len(ends) else None
        if pair and len(pair) == 2 and None not in pair:
            text += f" [{catalogue.format_value(metric, pair[0])}, {catalogue.format_value(metric, pair[1])}]"
        shown.append(text)
    return " / ".join(shown)


def _figures(summary: dict[str, Any], relative: str) -> dict[str, dict[str, Any]]:
    if not isinstance(summary.get("figures"), dict):
        raise MetricTableError(f"{relative}: not a replicate summary (no 'figures')")
    return summary["figures"]


def _ordered(names: list[str]) -> list[str]:
    """Catalogue order: the replicate figures (HEADLINE) first, then the rest of the catalogue, then unknown."""
    rank: dict[str, int] = {}
    for metric in (*catalogue.HEADLINE, *catalogue.CATALOGUE):
        rank.setdefault(metric.name, len(rank))
    return sorted(dict.fromkeys(names), key=lambda n: rank.get(n, len(rank)))


# --------------------------------------------------------------------------------------
# the tables
# --------------------------------------------------------------------------------------
def _stage_metrics(stage: str, values: dict[str, Any]) -> list[catalogue.Metric]:
    """The catalogue entries of the keys of ``values``: catalogue order, then the per-kind figures of kinds
    beyond the default three (known to :func:`catalogue.lookup`, not listed in the catalogue)."""
    listed = [m for m in catalogue.CATALOGUE if m.stage == stage and m.key in values]
    seen = {m.key for m in listed}
    extra = [m for k in values if k not in seen and (m := catalogue.lookup(stage, k)) is not None]
    return listed + extra


def _label(metric: catalogue.Metric) -> str:
    """The catalogue label; a check of the instrument (:data:`catalogue.CORRECTNESS`) says it is one."""
    return f"correctness check: {metric.label}" if metric in catalogue.CORRECTNESS else metric.label


def _with_interval(metric: catalogue.Metric, values: dict[str, Any]) -> str:
    """The value of ``metric`` in ``values``, with its interval over cells ``[low, high]`` where the stage wrote
    one (:func:`catalogue.interval_keys`; closed-loop figures)."""
    shown = catalogue.format_value(metric, values[metric.key])
    keys = catalogue.interval_keys(metric)
    if keys is None or values.get(keys[0]) is None or values.get(keys[1]) is None or values[metric.key] is None:
        return shown
    return f"{shown} [{catalogue.format_value(metric, values[keys[0]])}, {catalogue.format_value(metric, values[keys[1]])}]"


def metrics_table(root: Path, stage: str) -> str:
    """One stage of the default run, from ``metrics/<stage>.json``, in catalogue order.

    A figure with an interval over cells shows it beside its value (``0.92 [0.88, 0.95]``) instead of on rows
    of its own; a stage whose figures say which cells they cover (the closed loop) gets a ``cells`` column.
    """
    relative = f"metrics/{stage}.json"
    values = _load(root, relative)
    known = _stage_metrics(stage, values)
    folded = {k for m in known if (keys := catalogue.interval_keys(m)) for k in keys}  # shown beside their figure
    known = [m for m in known if m.key not in folded]
    unknown = [k for k in values if catalogue.lookup(stage, k) is None]
    # a stage with several per-kind figures gets one column per kind; otherwise one row per figure
    if len({m.key[: -len(k) - 1] for m in known if (k := _kind_of(m))}) < 2:
        rows = [[_label(m), _with_interval(m, values)] for m in known]
        rows += [[key, catalogue.format_value(None, values[key])] for key in unknown]
        return _table(["figure", "value"], rows)
    kinds = catalogue.ordered_kinds(k for m in known if (k := _kind_of(m)))
    covers = any(m.covers for m in known)
    lead = 2 if covers else 1  # figure (| cells) | all cells | one column per kind
    # per-kind figures share a row with their pooled figure: figure | all cells | simple | complex | ...
    rows: dict[str, list[str]] = {}
    for m in known:
        kind = _kind_of(m)
        base = m.key[: -len(kind) - 1] if kind else POOLED_COUNTS.get(m.key, m.key)
        label = m.label[: -len(kind) - 3] if kind else _label(m)
        row = rows.setdefault(base, [label] + ([catalogue.COVERAGE_WORDS.get(m.covers, "")] if covers else [])
                              + [""] * (1 + len(kinds)))
        row[lead + (kinds.index(kind) + 1 if kind else 0)] = _with_interval(m, values)
    table_rows = list(rows.values()) + [[k] + [""] * (lead - 1) + [catalogue.format_value(None, values[k])]
                                        + [""] * len(kinds) for k in unknown]
    return _table(["figure", *(["cells"] if covers else []), "all cells", *kinds], table_rows)


def _protocol(summary: dict[str, Any], relative: str) -> str:
    """``confirmatory`` or ``development`` (no label: development), or an error naming the file."""
    from meiscope.errors import MeiscopeError

    try:
        return protocol_of(summary)
    except MeiscopeError as err:
        raise MetricTableError(f"{relative}: {err}") from None


def replicates_table(root: Path, argument: str) -> str:
    """Replicate summaries: one file with each replicate's values, or several side by side."""
    files = argument.split()
    if not files:
        raise MetricTableError("replicates-table needs at least one file")
    summaries = {f: _figures(_load(root, f), f) for f in files}
    names = _ordered([n for figures in summaries.values() for n in figures])

    def label(name: str) -> str:
        metric = _metric(name)
        if metric is not None:
            return metric.label
        return next(s[name].get("label", name) for s in summaries.values() if name in s)

    # which protocol each summary's figures come from (a summary without the label ran development seeds)
    protocols = {f: _protocol(_load(root, f), f) for f in files}
    if len(files) == 1:
        (relative, figures), = summaries.items()
        seeds = _load(root, relative).get("seeds") or []
        each = (f"{protocols[relative]} seeds " + " / ".join(str(s) for s in seeds) if seeds
                else f"per {protocols[relative]} replicate")
        rows = [[label(n), _interval(_metric(n), figures[n]), _each(_metric(n), figures[n])] for n in names]
        return _table(["figure", "mean [95% CI]", each], rows)
    rows = []
    for n in names:
        cells = []
        for figures in summaries.values():
            entry = figures.get(n)
            if entry is None:
                cells.append("-")
                continue
            values = _each(_metric(n), entry)
            cells.append(f"{_interval(_metric(n), entry)} ({values})" if values else _interval(_metric(n), entry))
        rows.append([label(n), *cells])
    return _table(["figure", *(f"`{Path(f).name}` ({protocols[f]}): mean [95% CI] (per replicate)" for f in files)],
                  rows)


def _conclusion(entry: dict[str, Any]) -> str:
    formatter: Optional[Callable[[dict[str, Any]], str]] = getattr(catalogue, "format_conclusion", None)
    if formatter is not None:
        return formatter(entry)
    if entry.get("holds_in_every_replicate"):
        return f"MEI {entry['conclusion']} in every replicate"
    return f"no conclusion ({', '.join(map(str, entry.get('per_replicate', [])))})"


def conclusions_table(root: Path, relative: str) -> str:
    """The verdicts of a replicate summary: one row per claim, one column per kind of cell."""
    conclusions = _load(root, relative).get("conclusions")
    if not isinstance(conclusions, dict) or not conclusions:
        raise MetricTableError(f"{relative}: no 'conclusions' to tabulate")
    kinds = [k for k in KINDS if k in conclusions] + [k for k in conclusions if k not in KINDS]
    claims = list(dict.fromkeys(c for k in kinds for c in conclusions[k]))
    rows = [[claim, *(_conclusion(conclusions[k][claim]) if claim in conclusions[k] else "-" for k in kinds)]
            for claim in claims]
    return _table(["claim", *kinds], rows)


def ablation_table(root: Path, relative: str) -> str:
    """A stimulus ablation: one row per arm (training stimuli), mean [95% CI] of each figure."""
    arms = _load(root, relative).get("arms")
    if not isinstance(arms, list) or not arms:
        raise MetricTableError(f"{relative}: not an ablation summary (no 'arms')")
    names = _ordered([n for arm in arms for n in arm.get("figures", {})])
    header = ["training stimuli", *(_metric(n).label if _metric(n) else n for n in names)]
    rows = [[arm.get("label", arm.get("slug", "?")),
             *(_interval(_metric(n), arm["figures"][n]) if n in arm.get("figures", {}) else "-" for n in names)]
            for arm in arms]
    return _table(header, rows)


# the figures a comparison of two cortices shows: the study's, then per kind of cell (in the cortices' kinds)
COMPARED_STUDY = ("train.gt_fresh_corr_mean", "ranking.gt_precision", "ranking.gt_recall")
COMPARED_PER_KIND = ("validate.gt_mei_corr_median", "validate.gt_mei_rate_ratio_median",
                     "validate.gt_mei_drive_ratio_median", "validate.gt_mei_over_gabor_drive_median")
# the banded verdicts (interval of the rate ratio against the tie band), in truth and by the held-out model
COMPARED_VERDICTS = ("MEI vs optimal Gabor in truth, interval and tie band",
                     "MEI vs optimal Gabor on the held-out model, interval and tie band")


def _change(metric: Optional[catalogue.Metric], first: dict[str, Any], second: dict[str, Any]) -> str:
    """How far the first mean is from the second: a difference, or a factor for figures on the log scale."""
    from meiscope.report_numbers import display_entry

    a, b = (display_entry(metric, e, 0.95).get("mean") for e in (first, second))
    if a is None or b is None:
        return "-"
    if metric is not None and metric.log_scale and b > 0:
        return f"x{a / b:.2f}"
    return f"{a - b:+.2f}"


def _verdicts(conclusions: dict[str, Any], kind: str) -> str:
    """``truth / held-out model`` verdict words, each with how many replicates said it."""
    found = []
    for claim in COMPARED_VERDICTS:
        words = (conclusions.get(kind, {}).get(claim) or {}).get("per_replicate") or []
        counts = {w: words.count(w) for w in dict.fromkeys(words) if w is not None}
        found.append(", ".join(f"{w} {c}/{len(words)}" for w, c in counts.items()) or "-")
    return " / ".join(found)


def _cells(figures: dict[str, Any], kind: str) -> str:
    """Mean cells of ``kind`` selected / truly responsive per replicate."""
    shown = [figures.get(f"validate.{stem}_{kind}", {}).get("mean") for stem in ("n", "n_truth")]
    return " / ".join("-" if v is None else f"{v:.0f}" for v in shown)


def compare_table(root: Path, argument: str) -> str:
    """Two replicate summaries side by side, figure by figure and per kind: the same seeds on two cortices
    (columns named for the cortex), or two recordings' studies (columns named for the recording)."""
    files = argument.split()
    if len(files) != 2:
        raise MetricTableError(f"compare-table needs exactly two summaries (got {len(files)})")
    loaded = [_load(root, f) for f in files]
    figures = [_figures(summary, f) for summary, f in zip(loaded, files)]
    by = "recording" if len({s.get("recording") for s in loaded}) == 2 else "profile"
    heads = [f"{summary.get(by, Path(f).stem)} ({_protocol(summary, f)}, {summary.get('k', '?')} replicates"
             f"{', commit ' + summary['git_commit'][:7] if summary.get('git_commit') else ''})"
             for summary, f in zip(loaded, files)]

    def row(name: str) -> list[list[str]]:
        entries = [f.get(name) for f in figures]
        if not any(entries):
            return []
        metric = _metric(name)
        change = _change(metric, *entries) if all(entries) else "-"
        shown = [_interval(metric, e, s.get("confidence", 0.95)) if e else "-" for e, s in zip(entries, loaded)]
        return [[metric.label if metric else name, *shown, change]]

    rows = [r for name in COMPARED_STUDY for r in row(name)]
    for kind in catalogue.ordered_kinds(k for summary in loaded for k in summary.get("conclusions", {})):
        rows.append([f"cells selected / truly responsive ({kind})", *(_cells(f, kind) for f in figures), ""])
        rows += [r for stem in COMPARED_PER_KIND for r in row(f"{stem}_{kind}")]
        rows.append([f"MEI vs optimal Gabor, truth / model ({kind})",
                     *(_verdicts(summary.get("conclusions", {}), kind) for summary in loaded), ""])
    return _table(["figure", *heads, "change"], rows)


BUILDERS: dict[str, Callable[[Path, str], str]] = {
    "metrics": metrics_table, "replicates": replicates_table,
    "conclusions": conclusions_table, "ablation": ablation_table, "compare": compare_table}

END_OF_TABLE = "<!-- end of generated table -->"


def refresh(markdown: str, root: Path) -> str:
    """``markdown`` (the README) with each placeholder's table, up to its end marker, written anew."""
    pattern = re.compile(PLACEHOLDER.pattern + r"\n.*?^" + re.escape(END_OF_TABLE) + r"[ \t]*$",
                         re.MULTILINE | re.DOTALL)

    def replace(match: re.Match[str]) -> str:
        head = match.group(0).splitlines()[0]
        return f"{head}\n{render(head, root)}\n{END_OF_TABLE}"
    return pattern.sub(replace, markdown)


def render(markdown: str, root: Path) -> str:
    """``markdown`` with every placeholder replaced by its table."""
    def replace(match: re.Match[str]) -> str:
        kind, argument = match.group(1), match.group(2)
        builder = BUILDERS.get(kind)
        if builder is None:
            raise MetricTableError(f"unknown table '{kind}-table' (known: "
                                   f"{', '.join(k + '-table' for k in BUILDERS)})")
        if not argument:
            raise MetricTableError(f"'{kind}-table' needs an argument")
        return builder(root, argument)
    return PLACEHOLDER.sub(replace, markdown)


# --------------------------------------------------------------------------------------
# MkDocs events
# --------------------------------------------------------------------------------------
def _root(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    from mkdocs.exceptions import PluginError

    try:
        return render(markdown, _root(config))
    except MetricTableError as err:
        raise PluginError(f"metric tables in {page.file.src_path}: {err}") from err


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    """``make docs-serve`` rebuilds when a metrics file changes."""
    server.watch(str(_root(config) / "metrics"))
    return server


if __name__ == "__main__":  # make readme: rewrite the generated tables of the files named
    import sys

    for name in sys.argv[1:]:
        page = Path(name)
        page.write_text(refresh(page.read_text(), Path.cwd()))
