"""Training data beyond the natural scenes: other stimuli of the same cells, for the same readouts.

The data come as a :class:`~meiscope.model.source_protocol.TrainingSource` (e.g. the Allen
experiment container's other stimuli); this module never asks which recording made them.

Two kinds of source:

- :class:`TrialSource` (static gratings, locally sparse noise): condition-mean responses in the
  natural scenes' normalised units (:mod:`meiscope.model.data`: the same response window, so the
  same per-neuron map), weighted by their trial counts, exactly like the scenes (a sparse-noise
  frame is shown once, so its "mean" is one noisy trial).
- :class:`MovieSource` (natural movies): the model's output for every movie frame is a rate; a
  causal kernel (``TrainingSource.kernel``: for two-photon data a calcium kernel fitted to the data)
  turns the rates into the dF/F trace, and a per-neuron gain and offset (:class:`MovieHead`,
  one pair per movie recording: baselines differ between sessions) map it onto the recorded
  repeat-averaged trace, standardised per neuron. A batch is a window of consecutive frames plus
  the kernel's history.

Cells not recorded in a source's session have NaN targets: the loss masks them out.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from meiscope.model.data import ResponseNormalisation, SplitTensors
from meiscope.model.readouts import feature_r2_map, robust_z, rf_position_map, spot_map

from meiscope.model.source_protocol import TrainingSource

MOVIE_WINDOW = 64  # target frames per movie batch (+ the kernel's history)
RF_INIT_TRIALS = 3000  # at most this many extra-stimulus conditions enter the readouts' receptive-field estimate


@dataclass
class TrialSource:
    """A static stimulus: ``images`` ``(n, 1, H, W)``, ``targets`` ``(n, n_neurons)`` condition means in
    normalised units (0 where not recorded), ``mask`` ``(n, n_neurons)`` 1 where recorded, ``weights`` ``(n,)``."""

    name: str
    images: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor
    loss_weight: float = 1.0

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class MovieSource:
    """A movie in one session: ``frames`` ``(n_frames, 1, H, W)``, ``targets`` ``(n_frames, n_neurons)``
    repeat-mean trace in normalised units (0 where not recorded), ``mask`` likewise, ``head`` its index in
    :class:`MovieHead`; batches are windows of :data:`MOVIE_WINDOW` target frames after the kernel's history."""

    name: str
    frames: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    head: int
    n_taps: int

    def __len__(self) -> int:
        """Number of windows."""
        return max(0, -(-(len(self.frames) - self.n_taps + 1) // MOVIE_WINDOW))

    def window(self, i: int) -> tuple[slice, slice]:
        """``(frames in, targets out)`` of window ``i``: targets from frame ``n_taps - 1`` on."""
        first = self.n_taps - 1 + i * MOVIE_WINDOW
        last = min(first + MOVIE_WINDOW, len(self.frames))
        return slice(first - self.n_taps + 1, last), slice(first, last)


class MovieHead(torch.nn.Module):
    """A per-neuron gain and offset per movie recording, and the fixed calcium kernel."""

    def __init__(self, n_movies: int, n_neurons: int, kernel: np.ndarray) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(n_movies, n_neurons))
        self.offset = torch.nn.Parameter(torch.zeros(n_movies, n_neurons))
        # conv1d correlates: flip so that output[t] = sum_k kernel[k] rate[t - k]
        self.register_buffer("kernel", torch.as_tensor(np.ascontiguousarray(kernel[::-1]), dtype=torch.float32))

    def forward(self, rates: torch.Tensor, head: int) -> torch.Tensor:
        """``(T + taps - 1, n)`` rates -> ``(T, n)`` predicted trace (valid causal convolution)."""
        trace = F.conv1d(rates.T[:, None], self.kernel.to(rates.dtype)[None, None])[:, 0].T
        return self.gain[head] * trace + self.offset[head]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the recorded entries (``mask``), rows weighted by ``weights``."""
    w = mask if weights is None else mask * weights[:, None]
    return ((pred - target).pow(2) * w).sum() / w.sum().clamp_min(1e-12)


def _targets(values: np.ndarray, normalisation: ResponseNormalisation, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
    recorded = np.isfinite(values)
    units = np.where(recorded, normalisation.to_units(np.nan_to_num(values).astype(np.float64)), 0.0)
    return (torch.as_tensor(units.astype(np.float32), device=device),
            torch.as_tensor(recorded.astype(np.float32), device=device))


def trial_source(name: str, images: np.ndarray, trial_image: np.ndarray, responses: np.ndarray,
                 normalisation: ResponseNormalisation, device: torch.device, scene_repeats: float) -> TrialSource:
    """A :class:`TrialSource` from single trials ``responses`` ``(n_trials, n)`` of ``images`` rows.

    Its loss weight is its trials per condition over the scenes' repeats (at most 1): a batch of
    single sparse-noise trials carries ~1/50 of the information of a batch of scene means, and
    Adam would otherwise take full-size steps on its noise.
    """
    n = len(images)
    counts = np.bincount(trial_image, minlength=n)
    sums = np.zeros((n, responses.shape[1]))
    np.add.at(sums, trial_image, responses)  # NaN (not recorded) stays NaN
    means = sums / np.maximum(counts, 1)[:, None]
    shown = counts > 0
    targets, mask = _targets(means[shown], normalisation, device)
    return TrialSource(name=name, images=torch.as_tensor(images[shown][:, None], device=device),
                       targets=targets, mask=mask,
                       weights=torch.as_tensor(counts[shown].astype(np.float32), device=device),
                       loss_weight=float(min(1.0, counts[shown].mean() / max(scene_repeats, 1.0))))


def _recorded_mean(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(recorded, mean)`` of a float64 trace ``(n_frames, n)``: where it is finite, and each neuron's mean
    over those frames ``(n,)`` (0 where it has none)."""
    recorded = np.isfinite(trace)
    return recorded, np.where(recorded, trace, 0.0).sum(axis=0) / np.maximum(recorded.sum(axis=0), 1)


def movie_source(name: str, frames: np.ndarray, trace: np.ndarray, head: int, n_taps: int,
                 device: torch.device) -> MovieSource:
    """A :class:`MovieSource` from a movie's model-space frames and repeat-mean trace ``(n_frames, n)``.

    Each neuron's trace is standardised (zero mean, unit s.d. over the movie): a raw dF/F trace
    is not baseline-subtracted like the trial responses, and movies drive cells harder than the
    scenes, so in the scenes' units its loss would outweigh theirs many times over. The head's
    gain and offset map the model's rates onto it.
    """
    trace = np.asarray(trace, dtype=np.float64)
    recorded, mean = _recorded_mean(trace)
    values = np.where(recorded, trace, 0.0)
    count = np.maximum(recorded.sum(axis=0), 1)
    std = np.sqrt((np.where(recorded, values - mean, 0.0) ** 2).sum(axis=0) / count)
    z = np.where(recorded, (values - mean) / np.where(std > 1e-8, std, 1.0), 0.0)
    targets = torch.as_tensor(z.astype(np.float32), device=device)
    mask = torch.as_tensor(recorded.astype(np.float32), device=device)
    return MovieSource(name=name, frames=torch.as_tensor(frames[:, None], device=device), targets=targets,
                       mask=mask, head=head, n_taps=n_taps)


def trial_loss(model: torch.nn.Module, source: TrialSource, rows: torch.Tensor) -> torch.Tensor:
    """Masked, trial-weighted MSE of ``model`` on rows ``rows`` of a trial source, times its loss weight."""
    return source.loss_weight * masked_mse(model(source.images[rows]), source.targets[rows], source.mask[rows], source.weights[rows])


def movie_loss(model: torch.nn.Module, head: MovieHead, source: MovieSource, window: int) -> torch.Tensor:
    """Masked MSE of the predicted trace over window ``window`` of a movie source."""
    frames_in, targets_out = source.window(window)
    trace = head(model(source.frames[frames_in]), source.head)
    return masked_mse(trace, source.targets[targets_out], source.mask[targets_out])


def build_sources(extra: "TrainingSource", normalisation: ResponseNormalisation, train: "SplitTensors",
                  n_neurons: int, device: torch.device) -> tuple[list[TrialSource | MovieSource], Optional[MovieHead]]:
    """``extra``'s stimuli as training sources of the studied session, and the movies' head.

    ``normalisation`` and ``train`` (the train scenes' tensors) are the studied session's.
    """
    sources: list[TrialSource | MovieSource] = [
        trial_source(f"{t.session}:{t.name}", t.images, t.trial_image, t.responses, normalisation, device,
                     scene_repeats=float(train.weights.mean()))
        for t in extra.trials]
    taps = len(extra.kernel)
    movies = [movie_source(f"{m.session}:{m.name}", m.frames, m.trace, i, taps, device)
              for i, m in enumerate(extra.movies)]
    head = None
    if movies:
        head = MovieHead(len(movies), n_neurons, extra.kernel).to(device)
        with torch.no_grad():  # traces are standardised: start at 0 = minus the readouts' starting output
            start = (train.targets * train.weights[:, None]).sum(0) / train.weights.sum()
            head.offset.copy_(-start.expand_as(head.offset))
    return sources + [m for m in movies if len(m)], head


def single_trials(source: TrialSource) -> bool:
    """Whether a trial source shows each image about once (locally sparse noise), not repeatedly."""
    return float(source.weights.mean()) < 2


def rf_init_data(train: "SplitTensors", sources: Sequence[TrialSource | MovieSource]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and targets for the readouts' receptive-field estimate: the train scenes and the extra
    static stimuli shown repeatedly (at most :data:`RF_INIT_TRIALS` conditions of those).

    Single trials (sparse noise: each frame is shown once) are left out: in calcium data they
    are so noisy that they pull the regression's peaks away from the receptive fields (measured on
    the synthetic container: a fresh-scene correlation of 0.20 instead of 0.34). They enter the
    readouts' start through their own map instead (:func:`rf_init_map`).
    """
    images, targets = [train.images], [train.targets]
    budget = RF_INIT_TRIALS
    for source in sources:
        repeated = isinstance(source, TrialSource) and not single_trials(source)
        if repeated and budget > 0:
            take = min(len(source), budget)
            mean = (source.targets * source.mask).sum(0) / source.mask.sum(0).clamp_min(1)
            images.append(source.images[:take])
            # cells not recorded in the source's session sit at their mean: no pull on their map
            targets.append(torch.where(source.mask[:take] > 0, source.targets[:take], mean))
            budget -= take
    return torch.cat(images), torch.cat(targets)


def rf_init_map(train: "SplitTensors", sources: Sequence[TrialSource | MovieSource],
                movie_maps: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """The map whose peaks start the readouts: ``(n, H, W)`` (robust z units when other stimuli add maps).

    :func:`~meiscope.model.readouts.rf_position_map` of :func:`rf_init_data`, plus the
    :func:`~meiscope.model.readouts.spot_map` of every single-trial source (locally sparse noise,
    Allen's receptive-field mapping stimulus) and the ``movie_maps`` (:func:`movie_position_maps`).
    The regression on scenes and gratings alone places complex cells poorly (on the synthetic
    container a median 10-18 model pixels from the true receptive field, against 1-2 for simple
    cells); the spot and movie maps find them (README: Every stimulus the cells saw). Cells not
    recorded in a source's session get nothing from it.
    """
    images, targets = rf_init_data(train, sources)
    maps = rf_position_map(images, targets)
    extra = [robust_z(spot_map(s.images, s.targets, s.mask)) for s in sources
             if isinstance(s, TrialSource) and single_trials(s)] + [m.to(maps.device) for m in movie_maps]
    return robust_z(maps) + sum(extra) if extra else maps  # scenes only: the regression's map, as it was


@torch.no_grad()
def _core_features(model: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The core's feature map ``(N, C, H, W)`` of ``images``, with its batch norms' running statistics."""
    with scene_statistics(model):
        return torch.cat([model.core(images[i:i + batch]) for i in range(0, len(images), batch)]).cpu()


def core_position_map(model: torch.nn.Module, train: "SplitTensors", sources: Sequence[TrialSource | MovieSource],
                      kernel: Optional[np.ndarray] = None) -> torch.Tensor:
    """Where the model's own core features predict each neuron best: ``(n, H, W)``, robust z units.

    :func:`rf_init_map` with the trained core's feature map in place of the hand-made luminance and
    contrast features: at each pixel, the R^2 of a ridge regression of the neuron on the core's
    features there (:func:`~meiscope.model.readouts.feature_r2_map`), on the train scenes and the
    repeated static stimuli, and on every movie against its trace (features filtered through the
    calcium ``kernel``), plus the spot maps of the single-trial stimuli. A readout can only move
    locally by gradient descent; this map finds a receptive field anywhere, in the features the core
    has learned (complex and conjunction cells included), once it has learned some.
    """
    images, targets = rf_init_data(train, sources)
    maps = [robust_z(feature_r2_map(_core_features(model, images), targets.cpu()))]
    taps = torch.as_tensor(np.asarray(kernel, dtype=np.float64)) if kernel is not None else None
    for source in sources:
        if isinstance(source, MovieSource) and taps is not None and len(source.frames) >= 2 * len(taps):
            maps.append(robust_z(feature_r2_map(_core_features(model, source.frames), source.targets.cpu(), kernel=taps)))
        elif isinstance(source, TrialSource) and single_trials(source):
            maps.append(robust_z(spot_map(source.images, source.targets, source.mask)).cpu().double())
    return sum(maps)


def _unrecorded_as_mean(trace: np.ndarray) -> np.ndarray:
    """``trace`` ``(n_frames, n)`` float32 with each neuron's NaN frames at its mean over the others (0 when it
    has none): a neutral value for the position map's regression, where 0 would be a planted response."""
    trace = np.asarray(trace, dtype=np.float64)
    recorded, mean = _recorded_mean(trace)
    return np.where(recorded, trace, mean).astype(np.float32)


def movie_position_maps(extra: "TrainingSource") -> list[torch.Tensor]:
    """Each movie's receptive-field map ``(n, H, W)``, robust z units, for :func:`rf_init_map`.

    The regression of :func:`~meiscope.model.readouts.rf_position_map` on the movie's frames against
    its repeat-averaged trace, the features filtered through the source's (calcium) kernel (the
    trace at a frame mixes the rates of the frames before it). Its R^2 ignores each cell's scale and
    offset, so the raw dF/F trace serves (unrecorded cells: flat maps). It costs seconds per movie,
    so it is computed once per loaded source and kept on its movies: every trial of ``tune`` and
    every member of ``train`` reuses it.
    """
    kernel = torch.as_tensor(np.asarray(extra.kernel, dtype=np.float32))
    for movie in extra.movies:
        if movie.position_map is None and len(movie.frames) >= 2 * len(kernel):
            trace = torch.as_tensor(_unrecorded_as_mean(movie.trace))
            frames = torch.as_tensor(np.ascontiguousarray(movie.frames[:, None], dtype=np.float32))
            movie.position_map = robust_z(rf_position_map(frames, trace, kernel=kernel))
    return [m.position_map for m in extra.movies if m.position_map is not None]


def extra_batches(sources: Sequence[TrialSource | MovieSource], per_source: int, batch_size: int,
                   generator: torch.Generator) -> list[tuple[int, torch.Tensor]]:
    """``per_source`` random batches of every extra source: ``(source index, rows)`` for trial
    sources, ``(source index, [window])`` for movies.

    Every source gets the same number whatever its size: 8880 single sparse-noise trials hold
    less than 120 gratings seen 50 times, and a fixed number per source keeps the scenes' share
    of the steps, and so how fast the validation scenes move, the same as sources are added.
    """
    batches = []
    for i, source in enumerate(sources):
        for _ in range(per_source):
            if isinstance(source, MovieSource):
                batches.append((i, torch.randint(len(source), (1,), generator=generator)))
            else:
                rows = torch.randperm(len(source), generator=generator)
                batches.append((i, rows[:max(min(batch_size, len(source)), 2)]))
    return batches


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """The fraction of the learning rate the other stimuli's steps take in ``epoch`` (from 1): ``epoch / warmup_epochs``, at most 1.

    Their first gradients (an untrained movie head, a new kind of image) are 10-100x the scenes';
    at the full rate they can wreck the core in the first epoch, from which a model never recovers
    (measured on the synthetic container: README, "Every stimulus the cells saw").
    """
    return 1.0 if warmup_epochs <= 0 else min(1.0, epoch / warmup_epochs)


@contextlib.contextmanager
def scaled_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> Iterator[None]:
    """The optimiser's learning rates times ``factor`` inside the block (restored after, whatever the scheduler set)."""
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
    try:
        yield
    finally:
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate


@contextlib.contextmanager
def scene_statistics(model: torch.nn.Module) -> Iterator[None]:
    """Batch norm with the running (natural-scene) statistics, left unchanged, for other stimuli's batches.

    A batch of sparse noise or movie frames has other pixel and feature statistics than the scenes;
    normalising it by its own (train mode) and updating the running statistics with it would make
    the evaluation-mode network, which sees scenes, normalise by a mixture of the stimuli.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m in norms:
            m.train()
