"""The simulated V1 population: Gabor-based and out-of-family model neurons, as a differentiable torch module.

Screen geometry
---------------
The cells look at Allen's stimulus monitor (:mod:`meiscope.recordings.screen`): the 918 x 1174 px
natural scenes shown centred at 9.68 px / deg at the screen centre, so a scene spans about
1174 / 9.68 = 121 deg x 95 deg. Receptive-field geometry is stored in NORMALISED image
coordinates (the screen's scene fractions) so that it does not depend on the resolution an image
is given at: ``x`` in [0, 1] of the width, ``y`` in [0, 1] of the height, ``sigma`` as a fraction
of the image width and spatial frequency ``sf`` in cycles per image width.

Cell kinds (``c`` = contrast (pixels - 127) / 127, ``a``/``b`` = dot products with two Gabors)
-------------------------------------------------------------------------------------------
Each responsive cell computes a drive ``D`` that is quadratic in contrast:

- ``simple``:       D = relu(a)^2              (half-squaring, Heeger 1992)
- ``complex``:      D = a^2 + b^2              (energy of a quadrature pair: phase invariant)
- ``conjunction``:  D = relu(a) * relu(b)      (AND of two orientations 60-90 deg apart at the same
  place; its optimal stimulus is a plaid, NOT a single Gabor)

and two kinds outside the Gabor family, off by default (``synthetic.kinds``; the ``out_of_family`` profile):

- ``centre_surround``: D = relu(a)^2 with ``a`` the dot product with a balanced difference of
  Gaussians (Rodieck 1965; Enroth-Cugell & Robson 1966), ON or OFF centre (``polarity`` +1 / -1), the
  surround ``surround_ratio`` times wider than the centre: an unoriented cell whose optimum is a
  centre-surround spot, not a Gabor.
- ``suppressed``: D = relu(a - |b|)^2, a Gabor centre ``a`` minus the rectified response ``|b|`` of a
  surround Gabor of the same orientation, frequency and phase, ``surround_ratio`` times wider and
  weighted so that it cancels the share ``surround_strength`` of the centre's response to a full-screen
  grating (about the suppression index; :func:`surround_weights`): a subtractive centre-surround, as in the
  difference-of-Gaussians fits of Sceniak et al. 1999 to size tuning; divisive forms, Cavanaugh et al.
  2002, behave alike at a fixed contrast). Its optimum is the centre Gabor with the part the surround
  sees taken out, not a Gabor.

and fires ``rate = baseline + rate_max * D / (D + semisaturation)`` (a Naka-Rushton contrast
response with exponent 2, Albrecht & Hamilton 1982); ``unresponsive`` cells fire ``baseline``.
The Gabors are DC-corrected (zero sum), so cells ignore the mean luminance over their receptive
field. Calibration on the session's own scenes: the best scene drives a cell to 1/saturation of
its ceiling, at a peak rate drawn log-uniformly from ``peak_rate_hz``; so an optimal stimulus can
reach at most ``saturation`` x the natural peak (above baseline), not thousands of Hz.

Responsiveness is a continuum, as in the real data: peak rates span more than a decade (a cell
firing 1 Hz at its best scene is barely distinguishable from an unresponsive one through calcium
noise), and each cell's saturation (how far below its ceiling natural scenes drive it) is drawn
from ``saturation``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from meiscope.atomic import write_json, write_npz
from meiscope.errors import MeiscopeError
from meiscope.recordings.screen import GRAY, PIXELS_PER_DEGREE, SCENE_HEIGHT_PX, SCENE_WIDTH_PX
from meiscope.synthetic import portable

WORK_SHAPE = (115, 147)  # the population's own resolution: 1/8 of 918 x 1174 (8 px = 0.83 deg)
SF_RANGE_CPD = (0.02, 0.08)  # preferred spatial frequency of mouse V1, cycles / deg (log-uniform)
MIN_CYCLES_PER_SIGMA = 0.2  # keep sf >= this / sigma, so every RF is a Gabor, not a blob
RF_CENTRE_RANGE = (0.2, 0.8)  # default RF centres: the central 60% of each image axis (synthetic.rf_centre_range)
CONJUNCTION_ANGLE_DEG = (60.0, 90.0)
GABOR_FAMILY = ("simple", "complex", "conjunction")  # one or two Gabor subunits
OUT_OF_FAMILY = ("centre_surround", "suppressed")  # optima that are not Gabors (module docstring)
# The one list of cell kinds (<= 16 characters: the ground truth stores them as U16). New kinds sit before
# ``unresponsive`` so that, at zero share, they leave the kind draw of a Gabor-family cortex unchanged.
KINDS = (*GABOR_FAMILY, *OUT_OF_FAMILY, "unresponsive")
DRIVEN_KINDS = (*GABOR_FAMILY, *OUT_OF_FAMILY)  # the kinds whose drive depends on the image
# The extra parameters of the out-of-family kinds come from a stream derived from the population's generator
# (a digest of its state plus this key; :func:`extra_rng`), so drawing them moves none of the Gabor-family draws.
EXTRA_STREAM = 0x0F5F
# neutral values of the extra parameters, for cells that do not use them
NEUTRAL_EXTRAS = {"surround_ratio": 1.0, "surround_strength": 0.0, "polarity": 1.0}


def kind_drive(kind: str, a: Any, b: Any) -> Any:
    """The drive ``D`` of a cell of a driven ``kind`` from its two subunit outputs ``a``, ``b``.

    The one definition of the cell kinds (module docstring), for numpy arrays and torch tensors
    alike: the population module uses it, and so does the exact optimum search (:mod:`meiscope.optima`).
    """
    if kind == "simple":
        return a.clip(min=0) ** 2
    if kind == "complex":
        return a ** 2 + b ** 2
    if kind == "conjunction":
        return a.clip(min=0) * b.clip(min=0)
    if kind == "centre_surround":
        return a.clip(min=0) ** 2
    if kind == "suppressed":  # the surround's weight is in b's filter (TruePopulation)
        return (a - abs(b)).clip(min=0) ** 2
    raise ValueError(f"a {kind!r} cell has no image-dependent drive (driven kinds: {DRIVEN_KINDS})")


class GroundTruthError(MeiscopeError, FileNotFoundError):
    """A session has no (readable) ground truth: it was not written by the synthetic cortex."""


# --------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------
@dataclass
class CellParams:
    """Every parameter of every simulated cell; one entry per cell in each array.

    Attributes:
        cell_ids: ``(n,)`` int64 Allen-style cell specimen ids.
        kinds: ``(n,)`` str, one of :data:`KINDS`.
        x, y: ``(n,)`` RF centre, fraction of image width / height.
        sigma: ``(n,)`` Gaussian envelope s.d., fraction of image width.
        sf: ``(n,)`` spatial frequency, cycles per image width.
        orientation, phase: ``(n,)`` radians, first Gabor (orientation = direction of the carrier).
        orientation2, phase2: ``(n,)`` radians, second Gabor (complex: same orientation, phase + pi/2;
            conjunction: another orientation; other kinds: unused copy of the first).
        saturation: ``(n,)`` ceiling rate / best-scene rate, both above baseline (>= 1).
        rate_max: ``(n,)`` Hz above baseline at saturation (0 for unresponsive cells).
        semisaturation: ``(n,)`` drive at half of ``rate_max``.
        baseline: ``(n,)`` Hz, spontaneous rate.
        peak_rate: ``(n,)`` Hz, the calibration target (max rate over the session's scenes).
        surround_ratio: ``(n,)`` surround width / centre width (centre_surround, suppressed; else 1).
        surround_strength: ``(n,)`` the share of the centre's response to its full-screen preferred
            grating that the surround cancels, about the cell's suppression index (suppressed; else 0;
            :func:`surround_weights`).
        polarity: ``(n,)`` +1 ON centre, -1 OFF centre (centre_surround; else +1).

    The last three default to their neutral values (:data:`NEUTRAL_EXTRAS`), so that ground truth
    written before they existed loads unchanged.
    """

    cell_ids: np.ndarray
    kinds: np.ndarray
    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    sf: np.ndarray
    orientation: np.ndarray
    phase: np.ndarray
    orientation2: np.ndarray
    phase2: np.ndarray
    saturation: np.ndarray
    rate_max: np.ndarray
    semisaturation: np.ndarray
    baseline: np.ndarray
    peak_rate: np.ndarray
    surround_ratio: np.ndarray | None = None
    surround_strength: np.ndarray | None = None
    polarity: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name, value in NEUTRAL_EXTRAS.items():
            if getattr(self, name) is None:
                setattr(self, name, np.full(len(self.cell_ids), value))

    @property
    def n_cells(self) -> int:
        return len(self.cell_ids)

    @property
    def out_of_family(self) -> bool:
        """True when any cell is of a kind outside the Gabor family (its file then stores the extras)."""
        return bool(np.isin(self.kinds, OUT_OF_FAMILY).any())

    @property
    def responsive(self) -> np.ndarray:
        """``(n,)`` bool: the cell's rate depends on the image."""
        return self.kinds != "unresponsive"

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def rows(self, index: np.ndarray) -> "CellParams":
        """The cells ``index`` selects (integer rows or a boolean mask), in that order."""
        return CellParams(**{name: values[index] for name, values in self.arrays().items()})


@dataclass(frozen=True)
class ExtraRanges:
    """Ranges of the out-of-family kinds' parameters (uniform draws; the ``synthetic.centre_surround_*`` and
    ``synthetic.suppressed_*`` keys of params.yaml give their basis)."""

    centre_surround_ratio: tuple[float, float] = (1.5, 3.0)  # DoG surround width / centre width
    on_fraction: float = 0.5  # share of ON-centre cells among centre-surround cells
    suppressed_ratio: tuple[float, float] = (2.0, 4.0)  # surround Gabor width / centre width
    suppressed_strength: tuple[float, float] = (0.5, 1.0)  # suppression index (surround_weights)

    @classmethod
    def from_config(cls, cfg: Any) -> "ExtraRanges":
        """The ranges a :class:`meiscope.config.SyntheticConfig` sets."""
        return cls(centre_surround_ratio=tuple(cfg.centre_surround_ratio),
                   on_fraction=float(cfg.centre_surround_on_fraction), suppressed_ratio=tuple(cfg.suppressed_ratio),
                   suppressed_strength=tuple(cfg.suppressed_strength))


def extra_rng(rng: np.random.Generator) -> np.random.Generator:
    """A generator independent of ``rng``'s stream and determined by its current state (``rng`` is not
    advanced). Only the public ``bit_generator.state`` is read: numpy < 1.25 keeps the seed sequence private."""
    state = json.dumps(rng.bit_generator.state, sort_keys=True, default=lambda value: np.asarray(value).tolist())
    entropy = int.from_bytes(hashlib.sha256(state.encode()).digest()[:16], "little")
    return np.random.default_rng(np.random.SeedSequence(entropy=entropy, spawn_key=(EXTRA_STREAM,)))


def sample_extras(kinds: np.ndarray, rng: np.random.Generator, ranges: ExtraRanges) -> dict[str, np.ndarray]:
    """The out-of-family parameters of every cell, neutral for the kinds that do not use them.

    Every cell gets its draws whatever its kind, so a cell's values do not depend on the mix of kinds.

    Returns:
        ``surround_ratio``, ``surround_strength``, ``polarity``: each ``(n,)`` float64.
    """
    n = len(kinds)
    u_ratio, u_strength, u_polarity = rng.random(n), rng.random(n), rng.random(n)
    is_cs, is_sup = kinds == "centre_surround", kinds == "suppressed"

    def spread(u: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
        return bounds[0] + (bounds[1] - bounds[0]) * u

    ratio = np.where(is_cs, spread(u_ratio, ranges.centre_surround_ratio),
                     np.where(is_sup, spread(u_ratio, ranges.suppressed_ratio), NEUTRAL_EXTRAS["surround_ratio"]))
    strength = np.where(is_sup, spread(u_strength, ranges.suppressed_strength), NEUTRAL_EXTRAS["surround_strength"])
    polarity = np.where(is_cs & (u_polarity >= ranges.on_fraction), -1.0, 1.0)
    return {"surround_ratio": ratio, "surround_strength": strength, "polarity": polarity}


def sample_cells(n_cells: int, fractions: dict[str, float], rf_sigma_deg: tuple[float, float],
                 peak_rate_hz: tuple[float, float], baseline_rate_hz: float, cell_ids: np.ndarray,
                 rng: np.random.Generator, saturation: tuple[float, float] = (3.0, 3.0),
                 rf_centre_range: tuple[float, float] = RF_CENTRE_RANGE,
                 extras: ExtraRanges | None = None) -> CellParams:
    """Draw a population (not yet calibrated; see :func:`calibrate`).

    Args:
        fractions: share of each kind in :data:`KINDS` (sums to 1; a kind left out has share 0);
            counts are rounded by largest remainder and the kinds are shuffled over the cells.
        rf_sigma_deg: [low, high] envelope s.d. in degrees (uniform).
        peak_rate_hz: [low, high] peak rate over the scenes of each responsive cell (log-uniform).
        cell_ids: ``(n_cells,)`` ids to give the cells.
        saturation: [low, high] ceiling / best-scene rate above baseline (log-uniform).
        rf_centre_range: [low, high] RF centre as a fraction of each image axis (uniform); (0, 1) is
            the whole screen.
        extras: ranges of the out-of-family parameters (drawn from :func:`extra_rng`).
    """
    unknown = sorted(set(fractions) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown cell kinds {unknown} (kinds: {KINDS})")
    share = np.array([fractions.get(k, 0.0) for k in KINDS], dtype=np.float64)
    raw = share * n_cells
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n_cells - counts.sum()]:
        counts[i] += 1
    drawn = np.repeat(np.array(KINDS), counts)[rng.permutation(n_cells)]
    # the string width of the Gabor-family kinds unless a longer kind is drawn: the arrays of a
    # Gabor-family cortex keep the bytes they had before the out-of-family kinds existed
    width = max([len("unresponsive")] + [len(k) for k in KINDS if counts[KINDS.index(k)] > 0])
    kinds = drawn.astype(f"<U{width}")

    deg_to_width = PIXELS_PER_DEGREE / SCENE_WIDTH_PX  # image widths per degree
    sigma_deg = rng.uniform(rf_sigma_deg[0], rf_sigma_deg[1], n_cells)
    sf_low = np.maximum(SF_RANGE_CPD[0], MIN_CYCLES_PER_SIGMA / sigma_deg)
    sf_high = np.maximum(SF_RANGE_CPD[1], sf_low)
    sf_cpd = portable.log_uniform(rng, sf_low, sf_high)
    orientation = rng.uniform(0, np.pi, n_cells)
    phase = rng.uniform(0, 2 * np.pi, n_cells)
    lo, hi = np.deg2rad(CONJUNCTION_ANGLE_DEG)
    turn = rng.uniform(lo, hi, n_cells) * rng.choice([-1.0, 1.0], n_cells)
    phase_b = rng.uniform(0, 2 * np.pi, n_cells)
    is_complex, is_conj = kinds == "complex", kinds == "conjunction"
    orientation2 = np.where(is_conj, np.mod(orientation + turn, np.pi), orientation)
    phase2 = np.where(is_complex, phase + np.pi / 2, np.where(is_conj, phase_b, phase))
    peak = portable.log_uniform(rng, peak_rate_hz[0], peak_rate_hz[1], n_cells)
    sat = portable.log_uniform(rng, saturation[0], saturation[1], n_cells)
    responsive = kinds != "unresponsive"
    extra = sample_extras(kinds, extra_rng(rng), extras or ExtraRanges())
    return CellParams(
        cell_ids=np.asarray(cell_ids, dtype=np.int64), kinds=kinds,
        x=rng.uniform(*rf_centre_range, n_cells), y=rng.uniform(*rf_centre_range, n_cells),
        sigma=sigma_deg * deg_to_width, sf=sf_cpd / deg_to_width,
        orientation=orientation, phase=phase, orientation2=orientation2, phase2=phase2, saturation=sat,
        rate_max=responsive.astype(np.float64), semisaturation=np.ones(n_cells),
        baseline=np.full(n_cells, float(baseline_rate_hz)),
        peak_rate=np.where(responsive, peak, float(baseline_rate_hz)), **extra)


# --------------------------------------------------------------------------------------
# Gabors
# --------------------------------------------------------------------------------------
def gabor(x: np.ndarray, y: np.ndarray, sigma: np.ndarray, sf: np.ndarray, orientation: np.ndarray,
          phase: np.ndarray, height: int, width: int) -> np.ndarray:
    """DC-corrected Gabors on a ``height x width`` pixel grid, peak absolute value 1.

    Args:
        x, y, sigma, sf, orientation, phase: ``(n,)`` in the normalised units of :class:`CellParams`.

    Returns:
        ``(n, height, width)`` float64; each sums to 0 (the envelope-weighted mean of the carrier
        is subtracted) and has max |value| = 1.
    """
    x, y, sigma, sf, orientation, phase = (np.atleast_1d(np.asarray(v, dtype=np.float64))[:, None, None]
                                           for v in (x, y, sigma, sf, orientation, phase))
    # pixel centres in units of image width (so distances are isotropic)
    px = ((np.arange(width) + 0.5) / width)[None, None, :]
    py = ((np.arange(height) + 0.5) / height * (height / width))[None, :, None]
    dx, dy = px - x, py - y * (height / width)
    along = dx * np.cos(orientation) + dy * np.sin(orientation)
    envelope = portable.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2))
    carrier = np.cos(2 * np.pi * sf * along + phase)
    dc = (envelope * carrier).sum(axis=(1, 2), keepdims=True) / envelope.sum(axis=(1, 2), keepdims=True)
    g = envelope * (carrier - dc)
    return g / np.abs(g).max(axis=(1, 2), keepdims=True)


def difference_of_gaussians(x: np.ndarray, y: np.ndarray, sigma: np.ndarray, ratio: np.ndarray, height: int,
                            width: int) -> np.ndarray:
    """Balanced ON-centre differences of Gaussians on a ``height x width`` grid, peak value 1.

    Args:
        x, y, sigma: ``(n,)`` centre and centre s.d. in the normalised units of :class:`CellParams`.
        ratio: ``(n,)`` surround s.d. / centre s.d. (> 1).

    Returns:
        ``(n, height, width)`` float64: centre / its sum minus surround / its sum (so each sums to 0
        on the grid, the surround cut by the screen edge included), scaled to max |value| = 1.
    """
    x, y, sigma, ratio = (np.atleast_1d(np.asarray(v, dtype=np.float64))[:, None, None] for v in (x, y, sigma, ratio))
    px = ((np.arange(width) + 0.5) / width)[None, None, :]
    py = ((np.arange(height) + 0.5) / height * (height / width))[None, :, None]
    r2 = (px - x) ** 2 + (py - y * (height / width)) ** 2
    centre = portable.exp(-r2 / (2 * sigma ** 2))
    surround = portable.exp(-r2 / (2 * (ratio * sigma) ** 2))
    g = centre / centre.sum(axis=(1, 2), keepdims=True) - surround / surround.sum(axis=(1, 2), keepdims=True)
    return g / np.abs(g).max(axis=(1, 2), keepdims=True)


def cell_filters(params: CellParams, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's two subunit filters before normalisation, ``(n, height, width)`` each.

    Gabor-family cells: the two Gabors of :class:`CellParams`. ``centre_surround``: ``polarity`` x a
    difference of Gaussians (the second filter an unused copy). ``suppressed``: the centre Gabor and a
    surround Gabor ``surround_ratio`` times wider (same orientation, frequency and phase).
    """
    g1 = gabor(params.x, params.y, params.sigma, params.sf, params.orientation, params.phase, height, width)
    g2 = gabor(params.x, params.y, params.sigma, params.sf, params.orientation2, params.phase2, height, width)
    cs = np.flatnonzero(params.kinds == "centre_surround")
    if len(cs):
        dog = difference_of_gaussians(params.x[cs], params.y[cs], params.sigma[cs], params.surround_ratio[cs],
                                      height, width) * params.polarity[cs, None, None]
        g1[cs], g2[cs] = dog, dog
    sup = np.flatnonzero(params.kinds == "suppressed")
    if len(sup):
        g2[sup] = gabor(params.x[sup], params.y[sup], params.sigma[sup] * params.surround_ratio[sup], params.sf[sup],
                        params.orientation[sup], params.phase[sup], height, width)
    return g1, g2


def surround_weights(params: CellParams, cells: np.ndarray, centre: np.ndarray, surround: np.ndarray, height: int,
                     width: int) -> np.ndarray:
    """The weight of each suppressed cell's surround filter, so that ``surround_strength`` is its suppression index.

    The surround cancels the share ``surround_strength`` of the centre's response to the full-screen
    grating of the cell's own orientation, frequency and phase: ``|b| = strength * a`` there, so the
    linear response to that grating is ``(1 - strength) * a`` and, as in the size-tuning curves of
    Sceniak et al. 1999 and Cavanaugh et al. 2002, the suppression index (peak - full-field) / peak is
    about ``strength`` where the surround is several times wider than the centre.

    Args:
        cells: ``(m,)`` indices of the suppressed cells in ``params``.
        centre, surround: ``(m, height * width)`` their unit-norm centre and surround filters.

    Returns:
        ``(m,)`` float64 weights (``surround_strength`` x centre / surround response to the grating).
    """
    px = ((np.arange(width) + 0.5) / width)[None, None, :]
    py = ((np.arange(height) + 0.5) / height * (height / width))[None, :, None]
    x, y, sf, ori, phase = (np.asarray(v, dtype=np.float64)[cells][:, None, None]
                            for v in (params.x, params.y, params.sf, params.orientation, params.phase))
    along = (px - x) * np.cos(ori) + (py - y * (height / width)) * np.sin(ori)
    grating = np.cos(2 * np.pi * sf * along + phase).reshape(len(cells), -1)  # the carrier of gabor(), no envelope
    to_centre = np.abs((centre * grating).sum(axis=1))
    to_surround = np.abs((surround * grating).sum(axis=1))
    # both filters share the carrier, so neither response is near 0 unless the envelope leaves the screen
    return np.asarray(params.surround_strength, dtype=np.float64)[cells] * to_centre / np.maximum(to_surround, 1e-12)


def gabor_pixels(params: CellParams, index: int, height: int, width: int, contrast: float = 1.0,
                 second: bool = False) -> np.ndarray:
    """The cell's own (first or second) Gabor as a screen image, 127 + 127 * contrast * gabor.

    For a simple cell the first Gabor at full contrast is (close to) its optimal stimulus.

    Returns:
        ``(height, width)`` float32 in 0-255 screen pixels.
    """
    ori = params.orientation2 if second else params.orientation
    ph = params.phase2 if second else params.phase
    g = gabor(params.x[index], params.y[index], params.sigma[index], params.sf[index], ori[index], ph[index],
              height, width)[0]
    return (GRAY + GRAY * contrast * g).astype(np.float32)


# --------------------------------------------------------------------------------------
# the module
# --------------------------------------------------------------------------------------
class TruePopulation(torch.nn.Module):
    """The true neurons of a synthetic session: screen pixels in, firing rates (Hz) out.

    Attributes:
        params: the :class:`CellParams` it was built from.
        cell_ids: ``(n_cells,)`` int64.  kinds: list of str.  responsive: ``(n_cells,)`` bool.
        work_shape: ``(height, width)`` it resamples every input to.
    """

    def __init__(self, params: CellParams, work_shape: tuple[int, int] = WORK_SHAPE) -> None:
        super().__init__()
        self.params = params
        self.work_shape = (int(work_shape[0]), int(work_shape[1]))
        self.cell_ids = np.asarray(params.cell_ids, dtype=np.int64)
        self.kinds = [str(k) for k in params.kinds]
        self.responsive = np.asarray(params.responsive, dtype=bool)
        h, w = self.work_shape
        g1, g2 = cell_filters(params, h, w)
        filters = np.concatenate([g1, g2]).reshape(2 * params.n_cells, h * w)
        # unit L2 norm: drives are O(1) whatever the RF size; calibration absorbs the scale
        filters /= np.linalg.norm(filters, axis=1, keepdims=True)
        # a suppressed cell's surround enters its drive with its weight (kind_drive: relu(a - |b|)^2)
        sup = np.flatnonzero(params.kinds == "suppressed")
        if len(sup):
            filters[params.n_cells + sup] *= surround_weights(params, sup, filters[sup],
                                                              filters[params.n_cells + sup], h, w)[:, None]
        # The Gaussian tails underflow to float32 denormals, which make CPU matmuls ~16x slower.
        filters[np.abs(filters) < 1e-30] = 0.0
        self.register_buffer("filters", torch.tensor(filters, dtype=torch.float32))  # (2n, h*w)
        codes = np.array([KINDS.index(k) for k in self.kinds])
        self.register_buffer("kind_code", torch.tensor(codes, dtype=torch.long))
        self.register_buffer("rate_max", torch.tensor(params.rate_max, dtype=torch.float32))
        self.register_buffer("semisaturation", torch.tensor(params.semisaturation, dtype=torch.float32))
        self.register_buffer("baseline", torch.tensor(params.baseline, dtype=torch.float32))

    @property
    def n_cells(self) -> int:
        return len(self.cell_ids)

    def resample(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` or ``(N, 1, H, W)`` screen pixels -> ``(N, h, w)`` at the working resolution.

        Bilinear with antialiasing when shrinking (differentiable), so any input resolution of the
        same scene gives nearly the same result.
        """
        if pixels.dim() == 3:
            pixels = pixels[:, None]
        if pixels.dim() != 4 or pixels.shape[1] != 1:
            raise ValueError(f"pixels must be (N, H, W) or (N, 1, H, W), got {tuple(pixels.shape)}")
        pixels = pixels.to(dtype=self.filters.dtype, device=self.filters.device)
        if tuple(pixels.shape[-2:]) != self.work_shape:
            pixels = F.interpolate(pixels, size=self.work_shape, mode="bilinear", align_corners=False,
                                   antialias=True)
        return pixels[:, 0]

    def subunits(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two linear filter outputs ``(a, b)``, each ``(N, n_cells)``: contrast dotted with each Gabor.

        Linear in the pixels (resampling is linear and the Gabors have zero sum), which is what
        makes the true optima computable in closed form (:mod:`meiscope.optima`).
        """
        contrast = (self.resample(pixels) - GRAY) / GRAY
        proj = contrast.flatten(1) @ self.filters.T  # (N, 2n)
        return proj[:, : self.n_cells], proj[:, self.n_cells:]

    def drive(self, pixels: torch.Tensor) -> torch.Tensor:
        """Stimulus drive ``D``: ``(N, n_cells)``, >= 0 (0 for unresponsive cells and for gray)."""
        a, b = self.subunits(pixels)
        out = torch.zeros_like(a)
        for kind in DRIVEN_KINDS:
            out = torch.where(self.kind_code == KINDS.index(kind), kind_drive(kind, a, b), out)
        return out

    def rate_above_baseline(self, pixels: torch.Tensor) -> torch.Tensor:
        """Firing rate minus the baseline ``(N, n_cells)``, Hz: exactly 0 when the image does not drive a cell."""
        d = self.drive(pixels)
        return self.rate_max * d / (d + self.semisaturation)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Firing rates.

        Args:
            pixels: ``(N, H, W)`` or ``(N, 1, H, W)`` 0-255 screen pixels of the scene at any
                resolution (same aspect ratio as 918 x 1174).

        Returns:
            ``(N, n_cells)`` rates in Hz (float32, on the module's device).
        """
        return self.baseline + self.rate_above_baseline(pixels)


def _max_drive(population: TruePopulation, scenes: np.ndarray, device: Any, batch: int = 16) -> np.ndarray:
    out = np.zeros(population.n_cells)
    with torch.no_grad():
        for start in range(0, len(scenes), batch):
            x = torch.from_numpy(np.ascontiguousarray(scenes[start:start + batch])).to(device)
            out = np.maximum(out, population.drive(x).cpu().double().numpy().max(axis=0))
    return out


def calibrate(params: CellParams, scenes: np.ndarray, device: Any = "cpu") -> CellParams:
    """Scale each responsive cell so its peak rate over ``scenes`` is ``params.peak_rate``.

    The best scene's drive ``D_max`` is put at 1/saturation of the ceiling (``saturation`` per cell):
    ``semisaturation = (saturation - 1) * D_max`` and ``rate_max = saturation * (peak - baseline)``.

    Args:
        scenes: ``(n_images, H, W)`` 0-255 screen pixels (the session's template).

    Returns:
        a copy of ``params`` with ``rate_max`` and ``semisaturation`` set.
    """
    # float64: a float32 matmul's result depends on the thread count, which would change the files
    population = TruePopulation(params).to(device=device, dtype=torch.float64)
    top = _max_drive(population, scenes, device)
    responsive = params.responsive
    sat = params.saturation
    rate_max = np.where(responsive, sat * (params.peak_rate - params.baseline), 0.0)
    semisat = np.where(responsive, np.maximum((sat - 1) * top, 1e-9), 1.0)
    arrays = params.arrays()
    # 7 significant digits: tiny float differences between machines do not change the files
    arrays["rate_max"] = np.array([float(f"{v:.7g}") for v in rate_max])
    arrays["semisaturation"] = np.array([float(f"{v:.7g}") for v in semisat])
    return CellParams(**arrays)


# --------------------------------------------------------------------------------------
# ground truth on disk
# --------------------------------------------------------------------------------------
def ground_truth_paths(cache_dir: Path, experiment_id: int) -> tuple[Path, Path]:
    """``(<cache_dir>/ground_truth/<id>.npz, <cache_dir>/ground_truth/<id>.json)``."""
    folder = Path(cache_dir) / "ground_truth"
    return folder / f"{experiment_id}.npz", folder / f"{experiment_id}.json"


def save_ground_truth(cache_dir: Path, experiment_id: int, population: TruePopulation,
                      config: dict[str, Any]) -> tuple[Path, Path]:
    """Write every cell parameter (``.npz``) and a readable summary (``.json``).

    Args:
        config: the synthetic config that made the session (stored in the JSON).
    """
    p = population.params
    npz_path, json_path = ground_truth_paths(cache_dir, experiment_id)
    arrays = p.arrays()
    if not p.out_of_family:  # a Gabor-family cortex: the files keep the bytes they had before the extras
        arrays = {k: v for k, v in arrays.items() if k not in NEUTRAL_EXTRAS}
    arrays = {**arrays, "kinds": p.kinds.astype("U16"), "responsive": p.responsive,
              "work_shape": np.array(population.work_shape, dtype=np.int64),
              "pixels_per_degree": np.array(PIXELS_PER_DEGREE),
              "scene_shape": np.array([SCENE_HEIGHT_PX, SCENE_WIDTH_PX], dtype=np.int64),
              "experiment_id": np.array(experiment_id, dtype=np.int64)}
    write_npz(npz_path, arrays)
    deg_per_width = SCENE_WIDTH_PX / PIXELS_PER_DEGREE
    cells = [{
        "cell_id": int(p.cell_ids[i]), "kind": str(p.kinds[i]), "responsive": bool(p.responsive[i]),
        "x": round(float(p.x[i]), 4), "y": round(float(p.y[i]), 4),
        "sigma_deg": round(float(p.sigma[i] * deg_per_width), 3),
        "sf_cpd": round(float(p.sf[i] / deg_per_width), 4),
        "orientation_deg": round(float(np.rad2deg(p.orientation[i])), 2),
        "orientation2_deg": round(float(np.rad2deg(p.orientation2[i])), 2),
        "phase_deg": round(float(np.rad2deg(p.phase[i]) % 360), 2),
        "peak_rate_hz": round(float(p.peak_rate[i]), 3), "baseline_hz": float(p.baseline[i]),
        "rate_max_hz": round(float(p.rate_max[i]), 3), "saturation": round(float(p.saturation[i]), 3),
        **_extras_summary(p, i),
    } for i in range(p.n_cells)]
    counts = {k: int((p.kinds == k).sum()) for k in KINDS if k not in OUT_OF_FAMILY or p.out_of_family}
    write_json(json_path, {
        "experiment_id": int(experiment_id), "config": config, "kind_counts": counts,
        "pixels_per_degree": PIXELS_PER_DEGREE, "work_shape": list(population.work_shape),
        "coordinates": "x, y: fraction of image width / height; sigma_deg, sf_cpd at the screen centre",
        "cells": cells})
    return npz_path, json_path


def _extras_summary(p: CellParams, i: int) -> dict[str, Any]:
    """The out-of-family parameters of cell ``i`` for the readable summary (none for other kinds)."""
    if p.kinds[i] == "centre_surround":
        return {"surround_ratio": round(float(p.surround_ratio[i]), 3), "on_centre": bool(p.polarity[i] > 0)}
    if p.kinds[i] == "suppressed":
        return {"surround_ratio": round(float(p.surround_ratio[i]), 3),
                "surround_strength": round(float(p.surround_strength[i]), 3)}
    return {}


def load_true_population(cache_dir: Path, experiment_id: int, device: Any = "cpu") -> TruePopulation:
    """The :class:`TruePopulation` of a synthetic session, on ``device``.

    Raises:
        GroundTruthError: no ground-truth file (a real session) or an unreadable one.
    """
    path, _ = ground_truth_paths(cache_dir, experiment_id)
    if not path.is_file():
        raise GroundTruthError(f"no ground truth for experiment {experiment_id} at {path}: "
                               "the session is not synthetic")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
        # files of Gabor-family cortices have no extras: CellParams fills in the neutral values
        params = CellParams(**{fld.name: data[fld.name] for fld in fields(CellParams)
                               if fld.name in data or fld.name not in NEUTRAL_EXTRAS})
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as err:
        raise GroundTruthError(f"{path}: unreadable ground truth ({err})") from None
    work_shape = tuple(int(v) for v in data["work_shape"])
    return TruePopulation(params, work_shape).to(device)


def ground_truth_summary(cache_dir: Path, experiment_id: int) -> dict[str, Any]:
    """The readable JSON summary written beside the ``.npz``."""
    _, path = ground_truth_paths(cache_dir, experiment_id)
    if not path.is_file():
        raise GroundTruthError(f"no ground truth for experiment {experiment_id} at {path}: "
                               "the session is not synthetic")
    return json.loads(path.read_text())
