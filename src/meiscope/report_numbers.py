"""Numbers as the report shows them: catalogue label, value and unit; intervals inside their range.

Replicate and ablation summaries are committed files, some written before intervals were clipped
(a fraction of cells "0.33 [-1.10, 1.77]"). So the report recomputes every interval at display time
from the replicate values with the catalogue's kind of the metric (:attr:`Metric.log_scale`,
:attr:`Metric.bounds`), the way :func:`meiscope.science.stats.interval` does for new summaries.

Closed-loop figures also say which cells they are over (:func:`coverage_text`), their interval over
one replicate's cells (:func:`cell_interval_text`) and, in a replicate summary, each replicate's value
with its interval over cells beside the interval over replicates (:func:`per_replicate_text`).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Optional

from meiscope.science.catalogue import Metric, by_name, format_value

# what a unit of the catalogue means, in words a reader knows
UNIT_WORDS = {"fraction": "fraction (0-1)", "correlation": "Pearson r", "p": "p-value", "ratio": "ratio",
              "cells": "cells", "count": "count", "deg": "degrees", "verdict": "sign test verdict",
              "flag": "yes / no", "": ""}


def unit_text(metric: Optional[Metric]) -> str:
    """The unit of ``metric`` in words (``%`` for a percentage, ``""`` without one)."""
    if metric is None:
        return ""
    if metric.fmt.endswith("%"):
        return "% of cells" if metric.unit in ("fraction", "") else "%"
    return UNIT_WORDS.get(metric.unit, metric.unit)


def _clip(value: Optional[float], bounds: tuple[Optional[float], Optional[float]]) -> Optional[float]:
    if value is None or not math.isfinite(value):
        return value
    low, high = bounds
    value = max(value, low) if low is not None else value
    return min(value, high) if high is not None else value


def display_entry(metric: Optional[Metric], entry: dict[str, Any], confidence: float) -> dict[str, Any]:
    """``entry`` (a replicate figure: values, mean, ci_low, ci_high) as the report shows it: recomputed
    from its values on the metric's scale and clipped to its range; without values, its ends clipped."""
    if metric is None:
        return entry
    values = entry.get("values")
    if values:
        from meiscope.science.stats import interval

        return {**entry, **interval(values, confidence, metric.log_scale, metric.bounds)}
    return {**entry, "ci_low": _clip(entry.get("ci_low"), metric.bounds),
            "ci_high": _clip(entry.get("ci_high"), metric.bounds)}


def format_entry(metric: Optional[Metric], entry: dict[str, Any]) -> str:
    """``mean [low, high]`` each in the metric's format (``n/a`` without a mean), followed by each replicate's
    value and interval over its cells where the summary has them (:func:`per_replicate_text`)."""
    if not entry or entry.get("mean") is None:
        return "n/a"
    mean = format_value(metric, float(entry["mean"]))
    text = mean if entry.get("ci_low") is None else (
        f"{mean} [{format_value(metric, float(entry['ci_low']))}, {format_value(metric, float(entry['ci_high']))}]")
    each = per_replicate_text(metric, entry)
    return f"{text} (each replicate [interval over its cells]: {each})" if each else text


def display_figures(figures: dict[str, dict], confidence: float) -> dict[str, dict]:
    """Every figure of a summary (``"<stage>.<key>"`` -> entry) through :func:`display_entry`."""
    return {name: display_entry(by_name(name), entry, confidence) for name, entry in figures.items()}


def display_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """A copy of a replicate or ablation summary whose intervals are the report's (see the module docstring)."""
    out = copy.deepcopy(summary)
    confidence = float(summary.get("confidence", 0.95))
    if "figures" in out:
        out["figures"] = display_figures(out["figures"], confidence)
    for arm in out.get("arms", []):
        arm["figures"] = display_figures(arm.get("figures", {}), confidence)
    return out


def interval_text(name: str, entry: dict[str, Any], confidence: float) -> str:
    """The figure ``name`` of a summary as the report writes it: recomputed, clipped and formatted."""
    metric = by_name(name)
    return format_entry(metric, display_entry(metric, entry, confidence))


def coverage_text(metric: Optional[Metric], stage_metrics: dict[str, Any]) -> str:
    """Which cells a closed-loop figure is over, with their count: ``"21 selected cells"`` (``""`` for a
    figure not over cells, or when the count is missing)."""
    from meiscope.science.catalogue import COVERAGE_WORDS, coverage_key

    key = coverage_key(metric) if metric is not None else None
    count = stage_metrics.get(key) if key else None
    if not isinstance(count, int) or isinstance(count, bool):
        return ""
    words = COVERAGE_WORDS[metric.covers]  # type: ignore[union-attr]
    kind = key.rpartition("n_truth_" if metric.covers == "responsive" else "n_")[2]  # type: ignore[union-attr]
    kind_words = "" if kind == "responsive" else f" ({kind})"
    return f"{count} {words}{kind_words}"


def cell_interval_text(metric: Optional[Metric], stage_metrics: dict[str, Any], confidence: float) -> str:
    """``"95% interval over cells [a, b]"`` of a figure that carries one in its stage's metrics, else ``""``."""
    from meiscope.science.catalogue import interval_keys

    keys = interval_keys(metric) if metric is not None else None
    if keys is None or stage_metrics.get(keys[0]) is None or stage_metrics.get(keys[1]) is None:
        return ""
    low, high = (_clip(float(stage_metrics[k]), metric.bounds) for k in keys)  # type: ignore[union-attr]
    return f"{confidence:.0%} interval over cells [{format_value(metric, low)}, {format_value(metric, high)}]"


def per_replicate_text(metric: Optional[Metric], entry: dict[str, Any]) -> str:
    """Each replicate's value with its interval over cells, ``"0.91 [0.88, 0.93]; 0.89 [0.85, 0.92]"``, from
    a replicate figure's ``per_replicate_ci`` (``""`` without it)."""
    values, intervals = entry.get("values") or [], entry.get("per_replicate_ci") or []
    if not intervals:
        return ""
    parts = []
    for value, ends in zip(values, intervals):
        shown = format_value(metric, value)
        if ends and None not in ends:
            low, high = (_clip(float(e), metric.bounds if metric else (None, None)) for e in ends)
            shown += f" [{format_value(metric, low)}, {format_value(metric, high)}]"
        parts.append(shown)
    return "; ".join(parts)
