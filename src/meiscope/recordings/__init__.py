"""The kinds of recording meiscope studies, each a package of its own behind one protocol.

Each package (:mod:`.two_photon`, :mod:`.container`, :mod:`.neuropixels`) holds its cache layout,
synthesis, download, extraction and extra training sources behind :class:`~.protocol.Recording`;
:mod:`.screen` is the stimulus monitor they share. A new kind of recording is one more package and
one more entry in :data:`RECORDINGS`; no stage changes.
"""

from __future__ import annotations

from typing import Any

from meiscope.recordings.container import Container
from meiscope.recordings.neuropixels import Neuropixels
from meiscope.recordings.protocol import Recording
from meiscope.recordings.two_photon import TwoPhoton

# data.recording -> its kind: the one list of recordings.
RECORDINGS: dict[str, Any] = {kind.name: kind for kind in (TwoPhoton, Neuropixels, Container)}


def recording_of(params: Any) -> Recording:
    """The recording kind ``params.data.recording`` names."""
    return RECORDINGS[params.data.recording]()


def sections_read(recording: str) -> frozenset[str]:
    """The params.yaml sections of recordings that a study of ``recording`` reads: its kind's own and
    those of the kinds it extends (the container downloads through the two-photon ``allen`` section)."""
    return frozenset(name for kind in RECORDINGS[recording].__mro__ for name in getattr(kind, "sections", {}))


def label_of(recording: str) -> str:
    """What the responses of ``recording`` are, as the report names them (e.g. ``two-photon dF/F``)."""
    return RECORDINGS[recording].label
