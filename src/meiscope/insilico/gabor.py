"""Gabor patches, the optimal-Gabor search and Gabor fits to MEIs (statistics: :mod:`meiscope.science.stats`).

Parameters of a Gabor, one row of ``params (n, 6)``, all in MODEL PIXELS (row/column index of
the model image, origin at the top-left pixel centre, y pointing down):

====  ==========  =====================================================================
col   name        meaning
====  ==========  =====================================================================
0     x           centre column (px)
1     y           centre row (px)
2     theta       direction of the carrier's wave vector (rad); 0 = luminance varies
                  along x (vertical stripes), pi/2 = along y. ``(theta + pi, phase)`` is
                  the same Gabor as ``(theta, -phase)``, so orientation lives in [0, pi).
3     wavelength  carrier period (px)
4     sigma       standard deviation of the isotropic Gaussian envelope (px)
5     phase       carrier phase at the centre (rad); 0 = bright centre (even/cosine)
====  ==========  =====================================================================

``G(r, c) = exp(-((c-x)^2 + (r-y)^2) / (2 sigma^2)) * cos(2 pi u / wavelength + phase)`` with
``u = (c-x) cos(theta) + (r-y) sin(theta)``; peak value 1 (before any norm matching). The
envelope is set to exactly 0 beyond 10 sigma (where it is below e^-50).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from meiscope.config import GaborConfig
from meiscope.errors import MeiscopeError
from meiscope.insilico.budget import check_budget, project_to_budget
from meiscope.insilico.scoring import check_models, check_neurons, eval_mode, own_neuron_response

PARAM_NAMES = ("x", "y", "theta", "wavelength", "sigma", "phase")


class GaborError(MeiscopeError, ValueError):
    """Bad input to the Gabor functions."""


@runtime_checkable
class TranslatableModel(Protocol):
    """A model that scores translated copies of an image from one pass (see :func:`shortcut_grid`)."""

    def translated_responses(self, canvases: torch.Tensor, anchor: tuple[float, float], neurons: torch.Tensor,
                             shifts: torch.Tensor) -> torch.Tensor | None: ...


# --------------------------------------------------------------------------------------
# Gabor images and the candidate grid
# --------------------------------------------------------------------------------------
def gabor_images(params: torch.Tensor | np.ndarray, image_shape: tuple[int, int],
                 device: torch.device | str) -> torch.Tensor:
    """``(n, H, W)`` Gabor patches from ``params (n, 6)`` (see the module docstring for units).

    Differentiable in ``params`` when it is a float32 tensor on ``device`` that requires grad.
    """
    params = torch.as_tensor(params, dtype=torch.float32, device=device)
    if params.ndim != 2 or params.shape[1] != len(PARAM_NAMES):
        raise GaborError(f"gabor: params must be (n, 6) {PARAM_NAMES} (got shape {tuple(params.shape)})")
    height, width = int(image_shape[0]), int(image_shape[1])
    x0, y0, theta, wavelength, sigma, phase = (p[:, None, None] for p in params.unbind(1))
    cols = torch.arange(width, dtype=torch.float32, device=device)[None, None, :]
    rows = torch.arange(height, dtype=torch.float32, device=device)[None, :, None]
    dx, dy = cols - x0, rows - y0
    along = dx * torch.cos(theta) + dy * torch.sin(theta)
    spread = (dx ** 2 + dy ** 2) / (2 * sigma ** 2)
    # Cut the envelope to exactly 0 beyond 10 sigma (e^-50): float32 denormals from exp
    # underflow make every later CPU operation on these images many times slower.
    envelope = torch.exp(-spread) * (spread < 50)
    return envelope * torch.cos(2 * math.pi * along / wavelength + phase)


def gabor_grid(cfg: GaborConfig, image_shape: tuple[int, int]) -> torch.Tensor:
    """``(n_candidates, 6)`` float32 grid of Gabor parameters (CPU).

    Centres on ``cfg.n_positions = [rows, cols]`` points spread evenly over the central
    +-0.35 of the image height / width; ``cfg.orientations`` angles ``k pi / n`` in [0, pi);
    ``cfg.wavelengths`` and ``cfg.sigmas`` (px); ``cfg.phases`` phases ``k 2 pi / n`` in [0, 2 pi).
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    n_rows, n_cols = cfg.n_positions

    def spread(n: int, size: int) -> np.ndarray:
        return (size - 1) / 2 + size * np.linspace(-0.35, 0.35, n) if n > 1 else np.array([(size - 1) / 2])

    axes = [spread(n_cols, width), spread(n_rows, height),
            np.arange(cfg.orientations) * np.pi / cfg.orientations,
            np.asarray(cfg.wavelengths, dtype=float), np.asarray(cfg.sigmas, dtype=float),
            np.arange(cfg.phases) * 2 * np.pi / cfg.phases]
    mesh = np.meshgrid(*axes, indexing="ij")
    return torch.from_numpy(np.stack([m.ravel() for m in mesh], axis=1).astype(np.float32))


def canonical_params(params: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(n, 6)`` copy with theta in [0, pi) and phase in [0, 2 pi) (same images)."""
    p = np.array(torch.as_tensor(params).detach().cpu().numpy(), dtype=np.float64)
    turns = np.floor(p[:, 2] / np.pi)  # how many half turns to remove
    p[:, 2] -= turns * np.pi
    odd = (turns % 2) == 1
    p[odd, 5] = -p[odd, 5]  # (theta + pi, phase) == (theta, -phase)
    p[:, 5] = np.mod(p[:, 5], 2 * np.pi)
    return p.astype(np.float32)


class _LocalParams:
    """Gabor params as ``base + step * u`` (log scale for wavelength and sigma) for Adam on ``u``.

    The per-column step makes one unit of ``u`` a comparable change: 1 px of position, 0.1 rad
    of orientation, 10% of wavelength / envelope, 0.2 rad of phase.
    """

    STEP = (1.0, 1.0, 0.1, 0.1, 0.1, 0.2)

    def __init__(self, start: torch.Tensor, image_shape: tuple[int, int]):
        self.base = start.clone()
        self.base[:, 3:5] = torch.log(start[:, 3:5])
        self.step = torch.tensor(self.STEP, dtype=start.dtype, device=start.device)
        size = float(max(image_shape))
        # keep wavelength in [2, 4 * size] px and sigma in [0.5, 2 * size] px
        self.log_low = torch.tensor([math.log(2.0), math.log(0.5)], device=start.device)
        self.log_high = torch.tensor([math.log(4 * size), math.log(2 * size)], device=start.device)
        self.u = torch.zeros_like(start, requires_grad=True)

    def params(self) -> torch.Tensor:
        raw = self.base + self.step * self.u
        scales = torch.minimum(torch.maximum(raw[:, 3:5], self.log_low), self.log_high).exp()
        return torch.cat([raw[:, :3], scales, raw[:, 5:]], dim=1)


# --------------------------------------------------------------------------------------
# optimal Gabor of model neurons
# --------------------------------------------------------------------------------------
@dataclass
class GaborResult:
    """Best norm-matched Gabor per neuron (numpy, model space).

    Attributes:
        neuron_indices: ``(n_neurons,)``.
        params: ``(n_neurons, 6)`` refined, canonical (theta in [0, pi), phase in [0, 2 pi)).
        images: ``(n_neurons, H, W)`` the Gabors projected to the MEI budget.
        activations: ``(n_neurons,)`` ensemble-mean response to ``images``.
        grid_params: ``(n_neurons, 6)`` best grid candidate before refinement.
        grid_activations: ``(n_neurons,)`` its response.
        n_candidates_evaluated: grid candidates scored (each scores every neuron at once).
        refine_steps_run: ``(n_neurons,)`` refinement steps before the neuron converged.
    """

    neuron_indices: np.ndarray
    params: np.ndarray
    images: np.ndarray
    activations: np.ndarray
    grid_params: np.ndarray
    grid_activations: np.ndarray
    n_candidates_evaluated: int
    refine_steps_run: np.ndarray


def optimal_gabors(models: Sequence[nn.Module], neuron_indices: Sequence[int], image_shape: tuple[int, int],
                   cfg: GaborConfig, norm: float, bounds: tuple[float, float], device: torch.device | str,
                   progress: bool = True, refine_lr: float = 0.2) -> GaborResult:
    """The Gabor each neuron responds to most, at the MEI norm budget and pixel range.

    1. Grid: the candidates of :func:`gabor_grid`, each drawn and projected to ``norm`` /
       ``bounds`` (:func:`meiscope.insilico.budget.project_to_budget`). With ``cfg.preselect > 0`` and
       models that allow it, :func:`shortcut_grid` ranks them all by translation and scores
       the best ``cfg.preselect`` per neuron exactly; otherwise :func:`exhaustive_grid` scores
       every candidate for every neuron. Either way the winner's response is exact.
    2. Refinement (:func:`refine_gabors`): ``cfg.refine_steps`` of Adam (cosine-decayed
       ``refine_lr``) on the 6 parameters of all neurons jointly (image ``b`` is neuron ``b``'s
       own Gabor), keeping the best parameters seen per neuron, so refinement never loses to
       the grid. With ``cfg.window`` the models see only each neuron's receptive-field window.

    Args:
        models: ensemble ``(N, 1, H, W) -> (N, n_neurons)`` on ``device``.
        neuron_indices: ``(n_neurons,)`` output columns.
        image_shape: ``(H, W)``.
        norm, bounds: the MEI budget (L2 norm, ``(low, high)`` model space).
    """
    models = check_models(models)
    height, width = int(image_shape[0]), int(image_shape[1])
    low, high = check_budget(norm, bounds, (height, width))
    neurons = check_neurons(models, neuron_indices, (height, width), device)
    cols = torch.from_numpy(neurons).to(device)
    grid = gabor_grid(cfg, (height, width)).to(device)

    best_idx, best_act = None, None
    if cfg.preselect > 0:
        best_idx, best_act = shortcut_grid(models, cols, grid, cfg, norm, (low, high), (height, width), progress)
    if best_idx is None:
        best_idx, best_act = exhaustive_grid(models, cols, grid, cfg, norm, (low, high), (height, width), progress)
    grid_params = grid[best_idx].clone()

    kept_params, kept_act, steps_run = refine_gabors(models, cols, grid_params, best_act, cfg, norm, (low, high),
                                                     (height, width), progress, refine_lr)
    with torch.inference_mode(), eval_mode(models):
        final = project_to_budget(gabor_images(kept_params, (height, width), device), norm, (low, high))
        final_act = own_neuron_response(models, final, cols, cfg.window)
    return GaborResult(neuron_indices=neurons, params=canonical_params(kept_params),
                       images=final.cpu().numpy(), activations=final_act.cpu().numpy(),
                       grid_params=canonical_params(grid_params), grid_activations=best_act.cpu().numpy(),
                       n_candidates_evaluated=int(len(grid)), refine_steps_run=steps_run.cpu().numpy())


def exhaustive_grid(models: Sequence[nn.Module], cols: torch.Tensor, grid: torch.Tensor, cfg: GaborConfig,
                    norm: float, bounds: tuple[float, float], image_shape: tuple[int, int],
                    progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every candidate drawn, projected to the budget and scored for all neurons: best ``(n,)`` index and response."""
    best_act = torch.full((len(cols),), -torch.inf, device=cols.device)
    best_idx = torch.zeros(len(cols), dtype=torch.long, device=cols.device)
    with torch.inference_mode(), eval_mode(models):
        for start in tqdm(range(0, len(grid), cfg.batch_size), disable=not progress, desc="Gabor grid", leave=False):
            images = project_to_budget(gabor_images(grid[start:start + cfg.batch_size], image_shape, cols.device),
                                       norm, bounds).unsqueeze(1)
            responses = sum(model(images)[:, cols] for model in models) / len(models)  # (batch, n_neurons)
            act, idx = responses.max(dim=0)
            better = act > best_act
            best_act = torch.where(better, act, best_act)
            best_idx = torch.where(better, idx + start, best_idx)
    return best_idx, best_act


def shortcut_grid(models: Sequence[nn.Module], cols: torch.Tensor, grid: torch.Tensor, cfg: GaborConfig,
                  norm: float, bounds: tuple[float, float], image_shape: tuple[int, int],
                  progress: bool) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """The grid ranked by translation, its ``cfg.preselect`` best per neuron scored exactly.

    The grid is every Gabor shape (orientation, wavelength, envelope, phase) at every position.
    The models' cores are translation-equivariant, so each shape is drawn once, centred on a
    canvas twice the image's size, and the core runs once per shape; each neuron then reads
    the response to every position off that feature map
    (:meth:`meiscope.model.network.ResponseModel.translated_responses`: positions rounded to
    whole pixels, image borders ignored). Those approximate responses only rank the
    candidates: the best ``cfg.preselect`` of each neuron are drawn in the image, projected to
    the budget and scored exactly, and the best of them is the neuron's grid winner.
    ``(None, None)`` when a model cannot take the shortcut.
    """
    height, width = image_shape
    n_positions = cfg.n_positions[0] * cfg.n_positions[1]
    shapes = grid[:len(grid) // n_positions, 2:]  # the grid lists every shape at one position, then the next
    centres = grid[::len(shapes), :2]  # (K, 2) as (x, y)
    anchor = (height - 1, width - 1)
    shifts = torch.stack([centres[:, 1], centres[:, 0]], dim=1).round()  # (K, 2) as (row, col)
    canvas = (2 * height - 1, 2 * width - 1)
    per_pass = max(1, cfg.batch_size * height * width // (canvas[0] * canvas[1]))  # as many pixels as batch_size images
    scores = torch.zeros(len(shapes), len(cols), n_positions, device=cols.device)  # (shape, neuron, position)
    with torch.inference_mode(), eval_mode(models):
        for start in tqdm(range(0, len(shapes), per_pass), disable=not progress, desc="Gabor grid", leave=False):
            part = shapes[start:start + per_pass]
            centre = torch.tensor(anchor[::-1], dtype=part.dtype, device=part.device)  # (x, y)
            centred = torch.cat([centre.expand(len(part), 2), part], dim=1)
            canvases = project_to_budget(gabor_images(centred, canvas, cols.device), norm, bounds).unsqueeze(1)
            for model in models:
                found = model.translated_responses(canvases, anchor, cols, shifts) \
                    if isinstance(model, TranslatableModel) else None
                if found is None:
                    return None, None
                scores[start:start + len(part)] += found / len(models)
        ranked = scores.permute(1, 2, 0).reshape(len(cols), -1)  # (neuron, candidate in grid order)
        top = ranked.topk(min(cfg.preselect, ranked.shape[1]), dim=1).indices  # (n, k)
        exact = _exact_responses(models, grid[top.flatten()], cols.repeat_interleave(top.shape[1]), norm, bounds,
                                 image_shape, cfg.window)
        best_act, best = exact.view(top.shape).max(dim=1)
    return top.gather(1, best[:, None])[:, 0], best_act


def _exact_responses(models: Sequence[nn.Module], params: torch.Tensor, targets: torch.Tensor, norm: float,
                     bounds: tuple[float, float], image_shape: tuple[int, int], window: bool,
                     chunk: int = 1024) -> torch.Tensor:
    """``(n,)`` response of each Gabor ``params (n, 6)``, drawn and projected, for its neuron ``targets (n,)``."""
    parts = []
    for i in range(0, len(params), chunk):
        images = project_to_budget(gabor_images(params[i:i + chunk], image_shape, targets.device), norm, bounds)
        parts.append(own_neuron_response(models, images, targets[i:i + chunk], window))
    return torch.cat(parts)


def refine_gabors(models: Sequence[nn.Module], cols: torch.Tensor, start: torch.Tensor, start_act: torch.Tensor,
                  cfg: GaborConfig, norm: float, bounds: tuple[float, float], image_shape: tuple[int, int],
                  progress: bool, lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam on the Gabor parameters ``start (n, 6)`` of every neuron; the best seen per neuron.

    Returns the best parameters ``(n, 6)``, their responses ``(n,)`` and the steps each
    neuron took ``(n,)``: a neuron stops when its best response grew by at most
    ``cfg.converge_tol`` (relative) over the last 10 steps.
    """
    local = _LocalParams(start, image_shape)
    optimiser = torch.optim.Adam([local.u], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(cfg.refine_steps, 1), eta_min=lr * 0.01)
    kept_params, kept_act = start.clone(), start_act.clone()
    steps_run = torch.full_like(cols, cfg.refine_steps)
    active = torch.arange(len(cols), device=cols.device)
    checkpoint = kept_act.clone()
    with eval_mode(models):
        for step in tqdm(range(cfg.refine_steps + 1), disable=not progress, desc="Gabor refine", leave=False):
            params = local.params()[active]
            images = project_to_budget(gabor_images(params, image_shape, cols.device), norm, bounds)
            act = own_neuron_response(models, images, cols[active], cfg.window)
            with torch.no_grad():  # keep the best parameters seen (the last pass only evaluates)
                better = act > kept_act[active]
                kept_act[active] = torch.where(better, act, kept_act[active])
                kept_params[active] = torch.where(better[:, None], params, kept_params[active])
            if step == cfg.refine_steps:
                break
            if cfg.converge_tol > 0 and step > 0 and step % 10 == 0:
                gain = kept_act[active] - checkpoint[active]
                moving = gain > cfg.converge_tol * kept_act[active].abs()
                steps_run[active[~moving]] = step
                checkpoint[active] = kept_act[active]
                act, active = act[moving], active[moving]
                if active.numel() == 0:
                    break
            # stopped rows get no gradient; Adam's momentum may still move them, unread
            (local.u.grad,) = torch.autograd.grad(-act.sum(), local.u)
            optimiser.step()
            schedule.step()
    return kept_params, kept_act, steps_run


# --------------------------------------------------------------------------------------
# least-squares Gabor fit to images (MEI-Gabor similarity)
# --------------------------------------------------------------------------------------
def _standardise(images: torch.Tensor) -> torch.Tensor:
    """``(n, P)`` zero-mean, unit-norm rows (all-constant rows stay 0)."""
    centred = images - images.mean(dim=1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)


def fit_gabor(targets: np.ndarray | torch.Tensor, cfg: GaborConfig, device: torch.device | str,
              lr: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares Gabor ``a * G(params) + b`` (free amplitude and offset) for each target image.

    Initialised from the grid candidate most correlated with the target (|correlation|, the
    sign goes into ``a``), then ``cfg.fit_steps`` of Adam on the parameters, minimising the
    squared error with ``a, b`` solved in closed form at every step (that error is
    ``||t - mean t||^2 (1 - corr(t, G)^2)``).

    Args:
        targets: ``(n, H, W)`` images, e.g. the MEIs.

    Returns:
        ``params (n, 6)`` canonical (``a > 0``: a negative amplitude is moved into the phase),
        ``images (n, H, W)`` the fitted ``a G + b``, ``corr (n,)`` correlation of each target with
        its fit (the MEI-Gabor similarity).
    """
    targets = torch.as_tensor(np.asarray(targets) if not torch.is_tensor(targets) else targets)
    if targets.ndim != 3 or targets.shape[0] == 0:
        raise GaborError(f"gabor: targets must be (n, H, W) with n > 0 (got shape {tuple(targets.shape)})")
    targets = targets.to(device=device, dtype=torch.float32)
    n, height, width = targets.shape
    flat = _standardise(targets.reshape(n, -1))
    grid = gabor_grid(cfg, (height, width)).to(device)

    best_corr = torch.full((n,), -1.0, device=device)
    best_idx = torch.zeros(n, dtype=torch.long, device=device)
    with torch.inference_mode():
        for start in range(0, len(grid), cfg.batch_size):
            cands = gabor_images(grid[start:start + cfg.batch_size], (height, width), device)
            cands = _standardise(cands.reshape(-1, height * width))
            corr, idx = (flat @ cands.T).abs().max(dim=1)
            better = corr > best_corr
            best_corr = torch.where(better, corr, best_corr)
            best_idx = torch.where(better, idx + start, best_idx)

    local = _LocalParams(grid[best_idx].clone(), (height, width))
    optimiser = torch.optim.Adam([local.u], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(cfg.fit_steps, 1), eta_min=lr * 0.01)
    kept_params, kept_r2 = grid[best_idx].clone(), best_corr ** 2
    for step in range(cfg.fit_steps + 1):
        params = local.params()
        r2 = ((flat * _standardise(gabor_images(params, (height, width), device).reshape(n, -1))).sum(1)) ** 2
        with torch.no_grad():
            better = r2 > kept_r2
            kept_r2 = torch.where(better, r2, kept_r2)
            kept_params = torch.where(better[:, None], params, kept_params)
        if step == cfg.fit_steps:
            break
        (local.u.grad,) = torch.autograd.grad((1 - r2).sum(), local.u)  # relative squared error
        optimiser.step()
        schedule.step()

    with torch.no_grad():
        g = gabor_images(kept_params, (height, width), device).reshape(n, -1)
        t = targets.reshape(n, -1)
        gc = g - g.mean(1, keepdim=True)
        amplitude = (gc * (t - t.mean(1, keepdim=True))).sum(1) / (gc * gc).sum(1).clamp_min(1e-12)
        offset = t.mean(1) - amplitude * g.mean(1)
        fitted = amplitude[:, None] * g + offset[:, None]
        corr = (_standardise(t) * _standardise(fitted)).sum(1)
        flip = amplitude < 0  # a G(phase) = (-a) G(phase + pi)
        kept_params[flip, 5] += math.pi
    return canonical_params(kept_params), fitted.reshape(n, height, width).cpu().numpy(), corr.cpu().numpy()
