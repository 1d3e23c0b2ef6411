"""What the report says about each stage: the sections of report/index.html, built from the metrics.

Kept apart from the stage glue (``stages/report.py``) so that changing what the report says re-runs only
the report stage. Rendering lives in :mod:`meiscope.report`. The stage sections come in the order of the
stage table (:data:`meiscope.pipeline.STAGES`); a section about data only some studies have (the presented
Gabor patches, the replicates of other recordings) shows where those data exist, never by the recording's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from meiscope.config import Params
from meiscope.recordings import RECORDINGS
from meiscope.recordings import label_of as recording_label
from meiscope.paths import Layout
from meiscope.report import Section, figure_png
from meiscope.science.catalogue import (DVC_HEADLINE, HEADLINE, KINDS, format_conclusion, format_interval,
                                        format_metric, label_of)

# The closed-loop targets of the study (simple and complex cells) and the model accuracy they need.
TARGETS = {"gt_mei_corr": 0.8, "gt_mei_rate_ratio": 0.9, "gt_fresh_corr": 0.8}


def target_note(m: dict[str, dict]) -> str:
    """Say which closed-loop targets were missed, and why, from the train and validate metrics."""
    missed = []
    for kind in ("simple", "complex"):
        for key in ("gt_mei_corr", "gt_mei_rate_ratio"):
            value = m["validate"].get(f"{key}_median_{kind}")
            if value is not None and value < TARGETS[key]:
                missed.append(f"{label_of('validate', f'{key}_median_{kind}')} is {value:.2f} (target {TARGETS[key]})")
    if not missed:
        return ""
    model = m["train"].get("gt_fresh_corr_mean")
    why = (f" The MEIs can only be as close to the truth as the model is: its predictions correlate "
           f"{model:.2f} with the true rates on fresh scenes (target {TARGETS['gt_fresh_corr']})."
           if model is not None else "")
    return ("Targets missed: " + "; ".join(missed) + "." + why +
            " With 118 scenes (88 for training) a CNN learns each cell's receptive field only roughly; more "
            "stimuli (e.g. other Allen stimuli or several sessions sharing one core), a more data-efficient "
            "core (rotation-equivariant, or a fixed Gabor front end) or a closed loop that adds the MEIs to the "
            "training data would close the gap.")


def validate_rows(v: dict) -> dict[str, Any]:
    """The closed loop's headline figures, a few rows per cell kind (the JSON holds them all), labelled
    and formatted by the metric catalogue."""
    if v.get("skipped") or not v:
        return {k: val for k, val in v.items() if k != "note"}

    def f(key: str) -> str:
        return format_metric("validate", key, v.get(key))

    def label(key: str) -> str:
        return label_of("validate", key)

    rows: dict[str, Any] = {
        label("n_neurons"): f"{f('n_neurons')} ({label('n_unresponsive_selected')}: {f('n_unresponsive_selected')})",
        label("n_true_optimum_beaten"): f("n_true_optimum_beaten")}
    for kind in KINDS:
        if not v.get(f"n_{kind}"):
            continue
        k = f"_{kind}"
        rows[label(f"n_{kind}")] = f(f"n_{kind}")
        rows[label("gt_mei_corr_median" + k)] = f("gt_mei_corr_median" + k)
        rows[label("gt_mei_rate_ratio_median" + k)] = (
            f"{f('gt_mei_rate_ratio_median' + k)} ({label('gt_gabor_rate_ratio_median')}: "
            f"{f('gt_gabor_rate_ratio_median' + k)})")
        rows[label("gt_verdict_mei_vs_gabor" + k)] = (
            f"{f('gt_verdict_mei_vs_gabor' + k)}: wins {f('gt_frac_mei_beats_gabor' + k)}, "
            f"loses {f('gt_frac_gabor_beats_mei' + k)}, sign test p = {f('gt_sign_p_mei_vs_gabor' + k)}; "
            f"{label('gt_mei_over_gabor_rate_median')}: {f('gt_mei_over_gabor_rate_median' + k)}")
        rows[label("gt_n_zero_rate_mei" + k)] = (
            f"{f('gt_n_zero_rate_mei' + k)} ({label('gt_n_zero_rate_gabor')}: {f('gt_n_zero_rate_gabor' + k)}; "
            f"{label('gt_n_zero_rate_best_image')}: {f('gt_n_zero_rate_best_image' + k)})")
        rows[label("model_verdict_mei_vs_gabor" + k)] = (
            f"{f('model_verdict_mei_vs_gabor' + k)} ({label('model_val_verdict_mei_vs_gabor')}: "
            f"{f('model_val_verdict_mei_vs_gabor' + k)})")
    return rows


def replicate_section(summary: dict, params: Params) -> Any:
    """The replicate run: every headline figure with its interval, and which conclusions hold in all."""
    from meiscope.replicate import intervals_figure, stale_note

    rows = {f.label: format_interval(summary["figures"][f.name]) for f in HEADLINE if f.name in summary["figures"]}
    for kind, found in summary["conclusions"].items():
        for label, c in found.items():
            rows[f"{kind} cells: {label}"] = format_conclusion(c)
    recording = recording_label(summary.get("recording", "two_photon"))  # older summaries: two-photon
    intro = (f"The synthetic {recording} study rerun on {summary['k']} new cortices (seeds {summary['seeds']}; new cells, "
             f"scenes, split, tuning, training and MEI starts each): mean [{summary['confidence']:.0%} t-interval] "
             "(geometric mean and log-scale interval for ratios) "
             "over replicates. Only conclusions that hold in every replicate are conclusions; the single run above "
             "is one draw. Written by `meiscope replicate` (not part of `dvc repro`)."
             + stale_note(summary, params, "meiscope replicate"))
    return Section(f"Replicates ({recording}): what holds across new cortices", intro, rows,
                   inline_figures=[("replicate intervals", figure_png(intervals_figure(summary)))])


def ablation_section(summary: dict, params: Params) -> Section:
    """What each stimulus of the container buys (``meiscope ablation``): one row per training set."""
    from meiscope.recordings.container.ablation import ablation_figure, ablation_grid
    from meiscope.replicate import stale_note

    intro = (f"The container study's replicates (seeds {summary['seeds']}), each retrained from extract on the same "
             "data with only container.stimuli changed (tune, train, MEIs and the closed loop rerun per arm). "
             f"Mean [{summary['confidence']:.0%} t-interval] over replicates; the issue's targets are 0.8. "
             "Written by `meiscope ablation` (metrics/ablation-container.json)."
             + stale_note(summary, params, "make ablation"))
    return Section("What each stimulus buys (container ablation)", intro, grid=ablation_grid(summary),
                   inline_figures=[("ablation", figure_png(ablation_figure(summary)))])


def recordings_section(summary: dict, other: dict) -> Section:
    """Every headline figure of the two recordings' replicates side by side (the same cortices when the seeds match)."""
    from meiscope.replicate import summary_file

    pair = sorted([summary, other], key=lambda s: list(RECORDINGS).index(s.get("recording", "two_photon")))
    names = [recording_label(s.get("recording", "two_photon")) for s in pair]
    rows = {}
    for f in HEADLINE:
        if any(f.name in s["figures"] for s in pair):
            rows[f.label] = " | ".join(f"{n}: {format_interval(s['figures'].get(f.name, {}))}" for n, s in zip(names, pair))
    same = pair[0]["seeds"] == pair[1]["seeds"]
    files = ", ".join(f"metrics/{summary_file(Path('.'), s.get('recording', 'two_photon')).name}" for s in pair)
    intro = (f"Replicates of the {names[0]} study (seeds {pair[0]['seeds']}) and of the {names[1]} study (seeds "
             f"{pair[1]['seeds']})" + (": the same synthetic cortices, so the same true cells, recorded two ways. "
                                       if same else ": different cortices, so not a paired comparison. ")
             + f"Mean [t-interval] over replicates ({files}).")
    title = f"{names[0]} vs {names[1]}: the same study, two recordings"
    return Section(title[0].upper() + title[1:], intro, rows)


def _rank_section(params: Params, layout: Layout, m: dict[str, dict]) -> Section:
    """The ranking's thresholds and what passed them."""
    return Section("Most expressive neurons (rank)",
                   f"Cells ranked by {params.rank.metric}; selected cells pass every threshold in params.yaml (rank:).",
                   m["ranking"], [layout.ranking / "reliability.png", layout.ranking / "tuning.png"], stage="ranking")


def _tune_section(params: Params, layout: Layout, m: dict[str, dict]) -> Section:
    """The architecture search."""
    return Section("Architecture search (tune)",
                   "Optuna study over the CNN architecture; trial 0 is the default configuration of params.yaml.",
                   dict(m["tune"]), [layout.tune / "optimization_history.png", layout.tune / "param_importances.png"],
                   stage="tune")


def _train_section(params: Params, layout: Layout, m: dict[str, dict]) -> Section:
    """The response model's accuracy."""
    return Section("Response model (train)",
                   "CNN ensemble (shared core + per-neuron readout) vs the linear-nonlinear baseline on held-out test "
                   "images; FEVE and correlation to average are measured against the noise ceiling; on synthetic data "
                   "gt_fresh_corr_* scores the models against the true rates on 1,000 new scenes.",
                   m["train"], [layout.train / "learning_curves.png", layout.train / "pred_vs_obs.png"], stage="train")


def _mei_section(params: Params, layout: Layout, m: dict[str, dict]) -> Section:
    """The MEIs against the best natural images."""
    return Section("Most Exciting Inputs (mei)",
                   "One batched gradient ascent for all neurons under a fixed L2 budget in the model's pixel space; "
                   "'val' scores come from an ensemble member held out of the optimisation.",
                   m["mei"], [layout.mei / "gallery.png", layout.mei / "contrast_sweep.png"], stage="mei")


def _gabor_section(params: Params, layout: Layout, m: dict[str, dict]) -> Section:
    """The MEIs against the optimal Gabors; with the presented Gabor patches when the gabor stage checked them
    (``gabor_patch_*`` in its metrics: recordings that show Gabor patches, e.g. Neuropixels)."""
    patches = "gabor_patch_n_units" in m["gabor"]
    return Section("MEI vs optimal Gabor (gabor)",
                   "Optimal Gabor per neuron from a grid + refinement under the same budget; the fitted Gabor says how "
                   "Gabor-like each MEI is. Paired Wilcoxon tests with Benjamini-Hochberg correction."
                   + (" Neuropixels: gabor_patch_* compare each unit's best presented Gabor patch (its receptive-field "
                      "map) with the optimal Gabor." if patches else ""),
                   m["gabor"], [layout.gabor / "gallery.png"] + ([layout.gabor / "receptive_fields.png"] if patches
                                                                  else []), stage="gabor")


def _validate_section(params: Params, layout: Layout, m: dict[str, dict]) -> Section:
    """The closed loop on the true neurons, with the targets it missed (or why it was skipped)."""
    validate_note = m["validate"].get("note", "") if m["validate"].get("skipped") else target_note(m)
    return Section("Closed loop on the true neurons (validate)",
                   "Synthetic sessions only: every MEI start, the optimal Gabors and the best natural images shown to "
                   "the ground-truth neurons, compared by true firing rate above baseline with each neuron's exact "
                   "true optimum under the same budget. Ratios are medians of log-ratios over the cells both stimuli "
                   "drive; cells a stimulus does not drive are counted apart; 'ties' = no difference shown by the "
                   "sign test (p >= 0.05). All figures: metrics/validate.json.",
                   validate_rows(m["validate"]), [layout.validate / "closed_loop.png"], note=validate_note)


# The section each stage of the table (meiscope.pipeline.STAGES) adds to the report; the table sets their order.
STAGE_SECTIONS: dict[str, Callable[[Params, Layout, dict[str, dict]], Section]] = {
    "rank": _rank_section, "tune": _tune_section, "train": _train_section, "mei": _mei_section,
    "gabor": _gabor_section, "validate": _validate_section}


def stage_sections(params: Params, layout: Layout, m: dict[str, dict]) -> list[Section]:
    """The section of every stage that has one, in the order of the stage table."""
    from meiscope.pipeline import STAGES

    return [STAGE_SECTIONS[s.name](params, layout, m) for s in STAGES if s.name in STAGE_SECTIONS]


def replicate_sections(params: Params, m: dict[str, dict]) -> list[Section]:
    """What was run beside the pipeline, where its summary exists: this recording's replicates, a comparison
    with each other recording whose replicates exist (``m["replicates_of"]``, in registry order), the ablation."""
    sections = []
    if m.get("replicates", {}).get("figures"):
        sections.append(replicate_section(m["replicates"], params))
        sections += [recordings_section(m["replicates"], other)
                     for other in m.get("replicates_of", {}).values() if other.get("figures")]
    if m.get("ablation", {}).get("arms"):
        sections.append(ablation_section(m["ablation"], params))
    return sections


def study_sections(params: Params, layout: Layout, m: dict[str, dict]) -> list[Section]:
    """Every section of the report: the stages' in pipeline order, then the replicates' and the ablation's;
    ``m`` maps each metrics file's stem to its contents."""
    return stage_sections(params, layout, m) + replicate_sections(params, m)


def headline_metrics(m: dict[str, dict]) -> dict[str, Any]:
    """The few numbers `dvc metrics show` lists (short names, so the table fits a terminal).

    recall: ranking vs truth; test_corr: model vs data; truth_corr: model vs true rates on fresh
    scenes; vs_natural, vs_gabor, vs_gabor_val: the models' MEI / best natural image and MEI /
    optimal Gabor (optimisation, held-out model); vs_optimum: true rate MEI / true optimum. The
    synthetic-only ones are absent for real data. Every figure: metrics/<stage>.json.
    """
    out = {}
    for name, metric in DVC_HEADLINE.items():
        value = m.get(metric.stage, {}).get(metric.key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = round(float(value), 3)
    return out
