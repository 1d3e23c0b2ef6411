"""Cells outside the Gabor family (centre-surround, surround-suppressed): planted properties come back out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from meiscope.synthetic.population import (KINDS, NEUTRAL_EXTRAS, CellParams, ExtraRanges, TruePopulation,
                                           load_true_population, sample_cells, save_ground_truth)

SHAPE = (58, 74)  # a small working grid: the population reads it without resampling
CONTRAST = 0.5  # of the spots and gratings below (no pixel leaves 0-255)


def planted_cells(kinds: list[str], sigma: float = 0.05, sf: float = 12.0, orientation: float = 0.3,
                  ratio: list[float] | None = None, strength: list[float] | None = None,
                  polarity: list[float] | None = None) -> CellParams:
    """Cells at the screen centre with the given kinds and out-of-family parameters (``(n,)`` lists).

    ``sigma`` in image widths, ``sf`` in cycles per image width; rate = drive / (drive + 1) (no baseline).
    """
    n = len(kinds)

    def full(value: float) -> np.ndarray:
        return np.full(n, float(value))

    def given(values: list[float] | None, name: str) -> np.ndarray:
        return np.asarray(values if values is not None else [NEUTRAL_EXTRAS[name]] * n, dtype=np.float64)

    return CellParams(cell_ids=np.arange(n), kinds=np.array(kinds), x=full(0.5), y=full(0.5), sigma=full(sigma),
                      sf=full(sf), orientation=full(orientation), phase=full(0.0), orientation2=full(orientation),
                      phase2=full(0.0), saturation=full(3.0), rate_max=full(1.0), semisaturation=full(1.0),
                      baseline=full(0.0), peak_rate=full(1.0), surround_ratio=given(ratio, "surround_ratio"),
                      surround_strength=given(strength, "surround_strength"), polarity=given(polarity, "polarity"))


def radius_map(shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """``(H, W)`` distance of each pixel centre from the screen centre, in image widths (as the population's)."""
    h, w = shape
    px = ((np.arange(w) + 0.5) / w)[None, :]
    py = ((np.arange(h) + 0.5) / h * (h / w))[:, None]
    return np.hypot(px - 0.5, py - 0.5 * h / w)


def drives(population: TruePopulation, pixels: np.ndarray) -> np.ndarray:
    """``(N, n_cells)`` float64 drives of ``(N, H, W)`` 0-255 images."""
    with torch.no_grad():
        return population.to(torch.float64).drive(torch.as_tensor(pixels, dtype=torch.float64)).numpy()


# --------------------------------------------------------------------------------------
# centre-surround: a difference of Gaussians, ON or OFF
# --------------------------------------------------------------------------------------
def test_centre_surround_spot_tuning_peaks_at_the_planted_centre_size_and_prefers_its_polarity():
    """Area summation of a balanced DoG: the response to a centred spot rises, peaks where centre and surround
    densities cross (r* = 2 k sigma sqrt(ln k / (k^2 - 1))) and falls to ~0 at full field; ON likes bright spots."""
    sigma, ratio = 0.05, [2.0, 3.0, 2.5]
    population = TruePopulation(planted_cells(["centre_surround"] * 3, sigma=sigma, ratio=ratio,
                                              polarity=[1.0, 1.0, -1.0]), work_shape=SHAPE)
    radii = np.linspace(0.005, 0.4, 80)
    step = radii[1] - radii[0]
    disks = np.stack([radius_map() <= r for r in radii]).astype(np.float64)
    bright, dark = drives(population, 127 + 127 * CONTRAST * disks), drives(population, 127 - 127 * CONTRAST * disks)
    for cell, k in enumerate(ratio):
        preferred = bright[:, cell] if cell < 2 else dark[:, cell]
        planted = 2 * k * sigma * np.sqrt(np.log(k) / (k ** 2 - 1))
        assert abs(radii[np.argmax(preferred)] - planted) <= step  # peaks at the planted size...
        assert preferred[-1] < 0.05 * preferred.max()  # ...and the surround cancels a large spot
        assert np.all(np.diff(preferred[: np.argmax(preferred) + 1]) >= 0)  # rises up to the peak (pixel steps)
    # ON cells ignore dark spots, the OFF cell bright ones (a rectified DoG)
    assert dark[:, :2].max() == 0 and bright[:, 2].max() == 0
    assert bright[:, 0].max() > 0 and dark[:, 2].max() > 0
    # the larger surround peaks at a larger spot (the planted ratio, not only sigma, sets the size)
    assert np.argmax(bright[:, 1]) > np.argmax(bright[:, 0])


def test_centre_surround_cells_are_unoriented():
    """A DoG has no preferred orientation: gratings of every orientation drive it alike (a Gabor cell would not)."""
    population = TruePopulation(planted_cells(["centre_surround", "simple"], ratio=[2.0, 1.0]), work_shape=SHAPE)
    h, w = SHAPE
    px = ((np.arange(w) + 0.5) / w)[None, :] - 0.5
    py = ((np.arange(h) + 0.5) / h * (h / w))[:, None] - 0.5 * h / w
    window = radius_map() <= 0.15
    best = []
    for theta in np.arange(8) * np.pi / 8:
        along = px * np.cos(theta) + py * np.sin(theta)
        phases = np.arange(8) * np.pi / 4
        gratings = np.stack([127 + 127 * CONTRAST * window * np.cos(2 * np.pi * 4.0 * along + p) for p in phases])
        best.append(drives(population, gratings).max(axis=0))
    best = np.array(best)  # (orientations, cells)
    assert best[:, 0].min() > 0.8 * best[:, 0].max()  # centre-surround: flat over orientation
    assert best[:, 1].min() < 0.2 * best[:, 1].max()  # the simple control is tuned


# --------------------------------------------------------------------------------------
# surround suppression: a Gabor centre minus a wider Gabor surround
# --------------------------------------------------------------------------------------
def preferred_grating(orientation: float = 0.3, sf: float = 12.0, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """``(H, W)`` the cells' full-screen preferred grating (carrier of the population's Gabors), in [-1, 1]."""
    h, w = shape
    px = ((np.arange(w) + 0.5) / w)[None, :] - 0.5
    py = ((np.arange(h) + 0.5) / h * (h / w))[:, None] - 0.5 * h / w
    return np.cos(2 * np.pi * sf * (px * np.cos(orientation) + py * np.sin(orientation)))


def test_suppressed_cell_size_tuning_falls_beyond_its_centre_by_about_the_planted_strength():
    """Size tuning (Sceniak et al. 1999; Cavanaugh et al. 2002): the response to a growing patch of the preferred
    grating peaks at a patch near the centre's size, then falls; the full-field response is exactly (1 - strength)
    of the centre's, and the suppression index (peak - full) / peak approaches the strength for a wide surround."""
    strength = [0.3, 0.7, 0.0]
    population = TruePopulation(planted_cells(["suppressed", "suppressed", "simple"], sigma=0.04, ratio=[4.0, 4.0, 1.0],
                                              strength=strength), work_shape=SHAPE)
    grating = preferred_grating()
    radii = np.linspace(0.01, 0.6, 60)
    patches = np.stack([grating * (radius_map() <= r) for r in radii] + [grating])  # the last: full screen
    linear = np.sqrt(drives(population, 127 + 127 * CONTRAST * patches))  # relu(a - |b|): linear in contrast
    centre_only = np.sqrt(drives(TruePopulation(planted_cells(["simple"], sigma=0.04), work_shape=SHAPE),
                                 127 + 127 * CONTRAST * patches))[:, 0]
    index = (linear.max(axis=0) - linear[-1]) / linear.max(axis=0)
    for cell in (0, 1):
        peak = radii[np.argmax(linear[:-1, cell])]
        assert 1.5 * 0.04 <= peak <= 4 * 0.04  # the summation field: a few centre s.d.
        assert linear[-1, cell] == pytest.approx((1 - strength[cell]) * centre_only[-1], rel=1e-6)
        assert strength[cell] - 0.1 < index[cell] <= strength[cell] + 1e-9
    assert index[1] > index[0] + 0.3  # the planted strengths are told apart
    assert index[2] < 0.02  # the Gabor control is not suppressed


def test_suppressed_cell_ignores_the_surround_alone_and_is_suppressed_by_it():
    """The surround subtracts: an annulus alone does not drive the cell, and added to the centre it lowers the
    response (the rectified surround, |b|, suppresses at either phase)."""
    population = TruePopulation(planted_cells(["suppressed"], sigma=0.04, ratio=[3.0], strength=[0.8]),
                                work_shape=SHAPE)
    grating, r = preferred_grating(), radius_map()
    centre, annulus = grating * (r <= 0.1), grating * ((r > 0.1) & (r <= 0.4))
    stimuli = 127 + 127 * CONTRAST * np.stack([centre, annulus, centre + annulus, centre - annulus])
    d = drives(population, stimuli)[:, 0]
    assert d[1] == 0 and d[0] > 0
    assert d[2] < 0.8 * d[0] and d[3] < 0.8 * d[0]


# --------------------------------------------------------------------------------------
# drawing the population
# --------------------------------------------------------------------------------------
FAMILY = {"simple": 0.3, "complex": 0.3, "conjunction": 0.2, "unresponsive": 0.2}
MIXED = {"simple": 0.2, "complex": 0.2, "conjunction": 0.1, "centre_surround": 0.2, "suppressed": 0.2,
         "unresponsive": 0.1}


def draw(n: int, fractions: dict[str, float], seed: int = 3, **kwargs) -> CellParams:
    return sample_cells(n, fractions, (4.0, 8.0), (2.0, 10.0), 0.5, np.arange(n), np.random.default_rng(seed), **kwargs)


@pytest.mark.parametrize("planted", [(0.0, 1.0), (0.2, 0.8), (0.1, 0.4)])
def test_rf_centre_range_is_recovered_from_the_drawn_centres(planted):
    """[0, 1] spreads RF centres over the whole screen; any planted range comes back as the centres' range."""
    p = draw(3000, MIXED, rf_centre_range=planted)
    for axis in (p.x, p.y):
        assert axis.min() >= planted[0] and axis.max() <= planted[1]
        assert axis.min() - planted[0] < 0.01 and planted[1] - axis.max() < 0.01  # the whole range is used
        # uniform: each tenth of the range holds about a tenth of the cells
        counts = np.histogram(axis, bins=10, range=planted)[0]
        assert counts.min() > 0.7 * len(axis) / 10


def test_extra_parameters_come_from_their_own_stream_and_follow_the_kinds():
    """Drawing the out-of-family kinds moves none of the other draws; their parameters are in their ranges,
    neutral for the other kinds, and the ON share is the planted one."""
    ranges = ExtraRanges(centre_surround_ratio=(1.5, 3.0), on_fraction=0.25, suppressed_ratio=(2.0, 4.0),
                         suppressed_strength=(0.5, 1.0))
    family, mixed = draw(2000, FAMILY), draw(2000, MIXED, extras=ranges)
    for name in ("x", "y", "sigma", "saturation"):
        np.testing.assert_array_equal(getattr(family, name), getattr(mixed, name))
    cs, sup = mixed.kinds == "centre_surround", mixed.kinds == "suppressed"
    assert cs.sum() == 400 and sup.sum() == 400
    assert np.all((mixed.surround_ratio[cs] >= 1.5) & (mixed.surround_ratio[cs] <= 3.0))
    assert np.all((mixed.surround_ratio[sup] >= 2.0) & (mixed.surround_ratio[sup] <= 4.0))
    assert np.all((mixed.surround_strength[sup] >= 0.5) & (mixed.surround_strength[sup] <= 1.0))
    assert np.mean(mixed.polarity[cs] > 0) == pytest.approx(0.25, abs=0.06)
    other = ~(cs | sup)
    for name, neutral in NEUTRAL_EXTRAS.items():
        assert np.all(getattr(mixed, name)[other] == neutral)
        assert np.all(getattr(family, name) == neutral)
    assert np.all(mixed.polarity[sup] == 1) and np.all(mixed.surround_strength[cs] == 0)
    assert mixed.out_of_family and not family.out_of_family


def test_unknown_kind_is_refused_naming_it():
    with pytest.raises(ValueError, match="end_stopped"):
        draw(10, {"simple": 0.5, "end_stopped": 0.5})
    assert "unresponsive" == KINDS[-1]  # new kinds sit before it, so a zero share leaves the kind draw as it was


def test_ground_truth_round_trip_keeps_the_out_of_family_parameters(tmp_path):
    """save_ground_truth / load_true_population: the same parameters, the same filters and rates; the summary
    names each out-of-family cell's surround."""
    params = draw(40, MIXED, seed=5)
    population = TruePopulation(params, work_shape=(23, 29))
    save_ground_truth(tmp_path, 7, population, {"profile": "out_of_family"})
    loaded = load_true_population(tmp_path, 7)
    for name, values in params.arrays().items():
        np.testing.assert_array_equal(getattr(loaded.params, name), values, err_msg=name)
    assert torch.equal(loaded.filters, population.filters) and loaded.kinds == population.kinds
    summary = json.loads((tmp_path / "ground_truth" / "7.json").read_text())
    assert summary["kind_counts"]["centre_surround"] == 8 and summary["kind_counts"]["suppressed"] == 8
    for cell, row in zip(params.kinds, summary["cells"]):
        if cell == "centre_surround":
            assert set(row) >= {"surround_ratio", "on_centre"}
        elif cell == "suppressed":
            assert set(row) >= {"surround_ratio", "surround_strength"}
        else:
            assert "surround_ratio" not in row


def test_gabor_family_ground_truth_has_no_extras_and_loads_neutral(tmp_path):
    """A Gabor-family cortex writes the files it wrote before the new kinds existed; loading fills in neutral values."""
    params = draw(20, FAMILY)
    save_ground_truth(tmp_path, 8, TruePopulation(params, work_shape=(23, 29)), {})
    with np.load(tmp_path / "ground_truth" / "8.npz") as f:
        assert not set(NEUTRAL_EXTRAS) & set(f.files)
        assert f["kinds"].dtype == np.dtype("<U16")
    summary = json.loads((tmp_path / "ground_truth" / "8.json").read_text())
    assert set(summary["kind_counts"]) == {"simple", "complex", "conjunction", "unresponsive"}
    loaded = load_true_population(tmp_path, 8)
    for name, neutral in NEUTRAL_EXTRAS.items():
        assert np.all(getattr(loaded.params, name) == neutral)


def test_the_recorded_config_names_the_out_of_family_settings_only_when_used():
    """The ground truth's config of a Gabor-family cortex keeps the keys it had before the new kinds existed
    (its bytes are pinned by data.dvc); an out-of-family cortex records its profile, kinds and RF range."""
    from meiscope.config import parse_params
    from meiscope.config import recorded_config

    family = recorded_config(parse_params({}).synthetic)
    assert not {"profile", "rf_centre_range", "suppressed_strength"} & set(family)
    assert set(family["kinds"]) == {"simple", "complex", "conjunction", "unresponsive"}
    other = recorded_config(parse_params({"synthetic": {"profile": "out_of_family"}}).synthetic)
    assert other["profile"] == "out_of_family" and other["rf_centre_range"] == [0.0, 1.0]
    assert other["kinds"]["centre_surround"] > 0 and other["kinds"]["suppressed"] > 0


def test_every_part_of_the_report_knows_the_out_of_family_kinds():
    """The metric catalogue, the report's colours and its targets list the kinds the population draws."""
    from meiscope import report_figures, report_sections
    from meiscope.science import catalogue
    from meiscope.synthetic.population import DRIVEN_KINDS, OUT_OF_FAMILY

    assert set(catalogue.KINDS) == set(DRIVEN_KINDS)
    assert set(KINDS) <= set(report_figures.KIND_COLOURS)
    assert len(set(report_figures.KIND_COLOURS.values())) == len(report_figures.KIND_COLOURS)  # told apart
    assert report_sections.BEYOND_GABOR == OUT_OF_FAMILY
    assert catalogue.ordered_kinds(["suppressed", "unresponsive", "simple", "centre_surround"]) == [
        "simple", "centre_surround", "suppressed"]
    missed = report_sections.target_note({"train": {}, "validate": {"n_suppressed": 4,
                                                                    "gt_verdict_mei_vs_gabor_suppressed": 0}})
    assert "(suppressed)" in missed and "MEI ties" in missed
    assert report_sections.target_note({"train": {}, "validate": {"n_suppressed": 4,
                                                                  "gt_verdict_mei_vs_gabor_suppressed": 1}}) == ""
