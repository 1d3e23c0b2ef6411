"""What the in-silico stages (``mei``, ``gabor``, ``validate``) share: the models, the budget, MLflow logging.

Each of those stages reads the trained ensemble and the studied dataset from their standard
places (:class:`~meiscope.paths.Layout`) through :func:`load_setup`, hands the models to the
primitives of :mod:`meiscope.insilico` ("images in, responses out") and logs what it wrote with
:func:`log_stage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meiscope.config import Params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout


@dataclass
class InSilicoSetup:
    """What every in-silico experiment needs: models split into optimisation / held-out, and the budget.

    Attributes:
        opt_models: ensemble members whose mean is optimised.
        val_models: held-out members that only score ("val" activation).
        cell_ids: ``(n_neurons,)`` the modelled neurons, in rank order (model output columns).
        natural_images: ``(n_images, H, W)`` model-space dataset images.
        norm: L2 budget of every synthesised image in model space.
        bounds: model-space values of screen pixels 0 and 255.
    """

    opt_models: list
    val_models: list
    cell_ids: np.ndarray
    natural_images: np.ndarray
    image_shape: tuple[int, int]
    pixel_mean: float
    pixel_std: float
    norm: float
    bounds: tuple[float, float]
    device: Any
    experiment_id: int

    def to_pixels(self, model_images: np.ndarray) -> np.ndarray:
        """Screen pixel values (0..255 when on screen) of model-space images ``(..., H, W)``."""
        return model_images * self.pixel_std + self.pixel_mean

    @property
    def neurons(self) -> np.ndarray:
        """``(n_neurons,)`` the model output columns, ``0 .. n_neurons - 1``."""
        return np.arange(len(self.cell_ids))


def load_setup(params: Params, root: Path, device: str | None) -> InSilicoSetup:
    """Load the ensemble and the studied dataset, and split the members into optimisation / held-out."""
    from meiscope.insilico.budget import natural_image_norm
    from meiscope.model import resolve_device
    from meiscope.model.ensemble import load_ensemble
    from meiscope.model.network import inference_copy
    from meiscope.study import load_study_dataset

    layout = Layout.from_params(params, root)
    torch_device = resolve_device(device or params.mei.device)
    ensemble = load_ensemble(layout.ensemble, device=torch_device)
    n_val = params.mei.n_val_models
    if len(ensemble.members) <= n_val:
        raise MeiscopeError(f"mei.n_val_models ({n_val}) leaves no model to optimise on: the ensemble in "
                            f"{layout.ensemble} has {len(ensemble.members)} members (add train.seeds)")
    ds = load_study_dataset(layout)
    low, high = (0.0 - ensemble.pixel_mean) / ensemble.pixel_std, (255.0 - ensemble.pixel_mean) / ensemble.pixel_std
    return InSilicoSetup(
        opt_models=[inference_copy(m) for m in ensemble.members[:-n_val]],
        val_models=[inference_copy(m) for m in ensemble.members[-n_val:]],
        cell_ids=np.asarray(ensemble.cell_ids), natural_images=ds.images,
        image_shape=tuple(ensemble.image_shape), pixel_mean=ensemble.pixel_mean, pixel_std=ensemble.pixel_std,
        norm=params.mei.norm or params.mei.norm_fraction * natural_image_norm(ds.images), bounds=(low, high),
        device=torch_device,
        experiment_id=ds.experiment_id)


def load_meis(layout: Layout) -> np.ndarray:
    """``(n_neurons, H, W)`` the model-space MEIs the ``mei`` stage wrote (a clear error when it has not run)."""
    path = layout.mei / "meis.npz"
    if not path.is_file():
        raise MeiscopeError(f"{path}: missing (run `meiscope mei` first)")
    with np.load(path) as f:
        return f["meis"]


def log_stage(mlf: Any, metrics: dict, folder: Path, images: dict[str, np.ndarray] | None = None) -> None:
    """Metrics, every file of the stage's folder, and a few images for MLflow's image viewer (nothing without a run)."""
    if mlf is None:
        return
    mlf.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)})
    mlf.log_artifacts(str(folder), artifact_path=folder.name)
    for key, image in (images or {}).items():
        mlf.log_image(np.clip(image, 0, 255).astype(np.uint8), key=key)
