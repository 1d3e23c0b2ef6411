"""Stage ``report``: ``report/index.html`` from the metrics and figures of every stage, and the headline metrics.

What the page says is in :mod:`meiscope.report_sections` and how it is laid out in
:mod:`meiscope.report`; this module only gathers the inputs and writes the outputs.
"""

from __future__ import annotations

from pathlib import Path

from meiscope.atomic import write_json
from meiscope.config import Params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout
from meiscope.recordings import label_of


def run(params: Params, root: Path, device: str | None = None) -> Path:
    """Write report/index.html from the metrics and figures of every stage (sections: report_sections.py,
    summary: report_summary.py, provenance: provenance.py)."""
    from meiscope import provenance
    from meiscope.report import write_report
    from meiscope.report_sections import headline_metrics, study_sections
    from meiscope.report_summary import render_summary
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    metrics = _load_all_metrics(params, layout, root)
    if not any(metrics[stem] for stem in stage_metric_stems()) and not metrics["replicates"].get("figures"):
        raise MeiscopeError(f"report: no results in {layout.metrics} yet: run the study first "
                            "(`make run`, or `dvc repro` after `meiscope data`)")
    subtitle = (f"data source: {params.data.source} ({label_of(params.data.recording)}); "
                f"{metrics['ranking'].get('n_selected', '?')} of "
                f"{metrics['ranking'].get('n_cells', '?')} cells selected and modelled")
    path = write_report(layout.report / "index.html", "meiscope study report", subtitle,
                        study_sections(params, layout, metrics),
                        render_summary(params, layout, metrics, metrics["replicates"]),
                        provenance.collect(params, root, device).rows())
    write_json(layout.metrics_file("headline"), headline_metrics(metrics))
    with start_run(params, "report", root) as mlf:
        if mlf is not None:
            mlf.log_artifact(str(path))
    return path


def stage_metric_stems() -> tuple[str, ...]:
    """The metrics files the report reads, in stage order: every stage's of the table but its own."""
    from meiscope.pipeline import STAGES

    return tuple(stem for s in STAGES if s.name != "report" for stem in s.metric_names)


def _load_all_metrics(params: Params, layout: Layout, root: Path) -> dict[str, dict]:
    """Every stage's metrics (empty where a stage has not run), the replicates' and the ablation's."""
    from meiscope.ablation import ablation_recordings, summary_path as ablation_summary
    from meiscope.config import SYNTHETIC_PROFILES
    from meiscope.recordings import RECORDINGS
    from meiscope.replicate import summary_file
    from meiscope.report import load_metrics

    metrics = {stem: load_metrics(layout.metrics_file(stem)) for stem in stage_metric_stems()}
    # the replicates of this recording's study, and those of every other recording (the report compares
    # the studies whose replicates exist; the same cortices when their seeds match)
    metrics["replicates"] = load_metrics(summary_file(root, params.data.recording))
    metrics["replicates_of"] = {name: load_metrics(summary_file(root, name))
                                for name in RECORDINGS if name != params.data.recording}
    # the same seeds on the other synthetic cortices (`meiscope replicate --profile`)
    metrics["replicates_on"] = {name: load_metrics(summary_file(root, params.data.recording, name))
                                for name in SYNTHETIC_PROFILES if name != params.synthetic.profile}
    # each recording's stimulus ablation (`meiscope ablation`), when run
    metrics["ablations"] = {name: load_metrics(ablation_summary(root, name)) for name in ablation_recordings()}
    return metrics
