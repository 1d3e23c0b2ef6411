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
- ``flag``: 1 (yes) or 0 (no), e.g. whether two verdicts agree;
- ``""``: anything else (a model score, a response in the recording's unit, a name).

Coverage: every closed-loop figure says which cells it is over (:attr:`Metric.covers`): the SELECTED
cells (the ranking's pick, which have MEIs and optimal Gabors) or all truly RESPONSIVE cells of the
synthetic cortex (figures that need no MEI); :func:`coverage_key` names the count beside it.

Cell kinds: per-kind figures end in ``_<kind>``. The kinds are those present in the data (a cortex
may bring kinds beyond :data:`KINDS`): :func:`lookup` labels ``key_<kind>`` for any kind from the
entry of its stem, and :func:`ordered_kinds` puts the kinds of a run in one order.

Importing this module imports nothing heavy (no numpy), so the docs can read it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Optional

# the responsive cell kinds of the synthetic cortices, in display order: the Gabor family, then the kinds
# outside it (meiscope.synthetic.population.KINDS; synthetic.profile out_of_family)
KINDS = ("simple", "complex", "conjunction", "centre_surround", "suppressed")
UNRESPONSIVE = "unresponsive"  # the one kind whose cells no image drives

UNIT_BOUNDS: dict[str, tuple[Optional[float], Optional[float]]] = {
    "fraction": (0.0, 1.0), "correlation": (-1.0, 1.0), "p": (0.0, 1.0), "ratio": (0.0, None),
    "cells": (0.0, None), "count": (0.0, None), "deg": (0.0, None), "flag": (0.0, 1.0)}
# which cells a closed-loop figure is over (Metric.covers), in words
COVERAGE_WORDS = {"selected": "selected cells", "responsive": "all truly responsive cells"}


def ordered_kinds(kinds: Iterable[str]) -> list[str]:
    """The responsive kinds among ``kinds``, once each: those of :data:`KINDS` in its order, then any other
    (e.g. a new kind of the synthetic cortex) alphabetically."""
    present = {str(k) for k in kinds} - {UNRESPONSIVE}
    return [k for k in KINDS if k in present] + sorted(present - set(KINDS))


@dataclass(frozen=True)
class Metric:
    """One figure of ``metrics/<stage>.json``: what to call it, its unit, how to print it, where it is plotted.

    ``panel``: where the replicate figure plots it (``"accuracy"``, ``"truth"``, ``"ratio"`` on a log
    axis; None: table only). ``only_some_data``: measured on some kinds of data only (Neuropixels),
    left out of a summary where no replicate has it. ``covers``: which cells a closed-loop figure is
    over, a key of :data:`COVERAGE_WORDS` (None: not a figure over cells).
    """

    stage: str
    key: str
    label: str
    unit: str = ""
    fmt: str = ".3f"
    panel: Optional[str] = None
    only_some_data: bool = False
    covers: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{self.stage}.{self.key}"

    @property
    def log_scale(self) -> bool:
        """Ratios are averaged on the log scale (a geometric mean and interval), so 2 and 1/2 average to 1:
        those plotted on the ratio panel and every other figure whose unit is a ratio."""
        return self.panel == "ratio" or self.unit == "ratio"

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
# (stage, stem) -> the entry of ``stem_<kind>`` for any kind: filled by _per_kind, read by lookup
_PER_KIND_STEMS: dict[tuple[str, str], Metric] = {}


def _kind_metric(stem: Metric, kind: str) -> Metric:
    """The entry of ``<stem>_<kind>``: the stem's, labelled ``label (<kind>)``, plotted where the stem's kinds are."""
    return Metric(stem.stage, f"{stem.key}_{kind}", f"{stem.label} ({kind})", stem.unit, stem.fmt, stem.panel,
                  stem.only_some_data, stem.covers)


def _per_kind(stage: str, key: str, label: str, unit: str = "", fmt: str = ".3f",
              panel: Optional[str] = None, covers: Optional[str] = None) -> list[Metric]:
    """``key_<kind>`` for every kind of :data:`KINDS`, labelled ``label (<kind>)``; other kinds through
    :func:`lookup`."""
    stem = Metric(stage, key, label, unit, fmt, panel, covers=covers)
    _PER_KIND_STEMS[(stage, key)] = stem
    return [_kind_metric(stem, kind) for kind in KINDS]


def _pooled_and_per_kind(stage: str, key: str, label: str, unit: str = "", fmt: str = ".3f",
                         panel: Optional[str] = None, covers: Optional[str] = None) -> list[Metric]:
    """``key`` over all responsive cells (table only) and ``key_<kind>`` per kind (plotted on ``panel``)."""
    return [Metric(stage, key, label, unit, fmt, covers=covers), *_per_kind(stage, key, label, unit, fmt, panel, covers)]


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
    # Neuropixels sessions only: Allen's unit quality and analysis metrics beside meiscope's figures
    Metric("ranking", "median_allen_snr", "median Allen unit SNR", fmt=".2f", only_some_data=True),
    Metric("ranking", "median_allen_firing_rate", "median Allen firing rate (Hz)", fmt=".2f", only_some_data=True),
    Metric("ranking", "median_allen_amplitude_cutoff", "median Allen amplitude cutoff", "fraction", ".3f",
           only_some_data=True),
    Metric("ranking", "median_allen_presence_ratio", "median Allen presence ratio", "fraction", ".2f",
           only_some_data=True),
    Metric("ranking", "median_allen_isi_violations", "median Allen ISI violations", fmt=".2f", only_some_data=True),
    Metric("ranking", "median_image_selectivity", "median image selectivity (meiscope, Allen's definition)",
           fmt=".2f", only_some_data=True),
    Metric("ranking", "median_allen_image_selectivity_ns", "median Allen image selectivity (units)", fmt=".2f",
           only_some_data=True),
    Metric("ranking", "median_allen_g_osi_sg", "median Allen orientation selectivity (static gratings)", fmt=".2f",
           only_some_data=True),
    Metric("ranking", "allen_rf_significant_fraction", "selected units with Allen p_value_rf < 0.01", "fraction",
           ".0%", only_some_data=True),
    Metric("ranking", "pref_image_allen_agreement", "preferred image agrees with Allen's pref_image_ns", "fraction",
           ".0%", only_some_data=True),
    Metric("ranking", "n_pref_image_allen_compared", "selected units with an Allen preferred image", "cells", "d",
           only_some_data=True),
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
    Metric("mei", "steps_run_median", "gradient steps run per start, median", "count", ".0f"),
    Metric("mei", "steps_run_max", "gradient steps run per start, most", "count", "d"),
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
    Metric("gabor", "gabor_patch_rf_centre_true_error_deg_median",
           "receptive-field centre of mass to true centre (deg)", "deg", ".1f", only_some_data=True),
    Metric("gabor", "gabor_patch_all_units_n", "units with Gabor-patch counts (all, not only modelled)", "cells",
           "d", only_some_data=True),
    Metric("gabor", "gabor_patch_all_units_n_with_rf", "units with a significant receptive field (all units)",
           "cells", "d", only_some_data=True),
    Metric("gabor", "gabor_patch_all_units_rf_centre_true_error_deg_median",
           "receptive-field centre of mass to true centre, all units (deg)", "deg", ".1f", only_some_data=True),
    Metric("gabor", "gabor_patch_all_units_frac_with_rf", "share of units with a significant receptive field",
           "fraction", ".0%", only_some_data=True),
    Metric("gabor", "gabor_patch_all_units_allen_frac_with_rf", "share of the same units Allen calls significant",
           "fraction", ".0%", only_some_data=True),
    Metric("gabor", "gabor_patch_all_units_rf_agrees_allen", "receptive-field test agrees with Allen's p_value_rf",
           "fraction", ".0%", only_some_data=True),
    Metric("gabor", "gabor_patch_all_units_rf_centre_allen_distance_deg_median",
           "receptive-field centre of mass to Allen's (deg)", "deg", ".1f", only_some_data=True),
)
# the MEI's rivals in the closed loop: key, name, short name, name in a rate ratio, panels of the
# per-kind win fraction and rate ratio. best_image: the model's best natural scene projected to the
# MEI's contrast budget; best_image_native: the same scene at the contrast the cell saw
_RIVALS = (("gabor", "optimal Gabor", "Gabor", "optimal Gabor", "truth", "ratio"),
           ("best_image", "best natural image at the MEI's budget", "budget-matched best natural",
            "best natural image at the MEI's budget", None, "ratio"),
           ("best_image_native", "best natural image at its native contrast", "native best natural",
            "best natural image at its native contrast", None, "ratio"))
# who judges a MEI-vs-Gabor comparison on models: (key prefix, words)
_JUDGES = (("model", "on the optimisation models"), ("model_val", "on the held-out model"))
# the closed-loop figures given with a bootstrap interval over cells (``<key>_ci_low`` / ``_ci_high``);
# the fraction's interval is Wilson's, the others percentile bootstraps of the median (log scale for ratios)
BOOTSTRAPPED = ("gt_mei_corr_median", "gt_mei_rate_ratio_median", "gt_mei_drive_ratio_median",
                "gt_gabor_rate_ratio_median", "gt_gabor_drive_ratio_median", "gt_mei_over_gabor_rate_median",
                "gt_mei_over_gabor_drive_median", "gt_mei_over_best_image_rate_median",
                "gt_mei_over_best_image_native_rate_median", "gt_frac_mei_beats_gabor",
                "model_mei_over_gabor_median", "model_val_mei_over_gabor_median")
# truth-side figures that need no MEI, over all truly responsive cells (gt_all_) and over the selected
# ones (gt_sel_): the truth's own best natural scene, native or at the MEI's budget, over the true optimum
_SCENE_FIGURES = (("native", "at its native contrast"), ("matched", "at the MEI's budget"))


def _validate_metrics() -> list[Metric]:
    sel = "selected"
    out = [Metric("validate", "skipped", "closed loop skipped (no ground truth)", fmt="s"),
           Metric("validate", "note", "why the closed loop was skipped", fmt="s"),
           Metric("validate", "kinds", "responsive cell kinds in the data", fmt="s"),
           Metric("validate", "n_neurons", "neurons in the closed loop", "cells", "d"),
           Metric("validate", "n_unresponsive_selected", "unresponsive cells selected", "cells", "d"),
           Metric("validate", "n_true_optimum_beaten", "stimuli beating the true optimum", "count", "d"),
           Metric("validate", "n_responsive", "responsive cells selected", "cells", "d"),
           *_per_kind("validate", "n", "selected cells", "cells", "d"),
           Metric("validate", "n_truth_responsive", "truly responsive cells", "cells", "d"),
           *_per_kind("validate", "n_truth", "truly responsive cells", "cells", "d"),
           Metric("validate", "ci_confidence", "confidence of the intervals over cells", "fraction", ".0%"),
           Metric("validate", "n_bootstrap", "bootstrap resamples of the cells", "count", "d"),
           Metric("validate", "tie_tolerance", "tie band of the interval verdicts (relative)", "fraction", ".0%")]
    both = _pooled_and_per_kind
    out += both("validate", "gt_mei_corr_median", "MEI vs true optimum, corr.", "correlation", ".2f", "truth", sel)
    # a rate or drive as a fraction of the true optimum's (nothing within the budget beats the optimum)
    for key, name in (("mei", "MEI"), ("gabor", "optimal Gabor"),
                      ("best_image", "best natural image at the MEI's budget")):
        out += both("validate", f"gt_{key}_rate_ratio_median", f"true rate: {name} / optimum", "fraction", ".2f",
                    "truth" if key != "best_image" else None, sel)
        out += both("validate", f"gt_{key}_drive_ratio_median", f"true drive: {name} / optimum", "fraction", ".2f",
                    "truth" if key == "mei" else None, sel)
    # the scene at its own contrast is not held to the budget: it may exceed the budget's optimum
    out += both("validate", "gt_best_image_native_rate_ratio_median",
                "true rate: best natural image at its native contrast / optimum", "ratio", ".2f", covers=sel)
    out += both("validate", "gt_best_image_native_drive_ratio_median",
                "true drive: best natural image at its native contrast / optimum", "ratio", ".2f", covers=sel)
    for key, name, short, in_ratio, panel_frac, panel_ratio in _RIVALS:
        out += both("validate", f"gt_frac_mei_beats_{key}", f"fraction MEI beats {short} in truth", "fraction",
                    ".0%", panel_frac, sel)
        out += both("validate", f"gt_frac_{key}_beats_mei", f"fraction {short} beats MEI in truth", "fraction",
                    ".0%", covers=sel)
        out += both("validate", f"gt_n_ties_mei_{key}", f"cells where MEI and {name} tie in truth", "cells", "d",
                    covers=sel)
        out += both("validate", f"gt_n_both_zero_mei_{key}", f"cells neither MEI nor {name} drives", "cells", "d",
                    covers=sel)
        out += both("validate", f"gt_mei_over_{key}_rate_median", f"true rate: MEI / {in_ratio}", "ratio", ".2f",
                    panel_ratio, sel)
        out += both("validate", f"gt_mei_over_{key}_drive_median", f"true drive: MEI / {in_ratio}", "ratio", ".2f",
                    covers=sel)
        out += both("validate", f"gt_sign_p_mei_vs_{key}", f"sign test p, MEI vs {name} in truth", "p", ".2g",
                    covers=sel)
        out += both("validate", f"gt_verdict_mei_vs_{key}", f"MEI vs {name}, in truth", "verdict", "d", covers=sel)
    for key, name in (("mei", "MEI"), ("gabor", "optimal Gabor"),
                      ("best_image", "best natural image at the MEI's budget"),
                      ("best_image_native", "best natural image at its native contrast")):
        out += both("validate", f"gt_n_zero_rate_{key}", f"cells the {name} does not drive", "cells", "d",
                    covers=sel)
    for prefix, words in _JUDGES:
        out += both("validate", f"{prefix}_frac_mei_beats_gabor", f"fraction MEI beats Gabor {words}", "fraction",
                    ".0%", covers=sel)
        out += both("validate", f"{prefix}_sign_p_mei_vs_gabor", f"sign test p, MEI vs optimal Gabor {words}", "p",
                    ".2g", covers=sel)
        out += both("validate", f"{prefix}_verdict_mei_vs_gabor", f"MEI vs optimal Gabor, {words}", "verdict", "d",
                    covers=sel)
        out += both("validate", f"{prefix}_mei_over_gabor_median", f"MEI / optimal Gabor {words}", "ratio", ".2f",
                    covers=sel)
    # the verdicts from the intervals over cells and the tie band (meiscope.science.stats.banded_verdict)
    for prefix, words in (("gt", "in truth"), *_JUDGES):
        out += both("validate", f"{prefix}_ci_verdict_mei_vs_gabor",
                    f"MEI vs optimal Gabor {words}, interval and tie band", "verdict", "d", covers=sel)
    out += both("validate", "ci_verdicts_agree_mei_vs_gabor",
                "held-out model's MEI-vs-Gabor verdict (interval and tie band) agrees with the truth's", "flag", "s",
                covers=sel)
    for prefix, covers in (("gt_all", "responsive"), ("gt_sel", "selected")):
        for scene, words in _SCENE_FIGURES:
            for quantity in ("rate", "drive"):
                out += both("validate", f"{prefix}_best_scene_{scene}_{quantity}_ratio_median",
                            f"true {quantity}: the truth's best natural scene {words} / optimum, "
                            f"{COVERAGE_WORDS[covers]}", "ratio", ".2f", covers=covers)
    out += _intervals(out)
    return out


def _intervals(metrics: list[Metric]) -> list[Metric]:
    """``<key>_ci_low`` / ``<key>_ci_high`` (per kind: ``<key>_ci_low_<kind>``) of every :data:`BOOTSTRAPPED` key."""
    stems = {m.key: m for m in metrics if m.key in BOOTSTRAPPED}
    out = []
    for key in BOOTSTRAPPED:
        m = stems[key]
        for end in ("low", "high"):
            words = f"{m.label}, {end} end of the interval over cells"
            out += _pooled_and_per_kind("validate", f"{key}_ci_{end}", words, m.unit, m.fmt, covers=m.covers)
    return out


_STAGE_METRICS: tuple[Metric, ...] = (*_RANKING, *_TUNE, *_TRAIN, *_MEI, *_GABOR, *_validate_metrics())
_INDEX = {(m.stage, m.key): m for m in _STAGE_METRICS}


def lookup(stage: str, key: str) -> Optional[Metric]:
    """The catalogue entry of ``key`` in ``metrics/<stage>.json`` (``ranking``, ``train``, ...); None if unknown.

    ``<stem>_<kind>`` of a per-kind figure is known for any kind (e.g. ``end_stopped``): the longest
    per-kind stem that ``key`` starts with gives its entry.
    """
    found = _INDEX.get((stage, key))
    if found is not None:
        return found
    stems = [stem for (s, stem) in _PER_KIND_STEMS if s == stage and key.startswith(stem + "_")]
    if not stems:
        return None
    stem = max(stems, key=len)
    kind = key[len(stem) + 1:]
    return _kind_metric(_PER_KIND_STEMS[(stage, stem)], kind) if kind.isidentifier() else None


def coverage_key(metric: Metric) -> Optional[str]:
    """The ``metrics/validate.json`` key counting the cells ``metric`` is over (``n_simple``, ``n_truth_responsive``,
    ...), from its :attr:`Metric.covers` and its kind suffix; None for a figure not over cells."""
    if metric.covers is None:
        return None
    prefix = "n" if metric.covers == "selected" else "n_truth"
    if (metric.stage, metric.key) in _PER_KIND_STEMS:  # pooled over the kinds
        return f"{prefix}_responsive"
    stems = [s for (stage, s) in _PER_KIND_STEMS if stage == metric.stage and metric.key.startswith(s + "_")]
    return f"{prefix}_{metric.key[len(max(stems, key=len)) + 1:]}" if stems else f"{prefix}_responsive"


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


def _kinds(name: str, kinds: Iterable[str] = KINDS) -> list[str]:
    return [f"{name}_{kind}" for kind in kinds]


# The per-kind figures of the replicate summary, by ``stage.stem`` (``_<kind>`` is added per kind).
_HEADLINE_PER_KIND = (
    "validate.n", "validate.n_truth", "validate.gt_mei_corr_median", "validate.gt_mei_rate_ratio_median",
    "validate.gt_mei_drive_ratio_median", "validate.gt_gabor_rate_ratio_median",
    "validate.gt_gabor_drive_ratio_median", "validate.gt_frac_mei_beats_gabor",
    "validate.gt_mei_over_gabor_rate_median", "validate.gt_mei_over_gabor_drive_median",
    "validate.gt_mei_over_best_image_rate_median", "validate.gt_mei_over_best_image_native_rate_median",
    "validate.gt_all_best_scene_native_rate_ratio_median", "validate.gt_sel_best_scene_native_rate_ratio_median",
    "validate.ci_verdicts_agree_mei_vs_gabor", "validate.gt_n_zero_rate_gabor", "validate.gt_n_zero_rate_mei")
# Checks that the instrument is sound, not findings: the report and the docs show them apart.
CORRECTNESS: tuple[Metric, ...] = _pick(["validate.n_true_optimum_beaten"])


def headline_for(kinds: Iterable[str] = KINDS) -> tuple[Metric, ...]:
    """The replicate figures for the cell kinds of the data (:func:`ordered_kinds`), each per-kind figure
    once per kind; :data:`HEADLINE` is this for :data:`KINDS`."""
    kinds = ordered_kinds(kinds)
    per_kind = [lookup(stage, f"{stem}_{kind}") for name in _HEADLINE_PER_KIND
                for stage, _, stem in [name.partition(".")] for kind in kinds]
    return (*_pick([
        "ranking.n_selected", "ranking.gt_precision", "ranking.gt_recall", "ranking.gt_n_responsive",
        "train.test_corr_to_avg_mean", "train.gt_test_corr_mean", "train.gt_fresh_corr_mean",
        *_kinds("train.gt_fresh_corr_median"), "mei.seed_consistency_phase_median", "mei.frac_starts_disagree",
        "mei.mei_over_best_image_median", "mei.mei_over_best_image_raw_median", "gabor.mei_over_gabor_median",
        "gabor.mei_val_over_gabor_median", "gabor.mei_gabor_similarity_median"]),
        *(m for m in per_kind if m is not None), *CORRECTNESS,
        *_pick(["gabor.gabor_patch_position_error_deg_median", "gabor.gabor_patch_frac_orientation_agrees",
                "gabor.gabor_patch_true_error_deg_median", "gabor.optimal_gabor_true_error_deg_median",
                "gabor.gabor_patch_all_units_rf_centre_true_error_deg_median"]))


# The replicate figures (``meiscope replicate``): each with its values, mean and interval over replicates.
HEADLINE: tuple[Metric, ...] = headline_for(KINDS)

# The conclusions a replicate run checks per cell kind: (label, validate key without the kind suffix).
CONCLUSIONS: tuple[tuple[str, str], ...] = tuple(
    (m.label, m.key) for m in _pick(["validate.gt_verdict_mei_vs_gabor", "validate.model_verdict_mei_vs_gabor",
                                     "validate.model_val_verdict_mei_vs_gabor",
                                     "validate.gt_ci_verdict_mei_vs_gabor",
                                     "validate.model_val_ci_verdict_mei_vs_gabor",
                                     "validate.gt_verdict_mei_vs_best_image",
                                     "validate.gt_verdict_mei_vs_best_image_native"]))


def interval_keys(metric: Metric) -> Optional[tuple[str, str]]:
    """``(ci_low key, ci_high key)`` of the bootstrap interval over cells that ``metric`` carries in its
    stage's metrics (:data:`BOOTSTRAPPED`), or None."""
    if metric.stage != "validate":
        return None
    if metric.key in BOOTSTRAPPED:
        return f"{metric.key}_ci_low", f"{metric.key}_ci_high"
    stems = [s for (stage, s) in _PER_KIND_STEMS if stage == "validate" and metric.key.startswith(s + "_")]
    stem = max(stems, key=len) if stems else None
    if stem not in BOOTSTRAPPED:
        return None
    kind = metric.key[len(stem) + 1:]
    return f"{stem}_ci_low_{kind}", f"{stem}_ci_high_{kind}"


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
    if metric is not None and metric.unit == "flag":
        return {1: "yes", 0: "no"}.get(int(value), "n/a") if math.isfinite(value) else "n/a"
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
