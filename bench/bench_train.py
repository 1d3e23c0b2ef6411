"""Benchmark: training speed (s/epoch, images/s) of the response model on a default-size dataset.

Fake session of the default size (118 images of 36x46, 50 repeats, 100 neurons; split
0.75 / 0.10 / 0.15) with planted Gabor-like neurons so training behaves as usual. Timed
configurations (``common.architectures()``): the default architecture (``ModelConfig()``), the one
``tune`` picks on the default session, and the largest one in the tuning space (most layers,
most channels in every layer, largest kernels, full convolutions, batch norm) with each readout. One epoch = Adam steps over the train images
(batch ``TrainConfig().batch_size``) + scoring the validation images; the first epoch (warm-up,
imports, receptive-field initialisation) is left out of the median. ``predict_img_per_s`` is
eval-mode inference (batch 256).

    .venv/bin/python bench/bench_train.py [--device auto] [--epochs 6] [--neurons 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import HEIGHT, WIDTH, add_machine_args, architectures, describe, machine, prepare  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from meiscope.atomic import write_json  # noqa: E402
from meiscope.config import ModelConfig, TrainConfig  # noqa: E402
from meiscope.dataset import ResponseDataset  # noqa: E402
from meiscope.model.evaluation import predict  # noqa: E402
from meiscope.model.training import train_one  # noqa: E402

N_IMAGES, REPEATS = 118, 50


def fake_images(n_images: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_images, 36, 46)`` 1/f ("pink") noise images, standardised (model space)."""
    spectrum = np.fft.fft2(rng.standard_normal((n_images, HEIGHT, WIDTH)))
    fy, fx = np.meshgrid(np.fft.fftfreq(HEIGHT), np.fft.fftfreq(WIDTH), indexing="ij")
    images = np.real(np.fft.ifft2(spectrum / np.maximum(np.hypot(fy, fx), 1 / WIDTH)))
    return ((images - images.mean()) / images.std()).astype(np.float32)


def fake_neurons(n_neurons: int, rng: np.random.Generator) -> np.ndarray:
    """Quadrature Gabor pairs ``(n_neurons, 2, H, W)`` at random positions, orientations, wavelengths."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    filters = np.empty((n_neurons, 2, HEIGHT, WIDTH))
    for n in range(n_neurons):
        row, col = rng.uniform(6, HEIGHT - 6), rng.uniform(6, WIDTH - 6)
        theta, lam = rng.uniform(0, np.pi), rng.uniform(5, 12)
        env = np.exp(-((yy - row) ** 2 + (xx - col) ** 2) / (2 * (lam / 3) ** 2))
        u = (xx - col) * np.cos(theta) + (yy - row) * np.sin(theta)
        filters[n] = env * np.cos(2 * np.pi * u / lam), env * np.sin(2 * np.pi * u / lam)
    return filters


def fake_rates(images: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """True mean responses ``(n_images, n)``: odd neurons rectified (simple), even ones energy (complex)."""
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    even = flat @ filters[:, 0].reshape(len(filters), -1).T
    odd = flat @ filters[:, 1].reshape(len(filters), -1).T
    simple = np.arange(len(filters)) % 2 == 1
    drive = np.where(simple, np.maximum(even, 0), np.hypot(even, odd))
    return 0.3 * drive / np.linalg.norm(filters[:, 0].reshape(len(filters), -1), axis=1) / 4


def fake_dataset(n_neurons: int, seed: int = 0, noise: float = 0.3) -> tuple[ResponseDataset, np.ndarray]:
    """A default-size session and its neurons' filters (``fake_rates(images, filters)`` = the truth)."""
    rng = np.random.default_rng(seed)
    images = fake_images(N_IMAGES, rng)
    filters = fake_neurons(n_neurons, rng)
    rates = fake_rates(images, filters)
    trial_image = np.repeat(np.arange(N_IMAGES), REPEATS)
    responses = rates[trial_image] + noise * rng.standard_normal((len(trial_image), n_neurons))
    split = np.array(["train"] * N_IMAGES, dtype="<U5")
    order = rng.permutation(N_IMAGES)
    split[order[:12]] = "val"
    split[order[12:30]] = "test"
    ds = ResponseDataset(experiment_id=0, images=images, image_ids=np.arange(N_IMAGES),
                         trial_image=trial_image, responses=responses.astype(np.float32),
                         blank_responses=np.zeros((10, n_neurons), np.float32),
                         cell_ids=np.arange(n_neurons), split=split, dropped_cell_ids=np.zeros(0, int),
                         pixel_mean=128.0, pixel_std=50.0, source="synthetic")
    return ds, filters


def bench_one(name: str, cfg: ModelConfig, ds: ResponseDataset, device: torch.device, epochs: int) -> dict:
    stamps: list[float] = []

    def on_epoch(epoch: int, record: dict) -> None:
        stamps.append(time.perf_counter())

    train_cfg = TrainConfig(max_epochs=epochs, patience=epochs + 1)
    start = time.perf_counter()
    result = train_one(cfg, train_cfg, ds, seed=1, device=device, on_epoch=on_epoch, progress=False)
    epoch_times = np.diff([start, *stamps])
    s_per_epoch = statistics.median(epoch_times[1:]) if len(epoch_times) > 1 else float(epoch_times[0])
    n_train = int((ds.split == "train").sum())

    images = np.tile(ds.images, (9, 1, 1))  # ~1000 images
    predict(result.model, images[:256], device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    predict(result.model, images, device)
    predict_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in result.model.parameters())
    return {"config": name, "layers": cfg.layers, "channels": cfg.channels[0], "kernels":
            f"{cfg.first_kernel}/{cfg.hidden_kernel}", "readout": cfg.readout, "params": n_params,
            "first_epoch_s": float(epoch_times[0]), "s_per_epoch": float(s_per_epoch),
            "train_img_per_s": n_train / s_per_epoch, "predict_img_per_s": len(images) / predict_s,
            "val_corr_last": result.history[-1]["val_corr_to_avg"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--neurons", type=int, default=100)
    add_machine_args(parser, "train")
    args = parser.parse_args()
    device, out = prepare(args, "train")
    ds, _ = fake_dataset(args.neurons)
    rows = [bench_one(name, cfg, ds, device, args.epochs) for name, cfg in architectures().items()]

    info = machine(device)
    print(f"{describe(info)}; {args.neurons} neurons, {int((ds.split == 'train').sum())} train images of "
          f"{HEIGHT}x{WIDTH}, median epoch of {args.epochs} (first left out)")
    print(f"{'architecture':<20}{'params':>9}{'1st ep s':>10}{'s/epoch':>10}{'train img/s':>13}{'predict img/s':>15}")
    for r in rows:
        print(f"{r['config']:<20}{r['params']:>9}{r['first_epoch_s']:>10.3f}{r['s_per_epoch']:>10.4f}"
              f"{r['train_img_per_s']:>13.0f}{r['predict_img_per_s']:>15.0f}")
    write_json(out, {"machine": info, "epochs": args.epochs, "n_neurons": args.neurons,
                     "image_shape": [HEIGHT, WIDTH], "results": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
