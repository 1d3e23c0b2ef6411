"""Save and load the trained members as one ensemble folder.

Layout of ``out_dir``: ``member_<seed>.pt`` (one ``state_dict`` per seed) and
``ensemble.json`` (model config, seeds, cell ids, image shape, pixel and response
normalisation). ``ensemble.json`` is written last, so a folder without it is incomplete.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from meiscope.atomic import atomic_path, write_json
from meiscope.config import ConfigError, ModelConfig, as_dict, build_section
from meiscope.model import resolve_device
from meiscope.model.data import ResponseNormalisation
from meiscope.model.network import ModelError, ResponseModel, build_model, place_model

ENSEMBLE_FORMAT = 1
_KEYS = ("format", "model", "seeds", "cell_ids", "image_shape", "pixel_mean", "pixel_std",
         "response_offset", "response_scale")


def save_torch(obj: object, path: str | Path) -> None:
    """``torch.save`` atomically and byte-reproducibly.

    Saving straight to a path names the zip archive inside after the (random) temporary
    file, so identical weights would give different bytes; through a buffer they do not
    (DVC hashes of the model files stay stable).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path, suffix=".pt") as tmp:
        tmp.write_bytes(buffer.getvalue())


def member_path(out_dir: str | Path, seed: int) -> Path:
    return Path(out_dir) / f"member_{int(seed)}.pt"


@dataclass
class Ensemble:
    """Trained members that predict the same neurons; call it like a model.

    Attributes:
        members: the :class:`ResponseModel` of each seed, in eval mode, frozen
            (``requires_grad=False``), on ``device``.
        model_cfg: their architecture.
        cell_ids: ``(n_neurons,)`` Allen cell specimen ids, in output order.
        image_shape: ``(H, W)`` of model-space images.
        pixel_mean, pixel_std: model space = ``(pixels - pixel_mean) / pixel_std`` (0-255 screen pixels).
        seeds: one per member.
        response_offset, response_scale: ``(n_neurons,)`` dF/F = output * scale + offset.
        device: where the members live.
    """

    members: list[ResponseModel]
    model_cfg: ModelConfig
    cell_ids: np.ndarray
    image_shape: tuple[int, int]
    pixel_mean: float
    pixel_std: float
    seeds: list[int]
    response_offset: np.ndarray
    response_scale: np.ndarray
    device: torch.device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Mean member output ``(N, n_neurons)`` (positive, normalised units; differentiable).

        ``images``: ``(N, H, W)`` or ``(N, 1, H, W)`` model-space tensor on ``device``. Units are
        an increasing affine map of dF/F (see :meth:`to_dff`), so maximising either is the same.
        """
        if images.dim() == 3:
            images = images.unsqueeze(1)
        return torch.stack([m(images) for m in self.members]).mean(0)

    def as_module(self) -> torch.nn.Module:
        """The ensemble as one ``torch.nn.Module`` (mean of the members), e.g. for MLflow's model format."""
        return EnsembleModule(self.members)

    def to_dff(self, output: torch.Tensor) -> torch.Tensor:
        """Normalised output ``(..., n_neurons)`` -> dF/F."""
        return self.members[0].to_dff(output)

    def predict(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """Mean prediction in dF/F ``(N, n_neurons)`` for model-space images ``(N, H, W)`` (numpy)."""
        from meiscope.model.evaluation import predict

        return predict(self.members, images, self.device, batch)

    def to_model(self, pixels: np.ndarray) -> np.ndarray:
        """0-255 screen pixels -> model space."""
        return (pixels - self.pixel_mean) / self.pixel_std

    def to_pixels(self, model_images: np.ndarray) -> np.ndarray:
        """Model space -> 0-255 screen pixels (not clipped)."""
        return model_images * self.pixel_std + self.pixel_mean

    def neuron_index(self, cell_id: int) -> int:
        """Output column of Allen cell ``cell_id``."""
        hits = np.flatnonzero(self.cell_ids == int(cell_id))
        if not len(hits):
            raise ModelError(f"cell {cell_id} is not modelled by this ensemble")
        return int(hits[0])


class EnsembleModule(torch.nn.Module):
    """Mean of the members' outputs: ``(N, 1, H, W)`` or ``(N, H, W)`` model space -> ``(N, n_neurons)``."""

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 3:
            images = images.unsqueeze(1)
        return torch.stack([m(images) for m in self.members]).mean(0)


def save_ensemble(out_dir: str | Path, members: Sequence[ResponseModel], model_cfg: ModelConfig,
                  normalisation: ResponseNormalisation, cell_ids: np.ndarray, image_shape: Sequence[int],
                  pixel_mean: float, pixel_std: float, seeds: Sequence[int]) -> Path:
    """Write ``member_<seed>.pt`` per member and ``ensemble.json`` (all atomically); returns the json path.

    Member files of other seeds left in ``out_dir`` by an earlier run are removed.
    """
    out_dir = Path(out_dir)
    if len(members) != len(seeds):
        raise ValueError(f"{len(members)} members but {len(seeds)} seeds")
    out_dir.mkdir(parents=True, exist_ok=True)
    keep = {member_path(out_dir, s).name for s in seeds}
    for stale in out_dir.glob("member_*.pt"):
        if stale.name not in keep:
            stale.unlink()
    for seed, model in zip(seeds, members):
        save_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, member_path(out_dir, seed))
    meta = {"format": ENSEMBLE_FORMAT, "model": as_dict(model_cfg), "seeds": [int(s) for s in seeds],
            "cell_ids": [int(c) for c in cell_ids], "image_shape": [int(v) for v in image_shape],
            "pixel_mean": float(pixel_mean), "pixel_std": float(pixel_std),
            "response_offset": [float(v) for v in normalisation.offset],
            "response_scale": [float(v) for v in normalisation.scale]}
    path = out_dir / "ensemble.json"
    write_json(path, meta)
    return path


def load_ensemble(out_dir: str | Path, device: torch.device | str = "cpu") -> Ensemble:
    """Read an ensemble written by :func:`save_ensemble`; a missing or incomplete folder is a ModelError."""
    out_dir = Path(out_dir)
    device = resolve_device(device)
    meta_path = out_dir / "ensemble.json"
    if not out_dir.is_dir():
        raise ModelError(f"{out_dir}: no such ensemble folder (run `meiscope train` first)")
    if not meta_path.is_file():
        raise ModelError(f"{meta_path}: missing (the ensemble folder is incomplete; rerun `meiscope train`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"{meta_path}: unreadable ({err})") from None
    missing = [k for k in _KEYS if k not in meta]
    if missing:
        raise ModelError(f"{meta_path}: missing keys {missing}")
    if meta["format"] != ENSEMBLE_FORMAT:
        raise ModelError(f"{meta_path}: format {meta['format']} is not the supported {ENSEMBLE_FORMAT}")
    try:
        model_cfg = build_section(ModelConfig, meta["model"], "model")
    except ConfigError as err:
        raise ModelError(f"{meta_path}: {err}") from None
    cell_ids = np.asarray(meta["cell_ids"], dtype=np.int64)
    image_shape = (int(meta["image_shape"][0]), int(meta["image_shape"][1]))
    members = []
    for seed in meta["seeds"]:
        path = member_path(out_dir, seed)
        if not path.is_file():
            raise ModelError(f"{path}: missing member file (the ensemble folder is incomplete)")
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:
            raise ModelError(f"{path}: unreadable member file ({type(err).__name__})") from None
        model = place_model(build_model(model_cfg, len(cell_ids), image_shape), device)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
            raise ModelError(f"{path}: does not match ensemble.json's model ({first})") from None
        model.eval().requires_grad_(False)  # frozen: gradients flow to the images only (MEIs)
        members.append(model)
    return Ensemble(members=members, model_cfg=model_cfg, cell_ids=cell_ids, image_shape=image_shape,
                    pixel_mean=float(meta["pixel_mean"]), pixel_std=float(meta["pixel_std"]),
                    seeds=[int(s) for s in meta["seeds"]],
                    response_offset=np.asarray(meta["response_offset"], dtype=np.float32),
                    response_scale=np.asarray(meta["response_scale"], dtype=np.float32), device=device)
