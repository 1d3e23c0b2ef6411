"""The full response model (core + readout + positive output) and its validated construction."""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meiscope.config import ModelConfig
from meiscope.errors import MeiscopeError
from meiscope.model.core import ConvCore, fold_batch_norm
from meiscope.model.readouts import FactorizedReadout, GaussianReadout


class ModelError(MeiscopeError, ValueError):
    """A model configuration cannot be built for this data, or saved model files are unusable."""


class ResponseModel(nn.Module):
    """Images ``(N, 1, H, W)`` (model pixel space) -> predicted responses ``(N, n_neurons)``.

    The output ``ELU(x) + 1`` is positive. It is in *normalised response units* (see
    :mod:`meiscope.model.data`); the buffers ``response_offset`` / ``response_scale``
    ``(n_neurons,)`` map it back to dF/F with :meth:`to_dff`. They travel with the
    ``state_dict``, so a saved member always knows its units.
    """

    def __init__(self, core: ConvCore, readout: nn.Module) -> None:
        super().__init__()
        self.core = core
        self.readout = readout
        n = readout.n_neurons
        self.register_buffer("response_offset", torch.zeros(n))
        self.register_buffer("response_scale", torch.ones(n))

    @property
    def n_neurons(self) -> int:
        return self.readout.n_neurons

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.readout.height, self.readout.width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` -> ``(N, n_neurons)``, positive, normalised units."""
        return self.positive(self.readout(self.core(images)))

    @staticmethod
    def positive(readout: torch.Tensor) -> torch.Tensor:
        """The output nonlinearity ``ELU(x) + 1`` (positive), shared by every way of reading the core."""
        return F.elu(readout) + 1.0

    def response_windows(self, neurons: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """The image window each neuron's response depends on, or ``None`` if that is the whole image.

        A Gaussian readout reads the core's feature map bilinearly at one point (eval mode),
        i.e. at 2 x 2 feature pixels, and each feature pixel sees the input pixels within
        :meth:`ConvCore.receptive_field_radius` ``R`` of it. So a neuron's response depends only
        on a ``2R + 2`` pixel square (cut to the image), and the core run on that square gives
        the same features there as on the whole image: its 'same' zero padding falls either
        on the image's own border or outside what the readout reaches. Exact, not an
        approximation. A factorized readout's mask spans the whole image: ``None``.

        Args:
            neurons: ``(B,)`` long output columns.

        Returns:
            ``origins (B, 2)`` long ``(row, col)`` of each window's top-left pixel and the common
            window size ``(h, w)``.
        """
        if not isinstance(self.readout, GaussianReadout):
            return None
        radius = self.core.receptive_field_radius()
        height, width = self.image_shape
        size = (min(2 * radius + 2, height), min(2 * radius + 2, width))
        first = self.readout.positions()[neurons].floor().long() - radius
        last = torch.tensor([height - size[0], width - size[1]], device=first.device)
        return torch.minimum(first.clamp_min(0), last), size

    def window_responses(self, crops: torch.Tensor, neurons: torch.Tensor, origins: torch.Tensor) -> torch.Tensor:
        """``(B,)`` response of neuron ``neurons[b]`` to ``crops (B, 1, h, w)``, its window (:meth:`response_windows`).

        Equals ``forward(full_images)[b, neurons[b]]`` for any full image holding ``crops[b]`` at
        ``origins[b]`` (float rounding aside).
        """
        return self.positive(self.readout.read_at(self.core(crops), neurons, origins))

    def translated_responses(self, canvases: torch.Tensor, anchor: tuple[float, float], neurons: torch.Tensor,
                             shifts: torch.Tensor) -> torch.Tensor | None:
        """Responses to each canvas pasted into the image at each shift, from ONE pass of the core.

        The core is translation-equivariant, so the response of a neuron at readout position
        ``p`` to a canvas whose pixel ``anchor`` lands on image pixel ``shift`` is its readout of
        the canvas's feature map at ``p - shift + anchor``. An approximation: it ignores the
        image's border (the core's zero padding there, and the part of the canvas that would
        fall outside the image), and it is exact only for integer shifts. Good for ranking many
        translated candidates before scoring the best few exactly; ``None`` for a readout that
        is not a point (factorized).

        Args:
            canvases: ``(S, 1, h, w)`` model-space images, larger than the image so that every
                read point lies inside them.
            anchor: ``(row, col)`` canvas pixel that is placed at each shift.
            neurons: ``(n,)`` long.
            shifts: ``(K, 2)`` image positions ``(row, col)`` of the anchor.

        Returns:
            ``(S, n, K)`` responses.
        """
        if not isinstance(self.readout, GaussianReadout):
            return None
        positions = self.readout.positions()[neurons]  # (n, 2)
        points = positions[:, None, :] - shifts[None].to(positions) + torch.tensor(anchor).to(positions)
        return self.positive(self.readout.read_points(self.core(canvases), neurons, points))

    def to_dff(self, output: torch.Tensor) -> torch.Tensor:
        """Normalised output ``(..., n_neurons)`` -> dF/F."""
        return output * self.response_scale + self.response_offset

    @torch.no_grad()
    def set_normalisation(self, offset: np.ndarray, scale: np.ndarray) -> None:
        """Store the per-neuron affine map from normalised units to dF/F (``dff = y * scale + offset``)."""
        self.response_offset.copy_(torch.as_tensor(np.asarray(offset), dtype=self.response_offset.dtype))
        self.response_scale.copy_(torch.as_tensor(np.asarray(scale), dtype=self.response_scale.dtype))

    def regularizer(self, laplace_weight: float, readout_l1: float) -> torch.Tensor:
        """The penalties added to the data loss: smooth first-layer filters + sparse readouts."""
        return laplace_weight * self.core.laplace_penalty() + readout_l1 * self.readout.regularizer()

    def constrain_(self) -> None:
        """Project parameters back into their valid range (readout positions inside the image)."""
        self.readout.constrain_()


def check_model_config(cfg: ModelConfig, n_neurons: int, image_shape: Sequence[int]) -> tuple[int, int]:
    """Refuse a config that cannot work on ``image_shape`` (one-line :class:`ModelError`).

    Returns ``(height, width)``. Runs in microseconds, so stages call it before any training.
    """
    if not isinstance(cfg, ModelConfig):
        raise ModelError(f"model: expected a ModelConfig, got {type(cfg).__name__}")
    if n_neurons < 1:
        raise ModelError(f"model: needs at least one neuron to predict (got {n_neurons})")
    if len(image_shape) != 2 or min(image_shape) < 1:
        raise ModelError(f"model: image shape must be (height, width) with positive sizes (got {tuple(image_shape)})")
    height, width = int(image_shape[0]), int(image_shape[1])
    for key in ("first_kernel", "hidden_kernel"):
        k = getattr(cfg, key)
        if key == "hidden_kernel" and cfg.layers < 2:
            continue
        if k > min(height, width):
            raise ModelError(f"model.{key} ({k}) is larger than the image ({height}x{width})")
    return height, width


def build_model(cfg: ModelConfig, n_neurons: int, image_shape: Sequence[int]) -> ResponseModel:
    """A fresh :class:`ResponseModel` for ``n_neurons`` neurons on images of ``image_shape`` (H, W).

    Parameters are drawn from torch's global generator: seed it (``torch.manual_seed``) first
    for a reproducible initialisation.
    """
    height, width = check_model_config(cfg, n_neurons, image_shape)
    core = build_core(cfg)
    return ResponseModel(core, build_readout(cfg, n_neurons, core.out_channels, (height, width)))


def build_core(cfg: ModelConfig) -> ConvCore:
    """A fresh :class:`ConvCore` of ``cfg`` (draws its weights from torch's global generator)."""
    return ConvCore(in_channels=1, layers=cfg.layers, channels=list(cfg.channels), first_kernel=cfg.first_kernel,
                    hidden_kernel=cfg.hidden_kernel, depth_separable=cfg.depth_separable,
                    batch_norm=cfg.batch_norm)


def build_readout(cfg: ModelConfig, n_neurons: int, in_channels: int, image_shape: tuple[int, int]) -> nn.Module:
    """A fresh readout of ``cfg.readout`` for ``n_neurons`` reading ``in_channels`` core features."""
    height, width = image_shape
    if cfg.readout == "gaussian":
        return GaussianReadout(n_neurons, in_channels, height, width)
    if cfg.readout == "factorized":
        return FactorizedReadout(n_neurons, in_channels, height, width)
    # ModelConfig already refuses this; kept for configs built around its validation
    raise ModelError(f"model.readout {cfg.readout!r} is not one of 'gaussian', 'factorized'")


def place_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move ``model`` to ``device``; on a CPU also lay its weights out channels-last.

    oneDNN runs these small-channel convolutions much faster channels-last (2-core CPU, 36x46
    images, batches of 64; the tuned depth-separable core of the default study): forward 0.61
    -> 0.17 ms per image, forward + input gradient (MEIs) 1.0 -> 0.57 ms, a training step 2.6
    -> 1.1 ms per image (``bench/``). Inputs need no change: a channels-last first convolution
    hands its layout on to every later layer. Only the memory order changes, so outputs agree
    to float rounding. On CUDA the default layout is kept.
    """
    device = torch.device(device)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


def inference_copy(model: ResponseModel) -> ResponseModel:
    """A frozen eval-mode copy of ``model`` with its batch norms folded into the convolutions.

    What the in-silico stages optimise and score on: the same responses (float rounding
    aside), 1.4-1.9x faster on a CPU (``bench/bench_insilico.py``). Placed as :func:`place_model` places
    models.
    """
    folded = copy.deepcopy(model)
    folded.core = fold_batch_norm(model.core)
    device = next(model.parameters()).device
    return place_model(folded, device).eval().requires_grad_(False)
