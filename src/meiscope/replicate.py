"""``meiscope replicate``: the synthetic study rerun on K new cortices, with an interval for every headline figure.

A single run's in-silico figures move with float rounding and with the draw of the cortex, so a
figure about MEIs counts when it holds across replicates. Replicate ``s`` (a seed from
``replicate.seeds``, none of them the development seed) gets a NEW synthetic cortex (cells and
scenes), a new image split, new tuning, new training seeds and new MEI starts; every other
setting is the project's ``params.yaml``.

Layout: ``<replicate.folder>/seed_<s>/`` (``<replicate.folder>/<recording>/seed_<s>/`` for
``data.recording`` neuropixels or container: the studies never share a folder) is a project root of
its own (``params.yaml``, ``data/``, ``results/``, ``metrics/``, ``models/``) and a DVC project of its
own (``dvc init --no-scm``), whose ``dvc.yaml`` is written from the same stage table as the project's
(:mod:`meiscope.pipeline`) with ``data`` as its first stage and code dependencies pointing at this
checkout's ``src/meiscope``. ``dvc repro`` runs there, so DVC decides what reruns: an interrupted
replicate continues where it stopped, and a change of params or of the code a stage runs reruns that
stage and the ones after it. Its output goes to ``logs/dvc-repro.log``. MLflow runs go to the
project's store, one experiment per replicate (``<tracking.experiment>-replicate-<s>``).

Two protocols (``replicate.protocol``). *Confirmatory* (the default): the seeds are drawn from the code and
settings that run, the git tree of ``src/`` and the blob of ``params.yaml`` at ``HEAD``, by a published rule
(:func:`derive_seeds`), on a checkout that is its commit (:func:`tree_changes`); any change to the code or
the settings draws new seeds, so nobody can tune to them. *Development*: the fixed ``replicate.seeds``
(or ``--seeds``), which were looked at while meiscope was developed. Every summary says which
(``"protocol"``); a summary without the label was written before it existed, by development seeds
(:func:`protocol_of`).

The summary (``metrics/replicates.json``, ``metrics/replicates-neuropixels.json``): for every headline figure the values per replicate,
their mean and standard deviation, and a ``replicate.confidence`` t-interval of the mean (clipped to the
range the figure can take: :func:`meiscope.science.stats.interval`); for every
conclusion per cell kind (MEI beats / ties / loses to the optimal Gabor, in truth and in the
models) whether it holds in every replicate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from meiscope.atomic import write_json, write_text
from meiscope.config import Params, as_dict
from meiscope.errors import MeiscopeError
from meiscope.science.catalogue import (CONCLUSIONS, HEADLINE, KINDS, Metric, interval_keys, ordered_kinds,
                                        verdict_word)
from meiscope.science.stats import interval

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# one replicate
# --------------------------------------------------------------------------------------
def replicate_params(params: Params, seed: int, root: Path) -> dict[str, Any]:
    """The params mapping of replicate ``seed``: a new cortex, split, tuning, training and MEI starts."""
    from meiscope.tracking import tracking_uri

    from meiscope.pipeline import RECORDING_SECTIONS

    raw = as_dict(params)
    raw["synthetic"]["seed"] = seed
    for section in RECORDING_SECTIONS:  # a recording's own draws (e.g. the spikes of a Neuropixels session)
        if "seed" in raw[section]:
            raw[section]["seed"] = seed
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
    """The settings that change results (not where MLflow logs, the team stack's servers, nor what the
    folders are called)."""
    science = {k: v for k, v in raw.items() if k not in ("tracking", "services")}
    science["data"] = {k: v for k, v in raw.get("data", {}).items() if not k.endswith("_dir")}
    return science


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def settings_key(params: Params) -> str:
    """A key of every setting that changes the results of a study of ``data.recording``: the summaries
    record it, so that the report can tell results measured under other settings (``params.yaml``
    changed since). Other recordings' sections and ``recording_overrides`` tables are left out: a
    Neuropixels setting does not change what the container's study measured."""
    from meiscope.pipeline import RECORDING_SECTIONS
    from meiscope.recordings import sections_read

    recording = params.data.recording
    raw = as_dict(params)
    raw.pop("replicate", None)
    for section in set(RECORDING_SECTIONS) - sections_read(recording):
        raw.pop(section, None)
    raw["recording_overrides"] = raw.get("recording_overrides", {}).get(recording, {})
    return _digest(_science(raw))


def stale_note(summary: dict[str, Any], params: Params, rerun: str, recording: str,
               root: Optional[Path] = None) -> str:
    """A sentence for a summary of ``recording`` measured under other settings than ``params`` (empty when
    current). A summary of another recording than ``params``' is compared with ``<root>/params.yaml`` read
    for that recording, its ``recording_overrides`` table applied, as the command that wrote it read it."""
    from meiscope.config import load_params

    other_recording = recording != params.data.recording and root is not None and Path(root, "params.yaml").is_file()
    current = load_params(Path(root, "params.yaml"), [f"data.recording={recording}"]) if other_recording else params
    if summary.get("params_key") == settings_key(current):
        return ""
    return (" These were measured under other settings than params.yaml's now (or by a meiscope that did not "
            f"record them): rerun `{rerun}` to measure the current ones.")


def replicates_dir(params: Params, root: Path, profile: Optional[str] = None) -> Path:
    """Where the replicates of ``data.recording`` live (and their interval figure); inside the project, or a
    ConfigError naming ``replicate.folder``. ``profile``: the same seeds on another synthetic cortex
    (:func:`replicate`'s ``profile``) live in a folder of that name beside the seeds' own."""
    from meiscope.containment import inside_project

    inside_project(Path(root), params.replicate.folder, "replicate.folder")
    folder = Path(root) / params.replicate.folder
    folder = folder if params.data.recording == "two_photon" else folder / params.data.recording
    return folder / f"profile-{profile}" if profile else folder


def replicate_dir(params: Params, root: Path, seed: int, profile: Optional[str] = None) -> Path:
    return replicates_dir(params, root, profile) / f"seed_{seed}"


def summary_file(root: Path, recording: str, profile: Optional[str] = None) -> Path:
    """``metrics/replicates.json`` (two-photon), else ``metrics/replicates-<recording>.json``; with ``profile``
    (the same seeds on another synthetic cortex) ``-<profile>`` is appended to the name."""
    suffix = ("" if recording == "two_photon" else f"-{recording}") + (f"-{profile}" if profile else "")
    return Path(root) / "metrics" / f"replicates{suffix}.json"


def replicate_stages() -> tuple[Any, ...]:
    """The stages a replicate runs: every stage of the table that measures the study (not the report)."""
    from meiscope.pipeline import STAGES

    return tuple(s for s in STAGES if s.name != "report")


def run_replicate(params: Params, root: Path, seed: int, device: Optional[str] = None,
                  bar: Any = None, profile: Optional[str] = None) -> dict[str, dict]:
    """Run (or resume) replicate ``seed``; return its metrics ``{metrics file stem: dict}``.

    ``bar``: an optional tqdm bar, advanced by one per stage (run or skipped). ``profile``: run it on that
    synthetic cortex instead of ``params``' own (:func:`meiscope.config.switch_profile`), in its own folder.
    """
    from meiscope.config import switch_profile

    header = f"# replicate {seed} of {Path(root).resolve() / 'params.yaml'} (written by meiscope replicate)"
    run_params = switch_profile(params, profile) if profile else params
    return run_project(replicate_dir(params, root, seed, profile), replicate_params(run_params, seed, Path(root)),
                       replicate_stages(), header, device, bar)


LOCK_FILE = ".meiscope.lock"


@contextlib.contextmanager
def folder_lock(folder: Path, command: str) -> Iterator[None]:
    """Hold ``<folder>/.meiscope.lock`` while ``command`` works in ``folder``: a second meiscope process that
    wants the folder gets a one-line MeiscopeError naming the holder (pid, since when) instead of
    running the same stages on the same files. The kernel drops the lock when the process ends, however
    it ends (``fcntl.flock``), so a crash never leaves the folder locked.
    """
    import fcntl
    import os
    import time

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process (starting up)"
            raise MeiscopeError(f"{folder}: in use by {holder}; wait for it to end, or stop it "
                                f"(its lock: {path})") from None
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command} (pid {os.getpid()}, since {since})\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # nobody holds it now: a later reader must not name this process
    finally:
        os.close(fd)  # releases the lock


def command_line() -> str:
    """This process's command, as a lock names its holder (``meiscope replicate --seeds 1,2``)."""
    return "`" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) + "`"


def stage_command_path() -> str:
    """The PATH under which ``dvc repro`` finds the ``meiscope`` of this environment for the stage commands."""
    import os

    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _dvc(folder: Path, *args: str, log: Any = None) -> int:
    """Run this environment's ``dvc`` in ``folder``."""
    import os

    env = {**os.environ, "PATH": stage_command_path(), "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=folder, env=env,
                          stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT).returncode


def run_project(folder: Path, raw: dict[str, Any], stages: tuple[Any, ...], header: str,
                device: Optional[str] = None, bar: Any = None,
                moved_inputs: Optional[dict[str, str]] = None) -> dict[str, dict]:
    """Run (or resume) ``stages`` in the project root ``folder`` with the params mapping ``raw``; its metrics.

    ``folder`` is made a DVC project of its own (no git) with a ``dvc.yaml`` written from the stage
    table, and ``dvc repro`` runs there: DVC decides which stages are stale (params, code or inputs
    changed). ``device`` sets ``train.device`` and ``mei.device`` of the replicate.
    """
    import yaml

    from meiscope.dvcfile import dvc_yaml_text

    if device:
        raw = {**raw, "train": {**raw["train"], "device": device}, "mei": {**raw["mei"], "device": device}}
    with folder_lock(folder, command_line()):  # two runs at once would run the same stages on the same files
        write_text(folder / "params.yaml", header + "\n" + yaml.safe_dump(raw, sort_keys=False))
        write_text(folder / "dvc.yaml", dvc_yaml_text(folder, stages, with_data=True, moved_inputs=moved_inputs))
        if not (folder / ".dvc").is_dir() and _dvc(folder, "init", "--no-scm", "-q") != 0:
            raise MeiscopeError(f"{folder}: `dvc init --no-scm` failed")
        logfile = folder / "logs" / "dvc-repro.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logfile, "w") as out:
            code = _dvc(folder, "repro", log=out)
    if bar is not None:
        bar.update(len(stages))  # the bar counts the table's stages, as its total does
    if code != 0:
        errors = [line for line in logfile.read_text(errors="replace").splitlines() if line.startswith("ERROR")]
        raise MeiscopeError(f"{folder.name}: dvc repro failed ({(errors or ['no error line'])[-1]}); "
                            f"full log: {logfile}")
    return load_replicate_metrics(folder, stages)


def locked_code_key(folder: Path) -> str:
    """A key of the code every stage of the project in ``folder`` ran (the code hashes in its dvc.lock)."""
    import yaml

    lock = yaml.safe_load((folder / "dvc.lock").read_text()) or {}
    code = {stage: {d["path"].split("src/meiscope/")[-1]: d.get("md5") for d in entry.get("deps", [])
                    if "src/meiscope/" in d["path"]}
            for stage, entry in sorted(lock.get("stages", {}).items())}
    return _digest(code)


def load_replicate_metrics(folder: Path, stages: Optional[tuple[Any, ...]] = None) -> dict[str, dict]:
    """The metrics files of a finished replicate, ``{stem: dict}``."""
    out = {}
    for stage in stages or replicate_stages():
        for stem in stage.metric_names:
            path = folder / "metrics" / f"{stem}.json"
            if not path.is_file():
                raise MeiscopeError(f"{path}: missing (the replicate did not finish; rerun `meiscope replicate`)")
            out[stem] = json.loads(path.read_text())
    return out


# --------------------------------------------------------------------------------------
# the summary
# --------------------------------------------------------------------------------------
def _value(metrics: dict[str, dict], figure: Metric) -> Optional[float]:
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
        figures[figure.name] = {"label": figure.label,
                                **interval(values, confidence, figure.log_scale, figure.bounds)}
        ends = interval_keys(figure)  # each replicate's own interval over its cells, beside the one over replicates
        if ends:
            figures[figure.name]["per_replicate_ci"] = [
                [metrics_by_seed[s].get(figure.stage, {}).get(e) for e in ends] for s in seeds]
    conclusions: dict[str, dict] = {}
    listed = [k for s in seeds for k in (metrics_by_seed[s].get("validate", {}).get("kinds") or [])]
    for kind in ordered_kinds(listed) if listed else KINDS:  # the kinds the replicates' cortices have
        conclusions[kind] = {}
        for label, key in CONCLUSIONS:
            raw = [metrics_by_seed[s].get("validate", {}).get(f"{key}_{kind}") for s in seeds]
            words = [verdict_word(v) for v in raw]
            holds = len(set(words)) == 1 and words[0] is not None
            conclusions[kind][label] = {"per_replicate": words, "holds_in_every_replicate": holds,
                                        "conclusion": words[0] if holds else "inconsistent"}
    return {"k": len(seeds), "seeds": seeds, "confidence": confidence, "figures": figures,
            "conclusions": conclusions}


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
    # one panel under the other, 9.5 in wide: shown ~1:1 on a 1000 px page, so 8 pt stays >= 9 px there
    heights = [max(len(r), 1) for r in rows.values()]
    fig = MplFigure(figsize=(9.5, 0.27 * sum(heights) + 0.6 * len(panels) + 0.8))
    axes = fig.subplots(len(panels), 1, gridspec_kw={"height_ratios": heights})
    for ax, (panel, title, log_scale) in zip(axes, panels):
        for y, figure in enumerate(rows[panel]):
            draw_interval(ax, summary["figures"][figure.name], y)
        ax.set_yticks(range(len(rows[panel])), [f.label for f in rows[panel]], fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.invert_yaxis()
        if log_scale:
            ax.set_xscale("log")
            ax.axvline(1.0, color="k", lw=0.8, ls=":")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{summary['k']} {protocol_of(summary)} replicates (seeds {summary['seeds']}): dots = replicates,\ndiamond = mean "
                 f"(geometric for ratios), bar = {summary['confidence']:.0%} t-interval", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# protocols: confirmatory seeds drawn from the commit, development seeds fixed
# --------------------------------------------------------------------------------------
PROTOCOLS = ("confirmatory", "development")
SEED_BASE, SEED_SPAN = 1_000, 1_000_000  # seeds in [1000, 1001000): seed * 1000 + member stays a 32-bit seed
SEED_RULE = (f"seed_i = {SEED_BASE} + int(first 8 hex digits of sha256(\"meiscope-confirmatory <src_tree> "
             f"<params_blob> <i>\"), 16) % {SEED_SPAN} for i = 0, 1, 2, ...; a value already drawn or in 'avoided' "
             "is skipped, until n are drawn; src_tree = `git rev-parse <commit>:src`, params_blob = "
             "`git rev-parse <commit>:params.yaml`")


def protocol_of(summary: dict[str, Any]) -> str:
    """``summary``'s protocol: its ``"protocol"`` label, ``development`` for a summary written before the label
    (those all ran the fixed development seeds); a MeiscopeError for a label that is neither."""
    protocol = summary.get("protocol", "development")
    if protocol not in PROTOCOLS:
        raise MeiscopeError(f"replicate summary: 'protocol' must be one of {list(PROTOCOLS)} (got {protocol!r})")
    return protocol


def protocol_note(summary: dict[str, Any]) -> str:
    """One sentence saying which protocol ``summary``'s figures come from (the report and the docs quote it)."""
    if protocol_of(summary) == "development":
        return ("Development replicates: fixed seeds that were looked at while meiscope was developed, so these are "
                "development figures, not confirmatory ones.")
    derivation = summary.get("seed_derivation") or {}
    return (f"Confirmatory replicates: seeds drawn from commit {str(summary.get('git_commit', 'unknown'))[:7]} "
            f"(src/ tree {str(derivation.get('src_tree', '?'))[:7]}, params.yaml blob "
            f"{str(derivation.get('params_blob', '?'))[:7]}) by meiscope's published rule, on a clean tree.")


def derive_seeds(src_tree: str, params_blob: str, n: int, avoid: tuple[int, ...] = ()) -> list[int]:
    """The ``n`` confirmatory seeds of (``src_tree``, ``params_blob``), by :data:`SEED_RULE`.

    A pure function of its arguments, so a reader recomputes the seeds from the commit alone; sha256 makes
    nearby commits draw unrelated seeds. ``avoid``: seeds never drawn (the development seeds).
    """
    if n < 1:
        raise MeiscopeError(f"derive_seeds: n must be >= 1 (got {n})")
    drawn: list[int] = []
    i = 0
    while len(drawn) < n:
        digest = hashlib.sha256(f"meiscope-confirmatory {src_tree} {params_blob} {i}".encode()).hexdigest()
        seed = SEED_BASE + int(digest[:8], 16) % SEED_SPAN
        if seed not in drawn and seed not in avoid:
            drawn.append(seed)
        i += 1
    return drawn


def _git_id(root: Path, *args: str) -> str:
    """The one-line answer of ``git <args>`` in ``root``, or a MeiscopeError saying what git could not tell."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as err:
        raise MeiscopeError(f"{root}: `git {' '.join(args)}` failed ({err}); confirmatory replicates need git") from None
    if out.returncode or not out.stdout.strip():
        reason = (out.stderr.strip().splitlines() or ["no answer"])[-1]
        raise MeiscopeError(f"{root}: `git {' '.join(args)}` failed ({reason}); confirmatory replicates draw their "
                            "seeds from the committed src/ and params.yaml")
    return out.stdout.strip()


def code_and_settings_ids(root: Path) -> tuple[str, str]:
    """(git tree id of ``<root>/src`` at HEAD, git blob id of ``<root>/params.yaml`` at HEAD).

    Read from the commit, not the files: :func:`tree_changes` makes sure the two are the same.
    """
    return _git_id(root, "rev-parse", "HEAD:./src"), _git_id(root, "rev-parse", "HEAD:./params.yaml")


def tree_changes(root: Path) -> list[str]:
    """What keeps the checkout in ``root`` from being its commit, for a confirmatory run (empty: clean).

    :func:`meiscope.tracking.git_dirty` decides for tracked files (what the pipeline writes, ``dvc.lock``
    and ``metrics/`` among them, does not count); ``params.yaml``, which it lets pass because
    ``dvc exp run -S`` edits it, counts here, since the seeds are drawn from it; so do untracked files
    under ``src/``, which would run without being in the commit.
    """
    from meiscope.tracking import _git_lines, git_dirty

    state = git_dirty(root)
    if state == "unknown":
        raise MeiscopeError(f"{root}: not a git checkout with a commit; confirmatory replicates draw their seeds "
                            "from the commit (use --set replicate.protocol=development for the fixed seeds)")
    changed = _git_lines(root, "diff", "--name-only", "-z", "HEAD", "--", "src", "params.yaml") or []
    untracked = _git_lines(root, "ls-files", "--others", "--exclude-standard", "-z", "--", "src") or []
    found = [*changed, *(f"{path} (untracked)" for path in untracked)]
    if state == "true" and not changed:
        found.append("other tracked files (see `git status`)")
    return found


def confirmatory_seeds(params: Params, root: Path) -> tuple[list[int], dict[str, Any]]:
    """The seeds of a confirmatory run in ``root`` and how they were drawn (the summary's ``seed_derivation``).

    Refused, one line each: a checkout that is not its commit (:func:`tree_changes`), settings that are not
    ``params.yaml``'s (``--set`` of anything but ``replicate.*``, ``data.recording``, which picks the study
    the same seeds run: the container's or the Neuropixels session's, and what that study does not read:
    :func:`settings_key`), code that does not run from ``<root>/src``.
    """
    from meiscope.config import load_params
    from meiscope.dvcfile import SOURCE_ROOT

    root = Path(root).resolve()
    changes = tree_changes(root)
    if changes:
        raise MeiscopeError(f"{root}: uncommitted changes ({', '.join(changes[:5])}"
                            f"{', ...' if len(changes) > 5 else ''}); a confirmatory run needs a clean tree: "
                            "commit them, or use --set replicate.protocol=development")
    if Path(SOURCE_ROOT).resolve() != root / "src":
        raise MeiscopeError(f"{root}: the code that runs ({SOURCE_ROOT}) is not {root / 'src'}; a confirmatory run "
                            "draws its seeds from the project's own committed src/")
    # which recording to study is a choice of study, not a setting to tune: the seeds stay the commit's
    committed = load_params(root / "params.yaml", [f"data.recording={params.data.recording}"])
    if settings_key(committed) != settings_key(params):
        raise MeiscopeError(f"{root / 'params.yaml'}: the settings differ from the file's (--set or another params "
                            "file); a confirmatory run uses the committed params.yaml as it is (only "
                            "data.recording and replicate.* may be set)")
    src_tree, params_blob = code_and_settings_ids(root)
    avoid = tuple(sorted({*params.replicate.seeds, params.synthetic.seed}))
    seeds = derive_seeds(src_tree, params_blob, params.replicate.n_confirmatory, avoid)
    return seeds, {"rule": SEED_RULE, "src_tree": src_tree, "params_blob": params_blob,
                   "n": params.replicate.n_confirmatory, "avoided": list(avoid)}


def run_seeds(params: Params, root: Path, seeds: Optional[list[int]]) -> tuple[list[int], dict[str, Any]]:
    """The seeds ``meiscope replicate`` runs under ``replicate.protocol`` and how they were chosen."""
    if params.replicate.protocol == "development":
        chosen = interval_seeds(params, seeds, "replicate")
        return chosen, {"rule": "fixed: " + ("--seeds" if seeds else "replicate.seeds")}
    if seeds:
        raise MeiscopeError("replicate: --seeds chooses the seeds, which a confirmatory run draws from the commit; "
                            "add --set replicate.protocol=development to run chosen seeds")
    return confirmatory_seeds(params, root)


def study_seeds(params: Params, root: Path, seeds: Optional[list[int]], command: str) -> list[int]:
    """The replicates a command built on the replicate study (the ablation) runs: ``seeds`` when given, else
    those ``meiscope replicate`` runs, drawn from the commit under ``replicate.protocol: confirmatory``."""
    if seeds:
        return interval_seeds(params, seeds, command)
    return run_seeds(params, root, None)[0]


def interval_seeds(params: Params, seeds: Optional[list[int]], command: str) -> list[int]:
    """``seeds`` (default ``replicate.seeds``), checked: an interval needs at least 2 distinct ones."""
    seeds = list(seeds or params.replicate.seeds)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise MeiscopeError(f"{command}: needs at least 2 distinct seeds for an interval (got {seeds})")
    return seeds


def replicate(params: Params, root: Path, seeds: Optional[list[int]] = None, device: Optional[str] = None,
              progress: bool = True, profile: Optional[str] = None) -> dict[str, Any]:
    """Run (or resume) every replicate, then write the summary (:func:`summary_file`) and the interval figure.

    ``profile``: run the same seeds (for a confirmatory run: those drawn from the commit's params.yaml) on
    another synthetic cortex (``synthetic.profile``), so that the two cortices compare replicate by replicate;
    its replicates, summary and figure are named for it. None, or ``params``' own profile: the study as set.
    """
    from tqdm import tqdm

    from meiscope.atomic import save_figure
    from meiscope.config import SYNTHETIC_PROFILES, switch_profile
    from meiscope.tracking import git_commit, git_dirty

    if params.data.source != "synthetic":
        raise MeiscopeError("replicate: data.source must be 'synthetic' (only the synthetic cortex has a "
                            "ground truth to measure the study against)")
    protocol = params.replicate.protocol
    if profile is not None and profile not in SYNTHETIC_PROFILES:
        raise MeiscopeError(f"replicate --profile: must be one of {', '.join(SYNTHETIC_PROFILES)} (got {profile!r})")
    profile = None if profile == params.synthetic.profile else profile
    run_params = switch_profile(params, profile) if profile else params
    # the whole run holds the replicates' folder: a second `meiscope replicate` stops at once, not at a shared seed
    with folder_lock(replicates_dir(params, root, profile), command_line()):
        seeds, derivation = run_seeds(params, root, seeds)
        with tqdm(total=len(seeds) * len(replicate_stages()), desc="replicates", disable=not progress) as bar:
            metrics = {seed: run_replicate(params, root, seed, device, bar, profile) for seed in seeds}
        if protocol == "confirmatory" and run_seeds(params, root, None)[1] != derivation:  # edited while running
            raise MeiscopeError(f"{root}: src/ or params.yaml changed while the replicates ran; rerun "
                                "`meiscope replicate` on the new commit (finished stages are kept)")
    summary = summarise_replicates(metrics, params.replicate.confidence)
    summary["protocol"] = protocol
    summary["seed_derivation"] = derivation
    summary["recording"] = params.data.recording
    summary["profile"] = run_params.synthetic.profile
    summary["params_key"] = settings_key(params)
    summary["code_keys"] = {str(seed): locked_code_key(replicate_dir(params, root, seed, profile)) for seed in seeds}
    summary["git_commit"] = git_commit(Path(root))
    dirty = git_dirty(Path(root))
    summary["git_working_tree_clean"] = None if dirty == "unknown" else dirty == "false"
    write_json(summary_file(root, params.data.recording, profile), summary)
    save_figure(intervals_figure(summary), replicates_dir(params, root, profile) / "intervals.png")
    return summary
