"""The extract stage: trial responses read through allensdk recover the truth; bad sessions fail clearly."""

import dataclasses

import numpy as np
import pytest

from meiscope import truth
from meiscope.config import ExtractConfig, SplitConfig, SyntheticConfig
from meiscope.dataset import DatasetError, ResponseDataset
from meiscope.responses import (SessionError, extract_session, find_sessions, nwb_path, prepare_images,
                                split_images, study_session, trial_responses)
from meiscope.synthetic.cortex import simulate_session, synthesize_sessions
from meiscope.synthetic.nwb import write_session_nwb
from meiscope.synthetic.scenes import make_scenes

H, W = 92, 118
# strong cells only (the default cortex spans weak ones too): this checks the extraction, not detectability
CFG = SyntheticConfig(n_cells=24, n_images=24, repeats=12, image_height=H, image_width=W, spontaneous_s=5.0,
                      peak_rate_hz=[10.0, 30.0])
EXTRACT = ExtractConfig(image_height=18, image_width=23, split=SplitConfig(val_fraction=0.15, test_fraction=0.15))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    (experiment_id,) = synthesize_sessions(CFG, cache, progress=False)
    return cache, experiment_id


def test_window_arithmetic_on_a_known_trace():
    dff = np.arange(20, dtype=np.float32)[None, :].repeat(2, axis=0)
    dff[1] *= 2
    out = trial_responses(dff, np.array([5, 10]), [1, 3], [-2, 0])
    # response = mean(frames onset+1, onset+2) - mean(frames onset-2, onset-1) = (onset+1.5) - (onset-1.5)
    np.testing.assert_allclose(out, [[3.0, 6.0], [3.0, 6.0]])


def test_split_is_by_image_seeded_and_complete():
    a = split_images(118, SplitConfig(val_fraction=0.1, test_fraction=0.15, seed=3))
    b = split_images(118, SplitConfig(val_fraction=0.1, test_fraction=0.15, seed=3))
    c = split_images(118, SplitConfig(val_fraction=0.1, test_fraction=0.15, seed=4))
    assert (a == b).all() and not (a == c).all()
    assert (a == "test").sum() == 18 and (a == "val").sum() == 12 and (a == "train").sum() == 88


def test_prepare_images_area_downsamples_and_crops():
    template = np.zeros((1, 8, 8), np.float32)
    template[0, :4, :] = 200.0
    out = prepare_images(template, [0.0, 1.0, 0.0, 1.0], (2, 2))
    np.testing.assert_allclose(out[0], [[200, 200], [0, 0]])
    top = prepare_images(template, [0.0, 0.5, 0.0, 1.0], (2, 2))
    np.testing.assert_allclose(top[0], 200.0)


def test_extracted_responses_recover_the_true_rates(session):
    cache, experiment_id = session
    ds = extract_session(cache, experiment_id, EXTRACT, "synthetic")
    assert ds.responses.shape == (CFG.n_images * CFG.repeats, CFG.n_cells)
    assert ds.blank_responses.shape == (CFG.repeats, CFG.n_cells)
    assert ds.images.shape == (CFG.n_images, 18, 23)
    assert abs(ds.images.mean()) < 1e-4 and abs(ds.images.std() - 1) < 1e-4
    # the normalisation turns model images back into the screen pixels
    pixels = prepare_images(make_scenes(CFG.n_images, H, W, CFG.seed), EXTRACT.crop, (18, 23))
    np.testing.assert_allclose(ds.to_pixels(ds.images), pixels, atol=1e-3)

    population = truth.load_population(cache, experiment_id)
    rates = truth.true_rates(population, make_scenes(CFG.n_images, H, W, CFG.seed), ds.cell_ids)
    means = ds.image_means()
    responsive = np.asarray(population.responsive)
    corr = np.array([np.corrcoef(means[:, i], rates[:, i])[0, 1] for i in np.flatnonzero(responsive)])
    # measured: median 0.85 on this tiny session (24 images x 12 repeats)
    assert np.median(corr) > 0.7, corr
    # unresponsive cells: no image dependence beyond chance (one-way ANOVA p roughly uniform)
    from scipy.stats import f_oneway

    groups = lambda i: [ds.responses[ds.trial_image == k, i] for k in range(ds.n_images)]  # noqa: E731
    p_unresponsive = np.array([f_oneway(*groups(i)).pvalue for i in np.flatnonzero(~responsive)])
    p_responsive = np.array([f_oneway(*groups(i)).pvalue for i in np.flatnonzero(responsive)])
    assert np.mean(p_unresponsive < 0.01) <= 0.2
    assert np.median(p_responsive) < 1e-3


def test_dataset_round_trip_is_exact_and_byte_identical(session, tmp_path):
    cache, experiment_id = session
    ds = extract_session(cache, experiment_id, EXTRACT, "synthetic")
    ds.save(tmp_path / "a.npz")
    ds.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = ResponseDataset.load(tmp_path / "a.npz")
    for field in dataclasses.fields(ResponseDataset):
        a, b = getattr(ds, field.name), getattr(back, field.name)
        assert np.array_equal(a, b), field.name


def test_study_session_and_missing_sessions(session, tmp_path):
    cache, experiment_id = session
    assert find_sessions(cache) == [experiment_id]
    assert study_session(cache, EXTRACT) == experiment_id
    with pytest.raises(SessionError, match="experiment_id 5 has no NWB"):
        study_session(cache, dataclasses.replace(EXTRACT, experiment_id=5))
    with pytest.raises(SessionError, match="no sessions in the cache"):
        study_session(tmp_path, EXTRACT)
    with pytest.raises(SessionError, match="no such session file"):
        extract_session(tmp_path, 123, EXTRACT, "allen")
    with pytest.raises(DatasetError, match="no such dataset file"):
        ResponseDataset.load(tmp_path / "missing.npz")


# --- broken sessions: each one a clear one-line error, nothing written -----------------------------
@pytest.fixture(scope="module")
def arrays():
    cfg = dataclasses.replace(CFG, n_cells=6, n_images=6, repeats=3, nan_cells=2)
    return simulate_session(cfg, 0, make_scenes(cfg.n_images, H, W, cfg.seed), device="cpu")[0]


def _write(tmp_path, arrays, **kwargs):
    from allensdk.core.brain_observatory_cache import BrainObservatoryCache

    BrainObservatoryCache(manifest_file=str(tmp_path / "manifest.json"))
    path = nwb_path(tmp_path, arrays.metadata.experiment_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_session_nwb(path, arrays, **kwargs)
    return path


def _assert_one_line(err):
    assert "\n" not in str(err.value)


def test_corrupt_nwb_is_named(tmp_path, arrays):
    path = _write(tmp_path, arrays)
    path.write_bytes(path.read_bytes()[:2000])  # truncated download
    with pytest.raises(SessionError, match="not a readable NWB") as err:
        extract_session(tmp_path, arrays.metadata.experiment_id, EXTRACT, "synthetic")
    assert str(path) in str(err.value)
    _assert_one_line(err)


def test_session_without_natural_scenes(tmp_path, arrays):
    _write(tmp_path, arrays, include_natural_scenes=False)  # its metadata still says three_session_B
    with pytest.raises(SessionError, match="says it is a three_session_B session but has no natural_scenes") as err:
        extract_session(tmp_path, arrays.metadata.experiment_id, EXTRACT, "synthetic")
    _assert_one_line(err)


def test_stimulus_table_past_the_end_of_the_traces_names_the_real_cause(tmp_path, arrays):
    short = dataclasses.replace(arrays, timestamps=arrays.timestamps[:200], dff=arrays.dff[:, :200],
                                demixed=arrays.demixed[:, :200], neuropil=arrays.neuropil[:, :200],
                                running_speed=arrays.running_speed[:200],
                                motion_correction=arrays.motion_correction[:200])
    _write(tmp_path, short)
    with pytest.raises(SessionError, match=r"start at or after the last dF/F frame \(200 frames\)") as err:
        extract_session(tmp_path, arrays.metadata.experiment_id, EXTRACT, "synthetic")
    _assert_one_line(err)


def test_template_with_too_few_images(tmp_path, arrays):
    _write(tmp_path, dataclasses.replace(arrays, template=arrays.template[:3]))
    with pytest.raises(SessionError, match="template holds 3 images") as err:
        extract_session(tmp_path, arrays.metadata.experiment_id, EXTRACT, "synthetic")
    _assert_one_line(err)


def test_nan_traces_drop_the_affected_cells_and_say_how_many(tmp_path, arrays, caplog):
    _write(tmp_path, arrays)
    ds = extract_session(tmp_path, arrays.metadata.experiment_id, EXTRACT, "synthetic")
    assert ds.n_neurons == 4 and len(ds.dropped_cell_ids) == 2
    assert not np.isnan(ds.responses).any()
    assert "dropped 2 of 6 cells" in caplog.text
