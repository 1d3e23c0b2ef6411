"""The `meiscope` command line: one command per pipeline stage, thin over meiscope.pipeline.

Heavy libraries (allensdk, torch, mlflow) are imported inside the commands, so that
``meiscope --help`` answers at once.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

# OpenMP threads that spin while waiting slow torch down many-fold when another process shares the
# cores (measured 17x on 2 cores); passive waiting costs nothing when the cores are free.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_PARAMS_FILE = click.option("--params", "params_path", default="params.yaml", show_default=True,
                            type=click.Path(dir_okay=False), help="The params file; its folder is the project root.")
_PARAMS_SET = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                           help="Override one value of the params file for this command (repeatable), e.g. "
                                "--set data.recording=neuropixels, as `dvc exp run -S` does.")


def PARAMS_OPTION(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--params FILE`` and ``--set SECTION.KEY=VALUE`` on a stage command."""
    return _PARAMS_FILE(_PARAMS_SET(func))


DEVICE_OPTION = click.option("--device", default=None,
                             help="auto (CUDA when available), cpu, cuda or cuda:N. Default: from params.yaml.")


def _quiet_libraries() -> None:
    """Silence library noise that says nothing about the study (numexpr, pkg_resources, Optuna notices)."""
    import warnings

    logging.getLogger("numexpr").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*is experimental")  # Optuna's ExperimentalWarning
    warnings.filterwarnings("ignore", message="Some regimes for parameter")  # Optuna importances on few trials


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device / disk quota exceeded


def _disk_full(err: OSError) -> bool:
    """True for a full disk or quota; h5py reports one as an OSError whose text holds the C library's words."""
    return err.errno in _DISK_FULL or any(os.strerror(code) in str(err) for code in _DISK_FULL)


def _disk_full_message(err: OSError, root: Path) -> str:
    """One line for a full disk: the path being written and the space left where it lives."""
    import shutil

    path = Path(err.filename) if err.filename else root
    probe = next((p for p in (path, *path.parents) if p.exists()), root)
    try:
        free = f"{shutil.disk_usage(probe).free / 1e9:.2f} GB free"
    except OSError:
        free = "free space unknown"
    quota = err.errno == errno.EDQUOT or os.strerror(errno.EDQUOT) in str(err)
    what = "disk quota exceeded" if quota else "no space left on the device"
    return (f"{path}: {what} ({free} in {probe}); the outputs being written were not kept: "
            "free some space and run the command again")


def _stage(func: Callable[..., Any]) -> Callable[..., Any]:
    """Load params, run the stage, print its summary, and turn user-fixable errors into one line + exit 1."""

    @functools.wraps(func)
    def wrapper(params_path: str, overrides: tuple[str, ...] = (), **kwargs: Any) -> None:
        from meiscope.config import load_params
        from meiscope.errors import MeiscopeError
        from meiscope.summaries import summary_lines

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        _quiet_libraries()
        root = Path(params_path).resolve().parent
        try:
            params = load_params(params_path, overrides)
            result = func(params, root, **kwargs)
        except MeiscopeError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        except OSError as err:
            if not _disk_full(err):
                raise
            click.echo(f"error: {_disk_full_message(err, root)}", err=True)
            sys.exit(1)
        except MemoryError:  # the size checks of params.yaml are lower bounds: the last line of defence
            click.echo(f"error: {params_path}: `meiscope {func.__name__}` ran out of memory; reduce the sizes in "
                       "params.yaml (synthetic.n_cells, .n_images, .repeats, batch sizes)", err=True)
            sys.exit(1)
        for line in summary_lines(func.__name__, result):
            click.echo(line)

    return wrapper


def _stage_help() -> str:
    """The stage list of ``meiscope --help``, from the stage table."""
    from meiscope.pipeline import commands

    rows = [f"  {s.name:<22}  {s.help}" for s in commands()]
    return "\b\n" + "\n".join(rows)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="meiscope")
def main() -> None:
    """meiscope: Most Exciting Inputs of mouse V1 neurons (Allen Brain Observatory).

    The stages, in the order `make run` runs them (`meiscope data`, then `dvc repro`):

    {stages}

    \b
      replicate               (optional, slow) the synthetic study on K new cortices,
                              with confidence intervals; not part of `dvc repro`
      ablation                (optional, slower) what each training stimulus buys, over
                              the replicates (data.recording: container or neuropixels)
      services start|stop     (optional) PostgreSQL + MLflow tracking server for a team
      dvcfile                 write dvc.yaml from the stage table (src/meiscope/pipeline.py)

    Every command reads params.yaml (see --params) and logs an MLflow run.
    """


SESSION_OPTION = click.option("--session", type=int, default=None, metavar="ID",
                              help="A session of sessions.shared instead of the studied one: its own outputs in "
                                   "results/sessions/ID/ (the DVC stages extract-session@ID, rank-session@ID).")
# Options only some stages take, beside --params / --set (all), --device (stages that use one) and --session.
EXTRA_OPTIONS: dict[str, list[Callable[..., Any]]] = {
    "train": [click.option("--resume", is_flag=True,
                           help="Continue interrupted training from the last checkpoints.")],
    "tune": [click.option("--workers", type=int, default=None,
                          help="Local worker processes on one study (default: tune.workers)."),
             click.option("--storage", default=None, envvar="MEISCOPE_TUNE_STORAGE", show_envvar=True,
                          help="Optuna storage URL (postgresql://... joins a study shared by hosts); "
                               "default: tune.storage or the local journal file."),
             click.option("--n-trials", type=int, default=None,
                          help="Trial budget of the study (default: tune.n_trials).")],
}
INTERRUPTED = {"train": "`meiscope train --resume` continues from the last checkpoints (results/train/checkpoints/)"}


def _make_stage_command(stage: Any) -> None:
    """Register ``meiscope <stage>``: thin over the stage's ``run`` function."""
    from meiscope.pipeline import STAGES
    from meiscope.restore import restoring

    # with --session, the command runs this stage's per-session twin (extract-session@ID, ...)
    per_session = next((s for s in STAGES if s.per_session and s.cli_command == stage.name), None)

    def command(params: Any, root: Path, **kwargs: Any) -> Any:
        from meiscope.dvcfile import write_provenance

        session = kwargs.pop("session", None)
        ran = stage
        if session is not None:
            ran = per_session
            kwargs["session"] = session
        try:
            result = stage.run(params, root, **kwargs)
        except KeyboardInterrupt:
            if stage.name not in INTERRUPTED:
                raise
            click.echo(f"\ninterrupted: {INTERRUPTED[stage.name]}", err=True)
            sys.exit(130)
        write_provenance(ran, root, session)
        return result

    command.__name__ = stage.name
    # `dvc repro` deletes the outputs before running the command: a failure copies the last good ones back
    wrapped = restoring(stage, per_session, _stage(command))
    if per_session is not None:
        wrapped = SESSION_OPTION(wrapped)
    for option in reversed(EXTRA_OPTIONS.get(stage.name, [])):
        wrapped = option(wrapped)
    if stage.uses_device:
        wrapped = DEVICE_OPTION(wrapped)
    main.command(name=stage.name, help=stage.module.__doc__, short_help=stage.help)(PARAMS_OPTION(wrapped))


def _register_stages() -> None:
    from meiscope.pipeline import commands

    main.help = (main.help or "").replace("{stages}", _stage_help())
    for stage in commands():
        _make_stage_command(stage)


_register_stages()


@main.command()
@PARAMS_OPTION
@_stage
def synthesize(params: Any, root: Path) -> Any:
    """Write synthetic sessions (Allen NWB layout, known ground truth) into the cache, replacing earlier ones."""
    from meiscope.stages import data

    return data.synthesize(params, root)


@main.command()
@PARAMS_OPTION
@_stage
def download(params: Any, root: Path) -> Any:
    """Download the Allen sessions selected in params.yaml (allen: / neuropixels:)."""
    from meiscope.stages import data

    return data.download(params, root)


@main.command()
@click.option("--check", is_flag=True, help="Only check that the files match the stage table (exit 1 if not).")
@click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False),
              help="The project root holding dvc.yaml and MLproject.")
def dvcfile(check: bool, root: str) -> None:
    """Write dvc.yaml and MLproject from the stage table (src/meiscope/pipeline.py).

    Each stage's code dependencies are computed from what its module imports.
    """
    from meiscope.atomic import write_text
    from meiscope.dvcfile import generated_files

    for path, text in generated_files(Path(root).resolve()).items():
        if not check:
            write_text(path, text)
            click.echo(f"wrote {path}")
        elif not path.is_file() or path.read_text() != text:
            click.echo(f"error: {path} differs from the stage table: run `meiscope dvcfile`", err=True)
            sys.exit(1)


@main.command()
@PARAMS_OPTION
@DEVICE_OPTION
@click.option("--seeds", default=None, help="Comma-separated development seeds (default: replicate.seeds; only "
              "with replicate.protocol development).")
@click.option("--profile", default=None, help="Run the same seeds on this synthetic cortex instead of "
              "synthetic.profile's (e.g. gabor_family beside the default out_of_family); writes "
              "metrics/replicates-<recording>-<profile>.json.")
@_stage
def replicate(params: Any, root: Path, device: str | None, seeds: str | None, profile: str | None) -> None:
    """Rerun the synthetic study on several new cortices; intervals for every headline figure.

    replicate.protocol confirmatory (the default) draws replicate.n_confirmatory seeds from the committed
    src/ and params.yaml and refuses a dirty tree; development runs the fixed replicate.seeds.
    Slow (the whole study per seed) and resumable: a rerun continues where it stopped. Writes
    metrics/replicates.json (replicates-<recording>.json for neuropixels or container) and an interval figure;
    `meiscope report` shows them.
    """
    from meiscope.replicate import replicate as run
    from meiscope.science.catalogue import HEADLINE, format_conclusion, format_interval

    chosen = _seed_list(seeds)
    try:
        summary = run(params, root, seeds=chosen, device=device, profile=profile)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: run `meiscope replicate` again to continue where it stopped", err=True)
        sys.exit(130)
    for figure in HEADLINE:
        if figure.name in summary["figures"]:
            click.echo(f"{figure.label:<55} {format_interval(summary['figures'][figure.name])}")
    for kind, found in summary["conclusions"].items():
        for label, c in found.items():
            click.echo(f"{kind} cells, {label}: {format_conclusion(c)}")


def _seed_list(seeds: str | None) -> list[int] | None:
    from meiscope.errors import MeiscopeError

    try:
        return [int(s) for s in seeds.split(",")] if seeds else None
    except ValueError:
        raise MeiscopeError(f"--seeds: expected comma-separated integers (got {seeds!r})") from None


@main.command()
@PARAMS_OPTION
@DEVICE_OPTION
@click.option("--seeds", default=None, help="Comma-separated replicate seeds (default: those `meiscope replicate` "
              "runs: drawn from the commit, or replicate.seeds under replicate.protocol development).")
@click.option("--arms", default=None, help="Comma-separated arms to run (default: every arm of the recording); "
              "the summary holds the arms run.")
@_stage
def ablation(params: Any, root: Path, device: str | None, seeds: str | None, arms: str | None) -> None:
    """What each training stimulus buys: a recording's replicates, trained on each stimulus set.

    For data.recording container (the default: natural scenes only; + static gratings; + natural
    movies; + sparse noise; all) or neuropixels (natural scenes only; + static gratings and flashes;
    + natural movies one and three; all). Runs (or resumes) the replicates, then every arm on each
    replicate's data. Writes metrics/ablation-<recording>.json and a figure; `meiscope report` shows
    the table.
    """
    from meiscope.ablation import ablation as run, ablation_table

    try:
        summary = run(params, root, seeds=_seed_list(seeds), device=device,
                      arms=[a.strip() for a in arms.split(",")] if arms is not None else None)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: run `meiscope ablation` again to continue where it stopped", err=True)
        sys.exit(130)
    click.echo(ablation_table(summary))


@main.command()
@PARAMS_OPTION
@click.argument("action", type=click.Choice(["start", "stop", "status"]))
@click.option("--expose", is_flag=True,
              help="start: allow a services.host that is not a loopback address (other machines reach both "
                   "servers; the MLflow server has no authentication).")
@_stage
def services(params: Any, root: Path, action: str, expose: bool) -> None:
    """The local team stack: a PostgreSQL server and an MLflow tracking server on it (`make services`).

    Everything they write stays in services.dir; the database passwords stay in a private file
    outside the repository (PGPASSFILE). meiscope uses the stack only when told:
    MEISCOPE_TUNE_STORAGE (or tune --storage) and MLFLOW_TRACKING_URI.
    """
    import shlex

    from meiscope import services as stack

    cfg = params.services
    if action == "stop":
        state = stack.stop(cfg, root)
        stopped = [name for name, up in (("mlflow server", state.mlflow), ("postgresql", state.postgres)) if up]
        for note in state.notes:
            click.echo(note)
        click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return
    if action == "start":
        stack.require_exposure(cfg, expose)
        for line in stack.exposure_lines(cfg):
            click.echo(line)
    # start returns once both answer: no second, shorter health check after it
    state = stack.start(cfg, root, expose=expose) if action == "start" else stack.status(cfg, root)
    for note in state.notes:
        click.echo(note)
    urls = stack.urls(cfg)
    click.echo(f"postgresql     {'up' if state.postgres else 'down'}   {stack.redact(urls.optuna_storage)}")
    click.echo(f"mlflow server  {'up' if state.mlflow else 'down'}   {stack.redact(urls.tracking_uri)}")
    if state.postgres and state.mlflow:
        click.echo("use them in this shell (PGPASSFILE holds the database password):")
        click.echo(f"  export PGPASSFILE={shlex.quote(str(stack.password_file(cfg, root)))}")
        click.echo(f"  export MEISCOPE_TUNE_STORAGE={urls.optuna_storage}")
        click.echo(f"  export MLFLOW_TRACKING_URI={urls.tracking_uri}")

if __name__ == "__main__":
    main()
