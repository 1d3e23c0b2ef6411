"""Per-neuron readouts: map the core's feature map ``(N, C, H, W)`` to one value per neuron ``(N, n)``.

- :class:`GaussianReadout` (Lurz et al. 2021): each neuron has a learned position ``mu`` in
  ``[-1, 1]^2`` where it reads the feature map (bilinear ``grid_sample``), and a learned spread
  ``sigma`` used to jitter that position during training (it lets a neuron "feel" the loss away from
  its current position; at evaluation the mean position is used).
- :class:`FactorizedReadout` (Klindt et al. 2017): a full spatial mask per neuron times feature weights.

Both give ``positions()`` in pixels (``(n, 2)`` as ``(row, col)``), ``regularizer()`` (L1) and
``init_positions_(positions)``. Gradient descent only moves a readout position *locally* (the
feature map near a wrong position carries no signal about a far-away receptive field), so a
model started with every neuron at the image centre keeps most of them there. Training
therefore starts each neuron at the peak of a cheap, model-free receptive-field map
(:func:`rf_position_map`: how well local luminance and contrast around each pixel predict its
responses; plus, where locally sparse noise was shown, :func:`spot_map`, and where movies were,
the same regression with its features filtered through the calcium kernel) and lets gradient
descent refine from there. With the container's stimuli, training later moves a readout that is
still far from where the trained core's own features predict its neuron best
(:func:`feature_r2_map` on those features; ``relocate_readouts`` in :mod:`meiscope.model.training`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with replicated borders."""
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).repeat(images.shape[1], 1)  # (C, k): one per channel
    groups = images.shape[1]
    x = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=groups)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=groups)


@torch.no_grad()
def rf_position_map(images: torch.Tensor, targets: torch.Tensor, scales: tuple[float, ...] = (1.0, 2.0, 4.0),
                    ridge: float = 0.1, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """How well each pixel's neighbourhood predicts each neuron: ``(n, H, W)``, in ``[0, 1]``.

    At every pixel, for each Gaussian scale ``s`` (pixels): local luminance ``L = G_s * x``,
    its square, and local contrast energy ``G_s * (x - L)^2`` (so linear, on/off-symmetric
    and complex-cell-like responses are all caught). The map is the in-sample R^2 of a ridge
    regression (``ridge`` x n_images on standardised features) of the neuron's responses on
    these features. Only its peak is used, so the common overfitting offset does not matter.

    Args:
        images: ``(N, 1, H, W)`` model-space images (train split), or consecutive movie frames.
        targets: ``(N, n)`` responses of each neuron to them (any affine units).
        kernel: for movie frames, the causal calcium kernel ``(taps,)`` that turns per-frame rates
            into the recorded trace: the features are filtered through it in time (the regression
            stays linear in them), and the first ``taps - 1`` frames, whose history is cut, are left out.
    """
    feats = []
    for s in scales:
        lum = _gaussian_blur(images, s)
        feats += [lum, lum * lum, _gaussian_blur((images - lum) ** 2, s)]
    return feature_r2_map(torch.cat(feats, dim=1), targets, ridge=ridge, kernel=kernel).to(images.dtype)


@torch.no_grad()
def feature_r2_map(features: torch.Tensor, targets: torch.Tensor, ridge: float = 0.1,
                   kernel: torch.Tensor | None = None, block: int = 16) -> torch.Tensor:
    """In-sample R^2 of a ridge regression of each neuron on the features at each pixel: ``(n, H, W)``, double.

    Args:
        features: ``(N, F, H, W)`` per-pixel features of ``N`` images (hand-made in
            :func:`rf_position_map`, a trained core's feature map in :func:`meiscope.model.sources.core_position_map`).
        targets: ``(N, n)`` responses (any affine units).
        ridge: times the number of images, on standardised features.
        kernel: the calcium kernel ``(taps,)`` for consecutive movie frames (see :func:`rf_position_map`).
        block: pixels solved at once (memory: ``N x F x block`` doubles). Every pixel's regression is
            solved on its own, so the result does not depend on it (float rounding aside: 16 and
            256 gave the same bits on the default study); small blocks stay in the CPU's cache
            (3,600 movie frames x 16 features: 3.8 s at 16 pixels, 15.7 s at 256).
    """
    y = targets.double()
    if kernel is not None:
        y = y[len(kernel) - 1:]
    y = y - y.mean(0)
    y = y / y.norm(dim=0).clamp_min(1e-12)  # (N, n), unit norm: R^2 = y' P y
    n_img, n_feat, height, width = features.shape
    flat = features.reshape(n_img, n_feat, height * width)
    r2 = []
    for start in range(0, height * width, block):
        x = flat[:, :, start:start + block].double()
        if kernel is not None:  # out[t] = sum_k kernel[k] x[t - k], tap by tap (conv1d's unfolding would take GBs)
            taps = len(kernel)
            filtered = torch.zeros_like(x[taps - 1:])
            for k, weight in enumerate(kernel.tolist()):
                filtered += weight * x[taps - 1 - k:len(x) - k]
            x = filtered
        x = x.permute(2, 0, 1)  # (P, N, F)
        x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-8)
        gram = x.transpose(1, 2) @ x + ridge * len(y) * torch.eye(n_feat, device=x.device, dtype=x.dtype)
        xty = x.transpose(1, 2) @ y  # (P, F, n)
        r2.append((xty * torch.linalg.solve(gram, xty)).sum(1))  # (P, n)
    return torch.cat(r2).T.reshape(-1, height, width)


@torch.no_grad()
def spot_map(images: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, blur: float = 1.5) -> torch.Tensor:
    """Each neuron's mean response to a spot at each pixel, ON and OFF alike: ``(n, H, W)``.

    The receptive-field map of locally sparse noise (each frame a few white and black spots on
    gray, shown once): every frame's responses, z-scored per neuron over the frames it was recorded
    in, averaged with weights ``|frame - gray|`` at each pixel (gray = the pixel's median frame,
    as spots are rare). Spots of either sign count, as Allen's ON and OFF subfields together, so
    complex cells, which answer both, are mapped as well as simple ones. ``blur`` (pixels, about
    a spot) smooths the map before its peak is read.

    Args:
        images: ``(N, 1, H, W)`` model-space frames.
        targets: ``(N, n)`` single-trial responses (any affine units).
        mask: ``(N, n)`` 1 where the neuron was recorded, 0 where not (its map is then all 0).
    """
    frames = images.double().reshape(len(images), -1)
    spots = (frames - frames.median(dim=0).values).abs()  # (N, P)
    y, m = targets.double(), mask.double()
    count = m.sum(0).clamp_min(1)
    mean = (y * m).sum(0) / count
    sd = (((y - mean) * m).pow(2).sum(0) / count).sqrt().clamp_min(1e-12)
    z = (y - mean) / sd * m  # (N, n), 0 where not recorded
    maps = (z.T @ spots) / (m.T @ spots).clamp_min(1e-12)
    height, width = images.shape[-2:]
    return _gaussian_blur(maps.reshape(-1, 1, height, width), blur)[:, 0].to(images.dtype)


def robust_z(maps: torch.Tensor) -> torch.Tensor:
    """``(n, H, W)`` maps in units of each map's robust spread around its median (0 where a map is flat)."""
    flat = maps.reshape(len(maps), -1).double()
    median = flat.median(dim=1, keepdim=True).values
    spread = 1.4826 * (flat - median).abs().median(dim=1, keepdim=True).values
    z = torch.where(spread > 1e-12, (flat - median) / spread.clamp_min(1e-12), torch.zeros_like(flat))
    return z.reshape(maps.shape).to(maps.dtype)


def map_peaks(maps: torch.Tensor) -> torch.Tensor:
    """``(n, H, W)`` maps -> ``(n, 2)`` pixel ``(row, col)`` of each map's maximum."""
    width = maps.shape[-1]
    flat = maps.reshape(maps.shape[0], -1).argmax(dim=1)
    return torch.stack([flat // width, flat % width], dim=1).to(maps.dtype)


def _sampling_grid(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel ``(row, col)`` points ``(..., 2)`` of an ``height x width`` map -> ``grid_sample``'s ``(x, y)`` in [-1, 1].

    ``align_corners=True`` convention: -1 is the centre of the first pixel and +1 that of the last.
    """
    return torch.stack([points[..., 1] / max(width - 1, 1) * 2 - 1, points[..., 0] / max(height - 1, 1) * 2 - 1],
                       dim=-1)


class GaussianReadout(nn.Module):
    """Read each neuron's response at one learned point of the feature map.

    Args:
        n_neurons, channels, height, width: sizes of the readout and of the feature map.
        init_mu_range: initial positions uniform in ``[-r, r]^2`` (normalised units, centre = 0).
        init_sigma: initial jitter spread (normalised units; 1 = half the image).

    ``mu`` is stored as ``(n, 2)`` in ``grid_sample`` order ``(x, y)`` = (column, row), with
    ``align_corners=True``: -1 is the centre of the first pixel and +1 that of the last.
    """

    def __init__(self, n_neurons: int, channels: int, height: int, width: int,
                 init_mu_range: float = 0.2, init_sigma: float = 0.1) -> None:
        super().__init__()
        self.n_neurons, self.channels, self.height, self.width = n_neurons, channels, height, width
        self.mu = nn.Parameter(torch.empty(n_neurons, 2).uniform_(-init_mu_range, init_mu_range))
        self.sigma = nn.Parameter(torch.full((n_neurons, 2), float(init_sigma)))
        self.features = nn.Parameter(torch.randn(n_neurons, channels) / channels ** 0.5)
        self.bias = nn.Parameter(torch.zeros(n_neurons))

    def grid(self, batch: int) -> torch.Tensor:
        """Sampling points ``(batch, n, 1, 2)``: jittered by sigma in training, the mean at eval."""
        mu = self.mu.clamp(-1.0, 1.0)
        if self.training:
            # Drawn by the CPU generator on every device, so a seed trains the same model on a
            # GPU as on the CPU (a CUDA generator's stream differs); the copy is tiny.
            noise = torch.randn(batch, self.n_neurons, 2, dtype=mu.dtype).to(mu.device)
            points = (mu + noise * self.sigma.abs()).clamp(-1.0, 1.0)
        else:
            points = mu.expand(batch, -1, -1)
        return points.unsqueeze(2)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, n_neurons)`` (before the output nonlinearity)."""
        sampled = F.grid_sample(feature_map, self.grid(feature_map.shape[0]), mode="bilinear",
                                padding_mode="border", align_corners=True)  # (N, C, n, 1)
        return torch.einsum("bcn,nc->bn", sampled.squeeze(-1), self.features) + self.bias

    def read_at(self, feature_crops: torch.Tensor, neurons: torch.Tensor, origins: torch.Tensor) -> torch.Tensor:
        """Neuron ``neurons[b]`` read from ``feature_crops[b]``, a window of the feature map.

        Args:
            feature_crops: ``(B, C, h, w)`` feature map of a window whose top-left pixel is
                ``origins[b]`` ``(row, col)`` of the full map; the window must hold the 2 x 2
                pixels around the neuron's position (eval mode: the mean position is read).
            neurons: ``(B,)`` long.

        Returns:
            ``(B,)`` the same value as column ``neurons[b]`` of :meth:`forward` on the full map.
        """
        grid = _sampling_grid(self.positions()[neurons] - origins, *feature_crops.shape[-2:])  # (B, 2)
        sampled = F.grid_sample(feature_crops, grid.view(-1, 1, 1, 2).to(feature_crops.dtype), mode="bilinear",
                                padding_mode="border", align_corners=True).flatten(1)  # (B, C)
        return (sampled * self.features[neurons]).sum(1) + self.bias[neurons]

    def read_points(self, feature_map: torch.Tensor, neurons: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Each neuron read at each of its own points of every map (before the output nonlinearity).

        Args:
            feature_map: ``(S, C, h, w)``.
            neurons: ``(n,)`` long.
            points: ``(n, K, 2)`` pixel ``(row, col)`` positions in the map (zeros outside it).

        Returns:
            ``(S, n, K)``.
        """
        n_maps, channels, height, width = feature_map.shape
        n, k = points.shape[:2]
        grid = _sampling_grid(points, height, width).to(feature_map.dtype)
        sampled = F.grid_sample(feature_map, grid.view(1, n * k, 1, 2).expand(n_maps, -1, -1, -1), mode="bilinear",
                                padding_mode="zeros", align_corners=True).view(n_maps, channels, n, k)
        return torch.einsum("scnk,nc->snk", sampled, self.features[neurons]) + self.bias[neurons][None, :, None]

    def regularizer(self) -> torch.Tensor:
        """L1 of the feature weights, averaged over neurons (sparse use of core channels)."""
        return self.features.abs().sum() / self.n_neurons

    @torch.no_grad()
    def constrain_(self) -> None:
        """Keep positions inside the image (called after every optimiser step)."""
        self.mu.clamp_(-1.0, 1.0)

    @torch.no_grad()
    def init_positions_(self, positions: torch.Tensor) -> None:
        """Place the neurons at pixel ``positions`` ``(n, 2)`` ``(row, col)``."""
        positions = positions.to(self.mu.device, self.mu.dtype)
        self.mu[:, 0] = positions[:, 1] / max(self.width - 1, 1) * 2 - 1
        self.mu[:, 1] = positions[:, 0] / max(self.height - 1, 1) * 2 - 1
        self.mu.clamp_(-1.0, 1.0)

    @torch.no_grad()
    def positions(self) -> torch.Tensor:
        """``(n, 2)`` readout positions in pixels as ``(row, col)`` (0 = first pixel's centre)."""
        mu = self.mu.clamp(-1.0, 1.0)
        col = (mu[:, 0] + 1) / 2 * (self.width - 1)
        row = (mu[:, 1] + 1) / 2 * (self.height - 1)
        return torch.stack([row, col], dim=1)


class FactorizedReadout(nn.Module):
    """Response = sum over space and channels of ``mask[n] (H, W) x features[n] (C)`` + bias.

    The mask starts as a faint uniform field (plus small noise) with ``sum |mask| ~ 1`` per
    neuron, so mask and feature L1 penalties are on comparable scales.
    """

    def __init__(self, n_neurons: int, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.n_neurons, self.channels, self.height, self.width = n_neurons, channels, height, width
        pixels = height * width
        self.mask = nn.Parameter((1.0 + 0.1 * torch.randn(n_neurons, height, width)) / pixels)
        self.features = nn.Parameter(torch.randn(n_neurons, channels) / channels ** 0.5)
        self.bias = nn.Parameter(torch.zeros(n_neurons))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, n_neurons)`` (before the output nonlinearity)."""
        pooled = torch.einsum("bchw,nhw->bnc", feature_map, self.mask)  # (N, n, C)
        return (pooled * self.features).sum(-1) + self.bias

    def regularizer(self) -> torch.Tensor:
        """L1 of mask and feature weights, averaged over neurons."""
        return (self.mask.abs().sum() + self.features.abs().sum()) / self.n_neurons

    def constrain_(self) -> None:
        """Nothing to constrain (kept so both readouts share one interface)."""

    @torch.no_grad()
    def init_positions_(self, positions: torch.Tensor, sigma: float = 2.0) -> None:
        """Concentrate half of each mask's mass in a Gaussian blob (``sigma`` px) at ``positions`` ``(n, 2)``."""
        positions = positions.to(self.mask.device, self.mask.dtype)
        rows = torch.arange(self.height, device=self.mask.device, dtype=self.mask.dtype)[None, :, None]
        cols = torch.arange(self.width, device=self.mask.device, dtype=self.mask.dtype)[None, None, :]
        blob = torch.exp(-((rows - positions[:, 0, None, None]) ** 2 + (cols - positions[:, 1, None, None]) ** 2)
                         / (2 * sigma ** 2))
        blob = blob / blob.sum(dim=(1, 2), keepdim=True)
        self.mask.mul_(0.5).add_(0.5 * blob)

    @torch.no_grad()
    def positions(self) -> torch.Tensor:
        """``(n, 2)`` centre of mass of ``|mask|`` above its median, in pixels as ``(row, col)``.

        Subtracting each mask's median removes a diffuse floor that would pull every
        centre towards the middle of the image.
        """
        weight = self.mask.abs()
        floor = weight.reshape(self.n_neurons, -1).median(dim=1).values[:, None, None]
        weight = (weight - floor).clamp_min(0)
        total = weight.sum(dim=(1, 2)).clamp_min(1e-12)
        rows = torch.arange(self.height, device=weight.device, dtype=weight.dtype)
        cols = torch.arange(self.width, device=weight.device, dtype=weight.dtype)
        row = (weight.sum(dim=2) * rows).sum(dim=1) / total
        col = (weight.sum(dim=1) * cols).sum(dim=1) / total
        return torch.stack([row, col], dim=1)
