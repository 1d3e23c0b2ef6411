"""What the report says about each stage: the sections of report/index.html, built from the metrics.

Kept apart from the stage glue (``stages/report.py``) so that changing what the report says re-runs only
the report stage. Rendering lives in :mod:`meiscope.report`. The stage sections come in the order of the
stage table (:data:`meiscope.pipeline.STAGES`); a section about data only some studies have (the presented
Gabor patches, the replicates of other recordings) shows where those data exist, never by the recording's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from meiscope.config import Params
from meiscope.recordings import RECORDINGS
from meiscope.recordings import label_of as recording_label
from meiscope.paths import Layout
from meiscope.report import Section
from meiscope.report_figures import png_bytes
from meiscope.report_numbers import display_summary, format_entry
from meiscope.science.catalogue import (DVC_HEADLINE, HEADLINE, KINDS, format_conclusion, format_metric,
                                        label_of, ordered_kinds)

# The closed-loop targets of the study (simple and complex cells) and the model accuracy they need.
TARGETS = {"gt_mei_corr": 0.8, "gt_mei_rate_ratio": 0.9, "gt_fresh_corr": 0.8}
# Kinds whose true optimum is not a Gabor (meiscope.synthetic.population.OUT_OF_FAMILY): their target is an MEI
# that beats the optimal Gabor in truth.
BEYOND_GABOR = ("centre_surround", "suppressed")


def target_note(m: dict[str, dict]) -> str:
    """Say which closed-loop targets were missed, and why, from the train and validate metrics."""
    missed = []
    for kind in ("simple", "complex"):
        for key in ("gt_mei_corr", "gt_mei_rate_ratio"):
            value = m["validate"].get(f"{key}_median_{kind}")
            if value is not None and value < TARGETS[key]:
                missed.append(f"{label_of('validate', f'{key}_median_{kind}')} is {value:.2f} (target {TARGETS[key]})")
    for kind in BEYOND_GABOR:
        key = f"gt_verdict_mei_vs_gabor_{kind}"
        if m["validate"].get(f"n_{kind}") and m["validate"].get(key) != 1:
            missed.append(f"{label_of('validate', key)} is {format_metric('validate', key, m['validate'].get(key))} "
                          "(target: MEI beats)")
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
        # a check that the instrument is sound, not a finding
        f"correctness check: {label('n_true_optimum_beaten')}": f("n_true_optimum_beaten"),
        label("n_neurons"): f"{f('n_neurons')} ({label('n_unresponsive_selected')}: {f('n_unresponsive_selected')})"}
    if v.get("n_truth_responsive") is not None:  # what the selected cells are out of
        rows[label("n_truth_responsive")] = f("n_truth_responsive")
    listed = v.get("kinds")
    for kind in ordered_kinds(listed) if isinstance(listed, list) else KINDS:
        if not v.get(f"n_{kind}"):
            continue
        k = f"_{kind}"
        of = f" (of {f(f'n_truth_{kind}')} truly responsive)" if v.get(f"n_truth_{kind}") is not None else ""
        rows[label(f"n_{kind}")] = f"{f(f'n_{kind}')}{of}"
        rows[label("gt_mei_corr_median" + k)] = f("gt_mei_corr_median" + k)
        rows[label("gt_mei_rate_ratio_median" + k)] = (
            f"{f('gt_mei_rate_ratio_median' + k)} ({label('gt_gabor_rate_ratio_median')}: "
            f"{f('gt_gabor_rate_ratio_median' + k)}; {label('gt_mei_drive_ratio_median')}: "
            f"{f('gt_mei_drive_ratio_median' + k)})")
        rows[label("gt_mei_over_best_image_native_rate_median" + k)] = (
            f"{f('gt_mei_over_best_image_native_rate_median' + k)} ({label('gt_mei_over_best_image_rate_median')}: "
            f"{f('gt_mei_over_best_image_rate_median' + k)})")
        rows[label("gt_ci_verdict_mei_vs_gabor" + k)] = (
            f"{f('gt_ci_verdict_mei_vs_gabor' + k)} ({label('model_val_ci_verdict_mei_vs_gabor')}: "
            f"{f('model_val_ci_verdict_mei_vs_gabor' + k)}; agree: {f('ci_verdicts_agree_mei_vs_gabor' + k)})")
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


def committed_source(root: Optional[Path], path: Path, rerun: str) -> str:
    """Where a committed summary comes from: ``from metrics/x.json, committed at <hash>, not rerun by `make run```."""
    from meiscope.provenance import code_commit, committed_at

    name = f"metrics/{Path(path).name}"
    in_git = root is not None and code_commit(root) is not None  # outside git nothing can be said
    commit = committed_at(root, path) if in_git else None
    when = f", committed at {commit}" if commit else (", not committed (written in this checkout)" if in_git else "")
    return f"From {name}{when}, written by `{rerun}`; not rerun by `make run`: not this run's results."


def _summary_path(root: Optional[Path], recording: str) -> Path:
    from meiscope.replicate import summary_file

    return summary_file(Path(root or "."), recording)


def replicate_section(summary: dict, params: Params, root: Optional[Path] = None) -> Any:
    """The replicate run: every headline figure with its interval, and which conclusions hold in all."""
    from meiscope.replicate import intervals_figure, protocol_note, protocol_of, stale_note

    shown = display_summary(summary)
    rows = {f.label: format_entry(f, shown["figures"][f.name]) for f in HEADLINE
            if shown["figures"].get(f.name, {}).get("mean") is not None}
    conclusions = [(f"{kind} cells: {label}", format_conclusion(c))
                   for kind, found in summary["conclusions"].items() for label, c in found.items()]
    name = summary.get("recording", "two_photon")  # older summaries: two-photon
    recording = recording_label(name)
    intro = (protocol_note(summary) + " "
             f"The synthetic {recording} study rerun on {summary['k']} new cortices (seeds {summary['seeds']}; new cells, "
             f"scenes, split, tuning, training and MEI starts each): mean [{summary['confidence']:.0%} t-interval] "
             "(geometric mean and log-scale interval for ratios; intervals kept inside the range a figure can take) "
             "over replicates. Only conclusions that hold in every replicate are conclusions; this run is one draw."
             + stale_note(summary, params, "meiscope replicate", name, root))
    return Section(f"Replicates ({recording}): what holds across new cortices", intro, rows,
                   inline_figures=[("replicate intervals", png_bytes(intervals_figure(shown)))], part="committed",
                   key_rows=conclusions,
                   table_title=f"Every figure: mean [interval] over {protocol_of(summary)} replicates",
                   source=committed_source(root, _summary_path(root, name), "meiscope replicate"),
                   anchor=f"replicates-{name}")


def ablation_section(summary: dict, params: Params, root: Optional[Path] = None) -> Section:
    """What each training stimulus of a recording buys (``meiscope ablation``): one row per training set."""
    from meiscope.ablation import ablation_figure, ablation_grid, summary_path
    from meiscope.replicate import stale_note

    recording = summary.get("recording", "container")  # summaries written before other recordings had one
    setting = summary.get("setting", "container.stimuli")
    shown = display_summary(summary)
    intro = (f"The {recording} study's replicates (seeds {summary['seeds']}), each retrained from extract on the "
             f"same data with only {setting} changed (tune, train, MEIs and the closed loop rerun per arm). "
             f"Mean [{summary['confidence']:.0%} t-interval] over replicates; the 0.8 line is the target."
             + stale_note(summary, params, f"meiscope ablation --set data.recording={recording}", recording,
                          root))
    return Section(f"What each stimulus buys ({recording} ablation)", intro, grid=ablation_grid(shown),
                   inline_figures=[("ablation", png_bytes(ablation_figure(shown)))], part="committed",
                   source=committed_source(root, summary_path(root or Path("."), recording), "meiscope ablation"),
                   anchor=f"ablation-{recording}")


def recordings_section(summary: dict, other: dict, root: Optional[Path] = None) -> Section:
    """Every headline figure of the two recordings' replicates side by side (the same cortices when the seeds
    match): one row per figure, one column per recording."""
    from meiscope.replicate import protocol_of

    pair = sorted([summary, other], key=lambda s: list(RECORDINGS).index(s.get("recording", "two_photon")))
    keys = [s.get("recording", "two_photon") for s in pair]
    names = [recording_label(k) for k in keys]
    grid = side_by_side(pair, names)
    same = pair[0]["seeds"] == pair[1]["seeds"]
    protocols = [protocol_of(s) for s in pair]  # which protocol each column's figures come from
    intro = (f"Replicates of the study recorded as {names[0]} ({protocols[0]} seeds {pair[0]['seeds']}) and as "
             f"{names[1]} ({protocols[1]} seeds {pair[1]['seeds']})"
             + (": the same synthetic cortices, so the same true cells, recorded two ways. "
                if same else ": different cortices, so not a paired comparison. ")
             + "Mean [t-interval] over replicates.")
    sources = " ".join(committed_source(root, _summary_path(root, k), "meiscope replicate") for k in keys)
    return Section(f"Two recordings of one study: {names[0]} against {names[1]}", intro, grid=grid,
                   grid_title=f"Every figure side by side ({len(grid) - 1} rows)",
                   part="committed", source=sources, anchor=f"recordings-{keys[0]}-{keys[1]}")


def side_by_side(summaries: list[dict], names: list[str]) -> list[list[str]]:
    """A grid of every headline figure any of ``summaries`` measured: one row per figure, one column each."""
    shown = [display_summary(s) for s in summaries]
    grid = [["figure: mean [interval]", *names]]
    for f in HEADLINE:
        if any(s["figures"].get(f.name, {}).get("mean") is not None for s in shown):
            grid.append([f.label, *(format_entry(f, s["figures"].get(f.name, {})) for s in shown)])
    return grid


def profiles_section(summary: dict, other: dict, root: Optional[Path] = None) -> Section:
    """The same seeds on two synthetic cortices (``meiscope replicate --profile``): every headline figure side
    by side, and the verdicts of each, so that what the default cortex costs the study can be read off."""
    from meiscope.replicate import protocol_of, summary_file

    names = [s.get("profile", "?") for s in (summary, other)]
    conclusions = [(f"{name}, {kind} cells: {label}", format_conclusion(c))
                   for name, s in zip(names, (summary, other)) for kind, found in s["conclusions"].items()
                   for label, c in found.items() if "tie band" in label]
    same = summary["seeds"] == other["seeds"]
    intro = (f"The study on the {names[0]} cortex ({protocol_of(summary)} seeds {summary['seeds']}) and on the "
             f"{names[1]} cortex ({protocol_of(other)} seeds {other['seeds']})"
             + (": the same seeds, so the two columns differ by the cortex alone. " if same else
                ": different seeds, so not a paired comparison. ") + "Mean [t-interval] over replicates.")
    recording = other.get("recording", "two_photon")
    source = committed_source(root, summary_file(Path(root or "."), recording, names[1]), "meiscope replicate --profile")
    return Section(f"Two cortices, one study: {names[0]} against {names[1]}", intro, grid=side_by_side(
        [summary, other], names), grid_title="Every figure side by side", key_rows=conclusions, part="committed",
        source=source, anchor=f"profiles-{names[0]}-{names[1]}")


def _key_rows(stage: str, m: dict) -> list[tuple[str, str]]:
    """The stage's few headline lines (the terminal's, :mod:`meiscope.summaries`); none for an unusual run."""
    from meiscope.summaries import STAGES as LINES

    try:
        return LINES[stage](m) if m and stage in LINES else []
    except (KeyError, TypeError):
        return []


def _ranked_by(metric: str) -> str:
    """The ranking metric in words (the catalogue's label of its median, without "median")."""
    return label_of("ranking", f"median_{metric}").removeprefix("median ")


def _rank_section(params: Params, layout: Layout, m: dict[str, dict]) -> Section:
    """The ranking's thresholds and what passed them."""
    return Section("Most expressive neurons (rank)",
                   f"Cells ranked by {_ranked_by(params.rank.metric)} (rank.metric: {params.rank.metric}); selected "
                   "cells pass every threshold in params.yaml (rank:).",
                   m["ranking"], [layout.ranking / "reliability.png"], stage="ranking",
                   folded_figures=[layout.ranking / "tuning.png"],
                   key_rows=_key_rows("rank", m["ranking"]), anchor="rank")


def _tune_section(params: Params, layout: Layout, m: dict[str, dict]) -> Section:
    """The architecture search."""
    return Section("Architecture search (tune)",
                   "Optuna study over the CNN architecture; trial 0 is the default configuration of params.yaml.",
                   dict(m["tune"]), stage="tune",
                   folded_figures=[layout.tune / "optimization_history.png", layout.tune / "param_importances.png"],
                   key_rows=_key_rows("tune", m["tune"]), anchor="tune")


def _train_section(params: Params, layout: Layout, m: dict[str, dict]) -> Section:
    """The response model's accuracy, per neuron against its noise ceiling, and where its receptive fields sit."""
    from meiscope.report_cells import accuracy_figure

    return Section("Response model (train)",
                   "CNN ensemble (shared core + per-neuron readout) vs the linear-nonlinear baseline on held-out test "
                   "images; accuracy is measured against each neuron's noise ceiling (oracle correlation); on "
                   "synthetic data the models are also scored against the true rates on 1,000 new scenes. The "
                   "receptive-field positions are the readouts' positions mapped onto the monitor.",
                   m["train"], stage="train",
                   folded_figures=[layout.train / "learning_curves.png", layout.train / "pred_vs_obs.png"],
                   inline_figures=accuracy_figure(params, layout), key_rows=_key_rows("train", m["train"]),
                   anchor="train")


def _mei_section(params: Params, layout: Layout, m: dict[str, dict]) -> Section:
    """Every MEI, grouped by cell kind (beside its true optimum where there is a truth), and the contrast sweep."""
    from meiscope.report_cells import gallery_figures

    gallery = gallery_figures(params, layout)
    return Section("Most Exciting Inputs (mei)",
                   "One batched gradient ascent for all neurons under a fixed L2 budget in the model's pixel space; "
                   "'held-out' scores come from an ensemble member kept out of the optimisation. Every MEI is shown.",
                   m["mei"], ([] if gallery else [layout.mei / "gallery.png"]), stage="mei",
                   folded_figures=[layout.mei / "contrast_sweep.png"], inline_figures=gallery,
                   key_rows=_key_rows("mei", m["mei"]), anchor="mei")


def _gabor_section(params: Params, layout: Layout, m: dict[str, dict]) -> Section:
    """The MEIs against the optimal Gabors; with the presented Gabor patches when the gabor stage checked them
    (``gabor_patch_*`` in its metrics: recordings that show Gabor patches, e.g. Neuropixels)."""
    patches = "gabor_patch_n_units" in m["gabor"]
    allen = _allen_grid(params, layout) if patches else ([], "")
    return Section("MEI vs optimal Gabor (gabor)",
                   "Optimal Gabor per neuron from a grid + refinement under the same budget; the fitted Gabor says how "
                   "Gabor-like each MEI is. Paired Wilcoxon tests with Benjamini-Hochberg correction."
                   + (" Neuropixels: each unit's best presented Gabor patch (its receptive-field map) is compared "
                      "with the optimal Gabor." if patches else "") + allen[1],
                   m["gabor"], [layout.gabor / "gallery.png"] + ([layout.gabor / "receptive_fields.png"] if patches
                                                                  else []), stage="gabor",
                   key_rows=_key_rows("gabor", m["gabor"]), anchor="gabor", grid=allen[0],
                   grid_title="meiscope's figures beside Allen's, selected units (RF centre in Allen's gaze-centred "
                              "degrees)" if allen[0] else "")


def _allen_grid(params: Params, layout: Layout) -> tuple[list[list[str]], str]:
    """Allen's per-unit figures beside meiscope's for the selected units (a grid) and where Allen's come from;
    ``([], "")`` when the ranking holds none of Allen's analysis metrics."""
    from meiscope.recordings.neuropixels.unit_metrics import allen_origin, comparison_grid

    grid = comparison_grid(layout.ranking / "ranking.csv", layout.gabor / "unit_receptive_fields.csv")
    return (grid, " " + allen_origin(params.data.source)) if grid else ([], "")


def _validate_section(params: Params, layout: Layout, m: dict[str, dict]) -> Section:
    """The closed loop on the true neurons, with the targets it missed (or why it was skipped)."""
    validate_note = m["validate"].get("note", "") if m["validate"].get("skipped") else target_note(m)
    rows = validate_rows(m["validate"])
    return Section("Closed loop on the true neurons (validate)",
                   "Synthetic sessions only: every MEI start, the optimal Gabors and the best natural images shown to "
                   "the ground-truth neurons, compared by true firing rate above baseline with each neuron's exact "
                   "true optimum under the same budget. Ratios are medians of log-ratios over the cells both stimuli "
                   "drive; cells a stimulus does not drive are counted apart; 'ties' = no difference shown by the "
                   "sign test (p >= 0.05). Figures are over the selected cells (which have MEIs) unless labelled "
                   "'all truly responsive cells'; drive ratios (before the rate's saturation) stand beside rate "
                   "ratios. All figures, with intervals over cells: metrics/validate.json.",
                   figures=[layout.validate / "closed_loop.png"], note=validate_note,
                   key_rows=[(k, str(v)) for k, v in rows.items()], anchor="validate")


# The section each stage of the table (meiscope.pipeline.STAGES) adds to the report; the table sets their order.
STAGE_SECTIONS: dict[str, Callable[[Params, Layout, dict[str, dict]], Section]] = {
    "rank": _rank_section, "tune": _tune_section, "train": _train_section, "mei": _mei_section,
    "gabor": _gabor_section, "validate": _validate_section}


def stage_sections(params: Params, layout: Layout, m: dict[str, dict]) -> list[Section]:
    """The section of every stage that has one, in the order of the stage table."""
    from meiscope.pipeline import STAGES

    return [STAGE_SECTIONS[s.name](params, layout, m) for s in STAGES if s.name in STAGE_SECTIONS]


def replicate_sections(params: Params, m: dict[str, dict], root: Optional[Path] = None) -> list[Section]:
    """What was run beside the pipeline, where its summary exists: this recording's replicates, the same seeds on
    each other synthetic cortex (``m["replicates_on"]``), a comparison with each other recording whose replicates
    exist (``m["replicates_of"]``, in registry order), each recording's stimulus ablation (``m["ablations"]``)."""
    sections = []
    if m.get("replicates", {}).get("figures"):
        sections.append(replicate_section(m["replicates"], params, root))
        sections += [profiles_section(m["replicates"], other, root)
                     for other in m.get("replicates_on", {}).values() if other.get("figures")]
        sections += [recordings_section(m["replicates"], other, root)
                     for other in m.get("replicates_of", {}).values() if other.get("figures")]
    sections += [ablation_section(summary, params, root)
                 for summary in m.get("ablations", {}).values() if summary.get("arms")]
    return sections


def study_sections(params: Params, layout: Layout, m: dict[str, dict]) -> list[Section]:
    """Every section of the report: the stages' in pipeline order, then the committed replicates' and the
    ablation's; ``m`` maps each metrics file's stem to its contents."""
    return stage_sections(params, layout, m) + replicate_sections(params, m, layout.root)


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
