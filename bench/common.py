"""Shared pieces of the benchmarks: the timed architectures, stand-in ensembles, the machine's name.

Every benchmark times meiscope's own code (``meiscope.model.build_model`` placed with
``place_model``, as ``train`` and the in-silico stages do) on the default image size. The
models are randomly initialised: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

# as the CLI does: spinning OpenMP threads slow small steps many-fold on shared cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from meiscope.config import ModelConfig, TuneConfig  # noqa: E402
from meiscope.model import resolve_device  # noqa: E402
from meiscope.model.network import ResponseModel, build_model, place_model  # noqa: E402

HEIGHT, WIDTH = 36, 46  # the default extract.image_height / image_width
RESULTS = Path(__file__).resolve().parent / "results"


def add_machine_args(parser: argparse.ArgumentParser, result_name: str) -> None:
    """The options every benchmark shares: ``--device``, ``--threads`` and ``--out``."""
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON file (default bench/results/{result_name}_<device type>.json)")


def prepare(args: argparse.Namespace, result_name: str) -> tuple[torch.device, Path]:
    """Apply ``--threads``; return the device (resolved as the stages do: TF32 off on CUDA) and the JSON path."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    return device, args.out or RESULTS / f"{result_name}_{device.type}.json"


def architectures() -> dict[str, ModelConfig]:
    """The timed architectures: params.yaml's default, the default study's tuned one, the largest in the space."""
    space = TuneConfig().space
    layers, channels = space.layers[1], space.channels[1]
    largest = dict(layers=layers, channels=[channels] * layers, first_kernel=max(space.first_kernel),
                   hidden_kernel=max(space.hidden_kernel), depth_separable=False, batch_norm=True)
    return {
        "default": ModelConfig(),
        # what `tune` picks on the default synthetic session (results/tune/best_model.yaml)
        "tuned": ModelConfig(layers=4, channels=[9, 19, 9, 30], first_kernel=9, hidden_kernel=3,
                             depth_separable=False, batch_norm=True),
        "largest": ModelConfig(**largest, readout="gaussian"),
        "largest-factorized": ModelConfig(**largest, readout="factorized"),
    }


def stand_in_ensemble(cfg: ModelConfig, n_neurons: int, n_models: int, device: torch.device | str,
                      seed: int = 0) -> list[ResponseModel]:
    """``n_models`` frozen eval-mode models of architecture ``cfg``, placed as the stages place them."""
    models = []
    for k in range(n_models):
        torch.manual_seed(seed + k)
        model = place_model(build_model(cfg, n_neurons, (HEIGHT, WIDTH)), device)
        models.append(model.eval().requires_grad_(False))
    return models


def wall_times(fn: Callable[[], object], repeats: int, device: torch.device | str = "cpu") -> list[float]:
    """Wall times of ``repeats`` calls of ``fn`` (CUDA work is waited for)."""
    cuda = torch.device(device).type == "cuda"
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def machine(device: torch.device | str = "cpu") -> dict:
    """What the figures were measured on (CPU model and cores, GPU name, torch, threads)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.device(device)
    return dict(cpu=cpu, cpus=os.cpu_count(), torch=torch.__version__, threads=torch.get_num_threads(),
                device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), load_average=os.getloadavg())


def describe(info: dict) -> str:
    where = info["gpu"] or f"{info['cpu']}, {info['cpus']} CPUs, {info['threads']} torch threads"
    return f"{info['device']} ({where}), torch {info['torch']}"
