"""Ground truth of synthetic sessions: which cells respond, and the true neurons themselves.

Real Allen sessions have no ground truth; every function here says so by returning ``None``
(or ``False``) rather than failing, so that stages can skip their truth checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np


def truth_file(cache_dir: Path, experiment_id: int) -> Path:
    """Where the synthetic cortex keeps a session's ground truth."""
    from meiscope.synthetic.population import ground_truth_paths

    return ground_truth_paths(Path(cache_dir), experiment_id)[0]


def is_synthetic(cache_dir: Path, experiment_id: int) -> bool:
    """True when the session was written by the synthetic cortex (it has ground truth)."""
    return truth_file(cache_dir, experiment_id).is_file()


def load_population(cache_dir: Path, experiment_id: int, device: Any = "cpu") -> Any | None:
    """The session's :class:`~meiscope.synthetic.population.TruePopulation`, or None for real data."""
    if not is_synthetic(cache_dir, experiment_id):
        return None
    from meiscope.synthetic.population import load_true_population

    return load_true_population(Path(cache_dir), experiment_id, device=device)


def responsive_ids(population: Any) -> np.ndarray:
    """Cell ids the truth says respond to natural scenes."""
    return np.asarray(population.cell_ids)[np.asarray(population.responsive, dtype=bool)]


def cell_columns(population: Any, cell_ids: np.ndarray) -> np.ndarray:
    """Columns of the population's output that hold ``cell_ids`` (in that order)."""
    index = {int(c): i for i, c in enumerate(population.cell_ids)}
    return np.array([index[int(c)] for c in cell_ids], dtype=np.int64)


def true_rates(population: Any, pixels: np.ndarray, cell_ids: np.ndarray, device: Any = "cpu",
               batch: int = 64) -> np.ndarray:
    """True mean rates (Hz) of ``cell_ids`` for images given as 0-255 screen pixels.

    Args:
        pixels: ``(n_images, height, width)`` at any resolution of the screen image.

    Returns:
        ``(n_images, len(cell_ids))`` float64.
    """
    import torch

    columns = torch.as_tensor(cell_columns(population, cell_ids))
    out = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch):
            chunk = torch.as_tensor(np.asarray(pixels[start:start + batch], dtype=np.float32), device=device)
            out.append(population(chunk)[:, columns.to(chunk.device)].double().cpu().numpy())
    return np.concatenate(out, axis=0)


FRESH_STREAM = 0xF4E5  # keeps the fresh scenes' random stream apart from the session's (seeded by seed alone)
FRESH_SCALE = 4  # fresh scenes are drawn at 1/4 of the session's scene size (the model sees ~36 x 46)


def fresh_model_images(cache_dir: Path, experiment_id: int, n_images: int, seed: int, crop: list[float],
                       shape: tuple[int, int], pixel_mean: float, pixel_std: float,
                       progress: bool = False) -> np.ndarray:
    """Model-space images of NEW natural scenes, never shown in the session.

    They come from the generator that made the session's scenes (:func:`make_scenes`: the same
    photographs, dead leaves, luminance and contrast ranges) on a random stream of their own
    (``(session seed, FRESH_STREAM, seed)``), drawn at 1/:data:`FRESH_SCALE` of the scene size and
    then cropped and area-downsampled exactly like the session's images.

    Returns:
        ``(n_images, H, W)`` float32, normalised with the dataset's ``pixel_mean`` / ``pixel_std``.
    """
    from meiscope.responses import prepare_images
    from meiscope.synthetic.population import ground_truth_summary
    from meiscope.synthetic.scenes import make_scenes

    config = ground_truth_summary(Path(cache_dir), experiment_id)["config"]
    height = max(int(config["image_height"]) // FRESH_SCALE, 8)
    width = max(int(config["image_width"]) // FRESH_SCALE, 8)
    scenes = make_scenes(n_images, height, width, [int(config["seed"]), FRESH_STREAM, int(seed)], progress=progress,
                         sources=str(config.get("fresh_scene_sources", "session")))  # "unseen": no session photograph
    pixels = prepare_images(scenes, crop, tuple(shape))
    return ((pixels - pixel_mean) / pixel_std).astype(np.float32)


def rates_for_model_images(population: Any, to_pixels: Callable[[np.ndarray], np.ndarray],
                           cell_ids: np.ndarray, device: Any = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """A callable ``model-space images (n, H, W) -> true rates (n, n_cells)`` for the closed loop."""

    def rates(model_images: np.ndarray) -> np.ndarray:
        return true_rates(population, np.clip(to_pixels(model_images), 0, 255), cell_ids, device)

    return rates
