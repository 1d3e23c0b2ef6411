"""Training targets and in-memory tensors.

**Targets.** dF/F responses can be negative, while the model's output ``ELU(x) + 1`` is
positive. Each neuron's image-mean responses are therefore mapped affinely to "normalised
units": ``y = (dff - offset) / scale`` with ``offset`` = the neuron's smallest *train* image
mean and ``scale`` = the std of its train image means. Train targets are then >= 0 with unit
spread (comparable loss weight for every neuron); val/test images may fall slightly below 0.
The map is stored (in the model's buffers and ``ensemble.json``) so predictions convert back.

**Cost.** With MSE or Poisson loss, the loss summed over an image's repeats depends on the
trials only through their mean, so we train on per-image means weighted by the repeat count:
the same gradients as single trials at 1/repeats of the cost.

**No DataLoader.** The whole split lives on the device; batches are index permutations drawn
from a seeded ``torch.Generator`` (reproducible and resumable through its state).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from meiscope.dataset import ResponseDataset


@dataclass(frozen=True)
class ResponseNormalisation:
    """Per-neuron affine map between dF/F and normalised units: ``dff = y * scale + offset``.

    Attributes:
        offset: ``(n_neurons,)`` dF/F, smallest train image mean of each neuron.
        scale: ``(n_neurons,)`` dF/F per normalised unit, std of the train image means.
    """

    offset: np.ndarray
    scale: np.ndarray

    def to_units(self, dff: np.ndarray) -> np.ndarray:
        """dF/F ``(..., n_neurons)`` -> normalised units."""
        return (dff - self.offset) / self.scale

    def to_dff(self, units: np.ndarray) -> np.ndarray:
        """Normalised units ``(..., n_neurons)`` -> dF/F."""
        return units * self.scale + self.offset

    def as_dict(self) -> dict:
        return {"offset": [float(v) for v in self.offset], "scale": [float(v) for v in self.scale]}


def fit_normalisation(train_means: np.ndarray) -> ResponseNormalisation:
    """Offset and scale from the train image means ``(n_train_images, n_neurons)`` (dF/F).

    A neuron whose train means are constant (std ~ 0) gets scale 1 so nothing divides by 0.
    """
    means = np.asarray(train_means, dtype=np.float64)
    offset = means.min(axis=0)
    scale = means.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    return ResponseNormalisation(offset=offset.astype(np.float32), scale=scale.astype(np.float32))


@dataclass
class SplitTensors:
    """One split of the dataset on the device.

    Attributes:
        index: ``(n,)`` rows of ``ds.images`` in this split (images with at least one trial).
        images: ``(n, 1, H, W)`` float32, model pixel space.
        targets: ``(n, n_neurons)`` float32, image-mean responses in normalised units.
        weights: ``(n,)`` float32, repeats of each image (loss weight).
    """

    index: np.ndarray
    images: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor

    def __len__(self) -> int:
        return len(self.index)


def split_tensors(ds: ResponseDataset, split: str, normalisation: ResponseNormalisation,
                  device: torch.device, clip_at_zero: bool = False) -> SplitTensors:
    """Images, normalised image-mean targets and repeat counts of ``split`` as device tensors.

    ``clip_at_zero`` clips targets below 0 (the Poisson loss needs non-negative targets).
    """
    repeats = ds.repeats()
    index = ds.image_indices(split)
    index = index[repeats[index] > 0]
    targets = normalisation.to_units(ds.image_means()[index].astype(np.float64))
    if clip_at_zero:
        targets = np.clip(targets, 0.0, None)
    images = np.ascontiguousarray(ds.images[index], dtype=np.float32)[:, None]
    return SplitTensors(
        index=index,
        images=torch.as_tensor(images, device=device),
        targets=torch.as_tensor(targets.astype(np.float32), device=device),
        weights=torch.as_tensor(repeats[index].astype(np.float32), device=device),
    )


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random permutation of ``range(n)`` cut into batches (the last one may be smaller).

    A last batch of a single image is merged into the previous one: batch norm cannot
    normalise one sample per channel reliably.
    """
    order = torch.randperm(n, generator=generator)
    batches = list(torch.split(order, batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()
        batches[-1] = torch.cat([batches[-1], last])
    return batches
