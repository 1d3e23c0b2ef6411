"""The top of the report: what was run, on what data, the three or four findings and what they mean.

Every number is the metric catalogue's (label, formatted value, unit); where this recording's committed
replicate summary has the same figure, its mean and interval over replicate cortices follow, recomputed
for display (:mod:`meiscope.report_numbers`) and said to be from that committed file.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any, Optional

from meiscope.config import Params
from meiscope.paths import Layout
from meiscope.recordings import label_of as recording_label
from meiscope.recordings import recording_of
from meiscope.replicate import protocol_note, protocol_of
from meiscope.report_numbers import cell_interval_text, coverage_text, interval_text, unit_text
from meiscope.science.catalogue import (CORRECTNESS, KINDS, format_metric, label_of, lookup, ordered_kinds,
                                        verdict_word)


@dataclass
class Finding:
    """One finding: its numbers (HTML), what it means (plain text) and the section holding its figure."""

    title: str
    numbers: str
    meaning: str
    anchor: str


class _Figures:
    """``stage.key`` as ``label <b>value</b> unit`` (+ the replicates' interval where the summary has it)."""

    def __init__(self, m: dict[str, dict], replicates: dict[str, Any]):
        self.m, self.replicates = m, replicates
        self.used_replicates = False  # whether any figure quoted the replicates (then a note says what they are)

    def value(self, stage: str, key: str) -> Any:
        return self.m.get(stage, {}).get(key)

    def has(self, stage: str, key: str) -> bool:
        return isinstance(self.value(stage, key), (int, float)) and not isinstance(self.value(stage, key), bool)

    def __call__(self, stage: str, key: str) -> str:
        unit = unit_text(lookup(stage, key))
        value = format_metric(stage, key, self.value(stage, key))
        shown_unit = f' <span class="unit">{html.escape(unit)}</span>' if unit and unit != "% of cells" else ""
        text = f"{html.escape(label_of(stage, key))} <b>{html.escape(value)}</b>{shown_unit}"
        # a closed-loop figure says which cells it covers and its interval over them
        stage_metrics = self.m.get(stage, {})
        confidence = float(stage_metrics.get("ci_confidence", 0.95))
        said = [t for t in (coverage_text(lookup(stage, key), stage_metrics),
                            cell_interval_text(lookup(stage, key), stage_metrics, confidence)) if t]
        if said:
            text += f' <span class="small">({html.escape("; ".join(said))})</span>'
        entry = self.replicates.get("figures", {}).get(f"{stage}.{key}")
        if entry and entry.get("mean") is not None:
            self.used_replicates = True
            confidence = float(self.replicates.get("confidence", 0.95))
            text += (f' <span class="small">({html.escape(protocol_of(self.replicates))} replicates '
                     f'{html.escape(interval_text(f"{stage}.{key}", entry, confidence))})</span>')
        return text

    def replicates_note(self) -> str:
        """What the ``(replicates ...)`` figures are, once, when any was shown."""
        if not self.used_replicates:
            return ""
        r = self.replicates
        return (f'<p class="small">({html.escape(protocol_of(r))} replicates m [a, b]): mean and '
                f'{float(r.get("confidence", 0.95)):.0%} t-interval '
                f"over {r.get('k', '?')} replicate cortices (seeds {html.escape(str(r.get('seeds', '?')))}), from the "
                f'committed replicate summary, not rerun by `make run` (<a href="#replicates-'
                f'{html.escape(str(r.get("recording", "two_photon")))}">section</a>). '
                f"{html.escape(protocol_note(r))}</p>")


def _model_finding(f: _Figures) -> Optional[Finding]:
    if not f.has("train", "test_corr_to_avg_mean"):
        return None
    numbers = f"{f('train', 'test_corr_to_avg_mean')}; {f('train', 'ln_test_corr_to_avg_mean')}"
    better = (f.value("train", "test_corr_to_avg_mean") or 0) > (f.value("train", "ln_test_corr_to_avg_mean") or 0)
    meaning = ("The CNN predicts held-out responses " + ("better than" if better else "no better than")
               + " the linear-nonlinear baseline")
    if f.has("train", "gt_fresh_corr_mean"):
        numbers += f"; {f('train', 'gt_fresh_corr_mean')}"
        good = f.value("train", "gt_fresh_corr_mean") >= 0.8
        meaning += (", and it tracks the true rates on scenes it never saw " +
                    ("closely: its MEIs can be trusted as far as the truth is known." if good else
                     "only roughly: its MEIs are approximations of the cells' optima."))
    else:
        meaning += "; real data have no truth, so how far its MEIs can be trusted rests on this accuracy."
    return Finding("The response model", numbers, meaning, "train")


def _mei_finding(f: _Figures) -> Optional[Finding]:
    if not f.has("mei", "mei_over_best_image_median"):
        return None
    opt, val = f.value("mei", "mei_over_best_image_median"), f.value("mei", "mei_val_over_best_image_median")
    numbers = f"{f('mei', 'mei_over_best_image_median')}; {f('mei', 'mei_val_over_best_image_median')}"
    native = f.value("mei", "mei_over_best_image_raw_median")
    if f.has("mei", "mei_over_best_image_raw_median"):
        numbers += f"; {f('mei', 'mei_over_best_image_raw_median')}"
    meaning = (f"With the best natural scene scaled down to the MEI's contrast budget, the models expect the MEI to "
               f"drive a neuron {opt:.1f} times as strongly" +
               (f"; against that scene at the contrast the cell saw, {native:.1f} times" if native is not None else "")
               + ("; a model held out of the optimisation agrees, so this is not an artefact of the optimised "
                  "models." if val is not None and val > 1 else "; the held-out model does not confirm it."))
    return Finding("MEIs against natural scenes", numbers, meaning, "mei")


def _gabor_finding(f: _Figures) -> Optional[Finding]:
    if not f.has("gabor", "mei_over_gabor_median"):
        return None
    ratio = f.value("gabor", "mei_over_gabor_median")
    numbers = (f"{f('gabor', 'mei_over_gabor_median')}; {f('gabor', 'mei_val_over_gabor_median')}; "
               f"{f('gabor', 'mei_gabor_similarity_median')}")
    close = ratio < 1.1
    meaning = ("The MEIs barely beat the best Gabor patch and look like it: in the model these cells are close to "
               "Gabor-tuned." if close else "The MEIs beat the best Gabor patch clearly: the model's cells want more "
               "than a Gabor.")
    return Finding("MEIs against optimal Gabors (model)", numbers, meaning, "gabor")


def _validate_kinds(f: _Figures) -> list[str]:
    """The responsive kinds of the closed loop: its ``kinds`` list, else the kinds with a ``n_<kind>`` count."""
    v = f.m.get("validate", {})
    listed = v.get("kinds")
    kinds = ordered_kinds(listed) if isinstance(listed, list) else [k for k in KINDS if v.get(f"n_{k}")]
    return [k for k in kinds if v.get(f"n_{k}")]


def _truth_finding(f: _Figures) -> Optional[Finding]:
    if not f.has("validate", "gt_mei_rate_ratio_median"):
        return None
    numbers = f"{f('validate', 'gt_mei_rate_ratio_median')}"
    if f.has("validate", "gt_mei_drive_ratio_median"):  # before the saturation, which compresses rate ratios
        numbers += f"; {f('validate', 'gt_mei_drive_ratio_median')}"
    numbers += f"; {f('validate', 'gt_mei_corr_median')}"
    # the truth's best scene needs no MEI: over all truly responsive cells beside the selected ones, so the
    # reader sees what the selection changes
    for key in ("gt_mei_over_best_image_rate_median", "gt_mei_over_best_image_native_rate_median",
                "gt_all_best_scene_native_rate_ratio_median", "gt_sel_best_scene_native_rate_ratio_median"):
        if f.has("validate", key):
            numbers += f"; {f('validate', key)}"
    kinds = _validate_kinds(f)
    verdicts = {k: verdict_word(f.value("validate", f"gt_verdict_mei_vs_gabor_{k}")) for k in kinds}
    said = "; ".join(f"{k} cells: MEI {w}" for k, w in verdicts.items() if w)
    numbers += f"; MEI vs optimal Gabor in truth: {html.escape(said)}" if said else ""
    ratio = f.value("validate", "gt_mei_rate_ratio_median")
    agrees = ("agrees." if all(w == "beats" for w in verdicts.values()) else
              "does not always agree: the model's edge over Gabors is partly its own error.")
    drive = f.value("validate", "gt_mei_drive_ratio_median")
    meaning = (f"Shown to the true neurons, the MEIs reach {ratio:.0%} of the rate of each cell's exact optimum"
               + (f" ({drive:.0%} of its drive: the rate's saturation compresses the ratio)" if drive is not None
                  else "")
               + (f", and where the model said the MEI beats the Gabor, the truth {agrees}" if verdicts else "."))
    return Finding("Closed loop on the true neurons", numbers, meaning, "validate")


def _verdict_finding(f: _Figures) -> Optional[Finding]:
    """Per kind: the MEI against the optimal Gabor in truth and on the held-out model, read from their intervals
    over cells and the tie band, and whether the two agree."""
    kinds = [k for k in _validate_kinds(f) if f.value("validate", f"gt_ci_verdict_mei_vs_gabor_{k}") is not None]
    if not kinds:
        return None
    parts, disagree, undecided = [], [], []
    for k in kinds:
        truth = verdict_word(f.value("validate", f"gt_ci_verdict_mei_vs_gabor_{k}"))
        model = verdict_word(f.value("validate", f"model_val_ci_verdict_mei_vs_gabor_{k}"))
        parts.append(f"{k} cells: MEI {truth} in truth, {model or 'n/a'} on the held-out model")
        agree = f.value("validate", f"ci_verdicts_agree_mei_vs_gabor_{k}")
        # no held-out verdict (too few cells both stimuli drive) is neither agreement nor disagreement
        (undecided if agree is None else disagree if agree != 1 else []).append(k)
    tolerance = f.value("validate", "tie_tolerance")
    band = (f" (from the {f.value('validate', 'ci_confidence') or 0.95:.0%} interval over cells of the median rate "
            f"ratio MEI / optimal Gabor: a tie when it meets the band [1/{1 + tolerance:g}, {1 + tolerance:g}], "
            "a convention)" if tolerance is not None else "")
    numbers = html.escape("; ".join(parts) + band)
    meaning = ("The held-out model's verdict matches the truth's for every kind of cell" if not disagree else
               f"The held-out model's verdict differs from the truth's for {', '.join(disagree)} cells: on those "
               "the pipeline's model-side conclusion about Gabors is not the cells' own")
    meaning += (f" (no held-out verdict for {', '.join(undecided)} cells)." if undecided else ".")
    return Finding("MEI against the optimal Gabor, in truth and on the held-out model", numbers, meaning, "validate")


def correctness_checks(m: dict[str, dict]) -> list[tuple[str, str]]:
    """The checks that the instrument is sound (:data:`~meiscope.science.catalogue.CORRECTNESS`): not findings.
    Each as ``(label, "0: passed")`` or ``"3: FAILED"``; none without the stage's metrics."""
    rows = []
    for metric in CORRECTNESS:
        value = m.get(metric.stage, {}).get(metric.key)
        if isinstance(value, int) and not isinstance(value, bool):
            rows.append((metric.label, f"{value}: {'passed' if value == 0 else 'FAILED'}"))
    return rows


def findings(m: dict[str, dict], replicates: dict[str, Any]) -> tuple[list[Finding], str]:
    """The findings this run's metrics support, in the order the study makes them, and the note saying
    what their replicate intervals are (empty without any)."""
    f = _Figures(m, replicates)
    found = (_model_finding(f), _mei_finding(f), _gabor_finding(f), _truth_finding(f), _verdict_finding(f))
    return [x for x in found if x is not None], f.replicates_note()


def _session(layout: Layout, m: dict[str, dict]) -> str:
    """``Session <id>`` from extract's study file (or the sessions that trained the core), else ``One session``."""
    try:
        return f"Session {int(json.loads(layout.study_file.read_text())['experiment_id'])}"
    except (OSError, ValueError, KeyError, TypeError):
        sessions = m.get("train", {}).get("shared_core_sessions") or []
        return f"Session {sessions[0]}" if sessions else "One session"


def what_was_run(params: Params, layout: Layout, m: dict[str, dict]) -> str:
    """One paragraph (plain text): data, sessions, cells and stimuli."""
    data = ("the synthetic cortex (simulated cells with a known optimum)" if params.data.source == "synthetic"
            else "the Allen Brain Observatory (real recordings)")
    r, t = m.get("ranking", {}), m.get("train", {})
    sessions = t.get("shared_core_sessions") or []
    shared = f", its core shared with {len(sessions) - 1} more" if len(sessions) > 1 else ""
    stimuli = ", ".join(s.replace("_", " ") for s in recording_of(params).training_stimuli(params))
    ranked_by = label_of("ranking", f"median_{r.get('metric', '')}").removeprefix("median ")
    return (f"Data: {data}, recorded as {recording_label(params.data.recording)}. {_session(layout, m)}{shared}. "
            f"Cells: {r.get('n_cells', '?')} recorded, {r.get('n_selected', '?')} selected by "
            f"{ranked_by} and modelled. Stimuli for training: {stimuli}; natural scenes split "
            f"{t.get('n_train_images', '?')} / {t.get('n_val_images', '?')} / {t.get('n_test_images', '?')} "
            "(train / validation / test). Then, per neuron: its most exciting input (MEI), its optimal Gabor and "
            "its best natural scene under one contrast budget" +
            (", all shown to the true neurons." if m.get("validate") and not m["validate"].get("skipped") else "."))


def render_summary(params: Params, layout: Layout, m: dict[str, dict], replicates: dict[str, Any]) -> str:
    """The summary block (HTML)."""
    found, note = findings(m, replicates)
    items = "".join(f'<li><b>{html.escape(x.title)}.</b> {x.numbers}. {html.escape(x.meaning)} '
                    f'<a href="#{x.anchor}">Figures</a></li>' for x in found)
    found_html = f"<h3>Findings</h3><ol>{items}</ol>{note}" if items else "<p>No stage has written results yet.</p>"
    checks = correctness_checks(m)
    if checks:  # checks of the instrument, kept apart from what the study finds
        found_html += ("<h3>Correctness checks</h3><ul>" + "".join(
            f"<li>{html.escape(label)}: <b>{html.escape(result)}</b></li>" for label, result in checks) + "</ul>")
    return (f'<section id="summary" class="summary"><h2>Summary</h2><p>{html.escape(what_was_run(params, layout, m))}'
            f"</p>{found_html}</section>")
