"""MEI synthesis: planted LN neurons give back their filters, batching changes nothing, the budget holds."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from meiscope.config import ConfigError, MeiConfig, parse_params
from meiscope.errors import MeiscopeError
from meiscope.insilico.budget import MeiError, check_budget, project_to_budget
from meiscope.insilico.gabor import gabor_images
from meiscope.insilico.mei import (_Progress, blur, blur_sigmas, roll_images, start_state, step_levels,
                                   synthesize_meis, synthesize_meis_looped)
from meiscope.insilico.scoring import best_natural_images, contrast_sweep, score_images
from planted import local_models

H, W = 24, 32
DEVICE = "cpu"
# x, y, theta, wavelength, sigma, phase (model pixels / radians)
TRUE_PARAMS = torch.tensor([[10.3, 12.2, 0.5, 8.0, 3.5, 0.0],
                            [20.6, 11.4, 2.0, 11.0, 4.0, 1.0],
                            [14.0, 9.0, 1.2, 6.5, 3.0, 4.0]])
WIDE = (-3.0, 3.0)  # pixel range wide enough that a unit filter times NORM is never clipped
NORM = 8.0


class PlantedLN(nn.Module):
    """Linear-nonlinear neurons: ``elu(<filter_k, image>) + 1`` with unit-norm filters ``(K, H, W)``."""

    def __init__(self, filters: torch.Tensor):
        super().__init__()
        self.register_buffer("filters", filters / filters.flatten(1).norm(dim=1)[:, None, None])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.elu(torch.einsum("nchw,khw->nk", images, self.filters)) + 1


class SmallCNN(nn.Module):
    """Conv core with batch norm + per-neuron linear readout (like the real models, much smaller)."""

    def __init__(self, n_neurons: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.core = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.BatchNorm2d(4), nn.ELU(),
                                  nn.Conv2d(4, 4, 3, padding=1), nn.ELU())
        self.readout = nn.Linear(4 * H * W, n_neurons)
        with torch.no_grad():  # non-trivial running stats, so train vs eval mode differ
            self.core[1].running_mean.uniform_(-0.2, 0.2)
            self.core[1].running_var.uniform_(0.5, 2.0)
            self.readout.weight.mul_(3.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.elu(self.readout(self.core(images).flatten(1))) + 1


class LinearReLU(nn.Module):
    """``relu(<w_k, image> + bias)`` with unit-norm ``w (K, H, W)``: under an unclipped L2 budget ``n`` the
    optimum is ``n * w_k`` and its response ``n + bias`` (Cauchy-Schwarz). The bias keeps random starts off
    the flat, zero-gradient side of the ReLU."""

    def __init__(self, weights: torch.Tensor, bias: float):
        super().__init__()
        self.register_buffer("weights", weights / weights.flatten(1).norm(dim=1)[:, None, None])
        self.bias = bias

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(torch.einsum("nchw,khw->nk", images, self.weights) + self.bias)


class Energy(nn.Module):
    """Complex cells: ``sum_q <pair_kq, image>^2`` over a quadrature pair ``pairs (K, 2, H, W)`` (phase-invariant)."""

    def __init__(self, pairs: torch.Tensor):
        super().__init__()
        self.register_buffer("pairs", pairs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kqhw->nkq", images, self.pairs).square().sum(-1)


class Gains(nn.Module):
    """Another model with each neuron's response multiplied by its own gain ``(K,)``."""

    def __init__(self, model: nn.Module, gains: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("gains", gains)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images) * self.gains


def planted() -> PlantedLN:
    return PlantedLN(gabor_images(TRUE_PARAMS, (H, W), DEVICE))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


# --------------------------------------------------------------------------------------
# budget
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,bounds", [(10.0, (-1.0, 1.5)), (25.0, (-1.0, 1.2)), (27.0, (-1.0, 1.2))])
def test_projection_holds_norm_and_range_exactly(norm, bounds):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(40, H, W, generator=gen) * torch.rand(40, 1, 1, generator=gen) * 3
    out = project_to_budget(images, norm, bounds)
    norms = out.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, norm), rtol=1e-5)
    assert out.min() >= bounds[0] and out.max() <= bounds[1]
    # projecting again changes nothing; the direction is kept where nothing is clipped
    assert torch.allclose(project_to_budget(out, norm, bounds), out, atol=1e-5)
    if norm > 20:
        assert (out == out.max()).sum() > 10  # the tight budget really clips


def test_projection_is_plain_scaling_without_clipping():
    images = torch.randn(5, H, W, generator=torch.Generator().manual_seed(1))
    out = project_to_budget(images, 2.0, WIDE)
    expected = images * 2.0 / images.flatten(1).norm(dim=1)[:, None, None]
    assert torch.allclose(out, expected, atol=1e-6)


def test_projection_of_a_mixed_batch_equals_each_image_alone():
    # plain-scaling rows skip the breakpoint sort; clipped and all-zero rows take it
    gen = torch.Generator().manual_seed(2)
    smooth = torch.randn(H, W, generator=gen) * 0.1
    spiky = smooth * 0.01
    spiky[2:6, 3:8] = 10.0  # 20 pixels carry almost all the norm: they must clip at 1.5
    images = torch.stack([smooth, spiky, torch.zeros(H, W), smooth * 3])
    out = project_to_budget(images, 6.0, (-1.0, 1.5))
    for i, image in enumerate(images):
        assert torch.allclose(out[i], project_to_budget(image[None], 6.0, (-1.0, 1.5))[0], atol=1e-6)
    assert torch.allclose(out[1].norm(), torch.tensor(6.0), rtol=1e-5) and torch.all(out[1][2:6, 3:8] == out[1].max())
    assert torch.equal(out[2], torch.zeros(H, W))
    assert torch.allclose(out[0], out[3], atol=1e-6)


def test_unreachable_budget_and_bad_bounds_are_refused():
    with pytest.raises(MeiError, match="not reachable"):
        check_budget(np.sqrt(H * W) * 1.0 + 0.1, (-1.0, 2.0), (H, W))
    with pytest.raises(MeiError, match="low < 0 < high"):
        check_budget(1.0, (0.5, 2.0), (H, W))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(MeiError, match="norm"):
            check_budget(bad, WIDE, (H, W))


# --------------------------------------------------------------------------------------
# preconditioning pieces
# --------------------------------------------------------------------------------------
def test_blur_schedule_roll_and_identity():
    sig = blur_sigmas(1.5, 0.01, 5)
    assert sig[0] == pytest.approx(1.5) and sig[-1] == pytest.approx(0.01)
    assert np.allclose(sig[1:] / sig[:-1], sig[1] / sig[0])  # geometric
    assert np.all(blur_sigmas(0, 0, 4) == 0)
    images = torch.randn(3, H, W, generator=torch.Generator().manual_seed(2))
    assert torch.equal(blur(images, None), images)
    shifts = torch.tensor([[0, 0], [1, -2], [-3, 5]])
    rolled = roll_images(images, shifts)
    for b in range(3):
        assert torch.equal(rolled[b], torch.roll(images[b], tuple(shifts[b].tolist()), dims=(0, 1)))


# --------------------------------------------------------------------------------------
# planted ground truth
# --------------------------------------------------------------------------------------
def test_mei_of_planted_ln_neurons_is_their_filter():
    model = planted()
    cfg = MeiConfig(n_starts=2, steps=60)
    result = synthesize_meis([model], [0, 1, 2], (H, W), cfg, NORM, WIDE, DEVICE, seed=0, progress=False)
    assert result.meis.shape == (3, H, W) and result.all_starts.shape == (3, 2, H, W)
    assert result.history.shape == (6, 3) and result.start_activations.shape == (3, 2)
    for k in range(3):
        assert corr(result.meis[k], model.filters[k].numpy()) > 0.95
    # the best possible response at this budget is elu(NORM) + 1 = NORM + 1
    assert np.all(result.activations > 0.95 * (NORM + 1))
    assert np.all(result.activations <= NORM + 1 + 1e-3)
    assert np.allclose(result.activations, result.start_activations.max(axis=1))
    assert np.allclose(result.activations, score_images([model], result.meis, [0, 1, 2], DEVICE), atol=1e-5)
    assert np.all(result.seed_consistency > 0.95)  # one optimum: all starts agree


def test_budget_holds_exactly_after_optimisation_with_heavy_clipping():
    model = planted()
    bounds, norm = (-0.5, 0.6), 12.0  # 12 is close to the box limit sqrt(768) * 0.5 = 13.9
    cfg = MeiConfig(n_starts=2, steps=20, jitter=1)
    result = synthesize_meis([model], [0, 2], (H, W), cfg, norm, bounds, DEVICE, seed=3, progress=False)
    norms = np.linalg.norm(result.all_starts.reshape(4, -1), axis=1)
    assert np.allclose(norms, norm, rtol=1e-4)
    assert result.all_starts.min() >= bounds[0] and result.all_starts.max() <= bounds[1]
    assert np.isclose(result.all_starts, bounds[1]).sum() > 50  # the budget really forces clipping


def test_batched_equals_one_neuron_at_a_time_in_train_mode_models():
    models = [SmallCNN(6, seed=1), SmallCNN(6, seed=2)]
    for m in models:
        m.train()  # synthesize_meis must switch to eval (running stats) and restore the mode
    cfg = MeiConfig(n_starts=2, steps=25, jitter=2, blur_sigma=[1.5, 0.01])
    neurons = [4, 0, 5]
    batched = synthesize_meis(models, neurons, (H, W), cfg, 6.0, (-1.5, 2.0), DEVICE, seed=7, progress=False)
    looped = synthesize_meis_looped(models, neurons, (H, W), cfg, 6.0, (-1.5, 2.0), DEVICE, seed=7, progress=False)
    chunked = synthesize_meis(models, neurons, (H, W), cfg, 6.0, (-1.5, 2.0), DEVICE, seed=7, progress=False,
                              max_batch=4)  # 6 images in passes of 4 + 2
    assert all(m.training and m.core[1].training for m in models)
    assert np.allclose(batched.all_starts, looped.all_starts, atol=1e-5)
    assert np.allclose(batched.all_starts, chunked.all_starts, atol=1e-5)
    assert np.allclose(batched.activations, looped.activations, atol=1e-5)
    assert np.array_equal(batched.best_start, looped.best_start)
    assert np.allclose(batched.history, looped.history, atol=1e-5)
    # starts differ from each other (seeded per start), and the seed matters
    assert not np.allclose(batched.all_starts[:, 0], batched.all_starts[:, 1], atol=1e-3)
    other = synthesize_meis(models, [4], (H, W), dataclasses.replace(cfg, steps=1), 6.0, (-1.5, 2.0), DEVICE,
                            seed=8, progress=False)
    first = synthesize_meis(models, [4], (H, W), dataclasses.replace(cfg, steps=1), 6.0, (-1.5, 2.0), DEVICE,
                            seed=7, progress=False)
    assert not np.allclose(other.all_starts, first.all_starts)


def test_window_mei_equals_the_full_image_mei():
    models = local_models(5, (H, W))
    assert models[0].response_windows(torch.arange(5))[1] == (8, 8)  # 5x5 + 3x3: radius 3
    cfg = MeiConfig(n_starts=2, steps=40, jitter=1)
    full = synthesize_meis(models, [0, 2, 4], (H, W), dataclasses.replace(cfg, window=False), NORM, (-1.5, 2.0),
                           DEVICE, seed=1, progress=False)
    window = synthesize_meis(models, [0, 2, 4], (H, W), cfg, NORM, (-1.5, 2.0), DEVICE, seed=1, progress=False)
    assert np.allclose(window.all_starts, full.all_starts, atol=1e-4)
    assert np.allclose(window.start_activations, full.start_activations, rtol=1e-4)
    assert np.allclose(score_images(models, window.meis, [0, 2, 4], DEVICE),  # scored on whole images
                       window.activations, rtol=1e-4)


def test_converged_starts_stop_early_and_lose_nothing():
    model = planted()
    cfg = MeiConfig(n_starts=2, steps=200)
    full = synthesize_meis([model], [0, 1, 2], (H, W), dataclasses.replace(cfg, converge_tol=0.0), NORM, WIDE,
                           DEVICE, seed=0, progress=False)
    assert (full.steps_run == 200).all()
    early = synthesize_meis([model], [0, 1, 2], (H, W), dataclasses.replace(cfg, converge_tol=1e-3), NORM, WIDE,
                            DEVICE, seed=0, progress=False)
    assert early.steps_run.max() < 200 and early.steps_run.min() >= 10 and (early.steps_run % 10 == 0).all()
    assert np.all(early.activations >= 0.999 * full.activations)
    for k in range(3):
        assert corr(early.meis[k], full.meis[k]) > 0.999
    assert not np.isnan(early.history).any()  # a stopped start keeps its last activation
    for k, start in enumerate(early.best_start):
        stop = early.steps_run[k, start] // 10
        assert (early.history[stop - 1:, k] == early.history[stop - 1, k]).all()


# --------------------------------------------------------------------------------------
# the step rule, per-image step halving and per-image convergence
# --------------------------------------------------------------------------------------
TOL = MeiConfig().converge_tol


def test_mei_of_a_linear_relu_unit_reaches_its_closed_form_optimum():
    # rough (white noise), Gabor and smooth filters; optimum NORM * w, response NORM + bias
    gen = torch.Generator().manual_seed(0)
    weights = torch.stack([torch.randn(H, W, generator=gen), gabor_images(TRUE_PARAMS[:1], (H, W), DEVICE)[0],
                           F.avg_pool2d(torch.randn(1, 1, H + 2, W + 2, generator=gen), 3, 1)[0, 0]])
    bias = 0.1 * NORM
    model = LinearReLU(weights, bias)
    cfg = MeiConfig(n_starts=2)  # the default recipe
    result = synthesize_meis([model], [0, 1, 2], (H, W), cfg, NORM, WIDE, DEVICE, seed=0, progress=False)
    optimum = NORM + bias
    assert np.all(result.start_activations >= (1 - TOL) * optimum), result.start_activations / optimum
    assert np.all(result.start_activations <= optimum * (1 + 1e-5))
    for k in range(3):
        assert corr(result.meis[k], model.weights[k].numpy()) > 0.99
    assert result.steps_run.max() < cfg.steps  # every start converged before the cap


def test_mei_of_a_complex_cell_beats_every_gabor_of_a_grid():
    # energy units of quadrature Gabor pairs: the exact optimum under the budget is NORM^2 times the
    # largest eigenvalue of sum_q pair_q pair_q^T, i.e. of the pair's 2 x 2 Gram matrix
    params = torch.tensor([[11.3, 12.6, 0.6, 7.5, 3.2, 0.0], [19.7, 10.4, 2.2, 10.0, 3.8, 0.0]])
    quadrature = params + torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, np.pi / 2])
    pairs = torch.stack([gabor_images(params, (H, W), DEVICE), gabor_images(quadrature, (H, W), DEVICE)], 1)
    model = Energy(pairs)
    optimum = NORM ** 2 * torch.linalg.eigvalsh(torch.einsum("kqhw,krhw->kqr", pairs, pairs))[:, -1].numpy()
    # a coarse grid (2 px positions, 8 orientations) that misses the true parameters, as a real one does
    grid = torch.tensor(list(itertools.product(np.arange(1.0, W, 2), np.arange(1.0, H, 2),
                                               np.linspace(0, np.pi, 8, endpoint=False), [6.0, 8.0, 11.0],
                                               [3.0, 4.0], [0.0])), dtype=torch.float32)
    gabors = project_to_budget(gabor_images(grid, (H, W), DEVICE), NORM, WIDE)
    with torch.no_grad():
        best_gabor = model(gabors[:, None]).max(dim=0).values.numpy()
    assert np.all(best_gabor < 0.999 * optimum)  # the grid leaves room: the test below is not a tie
    result = synthesize_meis([model], [0, 1], (H, W), MeiConfig(n_starts=2), NORM, WIDE, DEVICE, seed=0,
                             progress=False)
    assert np.all(result.start_activations >= (1 - TOL) * best_gabor[:, None])
    assert np.all(result.activations >= 0.998 * optimum), result.activations / optimum
    assert np.all(result.activations <= optimum * (1 + 1e-5))


def test_each_neuron_of_a_batch_ends_as_if_optimised_alone():
    # gains 1e-2 .. 1e2: a step, blur or plateau test shared across the batch would shortchange some
    gains = torch.logspace(-2, 2, 5)
    models = [Gains(m, gains) for m in local_models(5, (H, W))]
    cfg = MeiConfig(n_starts=2, jitter=1)
    neurons = [0, 1, 2, 3, 4]
    together = synthesize_meis(models, neurons, (H, W), cfg, 6.0, (-1.5, 2.0), DEVICE, seed=7, progress=False)
    alone = synthesize_meis_looped(models, neurons, (H, W), cfg, 6.0, (-1.5, 2.0), DEVICE, seed=7, progress=False)
    assert np.allclose(together.start_activations, alone.start_activations, rtol=0.02)
    assert np.array_equal(together.steps_run, alone.steps_run)
    assert len(np.unique(together.steps_run)) > 1  # the neurons really converge at different steps


def test_a_plateaued_image_stops_while_another_keeps_ascending():
    models = local_models(5, (H, W))  # neuron 0 sits in the corner and climbs for longer than neuron 1
    cfg = MeiConfig(n_starts=2, steps=150)
    result = synthesize_meis(models, [0, 1], (H, W), cfg, 6.0, (-1.5, 2.0), DEVICE, seed=7, progress=False)
    assert (result.steps_run[1] < cfg.steps).all() and (result.steps_run[0] == cfg.steps).all()
    stopped = int(result.steps_run[1, result.best_start[1]]) // 10  # history rows are every 10 steps
    still = result.history[stopped - 1:, 0]
    assert still[-1] > (1 + TOL) * still[0]  # neuron 0 went on rising after neuron 1 stopped
    assert np.all(result.history[stopped - 1:, 1] == result.history[stopped - 1, 1])
    # the step cap is the only thing that ended neuron 0: with more steps it climbs higher
    longer = synthesize_meis(models, [0, 1], (H, W), dataclasses.replace(cfg, steps=300), 6.0, (-1.5, 2.0),
                             DEVICE, seed=7, progress=False)
    assert longer.activations[0] > result.activations[0]
    assert np.array_equal(longer.steps_run[1], result.steps_run[1])
    # an image's MEI is the best image it scored: never below its history (no jitter: the same objective)
    assert np.all(result.activations >= np.nanmax(result.history, axis=0) - 1e-6)


def test_one_step_moves_lr_times_the_budget_along_the_unit_gradient():
    model = LinearReLU(gabor_images(TRUE_PARAMS, (H, W), DEVICE), 0.1 * NORM)
    cfg = MeiConfig(n_starts=1, steps=1, blur_sigma=[0.0, 0.0])
    result = synthesize_meis([model], [2], (H, W), cfg, NORM, WIDE, DEVICE, seed=4, progress=False)
    init, _ = start_state(4, 2, 0, (H, W), cfg.init_std, 1, 0)
    start = NORM * init / np.linalg.norm(init)  # projected onto the budget (no clipping in WIDE)
    moved = start + cfg.lr * NORM * model.weights[2].numpy()  # the gradient of w.x is w, of unit norm
    assert np.allclose(result.meis[0], NORM * moved / np.linalg.norm(moved), atol=1e-5)
    levels = step_levels(cfg.lr, cfg.lr_decay)
    assert levels[0] == cfg.lr and levels[-1] == pytest.approx(cfg.lr * cfg.lr_decay)
    assert np.allclose(levels[1:-1] / levels[:-2], 0.5) and levels[-1] <= levels[-2]


@pytest.mark.parametrize("tol", [1e-3, 0.0])
def test_a_plateau_halves_the_step_from_the_best_image_and_ends_at_the_smallest(tol):
    # three images, each a constant: 0 rises, 1 falls after its first test, 2 falls at the smallest step
    x = torch.arange(3.0)[:, None, None].expand(3, 2, 2).clone()
    state = _Progress.start(x, steps=50)
    every = torch.arange(3)
    state.record(every, x, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(state.test_plateaus(x, every, tol, last_level=4, t=9), every)  # the first test only sets a mark
    state.level[2] = 4
    moved = x + 10
    state.record(every, moved, torch.tensor([1.5, 1.0, 2.0]))
    still = state.test_plateaus(moved, every, tol, last_level=4, t=19)
    assert state.level.tolist() == [0, 1, 4]
    assert torch.equal(moved[0], x[0] + 10)  # still rising: keeps its image and its step
    assert torch.equal(moved[1], x[1])  # plateaued: back to its best image, with half the step
    if tol > 0:
        assert still.tolist() == [0, 1] and state.steps_run.tolist() == [50, 50, 20]
    else:  # converge_tol = 0: every image runs to the cap
        assert still.tolist() == [0, 1, 2] and state.steps_run.tolist() == [50, 50, 50]


@pytest.mark.parametrize("norm,bounds", [(NORM, WIDE), (12.0, (-0.5, 0.6))])
def test_no_step_leaves_the_budget(norm, bounds):
    # the largest step allowed (lr = 1: one budget norm per step), with and without heavy clipping
    models = [SmallCNN(6, seed=1), SmallCNN(6, seed=2)]
    cfg = MeiConfig(n_starts=2, steps=40, lr=1.0, jitter=1)
    result = synthesize_meis(models, [0, 3, 5], (H, W), cfg, norm, bounds, DEVICE, seed=2, progress=False)
    norms = np.linalg.norm(result.all_starts.reshape(6, -1).astype(np.float64), axis=1)
    assert np.all(norms <= norm + 1e-6 * norm) and np.all(norms >= norm * (1 - 1e-5))
    assert result.all_starts.min() >= bounds[0] and result.all_starts.max() <= bounds[1]
    with pytest.raises(ConfigError, match="mei.lr"):
        MeiConfig(lr=1.5)  # a step longer than the budget's norm
    with pytest.raises(ConfigError, match="mei.converge_window"):
        MeiConfig(converge_window=0)


# --------------------------------------------------------------------------------------
# scoring helpers
# --------------------------------------------------------------------------------------
def test_score_contrast_and_best_natural_images():
    model = planted()
    gen = torch.Generator().manual_seed(4)
    naturals = torch.randn(20, H, W, generator=gen) * 0.3
    naturals[13] = model.filters[1] * 5.0  # the planted best image of neuron 1
    drive = torch.einsum("nhw,khw->nk", naturals, model.filters)
    scores = score_images([model], naturals[:3], [2, 0, 1], DEVICE)
    assert np.allclose(scores, (F.elu(drive[[0, 1, 2], [2, 0, 1]]) + 1).numpy(), atol=1e-5)

    sweep = contrast_sweep([model], model.filters[[0, 1]] * 4, [0, 1], [0.0, 0.5, 1.0, 2.0], DEVICE, WIDE)
    assert np.allclose(sweep, F.elu(torch.tensor([0.0, 2.0, 4.0, 8.0])).numpy() + 1, atol=1e-4)
    clipped = contrast_sweep([model], model.filters[[0]] * 4, [0], [1.0, 50.0], DEVICE, (-0.1, 0.1))
    assert clipped[0, 1] < 50 * clipped[0, 0]  # clipping caps the gain

    idx, raw, matched = best_natural_images([model], naturals, [1, 0], DEVICE, norm=NORM, bounds=WIDE)
    assert idx[0] == 13 and idx[1] == int(drive[:, 0].argmax())
    assert raw[0] == pytest.approx(6.0, rel=1e-4)
    assert matched[0] == pytest.approx(NORM + 1, rel=1e-4)  # same image scaled to the budget
    _, raw2, same = best_natural_images([model], naturals, [1], DEVICE)
    assert np.allclose(raw2, same)


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------
def test_bad_parameters_give_clear_errors():
    with pytest.raises(ConfigError, match="mei.steps"):
        parse_params({"mei": {"steps": 0}})
    with pytest.raises(ConfigError, match="mei.norm"):
        parse_params({"mei": {"norm": -1.0}})
    model, cfg = planted(), MeiConfig(steps=2, n_starts=1)
    with pytest.raises(MeiError, match="norm"):
        synthesize_meis([model], [0], (H, W), cfg, 0.0, WIDE, DEVICE, seed=0, progress=False)
    with pytest.raises(MeiError, match="norm"):
        synthesize_meis([model], [0], (H, W), cfg, -2.0, WIDE, DEVICE, seed=0, progress=False)
    with pytest.raises(MeiError, match="out of range"):
        synthesize_meis([model], [0, 3], (H, W), cfg, NORM, WIDE, DEVICE, seed=0, progress=False)
    with pytest.raises(MeiError, match="out of range"):
        score_images([model], torch.zeros(1, H, W), [-1], DEVICE)
    with pytest.raises(MeiError, match="max_batch"):
        synthesize_meis([model], [0], (H, W), cfg, NORM, WIDE, DEVICE, seed=0, progress=False, max_batch=0)
    with pytest.raises(MeiError, match="empty"):
        synthesize_meis([], [0], (H, W), cfg, NORM, WIDE, DEVICE, seed=0, progress=False)
    recipe = dataclasses.make_dataclass("Recipe", [(f.name, object) for f in dataclasses.fields(MeiConfig)])
    zero_steps = recipe(**{**dataclasses.asdict(cfg), "steps": 0})  # bypasses MeiConfig's own check
    with pytest.raises(MeiError, match="steps"):
        synthesize_meis([model], [0], (H, W), zero_steps, NORM, WIDE, DEVICE, seed=0, progress=False)
    assert issubclass(MeiError, MeiscopeError)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_meis_on_cuda_match_the_cpu(no_tf32):
    models_cpu = [SmallCNN(6, seed=1).eval(), SmallCNN(6, seed=2).eval()]
    models_gpu = [copy.deepcopy(m).to("cuda") for m in models_cpu]
    cfg = MeiConfig(n_starts=2, steps=30, jitter=1)
    cpu = synthesize_meis(models_cpu, [4, 0, 5], (H, W), cfg, 6.0, (-1.5, 2.0), "cpu", seed=7, progress=False)
    gpu = synthesize_meis(models_gpu, [4, 0, 5], (H, W), cfg, 6.0, (-1.5, 2.0), "cuda", seed=7, progress=False)
    assert np.allclose(gpu.all_starts, cpu.all_starts, atol=1e-3)
    assert np.allclose(gpu.activations, cpu.activations, rtol=1e-4)
    assert np.array_equal(gpu.best_start, cpu.best_start)


def test_in_silico_stage_modules_expose_run_and_import_light():
    """One thin module per stage, ``run(params, root[, device])``; torch and plotting load only when it runs."""
    import inspect
    import subprocess
    import sys

    stages = {"mei": ["params", "root", "device"], "gabor": ["params", "root", "device"],
              "validate": ["params", "root", "device"], "report": ["params", "root", "device"]}
    for name, arguments in stages.items():
        module = __import__(f"meiscope.stages.{name}", fromlist=["run"])
        assert list(inspect.signature(module.run).parameters) == arguments, name
    probe = ("import sys; import meiscope.stages.mei, meiscope.stages.gabor, meiscope.stages.validate, "
             "meiscope.stages.report; print([m for m in ('torch', 'mlflow', 'matplotlib') if m in sys.modules])")
    heavy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert heavy.strip() == "[]"
