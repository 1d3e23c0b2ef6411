"""``meiscope ablation``: what each training stimulus buys, over the replicates of a recording's study.

A recording whose model trains on several stimuli declares its arms in its package's ``ablation``
module (``recordings/<name>/ablation.py``: ``PLAN``, an :class:`AblationPlan`): each arm is one
value of the recording's training-stimuli setting (``container.stimuli``;
``neuropixels.training_stimuli``, beside the scenes every arm keeps). For every replicate seed the
study of ``meiscope replicate`` is run first (or resumed); it is the arm whose stimuli are the
project's own. Each other arm reruns the study from ``extract`` on the SAME replicate's data (same
cortex, split, tuning and training seeds, MEI starts) with only that setting changed, in
``<replicate.folder>/<recording>/seed_<s>/ablation/<arm>/`` (a project root like the replicate's,
resumable the same way). So the arms of a replicate differ only in what the model trained on (and
the architecture ``tune`` finds for that data), and the interval over replicates says how much each
stimulus set buys on new cortices.

Writes ``metrics/ablation-<recording>.json`` (per arm: every figure of :data:`FIGURES` with its values,
mean and t-interval), the figure ``<replicate.folder>/<recording>/ablation.png`` and, through
:func:`ablation_table`, the table the report and the README show.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from meiscope.atomic import save_figure, write_json
from meiscope.config import Params
from meiscope.errors import MeiscopeError
from meiscope.replicate import (command_line, draw_interval, folder_lock, replicate_dir, replicate_params,
                                replicate_stages, replicates_dir, run_project, run_replicate, settings_key,
                                study_seeds)
from meiscope.science.catalogue import HEADLINE, KINDS, by_name, format_interval, label_of
from meiscope.science.stats import interval


@dataclass(frozen=True)
class Arm:
    """One training set of the ablation: ``stimuli`` is the value of the plan's setting it trains with."""

    slug: str  # its folder
    label: str
    stimuli: tuple[str, ...]


@dataclass(frozen=True)
class AblationPlan:
    """A recording's ablation: its arms and the setting (``section.key``) they change; the last arm is the
    one a user compares against (every stimulus)."""

    recording: str
    setting: str  # e.g. "container.stimuli"
    arms: tuple[Arm, ...]

    def stimuli_of(self, params: Params) -> tuple[str, ...]:
        """The project's own value of the setting."""
        section, key = self.setting.split(".")
        return tuple(getattr(getattr(params, section), key))

    def arm(self, slug: str) -> Arm:
        """The arm named ``slug``, or a one-line error listing the arms."""
        for arm in self.arms:
            if arm.slug == slug:
                return arm
        raise MeiscopeError(f"ablation --arms: {slug!r} is not an arm of the {self.recording} ablation "
                            f"(arms: {', '.join(a.slug for a in self.arms)})")


def _plan_module(recording: str) -> Optional[str]:
    """``<the recording's package>.ablation`` when that module exists (a recording declares its ablation there)."""
    from meiscope.recordings import RECORDINGS

    if recording not in RECORDINGS:
        return None
    module = f"{RECORDINGS[recording].__module__}.ablation"
    return module if importlib.util.find_spec(module) is not None else None


def plan_of(recording: str) -> AblationPlan:
    """The ``PLAN`` of the recording package's ``ablation`` module; a one-line error for a recording without."""
    module = _plan_module(recording)
    if module is None:
        raise MeiscopeError(f"ablation: data.recording {recording!r} has no stimulus ablation (one of "
                            f"{', '.join(ablation_recordings())})")
    return importlib.import_module(module).PLAN


def ablation_recordings() -> tuple[str, ...]:
    """The recordings that declare an ablation, in registry order."""
    from meiscope.recordings import RECORDINGS

    return tuple(name for name in RECORDINGS if _plan_module(name) is not None)


# the model against the truth, and the MEIs against the true optimum, per cell kind
FIGURES = tuple(f for f in HEADLINE if f.name == "train.gt_fresh_corr_mean"
                or f.key.startswith(("gt_mei_corr_median_", "gt_mei_rate_ratio_median_")))


def arm_stages() -> tuple[Any, ...]:
    """The stages an arm runs: the replicate's, less ``data`` (it reads its replicate's raw data)."""
    return tuple(s for s in replicate_stages() if s.name != "data")


def summary_path(root: Path, recording: str) -> Path:
    """``metrics/ablation-<recording>.json`` under ``root``."""
    return Path(root) / "metrics" / f"ablation-{recording}.json"


def is_replicate(params: Params, plan: AblationPlan, arm: Arm) -> bool:
    """Whether ``arm`` trains on the project's own stimuli (then it IS the replicate)."""
    return set(arm.stimuli) == set(plan.stimuli_of(params))


def arm_dir(params: Params, root: Path, seed: int, plan: AblationPlan, arm: Arm) -> Path:
    """The arm's project root: the replicate's folder itself for the project's own stimuli."""
    folder = replicate_dir(params, root, seed)
    return folder if is_replicate(params, plan, arm) else folder / "ablation" / arm.slug


def arm_params(params: Params, root: Path, seed: int, plan: AblationPlan, arm: Arm) -> dict[str, Any]:
    """Replicate ``seed``'s params with the plan's setting at ``arm``'s stimuli, reading the replicate's data."""
    from meiscope.recordings import recording_of

    raw = replicate_params(params, seed, Path(root))
    data_key = recording_of(params).synthetic_dir_key
    replicate_data = replicate_dir(params, root, seed) / getattr(params.data, data_key)
    raw["data"][data_key] = os.path.relpath(replicate_data, arm_dir(params, root, seed, plan, arm))
    section, key = plan.setting.split(".")
    raw[section][key] = list(arm.stimuli)
    raw["tracking"]["experiment"] += f"-ablation-{arm.slug}"
    return raw


def run_arm(params: Params, root: Path, seed: int, plan: AblationPlan, arm: Arm, device: Optional[str] = None,
            bar: Any = None) -> dict[str, dict]:
    """Run (or resume) ``arm`` of replicate ``seed`` (the replicate must have its data); its metrics."""
    if is_replicate(params, plan, arm):
        return run_replicate(params, root, seed, device, bar)
    header = f"# ablation arm '{arm.label}' of replicate {seed} (written by meiscope ablation)"
    folder = arm_dir(params, root, seed, plan, arm)
    replicate_data = os.path.relpath(replicate_dir(params, root, seed) / "data", folder)
    return run_project(folder, arm_params(params, root, seed, plan, arm), arm_stages(), header, device, bar,
                       moved_inputs={"data": Path(replicate_data).as_posix()})


def summarise_ablation(arms_run: tuple[Arm, ...], metrics: dict[str, dict[int, dict[str, dict]]],
                       confidence: float) -> dict[str, Any]:
    """Per arm of ``arms_run`` (``metrics[arm slug][seed]``: that run's metrics files), every :data:`FIGURES`
    entry with its interval."""
    arms = []
    for arm in arms_run:
        by_seed = metrics[arm.slug]
        seeds = sorted(by_seed)
        figures = {}
        for figure in FIGURES:
            values = [by_seed[s].get(figure.stage, {}).get(figure.key) for s in seeds]
            values = [float(v) if isinstance(v, (int, float)) else None for v in values]
            figures[figure.name] = {"label": figure.label,
                                    **interval(values, confidence, figure.log_scale, figure.bounds)}
        arms.append({"slug": arm.slug, "label": arm.label, "stimuli": list(arm.stimuli), "seeds": seeds,
                     "figures": figures})
    return {"confidence": confidence, "arms": arms}


def _label(name: str, entry: dict[str, Any]) -> str:
    """A figure's catalogue label (the one stored in the summary for a figure the catalogue no longer has)."""
    metric = by_name(name)
    return metric.label if metric is not None else entry.get("label", name)


def ablation_grid(summary: dict[str, Any]) -> list[list[str]]:
    """The ablation as a table: a header row, then one row per arm with the mean [t-interval] of every figure."""
    header = ["training stimuli"] + [_label(name, entry) for name, entry in summary["arms"][0]["figures"].items()]
    return [header] + [[arm["label"]] + [format_interval(entry) for entry in arm["figures"].values()]
                       for arm in summary["arms"]]


def ablation_table(summary: dict[str, Any]) -> str:
    """:func:`ablation_grid` as markdown (the README's table)."""
    grid = ablation_grid(summary)
    lines = ["| " + " | ".join(row) + " |" for row in grid]
    return "\n".join(lines[:1] + ["|" + "---|" * len(grid[0])] + lines[1:])


# (title: the catalogue's label, figure name or the prefix of its per-kind names)
PANELS = ((label_of("train", "gt_fresh_corr_mean"), "train.gt_fresh_corr_mean"),
          (label_of("validate", "gt_mei_corr_median"), "validate.gt_mei_corr_median_"),
          (label_of("validate", "gt_mei_rate_ratio_median"), "validate.gt_mei_rate_ratio_median_"))
KIND_COLOURS = dict(zip(KINDS, ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")))


def ablation_figure(summary: dict[str, Any]) -> Any:
    """Three panels (model accuracy, MEI correlation, MEI rate ratio): per arm, the replicates (dots)
    and the mean with its interval (bar), one colour per cell kind."""
    from matplotlib.figure import Figure as MplFigure

    arms = summary["arms"]
    fig = MplFigure(figsize=(9.5, 0.55 * len(arms) + 2.1))  # ~1:1 on a 1000 px page: 8 pt stays >= 9 px
    axes = fig.subplots(1, len(PANELS), sharey=True)
    for ax, (title, prefix) in zip(axes, PANELS):
        names = [n for n in arms[0]["figures"] if n.startswith(prefix)]
        for j, name in enumerate(names):
            kind = name[len(prefix):] or None
            colour = KIND_COLOURS.get(kind, "k")
            offset = (j - (len(names) - 1) / 2) * min(0.22, 0.8 / len(names))  # the kinds of an arm stay apart
            for y, arm in enumerate(arms):
                draw_interval(ax, arm["figures"][name], y + offset, colour, label=kind if y == 0 else None)
        ax.axvline(0.8, color="tab:red", lw=0.8, ls=":")  # the 0.8 target line
        ax.set_title(title, fontsize=9, wrap=True)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    axes[0].set_yticks(range(len(arms)), [a["label"] for a in arms], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"What each stimulus buys ({len(summary.get('seeds', []))} replicates): dots = replicates,\n"
                 f"diamond = mean, bar = {summary['confidence']:.0%} t-interval, red line = 0.8", fontsize=9)
    # one legend of the cell kinds under the panels, where it hides no interval
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes), key=lambda hl: len(hl[1]))
    if labels:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 if labels else 0, 1, 1))
    return fig


def ablation(params: Params, root: Path, seeds: Optional[list[int]] = None, device: Optional[str] = None,
             progress: bool = True, arms: Optional[list[str]] = None) -> dict[str, Any]:
    """Run (or resume) the arms (``arms``: slugs, default every arm of the recording's plan) of every
    replicate; write the summary and its figure, and return the summary."""
    from tqdm import tqdm

    if params.data.source != "synthetic":
        raise MeiscopeError("ablation: needs data.source: synthetic (the arms are scored against the synthetic "
                            "cortex's truth)")
    plan = plan_of(params.data.recording)
    chosen = plan.arms if arms is None else tuple(plan.arm(slug) for slug in dict.fromkeys(arms))
    if not chosen:
        raise MeiscopeError("ablation --arms: name at least one arm")
    seeds = study_seeds(params, root, seeds, "ablation")
    metrics: dict[str, dict[int, dict]] = {arm.slug: {} for arm in chosen}
    total = len(seeds) * sum(len(replicate_stages() if is_replicate(params, plan, arm) else arm_stages())
                             for arm in chosen)
    # the whole run holds the replicates' folder, as `meiscope replicate` does: a second run is refused
    with folder_lock(replicates_dir(params, root), command_line()), \
            tqdm(total=total, desc="ablation", disable=not progress) as bar:
        for seed in seeds:
            run_replicate(params, root, seed, device, bar=None)  # the data every arm reads
            for arm in chosen:
                metrics[arm.slug][seed] = run_arm(params, root, seed, plan, arm, device, bar)
    summary = {**summarise_ablation(chosen, metrics, params.replicate.confidence), "recording": plan.recording,
               "setting": plan.setting, "seeds": seeds, "params_key": settings_key(params)}
    write_json(summary_path(root, plan.recording), summary)
    save_figure(ablation_figure(summary), replicates_dir(params, root) / "ablation.png")
    return summary
