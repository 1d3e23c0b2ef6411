"""Scoring images on models: each image on its own neuron, averaged over an ensemble.

* :func:`own_neuron_response` -- the objective of every in-silico experiment: image ``b`` is
  scored only on its neuron ``targets[b]``, optionally on that neuron's receptive-field window
  alone (:class:`LocalModel`);
* :func:`eval_mode`, :func:`check_models`, :func:`check_neurons` -- what makes a batch of images
  for many neurons the same as scoring each image by itself, and the checks of the inputs;
* :func:`score_images`, :func:`contrast_sweep`, :func:`best_natural_images` -- scoring given
  images (MEIs, Gabors, natural images at the budget of :mod:`meiscope.insilico.budget`).

Models are plain torch modules, ``model(images (N, 1, H, W)) -> (N, n_neurons)``, already on
``device``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

from meiscope.insilico.budget import MeiError, check_budget, project_to_budget


# --------------------------------------------------------------------------------------
# the objective: each image on its own neuron
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
# eval mode and checks
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


# --------------------------------------------------------------------------------------
# scoring given images
# --------------------------------------------------------------------------------------
def _as_images(images: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``(n, H, W)`` float32 tensor on ``device`` from an array or tensor (anything else refused)."""
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
