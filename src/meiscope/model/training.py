"""Train one seeded ensemble member: Adam, LR-on-plateau, early stopping, resumable checkpoints.

A member is trained on one session (:func:`train_one`) or with its core shared by several
sessions, one readout each (:func:`train_shared`; one batch = one session's images).

The loop, per epoch: shuffle the train images (seeded generator), take Adam steps on the
repeat-weighted loss of image means plus penalties, score the validation images
(correlation to the average over repeats, FEVE), step the LR scheduler on that correlation,
keep the best weights, stop after ``patience`` epochs without improvement, and write a
checkpoint holding everything the next epoch depends on (weights, optimiser, scheduler, both
RNG states, counters, history). ``resume=True`` continues from it and reaches bit-identical
weights on the CPU. On CUDA, ``grid_sample``'s backward pass (Gaussian readout) accumulates
with atomic adds, so two runs (or a run and its resumption) agree closely (~1e-3 in the
weights after 10 epochs on an H100) but not bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import warnings
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from meiscope.config import ModelConfig, TrainConfig, as_dict
from meiscope.dataset import ResponseDataset
from meiscope.errors import MeiscopeError
from meiscope.model import resolve_device
from meiscope.model.data import ResponseNormalisation, SplitTensors, batch_indices, fit_normalisation, split_tensors
from meiscope.model.ensemble import save_torch
from meiscope.model.evaluation import corr_to_average, feve
from meiscope.model.network import ResponseModel, check_model_config, place_model
from meiscope.model.readouts import GaussianReadout, map_peaks
from meiscope.model.sessions import SharedCoreModel, build_shared_model, session_key
from meiscope.model.sources import (MovieHead, MovieSource, build_sources, core_position_map, extra_batches,
                                    movie_loss, movie_position_maps, rf_init_map, scaled_learning_rate,
                                    scene_statistics, trial_loss, warmup_factor)

if TYPE_CHECKING:
    from meiscope.model.source_protocol import TrainingSource

# Poisson log(0) guard: the model output ELU(x)+1 can approach 0.
_EPS = 1e-6
CHECKPOINT_FORMAT = 2  # 2: the state of a SharedCoreModel (core + one readout per session)


class TrainingError(MeiscopeError, ValueError):
    """The data cannot train a model, or a checkpoint is unusable."""


@dataclass
class TrainResult:
    """One trained member.

    Attributes:
        model: the member (of the studied session) with its best (highest validation correlation)
            weights, in eval mode.
        history: one dict per epoch: ``epoch``, ``train_loss``, ``val_corr_to_avg``, ``val_feve``, ``lr``.
        normalisation: the dF/F <-> normalised-unit map the member was trained with.
        seed: its seed.
        best_epoch: epoch (1-based) of the restored weights.
        best_val_corr: their mean validation correlation to the average.
        stop_reason: ``patience`` | ``max_epochs`` | ``callback``.
        epochs_run: epochs computed by this call (others were loaded from the checkpoint).
        shared_model: the whole :class:`~meiscope.model.sessions.SharedCoreModel` (every session's
            readout; ``model`` is its studied-session view), same weights and mode.
    """

    model: ResponseModel
    history: list[dict]
    normalisation: ResponseNormalisation
    seed: int
    best_epoch: int
    best_val_corr: float
    stop_reason: str
    epochs_run: list[int] = field(default_factory=list)
    shared_model: Optional[SharedCoreModel] = None


def loss_kind(model_cfg: ModelConfig, ds: ResponseDataset) -> str:
    """``model.loss``, with ``auto`` resolved from what the responses are (``ds.response_kind``):
    Poisson for spike counts, MSE for dF/F (which can be negative)."""
    if model_cfg.loss != "auto":
        return model_cfg.loss
    return "poisson" if ds.response_kind == "counts" else "mse"


def response_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, kind: str) -> torch.Tensor:
    """Repeat-weighted loss of image means (scalar).

    ``pred``, ``target`` ``(B, n)`` in normalised units, ``weights`` ``(B,)`` repeats.
    ``mse``: squared error; ``poisson``: ``pred - target * log(pred)`` (targets >= 0). Both are
    averaged over neurons, then weighted over images: equal to the single-trial loss up to a constant.
    """
    if kind == "mse":
        per = (pred - target).pow(2)
    elif kind == "poisson":
        per = pred - target * torch.log(pred + _EPS)
    else:
        raise ValueError(f"unknown loss {kind!r}")
    return (per.mean(dim=1) * weights).sum() / weights.sum()


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Ask torch for deterministic kernels while training; restore the caller's setting after."""
    if device.type == "cuda":
        # cuBLAS needs this before its first use to be deterministic (no effect if already set).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings():
            # Known and documented above: the one op without a deterministic CUDA kernel.
            warnings.filterwarnings("ignore", message="grid_sampler_2d_backward_cuda does not have a deterministic")
            yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _fingerprint(model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int,
                 datasets: Sequence[ResponseDataset], extra: "Optional[TrainingSource]" = None) -> str:
    """What a checkpoint must match to be resumed (configuration and every session's data, not max_epochs)."""
    digest = hashlib.md5()
    for ds in datasets:
        for array in (ds.images, ds.responses, ds.trial_image, ds.cell_ids, ds.split.astype(str)):
            digest.update(np.ascontiguousarray(array).tobytes())
    if extra is not None:
        for array in [extra.kernel, *(a for t in extra.trials for a in (t.images, t.responses, t.trial_image)),
                      *(a for m in extra.movies for a in (m.frames, m.trace))]:
            digest.update(np.ascontiguousarray(array).tobytes())
    key = {"model": as_dict(model_cfg), "seed": int(seed), "lr": train_cfg.lr, "batch_size": train_cfg.batch_size,
           "weight_decay": train_cfg.weight_decay, "patience": train_cfg.patience, "data": digest.hexdigest()}
    if len(datasets) > 1:
        key["sessions"] = [int(ds.experiment_id) for ds in datasets]
    if extra is not None:
        key["batches_per_source"] = train_cfg.batches_per_source
        key["source_warmup_epochs"] = train_cfg.source_warmup_epochs
        key["relocate_epochs"] = list(train_cfg.relocate_epochs)
    return json.dumps(key, sort_keys=True)


def _init_bias(model: ResponseModel, targets: torch.Tensor, weights: torch.Tensor) -> None:
    """Start each neuron's output at its mean train target (inverse of ELU(x)+1)."""
    mean = ((targets * weights[:, None]).sum(0) / weights.sum()).clamp_min(1e-3)
    with torch.no_grad():
        model.readout.bias.copy_(torch.where(mean >= 1, mean - 1, torch.log(mean)))


RELOCATE_DISTANCE = 3.0  # pixels: a readout this far from its neuron's best position jumps there


@torch.no_grad()
def relocate_readouts(model: ResponseModel, train: SplitTensors, sources: Sequence[Any],
                      kernel: Optional[np.ndarray]) -> int:
    """Move each Gaussian readout that sits :data:`RELOCATE_DISTANCE` or more pixels from the peak of
    its neuron's :func:`~meiscope.model.sources.core_position_map` to that peak; the number moved.

    Gradient descent only refines a readout's position locally, so a neuron started far from its
    receptive field (a weak cell's noisy start map) stays there and is never learned; after some
    epochs the core's features find it. Its feature weights are kept (the next steps refit them).
    Other readouts (factorized masks) are left alone.
    """
    readout = model.readout
    if not isinstance(readout, GaussianReadout):
        return 0
    peaks = map_peaks(core_position_map(model, train, sources, kernel)).to(readout.mu.device, readout.mu.dtype)
    current = readout.positions()
    far = (peaks - current).norm(dim=1) >= RELOCATE_DISTANCE
    readout.init_positions_(torch.where(far[:, None], peaks, current))
    return int(far.sum())


def _val_trials(ds: ResponseDataset, val: SplitTensors) -> tuple[np.ndarray, np.ndarray]:
    """Validation trials ``(n_val_trials, n)`` and their image's row in ``val`` ``(n_val_trials,)``."""
    position = np.full(ds.n_images, -1)
    position[val.index] = np.arange(len(val.index))
    keep = position[ds.trial_image] >= 0
    return ds.responses[keep], position[ds.trial_image[keep]]


@torch.no_grad()
def _predict_units(model: ResponseModel, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Eval-mode outputs ``(n, n_neurons)`` for device images ``(n, 1, H, W)``."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])
    model.train(was_training)
    return out


def _load_checkpoint(path: Path, device: torch.device) -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # truncated / foreign file
        raise TrainingError(f"{path}: unreadable checkpoint ({type(err).__name__}); delete it to start over") from None
    if not isinstance(state, dict) or "format" not in state:
        raise TrainingError(f"{path}: not a meiscope training checkpoint (format {CHECKPOINT_FORMAT}); delete it")
    if state["format"] != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: a checkpoint of format {state['format']} (this meiscope writes and resumes "
                            f"format {CHECKPOINT_FORMAT}); delete it or train without resume")
    return state


@dataclass
class _Session:
    """One session's training data on the device, as the loop uses it.

    Attributes:
        key: its :func:`~meiscope.model.sessions.session_key`.
        ds: the dataset (restricted to the modelled neurons).
        normalisation: its dF/F <-> normalised-unit map (fitted on its train images).
        train, val: its train and validation images and targets.
        val_responses, val_trial_image: its validation trials (see :func:`_val_trials`).
    """

    key: str
    ds: ResponseDataset
    normalisation: ResponseNormalisation
    train: SplitTensors
    val: SplitTensors
    val_responses: np.ndarray
    val_trial_image: np.ndarray


def _check_trainable(ds: ResponseDataset, model_cfg: ModelConfig) -> None:
    """Refuse a session that cannot train or early-stop a model (one-line :class:`TrainingError`)."""
    check_model_config(model_cfg, ds.n_neurons, ds.images.shape[1:])
    repeats = ds.repeats()
    n_train = int((repeats[ds.image_indices("train")] > 0).sum())
    n_val = int((repeats[ds.image_indices("val")] > 0).sum())
    if n_train < 2:
        raise TrainingError(f"dataset {ds.experiment_id}: needs >= 2 train images with trials (has {n_train})")
    if n_val < 2:
        raise TrainingError(f"dataset {ds.experiment_id}: needs >= 2 validation images with trials for early "
                            f"stopping (has {n_val}; see extract.split.val_fraction)")


def _check_sessions(datasets: Sequence[ResponseDataset], model_cfg: ModelConfig) -> None:
    """Refuse sessions that cannot share one core: none, repeated ids, other image sizes, too few images."""
    if not datasets:
        raise TrainingError("training needs at least one session")
    ids = [int(ds.experiment_id) for ds in datasets]
    if len(set(ids)) != len(ids):
        raise TrainingError(f"sessions sharing a core must be distinct experiments (got {ids})")
    shape = datasets[0].images.shape[1:]
    for ds in datasets:
        if ds.images.shape[1:] != shape:
            raise TrainingError(f"dataset {ds.experiment_id}: images of {ds.images.shape[1:]} cannot share a core "
                                f"with the studied session's {shape} (same extract.image_height / image_width)")
        _check_trainable(ds, model_cfg)


def without_scenes_of(ds: ResponseDataset, scene_ids: np.ndarray) -> ResponseDataset:
    """``ds`` with every image showing one of ``scene_ids`` (template ids) moved to its ``test`` split.

    The sessions of a study see the same scenes (the same template): a scene that is a test image
    of the studied session must not be trained on, or validated on, through another session.
    With the same ``extract.split`` and the same scenes the splits agree and nothing moves.
    """
    hidden = np.isin(ds.image_ids, scene_ids) & (ds.split != "test")
    if not hidden.any():
        return ds
    split = ds.split.copy()
    split[hidden] = "test"
    return dataclasses.replace(ds, split=split)


def _prepare_session(ds: ResponseDataset, model_cfg: ModelConfig, device: torch.device) -> _Session:
    """Normalisation (from the train image means), device tensors and validation trials of one session."""
    repeats = ds.repeats()
    train_rows = ds.image_indices("train")
    normalisation = fit_normalisation(ds.image_means()[train_rows[repeats[train_rows] > 0]])
    train = split_tensors(ds, "train", normalisation, device, clip_at_zero=loss_kind(model_cfg, ds) == "poisson")
    val = split_tensors(ds, "val", normalisation, device)
    val_responses, val_trial_image = _val_trials(ds, val)
    return _Session(key=session_key(ds.experiment_id), ds=ds, normalisation=normalisation, train=train, val=val,
                    val_responses=val_responses, val_trial_image=val_trial_image)


def _epoch_batches(sizes: Sequence[int], batch_size: int, generator: torch.Generator) -> list[tuple[int, torch.Tensor]]:
    """One epoch as ``(session index, image rows)`` batches: every train image of every session once.

    Each session's images are shuffled and cut as for one session (:func:`batch_indices`), so a
    batch never mixes sessions (each has its own readout and loss); the batches of all sessions
    are then put in one random order, so the core sees the sessions interleaved through the epoch
    rather than one after another. With one session nothing more is drawn from ``generator``:
    the batch order, and so the training, of a one-session run is exactly the single-session one.
    """
    batches = [(i, rows) for i, n in enumerate(sizes) for rows in batch_indices(n, batch_size, generator)]
    if len(sizes) == 1:
        return batches
    return [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]


def _val_scores(model: ResponseModel, session: _Session) -> tuple[float, np.ndarray]:
    """Mean validation correlation to the average over repeats, and the per-neuron FEVE, of one session."""
    pred = session.normalisation.to_dff(_predict_units(model, session.val.images).double().cpu().numpy())
    corr = float(np.mean(corr_to_average(pred, session.val_responses, session.val_trial_image)))
    return corr, feve(pred, session.val_responses, session.val_trial_image)


def _set_training(shared: SharedCoreModel, views: Sequence[ResponseModel], training: bool) -> None:
    """Train / eval mode for the shared model and its session views (the views share its modules)."""
    shared.train(training)
    for view in views:
        view.train(training)


def train_one(model_cfg: ModelConfig, train_cfg: TrainConfig, ds: ResponseDataset, seed: int,
              device: torch.device | str = "cpu", checkpoint_path: Optional[str | Path] = None,
              resume: bool = False, max_epochs: Optional[int] = None,
              on_epoch: Optional[Callable[[int, dict], Any]] = None, progress: bool = True,
              extra: "Optional[TrainingSource]" = None) -> TrainResult:
    """Train one ensemble member on ``ds`` (already restricted to the modelled neurons).

    Args:
        model_cfg, train_cfg: architecture and optimisation settings.
        ds: the dataset; its ``train`` images are fitted, ``val`` images drive early stopping.
        seed: seeds the initial weights, the readout jitter and the batch order.
        device: ``torch.device`` or a name for :func:`~meiscope.model.resolve_device`.
        checkpoint_path: written (atomically) after every epoch when given.
        resume: continue from ``checkpoint_path`` if it exists (it must match config and data).
        max_epochs: stop after this epoch number instead of ``train_cfg.max_epochs`` (the
            checkpoint stays resumable).
        on_epoch: ``on_epoch(epoch, record)`` after every epoch; return True to stop, raise to abort.
        progress: show a tqdm bar over epochs.
        extra: other stimuli of ``ds``'s cells (a :class:`~meiscope.model.source_protocol.TrainingSource`,
            :mod:`meiscope.model.sources`): each
            epoch adds ``train_cfg.batches_per_source`` batches of each of them to the natural scenes'.

    Bad configurations (kernel larger than the image, too few images) raise before any training.
    The one-session case of :func:`train_shared`.
    """
    return train_shared(model_cfg, train_cfg, [ds], seed, device=device, checkpoint_path=checkpoint_path,
                        resume=resume, max_epochs=max_epochs, on_epoch=on_epoch, progress=progress, extra=extra)


def train_shared(model_cfg: ModelConfig, train_cfg: TrainConfig, datasets: Sequence[ResponseDataset], seed: int,
                 device: torch.device | str = "cpu", checkpoint_path: Optional[str | Path] = None,
                 resume: bool = False, max_epochs: Optional[int] = None,
                 on_epoch: Optional[Callable[[int, dict], Any]] = None, progress: bool = True,
                 extra: "Optional[TrainingSource]" = None) -> TrainResult:
    """Train one member whose core is shared by several sessions, each with its own readout.

    ``datasets[0]`` is the studied session: its validation correlation alone steps the LR
    scheduler and decides early stopping and the restored weights, because the member is kept
    for that session's MEIs (the other sessions are extra data for the core; their mean could
    peak at an epoch that is worse for the studied cells). Its view is ``TrainResult.model``.
    Every session keeps its own train / val split; images showing a test scene of the studied
    session are never trained on through another session (:func:`without_scenes_of`). Each
    Adam step takes one batch of one session (:func:`_epoch_batches`) with that session's loss
    (mean over its neurons) plus the penalties of the core and of its readout.

    With one dataset this is exactly :func:`train_one` as it was before sessions were shared
    (same draws, same steps, bit-identical weights on the CPU). Arguments as :func:`train_one`;
    epoch records of the other sessions add ``session_<id>_train_loss`` and
    ``session_<id>_val_corr_to_avg``. ``TrainResult.shared_model`` holds every session's readout.
    """
    device = resolve_device(device)
    inputs = _training_inputs(model_cfg, train_cfg, datasets, seed, device, extra)
    limit = int(max_epochs) if max_epochs is not None else train_cfg.max_epochs
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    with _deterministic(device):
        member = _initial_member(model_cfg, train_cfg, inputs, seed)
        if resume and checkpoint_path is not None and checkpoint_path.is_file():
            _resume_from(member, inputs, checkpoint_path)
        if member.stopped:  # finished by early stopping / the caller: nothing left to do
            limit = member.epoch
        epochs_run = _run_epochs(member, inputs, model_cfg, train_cfg, limit, checkpoint_path, on_epoch,
                                 desc=f"train seed {seed}", progress=progress)

    member.shared.load_state_dict(member.best_state)
    _set_training(member.shared, member.views, False)
    study = inputs.sessions[0]
    return TrainResult(model=member.shared.session_model(study.key), history=member.history,
                       normalisation=study.normalisation, seed=int(seed), best_epoch=member.best_epoch,
                       best_val_corr=float(member.best_val), stop_reason=member.stop_reason, epochs_run=epochs_run,
                       shared_model=member.shared)


# --------------------------------------------------------------------------------------
# the parts of train_shared, in the order they run
# --------------------------------------------------------------------------------------
@dataclass(eq=False)
class _TrainingInputs:
    """What one member trains on; fixed for the whole run.

    Attributes:
        sessions: the studied session first, then the others (their copies of its test scenes
            moved to their test split).
        sources: the other stimuli of the studied session (``extra``'s; empty without one).
        movie_head: the movies' calcium-kernel head (``None`` without movies); its weights are
            trained and checkpointed with the member's.
        movie_maps: the movies' receptive-field maps, for the readouts' starting positions.
        kernel: ``extra``'s (calcium) kernel ``(taps,)`` (``None`` without ``extra``).
        fingerprint: what a checkpoint must match to be resumed (:func:`_fingerprint`).
        device: where the tensors live.
    """

    sessions: list[_Session]
    sources: list[Any]
    movie_head: Optional[MovieHead]
    movie_maps: list[Any]
    kernel: Optional[np.ndarray]
    fingerprint: str
    device: torch.device


def _training_inputs(model_cfg: ModelConfig, train_cfg: TrainConfig, datasets: Sequence[ResponseDataset],
                     seed: int, device: torch.device, extra: "Optional[TrainingSource]") -> _TrainingInputs:
    """Check the sessions, hide the studied test scenes from the others, put every source on the device.

    Bad configurations and unusable splits raise here, before any weight exists.
    """
    datasets = list(datasets)
    _check_sessions(datasets, model_cfg)
    test_scenes = datasets[0].image_ids[datasets[0].image_indices("test")]
    datasets = datasets[:1] + [without_scenes_of(ds, test_scenes) for ds in datasets[1:]]
    for ds in datasets[1:]:  # moving images to test can leave a session too few to train on
        _check_trainable(ds, model_cfg)
    fingerprint = _fingerprint(model_cfg, train_cfg, seed, datasets, extra)
    sessions = [_prepare_session(ds, model_cfg, device) for ds in datasets]
    study = sessions[0]
    sources, movie_head = (build_sources(extra, study.normalisation, study.train, study.ds.n_neurons, device)
                           if extra is not None else ([], None))
    movie_maps = movie_position_maps(extra) if extra is not None else []
    return _TrainingInputs(sessions=sessions, sources=sources, movie_head=movie_head, movie_maps=movie_maps,
                           kernel=extra.kernel if extra is not None else None, fingerprint=fingerprint,
                           device=device)


@dataclass(eq=False)
class _Member:
    """One member in training: its modules, optimiser, batch-order generator and early-stopping state.

    Everything here except ``views`` (which share ``shared``'s modules) goes into a checkpoint.
    ``best_state`` holds the weights of ``best_epoch`` (highest validation correlation ``best_val``);
    ``bad_epochs`` counts the epochs since; ``stopped`` / ``stop_reason`` say whether and why training ended.
    """

    shared: SharedCoreModel
    views: list[ResponseModel]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    generator: torch.Generator
    best_state: dict[str, torch.Tensor]
    epoch: int = 0
    best_val: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    stop_reason: str = "max_epochs"
    stopped: bool = False


def _weights_copy(shared: SharedCoreModel) -> dict[str, torch.Tensor]:
    """A detached copy of every weight and buffer (the state to restore at the end)."""
    return {k: v.detach().clone() for k, v in shared.state_dict().items()}


def _initial_member(model_cfg: ModelConfig, train_cfg: TrainConfig, inputs: _TrainingInputs, seed: int) -> _Member:
    """Seeded initial weights, each readout at its neuron's receptive-field estimate, Adam and the LR schedule.

    ``seed`` seeds torch's global RNG (initial weights, readout jitter) and the generator of the
    batch order, in that order.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    sessions, study = inputs.sessions, inputs.sessions[0]
    shared = build_shared_model(model_cfg, [(s.key, s.ds.n_neurons) for s in sessions], study.ds.images.shape[1:])
    shared = place_model(shared, inputs.device)
    views = []
    for s in sessions:
        shared.set_normalisation(s.key, s.normalisation.offset, s.normalisation.scale)
        view = shared.session_model(s.key)
        _init_bias(view, s.train.targets, s.train.weights)
        # Start each readout at its neuron's receptive-field estimate: gradient steps only
        # refine a position locally (see meiscope.model.readouts).
        view.readout.init_positions_(map_peaks(rf_init_map(s.train, inputs.sources, inputs.movie_maps) if s is study
                                               else rf_init_map(s.train, [])))
        views.append(view)
    head = inputs.movie_head
    parameters = list(shared.parameters()) + (list(head.parameters()) if head is not None else [])
    optimizer = torch.optim.Adam(parameters, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.3, patience=max(1, train_cfg.patience // 4), min_lr=train_cfg.lr * 1e-3)
    return _Member(shared=shared, views=views, optimizer=optimizer, scheduler=scheduler, generator=generator,
                   best_state=_weights_copy(shared))


def _resume_from(member: _Member, inputs: _TrainingInputs, path: Path) -> None:
    """Load a checkpoint into ``member`` (weights, optimiser, schedule, both RNG states, counters, history)."""
    device = inputs.device
    state = _load_checkpoint(path, device)
    if state["fingerprint"] != inputs.fingerprint:
        raise TrainingError(f"{path}: written for another configuration or dataset; "
                            "delete it or train without resume")
    member.shared.load_state_dict(state["model"])
    if inputs.movie_head is not None:
        inputs.movie_head.load_state_dict(state["movie_head"])
    member.optimizer.load_state_dict(state["optimizer"])
    member.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"].cpu())
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    member.generator.set_state(state["generator"].cpu())
    member.epoch, member.best_val = int(state["epoch"]), float(state["best_val"])
    member.best_epoch, member.bad_epochs = int(state["best_epoch"]), int(state["bad_epochs"])
    member.history, member.best_state = list(state["history"]), state["best_state"]
    if state["stopped"]:
        member.stopped, member.stop_reason = True, str(state["stop_reason"])


def _run_epochs(member: _Member, inputs: _TrainingInputs, model_cfg: ModelConfig, train_cfg: TrainConfig,
                limit: int, checkpoint_path: Optional[Path], on_epoch: Optional[Callable[[int, dict], Any]],
                desc: str, progress: bool) -> list[int]:
    """Epochs ``member.epoch + 1 .. limit`` (fewer if early stopping ends it); the epoch numbers run.

    Each: Adam steps over the train batches, readout relocation and validation (the epoch's
    record), the LR schedule and early stopping, then the checkpoint.
    """
    epochs_run: list[int] = []
    bar = tqdm(range(member.epoch + 1, limit + 1), initial=member.epoch, total=max(limit, member.epoch),
               desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        totals = _train_epoch(member, inputs, model_cfg, train_cfg, epoch)
        record = _epoch_record(member, inputs, train_cfg, epoch, totals)
        member.history.append(record)
        member.epoch = epoch
        epochs_run.append(epoch)
        _early_stopping(member, record, train_cfg, on_epoch)
        bar.set_postfix(val=f"{record['val_corr_to_avg']:.3f}", best=f"{member.best_val:.3f}")
        if checkpoint_path is not None:
            _save_checkpoint(member, inputs, checkpoint_path)
        if member.stopped:
            break
    bar.close()
    return epochs_run


def _epoch_order(inputs: _TrainingInputs, train_cfg: TrainConfig,
                 generator: torch.Generator) -> list[tuple[int, torch.Tensor]]:
    """One epoch's ``(source index, rows)`` batches: sessions ``0 .. n_sessions-1``, then ``extra``'s sources.

    Without other stimuli this is :func:`_epoch_batches`; with them, each source's batches
    (:func:`~meiscope.model.sources.extra_batches`) join the scenes' and all are shuffled together.
    """
    n_sessions = len(inputs.sessions)
    batches = _epoch_batches([len(s.train) for s in inputs.sessions], train_cfg.batch_size, generator)
    if inputs.sources:  # the other stimuli, interleaved with the scenes (source index offset)
        batches = batches + [(n_sessions + j, rows) for j, rows in extra_batches(
            inputs.sources, train_cfg.batches_per_source, train_cfg.batch_size, generator)]
        batches = [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def _train_epoch(member: _Member, inputs: _TrainingInputs, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 epoch: int) -> list[torch.Tensor]:
    """One Adam step per batch of :func:`_epoch_order`; each session's summed data loss (0-d device tensors)."""
    _set_training(member.shared, member.views, True)
    sessions = inputs.sessions
    # summed on the device: one sync per epoch
    totals = [torch.zeros((), device=inputs.device) for _ in sessions]
    for i, rows in _epoch_order(inputs, train_cfg, member.generator):
        if i >= len(sessions):
            _source_step(member, inputs, model_cfg, inputs.sources[i - len(sessions)], rows,
                         warmup_factor(epoch, train_cfg.source_warmup_epochs))
        else:
            totals[i] = totals[i] + _scene_step(member, sessions[i], member.views[i], model_cfg, rows, inputs.device)
    return totals


def _scene_step(member: _Member, session: _Session, view: ResponseModel, model_cfg: ModelConfig,
                rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One Adam step on a batch of one session's train images (``rows`` ``(B,)``); its summed data loss."""
    rows = rows.to(device)
    pred = view(session.train.images[rows])
    data = response_loss(pred, session.train.targets[rows], session.train.weights[rows],
                         loss_kind(model_cfg, session.ds))
    loss = data + view.regularizer(model_cfg.laplace_weight, model_cfg.readout_l1)
    # the other sessions' readouts get no gradient (None), so Adam leaves them alone
    member.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    member.optimizer.step()
    view.constrain_()
    return data.detach() * len(rows)


def _source_step(member: _Member, inputs: _TrainingInputs, model_cfg: ModelConfig, source: Any,
                 rows: torch.Tensor, warmup: float) -> None:
    """One Adam step on a batch of another stimulus (trial rows, or a movie window index), studied session.

    The step is taken at ``warmup`` times the learning rate (the other stimuli join gradually);
    the core's batch statistics stay the scenes' (:func:`~meiscope.model.sources.scene_statistics`).
    """
    view = member.views[0]
    with scene_statistics(view):
        data = (movie_loss(view, inputs.movie_head, source, int(rows)) if isinstance(source, MovieSource)
                else trial_loss(view, source, rows.to(inputs.device)))
    loss = data + view.regularizer(model_cfg.laplace_weight, model_cfg.readout_l1)
    member.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with scaled_learning_rate(member.optimizer, warmup):
        member.optimizer.step()
    view.constrain_()


def _epoch_record(member: _Member, inputs: _TrainingInputs, train_cfg: TrainConfig, epoch: int,
                  totals: Sequence[torch.Tensor]) -> dict:
    """Relocate far readouts (at ``train.relocate_epochs``, with other stimuli), then score the validation images.

    Returns the epoch's record: ``epoch``, ``train_loss`` (mean per train image), ``val_corr_to_avg``,
    ``val_feve`` (median over neurons), ``lr``, [``readouts_relocated``], and per other session
    ``session_<key>_train_loss`` / ``session_<key>_val_corr_to_avg``.
    """
    sessions, views = inputs.sessions, member.views
    study = sessions[0]
    relocated = (relocate_readouts(views[0], study.train, inputs.sources, inputs.kernel)
                 if inputs.sources and epoch in train_cfg.relocate_epochs else None)
    val_corr, val_feve = _val_scores(views[0], study)
    record = {"epoch": epoch, "train_loss": float(totals[0]) / len(study.train), "val_corr_to_avg": val_corr,
              "val_feve": float(np.nanmedian(val_feve)) if np.isfinite(val_feve).any() else float("nan"),
              "lr": float(member.optimizer.param_groups[0]["lr"])}
    if relocated is not None:
        record["readouts_relocated"] = relocated
    for session, view, total in zip(sessions[1:], views[1:], totals[1:]):
        record[f"session_{session.key}_train_loss"] = float(total) / len(session.train)
        record[f"session_{session.key}_val_corr_to_avg"] = _val_scores(view, session)[0]
    return record


def _early_stopping(member: _Member, record: dict, train_cfg: TrainConfig,
                    on_epoch: Optional[Callable[[int, dict], Any]]) -> None:
    """Step the LR schedule on the validation correlation, keep the best weights, decide whether to stop.

    Stops after ``train.patience`` epochs without improvement, or when ``on_epoch`` returns True.
    """
    epoch, val_corr = record["epoch"], record["val_corr_to_avg"]
    member.scheduler.step(val_corr)
    if val_corr > member.best_val:
        member.best_val, member.best_epoch, member.bad_epochs = val_corr, epoch, 0
        member.best_state = _weights_copy(member.shared)
    else:
        member.bad_epochs += 1
    member.stopped = False
    if member.bad_epochs >= train_cfg.patience:
        member.stopped, member.stop_reason = True, "patience"
    if on_epoch is not None and on_epoch(epoch, dict(record)) is True:
        member.stopped, member.stop_reason = True, "callback"


def _save_checkpoint(member: _Member, inputs: _TrainingInputs, path: Path) -> None:
    """Write (atomically) everything the next epoch depends on, so ``resume`` continues bit-identically."""
    state = {"format": CHECKPOINT_FORMAT, "fingerprint": inputs.fingerprint, "epoch": member.epoch,
             "model": member.shared.state_dict(), "optimizer": member.optimizer.state_dict(),
             "scheduler": member.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
             "generator": member.generator.get_state(), "best_state": member.best_state,
             "best_val": member.best_val, "best_epoch": member.best_epoch, "bad_epochs": member.bad_epochs,
             "history": member.history, "stopped": member.stopped, "stop_reason": member.stop_reason}
    if inputs.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(inputs.device)
    if inputs.movie_head is not None:
        state["movie_head"] = inputs.movie_head.state_dict()
    save_torch(state, path)
