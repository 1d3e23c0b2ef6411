"""Unit tests of the response model's pieces: core, readouts, metrics, LN baseline, ensemble files."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

from meiscope.config import ConfigError, ModelConfig, parse_params
from meiscope.model import DeviceError, resolve_device
from meiscope.model.baseline import fit_ln
from meiscope.model.core import ConvCore
from meiscope.model.data import batch_indices, fit_normalisation
from meiscope.model.ensemble import load_ensemble, member_path, save_ensemble
from meiscope.model.evaluation import (corr_to_average, feve, noise_variance, oracle_corr, pearson_columns, predict,
                                       single_trial_corr)
from meiscope.model.network import ModelError, build_model, inference_copy, place_model
from meiscope.model.readouts import (FactorizedReadout, GaussianReadout, feature_r2_map, map_peaks, rf_position_map, robust_z,
                                     spot_map)
from meiscope.model.training import response_loss
from planted import local_models, make_dataset, sparse_noise




def gabor(shape, row, col, theta, wavelength=6.0, sigma=2.0, phase=0.0) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    y, x = yy - row, xx - col
    u = x * np.cos(theta) + y * np.sin(theta)
    return np.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2)) * np.cos(2 * np.pi * u / wavelength + phase)


# ------------------------------------------------------------------------------ device
def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(DeviceError, match="'gpu'"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match="index"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda:0")


# ------------------------------------------------------------------------------ core
@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_core_keeps_image_size(separable, batch_norm):
    core = ConvCore(layers=3, channels=[4, 6, 5], first_kernel=7, hidden_kernel=3,
                    depth_separable=separable, batch_norm=batch_norm)
    out = core(torch.randn(2, 1, 11, 14))
    assert out.shape == (2, 5, 11, 14)
    assert core.out_channels == 5


def test_depth_separable_has_fewer_weights():
    def count(sep):
        return sum(p.numel() for p in ConvCore(layers=3, channels=[16, 16, 16], hidden_kernel=5,
                                               depth_separable=sep).parameters())
    assert count(True) < count(False)


def test_laplace_penalty_prefers_smooth_filters():
    core = ConvCore(layers=1, channels=[1], first_kernel=9, batch_norm=False)
    yy, xx = np.mgrid[:9, :9] - 4
    smooth = torch.tensor(np.exp(-(xx ** 2 + yy ** 2) / 8.0), dtype=torch.float32)
    checker = torch.tensor(((xx + yy) % 2) * 2.0 - 1.0, dtype=torch.float32)
    with torch.no_grad():
        core.first_conv.weight.copy_(smooth.view(1, 1, 9, 9))
        p_smooth = float(core.laplace_penalty())
        core.first_conv.weight.copy_(3.0 * smooth.view(1, 1, 9, 9))
        p_scaled = float(core.laplace_penalty())
        core.first_conv.weight.copy_(checker.view(1, 1, 9, 9))
        p_checker = float(core.laplace_penalty())
    assert p_smooth < 1.0 < p_checker  # checkerboard: 8^2 = 64 per interior pixel
    assert p_scaled == pytest.approx(p_smooth, rel=1e-5)  # scale-free


# ------------------------------------------------------------------------------ config errors
def test_bad_model_params_are_refused_by_parse_params():
    with pytest.raises(ConfigError, match=r"model.channels\[1\]"):
        parse_params({"model": {"layers": 2, "channels": [8, -4]}})
    with pytest.raises(ConfigError, match="model.readout"):
        parse_params({"model": {"readout": "attention"}})


def test_kernel_larger_than_image_is_refused():
    cfg = ModelConfig(layers=2, channels=[4, 4], first_kernel=11, hidden_kernel=3)
    with pytest.raises(ModelError, match=r"model.first_kernel \(11\) is larger than the image \(8x8\)"):
        build_model(cfg, 3, (8, 8))
    with pytest.raises(ModelError, match="hidden_kernel"):
        build_model(ModelConfig(layers=2, channels=[4, 4], first_kernel=5, hidden_kernel=9), 3, (8, 20))
    with pytest.raises(ModelError, match="at least one neuron"):
        build_model(ModelConfig(), 0, (36, 46))


# ------------------------------------------------------------------------------ readouts
def test_gaussian_readout_reads_the_pixel_it_sits_on():
    readout = GaussianReadout(n_neurons=3, channels=2, height=9, width=13).eval()
    where = torch.tensor([[0.0, 0.0], [4.0, 6.0], [8.0, 12.0]])
    readout.init_positions_(where)
    assert torch.allclose(readout.positions(), where, atol=1e-5)
    fmap = torch.randn(5, 2, 9, 13)
    with torch.no_grad():
        readout.bias.zero_()
        out = readout(fmap)
    expected = torch.stack([fmap[:, :, int(r), int(c)] @ readout.features[i]
                            for i, (r, c) in enumerate(where.tolist())], dim=1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_gaussian_readout_jitters_only_in_training():
    readout = GaussianReadout(n_neurons=2, channels=3, height=10, width=10)
    fmap = torch.randn(4, 3, 10, 10)
    readout.eval()
    assert torch.equal(readout(fmap), readout(fmap))
    readout.train()
    assert not torch.equal(readout(fmap), readout(fmap))


def test_gaussian_position_moves_to_the_right_place_by_gradient():
    # Feature map = smooth random fields; the target is the field's value at (6, 9), so only
    # that readout position predicts it exactly, and the field's smoothness gives a gradient.
    gen = torch.Generator().manual_seed(0)
    h, w, peak = 16, 20, (6.0, 9.0)
    t = torch.arange(-6, 7, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * 2.0 ** 2))
    fmap = torch.randn(128, 1, h, w, generator=gen)
    fmap = torch.nn.functional.conv2d(torch.nn.functional.pad(fmap, (6, 6, 6, 6), mode="circular"),
                                      (k[:, None] * k[None, :]).view(1, 1, 13, 13))
    target = fmap[:, 0, 6, 9]
    readout = GaussianReadout(n_neurons=1, channels=1, height=h, width=w).eval()
    readout.init_positions_(torch.tensor([[8.0, 11.0]]))  # 2 px off in both directions
    with torch.no_grad():
        readout.features.fill_(1.0)
    opt = torch.optim.Adam(readout.parameters(), lr=0.02)
    for _ in range(300):
        loss = (readout(fmap)[:, 0] - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        readout.constrain_()
    assert torch.allclose(readout.positions()[0], torch.tensor(peak), atol=0.25)


def _model_with_spread_neurons(cfg: ModelConfig, shape=(20, 27), seed=0):
    """An eval-mode model whose neurons sit at corners, edges, exact pixel centres and in between."""
    torch.manual_seed(seed)
    model = build_model(cfg, 8, shape)
    with torch.no_grad():
        for module in model.modules():  # non-trivial batch-norm statistics
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    positions = torch.tensor([[0, 0], [shape[0] - 1, shape[1] - 1], [0, shape[1] - 1], [9.5, 13.25],
                              [3.7, 24.9], [17.2, 1.4], [10, 13], [18.99, 12.01]])
    model.readout.init_positions_(positions)
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("cfg", [ModelConfig(layers=3, channels=[4, 5, 6], first_kernel=5, hidden_kernel=3),
                                 ModelConfig(layers=2, channels=[3, 4], first_kernel=3, hidden_kernel=5,
                                             depth_separable=True, batch_norm=False)])
def test_window_responses_equal_the_full_image_and_nothing_outside_matters(cfg):
    model = _model_with_spread_neurons(cfg)
    radius = model.core.receptive_field_radius()
    assert radius == (cfg.first_kernel // 2 + (cfg.layers - 1) * (cfg.hidden_kernel // 2))
    neurons = torch.arange(8)
    origins, size = model.response_windows(neurons)
    assert size == (2 * radius + 2, 2 * radius + 2)
    images = torch.randn(8, 1, 20, 27, requires_grad=True)
    full = model(images)[neurons, neurons]
    (grad,) = torch.autograd.grad(full.sum(), images)
    crops = torch.stack([images[b, :, r:r + size[0], c:c + size[1]] for b, (r, c) in enumerate(origins.tolist())])
    windowed = model.window_responses(crops, neurons, origins)
    assert torch.allclose(windowed, full, atol=1e-5, rtol=1e-5)
    inside = torch.zeros_like(grad, dtype=torch.bool)
    for b, (r, c) in enumerate(origins.tolist()):
        assert 0 <= r <= 20 - size[0] and 0 <= c <= 27 - size[1]
        inside[b, :, r:r + size[0], c:c + size[1]] = True
    assert (grad[~inside] == 0).all()  # the response cannot depend on a pixel outside its window
    assert (grad[inside] != 0).float().mean() > 0.5  # and the window is not much larger than needed


@pytest.mark.parametrize("separable", [False, True])
def test_folded_batch_norm_gives_the_same_responses(separable):
    cfg = ModelConfig(layers=3, channels=[4, 5, 6], first_kernel=5, hidden_kernel=3, depth_separable=separable)
    (model,) = local_models(4, (14, 17), seeds=(3,), cfg=cfg)
    folded = inference_copy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    images = torch.randn(5, 1, 14, 17)
    assert torch.allclose(folded(images), model(images), atol=1e-5, rtol=1e-5)


def test_translated_responses_are_exact_away_from_the_border():
    (model,) = local_models(2, (30, 34), seeds=(2,))  # neuron 1 in the middle, radius 3
    canvas = torch.zeros(1, 1, 59, 67)
    canvas[0, 0, 27:32, 31:36] = torch.randn(5, 5)  # a blob around the anchor (29, 33)
    shifts = torch.tensor([[13.0, 15.0], [16.0, 18.0], [15.0, 14.0]])
    fast = model.translated_responses(canvas, (29, 33), torch.tensor([1]), shifts)[0, 0]
    for k, (row, col) in enumerate(shifts.long().tolist()):
        image = canvas[:, :, 29 - row:29 - row + 30, 33 - col:33 - col + 34]
        assert torch.allclose(fast[k], model(image)[0, 1], atol=1e-5)


def test_factorized_readout_has_no_window():
    model = build_model(ModelConfig(readout="factorized", layers=1, channels=[3]), 2, (12, 14))
    assert model.response_windows(torch.tensor([0, 1])) is None


def test_factorized_readout_shape_and_centre_of_mass():
    readout = FactorizedReadout(n_neurons=2, channels=3, height=7, width=9)
    assert readout(torch.randn(4, 3, 7, 9)).shape == (4, 2)
    with torch.no_grad():
        readout.mask.zero_()
        readout.mask[0, 2, 3] = 1.0
        readout.mask[1, 5, 1] = -2.0
        readout.mask[1, 5, 7] = 2.0
    assert torch.allclose(readout.positions(), torch.tensor([[2.0, 3.0], [5.0, 4.0]]))
    with torch.no_grad():
        assert float(readout.regularizer()) == pytest.approx((5.0 + float(readout.features.abs().sum())) / 2)


def test_rf_position_map_finds_simple_and_complex_cells():
    rng = np.random.default_rng(1)
    shape, planted = (20, 22), [(5, 6), (14, 15)]
    images = rng.standard_normal((300, *shape))
    g0, g1 = gabor(shape, *planted[0], 0.0), gabor(shape, *planted[1], 1.0)
    g1q = gabor(shape, *planted[1], 1.0, phase=np.pi / 2)
    simple = np.maximum(np.einsum("ihw,hw->i", images, g0), 0)
    complex_ = np.hypot(np.einsum("ihw,hw->i", images, g1), np.einsum("ihw,hw->i", images, g1q))
    maps = rf_position_map(torch.tensor(images[:, None], dtype=torch.float32),
                           torch.tensor(np.stack([simple, complex_], 1), dtype=torch.float32))
    assert maps.shape == (2, *shape)
    assert np.abs(map_peaks(maps).numpy() - np.array(planted)).max() <= 1


def test_rf_position_map_finds_a_complex_cell_in_a_movie_through_the_calcium_kernel():
    """Movie frames follow each other faster than calcium decays: the trace at a frame mixes the rates of
    the frames before it. Filtering the features through the kernel recovers the receptive field."""
    rng = np.random.default_rng(4)
    shape, planted = (20, 22), (6, 15)
    frames = rng.standard_normal((600, *shape))
    g, gq = gabor(shape, *planted, 1.0), gabor(shape, *planted, 1.0, phase=np.pi / 2)
    rates = np.hypot(np.einsum("ihw,hw->i", frames, g), np.einsum("ihw,hw->i", frames, gq))
    kernel = np.exp(-np.arange(12) / 4.0)
    kernel[0] = 0.0  # one frame of latency
    trace = np.convolve(rates, kernel)[:len(rates)] + rng.standard_normal(len(rates))
    maps = rf_position_map(torch.tensor(frames[:, None], dtype=torch.float32),
                           torch.tensor(trace[:, None], dtype=torch.float32), kernel=torch.tensor(kernel))
    assert maps.shape == (1, *shape)
    assert np.abs(map_peaks(maps).numpy()[0] - np.array(planted)).max() <= 1


def test_feature_r2_map_is_each_pixels_own_ridge_r2_whatever_the_block():
    """The block only sets how many pixels are solved at once (speed), not the result (float rounding aside)."""
    rng = np.random.default_rng(5)
    features = torch.tensor(rng.standard_normal((50, 3, 4, 5)))
    targets = torch.tensor(rng.standard_normal((50, 2)))
    kernel = torch.tensor([0.0, 1.0, 0.5])
    for taps in (None, kernel):
        by_block = [feature_r2_map(features, targets, kernel=taps, block=b) for b in (1, 7, 16, 20)]
        assert all(torch.allclose(by_block[0], other, rtol=0, atol=1e-12) for other in by_block[1:])
    r2 = feature_r2_map(features, targets, ridge=0.1)
    x = features[:, :, 2, 3].numpy()
    x = (x - x.mean(0)) / x.std(0, ddof=1)
    y = targets.numpy() - targets.numpy().mean(0)
    weights = np.linalg.solve(x.T @ x + 0.1 * 50 * np.eye(3), x.T @ y)
    expected = (y * (x @ weights)).sum(0) / (y ** 2).sum(0)
    assert np.allclose(r2[:, 2, 3].numpy(), expected)


def test_spot_map_finds_on_and_complex_cells_through_heavy_noise_and_ignores_unrecorded_cells():
    rng = np.random.default_rng(3)
    shape, planted = (16, 20), [(4, 5), (11, 14)]
    frames = sparse_noise(3000, shape, 8, rng)
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    envelope = [np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 2.0) for r, c in planted]
    on_cell = np.maximum(np.einsum("ihw,hw->i", frames, envelope[0]), 0)  # white spots only
    complex_cell = np.einsum("ihw,hw->i", np.abs(frames), envelope[1])  # white and black alike
    signal = np.stack([on_cell, complex_cell, complex_cell], 1)
    responses = signal + 3 * signal.std(0) * rng.standard_normal(signal.shape)  # single trials, SNR 1/3
    mask = np.ones_like(responses)
    mask[:, 2] = 0  # neuron 2 was not recorded in this session
    maps = spot_map(torch.tensor(frames[:, None], dtype=torch.float32), torch.tensor(responses, dtype=torch.float32),
                    torch.tensor(mask, dtype=torch.float32))
    assert maps.shape == (3, *shape)
    assert np.abs(map_peaks(maps[:2]).numpy() - np.array(planted)).max() <= 1
    assert float(maps[2].abs().max()) == 0.0
    assert float(robust_z(maps)[2].abs().max()) == 0.0  # a flat map stays flat, no division by zero


# ------------------------------------------------------------------------------ data and loss
def test_normalisation_makes_train_means_nonnegative_unit_spread():
    rng = np.random.default_rng(0)
    means = rng.normal(-0.2, 0.05, size=(30, 4))
    norm = fit_normalisation(means)
    units = norm.to_units(means)
    assert units.min(axis=0) == pytest.approx(np.zeros(4), abs=1e-5)
    assert units.std(axis=0) == pytest.approx(np.ones(4), rel=1e-4)
    assert norm.to_dff(units) == pytest.approx(means, abs=1e-6)
    assert fit_normalisation(np.ones((5, 2))).scale == pytest.approx([1.0, 1.0])  # constant: no division by 0


def test_batches_cover_every_image_once_and_never_leave_a_single_image():
    batches = batch_indices(65, 32, torch.Generator().manual_seed(0))
    assert sorted(len(b) for b in batches) == [32, 33]
    assert sorted(torch.cat(batches).tolist()) == list(range(65))
    again = batch_indices(65, 32, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


@pytest.mark.parametrize("kind", ["mse", "poisson"])
def test_repeat_weighted_mean_loss_has_single_trial_gradients(kind):
    # The cost fact: the loss over single trials and the repeat-weighted loss over image means
    # differ by a constant, so their gradients are identical.
    rng = np.random.default_rng(0)
    counts = np.array([3, 5, 2, 4])
    trials = [rng.gamma(2.0, 1.0, size=(c, 3)) for c in counts]
    pred_a = torch.tensor(rng.uniform(0.5, 2.0, size=(4, 3)), requires_grad=True)
    pred_b = pred_a.detach().clone().requires_grad_(True)
    single = torch.cat([pred_a[i].expand(c, 3) for i, c in enumerate(counts)])
    response_loss(single, torch.tensor(np.concatenate(trials)), torch.ones(counts.sum(), dtype=torch.float64),
                  kind).backward()
    means = torch.tensor(np.stack([t.mean(0) for t in trials]))
    response_loss(pred_b, means, torch.tensor(counts, dtype=torch.float64), kind).backward()
    assert torch.allclose(pred_a.grad, pred_b.grad, atol=1e-12)


# ------------------------------------------------------------------------------ metrics
def _noisy_trials(n_images=60, repeats=20, n=5, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    true = rng.standard_normal((n_images, n))
    trial_image = np.repeat(np.arange(n_images), repeats)
    responses = true[trial_image] + noise * rng.standard_normal((len(trial_image), n))
    return true, responses, trial_image


def test_metrics_of_the_true_means_and_of_a_constant():
    true, responses, trial_image = _noisy_trials()
    ceiling = corr_to_average(true, responses, trial_image)
    assert np.all(ceiling > 0.98)
    assert feve(true, responses, trial_image) == pytest.approx(np.ones(5), abs=0.05)
    assert np.all(single_trial_corr(true, responses, trial_image) > 0.85)
    constant = np.zeros_like(true)
    assert np.all(feve(constant, responses, trial_image) < 0.02)
    assert np.all(corr_to_average(constant, responses, trial_image) == 0.0)  # constant: defined as 0
    assert np.all(feve(-true, responses, trial_image) < -2)  # anti-correlated: far below 0
    # Affine changes do not change correlations.
    assert corr_to_average(3 * true + 1, responses, trial_image) == pytest.approx(ceiling)


def test_noise_variance_and_oracle_on_planted_noise():
    true, responses, trial_image = _noisy_trials(noise=0.5, repeats=30)
    assert noise_variance(responses, trial_image) == pytest.approx(np.full(5, 0.25), rel=0.1)
    oracle = oracle_corr(responses, trial_image)
    # A trial = signal + noise (var 0.25); the mean of the 29 others = signal + noise (var 0.25 / 29).
    signal = true.var(axis=0)
    expected = signal / np.sqrt((signal + 0.25) * (signal + 0.25 / 29))
    assert oracle == pytest.approx(expected, abs=0.03)
    noiseless = oracle_corr(true[trial_image], trial_image)
    assert noiseless == pytest.approx(np.ones(5))


def test_feve_is_nan_where_noise_exceeds_the_total_variance():
    rng = np.random.default_rng(0)
    trial_image = np.repeat(np.arange(20), 2)
    # Column 0: pure noise with each image's two trials of opposite sign -> within-image
    # variance is twice the total variance. Column 1: a real signal.
    half = rng.standard_normal(20)
    pure_noise = np.stack([half, -half], 1).ravel()
    signal = np.repeat(rng.standard_normal(20), 2) + 0.01 * rng.standard_normal(40)
    responses = np.stack([pure_noise, signal], 1)
    assert noise_variance(responses, trial_image)[0] > responses[:, 0].var(ddof=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero warnings either
        value = feve(np.zeros((20, 2)), responses, trial_image)
    assert np.isnan(value[0]) and np.isfinite(value[1])


def test_pearson_columns_matches_numpy():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    b[:, 1] += 2 * a[:, 1]
    expected = [np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(4)]
    assert pearson_columns(a, b) == pytest.approx(expected)


# ------------------------------------------------------------------------------ LN baseline
def test_ln_baseline_recovers_a_rectified_linear_neuron():
    rng = np.random.default_rng(0)
    shape = (16, 18)
    images = rng.standard_normal((400, *shape))
    filt = gabor(shape, 8, 9, 0.5, wavelength=10.0, sigma=3.0)
    drive = np.einsum("ihw,hw->i", images, filt) / np.linalg.norm(filt)
    rates = np.stack([np.maximum(drive, 0), 0.5 * drive + 1], 1)
    ds = make_dataset(images, rates, repeats=4, noise=0.05, n_val=20, n_test=40)
    ln = fit_ln(ds, l2=0.1, downsample=2)
    test = ds.image_indices("test")
    pred = ln.predict(ds.images[test])
    corr = pearson_columns(pred, rates[test])
    assert np.all(corr > 0.85), corr
    assert ln.exponent.shape == (2,) and ln.filters().shape == (2, 8, 9)
    # The recovered filter looks like the (pooled) planted one.
    pooled = filt.reshape(8, 2, 9, 2).mean(axis=(1, 3))
    assert pearson_columns(ln.filters()[1].ravel()[:, None], pooled.ravel()[:, None])[0] > 0.8


# ------------------------------------------------------------------------------ ensemble files
def test_save_load_ensemble_round_trip(tmp_path):
    cfg = ModelConfig(layers=2, channels=[4, 4], first_kernel=5, hidden_kernel=3)
    members = []
    for seed in (3, 7):
        torch.manual_seed(seed)
        model = place_model(build_model(cfg, 4, (12, 14)), "cpu")  # as train_one makes them
        model.set_normalisation(np.array([0.1, -0.2, 0.0, 0.3]), np.array([2.0, 1.0, 0.5, 1.5]))
        with torch.no_grad():  # non-default batch-norm statistics must travel too
            model.core.blocks[0][1].running_mean.uniform_(-1, 1)
        members.append(model.eval())
    norm = fit_normalisation(np.random.default_rng(0).standard_normal((10, 4)))
    out = tmp_path / "ensemble"
    (out.mkdir())
    (out / "member_99.pt").write_bytes(b"stale")
    save_ensemble(out, members, cfg, norm, np.array([11, 12, 13, 14]), (12, 14), 127.5, 60.0, [3, 7])
    assert not (out / "member_99.pt").exists()
    ens = load_ensemble(out, "cpu")
    images = np.random.default_rng(1).standard_normal((6, 12, 14)).astype(np.float32)
    assert np.array_equal(predict(members, images, "cpu"), ens.predict(images))
    x = torch.tensor(images)
    assert torch.equal(ens(x), torch.stack([m(x[:, None]) for m in members]).mean(0))
    assert ens.seeds == [3, 7] and ens.image_shape == (12, 14) and ens.model_cfg == cfg
    assert list(ens.cell_ids) == [11, 12, 13, 14] and ens.neuron_index(13) == 2
    assert ens.pixel_mean == 127.5 and ens.to_pixels(ens.to_model(np.array([30.0])))[0] == pytest.approx(30.0)
    assert ens.response_scale == pytest.approx(norm.scale)
    assert not any(p.requires_grad for p in ens.members[0].parameters())
    # Same weights -> same bytes (stable DVC hashes).
    save_ensemble(tmp_path / "again", members, cfg, norm, np.array([11, 12, 13, 14]), (12, 14), 127.5, 60.0, [3, 7])
    for name in ("member_3.pt", "member_7.pt", "ensemble.json"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_load_ensemble_reports_missing_pieces(tmp_path):
    with pytest.raises(ModelError, match="no such ensemble folder"):
        load_ensemble(tmp_path / "nope")
    (tmp_path / "ens").mkdir()
    with pytest.raises(ModelError, match="ensemble.json: missing"):
        load_ensemble(tmp_path / "ens")
    cfg = ModelConfig(layers=1, channels=[2], first_kernel=3)
    torch.manual_seed(0)
    model = build_model(cfg, 2, (8, 8))
    save_ensemble(tmp_path / "ens", [model, model], cfg, fit_normalisation(np.eye(2)), np.array([1, 2]), (8, 8),
                  0.0, 1.0, [1, 2])
    member_path(tmp_path / "ens", 2).unlink()
    with pytest.raises(ModelError, match="member_2.pt: missing member file"):
        load_ensemble(tmp_path / "ens")
    meta = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    meta["seeds"] = [1]
    meta["model"]["channels"] = [3]  # no longer matches the saved weights
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="does not match ensemble.json"):
        load_ensemble(tmp_path / "ens")


def test_place_model_lays_cpu_weights_channels_last_and_keeps_the_outputs():
    cfg = ModelConfig(layers=2, channels=[4, 6], first_kernel=5, hidden_kernel=3)
    torch.manual_seed(0)
    model = build_model(cfg, 3, (12, 14)).eval()
    x = torch.randn(5, 1, 12, 14)
    with torch.no_grad():
        expected = model(x)
        placed = place_model(copy.deepcopy(model), "cpu")
        hidden = placed.core.blocks[1][0].weight  # (6, 4, 3, 3)
        assert hidden.is_contiguous(memory_format=torch.channels_last) and not hidden.is_contiguous()
        assert torch.allclose(placed(x), expected, atol=1e-6)
