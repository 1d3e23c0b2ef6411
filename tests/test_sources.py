"""Training sources beyond the natural scenes: trial stimuli and movies through a calcium kernel."""

import numpy as np
import pytest
import torch
from planted import sparse_noise

from meiscope.model.data import ResponseNormalisation, SplitTensors
from meiscope.model.readouts import map_peaks, rf_position_map
from meiscope.model.sources import (MOVIE_WINDOW, MovieHead, TrialSource, masked_mse, movie_position_maps, movie_source,
                                    rf_init_map, scaled_learning_rate, trial_source, warmup_factor)

NORM = ResponseNormalisation(offset=np.zeros(3, dtype=np.float32), scale=np.full(3, 0.5, dtype=np.float32))


def test_the_movie_head_convolves_rates_with_the_kernel_causally():
    kernel = np.array([0.0, 0.5, 0.3, 0.2])
    head = MovieHead(1, 2, kernel)
    rates = torch.zeros(10, 2)
    rates[3, 0] = 1.0  # an impulse at frame 3 for neuron 0; a step for neuron 1 from frame 5 on
    rates[5:, 1] = 2.0
    trace = head(rates, 0).detach().numpy()  # valid part: frames 3..9 (kernel length 4)
    assert trace.shape == (7, 2)
    np.testing.assert_allclose(trace[:, 0], [0.0, 0.5, 0.3, 0.2, 0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(trace[:, 1], [0.0, 0.0, 0.0, 1.0, 1.6, 2.0, 2.0], atol=1e-6)


def test_trial_sources_average_trials_skip_unrecorded_cells_and_weigh_single_trials_down():
    responses = np.array([[1.0, np.nan, 2.0], [3.0, np.nan, 2.0], [5.0, np.nan, 4.0]])
    source = trial_source("x", np.zeros((3, 4, 4), np.float32), np.array([0, 0, 2]), responses, NORM, "cpu",
                          scene_repeats=50)
    assert len(source) == 2  # image 1 was never shown
    np.testing.assert_allclose(source.targets.numpy(), [[4.0, 0.0, 4.0], [10.0, 0.0, 8.0]])  # dF/F / 0.5
    np.testing.assert_array_equal(source.mask.numpy(), [[1, 0, 1], [1, 0, 1]])
    np.testing.assert_array_equal(source.weights.numpy(), [2, 1])
    assert source.loss_weight == pytest.approx(1.5 / 50)
    repeated = trial_source("y", np.zeros((1, 4, 4), np.float32), np.zeros(60, int), np.ones((60, 3)), NORM, "cpu",
                            scene_repeats=50)
    assert repeated.loss_weight == 1.0


def test_masked_loss_ignores_unrecorded_entries():
    pred = torch.tensor([[1.0, 100.0], [2.0, -50.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(masked_mse(pred, target, mask)) == pytest.approx(2.5)
    assert float(masked_mse(pred, target, mask, torch.tensor([3.0, 1.0]))) == pytest.approx((3 * 1 + 4) / 4)


def test_movie_windows_cover_every_frame_after_the_kernel_history_once():
    n_frames, taps = 200, 30
    trace = np.random.default_rng(0).standard_normal((n_frames, 3))
    trace[:, 2] = np.nan  # a cell this session did not record
    source = movie_source("m", np.zeros((n_frames, 4, 4), np.float32), trace, 0, taps, "cpu")
    covered = []
    for i in range(len(source)):
        frames_in, targets_out = source.window(i)
        assert frames_in.stop == targets_out.stop and targets_out.start - frames_in.start == taps - 1
        assert targets_out.stop - targets_out.start <= MOVIE_WINDOW
        covered += list(range(targets_out.start, targets_out.stop))
    assert covered == list(range(taps - 1, n_frames))
    # standardised per recorded neuron; the unrecorded one is masked out
    np.testing.assert_allclose(source.targets.numpy()[:, :2].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(source.targets.numpy()[:, :2].std(0), 1.0, atol=1e-4)
    assert source.mask.numpy()[:, 2].sum() == 0


def test_other_stimuli_join_the_training_gradually():
    assert [warmup_factor(epoch, 4) for epoch in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert warmup_factor(1, 0) == 1.0  # no warm-up
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight], lr=0.1)
    weight.sum().backward()
    with scaled_learning_rate(optimizer, 0.0):
        assert optimizer.param_groups[0]["lr"] == 0.0
        optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(3))  # a zero-rate step moves nothing
    assert optimizer.param_groups[0]["lr"] == 0.1  # and the rate is back for the scenes' steps
    with scaled_learning_rate(optimizer, 0.5):
        optimizer.step()
    assert torch.allclose(weight.detach(), torch.full((3,), 1 - 0.05), atol=1e-6)  # Adam's first step: lr x sign


def test_readouts_start_where_the_sparse_noise_puts_a_cell_the_scenes_do_not_map():
    """A complex cell whose scene responses say nothing about where it is (here: noise) starts at its
    sparse-noise spot map's peak; without a single-trial source the start is the regression's map exactly."""
    rng = np.random.default_rng(5)
    shape, planted = (16, 20), (10, 13)
    frames = sparse_noise(2000, shape, 8, rng)
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    envelope = np.exp(-((rows - planted[0]) ** 2 + (cols - planted[1]) ** 2) / 2.0)
    complex_cell = np.einsum("ihw,hw->i", np.abs(frames), envelope) + rng.standard_normal(len(frames))
    scenes = torch.tensor(rng.standard_normal((40, 1, *shape)), dtype=torch.float32)
    noise_only = torch.tensor(rng.standard_normal((40, 1)), dtype=torch.float32)
    train = SplitTensors(index=np.arange(40), images=scenes, targets=noise_only, weights=torch.full((40,), 50.0))
    noise = TrialSource("C:locally_sparse_noise", torch.tensor(frames[:, None], dtype=torch.float32),
                        torch.tensor(complex_cell[:, None], dtype=torch.float32), torch.ones(len(frames), 1),
                        torch.ones(len(frames)))
    assert np.abs(map_peaks(rf_init_map(train, [noise]))[0].numpy() - planted).max() <= 1
    assert torch.equal(rf_init_map(train, []), rf_position_map(train.images, train.targets))


def test_a_cell_the_sparse_noise_missed_starts_where_the_movie_puts_it():
    """A cell not recorded in the sparse-noise session (NaN trials) is placed by a movie it was recorded in,
    through the container's calcium kernel; the movie's map is computed once per loaded container."""
    from meiscope.recordings.training_stimuli import MovieStimulus, TrainingStimuli

    rng = np.random.default_rng(6)
    shape, planted = (16, 20), (4, 14)
    frames = rng.standard_normal((500, *shape)).astype(np.float32)
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    envelope = np.exp(-((rows - planted[0]) ** 2 + (cols - planted[1]) ** 2) / 2.0)
    rates = np.einsum("ihw,hw->i", frames ** 2, envelope)  # energy: no linear trace of the position
    kernel = np.array([0.0, 0.6, 0.3, 0.1])
    trace = np.convolve(rates, kernel)[:len(rates)] + 0.5 * rng.standard_normal(len(rates))
    movie = MovieStimulus("natural_movie_one", "A", frames, np.stack([trace, np.full(len(trace), np.nan)], 1), 10)
    extra = TrainingStimuli(experiment_id=1, cell_ids=np.array([7, 8]), kernel=kernel, movies=[movie])
    noise = TrialSource("C:locally_sparse_noise", torch.zeros(50, 1, *shape), torch.zeros(50, 2), torch.zeros(50, 2),
                        torch.ones(50))
    scenes = torch.tensor(rng.standard_normal((30, 1, *shape)), dtype=torch.float32)
    train = SplitTensors(index=np.arange(30), images=scenes, weights=torch.full((30,), 50.0),
                         targets=torch.tensor(rng.standard_normal((30, 2)), dtype=torch.float32))
    (movie_map,) = maps = movie_position_maps(extra)
    assert np.abs(map_peaks(rf_init_map(train, [noise], maps))[0].numpy() - planted).max() <= 1
    assert float(movie_map[1].abs().max()) == 0.0  # cell 8 was not recorded in the movie's session
    assert movie_position_maps(extra)[0] is movie_map  # kept on the movie: tune's trials and train's members reuse it


def test_a_movies_unrecorded_bins_do_not_move_the_position_map():
    """Bins left NaN (e.g. a Gabor patch's first bins, driven by the patch before it) count as the neuron's mean,
    not as a zero response: with a trace far from 0, zeros would swamp the regression."""
    from meiscope.model.sources import _unrecorded_as_mean
    from meiscope.recordings.training_stimuli import MovieStimulus, TrainingStimuli

    rng = np.random.default_rng(8)
    shape, planted = (16, 20), (10, 5)
    frames = rng.standard_normal((600, *shape)).astype(np.float32)
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    envelope = np.exp(-((rows - planted[0]) ** 2 + (cols - planted[1]) ** 2) / 2.0)
    kernel = np.array([0.0, 1.0])
    trace = 100.0 + np.convolve(np.einsum("ihw,hw->i", frames, envelope), kernel)[:600]
    trace[rng.random(600) < 0.3] = np.nan
    movie = MovieStimulus("gabors", "1", frames, trace[:, None], 3)
    (movie_map,) = movie_position_maps(TrainingStimuli(experiment_id=1, cell_ids=np.array([7]), kernel=kernel,
                                                       movies=[movie]))
    assert np.abs(map_peaks(movie_map)[0].numpy() - planted).max() <= 1
    filled = _unrecorded_as_mean(np.array([[1.0, np.nan], [np.nan, np.nan], [3.0, np.nan]]))
    np.testing.assert_array_equal(filled, [[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
