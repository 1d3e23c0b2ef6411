"""Stage ``train``: the CNN ensemble (shared core + per-neuron readouts) and the LN baseline on the selected
neurons, evaluated on test images (and, on synthetic data, against the true rates on fresh scenes).

With ``sessions.shared``, every member's core is trained with those sessions' selected cells too (one
readout per session); the ensemble written is the studied session's, as without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meiscope.config import Params
from meiscope.paths import Layout
from meiscope.recordings import recording_of
from meiscope.study import selected_dataset, shared_session_datasets, tuned_configs


def run(params: Params, root: Path, device: str | None = None, resume: bool = False) -> dict:
    """Train and evaluate the ensemble; ``resume`` continues from the last checkpoints."""
    from meiscope.config import flat_dict
    from meiscope.tracking import file_hash, log_ensemble, log_training_data, start_run
    from meiscope.model.fitting import GroundTruth, TrainingData, TrainOutputs, fit_ensemble

    layout = Layout.from_params(params, root)
    ds = selected_dataset(layout)
    others = shared_session_datasets(params, layout, ds.experiment_id)  # their readouts share the core
    extra = recording_of(params).training_extras(layout.dataset(ds.experiment_id), ds.cell_ids)
    model_cfg, train_cfg, tuned = tuned_configs(params, layout)
    truth_fn, fresh, kinds = _ground_truth(params, layout, ds, train_cfg)
    tags = {"architecture": "tuned" if tuned else "params.yaml",
            "ranking_md5": file_hash(layout.ranking / "ranking.csv"),
            "dataset_md5": file_hash(layout.dataset(ds.experiment_id))}
    if others:
        tags["shared_sessions"] = ",".join(str(o.experiment_id) for o in others)
    with start_run(params, "train", root, sections=("train",), tags=tags) as mlf:
        if mlf is not None:
            mlf.log_params({k: str(v) for k, v in flat_dict(model_cfg, "model.").items()})
            mlf.log_params({"effective.lr": train_cfg.lr, "effective.batch_size": train_cfg.batch_size})
        truth = None if truth_fn is None else GroundTruth(truth_fn, fresh_images=fresh, kinds=kinds)
        metrics = fit_ensemble(TrainingData(ds, other_sessions=others, extra=extra), model_cfg, train_cfg,
                               TrainOutputs(layout.ensemble, layout.train, layout.metrics_file("train")),
                               truth=truth, device=device or train_cfg.device, resume=resume, log=mlf)
        if mlf is not None:
            log_training_data(mlf, ds, layout.dataset(ds.experiment_id))
            log_ensemble(mlf, layout.ensemble, registered_name=f"{params.tracking.experiment}-ensemble",
                         crop=params.extract.crop)
    return metrics


def _ground_truth(params: Params, layout: Layout, ds: Any, train_cfg: Any) -> tuple[Any, Any, Any]:
    """Synthetic sessions: the true rates as a function of model images, fresh scenes and each cell's kind."""
    from meiscope import truth

    population = truth.load_population(layout.cache_dir, ds.experiment_id)
    if population is None:
        return None, None, None
    truth_fn = truth.rates_for_model_images(population, ds.to_pixels, ds.cell_ids)
    kinds = [population.kinds[c] for c in truth.cell_columns(population, ds.cell_ids)]
    fresh = truth.fresh_model_images(layout.cache_dir, ds.experiment_id, train_cfg.fresh_scenes,
                                     train_cfg.fresh_seed, params.extract.crop, ds.images.shape[1:],
                                     ds.pixel_mean, ds.pixel_std, progress=True)
    return truth_fn, fresh, kinds
