"""The ``rank`` stage: how reliably does each neuron respond to the natural scenes?

Every metric is a pure function of ``responses  # (n_trials, n_neurons)`` and
``trial_image  # (n_trials,)`` (the row of ``ResponseDataset.images`` shown on each trial) and
returns one value per neuron, ``(n_neurons,)``. Images may have unequal repeat counts; images
with no trial are ignored, and metrics that need repeats ignore images with a single trial.
A metric that is undefined for a neuron (e.g. a neuron whose response never changes) is NaN;
NaN never passes a threshold and ranks last.

The stage (:func:`run_rank`) scores every neuron, ranks them by ``RankConfig.metric``, keeps
those passing every threshold (then the best ``top_k``), and writes ``ranking.csv``, two figures
and a small metrics JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from meiscope.atomic import save_figure, write_json, write_text
from meiscope.config import RankConfig
from meiscope.dataset import ResponseDataset
from meiscope.errors import MeiscopeError
from meiscope.science import measures, stats

METRIC_COLUMNS = ("reliability", "explainable_var", "oracle_corr", "p_anova", "frac_sig_trials",
                  "peak_response")
ALLEN_COLUMNS = ("p_ns", "reliability_ns", "peak_dff_ns", "image_sel_ns")  # two-photon natural-scene metrics
RANKING_FILE = "ranking.csv"


class RankError(MeiscopeError, ValueError):
    """The responses cannot be ranked, or no neuron passes the rank thresholds."""


# --------------------------------------------------------------------------------------
# helpers: group the trials by image
# --------------------------------------------------------------------------------------
def _check_inputs(responses: np.ndarray, trial_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and values; return float64 responses and int trial_image."""
    responses = np.asarray(responses)
    trial_image = np.asarray(trial_image)
    if responses.ndim != 2:
        raise RankError(f"responses must be (n_trials, n_neurons), got shape {responses.shape}")
    if trial_image.shape != (responses.shape[0],):
        raise RankError(f"trial_image has shape {trial_image.shape}, expected ({responses.shape[0]},) "
                        "(one image per trial)")
    if trial_image.size and (not np.issubdtype(trial_image.dtype, np.integer) or trial_image.min() < 0):
        raise RankError("trial_image must hold non-negative integer image indices")
    bad = np.flatnonzero(~np.isfinite(responses).all(axis=0))
    if bad.size:
        raise RankError(f"responses of neurons (columns) {bad[:5].tolist()} contain NaN or inf")
    return responses.astype(np.float64, copy=False), trial_image.astype(np.int64, copy=False)


def _image_means(responses: np.ndarray, trial_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean response per image ``(n_images, n_neurons)`` (NaN for images without trials), counts."""
    sums, counts = measures.image_sums(responses, trial_image)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    return means, counts


def _need_repeats(counts: np.ndarray, minimum_images: int = 2) -> None:
    if int((counts >= 2).sum()) < minimum_images:
        raise RankError(f"need at least {minimum_images} images with >= 2 repeats to measure reliability "
                        f"(got {int((counts >= 2).sum())})")


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------
def split_half_reliability(responses: np.ndarray, trial_image: np.ndarray, n_splits: int = 50,
                           seed: int = 0) -> np.ndarray:
    """Spearman-Brown corrected split-half reliability of the image-mean responses.

    Per split, the repeats of every image (with >= 2 repeats) are shuffled and cut into two halves
    (``n // 2`` and ``n - n // 2`` trials); the two half-means are correlated across images
    (Pearson, per neuron) and corrected to full length with Spearman-Brown, ``2 r / (1 + r)``.
    The corrected values are averaged over ``n_splits`` seeded splits.

    With signal variance ``s2`` across images and noise variance ``n2`` per trial, R repeats:
    ``r = s2 / (s2 + 2 n2 / R)`` and the corrected value ``s2 / (s2 + n2 / R)`` (the reliability
    of the full R-repeat mean).

    Args:
        responses: ``(n_trials, n_neurons)`` single-trial responses (any unit, e.g. dF/F).
        trial_image: ``(n_trials,)`` image index of each trial.
        n_splits: number of random splits averaged.
        seed: seed of the splits.

    Returns:
        ``(n_neurons,)`` reliability, 1 for noiseless repeats, ~0 for pure noise (can be < 0).
    """
    responses, trial_image = _check_inputs(responses, trial_image)
    if n_splits < 1:
        raise RankError(f"n_splits must be >= 1 (got {n_splits})")
    counts = np.bincount(trial_image)
    _need_repeats(counts, minimum_images=3)  # a correlation across images needs >= 3 points
    keep = counts[trial_image] >= 2
    resp, img = responses[keep], trial_image[keep]
    order = np.argsort(img, kind="stable")
    resp, img = resp[order], img[order]  # trials grouped by image, contiguous
    used = np.flatnonzero(counts >= 2)
    n_per = counts[used]
    starts = np.concatenate([[0], np.cumsum(n_per)[:-1]])
    group = np.repeat(np.arange(len(used)), n_per)  # (n_kept_trials,) group of each sorted trial
    half = n_per // 2
    totals = np.add.reduceat(resp, starts, axis=0)  # (n_used_images, n_neurons)

    rng = np.random.default_rng(seed)
    corrected = np.zeros(responses.shape[1])
    for _ in range(n_splits):
        # random order within each image: sort by (group, random key)
        perm = np.lexsort((rng.random(len(group)), group))
        position = np.arange(len(group)) - starts[group]  # position in the shuffled group
        first = np.zeros(len(group), dtype=bool)
        first[perm[position < half[group]]] = True
        sum_a = np.add.reduceat(resp * first[:, None], starts, axis=0)
        mean_a = sum_a / half[:, None]
        mean_b = (totals - sum_a) / (n_per - half)[:, None]
        r = measures.pearson_columns(mean_a, mean_b)
        r = np.clip(r, -1 + 1e-9, 1.0)  # r = -1 would divide by zero below
        corrected += stats.spearman_brown(r)
    return corrected / n_splits


def explainable_variance_fraction(responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """Fraction of the single-trial variance that is stimulus-driven.

    ``(total_var - noise_var) / total_var``, clipped to [0, 1], where ``total_var`` is the
    variance of all single trials (ddof 1) and ``noise_var`` the across-repeat variance within
    an image, pooled over images with >= 2 repeats (each image weighted by its ``n - 1`` degrees
    of freedom, which is the plain mean over images when repeat counts are equal).
    With signal variance ``s2`` and noise variance ``n2`` this is about ``s2 / (s2 + n2)``.

    Args:
        responses: ``(n_trials, n_neurons)``; trial_image: ``(n_trials,)``.

    Returns:
        ``(n_neurons,)`` in [0, 1]; NaN for a neuron with zero variance.
    """
    responses, trial_image = _check_inputs(responses, trial_image)
    means, counts = _image_means(responses, trial_image)
    _need_repeats(counts)
    keep = counts[trial_image] >= 2
    resid = responses[keep] - means[trial_image[keep]]
    noise_var = (resid ** 2).sum(axis=0) / (counts[counts >= 2] - 1).sum()
    total_var = responses.var(axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = (total_var - noise_var) / total_var
    return np.where(total_var > 0, np.clip(frac, 0.0, 1.0), np.nan)


def oracle_correlation(responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """Leave-one-repeat-out oracle correlation (:func:`meiscope.science.measures.oracle_correlation`).

    Every trial (of an image with >= 2 repeats) is paired with the mean of the OTHER repeats of
    the same image; the pairs are correlated (Pearson) across all such trials, per neuron.

    Args:
        responses: ``(n_trials, n_neurons)``; trial_image: ``(n_trials,)``.

    Returns:
        ``(n_neurons,)`` correlation, 1 for noiseless repeats, ~0 for pure noise, NaN for a constant neuron.
    """
    responses, trial_image = _check_inputs(responses, trial_image)
    _need_repeats(np.bincount(trial_image))
    return measures.oracle_correlation(responses, trial_image)


def anova_p_value(responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """One-way ANOVA p-value across images per neuron (:func:`meiscope.science.stats.oneway_anova_p`;
    the numbers of scipy's f_oneway).

    Args:
        responses: ``(n_trials, n_neurons)``; trial_image: ``(n_trials,)``.

    Returns:
        ``(n_neurons,)`` p-value; 0 for noiseless image-dependent responses, NaN for a constant neuron.
    """
    responses, trial_image = _check_inputs(responses, trial_image)
    try:
        return stats.oneway_anova_p(responses, trial_image)
    except stats.StatisticsError as err:
        raise RankError(str(err)) from None


def frac_significant_trials(responses: np.ndarray, trial_image: np.ndarray, blank_responses: np.ndarray,
                            percentile: float = 95.0) -> np.ndarray:
    """Fraction of significant trials at each neuron's preferred image (after de Vries et al. 2020).

    A trial is significant when its response exceeds the ``percentile`` (default 95th) of the
    same neuron's responses to the blank (gray) presentations, i.e. p < 0.05 against the blank
    distribution. The preferred image is the one with the largest mean response. de Vries et al.
    call a cell responsive to natural scenes when this fraction exceeds 0.25.

    Args:
        responses: ``(n_trials, n_neurons)``; trial_image: ``(n_trials,)``.
        blank_responses: ``(n_blank_trials, n_neurons)`` responses to the blank, same unit.
        percentile: the blank percentile a significant trial must exceed (0-100).

    Returns:
        ``(n_neurons,)`` fraction in [0, 1].
    """
    responses, trial_image = _check_inputs(responses, trial_image)
    blank = np.asarray(blank_responses, dtype=np.float64)
    if blank.ndim != 2 or blank.shape[1] != responses.shape[1]:
        raise RankError(f"blank_responses must be (n_blank_trials, {responses.shape[1]}), got {blank.shape}")
    if blank.shape[0] == 0:
        raise RankError("no blank trials: frac_sig_trials needs responses to the blank presentations")
    if not 0 < percentile < 100:
        raise RankError(f"percentile must be in (0, 100) (got {percentile})")
    threshold = np.percentile(blank, percentile, axis=0)  # (n_neurons,)
    pref = preferred_image(responses, trial_image)
    at_pref = trial_image[:, None] == pref[None, :]  # (n_trials, n_neurons)
    significant = (responses > threshold) & at_pref
    return significant.sum(axis=0) / at_pref.sum(axis=0)


def peak_response(responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """Largest image-mean response ``(n_neurons,)``, in the unit of ``responses``."""
    responses, trial_image = _check_inputs(responses, trial_image)
    means, _ = _image_means(responses, trial_image)
    return np.nanmax(means, axis=0)


def preferred_image(responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """Image index (row of ``images``) with the largest mean response ``(n_neurons,)`` int."""
    responses, trial_image = _check_inputs(responses, trial_image)
    means, counts = _image_means(responses, trial_image)
    means[counts == 0] = -np.inf  # never prefer an image that was not shown
    return np.argmax(means, axis=0)


def image_selectivity(responses: np.ndarray, trial_image: np.ndarray, n_steps: int = 1000) -> np.ndarray:
    """Quian Quiroga et al. 2007's selectivity of the image-mean responses ``(n_neurons,)``, Allen's
    ``image_selectivity_ns``: 1 - 2 x the area under the fraction of images whose mean exceeds a threshold,
    over ``n_steps`` thresholds from the smallest mean upwards (0: every image alike; 1 - 2/n: one image
    only). NaN with fewer than 2 shown images; 0 for a neuron whose means are all equal.
    """
    responses, trial_image = _check_inputs(responses, trial_image)
    means, counts = _image_means(responses, trial_image)
    means = means[counts > 0]  # (n_shown, n_neurons)
    if means.shape[0] < 2:
        return np.full(responses.shape[1], np.nan)
    low, high = means.min(axis=0), means.max(axis=0)
    steps = np.arange(n_steps)[:, None] / n_steps  # (n_steps, 1): thresholds low + j (high - low) / n_steps
    out = np.empty(means.shape[1])
    for k in range(means.shape[1]):  # one neuron at a time: (n_steps, n_shown) stays small
        thresholds = low[k] + steps * (high[k] - low[k])
        out[k] = 1.0 - 2.0 * (means[None, :, k] > thresholds).mean() if high[k] > low[k] else 0.0
    return out


# --------------------------------------------------------------------------------------
# table, selection, comparisons
# --------------------------------------------------------------------------------------
def compute_metrics(ds: ResponseDataset, cfg: RankConfig) -> pd.DataFrame:
    """One row per cell: ``cell_id``, every metric of this module, the preferred image.

    Columns: cell_id, reliability, explainable_var, oracle_corr, p_anova, frac_sig_trials,
    peak_response, preferred_image (row of ``ds.images``), preferred_image_id (Allen template
    index). frac_sig_trials is NaN when the session has no blank trials; that is an error only if
    the config ranks or thresholds on it.
    """
    r, ti = ds.responses, ds.trial_image
    pref = preferred_image(r, ti)
    if ds.blank_responses.shape[0] == 0:
        if cfg.metric == "frac_sig_trials" or cfg.min_frac_sig_trials is not None:
            raise RankError(f"experiment {ds.experiment_id} has no blank trials; rank.metric / "
                            "rank.min_frac_sig_trials cannot use frac_sig_trials")
        frac_sig = np.full(ds.n_neurons, np.nan)
    else:
        frac_sig = frac_significant_trials(r, ti, ds.blank_responses)
    return pd.DataFrame({
        "cell_id": np.asarray(ds.cell_ids, dtype=np.int64),
        "reliability": split_half_reliability(r, ti, cfg.n_splits, cfg.seed),
        "explainable_var": explainable_variance_fraction(r, ti),
        "oracle_corr": oracle_correlation(r, ti),
        "p_anova": anova_p_value(r, ti),
        "frac_sig_trials": frac_sig,
        "peak_response": peak_response(r, ti),
        "preferred_image": pref,
        "preferred_image_id": np.asarray(ds.image_ids)[pref],
    })


def _threshold_masks(table: pd.DataFrame, cfg: RankConfig) -> dict[str, np.ndarray]:
    """``{'rank.key=value': passes (n_cells,) bool}`` for each threshold that is set (NaN fails)."""
    masks = {}
    if cfg.min_reliability is not None:
        masks[f"rank.min_reliability={cfg.min_reliability}"] = (
            table["reliability"].to_numpy() >= cfg.min_reliability)
    if cfg.max_p_anova is not None:
        masks[f"rank.max_p_anova={cfg.max_p_anova}"] = table["p_anova"].to_numpy() <= cfg.max_p_anova
    if cfg.min_frac_sig_trials is not None:
        masks[f"rank.min_frac_sig_trials={cfg.min_frac_sig_trials}"] = (
            table["frac_sig_trials"].to_numpy() >= cfg.min_frac_sig_trials)
    return masks


def select_neurons(table: pd.DataFrame, cfg: RankConfig) -> pd.DataFrame:
    """Add ``rank`` and ``selected``; return the table sorted by rank.

    ``rank``: 1 = largest ``cfg.metric``; ties go to the smaller cell_id (so the order does not
    depend on the row order), NaN ranks last. Ranks are unique (1..n_cells).
    ``selected``: the cell passes every threshold that is not None (reliability >=
    min_reliability, p_anova <= max_p_anova, frac_sig_trials >= min_frac_sig_trials), and is
    among the best ``top_k`` of the passing cells (all of them when top_k is None).
    """
    if cfg.metric not in table.columns:
        raise RankError(f"ranking table has no column {cfg.metric!r} (rank.metric)")
    out = table.copy()
    value = out[cfg.metric].to_numpy(dtype=np.float64)
    # lexsort: last key is primary -> NaN last, then metric descending, then cell_id ascending
    order = np.lexsort((out["cell_id"].to_numpy(), -np.nan_to_num(value, nan=0.0), np.isnan(value)))
    rank = np.empty(len(out), dtype=np.int64)
    rank[order] = np.arange(1, len(out) + 1)
    out["rank"] = rank
    passes = np.ones(len(out), dtype=bool)
    for mask in _threshold_masks(out, cfg).values():
        passes &= mask
    passing_ranks = np.sort(rank[passes])
    if cfg.top_k is not None and len(passing_ranks) > cfg.top_k:
        passes &= rank <= passing_ranks[cfg.top_k - 1]
    out["selected"] = passes
    return out.sort_values("rank").reset_index(drop=True)


@dataclass(frozen=True)
class AllenMetrics:
    """Allen's own metrics of a session's cells, to set beside meiscope's in the ranking table.

    Two-photon: rows of ``BrainObservatoryCache.get_cell_specimens()`` keyed by ``cell_specimen_id``
    (natural-scene metrics :data:`ALLEN_COLUMNS`); Neuropixels: the units keyed by ``unit_id`` (quality
    metrics, and the analysis metrics of :mod:`meiscope.recordings.neuropixels.unit_metrics`, with
    ``pref_image_ns`` the image it names). ``not_medians``: columns whose median over cells means
    nothing (a p-value, a position, an image label); the rank stage summarises them otherwise
    (:func:`allen_summaries`).
    """

    table: pd.DataFrame
    id_column: str = "cell_specimen_id"
    columns: tuple[str, ...] = ALLEN_COLUMNS
    not_medians: tuple[str, ...] = ()


# Allen's threshold of a significant receptive field (p_value_rf < 0.01; Siegle et al. 2021, Nature)
ALLEN_RF_P_VALUE = 0.01


def add_allen_counterparts(table: pd.DataFrame, ds: ResponseDataset,
                           allen_metrics: Optional[AllenMetrics]) -> pd.DataFrame:
    """meiscope's own figure beside each Allen figure that has none yet: ``image_selectivity``
    (:func:`image_selectivity`, beside ``allen_image_selectivity_ns``) when Allen gives one.

    ``table``: :func:`compute_metrics` of ``ds`` (rows in ``ds.cell_ids`` order). The preferred image
    (``preferred_image_id``, beside ``allen_pref_image_ns``) is always there.
    """
    if allen_metrics is None or "image_selectivity_ns" not in allen_metrics.columns:
        return table
    out = table.copy()
    out.insert(out.columns.get_loc("peak_response") + 1, "image_selectivity",
               image_selectivity(ds.responses, ds.trial_image))
    return out


def allen_summaries(chosen: pd.DataFrame) -> dict:
    """The figures of Allen's analysis metrics over the ``chosen`` (selected) cells that mean something.

    - ``allen_rf_significant_fraction``: share with ``allen_p_value_rf`` < :data:`ALLEN_RF_P_VALUE` (a NaN
      p-value, fewer than 10 spikes or a unit Allen does not list, is not significant);
    - ``pref_image_allen_agreement``: share of the cells with an Allen preferred image whose
      ``preferred_image_id`` (meiscope's) is the same image; ``n_pref_image_allen_compared`` those cells.

    Keys whose Allen column is absent are left out; a share over no cell is None.
    """
    out: dict = {}
    if "allen_p_value_rf" in chosen and len(chosen):
        p = chosen["allen_p_value_rf"].to_numpy(dtype=np.float64)
        out["allen_rf_significant_fraction"] = float(np.mean(np.nan_to_num(p, nan=1.0) < ALLEN_RF_P_VALUE))
    if "allen_pref_image_ns" in chosen:
        allen = chosen["allen_pref_image_ns"].to_numpy(dtype=np.float64)
        known = np.isfinite(allen)
        ours = chosen["preferred_image_id"].to_numpy(dtype=np.float64)
        out["n_pref_image_allen_compared"] = int(known.sum())
        out["pref_image_allen_agreement"] = float(np.mean(ours[known] == allen[known])) if known.any() else None
    return out


def join_allen_metrics(table: pd.DataFrame, allen_metrics: Optional[AllenMetrics]) -> pd.DataFrame:
    """Left-join Allen's metrics as ``allen_<column>`` on ``cell_id == allen_metrics.id_column``.

    None returns ``table`` unchanged. Cells Allen does not list get NaN.
    """
    if allen_metrics is None:
        return table
    key, columns = allen_metrics.id_column, allen_metrics.columns
    missing = [c for c in (key, *columns) if c not in allen_metrics.table.columns]
    if missing:
        raise RankError(f"Allen cell metrics table lacks columns {missing}")
    allen = allen_metrics.table.loc[:, [key, *columns]]
    dup = allen[key].duplicated()
    if dup.any():
        raise RankError(f"Allen cell metrics list {key} {allen[key][dup].iloc[:5].tolist()} more than once")
    allen = allen.rename(columns={c: f"allen_{c}" for c in columns})
    allen[key] = allen[key].astype(np.int64)
    for c in columns:  # Allen's JSON has None for missing values
        allen[f"allen_{c}"] = pd.to_numeric(allen[f"allen_{c}"], errors="coerce").astype(np.float64)
    merged = table.merge(allen, how="left", left_on="cell_id", right_on=key)
    return merged.drop(columns=key)


def score_against_truth(table: pd.DataFrame, responsive_ids: np.ndarray) -> dict:
    """Precision / recall of the ``selected`` column against the known responsive cells.

    Only responsive ids present in ``table`` count. Returns ``gt_precision`` (selected that are
    responsive / selected), ``gt_recall`` (responsive that are selected / responsive) and
    ``gt_n_responsive``; a ratio with a zero denominator is NaN.
    """
    responsive = np.isin(table["cell_id"].to_numpy(), np.asarray(responsive_ids, dtype=np.int64))
    selected = table["selected"].to_numpy(dtype=bool)
    hits = int((responsive & selected).sum())
    n_sel, n_resp = int(selected.sum()), int(responsive.sum())
    return {"gt_precision": hits / n_sel if n_sel else math.nan,
            "gt_recall": hits / n_resp if n_resp else math.nan,
            "gt_n_responsive": n_resp}


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------
def plot_reliability(table: pd.DataFrame, cfg: RankConfig, path: str | Path,
                     responsive_ids: Optional[np.ndarray] = None) -> None:
    """Stacked histograms of the ranking metric (and of the reliability) with the cut marked.

    Bars are split into selected / not selected, or, when ``responsive_ids`` (ground truth) is
    given, into responsive / unresponsive. The dashed line on the metric panel is the effective
    cut (lowest metric among selected cells); on the reliability panel it is rank.min_reliability.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [cfg.metric] if cfg.metric == "reliability" else [cfg.metric, "reliability"]
    if responsive_ids is not None:
        split = np.isin(table["cell_id"].to_numpy(), np.asarray(responsive_ids))
        labels = ("responsive (truth)", "unresponsive (truth)")
    else:
        split = table["selected"].to_numpy(dtype=bool)
        labels = ("selected", "not selected")
    selected = table["selected"].to_numpy(dtype=bool)
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 3.6), squeeze=False)
    for ax, col in zip(axes[0], columns):
        values = table[col].to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        if finite.any():
            bins = np.histogram_bin_edges(values[finite], bins=30)
            ax.hist([values[finite & split], values[finite & ~split]], bins=bins, stacked=True,
                    color=["tab:orange", "tab:gray"], label=list(labels))
        cut = None
        if col == cfg.metric and selected.any():
            cut = np.nanmin(values[selected])
        elif col == "reliability" and cfg.min_reliability is not None:
            cut = cfg.min_reliability
        if cut is not None:
            ax.axvline(cut, color="k", ls="--", lw=1, label=f"cut {cut:.3g}")
        ax.set_xlabel(col)
        ax.set_ylabel("cells")
        ax.legend(fontsize=8)
    fig.suptitle(f"rank: {int(selected.sum())} of {len(table)} cells selected by {cfg.metric}")
    fig.tight_layout()
    save_figure(fig, path)


def plot_tuning(ds: ResponseDataset, table: pd.DataFrame, path: str | Path, n: int = 12) -> None:
    """Grid of the top ``n`` selected cells' mean response per image (images sorted, +- SEM)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = table[table["selected"]].sort_values("rank").head(n)
    n_show = max(len(top), 1)
    ncols = min(4, n_show)
    nrows = int(math.ceil(n_show / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows + 0.4), squeeze=False)
    column = {int(c): i for i, c in enumerate(ds.cell_ids)}
    for ax in axes.ravel()[len(top):]:
        ax.axis("off")
    for ax, (_, row) in zip(axes.ravel(), top.iterrows()):
        r = ds.responses[:, column[int(row["cell_id"])]].astype(np.float64)[:, None]
        means, counts = _image_means(r, ds.trial_image)
        sq, _ = measures.image_sums((r - means[ds.trial_image]) ** 2, ds.trial_image)
        with np.errstate(invalid="ignore", divide="ignore"):
            sem = np.sqrt(sq[:, 0] / np.maximum(counts - 1, 1)) / np.sqrt(counts)
        shown = np.flatnonzero(counts > 0)
        order = shown[np.argsort(-means[shown, 0])]
        x = np.arange(len(order))
        ax.plot(x, means[order, 0], color="tab:blue", lw=1)
        ax.fill_between(x, means[order, 0] - sem[order], means[order, 0] + sem[order],
                        color="tab:blue", alpha=0.3, lw=0)
        ax.set_title(f"cell {int(row['cell_id'])} (#{int(row['rank'])})", fontsize=8)
        ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("images, sorted by mean response")
    axes[-1, 0].set_ylabel("mean response (+- SEM)")
    fig.suptitle(f"experiment {ds.experiment_id}: top {len(top)} selected cells")
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------
def _json_number(value: float) -> Optional[float]:
    """NaN is not valid JSON: write null instead."""
    value = float(value)
    return None if math.isnan(value) else value


def run_rank(ds: ResponseDataset, cfg: RankConfig, out_dir: Path, metrics_path: Path,
             allen_metrics: Optional[AllenMetrics] = None,
             truth_responsive_ids: Optional[np.ndarray] = None) -> dict:
    """Score, rank and select the neurons of one session.

    Writes ``out_dir/ranking.csv`` (one row per cell, sorted by rank: every metric, Allen's
    metrics when given, ``gt_responsive`` when the truth is given, ``rank``, ``selected``),
    ``out_dir/reliability.png``, ``out_dir/tuning.png`` and ``metrics_path`` (JSON).

    Returns:
        The metrics: n_cells, n_selected, metric, ``median_<column>`` over the selected cells for
        every metric (and Allen) column whose median means something (not ``allen_metrics.not_medians``,
        which :func:`allen_summaries` summarises instead), plus gt_precision / gt_recall /
        gt_n_responsive when ``truth_responsive_ids`` is given.

    Raises:
        RankError: if no cell passes the thresholds (nothing is written then).
    """
    out_dir = Path(out_dir)
    table = add_allen_counterparts(compute_metrics(ds, cfg), ds, allen_metrics)
    table = join_allen_metrics(table, allen_metrics)
    table = select_neurons(table, cfg)
    if not table["selected"].any():
        counts = ", ".join(f"{key}: {int(mask.sum())}/{len(table)} pass"
                           for key, mask in _threshold_masks(table, cfg).items())
        raise RankError(f"no cell of experiment {ds.experiment_id} passes the rank thresholds ({counts}); "
                        "relax rank.min_reliability / rank.max_p_anova / rank.min_frac_sig_trials in params.yaml")
    if truth_responsive_ids is not None:
        table.insert(len(table.columns) - 2, "gt_responsive",
                     np.isin(table["cell_id"].to_numpy(), np.asarray(truth_responsive_ids)))

    write_text(out_dir / RANKING_FILE, table.to_csv(index=False))
    plot_reliability(table, cfg, out_dir / "reliability.png", responsive_ids=truth_responsive_ids)
    plot_tuning(ds, table, out_dir / "tuning.png")

    chosen = table[table["selected"]]
    not_medians = {f"allen_{c}" for c in allen_metrics.not_medians} if allen_metrics is not None else set()
    medians = [c for c in table.columns if (c in METRIC_COLUMNS or c == "image_selectivity"
                                            or c.startswith("allen_")) and c not in not_medians]
    metrics: dict = {"n_cells": int(len(table)), "n_selected": int(len(chosen)), "metric": cfg.metric}
    for col in medians:
        values = chosen[col].to_numpy(dtype=np.float64)
        metrics[f"median_{col}"] = _json_number(np.nanmedian(values)) if np.isfinite(values).any() else None
    metrics.update(allen_summaries(chosen) if not_medians else {})
    if truth_responsive_ids is not None:
        score = score_against_truth(table, truth_responsive_ids)
        metrics.update({k: _json_number(v) if k != "gt_n_responsive" else v for k, v in score.items()})
    write_json(metrics_path, metrics)
    return metrics


def load_selected(out_dir: str | Path) -> np.ndarray:
    """Cell ids ``(n_selected,)`` int64 of the selected cells in ``out_dir/ranking.csv``, best first."""
    path = Path(out_dir) / RANKING_FILE
    if not path.is_file():
        raise RankError(f"{path}: no such ranking file (run `meiscope rank` first)")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise RankError(f"{path}: unreadable ranking file ({str(err).splitlines()[0]})") from None
    missing = [c for c in ("cell_id", "rank", "selected") if c not in table.columns]
    if missing:
        raise RankError(f"{path}: missing columns {missing}")
    chosen = table[table["selected"].astype(str).str.lower() == "true"].sort_values("rank")
    return chosen["cell_id"].to_numpy(dtype=np.int64)
