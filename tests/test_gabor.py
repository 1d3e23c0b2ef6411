"""Gabors: conventions, grid, optimal Gabor and Gabor fit recover planted parameters, statistics."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from meiscope.config import GaborConfig, MeiConfig
from meiscope.insilico.budget import MeiError
from meiscope.insilico.gabor import GaborError, canonical_params, fit_gabor, gabor_grid, gabor_images, optimal_gabors
from meiscope.insilico.mei import synthesize_meis
from planted import local_models

H, W = 24, 32
DEVICE = "cpu"
NORM, WIDE = 8.0, (-3.0, 3.0)
# x, y, theta, wavelength, sigma, phase -- deliberately off the test grid below
TRUE_PARAMS = torch.tensor([[10.3, 12.2, 0.5, 8.6, 3.5, 0.3],
                            [20.6, 11.4, 2.0, 11.0, 4.0, 1.0],
                            [14.0, 9.0, 1.2, 6.5, 3.0, 4.0]])
SMALL_GRID = GaborConfig(n_positions=[5, 7], orientations=8, wavelengths=[5.0, 8.0, 12.0], sigmas=[2.5, 4.0],
                         phases=4, refine_steps=150, batch_size=2048, fit_steps=200)


def unit(images: torch.Tensor) -> torch.Tensor:
    return images / images.flatten(1).norm(dim=1)[:, None, None]


class PlantedLN(nn.Module):
    """``elu(<filter_k, image>) + 1`` with unit-norm Gabor filters."""

    def __init__(self, params: torch.Tensor):
        super().__init__()
        self.register_buffer("filters", unit(gabor_images(params, (H, W), DEVICE)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.elu(torch.einsum("nchw,khw->nk", images, self.filters)) + 1


class Conjunction(nn.Module):
    """One neuron: product of two rectified drives from orthogonal Gabors at the same place."""

    def __init__(self):
        super().__init__()
        pair = torch.tensor([[15.5, 11.5, 0.0, 8.0, 4.0, 0.0], [15.5, 11.5, math.pi / 2, 8.0, 4.0, 0.0]])
        self.register_buffer("filters", unit(gabor_images(pair, (H, W), DEVICE)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        drive = torch.einsum("nchw,khw->nk", images, self.filters)
        return ((F.elu(drive[:, :1]) + 1) * (F.elu(drive[:, 1:]) + 1))




def orientation_error_deg(a: float, b: float) -> float:
    diff = (a - b) % math.pi
    return math.degrees(min(diff, math.pi - diff))


# --------------------------------------------------------------------------------------
# conventions
# --------------------------------------------------------------------------------------
def test_gabor_image_conventions():
    flat = torch.tensor([[10.0, 8.0, 0.0, 4.0, 1e4, 0.0],          # theta 0: varies along x only
                         [10.0, 8.0, math.pi / 2, 4.0, 1e4, 0.0],  # theta pi/2: varies along y only
                         [10.0, 8.0, 0.7, 6.0, 3.0, 1.1]])
    g = gabor_images(flat, (H, W), DEVICE)
    assert g.shape == (3, H, W)
    assert torch.allclose(g[0], g[0][:1].expand(H, W), atol=1e-5)
    assert torch.allclose(g[1], g[1][:, :1].expand(H, W), atol=1e-5)
    assert torch.allclose(g[0][:, 10:14], g[0][:, 14:18], atol=1e-5)  # period 4 px along x
    assert g[0][8, 10] == pytest.approx(1.0) and g[0][8, 12] == pytest.approx(-1.0, abs=1e-5)
    assert g[2][8, 10] == pytest.approx(math.cos(1.1), abs=1e-6)  # phase at the centre
    # (theta + pi, phase) is (theta, -phase); canonical_params keeps the image
    turned = flat[2:].clone()
    turned[0, 2] += math.pi
    turned[0, 5] = -turned[0, 5] + 2 * math.pi
    assert torch.allclose(gabor_images(turned, (H, W), DEVICE), g[2:], atol=1e-5)
    for theta in (0.7 + 3 * math.pi, 0.7 - 2 * math.pi, 0.7 + math.pi):
        raw = torch.tensor([[10.0, 8.0, theta, 6.0, 3.0, 1.1]])
        canon = canonical_params(raw)
        assert 0 <= canon[0, 2] < math.pi and 0 <= canon[0, 5] < 2 * math.pi
        assert canon[0, 2] == pytest.approx(0.7, abs=1e-5)
        assert torch.allclose(gabor_images(canon, (H, W), DEVICE), gabor_images(raw, (H, W), DEVICE), atol=1e-4)
    with pytest.raises(GaborError, match="params"):
        gabor_images(torch.zeros(2, 5), (H, W), DEVICE)


def test_grid_covers_the_documented_ranges():
    grid = gabor_grid(SMALL_GRID, (H, W))
    assert grid.shape == (5 * 7 * 8 * 3 * 2 * 4, 6)
    x, y = grid[:, 0].unique(), grid[:, 1].unique()
    assert len(x) == 7 and len(y) == 5
    assert x.min() == pytest.approx((W - 1) / 2 - 0.35 * W) and x.max() == pytest.approx((W - 1) / 2 + 0.35 * W)
    assert y.min() == pytest.approx((H - 1) / 2 - 0.35 * H)
    assert torch.allclose(grid[:, 2].unique(), torch.arange(8) * math.pi / 8)
    assert torch.allclose(grid[:, 5].unique(), torch.arange(4) * math.pi / 2)
    assert set(grid[:, 3].unique().tolist()) == {5.0, 8.0, 12.0}
    assert len(torch.unique(grid, dim=0)) == len(grid)


# --------------------------------------------------------------------------------------
# planted ground truth
# --------------------------------------------------------------------------------------
def test_optimal_gabors_recover_planted_ln_filters():
    model = PlantedLN(TRUE_PARAMS)
    result = optimal_gabors([model], [0, 1, 2], (H, W), SMALL_GRID, NORM, WIDE, DEVICE, progress=False)
    assert result.n_candidates_evaluated == len(gabor_grid(SMALL_GRID, (H, W)))
    assert result.params.shape == (3, 6) and result.images.shape == (3, H, W)
    assert np.all(result.activations >= result.grid_activations - 1e-5)  # refinement never loses
    for k in range(3):
        got, true = result.params[k], TRUE_PARAMS[k].numpy()
        assert np.hypot(got[0] - true[0], got[1] - true[1]) < 1.0, (k, got, true)
        assert orientation_error_deg(got[2], true[2]) < 10, (k, got, true)
        assert abs(got[3] / true[3] - 1) < 0.2, (k, got, true)
    # the optimum of a linear neuron at a fixed norm is its own filter: response ~ NORM + 1
    assert np.all(result.activations > 0.97 * (NORM + 1))
    norms = np.linalg.norm(result.images.reshape(3, -1), axis=1)
    assert np.allclose(norms, NORM, rtol=1e-4)


def test_fit_gabor_recovers_a_clean_gabor_with_amplitude_and_offset():
    targets = 2.5 * gabor_images(TRUE_PARAMS, (H, W), DEVICE) + 0.3
    targets[1] = -targets[1]  # negative amplitude: the fit moves the sign into the phase
    params, images, corr = fit_gabor(targets, SMALL_GRID, DEVICE)
    assert np.all(corr > 0.99)
    assert np.allclose(images, targets.numpy(), atol=0.15)
    for k in range(3):
        got, true = params[k], TRUE_PARAMS[k].numpy()
        assert np.hypot(got[0] - true[0], got[1] - true[1]) < 0.5
        assert orientation_error_deg(got[2], true[2]) < 5
        assert abs(got[3] / true[3] - 1) < 0.1 and abs(got[4] / true[4] - 1) < 0.1
    with pytest.raises(GaborError, match="targets"):
        fit_gabor(np.zeros((H, W)), SMALL_GRID, DEVICE)


def test_conjunction_neuron_mei_beats_its_optimal_gabor():
    model = Conjunction()
    mei = synthesize_meis([model], [0], (H, W), MeiConfig(n_starts=2, steps=60), NORM, WIDE, DEVICE, seed=0,
                          progress=False)
    cfg = GaborConfig(n_positions=[3, 3], orientations=8, wavelengths=[6.0, 8.0, 11.0], sigmas=[3.0, 5.0],
                      phases=4, refine_steps=60)
    gabor = optimal_gabors([model], [0], (H, W), cfg, NORM, WIDE, DEVICE, progress=False)
    # MEI ~ the plaid (f1 + f2) / sqrt(2): (NORM / sqrt 2 + 1)^2 ~ 44; one Gabor drives both
    # filters only partly (~20 measured)
    assert mei.activations[0] > 1.5 * gabor.activations[0]
    with pytest.raises(MeiError, match="out of range"):
        optimal_gabors([model], [1], (H, W), cfg, NORM, WIDE, DEVICE, progress=False)


def test_translation_shortcut_finds_the_exhaustive_grid_winners_and_windows_change_nothing():
    models = local_models(6, (H, W))
    neurons = [0, 1, 2, 3, 4, 5]
    cfg = dataclasses.replace(SMALL_GRID, refine_steps=30, window=False)
    exhaustive = optimal_gabors(models, neurons, (H, W), dataclasses.replace(cfg, preselect=0), NORM, (-1.5, 2.0),
                                DEVICE, progress=False)
    # scoring all candidates exactly after the shortcut's ranking is the exhaustive grid
    n_grid = exhaustive.n_candidates_evaluated
    everything = optimal_gabors(models, neurons, (H, W), dataclasses.replace(cfg, preselect=n_grid), NORM,
                                (-1.5, 2.0), DEVICE, progress=False)
    assert np.allclose(everything.grid_activations, exhaustive.grid_activations, rtol=1e-5)
    assert np.allclose(everything.grid_params, exhaustive.grid_params, atol=1e-5)
    # the shortcut's ranking puts the winners among its first 5% (the corner neuron 0 included)
    shortcut = optimal_gabors(models, neurons, (H, W), dataclasses.replace(cfg, preselect=n_grid // 20), NORM,
                              (-1.5, 2.0), DEVICE, progress=False)
    assert np.allclose(shortcut.grid_activations, exhaustive.grid_activations, rtol=1e-5)
    windowed = optimal_gabors(models, neurons, (H, W), dataclasses.replace(cfg, window=True, preselect=n_grid // 20),
                              NORM, (-1.5, 2.0), DEVICE, progress=False)
    assert np.allclose(windowed.params, shortcut.params, atol=1e-3)
    assert np.allclose(windowed.activations, shortcut.activations, rtol=1e-4)


def test_refinement_stops_when_it_stops_gaining():
    model = PlantedLN(TRUE_PARAMS)
    full = optimal_gabors([model], [0, 1, 2], (H, W), SMALL_GRID, NORM, WIDE, DEVICE, progress=False)
    early = optimal_gabors([model], [0, 1, 2], (H, W), dataclasses.replace(SMALL_GRID, converge_tol=1e-4), NORM,
                           WIDE, DEVICE, progress=False)
    assert (full.refine_steps_run == SMALL_GRID.refine_steps).all()
    assert (early.refine_steps_run < SMALL_GRID.refine_steps).all() and (early.refine_steps_run % 10 == 0).all()
    assert np.all(early.activations >= 0.999 * full.activations)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_optimal_gabors_on_cuda_match_the_cpu(no_tf32):
    model = PlantedLN(TRUE_PARAMS)
    cpu = optimal_gabors([model], [0, 1, 2], (H, W), SMALL_GRID, NORM, WIDE, "cpu", progress=False)
    gpu = optimal_gabors([model.to("cuda")], [0, 1, 2], (H, W), SMALL_GRID, NORM, WIDE, "cuda", progress=False)
    assert np.allclose(gpu.grid_params, cpu.grid_params)  # the same grid winners
    assert np.allclose(gpu.activations, cpu.activations, rtol=1e-4)
    assert np.allclose(gpu.images, cpu.images, atol=1e-3)


def test_gabor_builds_on_budget_and_scoring_never_on_mei():
    """The dependency direction of meiscope.insilico: gabor uses the budget and the scoring, not MEI synthesis."""
    import subprocess
    import sys

    probe = ("import sys, meiscope.insilico.gabor; "
             "print(sorted(m for m in sys.modules if m.startswith('meiscope.insilico')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "meiscope.insilico.budget" in loaded and "meiscope.insilico.scoring" in loaded
    assert "meiscope.insilico.mei" not in loaded
