"""What each command prints when it ends: a few aligned, rounded lines, never a raw dict."""

from meiscope import pipeline, summaries
from meiscope.summaries import summary_lines


def test_train_summary_is_short_aligned_and_rounded():
    metrics = {"test_corr_to_avg_mean": 0.177791996207729, "ln_test_corr_to_avg_mean": 0.12342809091565973,
               "test_fraction_of_oracle": 0.4225647656972325, "gt_fresh_corr_mean": 0.34711300399436207,
               "ln_gt_fresh_corr_mean": 0.18275384171523057, "n_fresh_images": 1000, "seeds": [1, 2, 3]}
    lines = summary_lines("train", metrics)
    assert lines[0] == "train:" and 2 <= len(lines) - 1 <= 4
    assert "0.178 (LN baseline 0.123)" in lines[1] and "0.347 (LN 0.183; 1000 scenes)" in lines[3]
    starts = {line.index(value) for line, value in zip(lines[1:], ("0.178", "0.42", "0.347"))}
    assert len(starts) == 1  # values aligned in one column
    assert not any("0.1777919" in line or "{" in line for line in lines)


def test_validate_summary_names_verdicts_and_survives_missing_figures():
    metrics = {"n_true_optimum_beaten": 0, "n_simple": 27, "gt_mei_corr_median_simple": 0.375,
               "gt_mei_rate_ratio_median_simple": None, "gt_verdict_mei_vs_gabor_simple": -1,
               "gt_sign_p_mei_vs_gabor_simple": 0.0427}
    text = "\n".join(summary_lines("validate", metrics))
    assert "stimuli beating the true optimum  0" in text
    assert "simple (27 cells)" in text and "MEI loses (p = 0.043)" in text and "optimum n/a" in text
    assert summary_lines("validate", {"skipped": True, "note": "real data"})[1].endswith("skipped (no ground truth)")
    assert summary_lines("mei", {"n_neurons": 3}) == []  # a figure missing: nothing half-printed
    assert summary_lines("report", "report/index.html") == ["report:", "  wrote  report/index.html"]


def test_the_summaries_are_keyed_by_stages_of_the_table_or_commands():
    from meiscope.cli import main

    assert set(summaries.STAGES) <= {s.name for s in pipeline.STAGES} | set(main.commands)


def test_replicate_summary_names_its_protocol_and_where_the_seeds_came_from():
    confirmatory = {"protocol": "confirmatory", "git_commit": "0123456789abcdef", "seeds": [744958, 468452, 147770],
                    "seed_derivation": {"src_tree": "abcdef0123", "params_blob": "fedcba9876"}}
    text = "\n".join(summary_lines("replicate", confirmatory))
    assert "confirmatory (commit 0123456)" in text
    assert "744958, 468452, 147770: drawn from src/ tree abcdef0 and params.yaml blob fedcba9" in text
    development = {"protocol": "development", "seeds": [101, 102], "seed_derivation": {"rule": "fixed seeds"}}
    assert "looked at while developing" in "\n".join(summary_lines("replicate", development))
