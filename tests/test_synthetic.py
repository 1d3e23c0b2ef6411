"""The synthetic cortex: Allen-layout NWB files that allensdk reads, and a ground truth that holds."""

from __future__ import annotations

import hashlib
import math
import socket
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
from scipy.signal import lfilter
import pytest
import torch

from meiscope.config import SyntheticConfig
from meiscope.errors import MeiscopeError
from meiscope.synthetic import fluorescence as fl
from meiscope.synthetic.cortex import make_schedule, simulate_session, synthesize_sessions
from meiscope.synthetic.nwb import write_session_nwb
from meiscope.synthetic.population import (GroundTruthError, gabor, gabor_pixels, ground_truth_paths,
                                           load_true_population)
from meiscope.synthetic.scenes import make_scenes

H, W = 92, 118
TINY = SyntheticConfig(n_sessions=2, n_cells=12, n_images=6, repeats=4, image_height=H, image_width=W,
                       spontaneous_s=10.0)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def nwb_path(cache: Path, experiment_id: int) -> Path:
    return cache / "ophys_experiment_data" / f"{experiment_id}.nwb"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiny")
    ids = synthesize_sessions(TINY, cache, progress=False)
    return cache, ids


@pytest.fixture(scope="module")
def dataset(tiny):
    from allensdk.core.brain_observatory_nwb_data_set import BrainObservatoryNwbDataSet

    cache, ids = tiny
    return BrainObservatoryNwbDataSet(str(nwb_path(cache, ids[0])))


@pytest.fixture(scope="module")
def population(tiny):
    cache, ids = tiny
    return load_true_population(cache, ids[0])


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(TINY.n_images, H, W, TINY.seed)


def rates_of(population, pixels) -> np.ndarray:
    with torch.no_grad():
        return population(torch.as_tensor(np.asarray(pixels, dtype=np.float32))).numpy()


# --------------------------------------------------------------------------------------
# the files, read by allensdk itself
# --------------------------------------------------------------------------------------
def test_cache_layout_and_ids(tiny):
    cache, ids = tiny
    assert ids == [TINY.first_experiment_id, TINY.first_experiment_id + 1]
    assert (cache / "manifest.json").is_file()
    for i in ids:
        assert nwb_path(cache, i).is_file()
        assert all(p.is_file() for p in ground_truth_paths(cache, i))


def test_metadata(dataset):
    meta = dataset.get_metadata()
    assert meta["session_type"] == "three_session_B"
    assert meta["ophys_experiment_id"] == TINY.first_experiment_id
    assert meta["cre_line"] == "Cux2-CreERT2/wt"
    assert meta["imaging_depth_um"] == 175
    assert meta["targeted_structure"] == "VISp"
    assert meta["pipeline_version"] == "3.0"
    assert meta["age_days"] == 104
    assert meta["device_name"] == "SYNTH-2P"
    assert isinstance(meta["experiment_container_id"], int)
    assert meta["session_start_time"].year == 2017
    assert dataset.get_session_type() == "three_session_B"


def test_strings_are_fixed_length_bytes(tiny):
    cache, ids = tiny
    with h5py.File(nwb_path(cache, ids[0]), "r") as f:
        for key in ("general/session_type", "general/subject/genotype", "session_start_time",
                    "general/generated_by", "processing/brain_observatory_pipeline/ImageSegmentation/roi_ids"):
            assert f[key].dtype.kind == "S", key


def test_cells_and_traces(dataset, population):
    ids = dataset.get_cell_specimen_ids()
    np.testing.assert_array_equal(ids, population.cell_ids)
    assert len(dataset.get_roi_ids()) == TINY.n_cells
    ts, dff = dataset.get_dff_traces()
    assert dff.shape == (TINY.n_cells, len(ts))
    np.testing.assert_allclose(np.diff(ts), 1 / 30.0, rtol=1e-9)
    assert np.isfinite(dff).all()
    ts_c, corrected = dataset.get_corrected_fluorescence_traces()
    np.testing.assert_array_equal(ts_c, ts)
    _, demixed = dataset.get_demixed_traces()
    _, neuropil = dataset.get_neuropil_traces()
    r = dataset.get_neuropil_r()  # the pipeline's per-cell estimates of the contamination ratio
    assert r.shape == (TINY.n_cells,) and (r >= 0).all() and (r <= 1).all() and r.std() > 0
    assert abs(r.mean() - TINY.neuropil_r) < 0.15
    np.testing.assert_allclose(corrected, demixed - r[:, None] * neuropil, rtol=1e-6)
    np.testing.assert_array_equal(dataset.get_fluorescence_traces()[1], demixed)  # raw = demixed
    # neuropil contamination is real: the raw ROI trace is not the corrected one
    assert np.abs(demixed - corrected).mean() > 0.1 * np.abs(corrected).mean()
    speed, speed_ts = dataset.get_running_speed()
    assert speed.shape == ts.shape and (speed >= 0).all()
    assert list(dataset.get_motion_correction().columns) == ["x_motion", "y_motion", "timestamp"]
    assert dataset.get_max_projection().shape == (512, 512)


def test_natural_scenes_table_and_template(dataset):
    assert {"natural_scenes", "spontaneous"} <= set(dataset.list_stimuli())
    table = dataset.get_stimulus_table("natural_scenes")
    assert len(table) == (TINY.n_images + 1) * TINY.repeats
    assert table["frame"].value_counts().to_dict() == {i: TINY.repeats for i in range(-1, TINY.n_images)}
    for col in ("start", "end"):
        assert np.issubdtype(table[col].dtype, np.integer)
    assert set(np.diff(table[["start", "end"]].to_numpy(), axis=1).ravel()) <= {7, 8}  # 250 ms at 30 Hz
    assert (np.diff(table["start"]) > 0).all()
    n_frames = len(dataset.get_dff_traces()[0])
    assert table["end"].max() < n_frames
    template = dataset.get_stimulus_template("natural_scenes")
    assert template.shape == (TINY.n_images, H, W) and template.dtype == np.float32
    assert template.min() >= 0 and template.max() <= 255 and (template == np.round(template)).all()
    # three natural-scenes epochs around a spontaneous one, as allensdk's own epoch splitter sees them
    epochs = dataset.get_stimulus_epoch_table()
    assert list(epochs["stimulus"]) == ["natural_scenes", "spontaneous", "natural_scenes", "natural_scenes"]
    spont = dataset.get_stimulus_table("spontaneous")
    assert len(spont) == 1 and int(spont["end"][0] - spont["start"][0]) == int(TINY.spontaneous_s * 30)


def test_cache_opens_sessions_without_network(tiny, monkeypatch):
    from allensdk.core.brain_observatory_cache import BrainObservatoryCache

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    cache, ids = tiny
    boc = BrainObservatoryCache(manifest_file=str(cache / "manifest.json"))
    metas = [boc.get_ophys_experiment_data(i).get_metadata() for i in ids]
    assert [m["ophys_experiment_id"] for m in metas] == ids
    assert metas[0]["cre_line"] != metas[1]["cre_line"]  # sessions look like different containers
    data = boc.get_ophys_experiment_data(ids[1])
    first = load_true_population(cache, ids[0]).cell_ids
    assert not set(data.get_cell_specimen_ids()) & set(first)  # cell ids never repeat across sessions


def test_same_config_same_bytes_other_seed_differs(tmp_path):
    cfg = replace(TINY, n_sessions=1)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    (i,) = synthesize_sessions(cfg, a, progress=False)
    synthesize_sessions(cfg, b, progress=False)
    synthesize_sessions(replace(cfg, seed=1), c, progress=False)
    files = [nwb_path(a, i), *ground_truth_paths(a, i)]
    for f in files:
        assert sha256(f) == sha256(b / f.relative_to(a)), f.name
        assert sha256(f) != sha256(c / f.relative_to(a)), f.name


def test_nan_cells(tmp_path):
    from allensdk.core.brain_observatory_nwb_data_set import BrainObservatoryNwbDataSet

    cfg = replace(TINY, n_sessions=1, nan_cells=3)
    (i,) = synthesize_sessions(cfg, tmp_path, progress=False)
    _, dff = BrainObservatoryNwbDataSet(str(nwb_path(tmp_path, i))).get_dff_traces()
    assert np.isnan(dff).any(axis=1).sum() == 3


def test_broken_sessions_can_be_written(tmp_path, scenes):
    from allensdk.core.brain_observatory_nwb_data_set import BrainObservatoryNwbDataSet

    arrays, _, _ = simulate_session(replace(TINY, n_sessions=1), 0, scenes)
    path = write_session_nwb(tmp_path / "none.nwb", arrays, include_natural_scenes=False)
    ds = BrainObservatoryNwbDataSet(str(path))
    assert "natural_scenes" not in ds.list_stimuli()
    with pytest.raises(Exception, match="natural_scenes"):
        ds.get_stimulus_table("natural_scenes")

    arrays.template = arrays.template[:3]
    arrays.dff = arrays.dff.copy()
    arrays.dff[2, 10:20] = np.nan
    ds = BrainObservatoryNwbDataSet(str(write_session_nwb(tmp_path / "broken.nwb", arrays)))
    assert ds.get_stimulus_template("natural_scenes").shape[0] == 3
    assert len(ds.get_stimulus_table("natural_scenes")) == (TINY.n_images + 1) * TINY.repeats
    assert np.isnan(ds.get_dff_traces()[1]).sum() == 10


def test_default_schedule_numbers():
    s = make_schedule(118, 50, 300.0, np.random.default_rng(0))
    assert s.natural_scenes.shape == (5950, 3)
    assert np.bincount(s.natural_scenes[:, 0] + 1).tolist() == [50] * 119
    durations = s.natural_scenes[:, 2] - s.natural_scenes[:, 1]
    assert set(durations) == {7, 8} and abs(durations.mean() - 7.5) < 0.01
    assert s.spontaneous[0, 1] - s.spontaneous[0, 0] == 9000


# --------------------------------------------------------------------------------------
# scenes
# --------------------------------------------------------------------------------------
def test_cell_parameters_do_not_depend_on_numpys_avx512_code_paths():
    """numpy's float64 exp / log give other last bits on AVX-512 CPUs; the generator must not see it."""
    import os
    import subprocess
    import sys

    code = ("import hashlib, numpy as np; from meiscope.synthetic.population import sample_cells; "
            "from meiscope.recordings.neuropixels.synthetic import unit_population; "
            "from meiscope.recordings.neuropixels.settings import SyntheticNeuropixelsConfig as C; rng = np.random.default_rng(3); "
            "c = sample_cells(50, {'simple': .4, 'complex': .3, 'conjunction': .3, 'unresponsive': 0.}, (4., 8.), "
            "(1., 30.), 0.5, np.arange(50), rng); p, _, _ = unit_population(c, C(), rng); "
            "print(hashlib.sha256(b''.join(np.ascontiguousarray(getattr(p, k)).tobytes() for k in "
            "('sf', 'peak_rate', 'saturation', 'baseline'))).hexdigest())")
    no_avx512 = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL"
    digests = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "NPY_DISABLE_CPU_FEATURES": env},
                              capture_output=True, text=True, check=True).stdout for env in ("", no_avx512)}
    assert len(digests) == 1


def test_scenes_are_deterministic_integer_pixels_with_natural_spectra(scenes):
    again = make_scenes(TINY.n_images, H, W, TINY.seed)
    np.testing.assert_array_equal(scenes, again)
    assert not np.array_equal(scenes, make_scenes(TINY.n_images, H, W, TINY.seed + 1))
    assert scenes.shape == (TINY.n_images, H, W) and scenes.dtype == np.float32
    assert scenes.min() >= 0 and scenes.max() <= 255 and (scenes == np.round(scenes)).all()
    # natural images: amplitude spectrum falls roughly as 1/f
    amp = np.abs(np.fft.fft2(scenes - scenes.mean(axis=(1, 2), keepdims=True))).mean(axis=0)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(W), np.fft.fftfreq(H)))
    band = (f > 0.02) & (f < 0.3)
    slope = np.polyfit(np.log(f[band]), np.log(amp[band]), 1)[0]
    assert -2.2 < slope < -0.7, slope


# --------------------------------------------------------------------------------------
# ground truth
# --------------------------------------------------------------------------------------
def test_missing_ground_truth_is_a_clear_error(tmp_path):
    with pytest.raises(GroundTruthError, match="no ground truth for experiment 123 .* not synthetic") as err:
        load_true_population(tmp_path, 123)
    assert isinstance(err.value, MeiscopeError)


def test_rates_calibrated_deterministic_and_kind_specific(population, scenes, tiny):
    rates = rates_of(population, scenes)
    assert rates.shape == (TINY.n_images, TINY.n_cells)
    np.testing.assert_array_equal(rates, rates_of(population, scenes))
    np.testing.assert_array_equal(rates, rates_of(load_true_population(*tiny[0:1], tiny[1][0]), scenes))
    resp = population.responsive
    assert resp.sum() > 0 and (~resp).sum() > 0
    np.testing.assert_allclose(rates[:, ~resp], TINY.baseline_rate_hz)  # unresponsive: constant
    assert (rates[:, resp].std(axis=0) > 0.5).all()  # responsive: vary across scenes
    peak = rates[:, resp].max(axis=0)
    np.testing.assert_allclose(peak, population.params.peak_rate[resp], rtol=1e-4)
    assert ((peak >= TINY.peak_rate_hz[0]) & (peak <= TINY.peak_rate_hz[1])).all()
    gray = rates_of(population, np.full((1, H, W), 127.0))
    np.testing.assert_allclose(gray, TINY.baseline_rate_hz, rtol=1e-6)


def test_simple_cell_prefers_its_own_gabor(population, scenes):
    p = population.params
    simple = [i for i, k in enumerate(population.kinds) if k == "simple"]
    assert simple
    scene_rates = rates_of(population, scenes)
    for i in simple:
        own = rates_of(population, gabor_pixels(p, i, H, W)[None])[0, i]
        anti = rates_of(population, (254.0 - gabor_pixels(p, i, H, W))[None])[0, i]  # phase + 180 deg
        assert own > scene_rates[:, i].max() * 1.2
        assert anti == pytest.approx(TINY.baseline_rate_hz, abs=0.5)


def test_complex_is_phase_invariant_and_conjunction_prefers_a_plaid(population):
    p = population.params
    kinds = population.kinds
    for i in [i for i, k in enumerate(kinds) if k == "complex"]:
        phases = [p.phase[i] + d for d in (0, np.pi / 2, np.pi, 3 * np.pi / 2)]
        g = np.stack([127 + 127 * gabor(p.x[i], p.y[i], p.sigma[i], p.sf[i], p.orientation[i], ph, H, W)[0]
                      for ph in phases])
        r = rates_of(population, g)[:, i]
        assert r.min() > 0.7 * r.max()
    for i in [i for i, k in enumerate(kinds) if k == "conjunction"]:
        both = gabor(p.x[[i, i]], p.y[[i, i]], p.sigma[[i, i]], p.sf[[i, i]], [p.orientation[i], p.orientation2[i]],
                     [p.phase[i], p.phase2[i]], H, W)
        plaid = 127 + 127 * both.sum(0) / np.abs(both.sum(0)).max()
        singles = np.stack([gabor_pixels(p, i, H, W), gabor_pixels(p, i, H, W, second=True)])
        with torch.no_grad():  # compare drives: rates saturate near the optimum
            d_plaid = population.drive(torch.tensor(plaid[None], dtype=torch.float32))[0, i]
            d_single = population.drive(torch.tensor(singles)).max(0).values[i]
        assert d_plaid > 1.3 * d_single


def test_gradient_flows_to_pixels(population, scenes):
    pixels = torch.tensor(scenes[:2], requires_grad=True)
    population(pixels)[:, torch.as_tensor(population.responsive)].sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    four_d = torch.tensor(scenes[:2, None])
    torch.testing.assert_close(population(four_d), population(torch.tensor(scenes[:2])))


def test_resolution_independence(population):
    big = make_scenes(4, 2 * H, 2 * W, seed=5)
    small = big.reshape(4, H, 2, W, 2).mean(axis=(2, 4))
    a, b = rates_of(population, big), rates_of(population, small)
    resp = population.responsive
    assert np.abs(a - b).max() < 0.05 * a.max()
    assert np.corrcoef(a[:, resp].ravel(), b[:, resp].ravel())[0, 1] > 0.995


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_population_on_gpu_matches_cpu(scenes):
    cfg = replace(TINY, n_sessions=1)
    arrays_cpu, cpu, _ = simulate_session(cfg, 0, scenes, device="cpu")
    arrays_gpu, gpu, _ = simulate_session(cfg, 0, scenes, device="cuda")
    np.testing.assert_allclose(gpu.params.semisaturation, cpu.params.semisaturation, rtol=1e-6)
    gpu = gpu.to("cuda")
    pixels = torch.tensor(scenes, device="cuda", requires_grad=True)
    out = gpu(pixels)
    assert out.device.type == "cuda"
    out.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    np.testing.assert_allclose(out.detach().cpu().numpy(), rates_of(cpu, scenes), rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------------------
# fluorescence
# --------------------------------------------------------------------------------------
def test_calcium_is_the_exact_double_exponential():
    rng = np.random.default_rng(0)
    ts = fl.frame_times(300)
    times = np.sort(rng.uniform(0, 9, 7))
    cell = rng.integers(0, 2, 7)
    out = fl.calcium_dff(cell, times, 2, ts, tau_rise_s=0.05, tau_decay_s=0.3, amplitude=0.15)
    t = ts[None, :] - times[:, None]
    kern = np.where(t >= 0, np.exp(-t / 0.3) - np.exp(-t / 0.05), 0.0)
    t_peak = 0.05 * 0.3 / 0.25 * np.log(6)
    kern *= 0.15 / (np.exp(-t_peak / 0.3) - np.exp(-t_peak / 0.05))
    expected = np.stack([kern[cell == c].sum(0) for c in range(2)])
    np.testing.assert_allclose(out, expected, atol=1e-10)


def test_smooth_noise_drawn_a_few_rows_at_a_time_is_one_full_draw():
    """The memory-lean row blocks give the numbers of one ``(n, n_frames)`` draw (so the same bytes)."""
    a = math.exp(-1.0 / (fl.FRAME_RATE_HZ * 2.0))
    expected = lfilter([1.0], [1.0, -a], np.random.default_rng(4).standard_normal((37, 500)) * np.sqrt(1 - a * a),
                       axis=1)
    assert np.array_equal(fl.smooth_noise((37, 500), 2.0, np.random.default_rng(4)), expected)


def test_poisson_spikes_follow_rates():
    rng = np.random.default_rng(1)
    onsets = np.arange(4000) * 0.25
    rates = np.tile([2.0, 20.0], (4000, 1))
    cell, times = fl.poisson_spikes(onsets, 0.25, rates, rng, latency_s=0.05)
    counts = np.bincount(cell, minlength=2)
    np.testing.assert_allclose(counts, [2000, 20000], rtol=0.08)
    phase = (times - 0.05) % 0.25
    assert phase.min() >= 0 and abs(phase.mean() - 0.125) < 0.005


def test_running_median_baseline_tracks_drift_under_transients():
    rng = np.random.default_rng(2)
    n = 30 * 600
    drift = 300 * np.linspace(1.0, 0.9, n)
    transients = (rng.random(n) < 0.02) * rng.exponential(50, n)
    trace = (drift + np.convolve(transients, np.exp(-np.arange(30) / 9.0))[:n])[None]
    base = fl.running_median_baseline(trace)[0]
    assert np.abs(base / drift - 1)[3000:-3000].max() < 0.03


def test_dff_recovers_true_rates(scenes):
    """Trial-averaged dF/F per image (frames 1..7 after onset minus 2 before) tracks the true rate."""
    cfg = SyntheticConfig(n_cells=24, n_images=20, repeats=10, image_height=H, image_width=W, spontaneous_s=5.0,
                          peak_rate_hz=[10.0, 30.0])  # strong cells: this checks the chain, not detectability
    template = make_scenes(cfg.n_images, H, W, cfg.seed)
    arrays, population, _ = simulate_session(cfg, 0, template)
    rates = rates_of(population, template)
    frame, start = arrays.natural_scenes[:, 0], arrays.natural_scenes[:, 1]
    idx = start[:, None] + np.arange(-2, 8)[None, :]
    window = arrays.dff[:, idx]  # (cells, trials, 10)
    trial = window[:, :, 3:].mean(-1) - window[:, :, :2].mean(-1)  # frames 1..7 minus -2..-1
    means = np.stack([trial[:, frame == i].mean(1) for i in range(cfg.n_images)], axis=1)
    corr = np.array([np.corrcoef(means[c], rates[:, c])[0, 1] for c in np.flatnonzero(population.responsive)])
    print(f"dF/F vs true rate, per responsive cell: median r = {np.median(corr):.3f}, min {corr.min():.3f}")
    assert np.median(corr) > 0.7 and corr.min() > 0.4
    # the gray blank evokes far less than the best scene (what is left is the previous trial's tail)
    resp = population.responsive
    blank = trial[:, frame == -1].mean(1)
    assert (blank[resp] < 0.3 * means[resp].max(1)).all()


# --------------------------------------------------------------------------------------
# the harder cortex: a continuum of responsiveness, shared gain, imperfect neuropil correction
# --------------------------------------------------------------------------------------
def test_neuropil_correction_changes_the_traces_but_leaves_contamination():
    """Same random stream with and without contamination: the Allen-style correction removes most of it, not all."""
    n_cells, n_frames = 30, 3000
    onsets = np.arange(0, n_frames / 30.0, 0.25)
    rates = np.random.default_rng(9).uniform(0.5, 20.0, (len(onsets), n_cells))
    kwargs = dict(tau_rise_s=0.05, tau_decay_s=0.3, spike_amplitude_dff=0.15, noise_std_dff=0.05,
                  neuropil_r_sd=0.1, neuropil_r_error_sd=0.1)
    clean = fl.simulate_traces(onsets, 0.25, rates, n_frames, np.random.default_rng(1), neuropil_r=0.0, **kwargs)
    dirty = fl.simulate_traces(onsets, 0.25, rates, n_frames, np.random.default_rng(1), neuropil_r=0.7, **kwargs)
    assert (clean.r == 0).all() and np.array_equal(clean.corrected, clean.demixed)
    np.testing.assert_array_equal(clean.calcium, dirty.calcium)  # the same cells, spikes and noise
    contamination = np.abs(dirty.demixed - clean.demixed).mean()
    residual = np.abs(dirty.corrected - clean.corrected).mean()
    assert residual < 0.25 * contamination  # the correction removes most of the contamination...
    assert residual > 0.01 * contamination  # ...but not all of it, as in real recordings
    assert np.abs(dirty.r - dirty.r_true).mean() > 0.02  # the estimated ratios are off
    assert not np.allclose(dirty.dff, clean.dff, atol=1e-3)  # so r matters for the stored dF/F


def test_responsiveness_is_a_continuum_with_per_cell_saturation(tmp_path):
    cfg = SyntheticConfig(n_cells=200, n_images=6, repeats=4, image_height=H, image_width=W, spontaneous_s=5.0)
    template = make_scenes(cfg.n_images, H, W, cfg.seed)
    _, population, _ = simulate_session(cfg, 0, template)
    p = population.params
    resp = p.responsive
    assert abs(resp.mean() - (1 - cfg.kinds.unresponsive)) < 0.02
    peak = p.peak_rate[resp]
    assert peak.min() >= cfg.peak_rate_hz[0] and peak.max() <= cfg.peak_rate_hz[1]
    # log-uniform: as many cells below the geometric middle of the range as above it
    middle = np.sqrt(cfg.peak_rate_hz[0] * cfg.peak_rate_hz[1])
    assert 0.35 < np.mean(peak < middle) < 0.65 and np.mean(peak < 3.0) > 0.15  # many weak cells
    sat = p.saturation[resp]
    assert sat.min() >= cfg.saturation[0] and sat.max() <= cfg.saturation[1] and sat.std() > 0.1
    # the ceiling is saturation x the best scene's rate above baseline
    np.testing.assert_allclose(p.rate_max[resp], sat * (peak - p.baseline[resp]), rtol=1e-6)


def test_shared_gain_scales_whole_population_together():
    from meiscope.synthetic.cortex import shared_gain

    gain = shared_gain(200_000, 0.3, 20.0, np.random.default_rng(0))
    assert abs(gain.mean() - 1) < 0.01 and abs(np.log(gain).std() - 0.3) < 0.01
    log_gain = np.log(gain)
    lag80 = np.corrcoef(log_gain[:-80], log_gain[80:])[0, 1]  # 20 s apart: only the slow half is left
    assert 0.1 < lag80 < 0.3  # 0.5 * exp(-1) = 0.18 expected
    np.testing.assert_array_equal(shared_gain(5, 0.0, 20.0, np.random.default_rng(0)), np.ones(5))


def test_shared_gain_is_one_factor_for_the_whole_population(scenes, population):
    """Every cell's rate above baseline in a segment is its image rate times the SAME gain."""
    from meiscope.synthetic.cortex import segment_rates

    codes = np.repeat(np.arange(TINY.n_images), 300)
    image_rates = rates_of(population, scenes).astype(np.float64)
    base = population.params.baseline
    rates = segment_rates(population, image_rates, codes, np.random.default_rng(3), gain_sd=0.3)
    driven = (image_rates[codes] - base) > 1e-3
    ratio = np.where(driven, (rates - base) / np.where(driven, image_rates[codes] - base, 1), np.nan)
    spread = np.nanmax(ratio, axis=1) - np.nanmin(ratio, axis=1)
    assert np.nanmax(spread) < 1e-9  # one factor per segment, shared by all cells
    gain = np.nanmean(ratio, axis=1)
    assert 0.2 < np.nanstd(np.log(gain)) < 0.4  # and it fluctuates from segment to segment
    blank = segment_rates(population, image_rates, np.full(10, -1), np.random.default_rng(0), gain_sd=0.3)
    np.testing.assert_allclose(blank, np.tile(base, (10, 1)))  # baseline is not scaled


# --------------------------------------------------------------------------------------
# the same bytes on any x86-64 machine
# --------------------------------------------------------------------------------------
SIMD_OFF = ("AVX2 FMA3 F16C AVX AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL")
SYNTH_SCRIPT = """
import hashlib, sys
from pathlib import Path
from meiscope.config import SyntheticConfig
from meiscope.synthetic.cortex import synthesize_sessions
cfg = SyntheticConfig(n_cells=40, n_images=12, repeats=5, image_height=184, image_width=236, spontaneous_s=10.0)
out = Path(sys.argv[1])
synthesize_sessions(cfg, out, progress=False)
for p in sorted(out.rglob("*")):
    if p.is_file():
        print(p.relative_to(out), hashlib.md5(p.read_bytes()).hexdigest())
"""


def test_bytes_do_not_depend_on_the_cpus_vector_width(tmp_path):
    """AVX2 / AVX-512 vs plain SSE kernels (torch's and numpy's own dispatch): identical files.

    Machines differ mostly in the SIMD width their kernels use; a float32 resize that rounded one
    scene pixel differently across widths made the synthetic data differ between an Intel Xeon
    (AVX-512) and an AMD EPYC (AVX2).
    """
    import os
    import subprocess
    import sys

    script = tmp_path / "synth.py"
    script.write_text(SYNTH_SCRIPT)
    hashes = []
    for name, extra in (("native", {}), ("baseline", {"ATEN_CPU_CAPABILITY": "default",
                                                      "NPY_DISABLE_CPU_FEATURES": SIMD_OFF})):
        env = {**os.environ, **extra, "PYTHONWARNINGS": "ignore"}
        done = subprocess.run([sys.executable, str(script), str(tmp_path / name)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-1500:]
        hashes.append(done.stdout)
    assert "900000001.nwb" in hashes[0] and hashes[0] == hashes[1]


# float64 ufuncs that numpy 1.23 may compute on AVX-512 paths (exp and log of its own, others from Intel's
# SVML): their last bits can differ between CPUs with and without AVX-512, so the generator calls
# synthetic/portable.py instead
AVX512_UFUNCS = {"exp", "log", "power", "float_power", "exp2", "expm1", "log2", "log10", "log1p", "cbrt", "tan",
                 "arcsin", "arccos", "arctan", "arctan2", "sinh", "cosh", "tanh", "arcsinh", "arccosh", "arctanh"}
GENERATOR = ["src/meiscope/synthetic", "src/meiscope/recordings/container/synthetic.py",
             "src/meiscope/recordings/neuropixels/synthetic.py", "src/meiscope/recordings/screen.py"]


def test_the_generator_calls_no_numpy_function_whose_bits_depend_on_avx512():
    """An AMD EPYC without AVX-512 wrote other bytes than the committed data.dvc until the out-of-family
    cortex's exp and power went through portable.py (the CPU-width test above cannot reach AVX-512 paths
    on a machine without it, so the calls themselves are checked)."""
    import ast

    repo = Path(__file__).resolve().parents[1]
    files = [f for entry in GENERATOR for f in sorted((repo / entry).rglob("*.py") if (repo / entry).is_dir()
                                                      else [repo / entry])]
    found = [f"{f.relative_to(repo)}:{node.lineno} np.{node.attr}" for f in files
             for node in ast.walk(ast.parse(f.read_text()))
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "np"
             and node.attr in AVX512_UFUNCS]
    assert len(files) > 8 and not found, found


def test_portable_functions_give_the_c_librarys_bits_in_blocks_and_broadcasts(monkeypatch):
    import math

    from meiscope.synthetic import portable

    monkeypatch.setattr(portable, "BLOCK", 7)  # several blocks and a ragged last one
    rng = np.random.default_rng(3)
    base, exponent = rng.uniform(0.1, 5.0, (4, 9)), rng.uniform(-2.0, 3.0, (4, 1))
    expected = np.array([[math.pow(b, e[0]) for b in row] for row, e in zip(base, exponent)])
    assert portable.power(base, exponent).tobytes() == expected.tobytes()
    assert portable.power(base, 2.5).tobytes() == np.array([[math.pow(b, 2.5) for b in r] for r in base]).tobytes()
    assert portable.exp(-base).tobytes() == np.array([[math.exp(-b) for b in r] for r in base]).tobytes()
    assert portable.log(base).shape == (4, 9) and portable.exp(np.zeros((0, 3))).shape == (0, 3)


def test_default_population_draw_is_unchanged_by_the_out_of_family_kinds():
    """Pinned before the out-of-family kinds existed: the default cortex's cell draws keep their bytes."""
    from dataclasses import asdict

    from meiscope.synthetic.cortex import cell_ids_for, session_rngs
    from meiscope.synthetic.population import sample_cells

    cfg = SyntheticConfig()
    p = sample_cells(cfg.n_cells, asdict(cfg.kinds), tuple(cfg.rf_sigma_deg), tuple(cfg.peak_rate_hz),
                     cfg.baseline_rate_hz, cell_ids_for(cfg.first_experiment_id, cfg.n_cells),
                     session_rngs(cfg, 0)[0], saturation=tuple(cfg.saturation))
    names = ("cell_ids", "kinds", "x", "y", "sigma", "sf", "orientation", "phase", "orientation2", "phase2",
             "saturation", "rate_max", "semisaturation", "baseline", "peak_rate")
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(getattr(p, k)).tobytes() for k in names)).hexdigest()
    assert digest == "c0d926212ab2748054931e1f82ef12709e94972973f88f9005473bfc8a667c85"
    assert not p.out_of_family
