"""One visual field: every stimulus lands in the same model pixels (planted receptive fields)."""

import numpy as np
import pytest
from allensdk.brain_observatory import stimulus_info as si

from meiscope import visual_field as vf
from meiscope.recordings import brain_observatory as bo
from meiscope.recordings import screen
from meiscope.responses import prepare_images

FIELD = vf.VisualField.from_crop([0.0, 1.0, 0.0, 1.0], (36, 46))
PPD = si.LOCALLY_SPARSE_NOISE_PIXELS[si.LOCALLY_SPARSE_NOISE] / si.LOCALLY_SPARSE_NOISE_PIXEL_SIZE[
    si.LOCALLY_SPARSE_NOISE]  # allensdk's own scale: 45-px sparse-noise squares are 4.65 deg


def _lsn_square_centre_deg(row, col):
    """Degrees (y up) of the centre of one sparse-noise square, from allensdk's coordinate map."""
    m_row, m_col = si.map_stimulus_coordinate_to_monitor_coordinate((row + 0.5, col + 0.5), si.MONITOR_DIMENSIONS,
                                                                    si.LOCALLY_SPARSE_NOISE)
    return (m_col - si.MONITOR_DIMENSIONS[1] / 2) / PPD, (si.MONITOR_DIMENSIONS[0] / 2 - m_row) / PPD


# planted receptive-field centres: centres of sparse-noise squares (grid row, col) all over the grid
SQUARES = [(8, 14), (2, 3), (13, 24), (5, 20), (11, 6)]


def _spot(shape, row, col, radius):
    """A white disk of ``radius`` template pixels at continuous template coordinates (row, col), on gray."""
    r, c = np.mgrid[:shape[0], :shape[1]]
    frame = np.full(shape, 127.0, dtype=np.float32)
    frame[(r + 0.5 - row) ** 2 + (c + 0.5 - col) ** 2 <= radius ** 2] = 255.0
    return frame


def _brightest(model_frame):
    return np.unravel_index(int(np.argmax(model_frame)), model_frame.shape)


def _centroid(model_frame):
    """Contrast-weighted centre, in continuous model-pixel coordinates (pixel i spans [i, i + 1))."""
    weight = model_frame - 127.0
    rows, cols = np.mgrid[:model_frame.shape[0], :model_frame.shape[1]] + 0.5
    return (weight * rows).sum() / weight.sum(), (weight * cols).sum() / weight.sum()


@pytest.mark.parametrize("square", SQUARES)
def test_a_planted_spot_lands_in_the_same_model_pixel_for_scenes_movies_and_sparse_noise(square):
    x_deg, y_deg = _lsn_square_centre_deg(*square)
    expected = FIELD.pixel_of(x_deg, y_deg)
    monitor = (si.MONITOR_DIMENSIONS[0] / 2 - y_deg * PPD, si.MONITOR_DIMENSIONS[1] / 2 + x_deg * PPD)
    # each stimulus's native coordinates of the point, from allensdk's own coordinate maps
    scene_rc = si.map_monitor_coordinate_to_stimulus_coordinate(monitor, si.MONITOR_DIMENSIONS, si.NATURAL_SCENES)
    movie_rc = si.map_monitor_coordinate_to_stimulus_coordinate(monitor, si.MONITOR_DIMENSIONS, si.NATURAL_MOVIE_ONE)
    scene = vf.scenes_to_field(_spot(screen.SCENE_SHAPE, *scene_rc, radius=6)[None], FIELD)[0]
    movie = vf.movie_to_field(_spot(vf.MOVIE_SHAPE, *movie_rc, radius=1.5)[None], FIELD)[0]
    lsn_frame = np.full((1, 16, 28), 127.0, dtype=np.float32)
    lsn_frame[0, square[0], square[1]] = 255.0
    lsn = vf.sparse_noise_to_field(lsn_frame, FIELD)[0]
    assert _brightest(scene) == expected
    assert _brightest(movie) == expected
    # a 4.65-deg square covers parts of about 3 x 3 model pixels: its centre of mass is the planted point
    np.testing.assert_allclose(_centroid(lsn), FIELD.model_coordinates(x_deg, y_deg), atol=0.1)
    assert tuple(int(v) for v in np.floor(_centroid(lsn))) == expected


@pytest.mark.parametrize("square", SQUARES)
def test_a_receptive_field_mapped_with_static_gratings_peaks_at_its_planted_pixel(square):
    x_deg, y_deg = _lsn_square_centre_deg(*square)
    # a linear Gaussian receptive field's response to a grating, computed analytically in degrees:
    # exp(-sigma^2 k^2 / 2) cos(k . x0 + phase); its response-weighted average of the model-space
    # gratings peaks where the field is, if the gratings are mapped right
    sigma = 3.0
    sta = np.zeros(FIELD.shape)
    for row in bo.grating_conditions().itertuples():
        theta, k = np.deg2rad(row.orientation), 2 * np.pi * row.spatial_frequency
        response = np.exp(-(sigma * k) ** 2 / 2) * np.cos(
            k * (x_deg * np.cos(theta) - y_deg * np.sin(theta)) + 2 * np.pi * row.phase)
        sta += response * (vf.grating_to_field(row.orientation, row.spatial_frequency, row.phase, 0.8, FIELD) - 127)
    assert _brightest(sta) == FIELD.pixel_of(x_deg, y_deg)


def test_gray_maps_to_gray_and_sparse_noise_leaves_the_top_and_bottom_of_the_field_gray():
    for frames, mapper in [(np.full((2, 918, 1174), 127.0), vf.scenes_to_field),
                           (np.full((2, 304, 608), 127.0), vf.movie_to_field),
                           (np.full((2, 16, 28), 127.0), vf.sparse_noise_to_field)]:
        np.testing.assert_allclose(mapper(frames, FIELD), 127.0, atol=1e-4)
    white = vf.sparse_noise_to_field(np.full((1, 16, 28), 255.0), FIELD)[0]
    # the grid spans monitor rows 240-960, the scenes 141-1059: 99 px (3.9 model rows) of gray each side
    np.testing.assert_allclose(white[:3], 127.0)
    np.testing.assert_allclose(white[-3:], 127.0)
    np.testing.assert_allclose(white[5:-5], 255.0, atol=1e-3)


def test_scenes_map_exactly_like_the_extract_stage_when_pixels_divide_evenly():
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (2, 918, 1174)).astype(np.float64)  # float64: exact sums in both
    for crop, shape in [([0.0, 1.0, 0.0, 1.0], (17, 2)), ([0.0, 0.5, 0.5, 1.0], (9, 1))]:
        field = vf.VisualField.from_crop(crop, shape)
        np.testing.assert_allclose(vf.scenes_to_field(templates, field), prepare_images(templates, crop, shape),
                                   atol=1e-3)


def test_grating_pixels_are_exact_means_of_the_grating_over_each_pixel():
    field = vf.VisualField.from_crop([0.2, 0.4, 0.3, 0.5], (4, 5))
    fine = vf.VisualField.from_crop([0.2, 0.4, 0.3, 0.5], (4 * 64, 5 * 64))
    for ori, sf, phase in [(30.0, 0.32, 0.25), (120.0, 0.16, 0.5), (90.0, 0.02, 0.0)]:
        coarse = vf.grating_to_field(ori, sf, phase, 0.8, field)
        sampled = vf.grating_to_field(ori, sf, phase, 0.8, fine).reshape(4, 64, 5, 64).mean(axis=(1, 3))
        np.testing.assert_allclose(coarse, sampled, atol=0.05)
    # the same grating as the Neuropixels source draws in the scene frame (low SF: little averaging)
    np.testing.assert_allclose(vf.grating_to_field(60.0, 0.02, 0.25, 0.8, FIELD),
                               bo.grating_pixels(60.0, 0.02, 0.25, (36, 46)), atol=0.5)


def test_points_outside_the_field_and_bad_frames_are_refused():
    with pytest.raises(ValueError, match="outside the model's visual field"):
        FIELD.pixel_of(70.0, 0.0)
    with pytest.raises(ValueError, match="do not match"):
        vf.sparse_noise_to_field(np.zeros((1, 8, 14)), FIELD)
    with pytest.raises(ValueError, match="unknown sparse-noise"):
        vf.sparse_noise_to_field(np.zeros((1, 16, 28)), FIELD, stimulus="sparse")
