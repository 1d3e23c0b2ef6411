"""Allen's unit analysis metrics beside meiscope's own figures: the rank stage's table and metrics of a synthetic
Neuropixels session (planted preferences, written by meiscope's NWB writer, read back by allensdk), the gabor
stage's receptive-field comparison, and the report's table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meiscope.config import RankConfig
from meiscope.dataset import ResponseDataset
from meiscope.ranking import allen_summaries, image_selectivity, run_rank
from meiscope.recordings.neuropixels import Neuropixels, nwb
from meiscope.recordings.neuropixels.cache import session_nwb
from meiscope.recordings.neuropixels.gabor_check import allen_rf_comparison
from meiscope.recordings.neuropixels.unit_metrics import (COMPARISON_HEADER, PREF_CONDITION, allen_origin,
                                                          comparison_grid, read_analysis_metrics, read_session,
                                                          write_synthetic_analysis_metrics)
from test_unit_metrics import (FRAMES, PLANTED, SID, UNIT_IDS, planted_presentations, planted_session,
                               scene_condition_ids)

WINDOW = np.array([0.03, 0.25])  # s after onset: the planted scene responses fall 50-200 ms after it


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> tuple[Path, pd.DataFrame, ResponseDataset]:
    """The planted session in a cache, its Allen metrics file, and meiscope's scene dataset of its spikes."""
    cache = tmp_path_factory.mktemp("allen_beside")
    nwb.write_session(cache, planted_session())
    allen = read_analysis_metrics(write_synthetic_analysis_metrics(cache, SID, seed=0))
    with read_session(session_nwb(cache, SID), unfiltered=True) as s:
        table = s.stimulus_presentations
        table = table[table["stimulus_name"] == "natural_scenes"]
        counts = s.presentationwise_spike_counts(bin_edges=WINDOW, stimulus_presentation_ids=table.index.to_numpy(),
                                                 unit_ids=UNIT_IDS, dtype=np.uint32).values[:, 0, :]
    frames = pd.to_numeric(table["frame"]).to_numpy().astype(np.int64)
    shown = frames >= 0
    ds = ResponseDataset(experiment_id=SID, images=np.zeros((FRAMES, 6, 8), np.float32),
                         image_ids=np.arange(FRAMES), trial_image=frames[shown],
                         responses=counts[shown].astype(np.float32), blank_responses=counts[~shown].astype(np.float32),
                         cell_ids=UNIT_IDS, split=np.array(["train"] * FRAMES), dropped_cell_ids=np.array([], int),
                         pixel_mean=0.0, pixel_std=1.0, source="synthetic_neuropixels")
    return cache, allen, ds


@pytest.fixture(scope="module")
def ranked(session, tmp_path_factory) -> tuple[pd.DataFrame, dict, Path]:
    cache, _, ds = session
    out = tmp_path_factory.mktemp("ranking")
    # the planted scene responses are the only ones an ANOVA across images finds: units 1 and 2 are selected
    cfg = RankConfig(metric="oracle_corr", min_reliability=None, max_p_anova=0.001, n_splits=5)
    run_rank(ds, cfg, out, out / "ranking.json", allen_metrics=Neuropixels().allen_metrics(cache, SID))
    return pd.read_csv(out / "ranking.csv"), json.loads((out / "ranking.json").read_text()), out


def test_ranking_table_carries_allens_columns_beside_meiscopes(session, ranked):
    _, allen, _ = session
    table, _, _ = ranked
    for column in ("allen_p_value_rf", "allen_azimuth_rf", "allen_elevation_rf", "allen_pref_image_ns",
                   f"allen_{PREF_CONDITION}", "allen_image_selectivity_ns", "allen_g_osi_sg", "image_selectivity"):
        assert column in table.columns, column
    table = table.set_index("cell_id")
    assert sorted(table.index[table.selected]) == sorted(PLANTED)
    ids = scene_condition_ids(planted_presentations(np.random.default_rng(7)))
    for unit, (x, y, frame, _) in PLANTED.items():
        # Allen's condition id mapped to the image it names: the planted frame, and meiscope's own pick agrees
        assert table.loc[unit, "allen_pref_image_ns"] == frame == table.loc[unit, "preferred_image_id"]
        assert table.loc[unit, f"allen_{PREF_CONDITION}"] == ids[frame] != frame
        assert (table.loc[unit, "allen_azimuth_rf"], table.loc[unit, "allen_elevation_rf"]) == pytest.approx(
            (x + 50.0, y + 10.0))
        assert table.loc[unit, "allen_p_value_rf"] == pytest.approx(allen.loc[unit, "p_value_rf"])


def test_ranking_metrics_summarise_allens_figures_without_meaningless_medians(ranked):
    _, metrics, _ = ranked
    for key in ("p_value_rf", "azimuth_rf", "elevation_rf", "pref_image_ns", PREF_CONDITION):
        assert f"median_allen_{key}" not in metrics
    assert metrics["allen_rf_significant_fraction"] == 1.0  # both selected units have a planted field
    assert metrics["pref_image_allen_agreement"] == 1.0 and metrics["n_pref_image_allen_compared"] == 2
    assert {"median_allen_image_selectivity_ns", "median_allen_g_osi_sg", "median_image_selectivity"} <= set(metrics)
    from meiscope.science.catalogue import lookup

    assert not [key for key in metrics if lookup("ranking", key) is None]


def test_allen_summaries_count_nan_as_not_significant_and_compare_only_known_images():
    chosen = pd.DataFrame({"allen_p_value_rf": [0.001, np.nan, 0.5, 0.009],
                           "allen_pref_image_ns": [3.0, np.nan, 7.0, 2.0], "preferred_image_id": [3, 4, 1, 2]})
    assert allen_summaries(chosen) == {"allen_rf_significant_fraction": 0.5, "n_pref_image_allen_compared": 3,
                                       "pref_image_allen_agreement": pytest.approx(2 / 3)}
    assert allen_summaries(chosen.iloc[:, 2:]) == {}  # no Allen columns: nothing to summarise


def test_image_selectivity_is_allens_definition():
    from allensdk.brain_observatory.ecephys.stimulus_analysis.natural_scenes import image_selectivity as allens

    rng = np.random.default_rng(3)
    trial_image = np.repeat(np.arange(7), 4)
    responses = rng.poisson([[1.0, 6.0, 0.5]], size=(28, 3)).astype(float)
    responses[:, 2] = 2.0  # flat: 0 by definition
    ours = image_selectivity(responses, trial_image)
    means = np.stack([responses[trial_image == i].mean(axis=0) for i in range(7)])
    np.testing.assert_allclose(ours, [allens(means[:, k]) for k in range(3)], atol=1e-12)
    assert ours[2] == 0.0
    sparse = np.zeros((28, 1))
    sparse[trial_image == 4] = 5.0  # one image only: 1 - 2/n
    assert image_selectivity(sparse, trial_image)[0] == pytest.approx(1 - 2 / 7, abs=2e-3)


def test_receptive_field_test_set_beside_allens():
    units = pd.DataFrame({"unit_id": [1, 2, 3, 4], "has_rf": [True, True, False, True],
                          "azimuth_rf_deg": [60.0, 20.0, np.nan, 50.0],
                          "elevation_rf_deg": [-10.0, 40.0, np.nan, 10.0]})
    allen = pd.DataFrame({"p_value_rf": [0.0, 0.001, 0.2], "azimuth_rf": [63.0, 20.0, 10.0],
                          "elevation_rf": [-6.0, 40.0, 10.0]}, index=[1, 2, 3])  # unit 4 not listed
    out = allen_rf_comparison(units, allen)
    assert out["gabor_patch_all_units_allen_frac_with_rf"] == 0.5
    assert out["gabor_patch_all_units_rf_agrees_allen"] == 0.75  # unit 4: ours significant, Allen has none
    assert out["gabor_patch_all_units_rf_centre_allen_distance_deg_median"] == pytest.approx(2.5)  # median(5, 0)
    assert allen_rf_comparison(units, allen.drop(columns="azimuth_rf")) == {}


def test_report_table_sets_meiscopes_figures_beside_allens(ranked, tmp_path):
    _, _, out = ranked
    rf = pd.DataFrame({"unit_id": [1, 2], "rf_p_value": [0.0, 0.004], "azimuth_rf_deg": [61.0, 20.0],
                       "elevation_rf_deg": [-10.0, 40.0]})
    rf.to_csv(tmp_path / "unit_receptive_fields.csv", index=False)
    grid = comparison_grid(out / "ranking.csv", tmp_path / "unit_receptive_fields.csv")
    assert grid[0] == COMPARISON_HEADER and len(grid) == 3  # the two selected units, best first
    row = dict(zip(grid[0], next(r for r in grid[1:] if r[0] == "1")))
    assert row["RF centre az, el (meiscope)"] == "61.0, -10.0" and row["RF centre az, el (Allen)"] == "60.0, -10.0"
    assert row["preferred image (meiscope)"] == row["preferred image (Allen)"] == str(PLANTED[1][2])
    assert row["RF p (meiscope)"] == "0"
    # without meiscope's receptive fields (gabor stage not run) its columns say n/a; no Allen columns: no table
    assert comparison_grid(out / "ranking.csv", tmp_path / "none.csv")[1][1] == "n/a"
    pd.DataFrame({"cell_id": [1], "rank": [1], "selected": [True]}).to_csv(tmp_path / "plain.csv", index=False)
    assert comparison_grid(tmp_path / "plain.csv", tmp_path / "none.csv") == []
    assert "downloaded by meiscope download" in allen_origin("allen")


@pytest.mark.parametrize("source, origin", [("synthetic", "allensdk&#x27;s own functions"),
                                            ("allen", "downloaded by meiscope download")])
def test_report_gabor_section_renders_the_table_and_says_where_allens_figures_come_from(ranked, tmp_path, source,
                                                                                          origin):
    import shutil

    from meiscope.config import parse_params
    from meiscope.paths import Layout
    from meiscope.report import render_section
    from meiscope.report_sections import STAGE_SECTIONS

    _, _, out = ranked
    params = parse_params({"data": {"recording": "neuropixels", "source": source}})
    layout = Layout.from_params(params, tmp_path)
    layout.ranking.mkdir(parents=True)
    shutil.copy(out / "ranking.csv", layout.ranking / "ranking.csv")
    m = {"gabor": {"gabor_patch_n_units": 2}}
    html = render_section(STAGE_SECTIONS["gabor"](params, layout, m))
    assert "RF centre az, el (Allen)" in html and origin in html and "meiscope&#x27;s figures beside Allen" in html
    assert html.count("<tr><th>") >= 3  # the header and one row per selected unit
    # a recording without Gabor patches (or without Allen's metrics) has no such table
    assert "RF centre az, el" not in render_section(STAGE_SECTIONS["gabor"](params, layout, {"gabor": {}}))
