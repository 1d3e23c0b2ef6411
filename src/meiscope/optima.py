"""The true optimal stimulus of every synthetic cell under the MEI budget, computed exactly.

The budget set is the one every meiscope stimulus lives in: model-space images ``x`` with
``||x||_2 <= norm`` and ``low <= x <= high`` (the screen range). Through the model's pixel space
each cell's two subunits are AFFINE in ``x``: ``a = w1 . x + a0`` and ``b = w2 . x + b0``
(model pixels -> screen pixels -> bilinear resampling -> contrast -> Gabor; all linear), and its
drive is a function of ``(a, b)`` alone (:mod:`meiscope.synthetic.population`):

- simple       ``D = relu(a)^2``        (increasing in ``a``)
- complex      ``D = a^2 + b^2``         (convex in ``(a, b)``)
- conjunction  ``D = relu(a) relu(b)``   (increasing in both where positive)
- centre_surround ``D = relu(a)^2``      (``a``: a difference of Gaussians, not a Gabor)
- suppressed   ``D = relu(a - |b|)^2``   (concave inside the relu: a centre Gabor minus its surround)

Two facts make the optimum exact:

1. A LINEAR objective ``v . x`` over the budget set is maximised by ``clip(s v, low, high)`` with the
   scale ``s > 0`` that puts the norm on the budget (the KKT conditions of the problem), which is
   exactly :func:`meiscope.insilico.budget.project_to_budget` applied to ``v``.
2. The set of reachable ``(a, b)`` is convex (a linear image of a convex set), and each drive above
   attains its maximum over a convex planar set at a boundary point that maximises some linear
   functional ``cos(phi) a + sin(phi) b``: ``phi = 0`` for simple cells; ``phi`` in ``[0, pi/2]`` for
   conjunction cells (the upper-right Pareto frontier); any ``phi`` for complex cells (a convex
   function peaks at an extreme point, and the exposed points are dense among those); ``phi`` in
   ``[-pi/4, pi/4]`` for suppressed cells (the superlevel sets ``a - |b| >= t`` are convex cones
   opening along ``(1, +-1)``, so a line separating one from the reachable set has such a normal).

So ``optimum = project_to_budget(cos(phi*) w1 + sin(phi*) w2)`` with ``phi*`` from a 1-D search over
the mixing angle: a dense grid, then golden-section refinement around the best grid points, the
best value seen kept. Without clipping this reduces to the textbook answers (the filter itself for
a simple cell, any unit vector in the span of the quadrature pair for a complex cell, the sum of
the two unit filters for a conjunction cell), which the tests check, together with brute-force
searches on tiny images where the box constraints bind.

Certificates
------------
The search gives a LOWER bound (the drive of a stimulus on the budget). :func:`drive_upper_bounds`
gives an UPPER bound that does not trust the search: the Lagrangian dual of each linear problem
bounds the support function ``h(u) = max (u1 a + u2 b)`` of the reachable set from above
(:func:`support_upper_bounds`), and each drive is bounded through ``h`` on a grid of directions:

- simple, centre_surround: ``max relu(a)^2 <= relu(h(1, 0))^2`` (exact);
- complex: ``a^2 + b^2 = max_u relu(u . (a, b))^2`` and, between grid directions ``delta`` apart,
  ``h`` is at most the larger neighbour over ``cos(delta / 2)`` (``h`` is sublinear);
- conjunction: ``ab <= (ca + sb)^2 / (4cs)`` for ``a, b >= 0`` and ``c, s > 0`` (AM-GM), so
  ``max relu(a) relu(b) <= min_theta relu(h(theta))^2 / (2 sin 2 theta)``;
- suppressed: ``a - |b| <= a - sigma b`` for every ``sigma`` in ``[-1, 1]``, so
  ``max relu(a - |b|) <= min_theta relu(h(theta)) / cos(theta)`` over ``theta`` in ``[-pi/4, pi/4]``.

Each bound is tight at the optimum's own direction, so the two agree to the grid's resolution
(:data:`BOUND_DIRECTIONS`), far inside the 1% the tests ask for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

PHI_RANGE = {"simple": (0.0, 0.0), "complex": (0.0, 2 * np.pi), "conjunction": (0.0, np.pi / 2),
             "centre_surround": (0.0, 0.0), "suppressed": (-np.pi / 4, np.pi / 4)}
BOUND_DIRECTIONS = 360  # support directions of the upper bounds (1 deg apart: the complex bound within 8e-5)
GRID_POINTS = 361  # mixing angles tried per cell before refinement
REFINE_STARTS = 3  # best grid points refined per cell
REFINE_ITERATIONS = 48  # golden-section steps (bracket shrinks by 0.618 each)


@dataclass
class SubunitFilters:
    """Each cell's subunits as affine functions of the model-space image, ``a = w1 . x + a0``.

    Attributes:
        w1, w2: ``(n, H, W)`` float64 filters in model space.
        a0, b0: ``(n,)`` float64 subunit values at ``x = 0`` (the dataset's mean gray; ~0).
    """

    w1: np.ndarray
    w2: np.ndarray
    a0: np.ndarray
    b0: np.ndarray


@dataclass
class TrueOptima:
    """The true optimum of every cell.

    Attributes:
        images: ``(n, H, W)`` float64 model-space optimal stimuli (on the budget).
        drives: ``(n,)`` their drives (0 for unresponsive cells, whose drive is 0 everywhere).
        phi: ``(n,)`` the mixing angle of the optimum (radians).
        upper: ``(n,)`` certified upper bounds of the drives (:func:`drive_upper_bounds`): no stimulus
            on the budget drives a cell beyond it; ``drives <= upper``.
    """

    images: np.ndarray
    drives: np.ndarray
    phi: np.ndarray
    upper: np.ndarray

    @property
    def relative_gap(self) -> np.ndarray:
        """``(n,)`` ``upper / drives - 1``: how far the optimum could be from the true maximum (0 where both are 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.upper > 0, self.upper / np.where(self.drives > 0, self.drives, np.nan) - 1, 0.0)


def model_space_subunits(population: Any, columns: Sequence[int], pixel_mean: float, pixel_std: float,
                         image_shape: tuple[int, int]) -> SubunitFilters:
    """The subunit filters of the population's ``columns`` as seen from the model's pixel space.

    Obtained by differentiating the population's own :meth:`subunits` (in float64), so they are the
    exact linear maps the truth applies, resampling included.
    """
    import copy

    cols = np.asarray(columns, dtype=np.int64)
    k = len(cols)
    module = copy.deepcopy(population).to(dtype=torch.float64, device="cpu")
    x = torch.zeros(2 * k, 1, *image_shape, dtype=torch.float64, requires_grad=True)
    a, b = module.subunits(x[:, 0] * pixel_std + pixel_mean)
    rows = torch.arange(k)
    picked = torch.cat([a[rows, cols], b[rows + k, cols]])
    (grad,) = torch.autograd.grad(picked.sum(), x)
    with torch.no_grad():
        zero = torch.full((1, *image_shape), float(pixel_mean), dtype=torch.float64)
        a0, b0 = module.subunits(zero)
    grad = grad[:, 0].numpy()
    return SubunitFilters(w1=grad[:k], w2=grad[k:], a0=a0[0, cols].numpy(), b0=b0[0, cols].numpy())


def drive_from_subunits(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The drive of a cell of ``kind`` for subunit values ``a``, ``b`` (any shape, float64); 0 for a
    kind the image does not drive. The formulas are the population's own (:func:`kind_drive`)."""
    from meiscope.synthetic.population import DRIVEN_KINDS, kind_drive

    if kind in DRIVEN_KINDS:
        return kind_drive(kind, np.asarray(a), np.asarray(b))
    return np.zeros(np.broadcast(a, b).shape)


def _linear_optima(directions: np.ndarray, norm: float, bounds: tuple[float, float]) -> np.ndarray:
    """``(..., P)`` maximisers of ``v . x`` over the budget set, one per direction ``v`` (last axis)."""
    from meiscope.insilico.budget import project_to_budget

    with torch.no_grad():
        return project_to_budget(torch.as_tensor(directions, dtype=torch.float64)[..., None, :], norm,
                                 bounds)[..., 0, :].numpy()


def _evaluate(phi: np.ndarray, kind: str, w1: np.ndarray, w2: np.ndarray, a0: np.ndarray, b0: np.ndarray,
              norm: float, bounds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Drives ``(m, q)`` and images ``(m, q, P)`` of the linear optima at mixing angles ``phi (m, q)``.

    ``w1``, ``w2`` are ``(m, P)`` (one row per cell), ``a0``, ``b0`` ``(m,)``.
    """
    directions = np.cos(phi)[..., None] * w1[:, None] + np.sin(phi)[..., None] * w2[:, None]
    images = _linear_optima(directions, norm, bounds)
    a = np.einsum("mqp,mp->mq", images, w1) + a0[:, None]
    b = np.einsum("mqp,mp->mq", images, w2) + b0[:, None]
    return drive_from_subunits(kind, a, b), images


def _top_local_maxima(values: np.ndarray, k: int, circular: bool) -> np.ndarray:
    """``(m, k)`` grid indices of each row's ``k`` largest local maxima (the global one repeated if fewer)."""
    left = np.roll(values, 1, axis=1) if circular else np.pad(values[:, :-1], ((0, 0), (1, 0)),
                                                               constant_values=-np.inf)
    right = np.roll(values, -1, axis=1) if circular else np.pad(values[:, 1:], ((0, 0), (0, 1)),
                                                                 constant_values=-np.inf)
    score = np.where((values >= left) & (values >= right), values, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")[:, :k]
    fallback = np.argmax(values, axis=1)[:, None]
    return np.where(np.isfinite(np.take_along_axis(score, order, axis=1)), order, fallback)


def _optimise_group(kind: str, w1: np.ndarray, w2: np.ndarray, a0: np.ndarray, b0: np.ndarray, norm: float,
                    bounds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optima of ``m`` cells of one kind: images ``(m, P)``, drives ``(m,)``, angles ``(m,)``."""
    m = len(w1)
    lo, hi = PHI_RANGE.get(kind, (0.0, 0.0))
    if hi == lo:  # simple (or a cell that ignores the image): the first filter's linear optimum
        drives, images = _evaluate(np.full((m, 1), lo), kind, w1, w2, a0, b0, norm, bounds)
        return images[:, 0], drives[:, 0], np.full(m, lo)
    circular = kind == "complex"
    grid = np.linspace(lo, hi, GRID_POINTS, endpoint=not circular)
    step = grid[1] - grid[0]
    values, images = _evaluate(np.tile(grid, (m, 1)), kind, w1, w2, a0, b0, norm, bounds)
    rows = np.arange(m)
    best_i = np.argmax(values, axis=1)
    best_val, best_img, best_phi = values[rows, best_i], images[rows, best_i], grid[best_i]
    starts = _top_local_maxima(values, REFINE_STARTS, circular)  # (m, k)
    left, right = grid[starts] - step, grid[starts] + step
    if not circular:
        left, right = np.maximum(left, lo), np.minimum(right, hi)
    golden = (np.sqrt(5) - 1) / 2
    for _ in range(REFINE_ITERATIONS):
        inner = np.stack([right - golden * (right - left), left + golden * (right - left)], axis=-1)  # (m, k, 2)
        vals, imgs = _evaluate(inner.reshape(m, -1), kind, w1, w2, a0, b0, norm, bounds)
        j = np.argmax(vals, axis=1)
        better = vals[rows, j] > best_val
        best_val = np.where(better, vals[rows, j], best_val)
        best_img = np.where(better[:, None], imgs[rows, j], best_img)
        best_phi = np.where(better, inner.reshape(m, -1)[rows, j], best_phi)
        vals = vals.reshape(inner.shape)
        keep_left = vals[..., 0] >= vals[..., 1]
        right = np.where(keep_left, inner[..., 1], right)
        left = np.where(keep_left, left, inner[..., 0])
    return best_img, best_val, best_phi


def optimum_of_cell(kind: str, w1: np.ndarray, w2: np.ndarray, a0: float, b0: float, norm: float,
                    bounds: tuple[float, float]) -> tuple[np.ndarray, float, float]:
    """One cell's optimum ``(image (P,), drive, phi)`` from its filters ``w1``, ``w2`` ``(P,)`` and offsets."""
    image, drive, phi = _optimise_group(kind, np.asarray(w1, np.float64)[None], np.asarray(w2, np.float64)[None],
                                        np.array([a0], np.float64), np.array([b0], np.float64), norm, bounds)
    return image[0], float(drive[0]), float(phi[0])


def true_optima(filters: SubunitFilters, kinds: Sequence[str], norm: float, bounds: tuple[float, float],
                chunk: int = 16) -> TrueOptima:
    """The exact optimum of every cell (rows of ``filters``) under the budget ``norm`` and ``bounds``,
    with its certified upper bound (:func:`drive_upper_bounds`).

    Cells are optimised in chunks of one kind (``chunk`` cells x the angle grid per projection).
    """
    n, height, width = filters.w1.shape
    w1, w2 = filters.w1.reshape(n, -1), filters.w2.reshape(n, -1)
    images, drives, phis, upper = np.empty((n, height * width)), np.empty(n), np.empty(n), np.empty(n)
    kinds = np.asarray([str(k) for k in kinds])
    for kind in np.unique(kinds):
        cells = np.flatnonzero(kinds == kind)
        for part in np.array_split(cells, max(1, int(np.ceil(len(cells) / chunk)))):
            images[part], drives[part], phis[part] = _optimise_group(
                str(kind), w1[part], w2[part], filters.a0[part], filters.b0[part], norm, bounds)
            upper[part] = drive_upper_bounds(str(kind), w1[part], w2[part], filters.a0[part], filters.b0[part],
                                             norm, bounds)
    return TrueOptima(images=images.reshape(n, height, width), drives=drives, phi=phis, upper=upper)


# --------------------------------------------------------------------------------------
# certified upper bounds
# --------------------------------------------------------------------------------------
def support_upper_bounds(directions: np.ndarray, norm: float, bounds: tuple[float, float]) -> np.ndarray:
    """Upper bounds of ``max v . x`` over the budget set, one per direction ``v`` (last axis of ``directions``).

    Weak duality: for any ``lam > 0``, ``max v.x <= sum_i max_{low <= x_i <= high} (v_i x_i - lam x_i^2)
    + lam norm^2`` (the Lagrangian of the norm constraint, maximised over the box pixel by pixel, at
    ``x_i = clip(v_i / (2 lam))``). ``lam = 1 / (2 s)`` with the scale ``s`` of the primal solution
    ``clip(s v)`` closes the gap; ``lam -> 0`` (the box alone) is the other bound tried.

    Args:
        directions: ``(..., P)`` float64.

    Returns:
        ``(...)`` float64 upper bounds.
    """
    low, high = float(bounds[0]), float(bounds[1])
    v = np.asarray(directions, dtype=np.float64)
    primal = _linear_optima(v, norm, bounds)
    free = (primal > low) & (primal < high) & (v != 0)
    vv = np.where(free, v * v, 0.0).sum(-1)
    scale = np.where(vv > 0, np.where(free, primal * v, 0.0).sum(-1) / np.where(vv > 0, vv, 1.0), 0.0)
    box_only = np.maximum(v * low, v * high).sum(-1)
    usable = scale > 0
    lam = np.where(usable, 0.5 / np.where(usable, scale, 1.0), 1.0)[..., None]
    x = np.clip(v / (2 * lam), low, high)
    dual = (v * x - lam * x * x).sum(-1) + lam[..., 0] * float(norm) ** 2
    return np.where(usable, np.minimum(dual, box_only), box_only)


def _support_on_grid(theta: np.ndarray, w1: np.ndarray, w2: np.ndarray, a0: np.ndarray, b0: np.ndarray, norm: float,
                     bounds: tuple[float, float], block: int = 90) -> np.ndarray:
    """``(m, q)`` upper bounds of ``h(theta) = max cos(theta) a + sin(theta) b`` for each cell (row) and angle."""
    out = np.empty((len(w1), len(theta)))
    for start in range(0, len(theta), block):
        t = theta[start:start + block]
        directions = np.cos(t)[None, :, None] * w1[:, None] + np.sin(t)[None, :, None] * w2[:, None]
        out[:, start:start + block] = (support_upper_bounds(directions, norm, bounds)
                                       + np.cos(t)[None] * a0[:, None] + np.sin(t)[None] * b0[:, None])
    return out


def drive_upper_bounds(kind: str, w1: np.ndarray, w2: np.ndarray, a0: np.ndarray, b0: np.ndarray, norm: float,
                       bounds: tuple[float, float], n_directions: int = BOUND_DIRECTIONS) -> np.ndarray:
    """``(m,)`` certified upper bounds of the drives of ``m`` cells of one ``kind`` over the budget set.

    Args:
        w1, w2: ``(m, P)`` subunit filters in model space; a0, b0: ``(m,)`` their offsets.
        n_directions: directions on the full circle (a multiple of 8, so that 0, +-pi/4 and pi/2 are on it).

    See the module docstring for the bound of each kind.
    """
    from meiscope.synthetic.population import DRIVEN_KINDS

    m = len(w1)
    if kind not in DRIVEN_KINDS:
        return np.zeros(m)
    if n_directions % 8:
        raise ValueError(f"n_directions must be a multiple of 8 (got {n_directions})")
    step = 2 * np.pi / n_directions
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    if kind in ("simple", "centre_surround"):
        return relu(_support_on_grid(np.zeros(1), w1, w2, a0, b0, norm, bounds)[:, 0]) ** 2
    if kind == "complex":
        h = relu(_support_on_grid(np.arange(n_directions) * step, w1, w2, a0, b0, norm, bounds))
        return (np.maximum(h, np.roll(h, -1, axis=1)).max(axis=1) / np.cos(step / 2)) ** 2
    if kind == "conjunction":
        theta = np.arange(1, n_directions // 4) * step  # (0, pi/2), open
        h = relu(_support_on_grid(theta, w1, w2, a0, b0, norm, bounds))
        return (h ** 2 / (2 * np.sin(2 * theta))[None]).min(axis=1)
    if kind == "suppressed":
        theta = np.arange(-(n_directions // 8), n_directions // 8 + 1) * step  # [-pi/4, pi/4]
        h = relu(_support_on_grid(theta, w1, w2, a0, b0, norm, bounds))
        return (h / np.cos(theta)[None]).min(axis=1) ** 2
    raise ValueError(f"no upper bound for the kind {kind!r}")  # a driven kind this module does not know
