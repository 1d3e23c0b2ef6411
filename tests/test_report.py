"""The HTML report: self-contained, read like a results section (summary, contents, provenance, this run
apart from the committed summaries), catalogue numbers only, and it renders in a real headless browser."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from meiscope import provenance
from meiscope import replicate as rep
from meiscope.atomic import save_figure
from meiscope.config import parse_params
from meiscope.paths import Layout
from meiscope.report import Section, render_report, write_report
from meiscope.science.catalogue import lookup
from meiscope.stages import report as report_stage

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KINDS = ["simple", "complex", "conjunction"]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]


def _png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.random.default_rng(0).random((8, 8)))
    save_figure(fig, path)
    return path


def _metrics(rng, n):
    """Metrics of every stage with the shapes the stages write (values drawn, not asserted on)."""
    return {
        "ranking": {"n_cells": 5 * n, "n_selected": n, "metric": "oracle_corr", "gt_precision": rng.random(),
                    "gt_recall": rng.random(), "median_reliability": rng.random(), "gt_n_responsive": 2 * n},
        "tune": {"n_trials": 3, "n_complete": 2, "n_pruned": 1, "n_failed": 0, "best_value": rng.random(),
                 "best_trial": 1, "default_value": rng.random()},
        "train": {"test_corr_to_avg_mean": 0.6, "ln_test_corr_to_avg_mean": 0.2, "test_fraction_of_oracle": rng.random(),
                  "gt_fresh_corr_mean": rng.random(), "ln_gt_fresh_corr_mean": rng.random(), "n_fresh_images": 50,
                  "n_train_images": 30, "n_val_images": 5, "n_test_images": 5, "shared_core_sessions": [900000001]},
        "mei": {"mei_over_best_image_median": 1 + rng.random(), "mei_val_over_best_image_median": 1 + rng.random(),
                "seed_consistency_phase_median": rng.random(), "frac_starts_disagree": rng.random(), "n_neurons": n},
        "gabor": {"mei_over_gabor_median": 1 + rng.random() / 5, "mei_val_over_gabor_median": 1.0,
                  "frac_neurons_mei_beats_gabor": rng.random(), "frac_neurons_mei_val_beats_gabor": rng.random(),
                  "mei_gabor_similarity_median": rng.random()},
        "validate": {"n_neurons": n, "n_unresponsive_selected": 0, "n_true_optimum_beaten": 0,
                     "gt_mei_rate_ratio_median": rng.random(), "gt_mei_corr_median": rng.random(),
                     **{f"n_{k}": n // 3 for k in KINDS}, **{f"gt_verdict_mei_vs_gabor_{k}": -1 for k in KINDS}},
    }


def _results(layout, params, rng, n):
    """The result files the report's cell figures read: MEIs, true optima, kinds, per-neuron accuracy."""
    from meiscope.atomic import write_npz

    height, width = params.extract.image_height, params.extract.image_width
    cell_ids = np.arange(100, 100 + n)
    low, high = -1.0, 2.0  # model-space values of screen 0 and 255
    write_npz(layout.mei / "meis.npz", {"meis_pixels": rng.uniform(0, 255, (n, height, width)), "cell_ids": cell_ids,
                                        "bounds": np.array([low, high])})
    write_npz(layout.validate / "true_optima.npz", {"optima": rng.uniform(low, high, (n, height, width)),
                                                    "cell_ids": cell_ids})
    kinds = [KINDS[i % 3] for i in range(n)]
    (layout.validate / "per_neuron.csv").write_text(
        "cell_id,kind\n" + "".join(f"{c},{k}\n" for c, k in zip(cell_ids, kinds)))
    layout.train.mkdir(parents=True, exist_ok=True)
    rows = [f"{c},{rng.random():.3f},{rng.random():.3f},{rng.uniform(0, height - 1):.2f},{rng.uniform(0, width - 1):.2f}\n"
            for c in cell_ids]
    (layout.train / "per_neuron.csv").write_text(
        "cell_id,test_oracle_corr,test_single_trial_corr,readout_row,readout_col\n" + "".join(rows))
    return cell_ids, kinds


def _replicates(recording):
    """A committed-style replicate summary whose stored intervals leave their range (written before clipping)."""
    by_seed = {s: {"ranking": {"gt_recall": v}, "validate": {"gt_n_zero_rate_mei_conjunction": z,
                                                             "gt_mei_over_gabor_rate_median_simple": r}}
               for s, v, z, r in ((1, 0.97, 0, 0.5), (2, 0.99, 0, 0.6), (3, 0.6, 1, 4.0))}
    summary = {**rep.summarise_replicates(by_seed, confidence=0.95), "recording": recording}
    for entry in summary["figures"].values():  # the old, unclipped linear intervals
        values = np.array(entry["values"], dtype=float)
        half = 4.3 * values.std(ddof=1) / np.sqrt(3)
        entry.update(mean=values.mean(), ci_low=values.mean() - half, ci_high=values.mean() + half, scale="linear")
    return summary


@pytest.fixture
def study(tmp_path):
    """A tiny finished study in a git checkout: metrics, results, two committed replicate summaries."""
    params = parse_params({"tracking": {"enabled": False}})
    layout = Layout.from_params(params, tmp_path)
    rng = np.random.default_rng(0)
    n = 9
    layout.metrics.mkdir()
    for stem, values in _metrics(rng, n).items():
        layout.metrics_file(stem).write_text(json.dumps(values))
    cell_ids, kinds = _results(layout, params, rng, n)
    for recording in ("container", "two_photon"):
        rep.summary_file(tmp_path, recording).write_text(json.dumps(_replicates(recording)))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "code.py").write_text("x = 1\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "study"], cwd=tmp_path, check=True)
    return params, layout, cell_ids, kinds


def _visible(page: str) -> str:
    """The text a reader sees (no tags, attributes, scripts, styles or images)."""
    page = re.sub(r"<(script|style)>.*?</\1>", "", page, flags=re.S)
    return re.sub(r"<[^>]+>", " ", page)


def test_report_inlines_images_and_escapes_text(tmp_path):
    fig = _png(tmp_path / "a.png")
    html = render_report("t", "<sub>", [Section("S", "intro & more", {"x": 0.123456, "k": "<b>"}, [fig, tmp_path / "missing.png"])])
    assert "data:image/png;base64," in html
    assert "src=\"http" not in html and "<link" not in html  # nothing loaded from a network
    assert "&lt;sub&gt;" in html and "&lt;b&gt;" in html and "0.123" in html
    assert "Not produced: missing.png" in html


def test_summary_contents_and_provenance_open_the_page(study):
    params, layout, _, _ = study
    page = report_stage.run(params, layout.root, device="cpu").read_text()
    starts = [page.index(f'id="{a}"') for a in ("summary", "contents", "provenance", "part-run", "part-committed")]
    assert starts == sorted(starts)
    anchors = set(re.findall(r'<section id="([^"]+)"', page))
    links = set(re.findall(r'href="#([^"]+)"', page))
    assert {"rank", "train", "mei", "gabor", "validate", "replicates-two_photon"} <= anchors
    assert links - {"part-run", "part-committed"} <= anchors  # every contents and findings link lands
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=layout.root, capture_output=True, text=True)
    assert head.stdout.strip() in page and provenance.settings_digest(params) in page
    assert "clean (src/, params.yaml, dvc.yaml as committed)" in page  # the report and metrics it wrote do not count
    summary = _visible(page[starts[0]:starts[1]])
    assert "9 selected" in summary and "Findings" in summary


def test_committed_summaries_say_where_they_come_from(study):
    params, layout, _, _ = study
    page = report_stage.run(params, layout.root, device="cpu").read_text()
    run_part, committed = page.split('id="part-committed"')
    commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", "metrics/replicates-container.json"],
                            cwd=layout.root, capture_output=True, text=True).stdout.strip()
    assert f"From metrics/replicates-container.json, committed at {commit}" in committed
    sections = committed.split("<section id=")[1:]
    assert len(sections) == 2 and all("not rerun by `make run`" in s for s in sections)
    assert "not rerun by" not in _visible(run_part.split('id="part-run"')[1])


def test_every_number_has_a_label_and_no_raw_key_or_long_float(study):
    params, layout, _, _ = study
    page = _visible(report_stage.run(params, layout.root, device="cpu").read_text())
    for stem in ("ranking", "train", "mei", "gabor", "validate"):
        for key in json.loads(layout.metrics_file(stem).read_text()):
            if lookup(stem, key) is not None and "_" in key:
                assert key not in page, key
    assert not re.search(r"\d\.\d{5,}", page)  # no 16-digit floats


def test_intervals_stay_inside_what_the_figure_can_take(study):
    params, layout, _, _ = study
    page = report_stage.run(params, layout.root, device="cpu").read_text()
    for value in re.findall(r"-\d+\.\d+", _visible(page.split('id="part-committed"')[1])):
        pytest.fail(f"negative end of an interval of non-negative figures: {value}")


def test_the_code_is_modified_only_by_code_not_by_the_pipeline_outputs(study):
    _, layout, _, _ = study
    assert provenance.code_is_clean(layout.root) is True
    layout.metrics_file("ranking").write_text("{}")  # the pipeline rewrote a metric: still the same code
    (layout.root / "dvc.lock").write_text("x")
    assert provenance.code_is_clean(layout.root) is True
    (layout.root / "src" / "code.py").write_text("x = 2\n")
    assert provenance.code_is_clean(layout.root) is False
    assert provenance.code_is_clean(layout.root.parent / "nowhere") is None


def test_every_mei_is_shown_grouped_by_kind(study):
    from meiscope.report_cells import gallery_figures

    params, layout, cell_ids, kinds = study
    captions = [caption for caption, _ in gallery_figures(params, layout)]
    assert [c.split("the ")[1].split(" cells")[0] for c in captions] == KINDS
    assert sum(int(re.search(r"\((\d+)\)", c).group(1)) for c in captions) == len(cell_ids)
    (layout.validate / "per_neuron.csv").unlink()  # no truth: one group of every MEI
    assert [int(re.search(r"\((\d+)\)", c).group(1)) for c, _ in gallery_figures(params, layout)] == [len(cell_ids)]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_report_images_render_in_headless_chromium(tmp_path):
    figs = [_png(tmp_path / f"f{i}.png") for i in range(3)]
    page = write_report(tmp_path / "report" / "index.html", "meiscope", "test",
                        [Section("A", "a", {"v": 1.0}, figs[:2]), Section("B", "b", {}, figs[2:])])
    dom = _chromium(page, tmp_path)
    assert int(dom["imagesTotal"]) == 3 and int(dom["imagesLoaded"]) == 3


def _chromium(page, tmp_path, width=1280):
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          f"--window-size={width},900", "--hide-scrollbars", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    found = dict(re.findall(r'data-(images-loaded|images-total|scroll-width|client-width)="(\d+)"', out.stdout))
    assert len(found) == 4, out.stderr[-2000:]
    return {"imagesLoaded": found["images-loaded"], "imagesTotal": found["images-total"],
            "scrollWidth": found["scroll-width"], "clientWidth": found["client-width"]}


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_the_whole_report_fits_the_window_and_loads_every_image(study, tmp_path):
    params, layout, _, _ = study
    page = report_stage.run(params, layout.root, device="cpu")
    for width in (1280, 760):
        dom = _chromium(page, tmp_path, width)
        assert int(dom["imagesTotal"]) >= 5 and dom["imagesLoaded"] == dom["imagesTotal"]
        assert int(dom["scrollWidth"]) <= int(dom["clientWidth"])  # no horizontal overflow


def _closed_loop_table(rng, n):
    import pandas as pd

    mei, gabor = rng.uniform(0, 5, n), rng.uniform(0, 5, n)
    return pd.DataFrame({"kind": [KINDS[i % 3] for i in range(n)], "true_rate_above_baseline_mei": mei,
                         "true_rate_above_baseline_gabor": gabor, "mei_vs_gabor": np.sign(mei - gabor),
                         **{f"{s}_rate_ratio": rng.uniform(0, 1, n) for s in ("mei", "gabor", "best_image")},
                         "model_mei_over_gabor": rng.uniform(0.5, 2, n), "mei_truth_corr": rng.uniform(0, 1, n)})


def _report_figures(rng):
    """Every figure the report shows, built from tiny inputs: (name, figure, dpi it is saved at)."""
    from meiscope import validation
    from meiscope.ablation import ablation_figure, plan_of, summarise_ablation
    from meiscope.report_figures import DPI, accuracy_and_positions_figure, mei_gallery_figure
    from meiscope.report_numbers import display_summary

    n = 12
    replicates = display_summary(_replicates("two_photon"))
    arms = {arm.slug: {seed: {"train": {"gt_fresh_corr_mean": rng.random()},
                              "validate": {f"gt_mei_{m}_median_{k}": rng.random() for k in KINDS
                                           for m in ("corr", "rate_ratio")}}
                       for seed in (1, 2)} for arm in plan_of("container").arms}
    yield "gallery", mei_gallery_figure(rng.uniform(0, 255, (n, 36, 46)), [f"cell {i}" for i in range(n)], "simple",
                                        2.6, rng.uniform(0, 255, (n, 36, 46))), DPI
    yield "accuracy", accuracy_and_positions_figure(rng.random(n), rng.random(n), ["simple"] * n, rng.normal(0, 9, n),
                                                    rng.normal(0, 9, n), (-60, 60, -47, 47), (-99, 99, -62, 62)), DPI
    yield "closed loop", validation.closed_loop_figure(_closed_loop_table(rng, n), rng.random((n, 36, 46)),
                                                       rng.random((n, 36, 46)), lambda x: x * 255, n_show=5), 110
    yield "replicates", rep.intervals_figure(replicates), DPI
    yield "ablation", ablation_figure(display_summary(summarise_ablation(plan_of("container").arms, arms, 0.95))), DPI


def test_no_figure_text_is_smaller_than_9_px_at_the_width_the_report_shows_it():
    """Pixels of PNG text cannot be read from the DOM: points * dpi / 72, times the display's shrink factor."""
    from meiscope.report_figures import MIN_TEXT_PX, smallest_text_px

    checked = []
    for name, fig, dpi in _report_figures(np.random.default_rng(0)):
        assert smallest_text_px(fig, dpi) >= MIN_TEXT_PX, name
        checked.append(name)
    assert checked == ["gallery", "accuracy", "closed loop", "replicates", "ablation"]


def test_the_legibility_check_catches_a_figure_too_wide_for_the_page():
    from matplotlib.figure import Figure

    from meiscope.report_figures import smallest_text_px

    fig = Figure(figsize=(16, 3))
    fig.add_subplot().set_title("t", fontsize=7)  # 9.7 px at 1:1; the ~1300 px PNG shrunk to 1000: under 9 px
    assert smallest_text_px(fig, 100) < 9 <= smallest_text_px(fig, 100, display_width_px=1600)


def test_the_contrast_sweep_gives_every_neuron_its_own_line_style(monkeypatch):
    from meiscope import atomic
    from meiscope.stages import mei

    saved = []
    monkeypatch.setattr(atomic, "save_figure", lambda fig, path: saved.append(fig))
    n = 25
    mei._plot_contrast_sweep(np.linspace(0.5, 1.5, 5), np.random.default_rng(0).random((n, 5)) + 0.1,
                             np.arange(n), None)
    lines = [line for line in saved[0].axes[0].get_lines() if line.get_label().startswith("cell")]
    styles = {(line.get_color() if isinstance(line.get_color(), str) else tuple(line.get_color()), line.get_linestyle())
              for line in lines}
    assert len(lines) == n and len(styles) == n
    from meiscope.report_figures import smallest_text_px

    assert smallest_text_px(saved[0], 110) >= 9
