"""Tiny planted datasets and models shared by the tests."""

import numpy as np
import torch

from meiscope.config import ModelConfig
from meiscope.model.network import ResponseModel, build_model

from meiscope.dataset import ResponseDataset


def make_dataset(images: np.ndarray, rates: np.ndarray, repeats: int = 4, noise: float = 0.1, seed: int = 0,
                 n_val: int = 10, n_test: int = 10, experiment_id: int = 1, first_cell_id: int = 500) -> ResponseDataset:
    """Trials = true rates ``(n_images, n)`` + Gaussian noise; the last images are val, then test."""
    rng = np.random.default_rng(seed)
    n_images, n = rates.shape
    trial_image = np.repeat(np.arange(n_images), repeats)
    responses = (rates[trial_image] + noise * rng.standard_normal((len(trial_image), n))).astype(np.float32)
    split = np.array(["train"] * n_images, dtype="<U5")
    split[n_images - n_val - n_test:n_images - n_test] = "val"
    split[n_images - n_test:] = "test"
    return ResponseDataset(experiment_id=experiment_id, images=images.astype(np.float32), image_ids=np.arange(n_images),
                           trial_image=trial_image, responses=responses,
                           blank_responses=np.zeros((3, n), np.float32), cell_ids=np.arange(n) + first_cell_id,
                           split=split, dropped_cell_ids=np.zeros(0, int), pixel_mean=120.0, pixel_std=40.0,
                           source="synthetic")


def local_models(n_neurons: int, shape: tuple[int, int], seeds: tuple[int, ...] = (0, 1),
                 cfg: ModelConfig | None = None) -> list[ResponseModel]:
    """Frozen eval-mode meiscope models (Gaussian readout, batch norm with non-trivial statistics).

    Neuron 0 sits in the top-right corner, neuron 1 in the middle, the others anywhere.
    """
    cfg = cfg or ModelConfig(layers=2, channels=[4, 6], first_kernel=5, hidden_kernel=3)
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_model(cfg, n_neurons, shape)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.3, 0.3)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)
        spots = torch.rand(n_neurons, 2) * torch.tensor([shape[0] - 1.0, shape[1] - 1.0])
        spots[0] = torch.tensor([0.0, shape[1] - 1.0])
        if n_neurons > 1:
            spots[1] = torch.tensor([(shape[0] - 1) / 2 + 0.3, (shape[1] - 1) / 2 - 0.2])
        model.readout.init_positions_(spots)
        models.append(model.eval().requires_grad_(False))
    return models


def sparse_noise(n_frames: int, shape: tuple[int, int], spots: int, rng: np.random.Generator) -> np.ndarray:
    """Locally sparse noise: ``spots`` white or black pixels per frame on gray (0)."""
    frames = np.zeros((n_frames, shape[0] * shape[1]))
    for frame in frames:
        frame[rng.choice(frame.size, spots, replace=False)] = rng.choice([-1.0, 1.0], spots)
    return frames.reshape(n_frames, *shape)
