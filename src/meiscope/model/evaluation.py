"""Per-neuron prediction metrics (numpy) and batched prediction with trained models.

Conventions for every metric: ``pred`` is ``(n_images, n_neurons)`` indexed by image row;
``responses`` ``(n_trials, n_neurons)`` and ``trial_image`` ``(n_trials,)`` are the single
trials to score against (pass only the test trials to score on the test set). Images without
trials are ignored. The correlations are :mod:`meiscope.science.measures`' (NaN where a side is
constant); here a correlation where either side is constant is reported as 0 (the prediction
carries no information), so means over neurons never hit NaN.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from meiscope.science import measures


def _zero_if_undefined(corr: np.ndarray) -> np.ndarray:
    """This module's convention: an undefined correlation (a constant side, NaN) counts as 0."""
    return np.where(np.isnan(corr), 0.0, corr)


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`meiscope.science.measures.pearson_columns` of ``(n_samples, n)`` -> ``(n,)``, but 0 where
    a column is constant (not NaN: a prediction that does not vary carries no information)."""
    return _zero_if_undefined(measures.pearson_columns(a, b))


def image_means(responses: np.ndarray, trial_image: np.ndarray, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean response per image ``(n_images, n)`` (0 where no trial) and trials per image ``(n_images,)``."""
    responses = np.asarray(responses, dtype=np.float64)
    sums = np.zeros((n_images, responses.shape[1]))
    np.add.at(sums, trial_image, responses)
    counts = np.bincount(trial_image, minlength=n_images)
    return sums / np.maximum(counts, 1)[:, None], counts


def corr_to_average(pred: np.ndarray, responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """Correlation, across images, of the prediction with the mean over repeats ``(n_neurons,)``."""
    means, counts = image_means(responses, trial_image, pred.shape[0])
    shown = counts > 0
    return pearson_columns(pred[shown], means[shown])


def single_trial_corr(pred: np.ndarray, responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """Correlation, across single trials, of the prediction with each trial's response ``(n_neurons,)``."""
    return pearson_columns(pred[trial_image], responses)


def noise_variance(responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """Trial-to-trial variance around each image's mean, averaged over images ``(n_neurons,)``.

    Per image the unbiased variance over its repeats; images with a single trial are skipped.
    """
    n_images = int(trial_image.max()) + 1 if len(trial_image) else 0
    means, counts = image_means(responses, trial_image, n_images)
    resid = np.asarray(responses, dtype=np.float64) - means[trial_image]
    ss = np.zeros_like(means)
    np.add.at(ss, trial_image, resid ** 2)
    usable = counts > 1
    if not usable.any():
        return np.zeros(responses.shape[1])
    per_image = ss[usable] / (counts[usable] - 1)[:, None]
    return per_image.mean(axis=0)


def feve(pred: np.ndarray, responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """Fraction of explainable variance explained per neuron ``(n_neurons,)``.

    ``FEVE = 1 - (MSE - noise_var) / (total_var - noise_var)`` with MSE over single trials,
    total_var the variance over all trials and noise_var the mean within-image variance.
    ``pred`` must be in the responses' units (dF/F). The noise variance is clipped to the
    total variance; a neuron with no explainable variance left (noise >= total) gets NaN
    (FEVE is undefined there; use ``np.nanmedian`` for summaries). 1 = the true image means,
    0 = as good as predicting the overall mean, < 0 = worse.
    """
    responses = np.asarray(responses, dtype=np.float64)
    mse = ((responses - np.asarray(pred, dtype=np.float64)[trial_image]) ** 2).mean(axis=0)
    total = responses.var(axis=0, ddof=1)
    noise = np.minimum(noise_variance(responses, trial_image), total)
    explainable = total - noise
    ok = explainable > 1e-12 * np.maximum(total, 1e-30)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = 1.0 - (mse - noise) / explainable
    return np.where(ok, value, np.nan)


def oracle_corr(responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """Leave-one-out noise ceiling per neuron ``(n_neurons,)``
    (:func:`meiscope.science.measures.oracle_correlation`; 0 for a neuron constant over the trials).

    Correlation, across trials, of each trial with the mean of the *other* repeats of its
    image (images with a single trial are skipped). No model can predict single trials much
    better than this.
    """
    return _zero_if_undefined(measures.oracle_correlation(responses, trial_image))


def _as_models(models) -> list:
    members = getattr(models, "members", models)
    if isinstance(members, torch.nn.Module):
        return [members]
    return list(members)


def predict(models, images: np.ndarray, device: torch.device | str, batch: int = 256) -> np.ndarray:
    """Mean prediction of ``models`` in dF/F ``(n_images, n_neurons)``.

    ``models``: one :class:`~meiscope.model.network.ResponseModel`, a list of them or an
    :class:`~meiscope.model.ensemble.Ensemble`. ``images`` ``(n_images, H, W)``, model pixel space.
    Models are run in eval mode (mean readout positions, batch-norm running statistics);
    their previous train/eval mode is restored afterwards.
    """
    members = _as_models(models)
    if not members:
        raise ValueError("predict needs at least one model")
    device = torch.device(device)
    images = np.asarray(images, dtype=np.float32)
    modes = [m.training for m in members]
    out = []
    try:
        for m in members:
            m.eval()
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                x = torch.as_tensor(images[start:start + batch], device=device).unsqueeze(1)
                total = sum(m.to_dff(m(x)) for m in members)
                out.append(total / len(members))
        result = torch.cat(out).double().cpu().numpy() if out else np.zeros((0, members[0].n_neurons))
    finally:
        for m, mode in zip(members, modes):
            m.train(mode)
    return result


def summarize(values: np.ndarray | Sequence[float]) -> dict:
    """Mean / median / quartiles of a per-neuron metric, ignoring NaN (JSON-ready floats)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "median": None, "q25": None, "q75": None}
    return {"mean": float(v.mean()), "median": float(np.median(v)),
            "q25": float(np.quantile(v, 0.25)), "q75": float(np.quantile(v, 0.75))}


def finite_or_none(value: float) -> float | None:
    """A float for JSON, or None where it is NaN / inf."""
    return float(value) if np.isfinite(value) else None


def trial_mask(split_of_image: np.ndarray, trial_image: np.ndarray, names: Iterable[str]) -> np.ndarray:
    """``(n_trials,)`` bool: trials whose image is in one of the splits ``names``."""
    return np.isin(np.asarray(split_of_image)[trial_image], list(names))
