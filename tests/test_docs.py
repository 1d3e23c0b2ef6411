"""The documentation: the MkDocs site builds offline with --strict, the README stays a short
introduction, no page carries tracker words or commit hashes, and the result tables are generated
from metrics/*.json with the metric catalogue's labels and formats."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from meiscope.report_numbers import display_entry
from meiscope.science import catalogue

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "docs" / "hooks" / "metric_tables.py"
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]

TRACKER_WORDS = re.compile(r"\b(issues?|rounds?|stop)\b", re.IGNORECASE)
# 7-40 hex digits with at least one letter and one digit (plain numbers such as session ids are not hashes)
COMMIT_HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
GENERATED = re.compile(r"^<!-- [a-z]+-table:.*?^<!-- end of generated table -->", re.MULTILINE | re.DOTALL)


def load_hook():
    spec = importlib.util.spec_from_file_location("metric_tables", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
                           "--site-dir", str(site)], cwd=config.parent, capture_output=True, text=True,
                          timeout=300)


def test_site_builds_strict_and_offline(tmp_path):
    site = tmp_path / "site"
    result = mkdocs_build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stdout + result.stderr
    results = (site / "results.html").read_text()
    assert "<table" in results and "<!-- replicates-table" not in results
    for page in site.glob("*.html"):
        html = page.read_text()
        # nothing is fetched from a CDN: scripts and stylesheets are local files
        assert not re.search(r'<(script|link)[^>]+(src|href)="(https?:)?//', html), page.name


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    assert max(len(line) for line in lines if not line.startswith("|")) <= 120  # a table row cannot wrap


def test_the_readme_tables_are_the_metrics_as_they_are_now():
    """The README's generated tables equal what `make readme` writes from metrics/ today: no figure typed or stale."""
    hook = load_hook()
    readme = (ROOT / "README.md").read_text()
    assert hook.END_OF_TABLE in readme
    assert hook.refresh(readme, ROOT) == readme, "README.md tables are stale: run `make readme`"


def _summary(profile, fresh, corr, verdicts, commit="0123abc"):
    figure = lambda mean, scale="linear": {"mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05,  # noqa: E731
                                          "values": [mean - 0.02, mean, mean + 0.02], "n": 3, "scale": scale}
    words = lambda w: {"per_replicate": w, "holds_in_every_replicate": len(set(w)) == 1,  # noqa: E731
                       "conclusion": w[0] if len(set(w)) == 1 else "inconsistent"}
    return {"k": 3, "seeds": [1, 2, 3], "protocol": "confirmatory", "profile": profile, "git_commit": commit * 5,
            "figures": {"train.gt_fresh_corr_mean": figure(fresh), "validate.gt_mei_corr_median_simple": figure(corr),
                        "validate.gt_mei_over_gabor_drive_median_simple": figure(0.5, "log"),
                        "validate.n_simple": figure(10), "validate.n_truth_simple": figure(20)},
            "conclusions": {"simple": {
                "MEI vs optimal Gabor in truth, interval and tie band": words(verdicts[0]),
                "MEI vs optimal Gabor on the held-out model, interval and tie band": words(verdicts[1])}}}


def test_the_compare_table_sets_two_cortices_side_by_side_with_the_change(tmp_path):
    hook = load_hook()
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "a.json").write_text(json.dumps(_summary(
        "out_of_family", 0.6, 0.7, (["ties", "ties", "loses"], ["ties"] * 3))))
    (tmp_path / "metrics" / "b.json").write_text(json.dumps(_summary("gabor_family", 0.8, 0.9, (["loses"] * 3,) * 2)))
    out = hook.render("<!-- compare-table: metrics/a.json metrics/b.json -->", tmp_path).splitlines()
    assert out[0] == ("| figure | out_of_family (confirmatory, 3 replicates, commit 0123abc) | gabor_family (confirmatory, "
                      "3 replicates, commit 0123abc) | change |")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in out[2:]}
    label = catalogue.lookup("train", "gt_fresh_corr_mean").label
    assert rows[label] == ["0.600 [0.550, 0.650]", "0.800 [0.750, 0.850]", "-0.20 |"]  # t-interval of the values
    assert rows["MEI vs true optimum, corr. (simple)"][2] == "-0.20 |"
    assert rows["true drive: MEI / optimal Gabor (simple)"][2] == "x1.00 |"  # ratios change by a factor
    assert rows["cells selected / truly responsive (simple)"][:2] == ["10 / 20", "10 / 20"]
    assert rows["MEI vs optimal Gabor, truth / model (simple)"][:2] == ["ties 2/3, loses 1/3 / ties 3/3",
                                                                        "loses 3/3 / loses 3/3"]
    with pytest.raises(hook.MetricTableError, match="exactly two summaries"):
        hook.render("<!-- compare-table: metrics/a.json -->", tmp_path)
    # two recordings' studies on the same cortex: the columns are named for the recording
    for name, recording in (("a", "container"), ("b", "neuropixels")):
        summary = json.loads((tmp_path / "metrics" / f"{name}.json").read_text())
        summary.update(recording=recording, profile="out_of_family")
        (tmp_path / "metrics" / f"{name}.json").write_text(json.dumps(summary))
    head = hook.render("<!-- compare-table: metrics/a.json metrics/b.json -->", tmp_path).splitlines()[0]
    assert head.startswith("| figure | container (confirmatory, 3 replicates") and "| neuropixels (" in head


def test_refresh_rewrites_only_what_lies_between_a_placeholder_and_its_end(tmp_path):
    hook = load_hook()
    (tmp_path / "metrics").mkdir()
    for name, fresh in (("a", 0.6), ("b", 0.8)):
        (tmp_path / "metrics" / f"{name}.json").write_text(json.dumps(_summary(name, fresh, 0.7, (["ties"] * 3,) * 2)))
    head = "<!-- compare-table: metrics/a.json metrics/b.json -->"
    page = f"Intro.\n\n{head}\n| stale | table |\n{hook.END_OF_TABLE}\n\nAfter.\n"
    fresh = hook.refresh(page, tmp_path)
    assert fresh.startswith(f"Intro.\n\n{head}\n| figure |") and fresh.endswith(f"{hook.END_OF_TABLE}\n\nAfter.\n")
    assert "stale" not in fresh and hook.refresh(fresh, tmp_path) == fresh  # idempotent


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_pages_have_no_tracker_words_or_commit_hashes(page):
    text = GENERATED.sub("", page.read_text())  # a generated table names the commit its summary records
    assert not COMMIT_HASH.findall(text), COMMIT_HASH.findall(text)
    prose = INLINE_CODE.sub("", FENCED.sub("", text))  # command names such as `make services-stop` are not prose
    assert not TRACKER_WORDS.findall(prose), TRACKER_WORDS.findall(prose)


def test_stage_table_uses_catalogue_labels_and_formats(tmp_path):
    hook = load_hook()
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "train.json").write_text(json.dumps({"gt_fresh_corr_mean": 0.80641, "n_neurons": 69}))
    page = "Before.\n\n<!-- metrics-table: train -->\n\nAfter.\n"
    out = hook.render(page, tmp_path)
    metric = catalogue.lookup("train", "gt_fresh_corr_mean")
    row = f"| {metric.label} | {catalogue.format_value(metric, 0.80641)} |"
    assert row in out.splitlines()
    assert "<!--" not in out and out.startswith("Before.") and out.rstrip().endswith("After.")


def test_replicates_table_uses_catalogue_labels_and_formats(tmp_path):
    hook = load_hook()
    (tmp_path / "metrics").mkdir()
    entry = {"label": "written by an old version", "mean": 0.7965, "ci_low": 0.7648, "ci_high": 0.8282,
             "values": [0.80, 0.783, 0.807], "n": 3, "scale": "linear"}
    summary = {"seeds": [101, 102, 103], "figures": {"train.gt_fresh_corr_mean": entry}}
    (tmp_path / "metrics" / "replicates-x.json").write_text(json.dumps(summary))
    out = hook.render("<!-- replicates-table: metrics/replicates-x.json -->", tmp_path)
    metric = catalogue.lookup("train", "gt_fresh_corr_mean")
    fmt = lambda v: catalogue.format_value(metric, v)  # noqa: E731
    assert metric.label in out and "written by an old version" not in out
    # the interval as the report shows it: recomputed from the values (t-interval of 3), not the stored ends
    shown = display_entry(metric, entry, 0.95)
    assert shown["ci_low"] != entry["ci_low"] and f"{fmt(shown['mean'])} [{fmt(shown['ci_low'])}, {fmt(shown['ci_high'])}]" in out
    assert " / ".join(fmt(v) for v in entry["values"]) in out
    assert "seeds 101 / 102 / 103" in out


def test_missing_metrics_file_names_the_file(tmp_path):
    hook = load_hook()
    with pytest.raises(hook.MetricTableError, match="metrics/nope.json"):
        hook.render("<!-- replicates-table: metrics/nope.json -->", tmp_path)
    with pytest.raises(hook.MetricTableError, match="metrics/unknown_stage.json"):
        hook.render("<!-- metrics-table: unknown_stage -->", tmp_path)
    with pytest.raises(hook.MetricTableError, match="unknown table 'bogus-table'"):
        hook.render("<!-- bogus-table: metrics/train.json -->", tmp_path)


def test_build_fails_with_the_page_and_file_named(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Broken\n\n<!-- replicates-table: metrics/nope.json -->\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"site_name: broken\ntheme:\n  name: mkdocs\n  highlightjs: false\nhooks:\n  - {HOOK}\n")
    result = mkdocs_build(config, tmp_path / "site")
    assert result.returncode != 0
    assert "index.md" in result.stderr and "metrics/nope.json" in result.stderr


def test_closed_loop_table_shows_intervals_coverage_and_every_kind(tmp_path):
    hook = load_hook()
    (tmp_path / "metrics").mkdir()
    values = {"n_true_optimum_beaten": 0, "n_responsive": 5, "n_simple": 3, "n_centre_surround": 2,
              "n_truth_responsive": 12, "n_truth_simple": 7, "n_truth_centre_surround": 5,
              "gt_mei_corr_median_simple": 0.91, "gt_mei_corr_median_ci_low_simple": 0.85,
              "gt_mei_corr_median_ci_high_simple": 0.95, "gt_mei_corr_median_centre_surround": 0.4,
              "gt_all_best_scene_native_rate_ratio_median_simple": 0.5}
    (tmp_path / "metrics" / "validate.json").write_text(json.dumps(values))
    rows = hook.render("<!-- metrics-table: validate -->", tmp_path).splitlines()
    assert rows[0] == "| figure | cells | all cells | simple | centre_surround |"
    corr = catalogue.lookup("validate", "gt_mei_corr_median")
    # the interval over cells beside its figure, not on rows of its own; a kind beyond the default three
    assert f"| {corr.label} | selected cells |  | 0.91 [0.85, 0.95] | 0.40 |" in rows
    assert not any("end of the interval" in row for row in rows)
    assert any(row.endswith("| all truly responsive cells |  | 0.50 |  |") for row in rows)
    assert "| truly responsive cells |  | 12 | 7 | 5 |" in rows  # the pooled count shares its kinds' row
    assert any(row.startswith("| correctness check: ") for row in rows)


def test_replicates_table_shows_each_replicates_interval_over_its_cells(tmp_path):
    hook = load_hook()
    (tmp_path / "metrics").mkdir()
    entry = {"mean": 0.9, "ci_low": 0.85, "ci_high": 0.95, "values": [0.88, 0.92], "n": 2, "scale": "linear",
             "per_replicate_ci": [[0.8, 0.93], [None, None]]}
    summary = {"seeds": [1, 2], "figures": {"validate.gt_mei_corr_median_simple": entry}}
    (tmp_path / "metrics" / "replicates-x.json").write_text(json.dumps(summary))
    out = hook.render("<!-- replicates-table: metrics/replicates-x.json -->", tmp_path)
    # over replicates: recomputed from the values and kept inside a correlation's range; per replicate: as stored
    assert "| 0.90 [0.65, 1.00] | 0.88 [0.80, 0.93] / 0.92 |" in out  # a replicate without one shows its value


def test_every_test_the_faults_page_names_exists():
    page = (Path(__file__).resolve().parents[1] / "docs" / "faults.md").read_text()
    named = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)", page))
    assert len(named) >= 20  # the page cites its tests
    tests = Path(__file__).resolve().parent
    missing = [f"{file}::{name}" for file, name in sorted(named)
               if not re.search(rf"^def {name}\(", (tests.parent / file).read_text(), re.MULTILINE)]
    assert missing == []
