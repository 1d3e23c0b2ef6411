"""Trials per hour of one tuning study on PostgreSQL, with 1 and 2 worker processes on this machine.

    .venv/bin/python bench/bench_tune_workers.py [--trials 16] [--workers 1,2] [--storage URL]

Times meiscope's own `tune` machinery (``tuning.run_study``: budget claims under the study lock,
heartbeats, one process per worker) on the default study's selected neurons and params.yaml's
``tune`` settings; each worker count gets a fresh study. Needs the default study's extract and
rank outputs (`make run` first). Without ``--storage`` it starts the team stack (`make services`'
code) in a temporary folder and stops it afterwards. Also reports the peak number of PostgreSQL
connections, the figure that limits how many workers one server takes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import stat
import sys
import os
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from common import RESULTS, describe, machine  # sets up sys.path and OMP_WAIT_POLICY

from meiscope import services, tuning  # noqa: E402
from meiscope.paths import Layout  # noqa: E402
from meiscope.study import selected_dataset  # noqa: E402
from meiscope.config import ServicesConfig, load_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _connections(url: str, stop: threading.Event, peak: list[int]) -> None:
    """Sample the server's client connections every 0.2 s; keep the largest count in ``peak[0]``."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
    while not stop.wait(0.2):
        with engine.connect() as conn:
            peak[0] = max(peak[0], int(conn.execute(query).scalar()) - 1)  # minus this sampler's own
    engine.dispose()


def time_study(dataset: Path, workers: int, trials: int, url: str, scratch: Path) -> dict:
    """One fresh study of ``trials`` trials with ``workers`` processes: wall time, states, peak connections."""
    params = load_params(ROOT / "params.yaml")
    cfg = replace(params.tune, study_name=f"bench-{workers}w-{uuid.uuid4().hex[:8]}")
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_connections, args=(url, stop, peak), daemon=True)
    sampler.start()
    start = time.perf_counter()
    study, _ = tuning.run_study(dataset, cfg, params.model, params.train, "cpu", scratch, storage_url=url,
                                workers=workers, n_trials=trials)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    states = [t.state.name for t in study.trials]
    return {"workers": workers, "trials": len(states), "seconds": round(seconds, 1),
            "trials_per_hour": round(3600 * len(states) / seconds, 1),
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
            "distinct_configurations": len({tuple(sorted(t.params.items())) for t in study.trials}),
            "peak_connections": peak[0]}


def claim_overhead(url: str, scratch: Path, sizes: list[int], repeats: int = 10) -> list[dict]:
    """Seconds per trial spent outside training, as a study grows: the locked claim (stale check,
    read of all trials, ``ask``) plus TPE's suggestions for the whole search space, on a study
    pre-filled with ``size`` finished trials drawn at random from the space."""
    import optuna

    from meiscope import shared_study

    params = load_params(ROOT / "params.yaml")
    rows = []
    for size in sizes:
        cfg = replace(params.tune, study_name=f"bench-overhead-{size}-{uuid.uuid4().hex[:8]}")
        study = tuning.open_study(cfg, scratch, url)
        filler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=size))
        filler.optimize(lambda t: (tuning.suggest_setup(t, cfg.space, params.model), 0.0)[1], n_trials=size)
        study.add_trials([replace_value(t, i) for i, t in enumerate(filler.trials)])
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            with tuning.study_lock(cfg, scratch, url):
                trial = shared_study.claim_trial(study, budget=size + repeats)
            tuning.suggest_setup(trial, cfg.space, params.model)
            seconds.append(time.perf_counter() - start)
            study.tell(trial, 0.0)
        rows.append({"finished_trials": size, "seconds_per_claim_and_suggest": round(sorted(seconds)[repeats // 2], 4)})
    return rows


def replace_value(trial, index: int):
    """A finished trial with a varied objective value (so TPE splits good from bad)."""
    import optuna

    return optuna.trial.create_trial(params=trial.params, distributions=trial.distributions,
                                     value=float((index * 7919) % 1000) / 1000.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--storage", default=None, help="an existing PostgreSQL URL (default: start a stack)")
    parser.add_argument("--overhead", default="100,1000,3000",
                        help="study sizes at which to time one claim + suggestion ('' to skip)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tune_workers_cpu.json")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    scratch = Path(tempfile.mkdtemp(prefix="meiscope-bench-tune-"))
    # the scratch stack's password file goes into a scratch folder too, not into ~/.config/meiscope
    own_secrets = None if services.SECRETS_ENV in os.environ else tempfile.mkdtemp(prefix="meiscope-bench-secrets-")
    if own_secrets:
        os.environ[services.SECRETS_ENV] = own_secrets
    scratch.chmod(scratch.stat().st_mode | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    stack = ServicesConfig(postgres_port=5491, mlflow_port=5492)
    try:
        dataset = scratch / "selected.npz"
        selected_dataset(Layout.from_params(params, ROOT)).save(dataset)
        url = args.storage
        if url is None:
            services.start_postgres(stack, scratch)
            os.environ.update(services.client_env(stack, scratch))  # PGPASSFILE: the workers log in with it
            url = services.urls(stack).optuna_storage
        rows = [time_study(dataset, int(w), args.trials, url, scratch) for w in args.workers.split(",") if w]
        overhead = claim_overhead(url, scratch, [int(n) for n in args.overhead.split(",") if n])
    finally:
        if args.storage is None:
            services.stop_postgres(stack, scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        if own_secrets:
            shutil.rmtree(own_secrets, ignore_errors=True)
    print(f"\n{describe(machine())}: tune on PostgreSQL, {args.trials} trials of {params.tune.epochs} epochs each")
    print("| workers | seconds | trials / hour | complete / pruned / failed | distinct configs | peak connections |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['seconds']} | {r['trials_per_hour']} | {r['complete']} / {r['pruned']} / "
              f"{r['failed']} | {r['distinct_configurations']} | {r['peak_connections']} |")
    if overhead:
        print("\n| finished trials in the study | s per claim + suggestion (median) |\n|---|---|")
        for r in overhead:
            print(f"| {r['finished_trials']} | {r['seconds_per_claim_and_suggest']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "epochs": params.tune.epochs, "rows": rows,
                                    "overhead": overhead}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
