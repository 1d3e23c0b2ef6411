"""Tiny planted datasets shared by the model and train tests."""

import numpy as np

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
