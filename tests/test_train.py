"""Training tests: fitting, exact resume, planted receptive fields, early errors, the train stage."""

from __future__ import annotations

import json

import numpy as np
import planted
import pytest
import torch

from meiscope.config import ModelConfig, TrainConfig
from meiscope.dataset import ResponseDataset
from meiscope.model.ensemble import load_ensemble
from meiscope.model.evaluation import corr_to_average, predict
from meiscope.model.network import ModelError
from meiscope.model.training import TrainingError, train_one
from meiscope.model.fitting import GroundTruth, TrainingData, TrainOutputs, fit_ensemble

TINY = ModelConfig(layers=2, channels=[8, 8], first_kernel=5, hidden_kernel=3)


def gabor(shape, row, col, theta, wavelength=6.0, sigma=2.0, phase=0.0) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    y, x = yy - row, xx - col
    u = x * np.cos(theta) + y * np.sin(theta)
    g = np.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2)) * np.cos(2 * np.pi * u / wavelength + phase)
    return g / np.linalg.norm(g)


def planted_rates(images: np.ndarray, positions) -> np.ndarray:
    """V1-like neurons at ``positions``: even ones rectified Gabors (simple), odd ones Gabor energy (complex)."""
    rates = []
    for i, (row, col) in enumerate(positions):
        theta = i * np.pi / 4
        even = np.einsum("ihw,hw->i", images, gabor(images.shape[1:], row, col, theta))
        odd = np.einsum("ihw,hw->i", images, gabor(images.shape[1:], row, col, theta, phase=np.pi / 2))
        rates.append(np.maximum(even, 0) if i % 2 == 0 else np.hypot(even, odd))
    return np.stack(rates, axis=1)


def make_dataset(images: np.ndarray, rates: np.ndarray, **kwargs) -> ResponseDataset:
    return planted.make_dataset(images, rates, experiment_id=7, first_cell_id=1000, **kwargs)


def tiny_dataset(n_images=48, shape=(12, 12), positions=((4, 4), (7, 8), (5, 7)), seed=0):
    images = np.random.default_rng(seed).standard_normal((n_images, *shape))
    return make_dataset(images, planted_rates(images, positions), n_val=8, n_test=8, seed=seed)


def train_corr(model, ds) -> np.ndarray:
    train = ds.image_indices("train")
    keep = np.isin(ds.trial_image, train)
    return corr_to_average(predict(model, ds.images, "cpu"), ds.responses[keep], ds.trial_image[keep])


# ------------------------------------------------------------------------------ fitting
def test_tiny_model_overfits_tiny_dataset():
    ds = tiny_dataset()
    result = train_one(TINY, TrainConfig(max_epochs=60, patience=60, lr=0.01, batch_size=16), ds, seed=1,
                       device="cpu", progress=False)
    assert train_corr(result.model, ds).min() > 0.9
    assert len(result.history) == 60 and result.stop_reason == "max_epochs"
    assert result.history[-1]["train_loss"] < 0.2 * result.history[0]["train_loss"]
    assert set(result.history[0]) == {"epoch", "train_loss", "val_corr_to_avg", "val_feve", "lr"}
    assert not result.model.training


def test_poisson_loss_trains_too():
    ds = tiny_dataset()
    cfg = ModelConfig(layers=2, channels=[8, 8], first_kernel=5, hidden_kernel=3, loss="poisson")
    result = train_one(cfg, TrainConfig(max_epochs=30, patience=30, lr=0.01, batch_size=16), ds, seed=1,
                       device="cpu", progress=False)
    assert np.isfinite([h["train_loss"] for h in result.history]).all()
    assert train_corr(result.model, ds).mean() > 0.8


def test_gaussian_readout_recovers_planted_receptive_fields():
    rng = np.random.default_rng(0)
    shape, planted = (20, 20), [(5, 5), (5, 14), (14, 7), (13, 15)]
    images = rng.standard_normal((240, *shape))
    ds = make_dataset(images, planted_rates(images, planted), n_val=20, n_test=20)
    result = train_one(TINY, TrainConfig(max_epochs=30, patience=30, lr=0.01), ds, seed=1, device="cpu",
                       progress=False)
    found = result.model.readout.positions().numpy()
    assert np.abs(found - np.array(planted)).max() < 1.5, found
    assert result.best_val_corr > 0.8


# ------------------------------------------------------------------------------ reproducibility
def test_a_readout_far_from_its_receptive_field_jumps_to_where_the_core_predicts_its_neuron():
    """Neuron 0 reads the core's features at a planted pixel (a movie through a calcium kernel, and the
    scenes), but its readout starts 15 pixels away: it jumps there. Neuron 1 already sits on its own."""
    from meiscope.model.data import SplitTensors
    from meiscope.model.network import build_model
    from meiscope.model.sources import movie_source
    from meiscope.model.training import relocate_readouts

    torch.manual_seed(0)
    shape, planted_at, home = (16, 20), (4, 14), (10, 5)
    model = build_model(ModelConfig(layers=1, channels=[4], first_kernel=3, batch_norm=False), 2, shape)
    rng = np.random.default_rng(3)

    def rates(images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            features = model.core(images)
        return torch.stack([features[:, :, planted_at[0], planted_at[1]] @ torch.tensor([1.0, -0.5, 0.8, 0.3]),
                            features[:, :, home[0], home[1]] @ torch.tensor([0.2, 0.9, -0.4, 0.6])], 1).numpy()

    frames = torch.tensor(rng.standard_normal((400, 1, *shape)), dtype=torch.float32)
    kernel = np.array([0.0, 0.6, 0.3, 0.1])
    trace = np.stack([np.convolve(r, kernel)[:len(r)] for r in rates(frames).T], 1)
    trace += 0.1 * trace.std(0) * rng.standard_normal(trace.shape)
    movie = movie_source("A:natural_movie_one", frames[:, 0].numpy(), trace, 0, len(kernel), "cpu")
    scenes = torch.tensor(rng.standard_normal((40, 1, *shape)), dtype=torch.float32)
    train = SplitTensors(index=np.arange(40), images=scenes, weights=torch.full((40,), 50.0),
                         targets=torch.tensor(rates(scenes), dtype=torch.float32))
    model.readout.init_positions_(torch.tensor([[13.0, 2.0], [*home]]))
    assert relocate_readouts(model, train, [movie], kernel) == 1
    positions = model.readout.positions().numpy()
    assert np.abs(positions[0] - planted_at).max() <= 1 and np.allclose(positions[1], home, atol=1e-5)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    ds = tiny_dataset()
    cfg = TrainConfig(max_epochs=6, patience=50, lr=0.01, batch_size=16)
    full = train_one(TINY, cfg, ds, seed=3, device="cpu", checkpoint_path=tmp_path / "a.pt", progress=False)
    first = train_one(TINY, cfg, ds, seed=3, device="cpu", checkpoint_path=tmp_path / "b.pt", max_epochs=3,
                      progress=False)
    assert first.epochs_run == [1, 2, 3]
    resumed = train_one(TINY, cfg, ds, seed=3, device="cpu", checkpoint_path=tmp_path / "b.pt", resume=True,
                        progress=False)
    assert resumed.epochs_run == [4, 5, 6]
    assert resumed.history == full.history
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The final (not best) weights in the two checkpoints agree too.
    ca, cb = (torch.load(tmp_path / f, weights_only=True)["model"] for f in ("a.pt", "b.pt"))
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    # A second run with the same seed repeats the first exactly; another seed does not.
    again = train_one(TINY, cfg, ds, seed=3, device="cpu", progress=False)
    assert again.history == full.history
    other = train_one(TINY, cfg, ds, seed=4, device="cpu", progress=False)
    assert other.history != full.history


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    ds = tiny_dataset()
    cfg = TrainConfig(max_epochs=2, patience=50)
    train_one(TINY, cfg, ds, seed=3, device="cpu", checkpoint_path=tmp_path / "c.pt", progress=False)
    with pytest.raises(TrainingError, match="another configuration"):
        train_one(TINY, TrainConfig(max_epochs=2, patience=50, lr=0.02), ds, seed=3, device="cpu",
                  checkpoint_path=tmp_path / "c.pt", resume=True, progress=False)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="unreadable checkpoint"):
        train_one(TINY, cfg, ds, seed=3, device="cpu", checkpoint_path=tmp_path / "bad.pt", resume=True,
                  progress=False)


def test_early_stopping_and_callback():
    ds = tiny_dataset()
    records = []

    def stop_at_two(epoch, record):
        records.append((epoch, record["val_corr_to_avg"]))
        return epoch == 2

    result = train_one(TINY, TrainConfig(max_epochs=20, patience=50), ds, seed=1, device="cpu",
                       on_epoch=stop_at_two, progress=False)
    assert [e for e, _ in records] == [1, 2] and result.stop_reason == "callback"
    best = max(range(2), key=lambda i: records[i][1])
    assert result.best_epoch == best + 1

    class Prune(Exception):
        pass

    def prune(epoch, record):
        raise Prune()

    with pytest.raises(Prune):
        train_one(TINY, TrainConfig(max_epochs=20, patience=50), ds, seed=1, device="cpu", on_epoch=prune,
                  progress=False)
    # Patience: stops once the validation score has not improved for `patience` epochs.
    result = train_one(TINY, TrainConfig(max_epochs=200, patience=2, lr=0.05), ds, seed=1, device="cpu",
                       progress=False)
    assert result.stop_reason == "patience"
    assert len(result.history) == result.best_epoch + 2


# ------------------------------------------------------------------------------ errors before training
def test_bad_configuration_fails_before_any_training(tmp_path):
    ds = tiny_dataset()
    big = ModelConfig(layers=2, channels=[4, 4], first_kernel=13, hidden_kernel=3)
    with pytest.raises(ModelError, match=r"model.first_kernel \(13\) is larger than the image \(12x12\)"):
        train_one(big, TrainConfig(), ds, seed=1, device="cpu", checkpoint_path=tmp_path / "x.pt", progress=False)
    assert not (tmp_path / "x.pt").exists()
    outputs = TrainOutputs(tmp_path / "ens", tmp_path / "res", tmp_path / "m.json")
    with pytest.raises(ModelError, match="first_kernel"):
        fit_ensemble(TrainingData(ds), big, TrainConfig(), outputs, device="cpu", progress=False)
    no_test = tiny_dataset()
    no_test.split[no_test.split == "test"] = "train"
    with pytest.raises(TrainingError, match="test images"):
        fit_ensemble(TrainingData(no_test), TINY, TrainConfig(), outputs, device="cpu", progress=False)
    no_val = tiny_dataset()
    no_val.split[no_val.split == "val"] = "train"
    with pytest.raises(TrainingError, match="validation images"):
        train_one(TINY, TrainConfig(), no_val, seed=1, device="cpu", progress=False)
    assert not (tmp_path / "res").exists() and not (tmp_path / "ens").exists()


# ------------------------------------------------------------------------------ the stage
class RecordingLog:
    """Stands in for the mlflow module."""

    def __init__(self):
        self.metrics: list[tuple[str, float, object]] = []
        self.artifacts: list[str] = []

    def log_metric(self, key, value, step=None):
        self.metrics.append((key, value, step))

    def log_metrics(self, metrics, step=None):
        self.metrics.extend((k, v, step) for k, v in metrics.items())

    def log_artifact(self, path):
        self.artifacts.append(path)


def test_fit_ensemble_writes_models_metrics_and_figures(tmp_path):
    rng = np.random.default_rng(2)
    shape, planted = (14, 14), [(4, 4), (9, 9), (4, 10)]
    images = rng.standard_normal((80, *shape))
    ds = make_dataset(images, planted_rates(images, planted), n_val=12, n_test=16)

    # the true rates, also on fresh scenes (never trained on), with per-kind medians
    truth = GroundTruth(lambda imgs: planted_rates(imgs, planted), fresh_images=rng.standard_normal((40, *shape)),
                        kinds=["simple", "complex", "simple"])
    cfg = TrainConfig(seeds=[1, 2], max_epochs=12, patience=20, lr=0.01, batch_size=16)
    log = RecordingLog()
    outputs = TrainOutputs(ensemble_dir=tmp_path / "models" / "ensemble", results_dir=tmp_path / "results" / "train",
                           metrics_path=tmp_path / "results" / "train_metrics.json")
    metrics = fit_ensemble(TrainingData(ds), TINY, cfg, outputs, truth=truth, device="cpu", progress=False, log=log)

    on_disk = json.loads(outputs.metrics_path.read_text())
    assert on_disk["n_neurons"] == 3 and on_disk == json.loads(json.dumps(metrics))
    for key in ("test_corr_to_avg_mean", "test_single_trial_corr_mean", "test_feve_median",
                "ln_test_corr_to_avg_mean", "ln_test_feve_median", "gt_test_corr_mean", "test_oracle_corr_mean"):
        assert isinstance(metrics[key], float), key
    assert len(metrics["member_test_corr_to_avg_mean"]) == 2
    assert metrics["gt_test_corr_mean"] > 0.6  # the ensemble learned the planted neurons
    assert metrics["n_fresh_images"] == 40 and len(metrics["member_gt_fresh_corr_mean"]) == 2
    assert {"gt_fresh_corr_median_simple", "gt_fresh_corr_median_complex"} <= set(metrics)
    assert metrics["test_oracle_corr_mean"] > metrics["test_single_trial_corr_mean"] - 0.05

    results = outputs.results_dir
    for name in ("per_neuron.csv", "learning_curves.png", "pred_vs_obs.png", "history.json",
                 "checkpoints/seed_1.pt", "checkpoints/seed_2.pt"):
        assert (results / name).is_file(), name
    import pandas as pd

    table = pd.read_csv(results / "per_neuron.csv")
    assert list(table["cell_id"]) == list(ds.cell_ids) and {"gt_test_corr", "gt_fresh_corr"} <= set(table)
    assert table["test_corr_to_avg"].mean() == pytest.approx(metrics["test_corr_to_avg_mean"], abs=1e-5)

    ens = load_ensemble(outputs.ensemble_dir)
    assert ens.seeds == [1, 2] and list(ens.cell_ids) == list(ds.cell_ids)

    keys = {k for k, _, _ in log.metrics}
    assert {"member_1/val_corr", "member_2/train_loss", "test_corr_to_avg_mean"} <= keys
    steps = [s for k, _, s in log.metrics if k == "member_1/val_corr"]
    assert steps == list(range(1, 13))
    assert any(a.endswith("pred_vs_obs.png") for a in log.artifacts)
    assert any(a.endswith("member_2.pt") for a in log.artifacts)

    # Resume: finished members are loaded from their checkpoints, not retrained -> same metrics,
    # and the epoch history still reaches the new log.
    log2 = RecordingLog()
    again = fit_ensemble(TrainingData(ds), TINY, cfg, outputs, truth=truth, device="cpu", resume=True,
                         progress=False, log=log2)
    assert again == metrics
    assert [s for k, _, s in log2.metrics if k == "member_2/val_corr"] == list(range(1, 13))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_training_on_cuda_matches_the_cpu():
    # same seed, same model: the readout's training jitter comes from the CPU generator on both
    # devices and train_one turns TF32 off; only rounding (and grid_sample's atomic adds) differ
    ds = tiny_dataset()
    cfg = TrainConfig(max_epochs=15, patience=15, lr=0.01, batch_size=16)
    cpu = train_one(TINY, cfg, ds, seed=1, device="cpu", progress=False)
    gpu = train_one(TINY, cfg, ds, seed=1, device="cuda", progress=False)
    assert next(gpu.model.parameters()).device.type == "cuda"
    pred_cpu, pred_gpu = predict(cpu.model, ds.images, "cpu"), predict(gpu.model, ds.images, "cuda")
    assert np.abs(pred_cpu - pred_gpu).max() < 1e-3 * np.abs(pred_cpu).max()
    val_cpu, val_gpu = ([h["val_corr_to_avg"] for h in r.history] for r in (cpu, gpu))
    assert np.allclose(val_cpu, val_gpu, atol=1e-4) and cpu.best_epoch == gpu.best_epoch
