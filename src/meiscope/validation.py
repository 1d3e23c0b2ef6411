"""The `validate` stage: the in-silico inception loop on synthetic sessions.

The MEIs, the optimal Gabors and each neuron's best natural image are shown to the TRUE
synthetic neurons, beside each neuron's true optimal stimulus under the same budget and pixel
range (and as many ascent steps as the MEIs). Real Allen sessions have no ground truth: the
stage writes a note and skips.

The truth is scored by each cell's stimulus DRIVE (its filter stage before the saturating
rate nonlinearity): rates saturate at a few times the natural peak, so rate ratios between
strong stimuli all tend to 1 and hide the differences. The true optimum is found by projected
gradient ascent on the drive, started from the cell's own filters (g1, g2, g1 + g2, g1 - g2 at
model resolution): with the truth known, no start has to be guessed.

Phase invariance: a complex (energy-model) cell responds equally to its optimum at any phase,
so the MEI is compared with the span of the true optimum ``O`` and its 90-degree phase-shifted
partner ``Q`` (a Hilbert transform along ``O``'s dominant spatial frequency). The score is the
norm of the centred, unit-norm MEI's projection onto the orthonormalised {O, Q}, which equals
``max over phi of corr(MEI, cos(phi) O + sin(phi) Q)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

PHASE_INVARIANT_KINDS = ("complex",)


class TrueNeuronsInModelSpace(nn.Module):
    """The ground-truth population seen through the model's pixel space.

    ``forward(images (N, 1, H, W) model space) -> (N, n_cells)``: the true drive (``drive=True``,
    unitless, non-saturating) or rate (Hz) of the given population columns, so that code written
    for models runs on the truth unchanged.
    """

    def __init__(self, population: nn.Module, columns: Sequence[int], pixel_mean: float, pixel_std: float,
                 drive: bool = True):
        super().__init__()
        self.population = population
        self.register_buffer("columns", torch.as_tensor(np.asarray(columns), dtype=torch.long))
        self.pixel_mean, self.pixel_std, self.use_drive = float(pixel_mean), float(pixel_std), drive

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images[:, 0] * self.pixel_std + self.pixel_mean
        out = self.population.drive(pixels) if self.use_drive else self.population(pixels)
        return out[:, self.columns]


def true_filter_starts(population: Any, columns: Sequence[int], image_shape: tuple[int, int]) -> np.ndarray:
    """Each cell's two filters at model resolution and their sum and difference: ``(n, 4, H, W)``."""
    import torch.nn.functional as F

    n = population.n_cells
    h, w = population.work_shape
    filters = population.filters.detach().cpu().reshape(2 * n, 1, h, w)
    small = F.interpolate(filters, size=tuple(image_shape), mode="area")[:, 0].numpy()
    cols = np.asarray(columns)
    g1, g2 = small[cols], small[cols + n]
    return np.stack([g1, g2, g1 + g2, g1 - g2], axis=1)


def true_optima(truth_model: nn.Module, starts: np.ndarray, norm: float, bounds: tuple[float, float],
                steps: int, lr: float, device: Any, progress: bool = False) -> np.ndarray:
    """Projected gradient ascent of each neuron's true drive under the MEI budget.

    Args:
        truth_model: :class:`TrueNeuronsInModelSpace` (drive mode), column i = neuron i.
        starts: ``(n, k, H, W)`` start directions per neuron (scaled onto the budget first).
        steps, lr: ascent steps on the mean-abs-normalised gradient (step size decays to lr / 10).

    Returns:
        ``(n, H, W)`` the best start's result per neuron (model space).
    """
    from tqdm import trange

    from meiscope.mei import normalise_gradient, project_to_budget

    n, k, height, width = starts.shape
    targets = torch.arange(n, device=device).repeat_interleave(k)
    x = project_to_budget(torch.as_tensor(starts, dtype=torch.float32, device=device).reshape(n * k, height, width),
                          norm, bounds)
    for t in trange(steps, desc="true optima", disable=not progress, leave=False):
        x.requires_grad_(True)
        drive = truth_model(x[:, None])[torch.arange(n * k, device=device), targets]
        (grad,) = torch.autograd.grad(drive.sum(), x)
        with torch.no_grad():
            step = lr * 0.1 ** (t / max(steps - 1, 1))
            x = project_to_budget(x + step * normalise_gradient(grad), norm, bounds)
    with torch.inference_mode():
        final = truth_model(x[:, None])[torch.arange(n * k, device=device), targets].reshape(n, k)
    best = final.argmax(dim=1)
    return x.detach().reshape(n, k, height, width)[torch.arange(n, device=device), best].cpu().numpy()


def quadrature_partner(image: np.ndarray) -> np.ndarray:
    """The image with every spatial frequency shifted by 90 degrees of phase.

    The sign of the shift follows the half-plane of the image's dominant frequency, which makes
    this the 2-D Hilbert transform that turns an even Gabor into the odd one. ``(H, W)`` -> ``(H, W)``.
    """
    spectrum = np.fft.fft2(image - image.mean())
    fy, fx = np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1]), indexing="ij")
    peak = np.unravel_index(np.argmax(np.abs(spectrum)), spectrum.shape)
    direction = np.array([fy[peak], fx[peak]])
    side = np.sign(fy * direction[0] + fx * direction[1])
    return np.real(np.fft.ifft2(-1j * side * spectrum))


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.ravel() - x.mean()
    n = np.linalg.norm(x)
    return x / n if n > 0 else x


def image_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images."""
    return float(_unit(a) @ _unit(b))


def phase_invariant_correlation(mei: np.ndarray, optimum: np.ndarray) -> float:
    """Largest correlation of ``mei`` with ``optimum`` shifted to any phase (see module docstring)."""
    o = _unit(optimum)
    q = _unit(quadrature_partner(optimum))
    q = q - (q @ o) * o  # Gram-Schmidt: numerically orthogonal partner
    q_norm = np.linalg.norm(q)
    m = _unit(mei)
    along_q = (m @ q) / q_norm if q_norm > 1e-8 else 0.0
    return float(np.hypot(m @ o, along_q))


def mei_truth_correlations(meis: np.ndarray, optima: np.ndarray, kinds: Sequence[str]) -> np.ndarray:
    """Per neuron: phase-invariant correlation for complex cells, plain correlation otherwise. ``(n,)``."""
    return np.array([phase_invariant_correlation(m, o) if k in PHASE_INVARIANT_KINDS else image_correlation(m, o)
                     for m, o, k in zip(meis, optima, kinds)])


def true_responses(truth_model: nn.Module, images: np.ndarray, device: Any, batch: int = 128) -> np.ndarray:
    """Response of neuron i to image i: ``images (n, H, W)`` model space -> ``(n,)`` (drive or rate)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = torch.as_tensor(images[start:start + batch], dtype=torch.float32, device=device)[:, None]
            rates = truth_model(x)
            idx = torch.arange(start, start + len(x), device=device)
            out.append(rates[torch.arange(len(x), device=device), idx].double().cpu().numpy())
    return np.concatenate(out)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a / np.maximum(b, 1e-9)


def summarise_validation(table: Any) -> dict[str, Any]:
    """Medians over neurons, overall and per cell kind, of the closed-loop comparisons."""
    columns = {"gt_mei_corr": "mei_truth_corr", "gt_mei_response_ratio": "mei_over_true_optimum",
               "gt_mei_over_gabor": "mei_over_gabor", "gt_mei_over_best_image": "mei_over_best_image",
               "gt_frac_mei_beats_gabor": "mei_beats_gabor"}
    summary: dict[str, Any] = {"n_neurons": int(len(table))}
    for key, column in columns.items():
        reducer = np.mean if key.startswith("gt_frac") else np.median
        summary[f"{key}_median" if not key.startswith("gt_frac") else key] = float(reducer(table[column]))
        for kind, group in table.groupby("kind"):
            name = f"{key}_median_{kind}" if not key.startswith("gt_frac") else f"{key}_{kind}"
            summary[name] = float(reducer(group[column]))
    summary.update({f"n_{kind}": int(n) for kind, n in table["kind"].value_counts().items()})
    return summary


def closed_loop_table(truth_drive: nn.Module, truth_rate: nn.Module, kinds: Sequence[str], cell_ids: np.ndarray,
                      meis: np.ndarray, gabors: np.ndarray, best_images: np.ndarray, optima: np.ndarray,
                      model_mei_over_gabor: np.ndarray, device: Any) -> Any:
    """True responses to every stimulus and the comparisons, one row per neuron.

    Ratios compare drives (see the module docstring); the rates (Hz) are kept beside them.

    Args:
        truth_drive, truth_rate: :class:`TrueNeuronsInModelSpace` in drive and in rate mode.
        meis, gabors, best_images, optima: ``(n_neurons, H, W)`` model-space images, row i for neuron i.
        model_mei_over_gabor: ``(n_neurons,)`` the model's predicted MEI / optimal-Gabor ratio.
    """
    import pandas as pd

    stimuli = {"mei": meis, "gabor": gabors, "best_image": best_images, "optimum": optima}
    drive = {name: true_responses(truth_drive, images, device) for name, images in stimuli.items()}
    rate = {name: true_responses(truth_rate, images, device) for name, images in stimuli.items()}
    r_mei, r_gabor, r_best, r_opt = drive["mei"], drive["gabor"], drive["best_image"], drive["optimum"]
    return pd.DataFrame({
        "cell_id": cell_ids, "kind": list(kinds),
        **{f"true_drive_{name}": values for name, values in drive.items()},
        **{f"true_rate_{name}": values for name, values in rate.items()},
        "mei_truth_corr": mei_truth_correlations(meis, optima, kinds),
        "mei_over_true_optimum": _ratio(r_mei, r_opt),
        "mei_over_gabor": _ratio(r_mei, r_gabor),
        "mei_over_best_image": _ratio(r_mei, r_best),
        "mei_beats_gabor": r_mei > r_gabor,
        "model_mei_over_gabor": model_mei_over_gabor,
        "model_says_mei_beats_gabor": model_mei_over_gabor > 1,
    })
