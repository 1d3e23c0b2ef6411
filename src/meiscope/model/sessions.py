"""Many sessions, one core: a shared :class:`ConvCore` with one readout per recorded session.

Every session records other cells, so each needs its own readout and its own response
normalisation; the scenes are the same, so the feature extractor can be one. Training it on
several sessions gives the core more cells to learn from (Lurz et al. 2021 train one core on
many mice). The readouts live in an ``nn.ModuleDict`` keyed by the experiment id as a string
(:func:`session_key`).

Downstream stages (``mei``, ``gabor``, ``validate``, the files in ``models/ensemble``) only know
:class:`~meiscope.model.network.ResponseModel`: :meth:`SharedCoreModel.session_model` gives one,
the same core object plus that session's readout and normalisation, with exactly the outputs
of ``shared(images, session)``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from meiscope.config import ModelConfig
from meiscope.model.core import ConvCore
from meiscope.model.network import ModelError, ResponseModel, build_core, build_readout, check_model_config


def session_key(experiment_id: int) -> str:
    """The ``ModuleDict`` key of a session: its experiment id as a string (module names must be strings)."""
    return str(int(experiment_id))


class SessionUnits(nn.Module):
    """One session's per-neuron map from normalised units to dF/F, as buffers (they travel with the state dict)."""

    def __init__(self, n_neurons: int) -> None:
        super().__init__()
        self.register_buffer("response_offset", torch.zeros(n_neurons))
        self.register_buffer("response_scale", torch.ones(n_neurons))


class SharedCoreModel(nn.Module):
    """Images ``(N, 1, H, W)`` and a session key -> that session's predicted responses ``(N, n_neurons)``.

    Attributes:
        core: the one feature extractor every session reads.
        readouts: ``ModuleDict`` session key -> readout of that session's neurons.
        units: ``ModuleDict`` session key -> :class:`SessionUnits` (its dF/F normalisation).
    """

    def __init__(self, core: ConvCore, readouts: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not readouts:
            raise ModelError("a shared-core model needs at least one session")
        self.core = core
        self.readouts = nn.ModuleDict(dict(readouts))
        self.units = nn.ModuleDict({key: SessionUnits(readout.n_neurons) for key, readout in readouts.items()})

    @property
    def sessions(self) -> list[str]:
        """The session keys, in the order their readouts were built."""
        return list(self.readouts.keys())

    def forward(self, images: torch.Tensor, session: str) -> torch.Tensor:
        """``(N, 1, H, W)`` -> ``(N, n_neurons of session)``, positive, that session's normalised units."""
        return ResponseModel.positive(self._readout(session)(self.core(images)))

    def _readout(self, session: str) -> nn.Module:
        if session not in self.readouts:
            raise ModelError(f"session {session!r} has no readout in this model (it has {self.sessions})")
        return self.readouts[session]

    @torch.no_grad()
    def set_normalisation(self, session: str, offset: np.ndarray, scale: np.ndarray) -> None:
        """Store ``session``'s per-neuron map from normalised units to dF/F (``dff = y * scale + offset``)."""
        units = self.units[session]
        units.response_offset.copy_(torch.as_tensor(np.asarray(offset), dtype=units.response_offset.dtype))
        units.response_scale.copy_(torch.as_tensor(np.asarray(scale), dtype=units.response_scale.dtype))

    def session_model(self, session: str) -> ResponseModel:
        """A plain :class:`ResponseModel` of one session: the SAME core and readout objects, its normalisation.

        Training the view trains this model (the parameters are shared); the normalisation is a
        copy. Its mode (train / eval) is this model's.
        """
        view = ResponseModel(self.core, self._readout(session))
        units = self.units[session]
        view.to(units.response_offset.device)  # the core and readout are there already: only the buffers move
        with torch.no_grad():
            view.response_offset.copy_(units.response_offset)
            view.response_scale.copy_(units.response_scale)
        return view.train(self.training)


def build_shared_model(cfg: ModelConfig, sessions: Sequence[tuple[str, int]],
                       image_shape: Sequence[int]) -> SharedCoreModel:
    """A fresh :class:`SharedCoreModel`: one core of ``cfg``, one readout per ``(session key, n_neurons)``.

    Parameters come from torch's global generator, core first, then the readouts in ``sessions``
    order: with one session the draws, and so the weights, are those of
    :func:`~meiscope.model.network.build_model` for the same seed.
    """
    if not sessions:
        raise ModelError("a shared-core model needs at least one session")
    keys = [key for key, _ in sessions]
    if len(set(keys)) != len(keys):
        raise ModelError(f"sessions must be distinct (got {keys})")
    height, width = 0, 0
    for _, n_neurons in sessions:
        height, width = check_model_config(cfg, n_neurons, image_shape)
    core = build_core(cfg)
    readouts = {key: build_readout(cfg, n_neurons, core.out_channels, (height, width)) for key, n_neurons in sessions}
    return SharedCoreModel(core, readouts)
