"""Linear-nonlinear (LN) baseline: ridge regression from pixels + a fitted output nonlinearity.

Per neuron: ``r = offset + gain * max(w . x + b - threshold, 0) ** exponent`` where ``x`` is
the (optionally 2x average-pooled) image. ``w`` comes from ridge regression of the train image
means (dF/F) on pixels, solved in closed form in the dual (``n_images x n_images``) because
there are far more pixels than train images. The nonlinearity is a small grid over thresholds
(quantiles of the linear drive) and exponents with gain/offset by least squares: all closed
form, well under a second for ~100 neurons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meiscope.dataset import ResponseDataset

_EXPONENTS = (1.0, 1.5, 2.0)
_THRESHOLD_QUANTILES = np.linspace(0.0, 0.8, 9)


@dataclass
class LNModel:
    """A fitted LN model for ``n`` neurons.

    Attributes:
        weights: ``(n_features, n)`` linear filter over the pooled pixels.
        bias: ``(n,)`` linear offset.
        threshold, exponent, gain, offset: ``(n,)`` output nonlinearity (output in dF/F).
        downsample: average-pooling factor applied to the images before the filter.
        image_shape: ``(H, W)`` of the model-space images it was fitted on.
    """

    weights: np.ndarray
    bias: np.ndarray
    threshold: np.ndarray
    exponent: np.ndarray
    gain: np.ndarray
    offset: np.ndarray
    downsample: int
    image_shape: tuple[int, int]

    def linear(self, images: np.ndarray) -> np.ndarray:
        """Linear drive ``(N, n)`` for model-space images ``(N, H, W)``."""
        return features(images, self.downsample) @ self.weights + self.bias

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predicted image-mean responses ``(N, n)`` in dF/F."""
        drive = np.maximum(self.linear(images) - self.threshold, 0.0) ** self.exponent
        return self.offset + self.gain * drive

    def filters(self) -> np.ndarray:
        """The linear filters as images ``(n, H // downsample, W // downsample)``."""
        h, w = self.image_shape[0] // self.downsample, self.image_shape[1] // self.downsample
        return self.weights.T.reshape(-1, h, w)


def features(images: np.ndarray, downsample: int = 2) -> np.ndarray:
    """Flattened, ``downsample`` x ``downsample`` average-pooled pixels ``(N, H'*W')``."""
    images = np.asarray(images, dtype=np.float64)
    if downsample > 1:
        n, h, w = images.shape
        h2, w2 = h // downsample, w // downsample
        images = images[:, :h2 * downsample, :w2 * downsample]
        images = images.reshape(n, h2, downsample, w2, downsample).mean(axis=(2, 4))
    return images.reshape(len(images), -1)


def ridge_dual(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression ``y ~ x w + b`` solved through the ``(N, N)`` Gram matrix.

    ``x`` ``(N, p)``, ``y`` ``(N, n)``. The penalty is ``l2`` times the mean eigenvalue of the
    centred Gram matrix, so ``l2`` means the same at any image size or pixel scale.
    Returns ``w`` ``(p, n)`` and ``b`` ``(n,)``.
    """
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc @ xc.T
    penalty = l2 * np.trace(gram) / len(gram) + 1e-10
    alpha = np.linalg.solve(gram + penalty * np.eye(len(gram)), yc)
    w = xc.T @ alpha
    return w, y_mean - x_mean @ w


def fit_nonlinearity(drive: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Best ``offset + gain * max(drive - threshold, 0) ** exponent`` per neuron (least squares).

    ``drive``, ``y`` ``(N, n)``. Returns ``threshold, exponent, gain, offset`` each ``(n,)``.
    """
    n = drive.shape[1]
    best_sse = np.full(n, np.inf)
    out = [np.zeros(n), np.ones(n), np.ones(n), np.zeros(n)]
    thresholds = np.quantile(drive, _THRESHOLD_QUANTILES, axis=0)  # (Q, n)
    for theta in thresholds:
        for p in _EXPONENTS:
            z = np.maximum(drive - theta, 0.0) ** p
            zc = z - z.mean(axis=0)
            var = (zc ** 2).sum(axis=0)
            gain = np.where(var > 1e-12, (zc * (y - y.mean(axis=0))).sum(axis=0) / np.maximum(var, 1e-12), 0.0)
            offset = y.mean(axis=0) - gain * z.mean(axis=0)
            sse = ((offset + gain * z - y) ** 2).sum(axis=0)
            better = sse < best_sse - 1e-12
            best_sse = np.where(better, sse, best_sse)
            for arr, value in zip(out, (theta, np.full(n, p), gain, offset)):
                arr[better] = np.broadcast_to(value, (n,))[better]
    return tuple(out)


def fit_ln(ds: ResponseDataset, l2: float = 1.0, downsample: int = 2) -> LNModel:
    """Fit the LN baseline on the ``train`` images of ``ds`` (image means in dF/F)."""
    repeats = ds.repeats()
    train = ds.image_indices("train")
    train = train[repeats[train] > 0]
    downsample = max(1, min(int(downsample), min(ds.images.shape[1:])))
    x = features(ds.images[train], downsample)
    y = ds.image_means()[train].astype(np.float64)
    w, b = ridge_dual(x, y, l2)
    threshold, exponent, gain, offset = fit_nonlinearity(x @ w + b, y)
    return LNModel(weights=w, bias=b, threshold=threshold, exponent=exponent, gain=gain, offset=offset,
                   downsample=downsample, image_shape=(int(ds.images.shape[1]), int(ds.images.shape[2])))
