"""Allen-calibrated receptive-field test of the Gabor patches: shuffle p-values on over-dispersed counts."""

import numpy as np
import pytest

from meiscope.recordings.neuropixels import gabor_check, stimuli

REPEATS = 15  # the real schedule: 9 x 9 positions x 3 orientations x 15 repeats = 3,645 presentations


def _patches(rates: np.ndarray, seed: int, dispersion: float = 0.4) -> dict[str, np.ndarray]:
    """Gabor-patch arrays of gamma-Poisson units; ``rates`` ``(n_conditions, n)`` mean counts.

    Each presentation has its own gain (gamma, mean 1), so a unit's count variance / mean is
    ``1 + dispersion`` at its mean rate 1 (about 1.3-1.5 over the rates used here), as in real VISp.
    """
    conditions = stimuli.gabor_conditions()
    rng = np.random.default_rng(seed)
    condition = rng.permutation(np.repeat(np.arange(len(conditions)), REPEATS))
    mean = rates[condition]
    shape = mean.mean(axis=0) / dispersion  # gamma shape per unit: var/mean = 1 + mean / shape
    gain = rng.gamma(shape, 1.0 / shape, size=mean.shape)
    counts = rng.poisson(mean * gain)
    sums = np.zeros((len(conditions), rates.shape[1]))
    np.add.at(sums, condition, counts)
    return {**{c: conditions[c].to_numpy() for c in conditions}, "mean_counts": sums / REPEATS,
            "repeats": np.full(len(conditions), REPEATS), "unit_ids": np.arange(rates.shape[1]),
            "presentation_counts": counts.astype(np.int32), "presentation_condition": condition}


def _analytic(patches: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same arrays as an older extract wrote them: no per-presentation counts."""
    return {k: v for k, v in patches.items() if not k.startswith("presentation_")}


def test_shuffle_test_holds_its_false_positive_rate_on_overdispersed_flat_maps():
    n_units = 200
    rates = np.tile(np.linspace(0.8, 2.0, n_units), (243, 1))  # no receptive field: every condition alike
    patches = _patches(rates, seed=3)
    counts = patches["presentation_counts"]
    # within-condition variance / mean, pooled over conditions, as in the real-data figure (median 1.27-1.34)
    condition = patches["presentation_condition"]
    fano = np.median([counts[condition == c].var(axis=0, ddof=1) / counts[condition == c].mean(axis=0)
                      for c in range(243)], axis=0)
    assert 1.25 <= np.median(fano) <= 1.6
    _, _, shuffle_p = gabor_check.receptive_field_maps(patches, np.arange(n_units))
    _, _, analytic_p = gabor_check.receptive_field_maps(_analytic(patches), np.arange(n_units))
    assert np.isfinite(shuffle_p).all()
    assert (shuffle_p < 0.01).mean() <= 0.02
    assert (analytic_p < 0.01).mean() > 0.2  # the bug: the Poisson null calls flat over-dispersed maps significant


def test_shuffle_test_finds_a_planted_gaussian_field_at_its_position():
    conditions = stimuli.gabor_conditions()
    planted = [(20.0, -10.0), (-30.0, 30.0), (0.0, 0.0), (40.0, 40.0)] * 3
    d2 = np.stack([(conditions.x_position.to_numpy() - x) ** 2 + (conditions.y_position.to_numpy() - y) ** 2
                   for x, y in planted], axis=1)
    rates = 0.5 * (1.0 + 3.0 * np.exp(-d2 / (2 * 7.0 ** 2)))  # sigma 7 deg, peak 4x the baseline
    patches = _patches(rates, seed=4)
    positions, maps, p_values = gabor_check.receptive_field_maps(patches, np.arange(len(planted)))
    assert (p_values < 0.01).all()
    np.testing.assert_array_equal(positions[maps.argmax(axis=0)], np.array(planted))


def test_units_with_fewer_than_ten_spikes_get_no_p_value_and_no_field():
    rates = np.full((243, 3), 1.0)
    patches = _patches(rates, seed=5)
    counts = patches["presentation_counts"]
    counts[:, 1] = 0
    counts[:10, 1] = 1  # exactly 10 spikes: tested
    counts[:, 2] = 0
    counts[:9, 2] = 1  # 9 spikes: not tested
    for c in (1, 2):
        patches["mean_counts"][:, c] = np.bincount(patches["presentation_condition"], weights=counts[:, c],
                                                   minlength=243) / REPEATS
    for arrays in (patches, _analytic(patches)):
        _, _, p_values = gabor_check.receptive_field_maps(arrays, np.arange(3))
        assert np.isfinite(p_values[:2]).all() and np.isnan(p_values[2])
    # downstream: the NaN unit has no field, the metrics stay finite over the others
    params = np.zeros((3, 6))
    table, metrics = gabor_check.gabor_patch_check(patches, np.arange(3), params, [0.0, 1.0, 0.0, 1.0], (36, 46))
    assert not table.has_rf[2] and table.rf_test.tolist() == ["shuffle"] * 3
    assert metrics["gabor_patch_n_units"] == 3 and metrics["gabor_patch_n_units_with_rf"] == int(table.has_rf.sum())


def test_the_seed_fixes_the_p_values_and_old_outputs_say_analytic():
    rates = np.tile(np.linspace(0.3, 1.0, 6), (243, 1))
    rates[40, :] *= 3.0  # a weak field, so p-values sit between 0 and 1
    patches = _patches(rates, seed=6)
    params, crop, shape = np.zeros((6, 6)), [0.0, 1.0, 0.0, 1.0], (36, 46)
    first, _ = gabor_check.gabor_patch_check(patches, np.arange(6), params, crop, shape, seed=11)
    again, _ = gabor_check.gabor_patch_check(patches, np.arange(6), params, crop, shape, seed=11)
    other, _ = gabor_check.gabor_patch_check(patches, np.arange(6), params, crop, shape, seed=12)
    np.testing.assert_array_equal(first.rf_p_value, again.rf_p_value)
    assert (first.rf_p_value != other.rf_p_value).any()
    old, _ = gabor_check.gabor_patch_check(_analytic(patches), np.arange(6), params, crop, shape)
    assert old.rf_test.tolist() == ["analytic"] * 6


def test_shuffle_resamples_keep_each_positions_presentation_count():
    # position 0 and 2 never shown: their totals stay 0 and do not disturb the statistic of the others
    rng = np.random.default_rng(7)
    position = np.repeat([1, 3, 4], 40)
    counts = rng.poisson(2.0, size=(120, 4))
    p_gap = gabor_check.shuffle_p_values(counts, position, 5, seed=1)
    p_dense = gabor_check.shuffle_p_values(counts, np.repeat([0, 1, 2], 40), 3, seed=1)
    np.testing.assert_array_equal(p_gap, p_dense)


def test_inconsistent_presentation_arrays_are_named_in_one_line():
    patches = _patches(np.ones((243, 2)), seed=8)
    short = {**patches, "presentation_condition": patches["presentation_condition"][:-1]}
    with pytest.raises(ValueError, match=r"gabors/presentation_counts has shape \(3645, 2\), expected \(3644, 2\)"):
        gabor_check.receptive_field_maps(short, np.arange(2))
    bad = {**patches, "presentation_condition": patches["presentation_condition"] + 1}
    with pytest.raises(ValueError, match="presentation_condition holds indices outside 0..242"):
        gabor_check.receptive_field_maps(bad, np.arange(2))


def test_the_gabor_stage_names_the_file_with_inconsistent_arrays(tmp_path):
    from types import SimpleNamespace

    from meiscope.errors import MeiscopeError
    from meiscope.recordings.neuropixels.responses import other_stimuli_path, save_other_stimuli

    patches = _patches(np.ones((243, 2)), seed=9)
    patches["presentation_condition"] = patches["presentation_condition"][:-5]
    dataset_path = tmp_path / "1.npz"
    save_other_stimuli(other_stimuli_path(dataset_path), {"gabors": patches})
    params = SimpleNamespace(extract=SimpleNamespace(crop=[0.0, 1.0, 0.0, 1.0]), mei=SimpleNamespace(n_show=2))
    with pytest.raises(MeiscopeError, match=r"1\.stimuli\.npz: gabors/presentation_counts has shape") as err:
        gabor_check.check_presented_gabors(params, tmp_path / "cache", 1, dataset_path, np.arange(2), (36, 46),
                                           np.zeros((2, 6)), tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out" / "presented_gabors.csv").exists()
