"""The shared convolutional core: a stack of conv -> batch norm -> ELU layers.

Every layer uses 'same' padding, so the feature map keeps the image's height and width; the
readouts can then address a neuron's receptive field directly in image pixels.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

# Discrete Laplacian (4-neighbour). Its response is zero on linear ramps and large on
# pixel-to-pixel jumps, so its energy measures how rough a filter is.
_LAPLACE_3x3 = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])


class ConvCore(nn.Module):
    """Shared feature extractor for all neurons.

    Args:
        in_channels: channels of the input images (1: grayscale).
        layers: number of convolutional layers.
        channels: output channels of each layer (``len(channels) == layers``).
        first_kernel: odd kernel size of the first layer (pixels).
        hidden_kernel: odd kernel size of the later layers (pixels).
        depth_separable: later layers as depthwise ``k x k`` + pointwise ``1 x 1`` (fewer weights).
        batch_norm: batch normalisation after every convolution.

    Input ``(N, in_channels, H, W)`` -> output ``(N, channels[-1], H, W)``.
    """

    def __init__(self, in_channels: int = 1, layers: int = 3, channels: list[int] | tuple[int, ...] = (16, 16, 16),
                 first_kernel: int = 9, hidden_kernel: int = 5, depth_separable: bool = False,
                 batch_norm: bool = True) -> None:
        super().__init__()
        if len(channels) != layers:
            raise ValueError(f"channels needs one entry per layer ({layers}), got {len(channels)}")
        self.out_channels = int(channels[-1])
        blocks = []
        previous = in_channels
        for i, width in enumerate(channels):
            kernel = first_kernel if i == 0 else hidden_kernel
            # A conv bias is redundant right before batch norm (BN has its own shift).
            bias = not batch_norm
            if i > 0 and depth_separable:
                conv: nn.Module = nn.Sequential(
                    nn.Conv2d(previous, previous, kernel, padding=kernel // 2, groups=previous, bias=False),
                    nn.Conv2d(previous, width, 1, bias=bias),
                )
            else:
                conv = nn.Conv2d(previous, width, kernel, padding=kernel // 2, bias=bias)
            parts = [conv]
            if batch_norm:
                parts.append(nn.BatchNorm2d(width))
            parts.append(nn.ELU())
            blocks.append(nn.Sequential(*parts))
            previous = width
        self.blocks = nn.Sequential(*blocks)

    @property
    def first_conv(self) -> nn.Conv2d:
        """The first layer's convolution (its filters see pixels directly)."""
        return self.blocks[0][0]

    def receptive_field_radius(self) -> int:
        """Pixels a feature depends on on each side of its own position (Chebyshev radius).

        Every layer is a 'same'-padded convolution followed by pointwise operations, so a
        feature at ``(r, c)`` depends only on the input pixels within this many pixels of it:
        the sum of each convolution's half-width.
        """
        return sum((conv.kernel_size[0] - 1) // 2 * conv.dilation[0]
                   for conv in self.modules() if isinstance(conv, nn.Conv2d))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W)`` -> feature map ``(N, C_out, H, W)``."""
        return self.blocks(images)

    def laplace_penalty(self) -> torch.Tensor:
        """Roughness of the first-layer filters (a scalar, unitless).

        ``sum ||Laplacian * w||^2 / sum ||w||^2`` over all first-layer kernels, with zero padding
        around each kernel so a filter that does not fade out towards its border also counts as
        rough. Dividing by the filters' own energy makes the penalty scale-free: with batch norm
        the filters' scale is irrelevant, and an unnormalised penalty would just shrink them.
        """
        weight = self.first_conv.weight  # (C_out, C_in, k, k)
        k = weight.shape[-1]
        flat = weight.reshape(-1, 1, k, k)
        kernel = _LAPLACE_3x3.to(device=weight.device, dtype=weight.dtype).view(1, 1, 3, 3)
        rough = F.conv2d(flat, kernel, padding=1)
        return rough.pow(2).sum() / weight.pow(2).sum().clamp_min(1e-12)


def fold_batch_norm(core: ConvCore) -> ConvCore:
    """A copy of ``core`` for evaluation, each batch norm folded into the convolution before it.

    In eval mode a batch norm is the per-channel affine map ``y = (x - mean) / sqrt(var + eps)
    * gamma + beta``, so ``conv -> BN`` equals one convolution with scaled weights and a bias.
    The same outputs up to float rounding, one pass over the activations fewer per layer (the
    in-silico stages run the models hundreds of times per image). Training would need the
    batch norms back: use the original for that.
    """
    folded = copy.deepcopy(core).eval()
    for block in folded.blocks:
        if len(block) < 3 or not isinstance(block[1], nn.BatchNorm2d):
            continue
        conv = block[0][-1] if isinstance(block[0], nn.Sequential) else block[0]
        norm = block[1]
        with torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                              padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
            fused = fused.to(device=conv.weight.device, dtype=conv.weight.dtype)
            fused.weight.copy_(conv.weight * scale[:, None, None, None])
            shift = norm.bias - norm.running_mean * scale
            fused.bias.copy_(shift + (conv.bias * scale if conv.bias is not None else 0))
        if isinstance(block[0], nn.Sequential):
            block[0][-1] = fused
        else:
            block[0] = fused
        block[1] = nn.Identity()
    return folded.requires_grad_(False)
