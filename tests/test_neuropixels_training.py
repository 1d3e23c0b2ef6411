"""A Neuropixels session's other stimuli train the model: static gratings and flashes as trials, natural movies,
drifting gratings and Gabor patches as traces through the fitted latency, read from a tiny synthetic session by
allensdk."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from meiscope import visual_field as vf
from meiscope.dataset import DatasetError, ResponseDataset
from meiscope.checks import ConfigError
from meiscope.model.source_protocol import TrainingSource
from meiscope.recordings import recording_of
from meiscope.recordings.neuropixels import stimuli, training
from meiscope.recordings.neuropixels.responses import open_session
from meiscope.recordings.neuropixels.settings import TRAINABLE_STIMULI, NeuropixelsConfig
from meiscope.recordings.neuropixels.synthetic import LATENCY_S
from test_training_source import CONFIGS


@pytest.fixture(scope="module")
def study(npx_study):
    """The tiny synthetic session (tests/conftest.py: shared with test_neuropixels), extracted; its dataset,
    its training source and allensdk's session."""
    root, params = npx_study
    session_id = params.synthetic_neuropixels.session_id
    dataset_path = root / "results" / "responses" / f"{session_id}.npz"
    ds = ResponseDataset.load(dataset_path)
    cache, session = open_session(root / "data" / "synthetic_ecephys", session_id, params.neuropixels)
    extra = recording_of(params).training_extras(dataset_path, ds.cell_ids)
    return params, dataset_path, ds, cache, session, extra


def _presentations(session, name: str) -> pd.DataFrame:
    table = session.stimulus_presentations
    return table[table.stimulus_name == name]


def test_the_session_trains_on_every_stimulus_it_holds_that_the_setting_asks_for(study):
    params, dataset_path, ds, _, session, extra = study
    recording = recording_of(params)
    assert isinstance(extra, TrainingSource)
    assert recording.training_extras_path(dataset_path) == dataset_path.with_name(f"{ds.experiment_id}.training.npz")
    assert recording.training_stimuli(params) == ("natural_scenes", *TRAINABLE_STIMULI)
    assert sorted(t.name for t in extra.trials) == ["flashes", "static_gratings"]
    assert sorted(m.name for m in extra.movies) == ["drifting_gratings", "gabors", "natural_movie_one",
                                                    "natural_movie_three"]
    np.testing.assert_array_equal(extra.cell_ids, ds.cell_ids)
    trials = {t.name: t for t in extra.trials}
    for t in extra.trials:
        assert t.images.shape[1:] == ds.images.shape[1:] and t.responses.shape == (len(t.trial_image), ds.n_neurons)
    # flashes: the whole field black or white; the gratings' blank: the gray screen (model space)
    flashes = trials["flashes"]
    np.testing.assert_allclose(flashes.images[:, 0, 0], ds.to_model(np.array([0.0, 2 * vf.GRAY])), rtol=1e-5)
    assert np.ptp(flashes.images, axis=(1, 2)).max() < 1e-4
    gratings = trials["static_gratings"]
    assert len(gratings.images) == 121  # 6 orientations x 5 spatial frequencies x 4 phases, and the blank
    uniform = np.flatnonzero(np.ptp(gratings.images, axis=(1, 2)) < 1e-4)
    assert len(uniform) == 1 and np.allclose(gratings.images[uniform[0]], ds.to_model(np.float64(vf.GRAY)), atol=1e-5)
    # a trial's image is its own condition: two trials share an image exactly when they share parameters
    table = _presentations(session, "static_gratings")
    keys = table[["orientation", "spatial_frequency", "phase"]].astype(str).agg("|".join, axis=1).to_numpy()
    assert pd.crosstab(keys, gratings.trial_image).astype(bool).sum(axis=1).eq(1).all()
    assert len(set(keys)) == len(np.unique(gratings.trial_image))
    blank = (table.orientation.astype(str) == "null").to_numpy()
    assert blank.any() and (gratings.trial_image[blank] == uniform[0]).all()


def test_trial_responses_are_allensdks_presentationwise_counts(study):
    params, _, ds, _, session, extra = study
    for stimulus in extra.trials:
        table = _presentations(session, stimulus.name)
        counts = session.presentationwise_spike_counts(
            bin_edges=np.asarray(params.neuropixels.count_window), stimulus_presentation_ids=table.index.to_numpy(),
            unit_ids=ds.cell_ids).sel(stimulus_presentation_id=table.index.to_numpy(), unit_id=ds.cell_ids)
        np.testing.assert_array_equal(stimulus.responses, counts.values[:, 0, :])
        assert stimulus.responses.sum() > 0


def test_movie_traces_are_the_repeat_mean_of_each_frames_bin_and_the_kernel_is_the_fitted_delay(study):
    params, _, ds, cache, session, extra = study
    for movie in (m for m in extra.movies if m.name in training.MOVIE_NUMBERS):
        table = _presentations(session, movie.name)
        start, frame = table.start_time.to_numpy(), table.frame.astype(float).astype(int).to_numpy()
        n_frames = params.synthetic_neuropixels.movie_one_frames  # both movies have 30 frames here
        assert movie.frames.shape == (n_frames, *ds.images.shape[1:]) and movie.repeats == 2
        template = np.asarray(cache.get_natural_movie_template(training.MOVIE_NUMBERS[movie.name]))
        np.testing.assert_allclose(movie.frames, ds.to_model(vf.movie_to_field(template, vf.VisualField.from_crop(
            params.extract.crop, ds.images.shape[1:]))), rtol=1e-5, atol=1e-5)
        for column, unit in enumerate(ds.cell_ids):  # counted here from the spike times, not by allensdk
            spikes = session.spike_times[unit]
            counts = np.searchsorted(spikes, start + 1 / 30) - np.searchsorted(spikes, start)
            expected = np.bincount(frame, weights=counts, minlength=n_frames) / np.bincount(frame, minlength=n_frames)
            np.testing.assert_allclose(movie.trace[:, column], expected, rtol=1e-6)
    latency, _ = training.fit_latency(session, _presentations(session, "natural_scenes"), ds.cell_ids)
    np.testing.assert_allclose(extra.kernel, training.latency_kernel(latency))


def _bin_counts(session, unit, onsets: np.ndarray, n_bins: int) -> np.ndarray:
    """``(n_onsets, n_bins)`` the unit's spikes in each 1/30-s bin after each onset, from its spike times."""
    edges = onsets[:, None] + np.arange(n_bins + 1)[None, :] / 30
    return np.diff(np.searchsorted(session.spike_times[unit], edges), axis=1)


@pytest.mark.parametrize("name,columns,n_conditions,n_bins", [
    ("drifting_gratings", ["orientation", "temporal_frequency"], 40, 90),  # 2 s on + 1 s gray, the blank left out
    ("gabors", ["x_position", "y_position", "orientation"], 243, 7),  # the whole 1/30-s bins of 250 ms
])
def test_drifting_stimuli_are_movies_of_each_conditions_bins(study, name, columns, n_conditions, n_bins):
    params, _, ds, _, session, extra = study
    movie = next(m for m in extra.movies if m.name == name)
    table = _presentations(session, name)
    table = table[(table[columns[0]].astype(str) != "null")]
    keys = table[columns].astype(float).to_numpy()
    distinct, condition = np.unique(keys, axis=0, return_inverse=True)
    assert len(distinct) == n_conditions and movie.trace.shape == (n_conditions * n_bins, ds.n_neurons)
    assert movie.frames.shape == (n_conditions * n_bins, *ds.images.shape[1:])
    trace = movie.trace.reshape(n_conditions, n_bins, -1)
    masked = len(extra.kernel) - 1 if name == "gabors" else 0  # the previous patch drove these bins' spikes
    assert np.isnan(trace[:, :masked]).all() and np.isfinite(trace[:, masked:]).all()
    for column, unit in enumerate(ds.cell_ids[:5]):  # counted here from the spike times
        counts = _bin_counts(session, unit, table.start_time.to_numpy(), n_bins)
        expected = np.stack([counts[condition.ravel() == c].mean(axis=0) for c in range(n_conditions)])
        np.testing.assert_allclose(trace[:, masked:, column], expected[:, masked:], rtol=1e-6)
    field_ = vf.VisualField.from_crop(params.extract.crop, ds.images.shape[1:])
    frames = movie.frames.reshape(n_conditions, n_bins, *ds.images.shape[1:])
    if name == "drifting_gratings":  # bin k shows the 60-Hz frames 2k and 2k + 1; gray after 2 s
        direction, frequency = distinct[5]
        draw = [vf.grating_to_field(direction % 180, 0.04, float(stimuli.drift_phase(direction, frequency, t)), 0.8,
                                    field_) for t in (20 / 60, 21 / 60)]
        np.testing.assert_allclose(frames[5, 10], ds.to_model(np.mean(draw, axis=0)), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(frames[:, 60:], ds.to_model(np.float64(vf.GRAY)), atol=1e-4)
    else:  # the patch at the screen centre: the frame differs from gray on a disc centred there
        centre = int(np.flatnonzero((distinct == [0.0, 0.0, 90.0]).all(axis=1))[0])
        row, col = field_.model_coordinates(0.0, 0.0)
        rows, cols = np.nonzero(np.abs(frames[centre, 3] - ds.to_model(np.float64(vf.GRAY))) > 1e-3)
        assert rows.size > 4 and abs(rows.mean() + 0.5 - row) < 1.0 and abs(cols.mean() + 0.5 - col) < 1.0
        assert np.ptp(frames[centre, 1] - frames[centre, 4]) > 1e-3  # it drifts
    assert movie.repeats == params.synthetic_neuropixels.drifting_grating_repeats if name == "drifting_gratings" \
        else params.synthetic_neuropixels.gabor_repeats


def test_the_fitted_latency_recovers_the_planted_one_within_a_frame(study):
    _, _, ds, _, session, _ = study
    latency, share = training.fit_latency(session, _presentations(session, "natural_scenes"), ds.cell_ids)
    assert abs(latency - LATENCY_S) <= training.FRAME_S
    assert share.shape == training.LATENCY_GRID_S.shape
    # a maximum inside the grid: a window starting at 0 ms holds the previous scene's last 40 ms, one at
    # 150 ms the next scene's first 110 ms
    assert share.max() > share[0] and share.max() > 1.5 * share[-1]


def test_the_latency_kernel_turns_frame_rates_into_delayed_frame_bins():
    """Rates constant over each frame, delayed by the latency, integrate over each frame bin to the kernel's
    causal convolution (exact, for latencies on and between frame edges)."""
    rng = np.random.default_rng(0)
    rates = rng.random(40)
    fine = np.repeat(rates, 300)  # 300 steps per frame
    for latency_frames in (0.0, 1.2, 2.0, 4.5):
        shift = int(round(latency_frames * 300))
        delayed = np.concatenate([np.zeros(shift), fine])[:len(fine)]
        binned = delayed.reshape(40, 300).mean(axis=1)
        kernel = training.latency_kernel(latency_frames * training.FRAME_S)
        assert kernel.sum() == pytest.approx(1.0) and (kernel >= 0).all()
        np.testing.assert_allclose(binned, np.convolve(rates, kernel)[:40], atol=1e-6)
    np.testing.assert_allclose(training.latency_kernel(0.04), [0.0, 0.8, 0.2], atol=1e-6)


def test_selecting_units_keeps_their_columns_in_that_order(study):
    _, _, ds, _, _, extra = study
    order = ds.cell_ids[::-1][:5]
    picked = extra.select_neurons(order)
    np.testing.assert_array_equal(picked.cell_ids, order)
    for full, part in zip(extra.trials, picked.trials):
        np.testing.assert_array_equal(part.responses, full.responses[:, ::-1][:, :5])
    for full, part in zip(extra.movies, picked.movies):
        np.testing.assert_array_equal(part.trace, full.trace[:, ::-1][:, :5])
    with pytest.raises(DatasetError, match="no responses of cells"):
        extra.select_neurons(np.array([-7]))


def test_an_unknown_training_stimulus_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"'neuropixels.training_stimuli' must be one of .*'gabors'"):
        NeuropixelsConfig(training_stimuli=["static_gratings", "locally_sparse_noise"])
    with pytest.raises(ConfigError, match="neuropixels.training_stimuli"):
        NeuropixelsConfig(training_stimuli=["flashes", "flashes"])
    assert NeuropixelsConfig(training_stimuli=[]).training_stimuli == []


class WithoutStimuli:
    """allensdk's session with some stimuli removed from its presentations (a session that never showed them)."""

    def __init__(self, session, dropped: set[str]) -> None:
        self._session, self._dropped = session, dropped

    @property
    def stimulus_presentations(self) -> pd.DataFrame:
        table = self._session.stimulus_presentations
        return table[~table.stimulus_name.isin(self._dropped)]

    def __getattr__(self, name):
        return getattr(self._session, name)


def test_a_stimulus_the_session_lacks_or_the_setting_drops_has_no_source(study):
    params, dataset_path, ds, cache, session, extra = study
    lacking = training.training_stimuli(cache, WithoutStimuli(session, {"flashes", "natural_movie_three", "gabors"}),
                                        ds, params.extract, params.neuropixels, dataset_path)
    assert [t.name for t in lacking.trials] == ["static_gratings"] and [m.name for m in lacking.movies] == [
        "natural_movie_one", "drifting_gratings"]
    np.testing.assert_array_equal(lacking.trials[0].responses,
                                  next(t for t in extra.trials if t.name == "static_gratings").responses)
    only_movie = NeuropixelsConfig(training_stimuli=["natural_movie_one"])
    dropped = training.training_stimuli(cache, session, ds, params.extract, only_movie, dataset_path)
    assert dropped.trials == [] and [m.name for m in dropped.movies] == ["natural_movie_one"]


def test_the_trainer_takes_a_step_on_the_neuropixels_source(study):
    from meiscope.model.training import train_one

    _, _, ds, _, _, extra = study
    model_cfg, train_cfg = CONFIGS
    train_cfg = dataclasses.replace(train_cfg, max_epochs=1, relocate_epochs=[])
    with_extra = train_one(model_cfg, train_cfg, ds, seed=1, progress=False, extra=extra)
    plain = train_one(model_cfg, train_cfg, ds, seed=1, progress=False)
    weights = zip(with_extra.model.state_dict().values(), plain.model.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in weights)  # the other stimuli's batches moved the model
    assert all(torch.isfinite(p).all() for p in with_extra.model.parameters())
