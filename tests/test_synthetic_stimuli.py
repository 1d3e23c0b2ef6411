"""The container's generated stimuli: locally sparse noise and natural movies."""

import numpy as np
import pytest

from meiscope.synthetic import scenes, stimuli


def test_sparse_noise_has_allens_structure():
    frames = stimuli.sparse_noise_frames(300, np.random.default_rng(0))
    assert frames.shape == (300, 16, 28) and frames.dtype == np.uint8
    assert set(np.unique(frames)) == {0, 127, 255}
    for frame in frames:
        r, c = np.nonzero(frame != 127)
        assert 6 <= len(r) <= stimuli.SPOTS_PER_FRAME
        chebyshev = np.maximum(np.abs(r[:, None] - r[None]), np.abs(c[:, None] - c[None]))
        np.fill_diagonal(chebyshev, 99)
        assert chebyshev.min() >= stimuli.SPOT_EXCLUSION
    # white and black equally often, everywhere on the grid
    assert abs((frames == 255).mean() - (frames == 0).mean()) < 0.002
    assert (frames != 127).any(axis=0).all()
    np.testing.assert_array_equal(frames, stimuli.sparse_noise_frames(300, np.random.default_rng(0)))


def test_camera_path_stays_in_the_world_and_moves_smoothly():
    path = stimuli.camera_path(2000, (50, 80), np.random.default_rng(1))
    assert path.min() >= 0 and (path <= [50, 80]).all()
    step = np.linalg.norm(np.diff(path, axis=0), axis=1)
    assert 0.3 < step.mean() < 4 * stimuli.CAMERA_SPEED_PX


def test_natural_movies_pan_smoothly_between_cuts_and_use_no_photographs(monkeypatch):
    def no_photographs():
        raise AssertionError("a movie must not be built from the scenes' photographs")

    monkeypatch.setattr(scenes, "load_photographs", no_photographs)
    movie = stimuli.natural_movie(400, np.random.default_rng(2), shape=(38, 76), margin=(12, 22))
    assert movie.shape == (400, 38, 76) and movie.dtype == np.uint8
    x = movie.reshape(len(movie), -1).astype(float)
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    corr = (x[1:] * x[:-1]).mean(1)  # correlation of each frame with the previous one
    cuts = np.flatnonzero(corr < 0.5)
    assert 1 <= len(cuts) <= 400 // stimuli.SHOT_FRAMES[0]  # shots of 90-300 frames
    assert np.median(corr) > 0.9  # within a shot consecutive frames nearly agree...
    assert (movie[1:] != movie[:-1]).any(axis=(1, 2)).all()  # ...but the camera never stops
    np.testing.assert_array_equal(movie, stimuli.natural_movie(400, np.random.default_rng(2), shape=(38, 76),
                                                               margin=(12, 22)))


@pytest.mark.parametrize("n", [1, 17])
def test_a_movie_has_exactly_the_frames_asked_for(n):
    assert len(stimuli.natural_movie(n, np.random.default_rng(0), shape=(16, 32), margin=(4, 8))) == n
