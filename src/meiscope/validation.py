"""The `validate` stage's science: the in-silico inception loop on synthetic sessions.

The MEIs (every start), the optimal Gabors and each neuron's best natural image are shown to the
TRUE synthetic neurons, beside each neuron's exact true optimum under the same budget and pixel
range (:mod:`meiscope.optima`). Real Allen sessions have no ground truth: the stage writes a note
and skips.

What is compared is what a neuron does: its true FIRING RATE ABOVE BASELINE (Hz). The drives (the
filter stage before the saturating rate nonlinearity) are kept in the per-neuron table. Ratios of
rates are summarised robustly (:mod:`meiscope.comparison`): cells where a stimulus does not drive
the cell at all are counted, not folded into a median.

Checks that the instrument is sound: no stimulus meiscope produces may drive a true cell beyond
its true optimum (float tolerance :data:`OPTIMUM_TOLERANCE`); the stage fails naming the cell if
one does.

Likeness of an MEI to the truth: plain correlation with the true optimum, except for complex
(phase-invariant) cells, whose optima are all images in the span of their two quadrature filters:
the MEI is scored by its largest correlation with that span (:func:`meiscope.insilico.similarity.span_correlation`).

What each figure covers (:mod:`meiscope.science.catalogue`, ``Metric.covers``): MEIs and optimal
Gabors exist for the SELECTED cells only, so every figure that needs one is over the selected
responsive cells (``n_<kind>``). Figures that need no MEI (the truth's own best natural scene, at
its native contrast and at the MEI's budget, against the true optimum) are given over ALL truly
responsive cells (``gt_all_*``, ``n_truth_<kind>``) and over the selected ones (``gt_sel_*``), so the
two can be compared.

Drive beside rate: the rate saturates (Naka-Rushton), which compresses every ratio of rates towards
1; the drive (before the saturation) shows how far a stimulus really is from the optimum.

Intervals over one replicate's cells (``<figure>_ci_low`` / ``_ci_high``, settings ``validate:``):
Wilson's for a fraction of cells, a seeded percentile bootstrap of the median for the rest, on the log
scale for ratios, clipped to the range of the figure.

Verdicts from intervals (``*_ci_verdict_mei_vs_gabor``): MEI vs optimal Gabor "ties" when the
interval of the median rate ratio meets the tie band [1 / (1 + tol), 1 + tol], and beats / loses
only when it lies wholly beyond it (:func:`meiscope.science.stats.banded_verdict`); the truth's and
the held-out model's verdicts are compared per kind (``ci_verdicts_agree_mei_vs_gabor``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from meiscope.comparison import ZERO, compare, log_ratio_median, paired_outcomes
from meiscope.errors import MeiscopeError
from meiscope.insilico.similarity import image_correlation, span_correlation
from meiscope.science.catalogue import BOOTSTRAPPED, UNRESPONSIVE, ordered_kinds
from meiscope.science.stats import banded_verdict, bootstrap_median_interval, verdict, wilson_interval

PHASE_INVARIANT_KINDS = ("complex",)
# best_image: the model's best natural scene projected to the MEI's budget; best_image_native: the
# same scene as the cell saw it (not held to the budget, so never checked against the optimum)
STIMULI = ("mei", "gabor", "best_image", "best_image_native", "optimum")
OPTIMUM_TOLERANCE = 1e-5  # relative: float32 stimuli sit on the budget only to ~1e-7
CHECKED = ("mei", "gabor", "best_image", "best_start")  # meiscope's stimuli, checked against the optimum


class TrueOptimumBeaten(MeiscopeError):
    """A stimulus drove a true cell beyond its computed optimum: the instrument is broken."""


class TrueNeuronsInModelSpace(nn.Module):
    """The ground-truth population seen through the model's pixel space.

    ``forward(images (N, 1, H, W) model space) -> (N, n_cells)``: for the given population columns,
    the true ``quantity``: ``"drive"`` (unitless, non-saturating), ``"rate"`` (Hz) or
    ``"rate_above_baseline"`` (Hz; 0 when the stimulus does not drive the cell), so that code
    written for models runs on the truth unchanged.
    """

    QUANTITIES = ("drive", "rate", "rate_above_baseline")

    def __init__(self, population: nn.Module, columns: Sequence[int], pixel_mean: float, pixel_std: float,
                 quantity: str = "drive"):
        super().__init__()
        if quantity not in self.QUANTITIES:
            raise ValueError(f"quantity must be one of {self.QUANTITIES} (got {quantity!r})")
        self.population = population
        self.register_buffer("columns", torch.as_tensor(np.asarray(columns), dtype=torch.long))
        self.pixel_mean, self.pixel_std, self.quantity = float(pixel_mean), float(pixel_std), quantity

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images[:, 0] * self.pixel_std + self.pixel_mean
        if self.quantity == "drive":
            out = self.population.drive(pixels)
        elif self.quantity == "rate":
            out = self.population(pixels)
        else:
            out = self.population.rate_above_baseline(pixels)
        return out[:, self.columns]


def _batched_responses(module: nn.Module, images: np.ndarray, device: Any, batch: int):
    """Yield ``(start, responses)``: ``module``'s ``(b, n_cells)`` float64 responses to ``images[start:start + b]``
    (model space ``(n, H, W)``), in the truth's own precision."""
    dtype = torch.float64 if any(b.dtype == torch.float64 for b in module.buffers()) else torch.float32
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = torch.as_tensor(np.asarray(images[start:start + batch]), dtype=dtype, device=device)[:, None]
            yield start, module(x).double()


def true_responses(truth_model: nn.Module, images: np.ndarray, device: Any, batch: int = 128) -> np.ndarray:
    """Response of neuron i to image i: ``images (n, H, W)`` model space -> ``(n,)`` float64."""
    out = []
    for start, responses in _batched_responses(truth_model, images, device, batch):
        rows = torch.arange(len(responses), device=responses.device)
        out.append(responses[rows, rows + start].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def mei_truth_correlations(meis: np.ndarray, optima: np.ndarray, kinds: Sequence[str],
                           spans: np.ndarray) -> np.ndarray:
    """Per neuron ``(n,)``: span correlation for phase-invariant cells, plain correlation otherwise.

    Args:
        meis, optima: ``(n, H, W)``.
        spans: ``(n, 2, H, W)`` each cell's two subunit filters in model space.
    """
    return np.array([span_correlation(m, s) if k in PHASE_INVARIANT_KINDS else image_correlation(m, o)
                     for m, o, k, s in zip(meis, optima, kinds, spans)])


# --------------------------------------------------------------------------------------
# the closed-loop table
# --------------------------------------------------------------------------------------
def closed_loop_table(truth: dict[str, nn.Module], kinds: Sequence[str], cell_ids: np.ndarray,
                      stimuli: dict[str, np.ndarray], starts: np.ndarray, spans: np.ndarray,
                      model_scores: dict[str, np.ndarray], optimum_phi: np.ndarray, device: Any) -> Any:
    """True responses to every stimulus and the per-cell comparisons, one row per neuron.

    Args:
        truth: :class:`TrueNeuronsInModelSpace` per quantity (``drive``, ``rate``,
            ``rate_above_baseline``); column i = neuron i.
        stimuli: ``(n, H, W)`` model-space images for each of :data:`STIMULI`, row i for neuron i
            (``best_image_native``: the best scene as shown, not held to the budget).
        starts: ``(n, n_starts, H, W)`` every start of every MEI.
        spans: ``(n, 2, H, W)`` the cells' subunit filters in model space.
        model_scores: the models' activations ``(n,)``: ``mei``, ``gabor`` (optimisation models) and
            ``mei_val``, ``gabor_val`` (held-out model).
        optimum_phi: ``(n,)`` mixing angle of each true optimum.
    """
    import pandas as pd

    table = pd.DataFrame({"cell_id": np.asarray(cell_ids), "kind": list(kinds)})
    for quantity, module in truth.items():
        for name in STIMULI:
            table[f"true_{quantity}_{name}"] = true_responses(module, stimuli[name], device)
    table["true_drive_best_start"] = _start_responses(truth["drive"], starts, device).max(axis=1)
    above = {name: table[f"true_rate_above_baseline_{name}"].to_numpy() for name in STIMULI}
    drive = {name: table[f"true_drive_{name}"].to_numpy() for name in STIMULI}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in ("mei", "gabor", "best_image", "best_image_native"):
            table[f"{name}_rate_ratio"] = np.where(above["optimum"] > 0, above[name] / above["optimum"], np.nan)
            table[f"{name}_drive_ratio"] = np.where(drive["optimum"] > 0, drive[name] / drive["optimum"], np.nan)
    table["mei_truth_corr"] = mei_truth_correlations(stimuli["mei"], stimuli["optimum"], kinds, spans)
    for other in ("gabor", "best_image", "best_image_native"):
        table[f"mei_vs_{other}"] = paired_outcomes(above["mei"], above[other])
    for name in ("mei", "gabor", "mei_val", "gabor_val"):  # the models' activations, kept for their ratios
        table[f"model_{name}"] = np.asarray(model_scores[name], dtype=np.float64)
    table["model_mei_vs_gabor"] = paired_outcomes(model_scores["mei"], model_scores["gabor"])
    table["model_val_mei_vs_gabor"] = paired_outcomes(model_scores["mei_val"], model_scores["gabor_val"])
    table["model_mei_over_gabor"] = model_scores["mei"] / model_scores["gabor"]
    table["optimum_phi"] = optimum_phi
    best_other = np.max([table[f"true_drive_{name}"] for name in CHECKED], axis=0)
    table["optimum_beaten"] = best_other > table["true_drive_optimum"].to_numpy() * (1 + OPTIMUM_TOLERANCE) + 1e-12
    return table


def _start_responses(truth_drive: nn.Module, starts: np.ndarray, device: Any) -> np.ndarray:
    """``(n, n_starts)`` true drive of neuron i to each of its own starts."""
    return np.stack([true_responses(truth_drive, starts[:, s], device) for s in range(starts.shape[1])], axis=1)


def check_optima(table: Any) -> None:
    """Fail, naming the cells, when any stimulus drove a true cell beyond its true optimum."""
    beaten = table[table.optimum_beaten]
    if len(beaten):
        worst = beaten.iloc[0]
        other = max(worst[f"true_drive_{s}"] for s in CHECKED)
        raise TrueOptimumBeaten(
            f"validate: {len(beaten)} cell(s) driven beyond their true optimum (cells "
            f"{', '.join(str(int(c)) for c in beaten.cell_id[:5])}); cell {int(worst.cell_id)} ({worst.kind}): "
            f"drive {other:.6g} > optimum {worst.true_drive_optimum:.6g}: the optimum search is wrong")


# --------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------
# the ratio figures of the closed loop: figure -> (numerator, denominator) columns of the table; each is
# the median of log-ratios over the cells where both are positive (meiscope.comparison.log_ratio_median)
_ABOVE, _DRIVE = "true_rate_above_baseline_", "true_drive_"
RATIO_FIGURES: dict[str, tuple[str, str]] = {
    **{f"gt_{s}_rate_ratio_median": (_ABOVE + s, _ABOVE + "optimum")
       for s in ("mei", "gabor", "best_image", "best_image_native")},
    **{f"gt_{s}_drive_ratio_median": (_DRIVE + s, _DRIVE + "optimum")
       for s in ("mei", "gabor", "best_image", "best_image_native")},
    **{f"gt_mei_over_{s}_rate_median": (_ABOVE + "mei", _ABOVE + s) for s in ("gabor", "best_image", "best_image_native")},
    **{f"gt_mei_over_{s}_drive_median": (_DRIVE + "mei", _DRIVE + s)
       for s in ("gabor", "best_image", "best_image_native")},
    "model_mei_over_gabor_median": ("model_mei", "model_gabor"),
    "model_val_mei_over_gabor_median": ("model_mei_val", "model_gabor_val"),
}
# the MEI-vs-Gabor rate ratio each judge's interval verdict is read from
_VERDICT_RATIOS = {"gt": "gt_mei_over_gabor_rate_median", "model": "model_mei_over_gabor_median",
                   "model_val": "model_val_mei_over_gabor_median"}


def positive_ratios(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a / b`` over the cells where both are positive (above :data:`meiscope.comparison.ZERO`): ``(m,)``, m <= n."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = (a > ZERO) & (b > ZERO)
    return a[both] / b[both]


def _intervals(group: Any, suffix: str, settings: Any) -> dict[str, Any]:
    """``<figure>_ci_low<suffix>`` / ``_ci_high<suffix>`` of every bootstrapped figure over ``group``'s cells."""
    out: dict[str, Any] = {}
    for key in BOOTSTRAPPED:
        if key == "gt_frac_mei_beats_gabor":
            low, high = wilson_interval(int((group.mei_vs_gabor > 0).sum()), len(group), settings.confidence)
        elif key == "gt_mei_corr_median":
            low, high = bootstrap_median_interval(group.mei_truth_corr.to_numpy(), settings.confidence,
                                                  settings.n_bootstrap, settings.seed, bounds=(-1.0, 1.0))
        else:
            num, den = RATIO_FIGURES[key]
            # the rate of a budget-held stimulus cannot exceed the optimum's: the interval stays in (0, 1]
            ceiling = 1.0 if key in ("gt_mei_rate_ratio_median", "gt_mei_drive_ratio_median",
                                     "gt_gabor_rate_ratio_median", "gt_gabor_drive_ratio_median") else None
            low, high = bootstrap_median_interval(positive_ratios(group[num], group[den]), settings.confidence,
                                                  settings.n_bootstrap, settings.seed, log_scale=True,
                                                  bounds=(0.0, ceiling))
        out[f"{key}_ci_low{suffix}"], out[f"{key}_ci_high{suffix}"] = low, high
    return out


def _interval_verdicts(intervals: dict[str, Any], suffix: str, tolerance: float) -> dict[str, Any]:
    """Each judge's MEI-vs-Gabor verdict from its ratio's interval and the tie band, and whether the
    held-out model's agrees with the truth's (1 / 0; None when either has no verdict)."""
    out: dict[str, Any] = {}
    for judge, key in _VERDICT_RATIOS.items():
        out[f"{judge}_ci_verdict_mei_vs_gabor{suffix}"] = banded_verdict(
            intervals[f"{key}_ci_low{suffix}"], intervals[f"{key}_ci_high{suffix}"], tolerance)
    truth, model = out[f"gt_ci_verdict_mei_vs_gabor{suffix}"], out[f"model_val_ci_verdict_mei_vs_gabor{suffix}"]
    out[f"ci_verdicts_agree_mei_vs_gabor{suffix}"] = None if truth is None or model is None else int(truth == model)
    return out


def _kind_summary(group: Any, suffix: str, settings: Any) -> dict[str, Any]:
    """The figures of one group of selected cells (one kind, or all responsive ones)."""
    above = {s: group[f"true_rate_above_baseline_{s}"].to_numpy() for s in STIMULI}
    out: dict[str, Any] = {f"n{suffix}" if suffix else "n_responsive": int(len(group)),
                           f"gt_mei_corr_median{suffix}": float(np.median(group.mei_truth_corr))}
    for key, (num, den) in RATIO_FIGURES.items():
        out[f"{key}{suffix}"] = log_ratio_median(group[num].to_numpy(), group[den].to_numpy())
    for name in ("mei", "gabor", "best_image", "best_image_native"):
        out[f"gt_n_zero_rate_{name}{suffix}"] = int((above[name] <= 0).sum())
    for other in ("gabor", "best_image", "best_image_native"):
        c = compare(above["mei"], above[other])
        out.update({
            f"gt_frac_mei_beats_{other}{suffix}": c.frac_a_beats_b,
            f"gt_frac_{other}_beats_mei{suffix}": c.losses / c.n,
            f"gt_n_ties_mei_{other}{suffix}": c.ties,
            f"gt_n_both_zero_mei_{other}{suffix}": c.n_both_zero,
            f"gt_sign_p_mei_vs_{other}{suffix}": c.sign_p,
            f"gt_verdict_mei_vs_{other}{suffix}": c.verdict,
        })
    for prefix in ("model", "model_val"):  # what the models (optimisation / held-out) conclude
        wins, _, p, decision = verdict(group[f"{prefix}_mei_vs_gabor"].to_numpy())
        out[f"{prefix}_frac_mei_beats_gabor{suffix}"] = wins / len(group)
        out[f"{prefix}_sign_p_mei_vs_gabor{suffix}"] = p
        out[f"{prefix}_verdict_mei_vs_gabor{suffix}"] = decision
    intervals = _intervals(group, suffix, settings)
    out.update(intervals)
    out.update(_interval_verdicts(intervals, suffix, settings.tie_tolerance))
    return out


def _strict(summary: dict[str, Any]) -> dict[str, Any]:
    """Strict JSON has no NaN: an undefined figure (e.g. no cell that both stimuli drive) is null."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in summary.items()}


def summarise_validation(table: Any, settings: Any) -> dict[str, Any]:
    """Per-kind (and pooled responsive) figures of the closed loop over the selected cells; see the module
    docstring. ``settings``: :class:`meiscope.config.ValidateConfig` (intervals, seed, tie band)."""
    responsive = table[table.kind != UNRESPONSIVE]
    summary: dict[str, Any] = {"n_neurons": int(len(table)),
                               "n_unresponsive_selected": int((table.kind == UNRESPONSIVE).sum()),
                               "n_true_optimum_beaten": int(table.optimum_beaten.sum()),
                               "ci_confidence": float(settings.confidence), "n_bootstrap": int(settings.n_bootstrap),
                               "tie_tolerance": float(settings.tie_tolerance)}
    if len(responsive):
        summary.update(_kind_summary(responsive, "", settings))
    for kind in ordered_kinds(responsive.kind):
        summary.update(_kind_summary(responsive[responsive.kind == kind], f"_{kind}", settings))
    return _strict(summary)


# --------------------------------------------------------------------------------------
# the truth's own best natural scenes, over every truly responsive cell (no MEI needed)
# --------------------------------------------------------------------------------------
SCENE_QUANTITIES = ("drive", "rate_above_baseline")


def _all_responses(module: nn.Module, images: np.ndarray, device: Any, batch: int = 64) -> np.ndarray:
    """``(n_images, n_cells)`` float64: every cell's response to every image (model space ``(n_images, H, W)``)."""
    out = [responses.cpu().numpy() for _, responses in _batched_responses(module, images, device, batch)]
    return np.concatenate(out) if out else np.zeros((0, 0))


def best_scene_table(truth: dict[str, nn.Module], kinds: Sequence[str], cell_ids: np.ndarray, selected: np.ndarray,
                     scenes: np.ndarray, matched: np.ndarray, optima: np.ndarray, device: Any) -> Any:
    """Every cell's true response to its exact optimum and to its best natural scene, native and budget-matched.

    Args:
        truth: :class:`TrueNeuronsInModelSpace` for ``drive`` and ``rate_above_baseline``; column i = cell i.
        kinds, cell_ids: ``(n,)`` the cells (typically every truly responsive cell of the cortex).
        selected: ``(n,)`` bool, whether the ranking selected the cell.
        scenes: ``(m, H, W)`` the session's natural scenes in model space, as shown; matched: the same
            scenes projected to the MEI's budget.
        optima: ``(n, H, W)`` each cell's exact optimum under the budget.

    Returns:
        One row per cell: ``cell_id``, ``kind``, ``selected``, and ``true_<q>_<optimum | best_scene_native
        | best_scene_matched>`` for q in :data:`SCENE_QUANTITIES`. The best scene is the one of largest
        drive (the rate grows with the drive, so it is also the scene of largest rate).
    """
    import pandas as pd

    table = pd.DataFrame({"cell_id": np.asarray(cell_ids), "kind": list(kinds), "selected": np.asarray(selected, bool)})
    columns = np.arange(len(table))
    for label, images in (("native", scenes), ("matched", matched)):
        responses = {q: _all_responses(truth[q], images, device) for q in SCENE_QUANTITIES}
        best = responses["drive"].argmax(axis=0) if len(images) else columns
        for q in SCENE_QUANTITIES:
            table[f"true_{q}_best_scene_{label}"] = responses[q][best, columns]
    for q in SCENE_QUANTITIES:
        table[f"true_{q}_optimum"] = true_responses(truth[q], optima, device)
    return table


def summarise_best_scenes(table: Any) -> dict[str, Any]:
    """``n_truth_responsive``, ``n_truth_<kind>`` and the truth's best scene over the optimum, as
    ``gt_all_*`` over every truly responsive cell and ``gt_sel_*`` over the selected ones (pooled and per kind)."""
    table = table[table.kind != UNRESPONSIVE]
    out: dict[str, Any] = {"kinds": ordered_kinds(table.kind), "n_truth_responsive": int(len(table))}
    groups = [("", table)] + [(f"_{k}", table[table.kind == k]) for k in ordered_kinds(table.kind)]
    for suffix, group in groups:
        if suffix:
            out[f"n_truth{suffix}"] = int(len(group))
        for prefix, cells in (("gt_all", group), ("gt_sel", group[group.selected])):
            for scene in ("native", "matched"):
                for q, word in (("rate_above_baseline", "rate"), ("drive", "drive")):
                    out[f"{prefix}_best_scene_{scene}_{word}_ratio_median{suffix}"] = log_ratio_median(
                        cells[f"true_{q}_best_scene_{scene}"].to_numpy(), cells[f"true_{q}_optimum"].to_numpy())
    return _strict(out)


# --------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------
ZERO_BAND = 1.5  # how far beyond the ratio axis the "does not drive the cell" bands sit (log2 units)


def _log2_ratio_points(a: np.ndarray, b: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """``log2(a / b)`` clipped to +-limit where both are positive; where only b (a) is zero the point sits
    in a band above (below) the axis, where both are, at 0. Returns ``(y, both_positive)``."""
    a_pos, b_pos = a > 0, b > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.clip(np.where(a_pos & b_pos, np.log2(a / b), 0.0), -limit, limit)
    band = limit + ZERO_BAND
    return np.where(a_pos & ~b_pos, band, np.where(~a_pos & b_pos, -band, y)), a_pos & b_pos


def closed_loop_figure(table: Any, meis: np.ndarray, optima: np.ndarray, to_pixels: Any, n_show: int) -> Any:
    """Four panels: truth MEI vs Gabor per kind (log scale), distance to the optimum, model vs truth, images."""
    from matplotlib.figure import Figure

    kinds = ordered_kinds(table.kind)
    colors = {k: f"C{i}" for i, k in enumerate(kinds)}
    # drawn for a ~1000 px wide page at save_figure's 110 dpi: 9.5 in shows nearly 1:1, so 8 pt is ~12 px
    rows = min(n_show, 5)
    fig = Figure(figsize=(9.5, 6.8 if rows else 4.8))
    outer = fig.add_gridspec(2 if rows else 1, 1, height_ratios=[3.4, 1.4] if rows else None)
    panels = outer[0].subgridspec(1, 3, wspace=0.45)
    ax = fig.add_subplot(panels[0])
    limit = 4.0
    band = limit + ZERO_BAND
    for x, kind in enumerate(kinds):
        g = table[table.kind == kind]
        y, both = _log2_ratio_points(g.true_rate_above_baseline_mei.to_numpy(),
                                     g.true_rate_above_baseline_gabor.to_numpy(), limit)
        jitter = np.random.default_rng(x).uniform(-0.18, 0.18, len(y))
        ax.scatter(x + jitter[both], y[both], s=14, alpha=0.75, color=colors[kind])
        ax.scatter(x + jitter[~both], y[~both], s=22, marker="x", color="k")
        wins, n = int((g.mei_vs_gabor > 0).sum()), len(g)
        ax.text(x, -band - 0.9, f"MEI wins\n{wins}/{n}", ha="center", fontsize=8)
    ticks = np.arange(-limit, limit + 1, 1.0)
    ax.set_yticks([-band, *ticks, band], ["MEI 0", *[(f"{2 ** t:g}" if t >= 0 else f"1/{2 ** -t:g}")
                                                      for t in ticks], "Gabor 0"])
    for edge in (-limit - ZERO_BAND / 2, limit + ZERO_BAND / 2):
        ax.axhline(edge, color="0.7", lw=0.6)
    ax.axhline(0, color="k", lw=0.8, ls=":")
    ax.set_ylim(-band - 1.3, band + 0.5)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("true rate: MEI / optimal Gabor (log scale)", fontsize=9)
    ax.set_title("Truth: MEI vs optimal Gabor\n(x: one does not drive the cell)", fontsize=9)

    ax = fig.add_subplot(panels[1])
    names = (("mei", "MEI"), ("gabor", "optimal Gabor"), ("best_image", "best natural (at budget)"))
    for j, (name, label) in enumerate(names):
        data = [table.loc[table.kind == k, f"{name}_rate_ratio"].dropna().to_numpy() for k in kinds]
        positions = np.arange(len(kinds)) + (j - 1) * 0.27
        parts = ax.boxplot(data, positions=positions, widths=0.22, patch_artist=True, showfliers=False)
        for box in parts["boxes"]:
            box.set_facecolor(("tab:red", "tab:gray", "tab:olive")[j])
            box.set_alpha(0.6)
        ax.plot([], [], color=("tab:red", "tab:gray", "tab:olive")[j], lw=6, alpha=0.6, label=label)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("true rate / true optimum's", fontsize=9)
    ax.set_title("How close each stimulus gets\nto the true optimum", fontsize=9)
    ax.legend(fontsize=8, frameon=False, loc="lower left")

    ax = fig.add_subplot(panels[2])
    for kind in kinds:
        g = table[table.kind == kind]
        y, both = _log2_ratio_points(g.true_rate_above_baseline_mei.to_numpy(),
                                     g.true_rate_above_baseline_gabor.to_numpy(), limit)
        ax.scatter(np.log2(g.model_mei_over_gabor.to_numpy()[both]), y[both], s=12, alpha=0.75,
                   color=colors[kind], label=kind)
    ax.axhline(0, color="k", lw=0.8, ls=":")
    ax.axvline(0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("model: log2 MEI / optimal Gabor", fontsize=9)
    ax.set_ylabel("truth: log2 MEI / optimal Gabor", fontsize=9)
    ax.set_title("Does the model's conclusion\nhold in truth?", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    for a in fig.axes:
        a.tick_params(labelsize=8)

    strip = outer[1].subgridspec(1, 2 * rows, wspace=0.08) if rows else None
    for i in range(rows):
        for j, (image, label) in enumerate(((meis[i], "MEI"), (optima[i], "optimum"))):
            a = fig.add_subplot(strip[2 * i + j])
            a.imshow(np.clip(to_pixels(image), 0, 255), cmap="gray", vmin=0, vmax=255)
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(label, fontsize=8)
            if j == 0:
                a.set_xlabel(f"{table.kind.iloc[i]}\nr={table.mei_truth_corr.iloc[i]:.2f}", fontsize=8)
    fig.tight_layout()
    return fig
