"""The contrast budget: every synthesised image has a fixed L2 norm in model space and lies on screen.

Model space is the models' input: ``(pixel - pixel_mean) / pixel_std``, so its zero is the
mean gray and the screen's pixel range 0..255 maps to ``bounds = (low, high)`` with
``low < 0 < high``. MEIs, optimal Gabors and norm-matched natural images are all compared at
the same budget (:func:`project_to_budget`), so a higher response cannot come from more
contrast.

:class:`MeiError` is the error of every in-silico primitive (budget, models, neurons, recipe):
it is defined here, at the bottom of :mod:`meiscope.insilico`, so the modules above can raise it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from meiscope.errors import MeiscopeError


class MeiError(MeiscopeError, ValueError):
    """Bad input to MEI synthesis (budget, neurons, models or recipe)."""


def natural_image_norm(images: np.ndarray) -> float:
    """Median L2 norm of the natural images ``(n, H, W)`` in model space (the default budget is a fraction of it)."""
    return float(np.median(np.linalg.norm(images.reshape(len(images), -1), axis=1)))


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
