"""The registered ensemble says what it takes and returns, and loading it from a copy writes nowhere else."""

import hashlib
import shutil

import numpy as np
import pytest
import torch

from meiscope import tracking
from meiscope.config import ModelConfig, parse_params
from meiscope.model.data import fit_normalisation
from meiscope.model.ensemble import load_ensemble, save_ensemble
from meiscope.model.network import build_model, place_model

CELLS = np.array([517001, 517007, 517013])
SHAPE = (10, 12)
CROP = (0.1, 0.9, 0.2, 0.8)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny two-member ensemble, logged and registered from project ``original`` (its own sqlite store)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(tracking, "USER_TRACKING_URI", None)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path_factory.mktemp("registry") / "original"
    cfg = ModelConfig(layers=1, channels=[2], first_kernel=3, hidden_kernel=3)
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        members.append(place_model(build_model(cfg, len(CELLS), SHAPE), "cpu").eval())
    norm = fit_normalisation(np.random.default_rng(0).standard_normal((8, len(CELLS))))
    save_ensemble(root / "models" / "ensemble", members, cfg, norm, CELLS, SHAPE, 120.0, 55.0, [1, 2])
    params = parse_params({})
    with tracking.start_run(params, "train", root) as mlf:
        info = tracking.log_ensemble(mlf, root / "models" / "ensemble", "meiscope-ensemble", crop=CROP)
    yield root, info
    mp.undo()


def _hashes(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_model_version_carries_cell_ids_normalisation_geometry_and_a_description(registered):
    import mlflow

    root, info = registered
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version("meiscope-ensemble", str(info.registered_model_version))
    assert version.tags["cell_ids"] == ",".join(str(c) for c in CELLS)
    assert float(version.tags["pixel_mean"]) == 120.0 and float(version.tags["pixel_std"]) == 55.0
    assert (version.tags["image_height"], version.tags["image_width"]) == ("10", "12")
    deg = [float(v) for v in version.tags["degrees_per_pixel"].split(",")]
    from meiscope.visual_field import VisualField

    assert deg == pytest.approx(VisualField.from_crop(CROP, SHAPE).pixel_size_deg(), rel=1e-5)
    assert "3 cells" in version.description and "pixel_std 55" in version.description
    # the MLmodel file: metadata and named output columns, one per cell, in the model's output order
    model = mlflow.models.get_model_info(info.model_uri)
    assert model.metadata["cell_ids"] == CELLS.tolist() and model.metadata["image_height"] == 10
    assert model.signature.outputs.input_names() == [f"cell_{c}" for c in CELLS]
    ensemble = load_ensemble(root / "models" / "ensemble")
    assert model.metadata["response_scale"] == pytest.approx(ensemble.response_scale.tolist())


def test_loading_the_registered_model_from_a_copy_leaves_the_original_byte_identical(registered, tmp_path):
    original, info = registered
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = _hashes(original)
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    model = tracking.load_registered_model(f"models:/meiscope-ensemble/{info.registered_model_version}", uri)
    images = torch.from_numpy(np.random.default_rng(2).standard_normal((4, 1, *SHAPE)).astype(np.float32))
    expected = load_ensemble(original / "models" / "ensemble")(images)
    assert torch.allclose(model(images), expected)
    assert _hashes(original) == before
