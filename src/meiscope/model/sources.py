"""Training data beyond the natural scenes: the container's other stimuli, for the same readouts.

Two kinds of source:

- :class:`TrialSource` (static gratings, locally sparse noise): condition-mean responses in the
  natural scenes' normalised units (:mod:`meiscope.model.data`: the same response window, so the
  same per-neuron map), weighted by their trial counts, exactly like the scenes (a sparse-noise
  frame is shown once, so its "mean" is one noisy trial).
- :class:`MovieSource` (natural movies): the model's output for every movie frame is a rate; a
  causal calcium kernel (fitted to the data, :func:`meiscope.container.responses.fit_calcium_kernel`)
  turns the rates into the dF/F trace, and a per-neuron gain and offset (:class:`MovieHead`,
  one pair per movie recording: baselines differ between sessions) map it onto the recorded
  repeat-averaged trace, standardised per neuron. A batch is a window of consecutive frames plus
  the kernel's history.

Cells not recorded in a source's session have NaN targets: the loss masks them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from meiscope.model.data import ResponseNormalisation

MOVIE_WINDOW = 64  # target frames per movie batch (+ the kernel's history)


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


def movie_source(name: str, frames: np.ndarray, trace: np.ndarray, head: int, n_taps: int,
                 device: torch.device) -> MovieSource:
    """A :class:`MovieSource` from a movie's model-space frames and repeat-mean trace ``(n_frames, n)``.

    Each neuron's trace is standardised (zero mean, unit s.d. over the movie): a raw dF/F trace
    is not baseline-subtracted like the trial responses, and movies drive cells harder than the
    scenes, so in the scenes' units its loss would outweigh theirs many times over. The head's
    gain and offset map the model's rates onto it.
    """
    trace = np.asarray(trace, dtype=np.float64)
    recorded = np.isfinite(trace)
    values = np.where(recorded, trace, 0.0)
    count = np.maximum(recorded.sum(axis=0), 1)
    mean = values.sum(axis=0) / count
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
