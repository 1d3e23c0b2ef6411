"""Stage ``report``: ``report/index.html`` from the metrics and figures of every stage, and the headline metrics.

What the page says is in :mod:`meiscope.report_sections` and how it is laid out in
:mod:`meiscope.report`; this module only gathers the inputs and writes the outputs.
"""

from __future__ import annotations

from pathlib import Path

from meiscope.atomic import write_json
from meiscope.config import RECORDINGS, Params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout

STAGES = ("ranking", "tune", "train", "mei", "gabor", "validate")  # whose metrics files the report reads


def run(params: Params, root: Path) -> Path:
    """Write report/index.html from the metrics and figures of every stage (sections: report_sections.py)."""
    from meiscope.report import write_report
    from meiscope.report_sections import headline_metrics, study_sections
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    metrics = _load_all_metrics(params, layout, root)
    if not any(metrics[stage] for stage in STAGES) and not metrics["replicates"].get("figures"):
        raise MeiscopeError(f"report: no results in {layout.metrics} yet: run the study first "
                            "(`make run`, or `dvc repro` after `meiscope data`)")
    subtitle = (f"data source: {params.data.source} ({RECORDINGS[params.data.recording]}); "
                f"{metrics['ranking'].get('n_selected', '?')} of "
                f"{metrics['ranking'].get('n_cells', '?')} cells selected and modelled")
    path = write_report(layout.report / "index.html", "meiscope study report", subtitle,
                        study_sections(params, layout, metrics))
    write_json(layout.metrics_file("headline"), headline_metrics(metrics))
    with start_run(params, "report", root) as mlf:
        if mlf is not None:
            mlf.log_artifact(str(path))
    return path


def _load_all_metrics(params: Params, layout: Layout, root: Path) -> dict[str, dict]:
    """Every stage's metrics (empty where a stage has not run), the replicates' and the ablation's."""
    from meiscope.ablation import summary_path as ablation_path
    from meiscope.replicate import summary_file
    from meiscope.report import load_metrics

    metrics = {stage: load_metrics(layout.metrics_file(stage)) for stage in STAGES}
    # the replicates of this recording's study, and of another recording's (same cortices) to compare:
    # the whole container with the scenes alone, each single-stimulus recording with the other
    metrics["replicates"] = load_metrics(summary_file(root, params.data.recording))
    other = {"container": "two_photon", "neuropixels": "two_photon"}.get(params.data.recording, "neuropixels")
    metrics["replicates_other"] = load_metrics(summary_file(root, other))
    metrics["ablation"] = load_metrics(ablation_path(root))  # the container's ablation, when it was run
    return metrics
