"""The Optuna architecture search: runs, prunes, resumes, survives failures, shares one journal."""

import dataclasses

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from meiscope import shared_study, tuning
from meiscope.config import parse_params
from meiscope.dataset import ResponseDataset

SHAPE = (12, 12)


def planted_dataset(path, n_images=48, repeats=4, n_neurons=4, seed=0):
    """Neurons that respond to the rectified contrast under a Gaussian blob at planted positions."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n_images, *SHAPE)).astype(np.float32)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    centres = [(3, 3), (3, 8), (8, 3), (8, 8)][:n_neurons]
    blobs = np.stack([np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0) for y, x in centres])
    rates = np.maximum(np.einsum("nhw,khw->nk", images, blobs), 0)
    trial_image = np.repeat(np.arange(n_images), repeats)
    responses = (rates[trial_image] + 0.3 * rng.normal(size=(len(trial_image), n_neurons))).astype(np.float32)
    split = np.array(["train"] * 36 + ["val"] * 6 + ["test"] * 6)
    ds = ResponseDataset(experiment_id=1, images=images, image_ids=np.arange(n_images), trial_image=trial_image,
                         responses=responses, blank_responses=np.zeros((0, n_neurons), np.float32),
                         cell_ids=np.arange(n_neurons), split=split, dropped_cell_ids=np.zeros(0, np.int64),
                         pixel_mean=127.0, pixel_std=50.0, source="synthetic")
    ds.save(path)
    return ds


@pytest.fixture()
def setup(tmp_path):
    params = parse_params({
        "model": {"layers": 1, "channels": [4], "first_kernel": 5, "batch_norm": False},
        "train": {"lr": 0.02, "batch_size": 16},
        "tune": {"n_trials": 3, "epochs": 12, "pruner_startup_trials": 2, "pruner_warmup_epochs": 0,
                 "space": {"layers": [1, 2], "channels": [2, 6], "first_kernel": [3, 5], "hidden_kernel": [3],
                           "lr": [1e-6, 3e-2], "batch_size": [16]}},
    })
    path = tmp_path / "selected.npz"
    planted_dataset(path)
    return params, path, tmp_path


def _states(study):
    return [t.state for t in study.trials]


def test_tiny_study_runs_and_first_trial_is_the_default(setup):
    params, path, root = setup
    study, new = tuning.run_study(path, params.tune, params.model, params.train, "cpu", root)
    assert new == [0, 1, 2] and len(study.trials) == 3
    first = study.trials[0]
    assert first.params["channels_0"] == 4 and first.params["first_kernel"] == 5 and first.params["lr"] == 0.02
    summary = tuning.summarise(study, params.tune)
    assert summary["n_trials"] == 3 and summary["n_complete"] + summary["n_pruned"] + summary["n_failed"] == 3
    assert summary["default_value"] > 0.15  # the planted neurons are learnable (12 short epochs)
    best = tuning.best_setup(study, params.model, params.tune.space)
    assert best["model"]["layers"] == len(best["model"]["channels"])
    assert yaml.safe_load(yaml.safe_dump(best)) == best


def test_conditional_channels_exist_only_for_present_layers(setup):
    params, path, root = setup
    study = tuning.open_study(params.tune, root)
    study.enqueue_trial({"layers": 1})
    study.enqueue_trial({"layers": 2})
    study.optimize(lambda t: len(tuning.suggest_setup(t, params.tune.space, params.model).model.channels), n_trials=2)
    keys = [set(t.params) for t in study.trials]
    assert "channels_1" not in keys[0] and "hidden_kernel" not in keys[0]
    assert {"channels_0", "channels_1", "hidden_kernel", "depth_separable"} <= keys[1]


def test_planted_bad_trial_is_pruned(setup):
    params, path, root = setup
    ds = ResponseDataset.load(path)
    cfg = params.tune
    study = tuning.open_study(cfg, root)
    good = tuning.default_trial_params(params.model, params.train)
    for _ in range(2):
        study.enqueue_trial(good)
    study.enqueue_trial({**good, "lr": 1e-6})  # learns nothing: falls behind at every epoch
    study.optimize(tuning.make_objective(ds, cfg, params.model, params.train, "cpu"), n_trials=3)
    assert _states(study)[:2] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[2].state == TrialState.PRUNED


def test_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(setup):
    params, path, root = setup
    ds = ResponseDataset.load(path)
    cfg = dataclasses.replace(params.tune, space=dataclasses.replace(params.tune.space, first_kernel=[5, 13]))
    study = tuning.open_study(cfg, root)
    bad = {**tuning.default_trial_params(params.model, params.train), "first_kernel": 13}  # larger than 12x12
    study.enqueue_trial(bad)
    study.optimize(tuning.make_objective(ds, cfg, params.model, params.train, "cpu"), n_trials=3,
                   catch=(Exception,))
    assert study.trials[0].state == TrialState.FAIL
    assert "first_kernel" in study.trials[0].user_attrs[tuning.FAIL_REASON]
    assert len(study.trials) == 3 and TrialState.COMPLETE in _states(study)[1:]


def test_rerun_resumes_and_only_adds_missing_trials(setup):
    params, path, root = setup
    study, first = tuning.run_study(path, params.tune, params.model, params.train, "cpu", root)
    before = {t.number: t.params for t in study.trials}
    study, second = tuning.run_study(path, params.tune, params.model, params.train, "cpu", root, n_trials=5)
    assert first == [0, 1, 2] and second == [3, 4]
    assert {t.number: t.params for t in study.trials if t.number < 3} == before
    study, third = tuning.run_study(path, params.tune, params.model, params.train, "cpu", root, n_trials=5)
    assert third == [] and len(study.trials) == 5


def test_same_seed_gives_the_same_trials(setup, tmp_path_factory):
    params, path, root = setup
    other = tmp_path_factory.mktemp("other")
    a, _ = tuning.run_study(path, params.tune, params.model, params.train, "cpu", root)
    b, _ = tuning.run_study(path, params.tune, params.model, params.train, "cpu", other)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.value for t in a.trials] == [t.value for t in b.trials]


def test_two_workers_share_one_journal_without_lost_or_duplicated_trials(setup):
    params, path, root = setup
    study, new = tuning.run_study(path, params.tune, params.model, params.train, "cpu", root, workers=2, n_trials=4)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == [0, 1, 2, 3] and new == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in study.trials)
    assert len({t.user_attrs[shared_study.TUNER] for t in study.trials}) == 1  # all run by this invocation


def test_study_name_follows_what_the_trials_compute(setup):
    params, _, _ = setup
    a = tuning.keyed_study(params.tune, params.model, params.train, "data-1")
    assert a.study_name == tuning.keyed_study(params.tune, params.model, params.train, "data-1").study_name
    assert a.study_name.startswith(params.tune.study_name)
    wider = dataclasses.replace(params.tune, space=dataclasses.replace(params.tune.space, layers=[1, 3]))
    others = [tuning.keyed_study(wider, params.model, params.train, "data-1"),
              tuning.keyed_study(params.tune, params.model, params.train, "data-2"),
              tuning.keyed_study(dataclasses.replace(params.tune, n_trials=50), params.model, params.train, "data-1")]
    assert others[0].study_name != a.study_name and others[1].study_name != a.study_name
    assert others[2].study_name == a.study_name  # a bigger budget resumes the same study


def test_study_name_changes_with_the_training_code_and_the_container_schedule(setup, monkeypatch):
    import meiscope.model

    params, _, _ = setup
    a = tuning.keyed_study(params.tune, params.model, params.train, "data-1")
    assert meiscope.model.code_digest() == meiscope.model.code_digest()
    fewer = dataclasses.replace(params.train, batches_per_source=params.train.batches_per_source + 1)
    assert tuning.keyed_study(params.tune, params.model, fewer, "data-1").study_name != a.study_name
    # an edit of the model package (same settings, same data) must not resume trials scored by the old code
    monkeypatch.setattr(meiscope.model, "code_digest", lambda: "0" * 32)
    assert tuning.keyed_study(params.tune, params.model, params.train, "data-1").study_name != a.study_name


def _config(t):
    return tuple(sorted(t.params.items()))


def test_two_workers_never_try_the_same_configuration(setup):
    params, path, root = setup
    study, _ = tuning.run_study(path, params.tune, params.model, params.train, "cpu", root, workers=2, n_trials=6)
    configs = [_config(t) for t in study.trials]
    assert len(configs) == 6 and len(set(configs)) == 6


def test_a_killed_run_is_resumed_without_repeating_finished_work(setup):
    """Kill = a trial left RUNNING in the journal. The rerun retries it once and reaches the budget."""
    params, path, root = setup
    study, first = tuning.run_study(path, params.tune, params.model, params.train, "cpu", root)
    finished = {_config(t) for t in study.trials}
    study.sampler = optuna.samplers.TPESampler(seed=99)  # the dead worker's own sampler (not a replay of seed 0)
    killed = study.ask()
    tuning.suggest_setup(killed, params.tune.space, params.model)  # it had drawn its configuration, then died
    killed_config = _config(study.trials[-1])
    study, second = tuning.run_study(path, params.tune, params.model, params.train, "cpu", root, n_trials=6)
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed.number].state == TrialState.FAIL
    assert "interrupted" in by_number[killed.number].user_attrs[tuning.FAIL_REASON]
    retries = [t for t in study.trials if t.user_attrs.get(tuning.RETRY_OF) == killed.number]
    assert len(retries) == 1 and _config(retries[0]) == killed_config  # its configuration, once more
    new_configs = [_config(by_number[n]) for n in second if n != killed.number]
    assert not finished & set(new_configs)  # no finished configuration evaluated again
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 6  # budget reached
    # a seed of its own: the resumed run did not replay the first run's start-up sequence
    assert tuning.sampler_seed(0, 0, 0) == 0 and len({tuning.sampler_seed(0, w, n) for w in (0, 1) for n in (0, 4)}) == 4


def test_trials_carry_their_story_for_optuna_dashboard(setup):
    params, path, root = setup
    study, _ = tuning.run_study(path, params.tune, params.model, params.train, "cpu", root)
    assert study.metric_names == [params.tune.objective]
    assert study.study_name == params.tune.study_name  # run_study uses the name it is given (keyed by the stage)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done and all({"best_epoch", "epochs", f"final_{params.tune.objective}"} <= set(t.user_attrs) for t in done)
    assert all(1 <= t.user_attrs["best_epoch"] <= t.user_attrs["epochs"] == params.tune.epochs for t in done)
    best = tuning.best_setup(study, params.model, params.tune.space)
    assert best["study"] == study.study_name


# --------------------------------------------------------------------------------------
# the shared study on a real RDB storage (sqlite): heartbeats and the exact budget
# --------------------------------------------------------------------------------------
def _sqlite_tune(tmp_path, name, n_trials):
    return parse_params({"tune": {"study_name": name, "n_trials": n_trials,
                                  "storage": f"sqlite:///{tmp_path / 'optuna.db'}"}}).tune


def test_a_running_trial_beats_and_a_silent_one_is_failed_and_retried(tmp_path, monkeypatch):
    """run_claimed_trial beats through the storage it is given: past the grace period its trial is
    still alive, while a trial whose worker stopped beating goes to the next claim, once more."""
    import time

    monkeypatch.setattr(shared_study, "HEARTBEAT_S", 1)
    monkeypatch.setattr(shared_study, "GRACE_S", 2)
    cfg = _sqlite_tune(tmp_path, "beats", 3)
    storage = tuning.open_storage(cfg, tmp_path)
    study = tuning.open_study(cfg, tmp_path, storage=storage)
    silent = shared_study.claim_trial(study, budget=3)
    silent.suggest_float("lr", 1e-3, 1e-1, log=True)
    storage.record_heartbeat(shared_study.storage_trial_id(storage, study, silent.number))  # beat once, then died
    other = tuning.open_study(cfg, tmp_path)  # another worker, on its own storage object
    retried = []

    def objective(trial):
        trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        time.sleep(3.5)  # past the grace period: only its heartbeats keep it running
        retried.append(shared_study.claim_trial(other, budget=3))  # the claim fails stale trials first
        return 1.0

    running = shared_study.claim_trial(study, budget=3)
    # a first beat as the silent one had: without the worker's own beats it would go stale in the sleep
    storage.record_heartbeat(shared_study.storage_trial_id(storage, study, running.number))
    shared_study.run_claimed_trial(study, running, objective, storage)
    by_number = {t.number: t for t in study.trials}
    assert [t.state for t in study.trials[:2]] == [TrialState.FAIL, TrialState.COMPLETE]
    assert retried[0].number == 2 and by_number[2].params == by_number[silent.number].params
    # the complete trial and the running retry use up a budget of 2 (a failed trial does not)
    assert shared_study.claim_trial(study, budget=2) is None


def _claim_until_spent(cfg, root, budget, start):
    """One worker process: claims (under the study lock) and runs trivial trials until the budget is spent."""
    import os
    import time

    def objective(trial):
        time.sleep(0.2)  # long enough for the other worker to claim meanwhile
        return trial.suggest_float("x", 0, 1)

    storage = tuning.open_storage(cfg, root)
    study = tuning.open_study(cfg, root, storage=storage)
    start.wait()  # both workers claim from the same moment on
    while True:
        with tuning.study_lock(cfg, root, None):
            trial = shared_study.claim_trial(study, budget)
        if trial is None:
            return
        trial.set_user_attr("pid", os.getpid())
        shared_study.run_claimed_trial(study, trial, objective, storage)


def test_two_worker_processes_meet_the_budget_exactly_on_an_rdb_storage(tmp_path):
    import multiprocessing

    cfg = _sqlite_tune(tmp_path, "budget", 7)
    tuning.open_study(cfg, tmp_path)  # one process creates the tables
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_claim_until_spent, args=(cfg, tmp_path, 7, start)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    trials = tuning.open_study(cfg, tmp_path).trials
    assert [t.number for t in trials] == list(range(7)) and {t.state for t in trials} == {TrialState.COMPLETE}
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both took part
