"""One Optuna study shared by tuning processes on one host or on many.

Every ``meiscope tune`` process (a worker) talks to the study only through its storage, so the
rules that keep the workers honest live in the storage too:

* **The study lock.** A PostgreSQL advisory lock keyed by the study name when the storage is a
  PostgreSQL URL (it serialises processes on every host that reaches the server); a lock file
  beside the local journal otherwise (the worker processes of one `tune` invocation). Every decision that reads the study
  and then writes to it is taken under it, so two workers never both take the last trial.
* **Budget claims.** A worker takes a trial (``study.ask()``) only under the lock, and only while
  finished + running + waiting trials are fewer than the budget (or a waiting trial, an enqueued
  default or retry, is there to take). So the budget is met exactly: none lost, none run twice.
  (Optuna 5.0 has no exact budget across processes: its ``MaxTrialsCallback`` stops a worker's
  ``optimize`` only after a trial has finished, and unlocked, so each other worker may start one more.)
* **Worker numbers.** Each worker that joins the study takes the next number from the study's
  ``workers_joined`` attribute; the number seeds its sampler, so no two workers on any host
  replay the same random start-up configurations. The first worker of a new study gets
  ``tune.seed`` itself: a one-worker study is reproducible.
* **Heartbeats.** On an RDB storage every running trial records a heartbeat; a worker that dies
  stops beating, and the next claim by any worker marks its trial failed and enqueues its
  configuration once more (Optuna's ``RetryHeartbeatStaleTrialCallback``). Optuna beats only
  inside ``study.optimize``; with ``ask``/``tell`` the worker beats itself, through the storage
  object it built (a study does not hand out its storage) and the trial's id that the storage
  looks up from the study name and trial number.
* **One MLflow parent.** The study's ``mlflow_parent_run_id`` attribute names the MLflow run under
  which every trial is logged; the first ``tune`` process that starts on the study (or finds the
  attribute pointing at a run its tracking store does not hold) sets it to its own run, under the
  lock. Every ``tune`` run is tagged with the study name and the parent it found.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from meiscope.errors import MeiscopeError

log = logging.getLogger(__name__)

WORKERS_JOINED = "workers_joined"  # study user attribute: how many workers have joined
PARENT_RUN = "mlflow_parent_run_id"  # study user attribute: the MLflow run every trial nests under
TUNER = "tuner"  # trial user attribute: the `tune` invocation that ran it (each logs its own trials)
FINISHED = ("COMPLETE", "PRUNED")  # trial states that have used up their share of the budget
HEARTBEAT_S = 20  # a running trial's heartbeat on an RDB storage...
GRACE_S = 90  # ...and how long without one before another worker declares it dead


def is_postgresql(url: str | None) -> bool:
    """True for a PostgreSQL storage URL (``postgresql://`` or ``postgresql+driver://``)."""
    return bool(url) and url.split(":", 1)[0].split("+", 1)[0] == "postgresql"


def lock_key(study_name: str) -> int:
    """A signed 63-bit key for ``pg_advisory_lock`` derived from the study name."""
    return int(hashlib.md5(study_name.encode()).hexdigest()[:15], 16)


@contextlib.contextmanager
def postgres_lock(url: str, name: str) -> Iterator[None]:
    """Hold PostgreSQL's advisory lock ``name`` (any host that reaches the server waits for it)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": lock_key(name)})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(name)})
    finally:
        engine.dispose()


@contextlib.contextmanager
def study_lock(storage_url: str | None, lock_file: Path, study_name: str) -> Iterator[None]:
    """Hold the study's lock (see the module docstring) for the duration of the block."""
    if is_postgresql(storage_url):
        with postgres_lock(storage_url, study_name):
            yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def join_study(study: Any) -> tuple[int, int]:
    """Take the next worker number (call under the lock). Returns (number, trials finished so far)."""
    number = int(study.user_attrs.get(WORKERS_JOINED, 0))
    study.set_user_attr(WORKERS_JOINED, number + 1)
    return number, count_finished(study)


def count_finished(study: Any) -> int:
    """Trials complete or pruned: the search done so far."""
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def claim_trial(study: Any, budget: int) -> Any | None:
    """Take the next trial if the budget allows (call under the lock); None when it is spent.

    Counted against the budget: complete, pruned, running and waiting trials. Failed trials are
    not (a crashed configuration does not use up the search). Dead workers' trials are failed
    first, so their slots (and a retry of their configuration) go to the living.
    """
    import warnings

    import optuna
    from optuna.storages import fail_stale_trials

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # fail_stale_trials
        warnings.filterwarnings("ignore", message="Heartbeat of storage")  # we beat ourselves (heartbeat())
        fail_stale_trials(study)
        # optuna.study.MaxTrialsCallback counts the same way, but only after a trial ends and outside
        # any lock (Optuna 5.0): counting here, under the study lock, before the ask is what makes it exact
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        counted = sum(s in (*FINISHED, "RUNNING", "WAITING") for s in states)
        if "WAITING" not in states and counted >= budget:
            return None
        return study.ask()  # pops the oldest waiting trial, else creates one


def storage_trial_id(storage: Any, study: Any, number: int) -> int:
    """The storage's id of trial ``number`` of ``study`` (what the storage's own methods take).

    ``storage`` is the object the study was opened on (:func:`meiscope.tuning.open_storage`): Optuna
    keeps a study's storage and a trial's id private; the storage's look-ups are public.
    """
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


@contextlib.contextmanager
def heartbeat(storage: Any, trial_id: int) -> Iterator[None]:
    """Record a heartbeat for ``trial_id`` at the storage's heartbeat interval while the block runs.

    Only a storage with a heartbeat interval (an RDB storage opened with one) beats; others (the
    journal) run the block as it is. Optuna 5.0 names no public "is heartbeat enabled" test (its
    ``is_heartbeat_enabled`` lives in a private module, and storages have no such method): the
    storage's public ``get_heartbeat_interval()`` answers the same question.
    """
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as err:  # noqa: BLE001 - a lost beat (database hiccup) must not end the beating
                log.warning("heartbeat of trial id %s not recorded: %s", trial_id, err)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_claimed_trial(study: Any, trial: Any, objective: Callable[[Any], float], storage: Any) -> None:
    """Run ``objective`` on a claimed trial (beating its heartbeat) and tell the study how it ended.

    ``storage``: the storage object ``study`` was opened on (its heartbeats are recorded there).
    Pruned and crashed trials end in PRUNED / FAIL (the crash's reason is the objective's business);
    only an interrupt (Ctrl-C) propagates, leaving the trial failed.
    """
    import optuna
    from optuna.trial import TrialState

    try:
        with heartbeat(storage, storage_trial_id(storage, study, trial.number)):
            value = objective(trial)
    except optuna.TrialPruned:
        state, value = TrialState.PRUNED, None
    except Exception:  # noqa: BLE001 - one trial's crash must not stop the study
        state, value = TrialState.FAIL, None
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        state = TrialState.COMPLETE
    study.tell(trial, value, state=state)


def parent_run(study: Any, own_run_id: str, run_exists: Callable[[str], bool]) -> str:
    """The MLflow run that this study's trials nest under (call under the lock).

    The study's ``mlflow_parent_run_id`` if its tracking store holds that run; otherwise
    ``own_run_id``, recorded in the study for every later process on every host.
    """
    recorded = study.user_attrs.get(PARENT_RUN)
    if recorded and run_exists(str(recorded)):
        return str(recorded)
    study.set_user_attr(PARENT_RUN, own_run_id)
    return own_run_id


def require_shared_storage(storage_url: str | None) -> None:
    """Refuse an RDB URL that this module cannot lock across hosts (only PostgreSQL is supported)."""
    if storage_url and not is_postgresql(storage_url) and not storage_url.startswith("sqlite:"):
        raise MeiscopeError(f"tune.storage {storage_url.split('://')[0]}://...: only postgresql:// (shared by "
                            "hosts), sqlite:/// or the default journal file (one host) are supported")
