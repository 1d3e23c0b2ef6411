"""The pipeline, declared once: every stage with its function, params, inputs, outputs and metrics.

This table is plain data that the rest of meiscope reads: ``dvc.yaml`` is generated from it
(``meiscope dvcfile``, with each stage's code dependencies computed from its imports), the CLI makes
one command per stage from it, replicates run their stages in its order, and ``MLproject`` is
tested against it. Stages run in the order listed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

from meiscope.config import Params
from meiscope.recordings import RECORDINGS
from meiscope.stages import data, extract, gabor, mei, rank, report, sessions, train, tune, validate

# the params sections the recordings own (recordings/<kind>/settings.py): raw data and extraction read them
RECORDING_SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(name for kind in RECORDINGS.values()
                                                          for name in kind.sections))

# the report says whether each committed summary was measured under params.yaml's settings and names
# the study's: every section but where MLflow logs and the local team stack
REPORT_SECTIONS: tuple[str, ...] = tuple(f.name for f in fields(Params) if f.name not in ("tracking", "services"))


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    ``params``: the params.yaml sections (or ``section.key``) it reads, as DVC tracks them.
    ``inputs`` / ``outputs``: data paths relative to the project root (not code: code dependencies
    are computed from what ``module`` imports). ``metrics``: JSON files kept in git (DVC
    ``cache: false``). ``per_session``: one DVC stage per id of ``sessions.shared``, run as
    ``meiscope <command> --session ID`` (``${item}`` in paths). ``in_dvc``: False for the raw
    data, which ``data.dvc`` versions (``meiscope data`` runs before ``dvc repro``).
    """

    name: str
    module: Any
    help: str
    params: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    uses_device: bool = False
    per_session: bool = False
    command: str = ""
    in_dvc: bool = True

    @property
    def run(self) -> Callable[..., Any]:
        """The stage's function: ``run(params, root, ...)``."""
        return self.module.run

    @property
    def cli_command(self) -> str:
        """The ``meiscope`` command that runs it."""
        return self.command or self.name

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The stems of its metrics files (``metrics/train.json`` -> ``train``)."""
        return tuple(path.rsplit("/", 1)[-1].removesuffix(".json") for path in self.metrics)


STAGES: tuple[Stage, ...] = (
    Stage("data", data, "raw sessions in allensdk's cache layout: synthesized, or downloaded (data.source)",
          params=("data", "synthetic", "sessions", *RECORDING_SECTIONS),
          outputs=("data",), in_dvc=False),
    Stage("extract", extract, "per-trial responses and model-space images of the studied session",
          params=("data", "extract", *RECORDING_SECTIONS),
          inputs=("data",), outputs=("results/responses",)),
    Stage("rank", rank, "reliability of every cell; the most expressive neurons",
          params=("rank",), inputs=("results/responses",), outputs=("results/ranking",),
          metrics=("metrics/ranking.json",)),
    Stage("sessions", sessions, "the sessions whose cells share the model's core (sessions.shared)",
          params=("data", "extract.experiment_id", "sessions"), inputs=("data",),
          outputs=("results/sessions/index.json",)),
    Stage("extract-session", extract, "extract one session of sessions.shared (--session ID)",
          params=("data", "extract", *RECORDING_SECTIONS), inputs=("data",),
          outputs=("results/sessions/${item}/responses",), per_session=True, command="extract"),
    Stage("rank-session", rank, "rank one session of sessions.shared on its own (--session ID)",
          params=("rank",), inputs=("results/sessions/${item}/responses",),
          outputs=("results/sessions/${item}/ranking",), per_session=True, command="rank"),
    Stage("tune", tune, "Optuna search over the CNN architecture",
          params=("tune", "model", "train.lr", "train.batch_size", "recording_overrides"),
          inputs=("results/responses", "results/ranking"), outputs=("results/tune",),
          metrics=("metrics/tune.json",), uses_device=True),
    Stage("train", train, "CNN ensemble (+ LN baseline); test accuracy against the noise ceiling",
          params=("model", "train", "sessions", "recording_overrides"),
          inputs=("results/responses", "results/ranking", "results/sessions", "results/tune/best_model.yaml"),
          outputs=("models/ensemble", "results/train"), metrics=("metrics/train.json",), uses_device=True),
    Stage("mei", mei, "Most Exciting Inputs by gradient ascent on the ensemble",
          params=("mei",), inputs=("models/ensemble", "results/responses", "results/ranking"),
          outputs=("results/mei",), metrics=("metrics/mei.json",), uses_device=True),
    Stage("gabor", gabor, "optimal Gabors under the MEI's budget; MEI vs Gabor",
          params=("gabor",), inputs=("models/ensemble", "results/mei", "results/responses"),
          outputs=("results/gabor",), metrics=("metrics/gabor.json",), uses_device=True),
    Stage("validate", validate, "synthetic data: MEIs, Gabors and natural images shown to the true neurons",
          params=("mei", "validate"), inputs=("data", "results/mei", "results/gabor"),
          outputs=("results/validate",), metrics=("metrics/validate.json",), uses_device=True),
    Stage("report", report, "one self-contained HTML page with every result", params=REPORT_SECTIONS,
          inputs=("metrics/ranking.json", "metrics/tune.json", "metrics/train.json", "metrics/mei.json",
                  "metrics/gabor.json", "metrics/validate.json", "results/ranking", "results/train", "results/tune",
                  "results/mei", "results/gabor", "results/validate", "metrics/replicates.json",
                  "metrics/replicates-neuropixels.json", "metrics/replicates-container.json",
                  "metrics/ablation-container.json", "metrics/ablation-neuropixels.json"),
          outputs=("report/index.html",), metrics=("metrics/headline.json",)),
)

# Figures `dvc plots show` draws: the PNGs the stages write, which DVC embeds as <img> in its HTML page (a
# Vega plot would load Vega from a CDN and render blank offline). One figure per subject: the learning curves
# overlay every ensemble member. The CSVs behind them stay in the outputs (results/train/history/, ...).
PLOTS: tuple[str, ...] = (
    "results/ranking/reliability.png", "results/ranking/tuning.png", "results/tune/optimization_history.png",
    "results/train/learning_curves.png", "results/train/pred_vs_obs.png", "results/mei/gallery.png",
    "results/gabor/gallery.png", "results/validate/closed_loop.png",
)


def stage(name: str) -> Stage:
    """The stage called ``name`` (a clear error for an unknown one)."""
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def commands() -> tuple[Stage, ...]:
    """One stage per ``meiscope`` command (the per-session stages run as ``--session`` of theirs)."""
    return tuple(s for s in STAGES if not s.per_session)


def metric_files() -> tuple[str, ...]:
    """Every stage's metrics files, in stage order."""
    return tuple(path for s in STAGES for path in s.metrics)
