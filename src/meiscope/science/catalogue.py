"""Every metric a person reads, in one table: its label, unit, format and range; and the verdict words.

The stages write ``metrics/<stage>.json`` with short keys (``gt_mei_rate_ratio_median_simple``);
what the terminal prints (:mod:`meiscope.summaries`), what the report shows
(:mod:`meiscope.report_sections`), the replicate and ablation summaries and the docs all name a
metric by its :class:`Metric` here, so a label is written once.

Units say what range a value can take (:attr:`Metric.bounds`), which is what keeps an interval of
a fraction inside [0, 1] (:func:`meiscope.science.stats.interval`):

- ``fraction``: a share of cells, trials or of the optimum's rate, in [0, 1] (also any metric
  formatted as a percentage, ``fmt=".0%"``);
- ``correlation``: in [-1, 1];
- ``p``: a p-value, in [0, 1];
- ``ratio``: a ratio of two positive responses, > 0 (averaged on the log scale where ``panel`` is
  ``"ratio"``);
- ``cells``, ``count``, ``deg``: non-negative;
- ``verdict``: a MEI-vs-other verdict code, +1 / 0 / -1 (:data:`VERDICT_WORDS`);
- ``""``: anything else (a model score, a response in the recording's unit, a name).

Importing this module imports nothing heavy (no numpy), so the docs can read it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Optional

KINDS = ("simple", "complex", "conjunction")  # the responsive cell kinds of the synthetic cortex

UNIT_BOUNDS: dict[str, tuple[Optional[float], Optional[float]]] = {
    "fraction": (0.0, 1.0), "correlation": (-1.0, 1.0), "p": (0.0, 1.0), "ratio": (0.0, None),
    "cells": (0.0, None), "count": (0.0, None), "deg": (0.0, None)}


@dataclass(frozen=True)
class Metric:
    """One figure of ``metrics/<stage>.json``: what to call it, its unit, how to print it, where it is plotted.

    ``panel``: where the replicate figure plots it (``"accuracy"``, ``"truth"``, ``"ratio"`` on a log
    axis; None: table only). ``only_some_data``: measured on some kinds of data only (Neuropixels),
    left out of a summary where no replicate has it.
    """

    stage: str
    key: str
    label: str
    unit: str = ""
    fmt: str = ".3f"
    panel: Optional[str] = None
    only_some_data: bool = False

    @property
    def name(self) -> str:
        return f"{self.stage}.{self.key}"

    @property
    def log_scale(self) -> bool:
        """Ratios are averaged on the log scale (a geometric mean and interval), so 2 and 1/2 average to 1."""
        return self.panel == "ratio"

    @property
    def bounds(self) -> tuple[Optional[float], Optional[float]]:
        """``(low, high)`` the value can take (None: unbounded), from the unit; percentages are fractions."""
        if self.fmt.endswith("%"):
            return UNIT_BOUNDS["fraction"]
        return UNIT_BOUNDS.get(self.unit, (None, None))


# --------------------------------------------------------------------------------------
# verdicts: the one vocabulary of MEI-vs-other comparisons
# --------------------------------------------------------------------------------------
# +1: the MEI beats the other stimulus, -1: it loses (sign test rejects at alpha), 0: "ties", i.e. no
# difference shown by the sign test at this sample size (not a proof of equality).
VERDICT_WORDS = {1: "beats", 0: "ties", -1: "loses"}


def verdict_word(code: Any) -> Optional[str]:
    """``"beats"`` / ``"ties"`` / ``"loses"`` for a verdict code +1 / 0 / -1; None for anything else."""
    if isinstance(code, bool) or not isinstance(code, numbers.Real) or not math.isfinite(code):
        return None
    return VERDICT_WORDS.get(int(code))


def verdict_phrase(code: Any, subject: str = "MEI") -> str:
    """``"MEI ties"`` (terminal, report and replicates say the same); ``"n/a"`` without a verdict."""
    word = verdict_word(code)
    return f"{subject} {word}" if word else "n/a"


def format_conclusion(conclusion: dict[str, Any]) -> str:
    """A replicate conclusion: ``MEI beats in every replicate`` or ``no conclusion (beats, ties, ties)``."""
    if conclusion["holds_in_every_replicate"]:
        return f"MEI {conclusion['conclusion']} in every replicate"
    return f"no conclusion ({', '.join(str(w) for w in conclusion['per_replicate'])})"


# --------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------
def _per_kind(stage: str, key: str, label: str, unit: str = "", fmt: str = ".3f",
              panel: Optional[str] = None) -> list[Metric]:
    """``key_<kind>`` for every kind of :data:`KINDS`, labelled ``label (<kind>)``."""
    return [Metric(stage, f"{key}_{kind}", f"{label} ({kind})", unit, fmt, panel) for kind in KINDS]


def _pooled_and_per_kind(stage: str, key: str, label: str, unit: str = "", fmt: str = ".3f",
                         panel: Optional[str] = None) -> list[Metric]:
    """``key`` over all responsive cells (table only) and ``key_<kind>`` per kind (plotted on ``panel``)."""
    return [Metric(stage, key, label, unit, fmt), *_per_kind(stage, key, label, unit, fmt, panel)]


_RANKING = (
    Metric("ranking", "n_cells", "cells recorded", "cells", "d"),
    Metric("ranking", "n_selected", "cells selected", "cells", "d"),
    Metric("ranking", "metric", "ranked by", fmt="s"),
    Metric("ranking", "median_reliability", "median split-half reliability", fmt=".2f"),
    Metric("ranking", "median_explainable_var", "median explainable variance fraction", "fraction", ".2f"),
    Metric("ranking", "median_oracle_corr", "median oracle correlation", "correlation", ".2f"),
    Metric("ranking", "median_p_anova", "median ANOVA p-value across images", "p", ".2g"),
    Metric("ranking", "median_frac_sig_trials", "median fraction of significant trials", "fraction", ".2f"),
    Metric("ranking", "median_peak_response", "median peak image-mean response", fmt=".3g"),
    Metric("ranking", "median_allen_p_ns", "median Allen natural-scenes p-value", "p", ".2g"),
    Metric("ranking", "median_allen_reliability_ns", "median Allen natural-scenes reliability", fmt=".2f"),
    Metric("ranking", "median_allen_peak_dff_ns", "median Allen peak dF/F (natural scenes)", fmt=".3g"),
    Metric("ranking", "median_allen_image_sel_ns", "median Allen image selectivity", fmt=".2f"),
    Metric("ranking", "gt_precision", "ranking precision vs truth", "fraction", ".2f", "accuracy"),
    Metric("ranking", "gt_recall", "ranking recall vs truth", "fraction", ".2f", "accuracy"),
    Metric("ranking", "gt_n_responsive", "responsive cells (truth)", "cells", "d"),
)
_TUNE = (
    Metric("tune", "n_trials", "trials", "count", "d"),
    Metric("tune", "n_complete", "trials complete", "count", "d"),
    Metric("tune", "n_pruned", "trials pruned", "count", "d"),
    Metric("tune", "n_failed", "trials failed", "count", "d"),
    Metric("tune", "best_value", "best validation score"),
    Metric("tune", "best_trial", "best trial", fmt="d"),
    Metric("tune", "default_value", "validation score of params.yaml's architecture"),
)
_TRAIN = (
    Metric("train", "n_neurons", "neurons modelled", "cells", "d"),
    Metric("train", "n_train_images", "training images", "count", "d"),
    Metric("train", "n_val_images", "validation images", "count", "d"),
    Metric("train", "n_test_images", "test images", "count", "d"),
    Metric("train", "n_test_trials", "test trials", "count", "d"),
    Metric("train", "test_corr_to_avg_mean", "test corr. to average (data)", "correlation", ".3f", "accuracy"),
    Metric("train", "test_corr_to_avg_median", "test corr. to average (data), median", "correlation"),
    Metric("train", "test_single_trial_corr_mean", "test single-trial corr.", "correlation"),
    Metric("train", "test_feve_median", "test FEVE, median"),
    Metric("train", "ln_test_corr_to_avg_mean", "LN baseline: test corr. to average", "correlation"),
    Metric("train", "ln_test_single_trial_corr_mean", "LN baseline: test single-trial corr.", "correlation"),
    Metric("train", "ln_test_feve_median", "LN baseline: test FEVE, median"),
    Metric("train", "cnn_beats_ln_fraction", "neurons the CNN predicts better than the LN baseline", "fraction",
           ".0%"),
    Metric("train", "member_test_corr_to_avg_mean", "test corr. to average, per ensemble member", "correlation"),
    Metric("train", "member_best_epoch", "best epoch, per member", "count", "d"),
    Metric("train", "member_best_val_corr", "best validation corr., per member", "correlation"),
    Metric("train", "member_epochs", "epochs run, per member", "count", "d"),
    Metric("train", "member_stop_reason", "why each member stopped", fmt="s"),
    Metric("train", "test_oracle_corr_mean", "oracle corr. (noise ceiling), test trials", "correlation"),
    Metric("train", "test_fraction_of_oracle", "single-trial corr. / oracle", fmt=".2f"),
    Metric("train", "shared_core_sessions", "sessions sharing the core", fmt="d"),
    Metric("train", "shared_core_n_neurons", "neurons per session sharing the core", "cells", "d"),
    Metric("train", "gt_test_corr_mean", "corr. with true rates, test scenes", "correlation", ".3f", "accuracy"),
    Metric("train", "gt_test_corr_median", "corr. with true rates, test scenes, median", "correlation"),
    Metric("train", "ln_gt_test_corr_mean", "LN baseline: corr. with true rates, test scenes", "correlation"),
    Metric("train", "n_fresh_images", "fresh scenes", "count", "d"),
    Metric("train", "gt_fresh_corr_mean", "corr. with true rates, fresh scenes", "correlation", ".3f", "accuracy"),
    Metric("train", "gt_fresh_corr_median", "corr. with true rates, fresh scenes, median", "correlation"),
    *_per_kind("train", "gt_fresh_corr_median", "corr. with true rates, fresh scenes", "correlation"),
    Metric("train", "ln_gt_fresh_corr_mean", "LN baseline: corr. with true rates, fresh scenes", "correlation"),
    Metric("train", "member_gt_fresh_corr_mean", "corr. with true rates, fresh scenes, per member", "correlation"),
)
_MEI = (
    Metric("mei", "n_neurons", "neurons", "cells", "d"),
    Metric("mei", "norm", "contrast budget (L2 norm, model space)", fmt=".3g"),
    Metric("mei", "n_starts", "starts per neuron", "count", "d"),
    Metric("mei", "mei_over_best_image_median", "model: MEI / best natural image", "ratio", ".2f", "ratio"),
    Metric("mei", "mei_over_best_image_raw_median", "model: MEI / best natural image at its own contrast", "ratio",
           ".2f"),
    Metric("mei", "mei_val_over_best_image_median", "held-out model: MEI / best natural image", "ratio", ".2f"),
    Metric("mei", "frac_val_mei_beats_best_image", "neurons where the MEI beats the best natural image "
           "(held-out model)", "fraction", ".0%"),
    Metric("mei", "seed_consistency_median", "MEI starts agree", "correlation", ".2f"),
    Metric("mei", "seed_consistency_phase_median", "MEI starts agree (phase-aware)", "correlation", ".2f",
           "accuracy"),
    Metric("mei", "frac_starts_disagree", "fraction of neurons whose starts disagree", "fraction", ".0%",
           "accuracy"),
    Metric("mei", "contrast_sweep_monotonic_frac", "neurons whose response grows with contrast", "fraction", ".0%"),
    Metric("mei", "steps_run_mean", "gradient steps run, mean", "count", ".0f"),
    Metric("mei", "frac_starts_converged", "starts converged before the step limit", "fraction", ".0%"),
)
_GABOR = (
    Metric("gabor", "n_neurons", "neurons", "cells", "d"),
    Metric("gabor", "n_candidates", "Gabor candidates evaluated", "count", "d"),
    Metric("gabor", "refine_steps_run_mean", "refinement steps run, mean", "count", ".0f"),
    Metric("gabor", "mei_over_gabor_median", "model: MEI / optimal Gabor", "ratio", ".2f", "ratio"),
    Metric("gabor", "mei_val_over_gabor_median", "held-out model: MEI / optimal Gabor", "ratio", ".2f", "ratio"),
    Metric("gabor", "mei_gabor_similarity_median", "MEI-Gabor similarity", "correlation", ".2f", "accuracy"),
    Metric("gabor", "frac_neurons_mei_beats_gabor", "neurons where the MEI wins (model)", "fraction", ".0%"),
    Metric("gabor", "frac_neurons_mei_val_beats_gabor", "neurons where the MEI wins (held-out model)", "fraction",
           ".0%"),
    Metric("gabor", "wilcoxon_p_opt", "Wilcoxon p, MEI vs optimal Gabor (model)", "p", ".2g"),
    Metric("gabor", "wilcoxon_p_val", "Wilcoxon p, MEI vs optimal Gabor (held-out model)", "p", ".2g"),
    Metric("gabor", "wilcoxon_p_opt_bh", "Wilcoxon p, MEI vs optimal Gabor (model), BH-adjusted", "p", ".2g"),
    Metric("gabor", "wilcoxon_p_val_bh", "Wilcoxon p, MEI vs optimal Gabor (held-out model), BH-adjusted", "p",
           ".2g"),
    # Neuropixels sessions only: the presented Gabor patches (units with a significant receptive field)
    Metric("gabor", "gabor_patch_n_units", "units compared with the presented Gabor patches", "cells", "d",
           only_some_data=True),
    Metric("gabor", "gabor_patch_n_units_with_rf", "units with a significant receptive field", "cells", "d",
           only_some_data=True),
    Metric("gabor", "gabor_patch_position_error_deg_median", "best presented Gabor patch to optimal Gabor (deg)",
           "deg", ".1f", only_some_data=True),
    Metric("gabor", "gabor_patch_frac_within_grid_step", "best patch within one grid step of the optimal Gabor",
           "fraction", ".0%", only_some_data=True),
    Metric("gabor", "gabor_patch_frac_orientation_agrees", "best patch orientation agrees with optimal Gabor",
           "fraction", ".0%", only_some_data=True),
    Metric("gabor", "gabor_patch_true_error_deg_median", "best presented Gabor patch to true centre (deg)", "deg",
           ".1f", only_some_data=True),
    Metric("gabor", "optimal_gabor_true_error_deg_median", "optimal Gabor to true centre (deg)", "deg", ".1f",
           only_some_data=True),
)
# the MEI's rivals in the closed loop: key, name, short name, name in a rate ratio, panels of the
# per-kind win fraction and rate ratio
_RIVALS = (("gabor", "optimal Gabor", "Gabor", "optimal Gabor", "truth", "ratio"),
           ("best_image", "best natural image", "best natural", "best natural", None, "ratio"))
# who judges a MEI-vs-Gabor comparison on models: (key prefix, words)
_JUDGES = (("model", "on the optimisation models"), ("model_val", "on the held-out model"))


def _validate_metrics() -> list[Metric]:
    out = [Metric("validate", "skipped", "closed loop skipped (no ground truth)", fmt="s"),
           Metric("validate", "note", "why the closed loop was skipped", fmt="s"),
           Metric("validate", "n_neurons", "neurons in the closed loop", "cells", "d"),
           Metric("validate", "n_unresponsive_selected", "unresponsive cells selected", "cells", "d"),
           Metric("validate", "n_true_optimum_beaten", "stimuli beating the true optimum", "count", "d"),
           Metric("validate", "n_responsive", "responsive cells", "cells", "d"),
           *[Metric("validate", f"n_{kind}", f"{kind} cells", "cells", "d") for kind in KINDS]]
    both = _pooled_and_per_kind
    out += both("validate", "gt_mei_corr_median", "MEI vs true optimum, corr.", "correlation", ".2f", "truth")
    # a rate as a fraction of the true optimum's (nothing beats the optimum)
    for key, name in (("mei", "MEI"), ("gabor", "optimal Gabor"), ("best_image", "best natural")):
        out += both("validate", f"gt_{key}_rate_ratio_median", f"true rate: {name} / optimum", "fraction", ".2f",
                    "truth" if key != "best_image" else None)
    for key, name, short, in_ratio, panel_frac, panel_ratio in _RIVALS:
        out += both("validate", f"gt_frac_mei_beats_{key}", f"fraction MEI beats {short} in truth", "fraction",
                    ".0%", panel_frac)
        out += both("validate", f"gt_frac_{key}_beats_mei", f"fraction {short} beats MEI in truth", "fraction",
                    ".0%")
        out += both("validate", f"gt_n_ties_mei_{key}", f"cells where MEI and {name} tie in truth", "cells", "d")
        out += both("validate", f"gt_n_both_zero_mei_{key}", f"cells neither MEI nor {name} drives", "cells", "d")
        out += both("validate", f"gt_mei_over_{key}_rate_median", f"true rate: MEI / {in_ratio}", "ratio", ".2f",
                    panel_ratio)
        out += both("validate", f"gt_sign_p_mei_vs_{key}", f"sign test p, MEI vs {name} in truth", "p", ".2g")
        out += both("validate", f"gt_verdict_mei_vs_{key}", f"MEI vs {name}, in truth", "verdict", "d")
    for key, name in (("mei", "MEI"), ("gabor", "optimal Gabor"), ("best_image", "best natural image")):
        out += both("validate", f"gt_n_zero_rate_{key}", f"cells the {name} does not drive", "cells", "d")
    for prefix, words in _JUDGES:
        out += both("validate", f"{prefix}_frac_mei_beats_gabor", f"fraction MEI beats Gabor {words}", "fraction",
                    ".0%")
        out += both("validate", f"{prefix}_sign_p_mei_vs_gabor", f"sign test p, MEI vs optimal Gabor {words}", "p",
                    ".2g")
        out += both("validate", f"{prefix}_verdict_mei_vs_gabor", f"MEI vs optimal Gabor, {words}", "verdict", "d")
    return out


_STAGE_METRICS: tuple[Metric, ...] = (*_RANKING, *_TUNE, *_TRAIN, *_MEI, *_GABOR, *_validate_metrics())
_INDEX = {(m.stage, m.key): m for m in _STAGE_METRICS}


def lookup(stage: str, key: str) -> Optional[Metric]:
    """The catalogue entry of ``key`` in ``metrics/<stage>.json`` (``ranking``, ``train``, ...); None if unknown."""
    return _INDEX.get((stage, key))


def by_name(name: str) -> Optional[Metric]:
    """The catalogue entry named ``"<stage>.<key>"``; None if unknown."""
    stage, _, key = name.partition(".")
    return lookup(stage, key)


def _pick(names: Iterable[str]) -> tuple[Metric, ...]:
    found = tuple(by_name(n) for n in names)
    missing = [n for n, m in zip(names, found) if m is None]
    if missing:
        raise KeyError(f"not in the metric catalogue: {missing}")
    return found  # type: ignore[return-value]


def _kinds(name: str) -> list[str]:
    return [f"{name}_{kind}" for kind in KINDS]


# The replicate figures (``meiscope replicate``): each with its values, mean and interval over replicates.
HEADLINE: tuple[Metric, ...] = _pick([
    "ranking.n_selected", "ranking.gt_precision", "ranking.gt_recall", "train.test_corr_to_avg_mean",
    "train.gt_test_corr_mean", "train.gt_fresh_corr_mean", *_kinds("train.gt_fresh_corr_median"),
    "mei.seed_consistency_phase_median", "mei.frac_starts_disagree", "mei.mei_over_best_image_median",
    "gabor.mei_over_gabor_median", "gabor.mei_val_over_gabor_median", "gabor.mei_gabor_similarity_median",
    *_kinds("validate.gt_mei_corr_median"), *_kinds("validate.gt_mei_rate_ratio_median"),
    *_kinds("validate.gt_gabor_rate_ratio_median"), *_kinds("validate.gt_frac_mei_beats_gabor"),
    *_kinds("validate.gt_mei_over_gabor_rate_median"), *_kinds("validate.gt_mei_over_best_image_rate_median"),
    *_kinds("validate.gt_n_zero_rate_gabor"), *_kinds("validate.gt_n_zero_rate_mei"),
    "validate.n_true_optimum_beaten",
    "gabor.gabor_patch_position_error_deg_median", "gabor.gabor_patch_frac_orientation_agrees",
    "gabor.gabor_patch_true_error_deg_median", "gabor.optimal_gabor_true_error_deg_median"])

# The conclusions a replicate run checks per cell kind: (label, validate key without the kind suffix).
CONCLUSIONS: tuple[tuple[str, str], ...] = tuple(
    (m.label, m.key) for m in _pick(["validate.gt_verdict_mei_vs_gabor", "validate.model_verdict_mei_vs_gabor",
                                     "validate.model_val_verdict_mei_vs_gabor",
                                     "validate.gt_verdict_mei_vs_best_image"]))

# ``metrics/headline.json`` (what ``dvc metrics show`` lists): short name -> the stage metric it copies.
DVC_HEADLINE: dict[str, Metric] = dict(zip(
    ("recall", "test_corr", "truth_corr", "vs_natural", "vs_gabor", "vs_gabor_val", "vs_optimum"),
    _pick(["ranking.gt_recall", "train.test_corr_to_avg_mean", "train.gt_fresh_corr_mean",
           "mei.mei_over_best_image_median", "gabor.mei_over_gabor_median", "gabor.mei_val_over_gabor_median",
           "validate.gt_mei_rate_ratio_median"])))

CATALOGUE: tuple[Metric, ...] = (*_STAGE_METRICS, *(Metric("headline", short, m.label, m.unit, m.fmt)
                                                    for short, m in DVC_HEADLINE.items()))
_INDEX.update({(m.stage, m.key): m for m in CATALOGUE})


# --------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------
def format_value(metric: Optional[Metric], value: Any) -> str:
    """``value`` as a person reads it: ``"n/a"`` for None / NaN, ``"33%"`` for a ``.0%`` metric,
    ``"MEI ties"`` for a verdict, integers as they are, a list element by element.

    Without a catalogue entry (``metric`` None) a float gets three significant digits.
    """
    if value is None:
        return "n/a"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(metric, v) for v in value)
    if isinstance(value, (str, bool)) or not isinstance(value, numbers.Real):
        return str(value)
    if metric is not None and metric.unit == "verdict":
        return verdict_phrase(value)
    if isinstance(value, numbers.Integral) and not (metric is not None and metric.fmt.endswith("%")):
        return str(int(value))  # a count
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    fmt = metric.fmt if metric is not None else ".3g"
    try:
        return format(value, fmt)
    except ValueError:  # a float where the catalogue expects an integer (a mean of counts): keep it short
        return format(value, ".3g")


def format_metric(stage: str, key: str, value: Any) -> str:
    """:func:`format_value` of ``metrics/<stage>.json``'s ``key``."""
    return format_value(lookup(stage, key), value)


def label_of(stage: str, key: str) -> str:
    """The catalogue label of ``key`` in ``metrics/<stage>.json``, else the key itself."""
    metric = lookup(stage, key)
    return metric.label if metric is not None else key


def format_interval(entry: dict[str, Any], digits: int = 2) -> str:
    """A replicate entry as ``mean [low, high]`` (or what there is of it)."""
    if entry.get("mean") is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"
