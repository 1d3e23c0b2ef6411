"""The container's stimuli that are not natural scenes, generated offline and deterministically.

- **Locally sparse noise** (Allen's ``locally_sparse_noise``, sessions C / C2): a 16 x 28 grid,
  mostly gray (127), with white (255) and black (0) spots, about 11 per frame, no two spots within
  5 grid squares of each other (Chebyshev distance), 250 ms per frame, back to back.
- **Natural movies** (``natural_movie_one/two/three``): Allen's are clips of one film, 304 x 608
  frames at 30 Hz. Here each movie is a sequence of shots; each shot is a camera panning over its
  own large dead-leaves world (soft-edged occluding disks with 1/f texture, as in
  :mod:`.scenes`), its velocity a smooth random process, cut to a new world every few seconds.
  The movies use NO photographs: the natural scenes are crops of the bundled photographs
  (test images included), so a movie panning over one could show a test image's content to the
  model during training. Dead leaves share no source with any scene.
- Static and drifting gratings are drawn from their parameters (:mod:`meiscope.recordings.brain_observatory`,
  :mod:`meiscope.visual_field`); Allen stores no template for them.
"""

from __future__ import annotations

import numpy as np

from meiscope.synthetic.scenes import MEAN_RANGE, STD_RANGE, _resize, dead_leaves

SPARSE_NOISE_GRID = (16, 28)
SPOTS_PER_FRAME = 11
SPOT_EXCLUSION = 5  # grid squares: no two spots closer than this (Chebyshev distance)
MOVIE_SHAPE = (304, 608)
SHOT_FRAMES = (90, 300)  # 3-10 s per shot at 30 Hz
CAMERA_SPEED_PX = 1.5  # s.d. of the camera velocity, movie pixels per frame (~15 deg/s on the monitor)
CAMERA_SMOOTHNESS = 0.97  # AR(1) coefficient of the velocity from one frame to the next
WORLD_MARGIN = (96, 176)  # extra world rows / cols around the frame the camera can pan over (each side)


def sparse_noise_frames(n_frames: int, rng: np.random.Generator, grid: tuple[int, int] = SPARSE_NOISE_GRID,
                        spots: int = SPOTS_PER_FRAME, exclusion: int = SPOT_EXCLUSION) -> np.ndarray:
    """A locally-sparse-noise template.

    Spots are placed one at a time at a random free square (white or black at random); each spot
    blocks the squares within ``exclusion - 1`` of it, so a frame holds ``spots`` spots or as many
    as fit.

    Returns:
        ``(n_frames, rows, cols)`` uint8 in {0, 127, 255}.
    """
    rows, cols = grid
    frames = np.full((n_frames, rows, cols), 127, dtype=np.uint8)
    for frame in frames:
        free = np.ones((rows, cols), dtype=bool)
        for _ in range(spots):
            candidates = np.flatnonzero(free)
            if len(candidates) == 0:
                break
            r, c = divmod(int(candidates[rng.integers(len(candidates))]), cols)
            frame[r, c] = 255 if rng.random() < 0.5 else 0
            free[max(r - exclusion + 1, 0):r + exclusion, max(c - exclusion + 1, 0):c + exclusion] = False
    return frames


def camera_path(n_frames: int, limits: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``(n_frames, 2)`` float (row, col) offsets of a camera panning within ``[0, limits]``.

    The velocity is an AR(1) process (smooth pans that speed up, slow down and turn); the path
    reflects off the world's edges.
    """
    a = CAMERA_SMOOTHNESS
    velocity = rng.standard_normal(2) * CAMERA_SPEED_PX
    position = rng.uniform(0, 1, 2) * np.asarray(limits, dtype=float)
    path = np.empty((n_frames, 2))
    for t in range(n_frames):
        path[t] = position
        velocity = a * velocity + np.sqrt(1 - a * a) * CAMERA_SPEED_PX * rng.standard_normal(2)
        position = position + velocity
        for axis in range(2):  # reflect off the edges
            if position[axis] < 0:
                position[axis], velocity[axis] = -position[axis], -velocity[axis]
            if position[axis] > limits[axis]:
                position[axis], velocity[axis] = 2 * limits[axis] - position[axis], -velocity[axis]
    return np.clip(path, 0, np.asarray(limits, dtype=float))


def _pan(world: np.ndarray, path: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Frames of ``shape`` cut from ``world`` at sub-pixel offsets ``path`` (bilinear)."""
    height, width = shape
    frames = np.empty((len(path), height, width), dtype=np.float32)
    for t, (row, col) in enumerate(path):
        r0, c0 = int(row), int(col)
        fr, fc = row - r0, col - c0
        window = world[r0:r0 + height + 1, c0:c0 + width + 1].astype(np.float64)
        frames[t] = ((1 - fr) * (1 - fc) * window[:-1, :-1] + (1 - fr) * fc * window[:-1, 1:]
                     + fr * (1 - fc) * window[1:, :-1] + fr * fc * window[1:, 1:])
    return frames


def natural_movie(n_frames: int, rng: np.random.Generator, shape: tuple[int, int] = MOVIE_SHAPE,
                  margin: tuple[int, int] = WORLD_MARGIN) -> np.ndarray:
    """A natural-movie template: shots of a camera panning over dead-leaves worlds (module docstring).

    Returns:
        ``(n_frames, height, width)`` uint8.
    """
    height, width = shape
    world_shape = (height + 2 * margin[0] + 1, width + 2 * margin[1] + 1)
    movie = np.empty((n_frames, height, width), dtype=np.uint8)
    start = 0
    while start < n_frames:
        length = min(int(rng.integers(SHOT_FRAMES[0], SHOT_FRAMES[1] + 1)), n_frames - start)
        # drawn at 1/4 resolution and upsampled: soft edges, like optical blur (as the scenes)
        small = dead_leaves(max(world_shape[0] // 4, 16), max(world_shape[1] // 4, 16), rng)
        world = _resize(small, *world_shape).astype(np.float64)
        world = (world - world.mean()) / (world.std() + 1e-6)
        world = rng.uniform(*MEAN_RANGE) + rng.uniform(*STD_RANGE) * world
        frames = _pan(world, camera_path(length, (2 * margin[0], 2 * margin[1]), rng), shape)
        movie[start:start + length] = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
        start += length
    return movie
