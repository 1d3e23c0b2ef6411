"""``meiscope replicate``: the synthetic study rerun on K new cortices, with an interval for every headline figure.

A single run's in-silico figures move with float rounding and with the draw of the cortex, so a
figure about MEIs counts when it holds across replicates. Replicate ``s`` (a seed from
``replicate.seeds``, none of them the development seed) gets a NEW synthetic cortex (cells and
scenes), a new image split, new tuning, new training seeds and new MEI starts; every other
setting is the project's ``params.yaml``.

Layout: ``<replicate.folder>/seed_<s>/`` (``<replicate.folder>/neuropixels/seed_<s>/`` for
``data.recording: neuropixels``: the two studies never share a folder) is a complete project root (its own ``params.yaml``,
``data/``, ``results/``, ``metrics/``, ``models/``; ``<replicate.folder>/container/seed_<s>/`` for the container), and every stage runs there unchanged, as the
``meiscope <stage> --params <that file>`` command in its own process (as ``dvc repro`` would), with
its output in ``logs/<stage>.log``. MLflow runs go to the project's store, one experiment per
replicate (``<tracking.experiment>-replicate-<s>``).

Resumable: ``progress.json`` in each replicate folder records, for every stage that finished, a
key of the params it and the stages before it read (:data:`STAGE_SECTIONS`); a rerun skips a stage
whose key still matches (training resumes from its checkpoints), so an interrupted ``meiscope
replicate`` continues where it stopped, and a change of ``train`` reruns the replicates from
``tune`` on while their data, extraction and ranking are kept.

The summary (``metrics/replicates.json``, ``metrics/replicates-neuropixels.json``): for every headline figure the values per replicate,
their mean and standard deviation, and a ``replicate.confidence`` t-interval of the mean; for every
conclusion per cell kind (MEI beats / ties / loses to the optimal Gabor, in truth and in the
models) whether it holds in every replicate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from meiscope.atomic import write_json, write_text
from meiscope.comparison import VERDICT_WORDS
from meiscope.config import Params, as_dict
from meiscope.errors import MeiscopeError

log = logging.getLogger(__name__)

STAGES = ("data", "extract", "rank", "tune", "train", "mei", "gabor", "validate")
DEVICE_STAGES = ("tune", "train", "mei", "gabor", "validate")
# The params sections each stage reads (dvc.yaml's `params:`, made coarser: tune reads model and
# train). A stage's key hashes its sections and those of every stage before it; a section named
# nowhere here counts for "data", the first stage, so that a new section reruns everything.
STAGE_SECTIONS = {"data": ("data", "allen", "neuropixels", "synthetic_neuropixels", "container",
                           "synthetic_container", "synthetic", "sessions"),
                  "extract": ("extract",), "rank": ("rank",), "tune": ("tune", "model", "train"),
                  "train": (), "mei": ("mei",), "gabor": ("gabor",), "validate": ()}
KINDS = ("simple", "complex", "conjunction")
METRIC_FILES = ("ranking", "tune", "train", "mei", "gabor", "validate")


@dataclass(frozen=True)
class Figure:
    """A headline figure: where it comes from, what to call it, and which panel of the plot shows it."""

    stage: str
    key: str
    label: str
    panel: Optional[str] = None  # "accuracy" | "truth" | "ratio" (log axis) | None (table only)
    only_some_data: bool = False  # measured on some kinds of data only: left out where no replicate has it

    @property
    def name(self) -> str:
        return f"{self.stage}.{self.key}"

    @property
    def log_scale(self) -> bool:
        """Ratios are averaged on the log scale (a geometric mean and interval), so 2 and 1/2 average to 1."""
        return self.panel == "ratio"


def _per_kind(stage: str, key: str, label: str, panel: Optional[str]) -> list[Figure]:
    return [Figure(stage, f"{key}_{kind}", f"{label} ({kind})", panel) for kind in KINDS]


HEADLINE: tuple[Figure, ...] = (
    Figure("ranking", "n_selected", "cells selected"),
    Figure("ranking", "gt_precision", "ranking precision vs truth", "accuracy"),
    Figure("ranking", "gt_recall", "ranking recall vs truth", "accuracy"),
    Figure("train", "test_corr_to_avg_mean", "test corr. to average (data)", "accuracy"),
    Figure("train", "gt_test_corr_mean", "corr. with true rates, test scenes", "accuracy"),
    Figure("train", "gt_fresh_corr_mean", "corr. with true rates, fresh scenes", "accuracy"),
    *_per_kind("train", "gt_fresh_corr_median", "corr. with true rates, fresh scenes", None),
    Figure("mei", "seed_consistency_phase_median", "MEI starts agree (phase-aware)", "accuracy"),
    Figure("mei", "frac_starts_disagree", "fraction of neurons whose starts disagree", "accuracy"),
    Figure("mei", "mei_over_best_image_median", "model: MEI / best natural image", "ratio"),
    Figure("gabor", "mei_over_gabor_median", "model: MEI / optimal Gabor", "ratio"),
    Figure("gabor", "mei_val_over_gabor_median", "held-out model: MEI / optimal Gabor", "ratio"),
    Figure("gabor", "mei_gabor_similarity_median", "MEI-Gabor similarity", "accuracy"),
    *_per_kind("validate", "gt_mei_corr_median", "MEI vs true optimum, corr.", "truth"),
    *_per_kind("validate", "gt_mei_rate_ratio_median", "true rate: MEI / optimum", "truth"),
    *_per_kind("validate", "gt_gabor_rate_ratio_median", "true rate: optimal Gabor / optimum", "truth"),
    *_per_kind("validate", "gt_frac_mei_beats_gabor", "fraction MEI beats Gabor in truth", "truth"),
    *_per_kind("validate", "gt_mei_over_gabor_rate_median", "true rate: MEI / optimal Gabor", "ratio"),
    *_per_kind("validate", "gt_mei_over_best_image_rate_median", "true rate: MEI / best natural", "ratio"),
    *_per_kind("validate", "gt_n_zero_rate_gabor", "cells the optimal Gabor does not drive", None),
    *_per_kind("validate", "gt_n_zero_rate_mei", "cells the MEI does not drive", None),
    Figure("validate", "n_true_optimum_beaten", "stimuli beating the true optimum"),
    # Neuropixels sessions only: the presented Gabor patches (units with a significant receptive field)
    Figure("gabor", "gabor_patch_position_error_deg_median", "best presented Gabor patch to optimal Gabor (deg)",
           only_some_data=True),
    Figure("gabor", "gabor_patch_frac_orientation_agrees", "best patch orientation agrees with optimal Gabor",
           only_some_data=True),
    Figure("gabor", "gabor_patch_true_error_deg_median", "best presented Gabor patch to true centre (deg)",
           only_some_data=True),
    Figure("gabor", "optimal_gabor_true_error_deg_median", "optimal Gabor to true centre (deg)",
           only_some_data=True),
)
CONCLUSIONS = (("MEI vs optimal Gabor, in truth", "gt_verdict_mei_vs_gabor"),
               ("MEI vs optimal Gabor, on the optimisation models", "model_verdict_mei_vs_gabor"),
               ("MEI vs optimal Gabor, on the held-out model", "model_val_verdict_mei_vs_gabor"),
               ("MEI vs best natural image, in truth", "gt_verdict_mei_vs_best_image"))


# --------------------------------------------------------------------------------------
# one replicate
# --------------------------------------------------------------------------------------
def replicate_params(params: Params, seed: int, root: Path) -> dict[str, Any]:
    """The params mapping of replicate ``seed``: a new cortex, split, tuning, training and MEI starts."""
    from meiscope.tracking import tracking_uri

    raw = as_dict(params)
    raw["synthetic"]["seed"] = seed
    raw["synthetic_neuropixels"]["seed"] = seed  # new spike draws when data.recording is neuropixels
    raw["extract"]["split"]["seed"] = seed
    raw["rank"]["seed"] = seed
    raw["tune"]["seed"] = seed
    raw["train"]["seeds"] = [seed * 1000 + s for s in params.train.seeds]
    raw["train"]["fresh_seed"] = seed
    raw["mei"]["seed"] = seed
    raw["tracking"]["uri"] = tracking_uri(params.tracking, root)
    raw["tracking"]["experiment"] = f"{params.tracking.experiment}-replicate-{seed}"
    raw.pop("replicate", None)
    return raw


def _science(raw: dict[str, Any]) -> dict[str, Any]:
    """The settings that change results (not where MLflow logs, nor what the folders are called)."""
    science = {k: v for k, v in raw.items() if k != "tracking"}
    science["data"] = {k: v for k, v in raw.get("data", {}).items() if not k.endswith("_dir")}
    return science


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _params_hash(raw: dict[str, Any]) -> str:
    """Hash of every setting that changes results (progress files of older meiscope versions hold it)."""
    return _digest(_science(raw))


def stage_keys(raw: dict[str, Any]) -> dict[str, str]:
    """``{stage: key}``: a hash of the params sections the stage and every stage before it read."""
    science = _science(raw)
    named = {section for sections in STAGE_SECTIONS.values() for section in sections}
    read: dict[str, Any] = {}
    keys = {}
    for stage in STAGES:
        sections = STAGE_SECTIONS[stage] + (tuple(sorted(set(science) - named)) if stage == "data" else ())
        read.update({section: science.get(section) for section in sections})
        keys[stage] = _digest(read)
    return keys


def settings_key(params: Params) -> str:
    """A key of every project setting that changes a replicate's results: the summaries record it, so
    that the report can tell results measured under other settings (``params.yaml`` changed since)."""
    raw = as_dict(params)
    raw.pop("replicate", None)
    return stage_keys(raw)[STAGES[-1]]


def stale_note(summary: dict[str, Any], params: Params, rerun: str) -> str:
    """A sentence for a summary measured under other settings than ``params`` (empty when current)."""
    if summary.get("params_key") == settings_key(params):
        return ""
    return (" These were measured under other settings than params.yaml's now (or by a meiscope that did not "
            f"record them): rerun `{rerun}` to measure the current ones.")


def replicates_dir(params: Params, root: Path) -> Path:
    """Where the replicates of ``data.recording`` live (and their interval figure)."""
    folder = Path(root) / params.replicate.folder
    return folder if params.data.recording == "two_photon" else folder / params.data.recording


def replicate_dir(params: Params, root: Path, seed: int) -> Path:
    return replicates_dir(params, root) / f"seed_{seed}"


def summary_file(root: Path, recording: str) -> Path:
    """``metrics/replicates.json`` (two-photon), else ``metrics/replicates-<recording>.json``."""
    suffix = "" if recording == "two_photon" else f"-{recording}"
    return Path(root) / "metrics" / f"replicates{suffix}.json"


def _load_progress(folder: Path, raw: dict[str, Any]) -> dict[str, str]:
    """``{stage: key}`` of the stages finished in ``folder`` (older files: every stage under one params hash)."""
    path = folder / "progress.json"
    if not path.is_file():
        return {}
    progress = json.loads(path.read_text())
    if "stages" in progress:
        return dict(progress["stages"])
    keys = stage_keys(raw)
    done = progress.get("done", []) if progress.get("params_hash") == _params_hash(raw) else []
    return {stage: keys[stage] for stage in done if stage in keys}


def run_stage(folder: Path, stage: str, device: Optional[str]) -> None:
    """Run ``meiscope <stage>`` on the replicate's params in its own process; its output goes to a log."""
    command = [sys.executable, "-m", "meiscope.cli", stage, "--params", str(folder / "params.yaml")]
    if device and stage in DEVICE_STAGES:
        command += ["--device", device]
    logfile = folder / "logs" / f"{stage}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "w") as out:
        code = subprocess.run(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = logfile.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise MeiscopeError(f"replicate {folder.name}: stage '{stage}' failed ({tail[0]}); full log: {logfile}")


def run_replicate(params: Params, root: Path, seed: int, device: Optional[str] = None,
                  bar: Any = None) -> dict[str, dict]:
    """Run (or resume) replicate ``seed``; return its metrics ``{metrics file stem: dict}``.

    ``bar``: an optional tqdm bar, advanced by one per stage (run or skipped).
    """
    header = f"# replicate {seed} of {Path(root).resolve() / 'params.yaml'} (written by meiscope replicate)"
    return run_project(replicate_dir(params, root, seed), replicate_params(params, seed, Path(root)), STAGES,
                       header, device, bar)


def run_project(folder: Path, raw: dict[str, Any], stages: tuple[str, ...], header: str,
                device: Optional[str] = None, bar: Any = None) -> dict[str, dict]:
    """Run (or resume) ``stages`` in the project root ``folder`` with the params mapping ``raw``; its metrics.

    ``progress.json`` records each finished stage with its :func:`stage_keys` key. A stage runs
    when its key changed (its params or an earlier stage's did) or when an earlier stage ran.
    """
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    keys = stage_keys(raw)
    write_text(folder / "params.yaml", header + "\n" + yaml.safe_dump(raw, sort_keys=False))
    done = _load_progress(folder, raw)
    rerun = False
    for stage in stages:
        if rerun or done.get(stage) != keys[stage]:
            if not rerun:  # what was built on the old output is stale, even where its own key matches
                done = {s: k for s, k in done.items() if s not in stages[stages.index(stage):]}
            rerun = True
            if bar is not None:
                bar.set_postfix_str(f"{folder.name}: {stage}")
            run_stage(folder, stage, device)
            done[stage] = keys[stage]
            write_json(folder / "progress.json", {"stages": done})
        if bar is not None:
            bar.update(1)
    return load_replicate_metrics(folder)


def load_replicate_metrics(folder: Path) -> dict[str, dict]:
    """The metrics files of a finished replicate, ``{stem: dict}``."""
    out = {}
    for stem in METRIC_FILES:
        path = folder / "metrics" / f"{stem}.json"
        if not path.is_file():
            raise MeiscopeError(f"{path}: missing (the replicate did not finish; rerun `meiscope replicate`)")
        out[stem] = json.loads(path.read_text())
    return out


# --------------------------------------------------------------------------------------
# the summary
# --------------------------------------------------------------------------------------
def interval(values: list[Optional[float]], confidence: float, log_scale: bool = False) -> dict[str, Any]:
    """Mean, standard deviation and t-interval of the mean over replicates (finite values only).

    With ``log_scale`` (ratios) the interval is computed on the logarithms of the positive values and
    transformed back: ``mean`` is then the geometric mean and ``sd`` the s.d. of the natural logs.
    """
    from scipy.stats import t

    usable = [v for v in values if v is not None and np.isfinite(v) and (v > 0 or not log_scale)]
    finite = np.log(usable) if log_scale else np.array(usable, dtype=np.float64)
    back = np.exp if log_scale else (lambda x: x)
    out: dict[str, Any] = {"values": values, "n": int(len(finite)), "scale": "log" if log_scale else "linear"}
    if len(finite) == 0:
        return {**out, "mean": None, "sd": None, "ci_low": None, "ci_high": None}
    mean = float(finite.mean())
    if len(finite) < 2:
        return {**out, "mean": float(back(mean)), "sd": None, "ci_low": None, "ci_high": None}
    sd = float(finite.std(ddof=1))
    half = float(t.ppf((1 + confidence) / 2, len(finite) - 1) * sd / np.sqrt(len(finite)))
    return {**out, "mean": float(back(mean)), "sd": sd, "ci_low": float(back(mean - half)),
            "ci_high": float(back(mean + half))}


def _value(metrics: dict[str, dict], figure: Figure) -> Optional[float]:
    value = metrics.get(figure.stage, {}).get(figure.key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarise_replicates(metrics_by_seed: dict[int, dict[str, dict]], confidence: float) -> dict[str, Any]:
    """The replicate summary (see the module docstring) from each replicate's metrics."""
    seeds = sorted(metrics_by_seed)
    figures = {}
    for figure in HEADLINE:
        if figure.only_some_data and not any(figure.key in metrics_by_seed[s].get(figure.stage, {}) for s in seeds):
            continue
        values = [_value(metrics_by_seed[s], figure) for s in seeds]
        figures[figure.name] = {"label": figure.label, **interval(values, confidence, figure.log_scale)}
    conclusions: dict[str, dict] = {}
    for kind in KINDS:
        conclusions[kind] = {}
        for label, key in CONCLUSIONS:
            raw = [metrics_by_seed[s].get("validate", {}).get(f"{key}_{kind}") for s in seeds]
            words = [VERDICT_WORDS.get(int(v)) if v is not None else None for v in raw]
            holds = len(set(words)) == 1 and words[0] is not None
            conclusions[kind][label] = {"per_replicate": words, "holds_in_every_replicate": holds,
                                        "conclusion": words[0] if holds else "inconsistent"}
    return {"k": len(seeds), "seeds": seeds, "confidence": confidence, "figures": figures,
            "conclusions": conclusions}


def format_interval(entry: dict[str, Any], digits: int = 2) -> str:
    """``mean [low, high]`` (or what there is of it)."""
    if entry.get("mean") is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"


def format_conclusion(conclusion: dict[str, Any]) -> str:
    """``MEI beats in every replicate`` or ``no conclusion (beats, ties, ties)``."""
    words = ", ".join(str(w) for w in conclusion["per_replicate"])
    if conclusion["holds_in_every_replicate"]:
        return f"MEI {conclusion['conclusion']} in every replicate"
    return f"no conclusion ({words})"


def draw_interval(ax: Any, entry: dict[str, Any], y: float, colour: str = "tab:blue", label: Optional[str] = None
                  ) -> None:
    """One figure's replicates (dots), mean (diamond) and interval (bar) at height ``y`` of ``ax``."""
    values = [v for v in entry["values"] if v is not None and np.isfinite(v)]
    ax.scatter(values, [y] * len(values), s=12, color=colour, alpha=0.45, zorder=2)
    if entry["ci_low"] is not None:
        ax.plot([entry["ci_low"], entry["ci_high"]], [y, y], color=colour, lw=2.5, alpha=0.5, zorder=1)
    if entry["mean"] is not None:
        ax.scatter([entry["mean"]], [y], s=30, color=colour, marker="D", zorder=3, label=label)


def intervals_figure(summary: dict[str, Any]) -> Any:
    """Each headline figure: the replicates (dots) and the mean with its interval (bar), by panel."""
    from matplotlib.figure import Figure as MplFigure

    panels = (("accuracy", "Model and MEIs (0-1)", False), ("truth", "MEIs against the truth, per cell kind", False),
              ("ratio", "Ratios (log scale; 1 = equal)", True))
    rows = {p: [f for f in HEADLINE if f.panel == p and summary["figures"].get(f.name, {}).get("mean") is not None]
            for p, _, _ in panels}
    fig = MplFigure(figsize=(16, 0.32 * max(len(r) for r in rows.values()) + 1.6))
    axes = fig.subplots(1, 3)
    for ax, (panel, title, log_scale) in zip(axes, panels):
        for y, figure in enumerate(rows[panel]):
            draw_interval(ax, summary["figures"][figure.name], y)
        ax.set_yticks(range(len(rows[panel])), [f.label for f in rows[panel]], fontsize=7)
        ax.invert_yaxis()
        if log_scale:
            ax.set_xscale("log")
            ax.axvline(1.0, color="k", lw=0.8, ls=":")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{summary['k']} replicates (seeds {summary['seeds']}): dots = replicates, diamond = mean "
                 f"(geometric for ratios), bar = {summary['confidence']:.0%} t-interval", fontsize=9)
    fig.tight_layout()
    return fig


def interval_seeds(params: Params, seeds: Optional[list[int]], command: str) -> list[int]:
    """``seeds`` (default ``replicate.seeds``), checked: an interval needs at least 2 distinct ones."""
    seeds = list(seeds or params.replicate.seeds)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise MeiscopeError(f"{command}: needs at least 2 distinct seeds for an interval (got {seeds})")
    return seeds


def replicate(params: Params, root: Path, seeds: Optional[list[int]] = None, device: Optional[str] = None,
              progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every replicate, then write the summary (:func:`summary_file`) and the interval figure."""
    from tqdm import tqdm

    from meiscope.atomic import save_figure
    from meiscope.tracking import git_commit, git_dirty

    if params.data.source != "synthetic":
        raise MeiscopeError("replicate: data.source must be 'synthetic' (only the synthetic cortex has a "
                            "ground truth to measure the study against)")
    seeds = interval_seeds(params, seeds, "replicate")
    with tqdm(total=len(seeds) * len(STAGES), desc="replicates", disable=not progress) as bar:
        metrics = {seed: run_replicate(params, root, seed, device, bar) for seed in seeds}
    summary = summarise_replicates(metrics, params.replicate.confidence)
    summary["recording"] = params.data.recording
    summary["params_key"] = settings_key(params)
    summary["git_commit"] = git_commit(Path(root))
    dirty = git_dirty(Path(root))
    summary["git_working_tree_clean"] = None if dirty == "unknown" else dirty == "false"
    write_json(summary_file(root, params.data.recording), summary)
    save_figure(intervals_figure(summary), replicates_dir(params, root) / "intervals.png")
    return summary
