"""The model trains on a generic TrainingSource, stages and tuning never name a recording package, and the
loss follows what the responses are (``response_kind``), not which recording wrote them."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import planted
import pytest
import torch

from meiscope.config import ModelConfig, TrainConfig
from meiscope.dataset import ResponseDataset, response_kind_of
from meiscope.dvcfile import imported_modules
from meiscope.model.source_protocol import SavedSource, TrainingSource

SRC = Path(__file__).resolve().parents[1] / "src" / "meiscope"
RECORDING_PACKAGES = ("meiscope.recordings.container", "meiscope.recordings.neuropixels",
                      "meiscope.recordings.two_photon")
# Stages that still reach into one recording's package, owned elsewhere; remove an entry once its stage
# asks the recording (recording_of) instead.
PENDING: dict[str, str] = {}  # file -> why it still imports a recording package (none now)


# ---------------------------------------------------------------------------------------------
# no recording package below the model, the tuning and the stages
# ---------------------------------------------------------------------------------------------
def _checked_files() -> list[Path]:
    files = sorted((SRC / "model").rglob("*.py")) + sorted((SRC / "stages").rglob("*.py")) + [SRC / "tuning.py"]
    return [f for f in files if str(f.relative_to(SRC)) not in PENDING]


@pytest.mark.parametrize("path", _checked_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_model_tuning_or_stage_module_imports_a_recording_package(path):
    """They type against TrainingSource and ask the registry (``meiscope.recordings.recording_of``).

    The scan (:func:`meiscope.dvcfile.imported_modules`, the one that makes dvc.yaml's deps) sees imports
    inside functions and relative ones (tests/test_dvcfile.py)."""
    bad = sorted(m for m in imported_modules(path) if m.startswith(RECORDING_PACKAGES))
    assert not bad, f"{path.relative_to(SRC)} imports {bad}"


# ---------------------------------------------------------------------------------------------
# a hand-made training source, not a TrainingStimuli
# ---------------------------------------------------------------------------------------------
def flashes(images: np.ndarray, trial_image: np.ndarray, responses: np.ndarray) -> SimpleNamespace:
    """Static images shown as trials (a TrialStimulusData)."""
    return SimpleNamespace(name="flashes", session="X", images=images, trial_image=trial_image, responses=responses)


def clip(frames: np.ndarray, trace: np.ndarray) -> SimpleNamespace:
    """A short movie and its trace (a MovieStimulusData; ``position_map`` is set by the trainer)."""
    return SimpleNamespace(name="clip", session="X", frames=frames, trace=trace, position_map=None)


@dataclass
class ToySource:
    """The smallest TrainingSource: one static stimulus, one movie, a 3-tap kernel; pickled to disk."""

    cell_ids: np.ndarray
    kernel: np.ndarray
    trials: list = field(default_factory=list)
    movies: list = field(default_factory=list)

    def select_neurons(self, cell_ids: np.ndarray) -> "ToySource":
        cols = np.array([list(self.cell_ids).index(c) for c in cell_ids])
        return ToySource(self.cell_ids[cols], self.kernel,
                         [flashes(t.images, t.trial_image, t.responses[:, cols]) for t in self.trials],
                         [clip(m.frames, m.trace[:, cols]) for m in self.movies])

    def save(self, path: Path) -> None:
        path.write_bytes(pickle.dumps((self.cell_ids, self.kernel, self.trials,
                                       [clip(m.frames, m.trace) for m in self.movies])))

    @classmethod
    def load(cls, path: Path) -> "ToySource":
        LOADS.append(Path(path))  # which files were read back, for the tune worker test
        cell_ids, kernel, trials, movies = pickle.loads(Path(path).read_bytes())
        return cls(cell_ids, kernel, trials, movies)


LOADS: list[Path] = []


def _toy(ds: ResponseDataset, seed: int = 0) -> ToySource:
    """Rates of ``ds``'s neurons (a fixed random linear filter each) to flashes and a clip, NaN for one cell's clip."""
    rng = np.random.default_rng(seed)
    shape, n = ds.images.shape[1:], ds.n_neurons
    filters = rng.standard_normal((n, *shape))
    images = rng.standard_normal((20, *shape)).astype(np.float32)
    trial_image = np.repeat(np.arange(20), 3)
    responses = np.maximum(np.einsum("ihw,nhw->in", images, filters), 0)[trial_image] / 10
    frames = rng.standard_normal((120, *shape)).astype(np.float32)
    trace = np.maximum(np.einsum("ihw,nhw->in", frames, filters), 0) / 10
    trace[:, -1] = np.nan  # a cell the clip's session did not record
    return ToySource(cell_ids=ds.cell_ids.copy(), kernel=np.array([0.5, 0.3, 0.2]),
                     trials=[flashes(images, trial_image, responses.astype(np.float32))],
                     movies=[clip(frames, trace)])


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(3)
    images = rng.standard_normal((40, 10, 12)).astype(np.float32)
    rates = np.maximum(images[:, 3:6, 4:8].mean((1, 2))[:, None] * np.array([1.0, -1.0, 0.5]), 0)
    return planted.make_dataset(images, rates, repeats=3, n_val=8, n_test=8)


CONFIGS = (ModelConfig(layers=1, channels=[4], first_kernel=5),
           TrainConfig(seeds=[1, 2], max_epochs=2, patience=2, batch_size=8, batches_per_source=2,
                       relocate_epochs=[2]))


def test_a_hand_made_object_satisfies_the_protocol_and_so_does_the_container():
    from meiscope.recordings.training_stimuli import TrainingStimuli

    assert isinstance(ToySource(np.arange(2), np.ones(2)), TrainingSource)
    assert isinstance(TrainingStimuli(1, np.arange(2), np.ones(2)), TrainingSource)
    assert not isinstance(object(), TrainingSource)


def test_the_trainer_trains_on_a_hand_made_training_source(scenes, tmp_path):
    from meiscope.model.training import train_one

    model_cfg, train_cfg = CONFIGS
    extra = _toy(scenes).select_neurons(scenes.cell_ids[::-1])  # columns follow the dataset's cells...
    extra = extra.select_neurons(scenes.cell_ids)  # ...once selected in their order
    seen = []
    full = train_one(model_cfg, train_cfg, scenes, seed=1, progress=False, extra=extra,
                     on_epoch=lambda epoch, record: seen.append(record))
    plain = train_one(model_cfg, train_cfg, scenes, seed=1, progress=False)
    assert seen[-1]["readouts_relocated"] >= 0  # relocation ran: only with other stimuli
    assert extra.movies[0].position_map is not None  # the clip's receptive-field map, kept on it
    weights = zip(full.model.state_dict().values(), plain.model.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in weights)
    # the pickled copy, read back through SavedSource, trains to the same weights
    saved = SavedSource.write(extra, tmp_path / "toy.pkl")
    again = train_one(model_cfg, train_cfg, scenes, seed=1, progress=False, extra=saved.load())
    for a, b in zip(full.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


def test_tune_workers_read_the_source_back_with_its_own_loader(scenes, tmp_path):
    from meiscope import tuning
    from meiscope.config import parse_params

    params = parse_params({"model": {"layers": 1, "channels": [4], "first_kernel": 5, "batch_norm": False},
                           "train": {"batch_size": 8},
                           "tune": {"n_trials": 1, "epochs": 1,
                                    "space": {"layers": [1, 1], "channels": [2, 8], "batch_size": [8]}}})
    dataset = tmp_path / "selected.npz"
    scenes.save(dataset)
    saved = SavedSource.write(_toy(scenes), tmp_path / "selected.toy")
    assert pickle.loads(pickle.dumps(saved)) == saved  # what a spawned worker process receives
    LOADS.clear()
    cfg = tuning.keyed_study(params.tune, params.model, params.train, "toy")
    study, mine = tuning.run_study(dataset, cfg, params.model, params.train, "cpu", tmp_path, extras=saved)
    assert LOADS == [saved.path] and len(mine) == 1
    assert study.trials[0].state.name == "COMPLETE"


# ---------------------------------------------------------------------------------------------
# the loss follows what the responses are
# ---------------------------------------------------------------------------------------------
def test_response_kind_follows_the_source_in_files_without_it_and_round_trips_when_set(scenes, tmp_path):
    assert response_kind_of("synthetic") == response_kind_of("allen") == "dff"
    assert response_kind_of("synthetic_neuropixels") == response_kind_of("allen_neuropixels") == "counts"
    assert scenes.response_kind == "dff"
    path = tmp_path / "old.npz"
    ResponseDataset(**{**_fields(scenes), "source": "allen_neuropixels", "response_kind": ""}).save(path)
    with np.load(path) as f:
        assert "response_kind" not in f.files  # the files of existing kinds keep their bytes
    assert ResponseDataset.load(path).response_kind == "counts"
    counts = dataclasses.replace(scenes, response_kind="counts")  # spike counts whatever the source says
    counts.save(path)
    loaded = ResponseDataset.load(path)
    assert loaded.response_kind == "counts" and loaded.select_neurons(loaded.cell_ids[:1]).response_kind == "counts"
    with pytest.raises(ValueError, match="response_kind"):
        dataclasses.replace(scenes, response_kind="spikes")


def test_the_auto_loss_is_poisson_for_counts_and_mse_for_dff(scenes):
    from meiscope.model.training import loss_kind

    auto = ModelConfig(loss="auto")
    assert loss_kind(auto, scenes) == "mse"
    assert loss_kind(auto, dataclasses.replace(scenes, response_kind="counts")) == "poisson"
    assert loss_kind(auto, ResponseDataset(**{**_fields(scenes), "source": "synthetic_neuropixels",
                                              "response_kind": ""})) == "poisson"
    assert loss_kind(ModelConfig(loss="mse"), dataclasses.replace(scenes, response_kind="counts")) == "mse"


def _fields(ds: ResponseDataset) -> dict:
    return {f.name: getattr(ds, f.name) for f in dataclasses.fields(ds)}
