"""Grayscale "natural" scenes for the synthetic sessions, built offline and deterministically.

Allen's natural-scenes stimulus is 118 grayscale photographs of 918 x 1174 pixels. We cannot ship
those, so we build a stand-in set with natural-image statistics from two sources:

- crops (random position and size, random left-right flip) of the photographs that are bundled
  INSIDE the installed scikit-image package (``skimage/data/*.png|jpg``; only files that are
  present are used, so nothing is ever downloaded);
- dead-leaves images (occluding disks with power-law radii, the classic model of natural-image
  statistics: scale invariance and a ~1/f amplitude spectrum) textured with 1/f noise.

Fresh scenes (new scenes to score a model on) can come from the same generator (``sources="session"``:
new crops of the same photographs) or from sources the session's scenes never use
(``sources="unseen"``: the bundled photographs outside :data:`PHOTOGRAPHS`, :data:`UNSEEN_PHOTOGRAPHS`,
and new dead-leaves textures).

Every scene is then given its own mean luminance and RMS contrast (natural photographs vary in
both) and quantised to integers in 0..255, like Allen's template (float32 holding uint8 values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from meiscope.errors import MeiscopeError
from meiscope.synthetic import portable

# Photographs in scikit-image's package data (not the text/page/synthetic test images).
PHOTOGRAPHS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png",
    "rocket.jpg", "cell.png", "clock_motion.png",
)
# Bundled photographs the session's scenes never use (motorcycle_right.png is left out: it is the other
# half of motorcycle_left.png's stereo pair, the same scene), for fresh scenes from unseen sources.
UNSEEN_PHOTOGRAPHS = ("ihc.png", "retina.jpg", "microaneurysms.png")
SCENE_SOURCES = ("session", "unseen")
PHOTO_FRACTION = 0.6  # share of scenes that are photo crops; the rest are dead leaves
MEAN_RANGE = (90.0, 160.0)  # per-scene mean luminance (0-255)
STD_RANGE = (35.0, 65.0)  # per-scene RMS contrast (0-255)


class SceneSourceError(MeiscopeError, FileNotFoundError):
    """None of the bundled scikit-image photographs could be found."""


def photograph_dir() -> Path:
    """Folder of the photographs bundled with the installed scikit-image."""
    import skimage.data

    return Path(skimage.data.__file__).parent


def load_photographs(names: Sequence[str] = PHOTOGRAPHS) -> list[np.ndarray]:
    """The bundled photographs ``names`` present in the installed scikit-image, as grayscale float32 in [0, 1].

    Returns:
        list of ``(height_i, width_i)`` float32 arrays (sizes differ).
    """
    from skimage.color import rgb2gray
    from skimage.io import imread

    folder = photograph_dir()
    photos = []
    for name in names:
        path = folder / name
        if not path.is_file():  # an older/newer wheel may not bundle it: skip, never download
            continue
        image = imread(path)
        if image.ndim == 3:
            image = rgb2gray(image[..., :3])
        else:
            image = image.astype(np.float64) / 255.0
        photos.append(np.asarray(image, dtype=np.float32))
    if not photos:
        raise SceneSourceError(f"{folder}: none of the photographs {list(names)} is bundled "
                               "with the installed scikit-image")
    return photos


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (antialiased when shrinking) of a 2-D array, computed in float64.

    float64 on purpose: in float32 the vectorised kernel's rounding depends on the CPU's SIMD
    width (AVX2 vs AVX-512), and a pixel that lands on .5 then rounds to another integer, so the
    scenes (and every file after them) would differ between machines. Returns float32.
    """
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))[None, None]
    out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].numpy().astype(np.float32)


def _photo_crop(photo: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop with the scene's aspect ratio (50-100% of the largest), maybe flipped, resized."""
    ph, pw = photo.shape
    aspect = height / width
    ch, cw = (pw * aspect, pw) if ph / pw >= aspect else (ph, ph / aspect)
    scale = rng.uniform(0.5, 1.0)
    ch, cw = max(int(ch * scale), 8), max(int(cw * scale), 8)
    top = int(rng.integers(0, ph - ch + 1))
    left = int(rng.integers(0, pw - cw + 1))
    crop = photo[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return _resize(crop, height, width)


def pink_noise(height: int, width: int, rng: np.random.Generator, exponent: float = 1.0) -> np.ndarray:
    """Gaussian noise with a 1/f^exponent amplitude spectrum, zero mean and unit std.

    Returns:
        ``(height, width)`` float32.
    """
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    spectrum = np.fft.rfft2(rng.standard_normal((height, width))) / f ** exponent
    spectrum[0, 0] = 0.0
    image = np.fft.irfft2(spectrum, s=(height, width))
    return (image / (image.std() + 1e-12)).astype(np.float32)


def dead_leaves(height: int, width: int, rng: np.random.Generator, n_leaves: int = 400) -> np.ndarray:
    """Dead-leaves image: disks with radii ~ r^-3 (scale invariant) painted back to front.

    Each leaf has its own gray level plus a weak 1/f texture; the background is 1/f noise.

    Returns:
        ``(height, width)`` float32, arbitrary units (normalised later).
    """
    image = 0.5 + 0.15 * pink_noise(height, width, rng)
    texture = 0.08 * pink_noise(height, width, rng)
    r_min, r_max = 0.01 * width, 0.35 * width
    # inverse CDF of p(r) ~ r^-3 on [r_min, r_max]
    u = rng.random(n_leaves)
    radii = portable.power(r_min ** -2 - u * (r_min ** -2 - r_max ** -2), -0.5)
    cy = rng.uniform(0, height, n_leaves)
    cx = rng.uniform(0, width, n_leaves)
    gray = rng.beta(2.0, 2.0, n_leaves)
    for r, y, x, g in zip(radii, cy, cx, gray):
        y0, y1 = max(int(y - r), 0), min(int(y + r) + 1, height)
        x0, x1 = max(int(x - r), 0), min(int(x + r) + 1, width)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1)[:, None] - y
        xx = np.arange(x0, x1)[None, :] - x
        inside = yy ** 2 + xx ** 2 <= r ** 2
        patch = image[y0:y1, x0:x1]
        patch[inside] = g + texture[y0:y1, x0:x1][inside]
    return image.astype(np.float32)


def _to_pixels(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Give the scene a random mean and RMS contrast, clip to 0..255 and round to integers."""
    mean = rng.uniform(*MEAN_RANGE)
    std = rng.uniform(*STD_RANGE)
    z = (image - image.mean()) / (image.std() + 1e-6)
    return np.clip(np.rint(mean + std * z), 0, 255).astype(np.float32)


def make_scenes(n_images: int, height: int, width: int, seed: int | Sequence[int],
                progress: bool = False, sources: str = "session") -> np.ndarray:
    """Build the natural-scenes template.

    Args:
        n_images: number of scenes (Allen: 118).
        height, width: pixels of each scene (Allen: 918 x 1174).
        seed: all randomness (which photo, crop, flip, leaves, luminance) comes from it (an int or a
            sequence of ints, as ``numpy.random.default_rng`` takes).
        progress: show a progress bar.
        sources: ``"session"`` (the photographs of :data:`PHOTOGRAPHS`) or ``"unseen"`` (only
            :data:`UNSEEN_PHOTOGRAPHS`: fresh scenes that share no photograph with any session's scenes).

    Returns:
        ``(n_images, height, width)`` float32 holding integer values in 0..255.
    """
    from tqdm import tqdm

    if n_images < 1 or height < 8 or width < 8:
        raise ValueError(f"make_scenes: need n_images >= 1 and height, width >= 8 "
                         f"(got {n_images}, {height}, {width})")
    if sources not in SCENE_SOURCES:
        raise ValueError(f"make_scenes: sources must be one of {list(SCENE_SOURCES)} (got {sources!r})")
    rng = np.random.default_rng(seed)
    photos = load_photographs(PHOTOGRAPHS if sources == "session" else UNSEEN_PHOTOGRAPHS)
    n_photo = int(round(PHOTO_FRACTION * n_images))
    is_photo = np.zeros(n_images, dtype=bool)
    is_photo[:n_photo] = True
    rng.shuffle(is_photo)
    # cycle through the photographs in a shuffled order so each is used about equally often
    photo_order = np.concatenate([rng.permutation(len(photos)) for _ in range(n_photo // len(photos) + 1)])
    # dead leaves are drawn at 1/4 resolution (edges get soft on upsampling, like optical blur)
    small_h, small_w = max(height // 4, 16), max(width // 4, 16)
    scenes = np.empty((n_images, height, width), dtype=np.float32)
    k = 0
    for i in tqdm(range(n_images), desc="scenes", disable=not progress):
        if is_photo[i]:
            image = _photo_crop(photos[photo_order[k]], height, width, rng)
            k += 1
        else:
            image = _resize(dead_leaves(small_h, small_w, rng), height, width)
        scenes[i] = _to_pixels(image, rng)
    return scenes
