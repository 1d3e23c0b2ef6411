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
from meiscope.report_numbers import interval_text, unit_text
from meiscope.science.catalogue import KINDS, format_metric, label_of, lookup, verdict_word


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
        entry = self.replicates.get("figures", {}).get(f"{stage}.{key}")
        if entry and entry.get("mean") is not None:
            self.used_replicates = True
            confidence = float(self.replicates.get("confidence", 0.95))
            text += (f' <span class="small">(replicates '
                     f'{html.escape(interval_text(f"{stage}.{key}", entry, confidence))})</span>')
        return text

    def replicates_note(self) -> str:
        """What the ``(replicates ...)`` figures are, once, when any was shown."""
        if not self.used_replicates:
            return ""
        r = self.replicates
        return (f'<p class="small">(replicates m [a, b]): mean and {float(r.get("confidence", 0.95)):.0%} t-interval '
                f"over {r.get('k', '?')} replicate cortices (seeds {html.escape(str(r.get('seeds', '?')))}), from the "
                f'committed replicate summary, not rerun by `make run` (<a href="#replicates-'
                f'{html.escape(str(r.get("recording", "two_photon")))}">section</a>).</p>')


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
    meaning = (f"At the same contrast the models expect the MEI to drive a neuron {opt:.1f} times as strongly as its "
               "best natural scene" + ("; a model held out of the optimisation agrees, so this is not an artefact of "
                                       "the optimised models." if val is not None and val > 1 else
                                       "; the held-out model does not confirm it."))
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


def _truth_finding(f: _Figures) -> Optional[Finding]:
    if not f.has("validate", "gt_mei_rate_ratio_median"):
        return None
    numbers = f"{f('validate', 'gt_mei_rate_ratio_median')}; {f('validate', 'gt_mei_corr_median')}"
    verdicts = {k: verdict_word(f.value("validate", f"gt_verdict_mei_vs_gabor_{k}")) for k in KINDS
                if f.value("validate", f"n_{k}")}
    said = "; ".join(f"{k} cells: MEI {w}" for k, w in verdicts.items() if w)
    numbers += f"; MEI vs optimal Gabor in truth: {html.escape(said)}" if said else ""
    ratio = f.value("validate", "gt_mei_rate_ratio_median")
    agrees = ("agrees." if all(w == "beats" for w in verdicts.values()) else
              "does not always agree: the model's edge over Gabors is partly its own error.")
    meaning = (f"Shown to the true neurons, the MEIs reach {ratio:.0%} of the rate of each cell's exact optimum"
               + (f", and where the model said the MEI beats the Gabor, the truth {agrees}" if verdicts else "."))
    return Finding("Closed loop on the true neurons", numbers, meaning, "validate")


def findings(m: dict[str, dict], replicates: dict[str, Any]) -> tuple[list[Finding], str]:
    """The findings this run's metrics support, in the order the study makes them, and the note saying
    what their replicate intervals are (empty without any)."""
    f = _Figures(m, replicates)
    found = (_model_finding(f), _mei_finding(f), _gabor_finding(f), _truth_finding(f))
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
    return (f'<section id="summary" class="summary"><h2>Summary</h2><p>{html.escape(what_was_run(params, layout, m))}'
            f"</p>{found_html}</section>")
