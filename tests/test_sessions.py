"""Many sessions, one core: the shared-core model, its single-session views, and training on several sessions."""

from __future__ import annotations

import dataclasses

import numpy as np
import planted
import pytest
import torch

from meiscope.config import ModelConfig, TrainConfig
from meiscope.model.data import batch_indices
from meiscope.model.network import ModelError, ResponseModel, build_model, place_model
from meiscope.model.sessions import SharedCoreModel, build_shared_model, session_key
from meiscope.model import training
from meiscope.model.training import TrainingError, _epoch_batches, train_one, train_shared, without_scenes_of

TINY = ModelConfig(layers=2, channels=[8, 8], first_kernel=5, hidden_kernel=3)
SHAPE = (12, 12)


def session(experiment_id: int, positions, images: np.ndarray, seed: int, first_cell_id: int):
    """A planted session: simple cells (rectified linear filters) at ``positions`` shown ``images``."""
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    filters = np.stack([np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 4.0) * np.cos(0.9 * (xx - c) + k)
                        for k, (r, c) in enumerate(positions)])
    rates = np.maximum(np.einsum("ihw,nhw->in", images, filters), 0)
    return planted.make_dataset(images, rates, n_val=8, n_test=8, seed=seed, experiment_id=experiment_id,
                                first_cell_id=first_cell_id)


def two_sessions(n_images: int = 48):
    """Two sessions shown the same images (same template ids, same split), different cells."""
    images = np.random.default_rng(0).standard_normal((n_images, *SHAPE))
    study = session(11, [(4, 4), (7, 8), (5, 7)], images, seed=1, first_cell_id=100)
    other = session(22, [(6, 3), (3, 9)], images, seed=2, first_cell_id=200)
    return study, other


def shared_model(readout: str = "gaussian") -> SharedCoreModel:
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, readout=readout)
    model = build_shared_model(cfg, [("11", 3), ("22", 2)], SHAPE)
    model.set_normalisation("11", np.array([0.1, 0.2, 0.3]), np.array([2.0, 3.0, 4.0]))
    model.set_normalisation("22", np.array([-1.0, 1.0]), np.array([0.5, 5.0]))
    return model


# ------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("readout", ["gaussian", "factorized"])
def test_a_session_view_gives_exactly_the_shared_models_outputs(readout):
    model = shared_model(readout).eval()
    images = torch.randn(5, 1, *SHAPE)
    for key, offset, scale in (("11", [0.1, 0.2, 0.3], [2.0, 3.0, 4.0]), ("22", [-1.0, 1.0], [0.5, 5.0])):
        view = model.session_model(key)
        assert isinstance(view, ResponseModel) and not view.training
        assert view.core is model.core and view.readout is model.readouts[key]
        assert torch.equal(view(images), model(images, key))
        assert torch.equal(view.response_offset, torch.tensor(offset)) and torch.equal(
            view.response_scale, torch.tensor(scale))
        plain = build_model(dataclasses.replace(TINY, readout=readout), 2, SHAPE)
        assert set(view.state_dict()) == set(plain.state_dict())  # what models/ensemble saves and loads
    with pytest.raises(ModelError, match="'33' has no readout"):
        model.session_model("33")


def test_training_a_view_trains_the_shared_model():
    model = shared_model()
    view = model.session_model("22")
    weights = [p.clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(view.parameters(), lr=0.1)
    view(torch.randn(4, 1, *SHAPE)).sum().backward()
    optimizer.step()
    changed = {name for (name, p), w in zip(model.named_parameters(), weights) if not torch.equal(w, p)}
    assert any(name.startswith("core.") for name in changed)
    assert any(name.startswith("readouts.22.") for name in changed)
    assert not any(name.startswith("readouts.11.") for name in changed)


def test_one_session_draws_the_weights_of_build_model():
    torch.manual_seed(7)
    single = build_model(TINY, 3, SHAPE)
    torch.manual_seed(7)
    shared = build_shared_model(TINY, [(session_key(11), 3)], SHAPE)
    view = shared.session_model("11")
    a, b = single.state_dict(), view.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ModelError, match="distinct"):
        build_shared_model(TINY, [("1", 3), ("1", 2)], SHAPE)
    with pytest.raises(ModelError, match="larger than the image"):
        build_shared_model(dataclasses.replace(TINY, first_kernel=13), [("1", 3)], SHAPE)


def test_one_session_epoch_draws_exactly_the_single_session_batches():
    mine, theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    batches = _epoch_batches([40], 16, mine)
    expected = batch_indices(40, 16, theirs)
    assert [i for i, _ in batches] == [0] * len(expected)
    assert all(torch.equal(b, e) for (_, b), e in zip(batches, expected))
    assert torch.equal(mine.get_state(), theirs.get_state())  # nothing more was drawn


def test_several_sessions_take_every_image_once_per_epoch_in_interleaved_batches():
    batches = _epoch_batches([40, 21, 9], 8, torch.Generator().manual_seed(0))
    for i, n in enumerate((40, 21, 9)):
        rows = torch.cat([b for j, b in batches if j == i])
        assert sorted(rows.tolist()) == list(range(n))
    order = [i for i, _ in batches]
    assert order != sorted(order)  # interleaved, not one session after another


# ------------------------------------------------------------------------------ training
def test_one_session_shared_training_is_train_one():
    study, _ = two_sessions()
    cfg = TrainConfig(max_epochs=4, patience=50, lr=0.01, batch_size=16)
    one = train_one(TINY, cfg, study, seed=2, device="cpu", progress=False)
    shared = train_shared(TINY, cfg, [study], seed=2, device="cpu", progress=False)
    a, b = one.model.state_dict(), shared.model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert one.history == shared.history and set(one.history[0]) == {"epoch", "train_loss", "val_corr_to_avg",
                                                                     "val_feve", "lr"}
    assert one.shared_model.sessions == ["11"]


def test_two_sessions_train_one_core_and_stop_on_the_studied_session():
    study, other = two_sessions()
    cfg = TrainConfig(max_epochs=25, patience=50, lr=0.01, batch_size=16)
    torch.manual_seed(0)
    result = train_shared(TINY, cfg, [study, other], seed=1, device="cpu", progress=False)
    shared = result.shared_model
    assert shared.sessions == ["11", "22"] and result.model.core is shared.core and not shared.training
    assert result.model.n_neurons == study.n_neurons
    record = result.history[-1]
    assert {"session_22_train_loss", "session_22_val_corr_to_avg"} <= set(record)
    assert result.history[-1]["session_22_train_loss"] < result.history[0]["session_22_train_loss"]
    # early stopping and the restored weights follow the studied session's validation score alone
    scores = [h["val_corr_to_avg"] for h in result.history]
    assert result.best_epoch == int(np.argmax(scores)) + 1 and result.best_val_corr == max(scores)
    assert result.best_val_corr > 0.5 and max(h["session_22_val_corr_to_avg"] for h in result.history) > 0.4
    # the other session's view predicts its cells with its own normalisation
    view = shared.session_model("22")
    assert view.n_neurons == 2 and view.response_scale.shape == (2,)


def test_the_studied_sessions_test_images_never_enter_training(monkeypatch):
    study, other = two_sessions()
    test_rows = study.image_indices("test")
    test_scenes = set(study.image_ids[test_rows].tolist())
    # The other session shows the same scenes, but its own split would train on the studied test scenes.
    other.split[:] = "train"
    other.split[:8] = "val"
    assert (other.split[test_rows] == "train").all()
    # split_tensors is the only way images reach the loop (train steps, readout start, validation)
    seen: list[tuple[int, str, set]] = []
    split_tensors = training.split_tensors

    def recording(ds, split, *args, **kwargs):
        tensors = split_tensors(ds, split, *args, **kwargs)
        seen.append((ds.experiment_id, split, set(ds.image_ids[tensors.index].tolist())))
        return tensors

    monkeypatch.setattr(training, "split_tensors", recording)
    result = train_shared(TINY, TrainConfig(max_epochs=2, patience=50, lr=0.01, batch_size=16), [study, other],
                          seed=1, device="cpu", progress=False)
    assert {(e, split) for e, split, _ in seen} == {(11, "train"), (11, "val"), (22, "train"), (22, "val")}
    assert all(not (scenes & test_scenes) for _, _, scenes in seen)
    assert len(seen[2][2]) == len(study.images) - 16  # the other session lost only the 8 studied test scenes
    assert np.isfinite([h["session_22_train_loss"] for h in result.history]).all()
    hidden = without_scenes_of(other, study.image_ids[test_rows])
    assert (hidden.split[test_rows] == "test").all() and (other.split[test_rows] == "train").all()  # a copy
    assert without_scenes_of(study, study.image_ids[test_rows]) is study  # nothing to move: the same object


def test_two_session_training_resumes_bit_identically(tmp_path):
    study, other = two_sessions(32)
    cfg = TrainConfig(max_epochs=4, patience=50, lr=0.01, batch_size=8)
    full = train_shared(TINY, cfg, [study, other], seed=5, device="cpu", progress=False)
    train_shared(TINY, cfg, [study, other], seed=5, device="cpu", checkpoint_path=tmp_path / "c.pt", max_epochs=2,
                 progress=False)
    resumed = train_shared(TINY, cfg, [study, other], seed=5, device="cpu", checkpoint_path=tmp_path / "c.pt",
                           resume=True, progress=False)
    assert resumed.epochs_run == [3, 4] and resumed.history == full.history
    a, b = full.shared_model.state_dict(), resumed.shared_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainingError, match="another configuration or dataset"):  # the sessions are in the key
        train_shared(TINY, cfg, [study], seed=5, device="cpu", checkpoint_path=tmp_path / "c.pt", resume=True,
                     progress=False)


def test_sessions_that_cannot_share_a_core_are_refused_in_one_line():
    study, other = two_sessions()
    cfg = TrainConfig(max_epochs=1)
    small = dataclasses.replace(other, images=other.images[:, :10, :10])
    with pytest.raises(TrainingError, match=r"dataset 22: images of \(10, 10\) cannot share a core") as err:
        train_shared(TINY, cfg, [study, small], seed=1, device="cpu", progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(TrainingError, match="distinct experiments"):
        train_shared(TINY, cfg, [study, dataclasses.replace(other, experiment_id=11)], seed=1, progress=False)
    with pytest.raises(TrainingError, match="at least one session"):
        train_shared(TINY, cfg, [], seed=1, progress=False)
    # moving the studied test scenes out of the other session can leave it too few validation images
    lopsided = dataclasses.replace(other, split=np.where(study.split == "test", "val", "train"))
    with pytest.raises(TrainingError, match="dataset 22: needs >= 2 validation images"):
        train_shared(TINY, cfg, [study, lopsided], seed=1, progress=False)


def test_place_model_lays_the_shared_core_channels_last():
    model = place_model(shared_model(), "cpu")
    conv = [p for p in model.core.parameters() if p.dim() == 4][0]
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert model.session_model("11").response_offset.device.type == "cpu"


def test_a_checkpoint_written_before_sessions_were_shared_is_refused_in_one_line(tmp_path):
    study, _ = two_sessions(32)
    torch.save({"format": 1, "model": {}}, tmp_path / "old.pt")  # what train_one wrote before
    with pytest.raises(TrainingError, match="a checkpoint of format 1 .* delete it or train without resume") as err:
        train_one(TINY, TrainConfig(max_epochs=1), study, seed=1, device="cpu", checkpoint_path=tmp_path / "old.pt",
                  resume=True, progress=False)
    assert "\n" not in str(err.value)
