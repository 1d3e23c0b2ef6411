"""The response model: a shared convolutional core + a per-neuron readout ("digital twin").

Modules, one concept each:

- ``core``: :class:`~meiscope.model.core.ConvCore`, the shared feature extractor.
- ``readouts``: Gaussian (learned position per neuron) and factorized (mask x features) readouts.
- ``network``: :class:`~meiscope.model.network.ResponseModel` and ``build_model`` (validates the config).
- ``data``: response normalisation and in-memory tensors for training.
- ``sessions``: :class:`~meiscope.model.sessions.SharedCoreModel`, one core shared by several
  sessions (one readout each), and its plain single-session ``ResponseModel`` views.
- ``source_protocol``: :class:`~meiscope.model.source_protocol.TrainingSource`, what the trainer needs
  from other stimuli of the same cells (any recording's; ``meiscope.recordings.training_stimuli.TrainingStimuli`` is one).
- ``sources``: those stimuli as losses (trial means, movies through a kernel) and receptive-field maps.
- ``training``: ``train_one`` (one seeded member: Adam, early stopping, resumable checkpoints) and
  ``train_shared`` (the same member with its core trained on several sessions).
- ``evaluation``: correlation-to-average, single-trial correlation, FEVE, oracle, ``predict``.
- ``baseline``: the linear-nonlinear (LN) baseline.
- ``ensemble``: save / load the trained members as one ensemble.

This package file stays light (torch is imported only when :func:`resolve_device` runs) so that
``import meiscope.model`` costs nothing until a model is actually used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from meiscope.errors import MeiscopeError


class DeviceError(MeiscopeError, ValueError):
    """The requested torch device is unknown or not available on this machine."""


def resolve_device(name: Any = "auto") -> Any:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` (or a ``torch.device``) into a ``torch.device``.

    ``auto`` picks the first CUDA GPU when one is visible, else the CPU. Asking for CUDA on a
    machine without it is a :class:`DeviceError` (one line), never a silent CPU fallback.
    Choosing CUDA also turns TF32 off (:func:`exact_float32_on_cuda`).
    """
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise DeviceError(f"device must be a string like 'auto', 'cpu', 'cuda' or 'cuda:0' (got {name!r})")
    text = name.strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index = text[5:]
        if index and not index.isdigit():
            raise DeviceError(f"device {name!r}: the GPU index after 'cuda:' must be a number")
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was requested but CUDA is not available here (use 'auto' or 'cpu')")
        if index and int(index) >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        exact_float32_on_cuda()
        return torch.device(text)
    raise DeviceError(f"device {name!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")


def exact_float32_on_cuda() -> None:
    """Make CUDA convolutions and matmuls round like the CPU's float32 (TF32 off, process-wide).

    PyTorch lets cuDNN round convolution inputs to TF32 (a 10-bit mantissa, ~1e-3 relative) by
    default. With it off, the CUDA tests match the CPU's MEIs, Gabors and training within 1e-3.
    Cost on an H100: the batched MEI and Gabor benchmarks ran 1.6-1.8x slower than a run with
    TF32 on (another machine instance, one run each); the whole default chain takes ~1.5 min.
    """
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def code_digest() -> str:
    """MD5 of this package's source files (``model/*.py``, in name order): what a trained number depends on.

    A tuning study's trials are comparable only when the same training code scored them, so the
    study's name carries this digest (:func:`meiscope.tuning.keyed_study`); the DVC stages list
    the same folder as a dependency for the same reason.
    """
    digest = hashlib.md5()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
