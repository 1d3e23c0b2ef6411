"""Most Exciting Inputs by gradient ascent on the model input (Walker et al. 2019).

The pieces are kept apart so each can be read (and swapped) on its own:

* **budget** -- :func:`~meiscope.insilico.budget.check_budget` and
  :func:`~meiscope.insilico.budget.project_to_budget`: every image has a fixed L2 norm in
  model space (whose zero is the mean gray) and lies inside the screen range.
* **objective** -- :func:`~meiscope.insilico.scoring.own_neuron_response`: image ``b`` is
  scored only on its own neuron, averaged over an ensemble of models.
* **parameterisation** -- :func:`start_state`: one free pixel image per (neuron, start), started
  from its own seeded noise.
* **preconditioning** -- :func:`blur_sigmas`, :func:`blur`, :func:`normalise_gradient`,
  :func:`roll_images` (jitter): what is done to the gradient (and the input) each step.
* **step sizes** -- :func:`step_levels`: each step moves an image by a fixed fraction of the
  budget's norm, halved per image whenever that image's objective stops rising.
* **loop** -- :func:`synthesize_meis`: one batched ascent for all neurons and all starts, each
  image with its own step size and its own convergence test.

Models are plain torch modules, ``model(images (N, 1, H, W)) -> (N, n_neurons)``, already on
``device``; nothing here depends on how they were trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm, trange

from meiscope.config import MeiConfig
from meiscope.insilico.budget import MeiError, check_budget, project_to_budget
from meiscope.insilico.scoring import LocalModel, check_models, check_neurons, eval_mode, own_neuron_response
from meiscope.insilico.similarity import phase_aware_consistency, seed_consistency


# --------------------------------------------------------------------------------------
# preconditioning: blur, normalise, jitter
# --------------------------------------------------------------------------------------
def blur_sigmas(start: float, end: float, steps: int) -> np.ndarray:
    """``(steps,)`` gradient-blur sigma (px), geometric from ``start`` to ``end``; all 0 if both are 0."""
    if start == 0 and end == 0:
        return np.zeros(steps)
    start, end = max(start, 0.01), max(end, 0.01)  # geometric decay needs positive ends
    frac = np.arange(steps) / max(steps - 1, 1)
    return start * (end / start) ** frac


def gaussian_kernel(sigma: float, device: torch.device | str) -> torch.Tensor | None:
    """1-D normalised Gaussian ``(2r+1,)`` with ``r = ceil(3 sigma)``; ``None`` (identity) for tiny sigma."""
    radius = math.ceil(3 * sigma)
    if sigma < 0.05 or radius == 0:
        return None
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def blur(images: torch.Tensor, kernel: torch.Tensor | None) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, H, W)`` images (replicate padding); identity for ``None``."""
    if kernel is None:
        return images
    radius = (kernel.numel() - 1) // 2
    x = F.pad(images.unsqueeze(1), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def normalise_gradient(grad: torch.Tensor) -> torch.Tensor:
    """Divide each ``(H, W)`` gradient of ``(N, H, W)`` by its L2 norm (an all-zero one stays 0).

    A unit direction per image, so that the step size alone sets how far an image moves: the
    mean-absolute-value normalisation of Walker et al. gives the same direction, but its step
    length grows as the gradient concentrates on fewer pixels (a small receptive field in a
    large image moved by many times the budget per step).
    """
    scale = grad.flatten(1).norm(dim=1)[:, None, None]
    return grad / scale.clamp_min(1e-30)


def blur_groups(grad: torch.Tensor, levels: torch.Tensor, kernels: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Blur each gradient ``(N, H, W)`` with the kernel of its own step level ``levels (N,)`` long."""
    present = torch.unique(levels).tolist()
    if len(present) == 1:  # the common case: no indexing
        return blur(grad, kernels[present[0]])
    out = torch.empty_like(grad)
    for level in present:
        rows = torch.nonzero(levels == level).flatten()
        out[rows] = blur(grad[rows], kernels[level])
    return out


# --------------------------------------------------------------------------------------
# step sizes: a fraction of the budget, halved on each plateau
# --------------------------------------------------------------------------------------
LEVEL_FACTOR = 0.5  # an image's step shrinks by this factor each time its objective stops rising


def step_levels(lr: float, lr_decay: float) -> np.ndarray:
    """``(n_levels,)`` step lengths as fractions of the budget norm: ``lr``, halved down to ``lr * lr_decay``.

    Why a fraction of the norm: the image lives on the sphere of radius ``norm`` (clipped to
    the screen), and a unit-norm ascent direction times ``lr * norm`` turns it by about ``lr``
    radians whatever the budget, the pixel scale or the image size. A fixed per-pixel step
    instead moves an image by a different share of its budget on every dataset (too far: it
    jumps about the optimum; too little: it ends below it).
    """
    n_halvings = math.ceil(math.log(lr_decay) / math.log(LEVEL_FACTOR) - 1e-9) if lr_decay < 1 else 0
    return np.maximum(lr * LEVEL_FACTOR ** np.arange(n_halvings + 1), lr * lr_decay)


def level_sigmas(blur_sigma: Sequence[float], n_levels: int) -> np.ndarray:
    """``(n_levels,)`` gradient-blur sigma (px) per step level: ``blur_sigma[0]`` at the first, ``[1]`` at the last.

    The last level's blur is the end one (by default 0.01 px, no blur), so an image converges to
    an optimum of the model itself, not of its blurred gradient.
    """
    if n_levels == 1:
        return np.array([float(blur_sigma[1])])
    return blur_sigmas(float(blur_sigma[0]), float(blur_sigma[1]), n_levels)


def roll_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circularly shift each image by its own ``(dy, dx)``: ``images (N, H, W)``, ``shifts (N, 2)`` long.

    ``out[b, i, j] = images[b, i - dy_b, j - dx_b]`` (like ``torch.roll``), differentiable.
    """
    n, height, width = images.shape
    rows = (torch.arange(height, device=images.device)[None, :] - shifts[:, :1]) % height  # (N, H)
    cols = (torch.arange(width, device=images.device)[None, :] - shifts[:, 1:]) % width  # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


# --------------------------------------------------------------------------------------
# the recipe and per-image randomness
# --------------------------------------------------------------------------------------
def _check_recipe(cfg: MeiConfig) -> None:
    # MeiConfig validates itself, but a caller may pass any object with these fields.
    for key in ("steps", "n_starts", "init_std", "converge_window"):
        if not getattr(cfg, key) > 0:
            raise MeiError(f"mei: '{key}' must be > 0 (got {getattr(cfg, key)})")
    for key in ("lr", "lr_decay"):
        if not 0 < getattr(cfg, key) <= 1:
            raise MeiError(f"mei: '{key}' must be in (0, 1] (got {getattr(cfg, key)})")
    if not 0 <= cfg.converge_tol < 1:
        raise MeiError(f"mei: 'converge_tol' must be in [0, 1) (got {cfg.converge_tol})")
    if len(cfg.blur_sigma) != 2 or min(cfg.blur_sigma) < 0:
        raise MeiError(f"mei: 'blur_sigma' must be [start, end] with both >= 0 (got {cfg.blur_sigma})")
    if cfg.jitter < 0:
        raise MeiError(f"mei: 'jitter' must be >= 0 (got {cfg.jitter})")


def start_state(seed: int, neuron: int, start: int, image_shape: tuple[int, int], init_std: float,
                steps: int, jitter: int) -> tuple[np.ndarray, np.ndarray]:
    """Initial noise ``(H, W)`` and jitter shifts ``(steps, 2)`` of one (neuron, start) image.

    Drawn from a generator seeded by ``(seed, neuron, start)`` alone, so an image starts and
    jitters the same whether it is optimised in a batch or by itself.
    """
    rng = np.random.default_rng([seed, neuron, start])
    init = rng.standard_normal(image_shape) * init_std
    shifts = rng.integers(-jitter, jitter + 1, size=(steps, 2)) if jitter > 0 else np.zeros((steps, 2), np.int64)
    return init.astype(np.float32), shifts


# --------------------------------------------------------------------------------------
# the optimisation loop
# --------------------------------------------------------------------------------------
@dataclass
class MeiResult:
    """MEIs of a set of neurons (numpy arrays, model space).

    Attributes:
        neuron_indices: ``(n_neurons,)`` model output column of each neuron.
        meis: ``(n_neurons, H, W)`` best start per neuron.
        all_starts: ``(n_neurons, n_starts, H, W)``.
        activations: ``(n_neurons,)`` ensemble-mean response to the MEI (optimisation models).
        start_activations: ``(n_neurons, n_starts)``.
        best_start: ``(n_neurons,)`` which start became the MEI.
        seed_consistency: ``(n_neurons,)`` mean pairwise correlation of the starts (NaN if 1 start).
        seed_consistency_phase: ``(n_neurons,)`` the same ignoring phase
            (:func:`meiscope.insilico.similarity.phase_aware_consistency`): equally good optima of a
            phase-invariant neuron at different phases are not counted as disagreement.
        history: ``(steps // 10, n_neurons)`` the highest activation the best start had scored
            by every 10th step (measured on the jittered input of each step, before its update;
            after a start has converged, its last value).
        steps_run: ``(n_neurons, n_starts)`` ascent steps each start took (fewer than
            ``cfg.steps`` where it converged first).
    """

    neuron_indices: np.ndarray
    meis: np.ndarray
    all_starts: np.ndarray
    activations: np.ndarray
    start_activations: np.ndarray
    best_start: np.ndarray
    seed_consistency: np.ndarray
    seed_consistency_phase: np.ndarray
    history: np.ndarray
    steps_run: np.ndarray


def synthesize_meis(models: Sequence[nn.Module], neuron_indices: Sequence[int], image_shape: tuple[int, int],
                    cfg: MeiConfig, norm: float, bounds: tuple[float, float], device: torch.device | str,
                    seed: int, progress: bool = True, max_batch: int | None = None) -> MeiResult:
    """MEIs of all ``neuron_indices`` in ONE batched gradient ascent (``n_neurons * n_starts`` images).

    Recipe (per step): jitter (optional) -> ensemble-mean response of each image for its own
    neuron -> gradient w.r.t. the image -> Gaussian blur -> divided by its L2 norm -> ascent
    step of length ``lr * norm`` times the image's step factor -> :func:`project_to_budget`.

    Step sizes and convergence, per image (:func:`step_levels`): every image starts with steps
    of ``cfg.lr * norm`` (a fixed share of the budget, whatever the image size or pixel scale)
    and the blur ``cfg.blur_sigma[0]``. Every ``cfg.converge_window`` steps it is tested: if its
    best objective rose by at most ``cfg.converge_tol`` (relative) over the window, its step
    is halved (down to ``cfg.lr * cfg.lr_decay * norm``, where the blur reaches
    ``cfg.blur_sigma[1]``) and it goes back to its best image; at the smallest step such a
    plateau means it has converged, and it stops. ``cfg.steps`` caps the steps of any image.
    Each image's MEI candidate is the better of its last image and the best one it scored.

    With ``cfg.window`` each model that knows its neurons' receptive fields
    (:class:`LocalModel`) runs only on the window its neuron depends on: the same objective and
    gradient (zero outside the window either way), on a fraction of the pixels. The budget,
    blur and step still act on the whole image, so the MEIs are those of the full-image ascent.

    Image ``b`` is scored only on its own neuron and the models run in eval mode, so its
    gradient depends on image ``b`` alone; its gradient normalisation, step size, blur and
    stopping are its own too. Its initial noise and its jitter (a circular shift of up to
    ``cfg.jitter`` px, drawn PER IMAGE per step) come from a generator seeded by
    ``(seed, neuron, start)`` (:func:`start_state`). Hence each MEI is the same whether its
    neuron is optimised with others or alone (:func:`synthesize_meis_looped`), up to float
    rounding of batched convolutions.

    Args:
        models: ensemble, each ``(N, 1, H, W) -> (N, n_neurons)`` on ``device``; run in eval
            mode here (their previous mode is restored).
        neuron_indices: ``(n_neurons,)`` output columns to optimise.
        image_shape: ``(H, W)`` model pixels.
        cfg: the recipe (``n_starts``, ``steps``, ``lr``, ``lr_decay``, ``blur_sigma``, ``jitter``,
            ``init_std``, ``window``, ``converge_tol``, ``converge_window``).
        norm: L2 budget per image in model space.
        bounds: ``(low, high)`` model-space screen range.
        device: torch device for the images.
        seed: base seed; image (neuron ``i``, start ``s``) uses ``(seed, i, s)``.
        progress: show a progress bar.
        max_batch: images per forward/backward pass (``None`` = all at once, best on a GPU). The
            images are independent, so chunking changes no result; on a CPU chunks of ~64 keep
            the activations in cache (1024 images at once cost ~1.5x more per image there).
            With windows it counts whole images' worth of pixels: as many windows go in a pass
            as hold the pixels of ``max_batch`` images.
    """
    models, image_shape, bounds, neurons = _check_inputs(models, neuron_indices, image_shape, cfg, norm, bounds,
                                                         device, seed, max_batch)
    x, shifts, targets = _initial_images(neurons, image_shape, cfg, seed, device)
    if max_batch is not None and cfg.window:
        max_batch = max_batch * _window_shrink(models, targets, image_shape)
    with eval_mode(models):
        x, history, state = _ascend(models, x, targets, shifts, cfg, norm, bounds, device, max_batch, progress)
        x, final = _final_images(models, x, state, targets, cfg.window, max_batch)
    return _collect(neurons, int(cfg.n_starts), x, final, history, state.steps_run)


# --------------------------------------------------------------------------------------
# the pieces of synthesize_meis: inputs, parameterisation, loop, result
# --------------------------------------------------------------------------------------
def _check_inputs(models: Sequence[nn.Module], neuron_indices: Sequence[int], image_shape: tuple[int, int],
                  cfg: MeiConfig, norm: float, bounds: tuple[float, float], device: torch.device | str, seed: int,
                  max_batch: int | None) -> tuple[list[nn.Module], tuple[int, int], tuple[float, float], np.ndarray]:
    """The checked inputs of :func:`synthesize_meis`: models, ``(H, W)``, ``(low, high)``, ``(n_neurons,)`` indices."""
    models = check_models(models)
    height, width = int(image_shape[0]), int(image_shape[1])
    low, high = check_budget(norm, bounds, (height, width))
    _check_recipe(cfg)
    if max_batch is not None and max_batch < 1:
        raise MeiError(f"mei: max_batch must be >= 1 or None (got {max_batch})")
    if int(seed) < 0:
        raise MeiError(f"mei: seed must be >= 0 (got {seed})")
    neurons = check_neurons(models, neuron_indices, (height, width), device)
    return models, (height, width), (low, high), neurons


def _initial_images(neurons: np.ndarray, image_shape: tuple[int, int], cfg: MeiConfig, seed: int,
                    device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The parameterisation: one free pixel image per (neuron, start), from its own seeded noise.

    Image ``b`` is (neuron ``b // n_starts``, start ``b % n_starts``). Returns the initial
    images ``(B, H, W)``, the jitter shifts ``(steps, B, 2)`` and each image's neuron ``(B,)``.
    """
    n_starts, steps = int(cfg.n_starts), int(cfg.steps)
    states = [start_state(int(seed), int(n), s, image_shape, cfg.init_std, steps, int(cfg.jitter))
              for n in neurons for s in range(n_starts)]
    x = torch.from_numpy(np.stack([init for init, _ in states])).to(device)
    shifts = torch.from_numpy(np.stack([sh for _, sh in states], axis=1)).to(device)  # (steps, B, 2)
    targets = torch.from_numpy(np.repeat(neurons, n_starts)).to(device)
    return x, shifts, targets


@dataclass
class _Progress:
    """Per-image state of the ascent (``B`` images): step level, best image scored, plateau checkpoint.

    Attributes:
        level: ``(B,)`` long, index into :func:`step_levels` of each image's current step.
        best: ``(B,)`` the highest objective each image has scored.
        best_x: ``(B, H, W)`` the image that scored it.
        checkpoint: ``(B,)`` ``best`` at the last convergence test.
        steps_run: ``(B,)`` long, steps each image took (the cap until it converges).
    """

    level: torch.Tensor
    best: torch.Tensor
    best_x: torch.Tensor
    checkpoint: torch.Tensor
    steps_run: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor, steps: int) -> "_Progress":
        """The state before the first step of the images ``x (B, H, W)``."""
        n = x.shape[0]
        lowest = torch.full((n,), -torch.inf, device=x.device)
        return cls(level=torch.zeros(n, dtype=torch.long, device=x.device), best=lowest, best_x=x.clone(),
                   checkpoint=lowest.clone(), steps_run=torch.full((n,), steps, dtype=torch.long, device=x.device))

    def record(self, active: torch.Tensor, x_active: torch.Tensor, activation: torch.Tensor) -> None:
        """Keep the images of ``active (A,)`` whose ``activation (A,)`` beats their best (``x_active (A, H, W)``)."""
        better = activation > self.best[active]
        self.best[active] = torch.where(better, activation, self.best[active])
        self.best_x[active[better]] = x_active[better]

    def test_plateaus(self, x: torch.Tensor, active: torch.Tensor, tol: float, last_level: int,
                      t: int) -> torch.Tensor:
        """The convergence test after step ``t`` of the images ``active (A,)``; returns those still ascending.

        An image whose best objective rose by at most ``tol`` (relative) since the last test has
        reached a plateau at its step size: it goes back to its best image with the next, smaller
        step; at the smallest step it has converged and stops (never with ``tol = 0``). Each
        image is tested on its own objective alone, so no image waits for, or stops with, another.
        """
        best = self.best[active]
        flat = best - self.checkpoint[active] <= tol * best.abs()
        self.checkpoint[active] = best
        at_end = self.level[active] == last_level
        done = flat & at_end if tol > 0 else torch.zeros_like(flat)
        slower = active[flat & ~at_end]
        self.level[slower] += 1
        x[slower] = self.best_x[slower]
        self.steps_run[active[done]] = t + 1
        return active[~done]


def _ascend(models: Sequence[nn.Module], x: torch.Tensor, targets: torch.Tensor, shifts: torch.Tensor,
            cfg: MeiConfig, norm: float, bounds: tuple[float, float], device: torch.device | str,
            max_batch: int | None, progress: bool) -> tuple[torch.Tensor, torch.Tensor, _Progress]:
    """The loop: preconditioned ascent of the images ``x (B, H, W)``, each held to the budget.

    Models in eval mode. Returns the last images ``(B, H, W)``, the best objective seen every 10
    steps ``(steps // 10, B)`` (NaN after an image stopped) and the per-image :class:`_Progress`.
    """
    steps, window = int(cfg.steps), int(cfg.converge_window)
    lengths = torch.as_tensor(step_levels(cfg.lr, cfg.lr_decay) * norm, dtype=x.dtype, device=device)
    kernels = [gaussian_kernel(float(s), device) for s in level_sigmas(cfg.blur_sigma, len(lengths))]
    history = torch.full((steps // 10, x.shape[0]), torch.nan, device=device)
    x = project_to_budget(x, norm, bounds)
    state = _Progress.start(x, steps)
    active = torch.arange(x.shape[0], device=device)  # images still ascending
    for t in trange(steps, disable=not progress, desc="MEI", leave=False):
        # while every image ascends, work on x itself rather than on an indexed copy
        every = active.numel() == x.shape[0]
        x_active = x if every else x[active]
        activation, grad = _ascent_direction(models, x_active, targets[active],
                                             shifts[t][active] if cfg.jitter > 0 else None,
                                             _chunks(len(active), max_batch), cfg.window)
        with torch.no_grad():
            state.record(active, x_active, activation)
            levels = state.level[active]
            grad = normalise_gradient(blur_groups(grad, levels, kernels))
            x_new = project_to_budget(x_active + lengths[levels][:, None, None] * grad, norm, bounds)
            x = x_new if every else x.index_copy(0, active, x_new)
            if (t + 1) % 10 == 0:
                history[t // 10, active] = state.best[active]
            if (t + 1) % window == 0:
                active = state.test_plateaus(x, active, float(cfg.converge_tol), len(lengths) - 1, t)
        if active.numel() == 0:
            break
    return x, history, state


def _final_images(models: Sequence[nn.Module], x: torch.Tensor, state: _Progress, targets: torch.Tensor,
                  window: bool, max_batch: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's MEI candidate: the better of its last image and its best scored one; ``(B, H, W)``, ``(B,)``.

    Both are scored afresh (without jitter), so the choice and the returned objective are exact.
    """
    n = x.shape[0]
    both, twice = torch.cat([x, state.best_x]), torch.cat([targets, targets])
    with torch.inference_mode():
        scored = torch.cat([own_neuron_response(models, both[part], twice[part], window)
                            for part in _chunks(2 * n, max_batch)])
    keep_last = scored[:n] >= scored[n:]
    return torch.where(keep_last[:, None, None], x, state.best_x), torch.maximum(scored[:n], scored[n:])


def _collect(neurons: np.ndarray, n_starts: int, x: torch.Tensor, final: torch.Tensor, history: torch.Tensor,
             steps_run: torch.Tensor) -> MeiResult:
    """The :class:`MeiResult` of the final images ``x (B, H, W)`` scored ``final (B,)``: the best start per neuron."""
    height, width = x.shape[-2:]
    all_starts = x.detach().cpu().numpy().reshape(len(neurons), n_starts, height, width)
    start_act = final.cpu().numpy().reshape(len(neurons), n_starts)
    best = start_act.argmax(axis=1)
    rows = np.arange(len(neurons))
    # a stopped image keeps its last activation in the later rows
    trace = _forward_fill(history.cpu().numpy()).reshape(-1, len(neurons), n_starts)[:, rows, best]
    return MeiResult(neuron_indices=neurons, meis=all_starts[rows, best], all_starts=all_starts,
                     activations=start_act[rows, best], start_activations=start_act, best_start=best,
                     seed_consistency=seed_consistency(all_starts),
                     seed_consistency_phase=phase_aware_consistency(all_starts), history=trace,
                     steps_run=steps_run.cpu().numpy().reshape(len(neurons), n_starts))


def _window_shrink(models: Sequence[nn.Module], targets: torch.Tensor, image_shape: tuple[int, int]) -> int:
    """How many receptive-field windows hold the pixels of one whole image (1 if any model lacks windows)."""
    pixels = image_shape[0] * image_shape[1]
    largest = 0
    for model in models:
        found = model.response_windows(targets[:1]) if isinstance(model, LocalModel) else None
        largest = max(largest, pixels if found is None else found[1][0] * found[1][1])
    return max(pixels // max(largest, 1), 1)


def _chunks(n: int, max_batch: int | None) -> list[slice]:
    """Slices of ``range(n)`` of at most ``max_batch`` (all at once for ``None``)."""
    size = max_batch or max(n, 1)
    return [slice(i, i + size) for i in range(0, n, size)]


def _forward_fill(rows: np.ndarray) -> np.ndarray:
    """``rows (T, B)`` with each NaN replaced by the last earlier value of its column (leading NaNs stay)."""
    filled = rows.copy()
    for t in range(1, len(filled)):
        gap = np.isnan(filled[t])
        filled[t, gap] = filled[t - 1, gap]
    return filled


def _ascent_direction(models: Sequence[nn.Module], x: torch.Tensor, targets: torch.Tensor,
                      shifts: torch.Tensor | None, chunks: list[slice],
                      window: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective ``(B,)`` and its raw gradient ``(B, H, W)`` w.r.t. the images, chunk by chunk."""
    activations, grads = [], []
    for part in chunks:
        images = x[part].detach().requires_grad_(True)
        seen = roll_images(images, shifts[part]) if shifts is not None else images
        activation = own_neuron_response(models, seen, targets[part], window)
        (grad,) = torch.autograd.grad(activation.sum(), images)
        activations.append(activation.detach())
        grads.append(grad)
    if len(chunks) == 1:
        return activations[0], grads[0]
    return torch.cat(activations), torch.cat(grads)


def synthesize_meis_looped(models: Sequence[nn.Module], neuron_indices: Sequence[int], image_shape: tuple[int, int],
                           cfg: MeiConfig, norm: float, bounds: tuple[float, float], device: torch.device | str,
                           seed: int, progress: bool = True) -> MeiResult:
    """Same as :func:`synthesize_meis`, one neuron at a time (reference for tests and the benchmark)."""
    neurons = np.asarray(neuron_indices)
    if neurons.ndim != 1 or neurons.size == 0:
        raise MeiError(f"mei: neuron_indices must be a non-empty 1-D sequence of integers (got {neuron_indices!r})")
    parts = [synthesize_meis(models, [int(n)], image_shape, cfg, norm, bounds, device, seed, progress=False)
             for n in tqdm(neurons, disable=not progress, desc="MEI (looped)", leave=False)]
    stacked = {name: np.concatenate([getattr(p, name) for p in parts], axis=1 if name == "history" else 0)
               for name in MeiResult.__dataclass_fields__}
    return MeiResult(**stacked)
