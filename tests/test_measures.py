"""The measures: one Pearson-by-columns and one oracle correlation, NaN where undefined."""

import numpy as np
import pytest

from meiscope.model import evaluation
from meiscope.science.measures import image_sums, oracle_correlation, pearson_columns


def _planted(n_images=40, repeats=8, n_neurons=50, signal_var=1.0, noise_var=1.0, seed=0):
    """responses ``(n_images * repeats, n_neurons)``: per-image signal + trial noise, trials shuffled."""
    rng = np.random.default_rng(seed)
    trial_image = rng.permutation(np.repeat(np.arange(n_images), repeats))
    signal = rng.normal(0, np.sqrt(signal_var), (n_images, n_neurons))
    return signal[trial_image] + rng.normal(0, np.sqrt(noise_var), (len(trial_image), n_neurons)), trial_image


def test_pearson_columns_is_numpys_correlation_per_column():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    b[:, 2] += 3 * a[:, 2]
    expected = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(5)]
    np.testing.assert_allclose(pearson_columns(a, b), expected, rtol=1e-12)
    assert pearson_columns(a, -a) == pytest.approx(-np.ones(5))


def test_pearson_keeps_the_arithmetic_the_stage_metrics_were_computed_with():
    """Bit for bit what ranking and model evaluation computed before they shared it (the metrics stay)."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.normal(size=(rng.integers(2, 200), 7)) * rng.uniform(0.01, 100)
        b = rng.gamma(1.0, 2.0, a.shape)
        da, db = a - a.mean(axis=0), b - b.mean(axis=0)
        reference = (da * db).sum(axis=0) / np.sqrt((da * da).sum(axis=0) * (db * db).sum(axis=0))
        assert np.array_equal(pearson_columns(a, b), reference)


def test_a_constant_column_has_no_correlation():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    a[:, 0] = 0.1  # its mean is not exactly 0.1 in floats: still constant
    a[:, 1] = 0.0
    b[:, 2] = 5.0
    r = pearson_columns(a, b)
    assert np.isnan(r[:3]).all() and np.isfinite(r[3])
    assert np.isnan(pearson_columns(a[:1], b[:1])).all()  # one sample: undefined
    # the model's scores count an undefined correlation as 0, explicitly
    assert list(evaluation.pearson_columns(a, b)[:3]) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="one shape"):
        pearson_columns(a, b[:, :2])


def test_image_sums_add_each_images_trials():
    responses = np.arange(12.0).reshape(6, 2)
    sums, counts = image_sums(responses, np.array([2, 0, 2, 2, 0, 3]))
    assert counts.tolist() == [2, 0, 3, 1]
    np.testing.assert_array_equal(sums, [[10, 12], [0, 0], [10, 13], [10, 11]])


def test_oracle_correlation_recovers_a_planted_signal():
    s2, n2, repeats = 1.0, 3.0, 8
    responses, trial_image = _planted(n_images=150, repeats=repeats, n_neurons=200, signal_var=s2, noise_var=n2)
    expected = s2 / np.sqrt((s2 + n2) * (s2 + n2 / (repeats - 1)))
    assert oracle_correlation(responses, trial_image).mean() == pytest.approx(expected, abs=0.02)
    noiseless, trial_image = _planted(n_images=20, repeats=3, n_neurons=4, noise_var=0.0)
    np.testing.assert_allclose(oracle_correlation(noiseless, trial_image), 1.0, atol=1e-12)
    noise, trial_image = _planted(n_images=100, repeats=6, n_neurons=200, signal_var=0.0)
    assert abs(oracle_correlation(noise, trial_image).mean()) < 0.03


def test_oracle_correlation_of_a_constant_neuron_is_undefined():
    responses, trial_image = _planted(n_images=10, repeats=4, n_neurons=3)
    responses[:, 1] = 2.0
    r = oracle_correlation(responses, trial_image)
    assert np.isnan(r[1]) and np.isfinite(r[[0, 2]]).all()
    # an image shown once (and one never shown) changes nothing: it has no other repeat
    once = np.vstack([responses, responses[:1] + 9.0])
    np.testing.assert_array_equal(oracle_correlation(once, np.append(trial_image, trial_image.max() + 2)), r)
    assert evaluation.oracle_corr(responses, trial_image)[1] == 0.0  # the model's convention, explicit there
    assert np.isnan(oracle_correlation(responses[:5], np.arange(5))).all()  # no repeats at all
