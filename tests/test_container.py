"""The experiment container: sessions A, B and C written in Allen's layout and read back by allensdk;
every stimulus as model-space images and responses of the same cells."""

import numpy as np
import pytest
import torch
from allensdk.core.brain_observatory_cache import BrainObservatoryCache

from meiscope import visual_field as vf
from meiscope.config import CellKindFractions, ExtractConfig, SplitConfig, SyntheticConfig
from meiscope.recordings.container.settings import ContainerConfig, SyntheticContainerConfig
from meiscope.recordings.container import layout
from meiscope.recordings.container.responses import (container_sessions, double_exponential, extract_container,
                                                     fit_calcium_kernel)
from meiscope.recordings.training_stimuli import TrainingStimuli
from meiscope.recordings.container.synthetic import container_ids, synthesize_containers
from meiscope.responses import extract_session, find_sessions
from meiscope.stages import data as data_stage
from meiscope.synthetic.population import load_true_population

SYNTHETIC = SyntheticConfig(n_cells=30, n_images=10, repeats=4, spontaneous_s=5.0,
                            kinds=CellKindFractions(simple=0.4, complex=0.3, conjunction=0.1, unresponsive=0.2))
CONTAINER = SyntheticContainerConfig(static_grating_repeats=2, drifting_grating_repeats=2, sparse_noise_frames=60,
                                     movie_repeats=3, movie_one_frames=40, movie_two_frames=30, movie_three_frames=50)


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    folder = tmp_path_factory.mktemp("container")
    ids = synthesize_containers(SYNTHETIC, CONTAINER, ["A", "B", "C"], folder, progress=False)
    return folder, ids


def _open(folder, experiment_id):
    return BrainObservatoryCache(manifest_file=str(folder / "manifest.json")).get_ophys_experiment_data(experiment_id)


def test_the_container_is_read_back_by_allensdk_with_every_stimulus(container):
    folder, ids = container
    assert ids == container_ids(SYNTHETIC, CONTAINER, ["A", "B", "C"]) == [900000001, 910000001, 920000001]
    expected = {"three_session_A": {"drifting_gratings", "natural_movie_one", "natural_movie_three", "spontaneous"},
                "three_session_B": {"static_gratings", "natural_scenes", "natural_movie_one", "spontaneous"},
                "three_session_C": {"locally_sparse_noise", "natural_movie_one", "natural_movie_two", "spontaneous"}}
    for experiment_id in ids:
        data = _open(folder, experiment_id)
        session_type = data.get_session_type()
        assert set(data.list_stimuli()) == expected[session_type]
        assert data.get_metadata()["experiment_container_id"] == 700000001
        for name in ("natural_movie_one", "natural_movie_two", "natural_movie_three"):
            if name in expected[session_type]:
                table = data.get_stimulus_table(name)
                n_frames = {"natural_movie_one": 40, "natural_movie_two": 30, "natural_movie_three": 50}[name]
                assert data.get_stimulus_template(name).shape == (n_frames, 304, 608)
                assert list(table.columns) == ["frame", "start", "end", "repeat"]
                assert len(table) == 3 * n_frames and table["repeat"].max() == 2
                # 30 Hz frames on the 30 Hz acquisition clock: one acquisition frame each
                assert ((table["end"] - table["start"]) == 1).all()
        if session_type == "three_session_B":
            sg = data.get_stimulus_table("static_gratings")
            assert list(sg.columns) == ["orientation", "spatial_frequency", "phase", "start", "end"]
            assert len(sg) == 121 * 2 and sg["orientation"].isna().sum() == 2  # + blank sweeps
            assert set(sg["spatial_frequency"].dropna()) == {0.02, 0.04, 0.08, 0.16, 0.32}
            assert ((sg["end"] - sg["start"]).between(7, 8)).all()  # 250 ms
        if session_type == "three_session_A":
            dg = data.get_stimulus_table("drifting_gratings")
            assert list(dg.columns) == ["temporal_frequency", "orientation", "blank_sweep", "start", "end"]
            assert len(dg) == 41 * 2 and (dg["blank_sweep"] == 1).sum() == 2
            assert ((dg["end"] - dg["start"]) == 60).all()  # 2 s
        if session_type == "three_session_C":
            lsn = data.get_stimulus_template("locally_sparse_noise")
            assert lsn.shape == (60, 16, 28)
            np.testing.assert_array_equal(data.get_stimulus_table("locally_sparse_noise")["frame"], np.arange(60))


def test_cells_keep_their_ids_across_sessions_and_some_are_missing(container):
    folder, ids = container
    cells = {_open(folder, i).get_session_type(): set(_open(folder, i).get_cell_specimen_ids()) for i in ids}
    b = cells["three_session_B"]
    assert len(b) == 30
    for other in ("three_session_A", "three_session_C"):
        assert cells[other] < b  # matched cells: same ids, a strict subset
        assert 15 <= len(cells[other]) < 30
    assert cells["three_session_A"] != cells["three_session_C"]
    # the ground truth of each session is exactly its recorded cells, with the same parameters
    truth_b = load_true_population(folder, 900000001)
    truth_a = load_true_population(folder, 910000001)
    rows = np.searchsorted(truth_b.cell_ids, truth_a.cell_ids)
    np.testing.assert_array_equal(truth_b.params.x[rows], truth_a.params.x)
    assert container_sessions(folder, 900000001, find_sessions(folder)) == {"A": 910000001, "B": 900000001,
                                                                            "C": 920000001}


def test_the_same_config_writes_the_same_bytes(container, tmp_path):
    folder, ids = container
    again = synthesize_containers(SYNTHETIC, CONTAINER, ["C"], tmp_path, progress=False)
    assert again == [920000001]
    name = "ophys_experiment_data/920000001.nwb"
    assert (tmp_path / name).read_bytes() == (folder / name).read_bytes()


def test_every_stimulus_is_extracted_for_the_studied_cells(container):
    folder, ids = container
    extract = ExtractConfig()
    ds = extract_session(folder, 900000001, extract, "synthetic")
    stimuli = extract_container(folder, ds, ids, extract, ContainerConfig())
    names = {(t.session, t.name) for t in stimuli.trials}
    assert names == {("B", "static_gratings"), ("C", "locally_sparse_noise")}
    assert {(m.session, m.name) for m in stimuli.movies} == {
        ("A", "natural_movie_one"), ("A", "natural_movie_three"), ("B", "natural_movie_one"),
        ("C", "natural_movie_one"), ("C", "natural_movie_two")}
    recorded_c = set(_open(folder, 920000001).get_cell_specimen_ids())
    for t in stimuli.trials:
        assert t.images.shape[1:] == (36, 46) and t.responses.shape[1] == ds.n_neurons
        missing = np.isnan(t.responses).all(axis=0)
        if t.session == "C":  # cells C did not record have no sparse-noise responses
            np.testing.assert_array_equal(missing, [c not in recorded_c for c in ds.cell_ids])
        else:
            assert not missing.any()
    for m in stimuli.movies:
        assert m.frames.shape[0] == m.trace.shape[0] and m.repeats == 3
    # in the same pixel normalisation as the scenes: a gray sparse-noise pixel is the gray scene value
    lsn = next(t for t in stimuli.trials if t.name == "locally_sparse_noise")
    assert np.median(lsn.images) == pytest.approx(float(ds.to_model(np.float32(vf.GRAY))), abs=1e-4)
    # restricting to some cells keeps every stimulus, in that order
    some = stimuli.select_neurons(ds.cell_ids[[3, 1]])
    np.testing.assert_array_equal(some.trials[0].responses, stimuli.trials[0].responses[:, [3, 1]])


def test_only_the_chosen_stimuli_and_sessions_are_extracted(container, tmp_path):
    folder, ids = container
    extract = ExtractConfig()
    ds = extract_session(folder, 900000001, extract, "synthetic")
    stimuli = extract_container(folder, ds, ids, extract, ContainerConfig(sessions=["B", "C"],
                                                                          stimuli=["natural_scenes", "static_gratings"]))
    assert [(t.session, t.name) for t in stimuli.trials] == [("B", "static_gratings")]
    assert stimuli.movies == []
    stimuli.save(tmp_path / "x.container.npz")
    again = TrainingStimuli.load(tmp_path / "x.container.npz")
    np.testing.assert_array_equal(again.trials[0].responses, stimuli.trials[0].responses)


def test_the_calcium_kernel_fit_recovers_a_planted_kernel():
    rng = np.random.default_rng(0)
    n_cells, n_images, n_trials = 20, 30, 1500
    planted = double_exponential(30, 1.5, 1.0, 9.0)  # on the fit's grid: 1.5 frames latency, rise 1, decay 9
    planted /= planted.sum()
    image_means = rng.gamma(1.0, 1.0, (n_images, n_cells))
    frames = rng.integers(-1, n_images, n_trials)
    starts = np.arange(n_trials) * 7 + rng.integers(0, 2, n_trials).cumsum()  # 7-8 frames per trial
    n = int(starts[-1] + 8)
    owner = np.searchsorted(starts, np.arange(n), side="right") - 1
    drive = np.where(frames[owner] >= 0, image_means[np.maximum(frames[owner], 0)].T, 0.0)
    dff = np.stack([np.convolve(d, planted)[:n] for d in drive]) + 0.3 * rng.standard_normal((n_cells, n))
    ends = np.append(starts[1:], n)
    # a gap of other stimuli in the middle, whose traces the fit must ignore
    gap = slice(n // 2, n // 2 + 300)
    dff[:, gap] = 5.0 * rng.standard_normal((n_cells, 300))
    inside = ~((starts < gap.stop) & (ends > gap.start))
    kernel = fit_calcium_kernel(dff, frames[inside], starts[inside], ends[inside], image_means)
    assert kernel.shape == (30,) and kernel.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(kernel, planted, atol=0.01)
    assert np.argmax(kernel) == np.argmax(planted)


def test_session_timelines_follow_allens_structure():
    rng = np.random.default_rng(0)
    b = layout.session_timeline("B", SYNTHETIC, CONTAINER, rng)
    # back to back: every segment starts where the previous one ends
    np.testing.assert_allclose(b.onsets_s[1:], b.onsets_s[:-1] + b.durations_s[:-1], atol=1e-9)
    epochs = np.flatnonzero(np.diff((b.stimulus == "natural_scenes").astype(int)) == 1)
    assert len(epochs) == 3  # three natural-scene epochs (the first opens after the gratings)
    assert (b.stimulus == "natural_scenes").sum() == (SYNTHETIC.n_images + 1) * SYNTHETIC.repeats
    with pytest.raises(ValueError, match="unknown container session"):
        layout.session_timeline("D", SYNTHETIC, CONTAINER, rng)


# ---------------------------------------------------------------------------------------------
# joint training on the tiny container
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def studied(container):
    folder, ids = container
    extract = ExtractConfig(image_height=12, image_width=16, split=SplitConfig(val_fraction=0.2, test_fraction=0.2))
    ds = extract_session(folder, 900000001, extract, "synthetic")
    return ds, extract_container(folder, ds, ids, extract, ContainerConfig())


def _configs(**train):
    from meiscope.config import ModelConfig, TrainConfig

    model = ModelConfig(layers=2, channels=[4, 4], first_kernel=5, hidden_kernel=3)
    return model, TrainConfig(seeds=[1, 2], max_epochs=3, patience=3, batch_size=8, **train)


def test_joint_training_on_the_tiny_container_uses_every_source_and_resumes(studied, tmp_path):
    from meiscope.model.training import train_one

    ds, stimuli = studied
    model_cfg, train_cfg = _configs(batches_per_source=2)
    full = train_one(model_cfg, train_cfg, ds, seed=1, progress=False, extra=stimuli)
    plain = train_one(model_cfg, train_cfg, ds, seed=1, progress=False)
    weights = [p.detach() for p in full.model.parameters()]
    assert any(not torch.equal(a, b.detach()) for a, b in zip(weights, plain.model.parameters()))
    # a checkpointed run stopped after 2 epochs and resumed reaches the same weights (movie head included)
    path = tmp_path / "member.pt"
    train_one(model_cfg, train_cfg, ds, seed=1, progress=False, extra=stimuli, checkpoint_path=path, max_epochs=2)
    resumed = train_one(model_cfg, train_cfg, ds, seed=1, progress=False, extra=stimuli, checkpoint_path=path,
                        resume=True)
    for a, b in zip(weights, resumed.model.parameters()):
        torch.testing.assert_close(a, b.detach())


def test_the_container_keeps_its_stimuli_beside_the_dataset_as_a_training_source(studied, tmp_path):
    """The file keeps its name (``<id>.container.npz``); the stimuli are a TrainingSource the stages save
    and the tune workers read back without naming the container; the scenes-only two-photon kind has no such
    file, and Neuropixels keeps its own (``<id>.training.npz``, tests/test_neuropixels_training.py)."""
    from meiscope.model.source_protocol import SavedSource, TrainingSource
    from meiscope.recordings import RECORDINGS

    ds, stimuli = studied
    recording = RECORDINGS["container"]()
    dataset = tmp_path / f"{ds.experiment_id}.npz"
    assert recording.training_extras_path(dataset) == tmp_path / f"{ds.experiment_id}.container.npz"
    assert RECORDINGS["two_photon"]().training_extras_path(dataset) is None
    assert RECORDINGS["neuropixels"]().training_extras_path(dataset) == tmp_path / f"{ds.experiment_id}.training.npz"
    assert isinstance(stimuli, TrainingSource)
    saved = SavedSource.write(stimuli, recording.training_extras_path(dataset))
    again = saved.load()
    assert type(again) is type(stimuli)
    np.testing.assert_array_equal(again.kernel, stimuli.kernel)
    picked = recording.training_extras(dataset, ds.cell_ids[::-1])
    np.testing.assert_array_equal(picked.movies[0].trace, stimuli.movies[0].trace[:, ::-1])


def test_the_natural_scene_test_images_never_reach_training(studied, monkeypatch):
    from meiscope.model import training

    ds, stimuli = studied
    seen = []  # every batch the core sees in training mode
    real_build = training.build_shared_model

    def build(*args, **kwargs):
        shared = real_build(*args, **kwargs)
        shared.core.register_forward_pre_hook(
            lambda core, inputs: seen.append(inputs[0].detach().flatten(1)) if core.training else None)
        return shared

    monkeypatch.setattr(training, "build_shared_model", build)
    model_cfg, train_cfg = _configs(batches_per_source=2)
    training.train_one(model_cfg, train_cfg, ds, seed=1, progress=False, extra=stimuli)
    trained = _standardised(torch.cat(seen))
    assert len(trained) > 100  # scenes, gratings, sparse noise and movie frames went through the core

    def best_match(split):
        images = _standardised(torch.as_tensor(ds.images[ds.image_indices(split)]).flatten(1))
        return float(((trained @ images.T) / trained.shape[1]).max())

    assert best_match("test") < 0.9  # no image the core trained on is (nearly) a test scene...
    assert best_match("train") > 0.99  # ...while the train scenes were there to be found


def _standardised(x):
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)


@pytest.mark.slow
def test_the_default_container_layout_and_the_committed_data_hash(tmp_path):
    """The default data, as `meiscope data` writes it from the shipped params.yaml (the whole container), is
    read by allensdk at Allen's sizes and has exactly the bytes recorded in the repository's data.dvc
    (written on another machine: the bytes must not depend on it)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from meiscope.config import load_params

    import torch

    torch.set_num_threads(os.cpu_count() or 1)  # a whole container: every core, as `meiscope data` uses (the
    # bytes do not depend on it: data.dvc was written by `meiscope data` on another machine's threads)
    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "params.yaml", tmp_path / "params.yaml")
    params = load_params(tmp_path / "params.yaml")
    assert params.data.recording == "container"
    ids = data_stage.synthesize(params, tmp_path)
    assert ids == [900000001, 910000001, 920000001]
    folder = tmp_path / params.data.synthetic_container_dir
    sizes = {"natural_scenes": (118, 918, 1174), "natural_movie_one": (900, 304, 608),
             "natural_movie_three": (3600, 304, 608), "locally_sparse_noise": (8880, 16, 28)}
    for experiment_id in ids:
        data = _open(folder, experiment_id)
        for name in set(sizes) & set(data.list_stimuli()):
            assert data.get_stimulus_template(name).shape == sizes[name], (experiment_id, name)
    cells = [len(_open(folder, i).get_cell_specimen_ids()) for i in ids]
    assert cells == [300, 260, 247]  # B, then A and C: each finds a cell with probability 0.85
    assert len(_open(folder, ids[0]).get_stimulus_table("natural_scenes")) == 5950

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "--no-commit", "data"]):
        subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True)
    here = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"]
    committed = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert here == committed, "data/ as written here differs from the committed data.dvc"
