"""Most Exciting Inputs by gradient ascent on the model input (Walker et al. 2019).

The pieces are kept apart so each can be read (and swapped) on its own:

* **budget** -- :func:`check_budget` and :func:`project_to_budget`: every image has a fixed L2
  norm in model space (whose zero is the mean gray) and lies inside the screen range.
* **objective** -- :func:`own_neuron_response`: image ``b`` is scored only on its own neuron,
  averaged over an ensemble of models.
* **preconditioning** -- :func:`blur_sigmas`, :func:`blur`, :func:`normalise_gradient`,
  :func:`roll_images` (jitter): what is done to the gradient (and the input) each step.
* **loop** -- :func:`synthesize_meis`: one batched SGD run for all neurons and all starts.

Models are plain torch modules, ``model(images (N, 1, H, W)) -> (N, n_neurons)``, already on
``device``; nothing here depends on how they were trained.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm, trange

from meiscope.config import MeiConfig
from meiscope.errors import MeiscopeError
from meiscope.similarity import phase_aware_consistency


class MeiError(MeiscopeError, ValueError):
    """Bad input to MEI synthesis (budget, neurons, models or recipe)."""


# --------------------------------------------------------------------------------------
# budget: fixed L2 norm + valid pixel range
# --------------------------------------------------------------------------------------
def check_budget(norm: float, bounds: tuple[float, float], image_shape: tuple[int, int]) -> tuple[float, float]:
    """Refuse a norm budget that cannot be met inside the pixel range; return ``(low, high)``.

    Args:
        norm: L2 norm of every image in model space (> 0).
        bounds: ``(low, high)`` model-space values of screen pixels 0 and 255; the mean gray
            (model-space 0) must lie strictly inside.
        image_shape: ``(H, W)``.

    Every image direction without zero pixels reaches ``norm`` inside the box iff
    ``norm < sqrt(H * W) * min(-low, high)`` (all pixels saturated at the nearer bound is the
    worst case), so that is the test.
    """
    if not (isinstance(norm, (int, float, np.floating, np.integer)) and math.isfinite(norm) and norm > 0):
        raise MeiError(f"mei: norm budget must be a finite number > 0 (got {norm!r})")
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise MeiError(f"mei: bounds must be (low, high) numbers (got {bounds!r})") from None
    if not (low < 0 < high):
        raise MeiError(f"mei: bounds must satisfy low < 0 < high so mean gray is on screen (got ({low}, {high}))")
    height, width = image_shape
    limit = math.sqrt(height * width) * min(-low, high)
    if norm >= limit:
        raise MeiError(f"mei: norm budget {norm:g} is not reachable inside bounds ({low:.3g}, {high:.3g}) "
                       f"for {height}x{width} images (must be < {limit:.4g})")
    return low, high


def _inward_bounds(low: float, high: float, dtype: torch.dtype) -> tuple[float, float]:
    """``low``/``high`` rounded to ``dtype`` towards zero, so clamped pixels never leave the range."""
    lo, hi = torch.tensor([low, high], dtype=dtype)
    if float(lo) < low:
        lo = torch.nextafter(lo, torch.tensor(0.0, dtype=dtype))
    if float(hi) > high:
        hi = torch.nextafter(hi, torch.tensor(0.0, dtype=dtype))
    return float(lo), float(hi)


def project_to_budget(images: torch.Tensor, norm: float, bounds: tuple[float, float]) -> torch.Tensor:
    """Scale each image, then clip it, so that it has L2 norm ``norm`` and lies in ``bounds``.

    Args:
        images: ``(..., H, W)`` model-space images (any leading shape).
        norm: target L2 norm per image (model space).
        bounds: ``(low, high)`` with ``low < 0 < high``.

    Returns:
        ``(..., H, W)`` images ``clip(s * x, low, high)`` with the per-image scale ``s > 0``
        chosen so that the *clipped* image has exactly the norm (float tolerance).

    Approach: alternating "scale to the norm" and "clip" only converges in the limit. Instead
    we solve for ``s`` exactly: ``||clip(s x)||^2`` is non-decreasing and piecewise quadratic in
    ``s``, with a breakpoint where each pixel hits its bound (``t_i = bound_i / |x_i|``). After
    sorting the breakpoints, ``f(s) = C_k + s^2 X_k`` on segment ``k`` (``C_k`` = squared bounds of
    the ``k`` clipped pixels, ``X_k`` = squared values of the rest); find the segment holding
    ``norm^2`` and solve the quadratic (float64). An image that cannot reach the norm (too many
    zero pixels) comes back saturated. Differentiable in ``images`` (the clipped set is held
    fixed, as it is almost everywhere).
    """
    if images.shape[-1] * images.shape[-2] == 0:
        return images
    low, high = float(bounds[0]), float(bounds[1])
    shape, dtype = images.shape, images.dtype
    x = images.reshape(-1, shape[-2] * shape[-1]).to(torch.float64)
    with torch.no_grad():
        scale, clipped = _solve_scale(x.detach(), float(norm) ** 2, low, high)
    if x.requires_grad:
        # Same value as ``scale`` but with the gradient of the norm constraint.
        cap2 = torch.where(x.detach() > 0, x.new_tensor(high * high), x.new_tensor(low * low))
        free = (x * x * (~clipped)).sum(1, keepdim=True)
        solvable = free.detach() > 0
        fixed = (cap2 * clipped).sum(1, keepdim=True)
        smooth = torch.sqrt((norm ** 2 - fixed).clamp_min(0) / torch.where(solvable, free, torch.ones_like(free)))
        scale = torch.where(solvable, smooth, scale)
    lo, hi = _inward_bounds(low, high, dtype)
    return (scale * x).to(dtype).clamp(lo, hi).reshape(shape)


def _solve_scale(x: torch.Tensor, target2: float, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale ``s`` (``(B, 1)``) with ``||clip(s x)||^2 = target2`` and the clipped mask ``(B, P)``."""
    mag = x.abs()
    nonzero = mag > 0
    cap = torch.where(x > 0, x.new_tensor(high), x.new_tensor(-low))
    breaks = torch.where(nonzero, cap / torch.where(nonzero, mag, torch.ones_like(mag)), torch.inf)
    # Rows that plain rescaling brings to the norm without clipping a pixel (segment k = 0) need
    # no sort: that is most rows at the default budget, and the sort dominated the cost.
    total2 = (mag * mag).sum(1, keepdim=True)
    plain = torch.sqrt(target2 / torch.where(total2 > 0, total2, torch.ones_like(total2)))
    fits = (total2 > 0) & (plain <= breaks.amin(1, keepdim=True))
    scale = plain.clone()
    rest = torch.nonzero(~fits[:, 0]).flatten()
    if len(rest):
        scale[rest] = _scale_by_segments(mag[rest], cap[rest], breaks[rest], target2)
    return scale, breaks <= scale


def _scale_by_segments(mag: torch.Tensor, cap: torch.Tensor, breaks: torch.Tensor, target2: float) -> torch.Tensor:
    """The general case of :func:`_solve_scale`: ``(B, 1)`` scales from the sorted breakpoints."""
    breaks_sorted, order = breaks.sort(dim=1)
    mag2 = mag.gather(1, order) ** 2
    cap2 = cap.gather(1, order) ** 2
    zero_col = torch.zeros_like(mag2[:, :1])
    clipped_sum = torch.cat([zero_col, cap2.cumsum(1)], 1)  # C_k, k = 0..P
    free_sum = torch.cat([mag2.flip(1).cumsum(1).flip(1), zero_col], 1)  # X_k, k = 0..P
    finite = torch.isfinite(breaks_sorted)
    at_break = torch.where(finite, clipped_sum[:, 1:] + torch.where(finite, breaks_sorted, 0.0) ** 2 * free_sum[:, 1:],
                           torch.inf)  # f(t_k): norm^2 when the k-th pixel just reaches its bound
    # keep the sequence monotone against rounding, as searchsorted requires
    at_break = torch.cummax(at_break, dim=1).values
    k = torch.searchsorted(at_break, torch.full_like(at_break[:, :1], target2), right=True)  # (B, 1)
    fixed = clipped_sum.gather(1, k)
    free = free_sum.gather(1, k)
    solvable = free > 0
    scale = torch.sqrt((target2 - fixed).clamp_min(0) / torch.where(solvable, free, torch.ones_like(free)))
    # Unreachable rows: saturate every non-zero pixel (largest finite breakpoint, or 0 if all zero).
    saturate = torch.where(finite, breaks_sorted, 0.0).amax(1, keepdim=True)
    return torch.where(solvable, scale, saturate)


# --------------------------------------------------------------------------------------
# objective
# --------------------------------------------------------------------------------------
@runtime_checkable
class LocalModel(Protocol):
    """A model that can say which image window each neuron's response depends on.

    :class:`meiscope.model.network.ResponseModel` is one; any other module is scored on the
    whole image.
    """

    def response_windows(self, neurons: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]] | None: ...

    def window_responses(self, crops: torch.Tensor, neurons: torch.Tensor,
                         origins: torch.Tensor) -> torch.Tensor: ...


def crop_windows(images: torch.Tensor, origins: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` window of each image ``(B, H, W)`` whose top-left pixel is ``origins (B, 2)`` ``(row, col)``.

    Differentiable: the gradient lands on the window's pixels of the full image.
    """
    rows = origins[:, :1] + torch.arange(size[0], device=images.device)  # (B, h)
    cols = origins[:, 1:] + torch.arange(size[1], device=images.device)  # (B, w)
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


def _window_response(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """``(N,)`` response of each image's own neuron computed on its receptive-field window only.

    ``None`` where the model cannot say (not a :class:`LocalModel`) or the window is the whole image.
    """
    if not isinstance(model, LocalModel):
        return None
    found = model.response_windows(targets)
    if found is None or found[1][0] * found[1][1] >= images.shape[-2] * images.shape[-1]:
        return None
    origins, size = found
    return model.window_responses(crop_windows(images, origins, size).unsqueeze(1), targets, origins)


def own_neuron_response(models: Sequence[nn.Module], images: torch.Tensor, targets: torch.Tensor,
                        window: bool = False) -> torch.Tensor:
    """Ensemble-mean response of each image for its own neuron.

    Args:
        models: modules mapping ``(N, 1, H, W) -> (N, n_neurons)``, in eval mode.
        images: ``(N, H, W)`` model-space images.
        targets: ``(N,)`` long, the neuron (model output column) of each image.
        window: run each :class:`LocalModel` only on the window its neuron depends on (the same
            value and gradient, far fewer pixels); other models see the whole image.

    Returns:
        ``(N,)`` mean over ``models`` of ``response[b, targets[b]]``.
    """
    rows = torch.arange(images.shape[0], device=images.device)
    total = None
    for model in models:
        picked = _window_response(model, images, targets) if window else None
        if picked is None:
            out = model(images.unsqueeze(1))
            if out.ndim != 2 or out.shape[0] != images.shape[0]:
                raise MeiError(f"mei: a model returned shape {tuple(out.shape)}; "
                               f"expected (N, n_neurons) for N={images.shape[0]}")
            picked = out[rows, targets]
        total = picked if total is None else total + picked
    return total / len(models)


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
    """Divide each ``(H, W)`` gradient of ``(N, H, W)`` by its mean absolute value (an all-zero one stays 0)."""
    scale = grad.abs().mean(dim=(1, 2), keepdim=True)
    return grad / scale.clamp_min(1e-30)


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
# checks and per-image randomness
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def eval_mode(models: Sequence[nn.Module]) -> Iterator[None]:
    """Put every model in eval mode (batch norm on running stats, no dropout); restore afterwards.

    Eval mode is what makes image ``b``'s gradient depend on image ``b`` alone, so a batch of
    images for many neurons is the same as optimising each image by itself.
    """
    previous = [[m.training for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for model, flags in zip(models, previous):
            for module, flag in zip(model.modules(), flags):
                module.training = flag


def check_models(models: Sequence[nn.Module]) -> list[nn.Module]:
    """Refuse an empty model list or non-modules; return the models as a list."""
    models = list(models) if models is not None else []
    if not models:
        raise MeiError("mei: the model list is empty (need at least one model to optimise on)")
    for i, model in enumerate(models):
        if not isinstance(model, nn.Module):
            raise MeiError(f"mei: models[{i}] is a {type(model).__name__}, not a torch.nn.Module")
    return models


def check_neurons(models: Sequence[nn.Module], neuron_indices: Sequence[int], image_shape: tuple[int, int],
                  device: torch.device | str) -> np.ndarray:
    """``(n,)`` int array of neuron indices, checked against the models' output width."""
    neurons = np.asarray(neuron_indices)
    if neurons.ndim != 1 or neurons.size == 0 or not np.issubdtype(neurons.dtype, np.integer):
        raise MeiError(f"mei: neuron_indices must be a non-empty 1-D sequence of integers (got {neuron_indices!r})")
    with torch.inference_mode(), eval_mode(models):
        probe = torch.zeros(1, 1, *image_shape, device=device)
        widths = {int(model(probe).shape[-1]) for model in models}
    if len(widths) != 1:
        raise MeiError(f"mei: the models disagree on the number of neurons ({sorted(widths)})")
    (width,) = widths
    bad = neurons[(neurons < 0) | (neurons >= width)]
    if bad.size:
        raise MeiError(f"mei: neuron index {int(bad[0])} is out of range for models with {width} neurons")
    return neurons.astype(np.int64)


def _check_recipe(cfg: MeiConfig) -> None:
    # MeiConfig validates itself, but a caller may pass any object with these fields.
    for key in ("steps", "n_starts", "lr", "init_std"):
        if not getattr(cfg, key) > 0:
            raise MeiError(f"mei: '{key}' must be > 0 (got {getattr(cfg, key)})")
    if not 0 < cfg.lr_decay <= 1:
        raise MeiError(f"mei: 'lr_decay' must be in (0, 1] (got {cfg.lr_decay})")
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
            (:func:`meiscope.similarity.phase_aware_consistency`): equally good optima of a
            phase-invariant neuron at different phases are not counted as disagreement.
        history: ``(steps // 10, n_neurons)`` activation of the best start every 10 steps
            (measured on the jittered input of that step, before its update; after a start
            has converged, its last value).
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

    Recipe (per step ``t``): jitter (optional) -> ensemble-mean response of each image for its
    own neuron -> gradient w.r.t. the image -> Gaussian blur (sigma ``cfg.blur_sigma[0] ->
    [1]``, geometric) -> divide by mean |gradient| per image -> SGD ascent step with size
    ``cfg.lr * cfg.lr_decay ** (t / (steps - 1))`` -> :func:`project_to_budget`.

    Every 10 steps, a start whose step moved it by less than ``cfg.converge_tol`` (relative L2
    change of the image) has converged: the projection onto the budget undoes its ascent
    step, and it stops there (``converge_tol = 0``: every start runs all steps). The
    activation is no test of convergence here: under the decaying step size it stalls for
    tens of steps while large steps overshoot, and climbs again once they shrink.
    With ``cfg.window`` each model that knows its neurons' receptive fields
    (:class:`LocalModel`) runs only on the window its neuron depends on: the same objective and
    gradient (zero outside the window either way), on a fraction of the pixels. The budget,
    blur and step still act on the whole image, so the MEIs are those of the full-image ascent.

    Image ``b`` is scored only on its own neuron and the models run in eval mode, so its
    gradient depends on image ``b`` alone. Its initial noise and its jitter (a circular shift of
    up to ``cfg.jitter`` px, drawn PER IMAGE per step) come from a generator seeded by
    ``(seed, neuron, start)`` (:func:`start_state`). Hence each MEI is the same whether its
    neuron is optimised with others or alone (:func:`synthesize_meis_looped`), up to float
    rounding of batched convolutions.

    Args:
        models: ensemble, each ``(N, 1, H, W) -> (N, n_neurons)`` on ``device``; run in eval
            mode here (their previous mode is restored).
        neuron_indices: ``(n_neurons,)`` output columns to optimise.
        image_shape: ``(H, W)`` model pixels.
        cfg: the recipe (``n_starts``, ``steps``, ``lr``, ``lr_decay``, ``blur_sigma``, ``jitter``,
            ``init_std``).
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
    models = check_models(models)
    height, width = int(image_shape[0]), int(image_shape[1])
    low, high = check_budget(norm, bounds, (height, width))
    _check_recipe(cfg)
    if max_batch is not None and max_batch < 1:
        raise MeiError(f"mei: max_batch must be >= 1 or None (got {max_batch})")
    if int(seed) < 0:
        raise MeiError(f"mei: seed must be >= 0 (got {seed})")
    neurons = check_neurons(models, neuron_indices, (height, width), device)
    n_starts, steps = int(cfg.n_starts), int(cfg.steps)

    # image b = (neuron b // n_starts, start b % n_starts)
    states = [start_state(int(seed), int(n), s, (height, width), cfg.init_std, steps, int(cfg.jitter))
              for n in neurons for s in range(n_starts)]
    x = torch.from_numpy(np.stack([init for init, _ in states])).to(device)
    shifts = torch.from_numpy(np.stack([sh for _, sh in states], axis=1)).to(device)  # (steps, B, 2)
    targets = torch.from_numpy(np.repeat(neurons, n_starts)).to(device)
    kernels = [gaussian_kernel(float(s), device) for s in blur_sigmas(*cfg.blur_sigma, steps)]
    step_sizes = cfg.lr * cfg.lr_decay ** (np.arange(steps) / max(steps - 1, 1))
    history = torch.full((steps // 10, x.shape[0]), torch.nan, device=device)
    steps_run = torch.full((x.shape[0],), steps, dtype=torch.long, device=device)
    active = torch.arange(x.shape[0], device=device)  # images still ascending

    if max_batch is not None and cfg.window:
        max_batch = max_batch * _window_shrink(models, targets, (height, width))

    with eval_mode(models):
        x = project_to_budget(x, norm, (low, high))
        for t in trange(steps, disable=not progress, desc="MEI", leave=False):
            every = active.numel() == x.shape[0]
            x_active = x if every else x[active]
            activation, grad = _ascent_direction(models, x_active, targets[active],
                                                 shifts[t][active] if cfg.jitter > 0 else None,
                                                 _chunks(len(active), max_batch), cfg.window)
            with torch.no_grad():
                grad = normalise_gradient(blur(grad, kernels[t]))
                x_new = project_to_budget(x_active + float(step_sizes[t]) * grad, norm, (low, high))
                x = x_new if every else x.index_copy(0, active, x_new)
                if (t + 1) % 10 == 0:
                    history[t // 10, active] = activation
                    if cfg.converge_tol > 0:
                        moving = _relative_change(x_new, x_active) >= cfg.converge_tol
                        steps_run[active[~moving]] = t + 1
                        active = active[moving]
            if active.numel() == 0:
                break
        with torch.inference_mode():
            final = torch.cat([own_neuron_response(models, x[part], targets[part], cfg.window)
                               for part in _chunks(len(x), max_batch)])

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


def _relative_change(after: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ``||after - before|| / ||before||`` per image of ``(B, H, W)``."""
    return (after - before).flatten(1).norm(dim=1) / before.flatten(1).norm(dim=1).clamp_min(1e-30)


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


def seed_consistency(all_starts: np.ndarray) -> np.ndarray:
    """``(n_neurons,)`` mean pairwise Pearson correlation between the starts ``(n_neurons, n_starts, H, W)``."""
    n_neurons, n_starts = all_starts.shape[:2]
    if n_starts < 2:
        return np.full(n_neurons, np.nan)
    flat = all_starts.reshape(n_neurons, n_starts, -1).astype(np.float64)
    flat = flat - flat.mean(axis=2, keepdims=True)
    flat /= np.maximum(np.linalg.norm(flat, axis=2, keepdims=True), 1e-12)
    corr = flat @ flat.transpose(0, 2, 1)  # (n_neurons, n_starts, n_starts)
    upper = np.triu_indices(n_starts, k=1)
    return corr[:, upper[0], upper[1]].mean(axis=1)


# --------------------------------------------------------------------------------------
# scoring images
# --------------------------------------------------------------------------------------
def _as_images(images: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    images = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if images.ndim != 3:
        raise MeiError(f"mei: images must be (n, H, W) (got shape {tuple(images.shape)})")
    return images.to(device=device, dtype=torch.float32)


def score_images(models: Sequence[nn.Module], images: np.ndarray | torch.Tensor, neuron_indices: Sequence[int],
                 device: torch.device | str, batch: int = 256) -> np.ndarray:
    """``(n,)`` ensemble-mean response of each image ``(n, H, W)`` for its own neuron ``neuron_indices (n,)``."""
    models = check_models(models)
    images = _as_images(images, device)
    neurons = check_neurons(models, neuron_indices, tuple(images.shape[1:]), device)
    if len(neurons) != len(images):
        raise MeiError(f"mei: {len(images)} images but {len(neurons)} neuron indices")
    targets = torch.from_numpy(neurons).to(device)
    out = []
    with torch.inference_mode(), eval_mode(models):
        for start in range(0, len(images), batch):
            out.append(own_neuron_response(models, images[start:start + batch], targets[start:start + batch]))
    return torch.cat(out).cpu().numpy()


def contrast_sweep(models: Sequence[nn.Module], images: np.ndarray | torch.Tensor, neuron_indices: Sequence[int],
                   scales: Sequence[float], device: torch.device | str, bounds: tuple[float, float]) -> np.ndarray:
    """``(n_neurons, n_scales)`` response to ``clip(scale * image, low, high)`` of each neuron's image.

    ``images (n_neurons, H, W)`` model space (scale 1 = as given); ``scales (n_scales,)``.
    """
    images = _as_images(images, device)
    scales_t = torch.as_tensor(np.asarray(scales, dtype=np.float32), device=device)
    low, high = float(bounds[0]), float(bounds[1])
    if not low < high:
        raise MeiError(f"mei: bounds must satisfy low < high (got ({low}, {high}))")
    scaled = (images[:, None] * scales_t[None, :, None, None]).clamp(low, high)  # (n, n_scales, H, W)
    neurons = np.repeat(np.asarray(neuron_indices), len(scales_t))
    flat = score_images(models, scaled.reshape(-1, *images.shape[1:]), neurons, device)
    return flat.reshape(len(images), len(scales_t))


def best_natural_images(models: Sequence[nn.Module], natural_images: np.ndarray | torch.Tensor,
                        neuron_indices: Sequence[int], device: torch.device | str, norm: float | None = None,
                        bounds: tuple[float, float] | None = None,
                        batch: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The natural image each neuron responds to most, and its response raw and at the MEI budget.

    Args:
        natural_images: ``(n_img, H, W)`` model space.
        neuron_indices: ``(n_neurons,)``.
        norm, bounds: the MEI budget; with ``norm=None`` the norm-matched responses equal the raw ones.

    Returns:
        ``indices (n_neurons,)`` row of the best natural image (by raw response),
        ``responses (n_neurons,)`` its raw response, ``responses_norm_matched (n_neurons,)`` the
        response to that same image after :func:`project_to_budget`.
    """
    models = check_models(models)
    images = _as_images(natural_images, device)
    neurons = check_neurons(models, neuron_indices, tuple(images.shape[1:]), device)
    cols = torch.from_numpy(neurons).to(device)
    parts = []
    with torch.inference_mode(), eval_mode(models):
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch].unsqueeze(1)
            parts.append(sum(model(chunk)[:, cols] for model in models) / len(models))
    responses = torch.cat(parts)  # (n_img, n_neurons)
    raw, indices = responses.max(dim=0)
    indices_np = indices.cpu().numpy()
    raw_np = raw.cpu().numpy()
    if norm is None:
        return indices_np, raw_np, raw_np.copy()
    if bounds is None:
        raise MeiError("mei: best_natural_images needs bounds when a norm is given")
    low, high = check_budget(norm, bounds, tuple(images.shape[1:]))
    matched = project_to_budget(images[indices], norm, (low, high))
    return indices_np, raw_np, score_images(models, matched, neurons, device, batch=batch)
