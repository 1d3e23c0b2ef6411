"""The Python API on a tiny trained study: predictions in response units equal the ensemble's own, MEIs and
Gabors come back in pixels, the study's folder is only read, and bad input gets one-line errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from meiscope import pipeline
from meiscope.api import load_study
from meiscope.config import load_params
from meiscope.errors import MeiscopeError
from meiscope.model.ensemble import load_ensemble
from meiscope.recordings.screen import PIXELS_PER_DEGREE, SCENE_HEIGHT_PX, SCENE_WIDTH_PX
from meiscope.visual_field import VisualField
from test_pipeline import TINY

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "neuron_response.py"
# the pipeline's tiny study, without MLflow, the architecture search or the closed loop (~5 s); its MEIs run
# until they converge (TINY's 5 steps cover a quarter of the contrast budget each: MEIs short of their optimum)
STUDY = {**TINY, "tracking": {"enabled": False}, "train": {**TINY["train"], "fresh_scenes": 8},
         "mei": {**TINY["mei"], "steps": 200}}
STAGES = ("data", "extract", "rank", "train", "mei", "gabor")
STUDY_CROP = (0.0, 1.0, 0.0, 1.0)  # its extract.crop (the default: the whole scene)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A trained tiny study (its outputs as after `make run`)."""
    root = tmp_path_factory.mktemp("study")
    (root / "params.yaml").write_text(yaml.safe_dump(STUDY))
    params = load_params(root / "params.yaml")
    for name in STAGES:
        kwargs = {"device": "cpu"} if pipeline.stage(name).uses_device else {}
        pipeline.stage(name).run(params, root, **kwargs)
    return root


@pytest.fixture(scope="module")
def study(root):
    return load_study(root)


def digests(folder: Path) -> dict[str, str]:
    """MD5 of every file under ``folder`` by relative path (new, changed and removed files all show)."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_study(root: Path, target: Path) -> Path:
    shutil.copytree(root, target)
    return target


FRESH = textwrap.dedent("""
    import json, sys
    import meiscope
    light = "torch" not in sys.modules and "numpy" not in sys.modules
    import meiscope.api
    light = light and "torch" not in sys.modules
    import numpy as np
    study = meiscope.load_study(sys.argv[1])
    image = np.load(sys.argv[2])
    cell = int(study.cells.cell_id[2])
    np.savez(sys.argv[3], all=study.predict(image), one=study.predict(image[None], cells=cell),
             mei=study.mei(cell), gabor=study.optimal_gabor(cell), cell_ids=study.cell_ids)
    print(json.dumps({"light": light, "cell": cell, "units": study.response_units}))
""")


def test_a_fresh_process_predicts_the_ensembles_own_response_and_writes_nothing(root, tmp_path):
    copy = copy_study(root, tmp_path / "copy")
    before_copy, before_root = digests(copy), digests(root)
    image = np.random.default_rng(3).uniform(0, 255, (18, 23))
    np.save(tmp_path / "image.npy", image)
    # cwd = the original study: any path resolved against the working folder instead of `path` shows up
    result = subprocess.run([sys.executable, "-c", FRESH, str(copy), str(tmp_path / "image.npy"),
                             str(tmp_path / "out.npz")], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["light"], "import meiscope (and meiscope.api) must not import torch or numpy"
    assert info["units"] == "dF/F"
    out = np.load(tmp_path / "out.npz")

    ensemble = load_ensemble(root / "models" / "ensemble")
    model_image = torch.as_tensor((image - ensemble.pixel_mean) / ensemble.pixel_std, dtype=torch.float32)
    with torch.inference_mode():
        expected = ensemble.to_dff(ensemble(model_image[None])).double().numpy()
    column = ensemble.neuron_index(info["cell"])
    np.testing.assert_array_equal(out["cell_ids"], ensemble.cell_ids)
    np.testing.assert_allclose(out["all"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["one"], expected[:, [column]], rtol=1e-5, atol=1e-7)
    assert not np.allclose(expected, ensemble(model_image[None]).numpy())  # response units are not the raw output
    saved = np.load(root / "results" / "mei" / "meis.npz")
    np.testing.assert_allclose(out["mei"], saved["meis_pixels"][column], rtol=1e-6, atol=1e-4)
    gabors = np.load(root / "results" / "gabor" / "gabors.npz")
    np.testing.assert_allclose(out["gabor"], ensemble.to_pixels(gabors["optimal"][column]), rtol=1e-6)
    assert digests(copy) == before_copy and digests(root) == before_root


def test_each_cells_mei_excites_it_more_than_random_images_of_the_same_contrast(study):
    rng = np.random.default_rng(0)
    for cell in study.cell_ids:
        mei = study.mei(cell)
        contrast = np.linalg.norm(mei - study.pixel_mean)
        noise = rng.standard_normal((10, *study.image_shape))
        noise *= contrast / np.linalg.norm(noise.reshape(10, -1), axis=1)[:, None, None]
        random = np.clip(study.pixel_mean + noise, 0, 255)
        assert study.predict(mei, cells=cell)[0, 0] > study.predict(random, cells=cell).max(), cell


def test_cells_hold_the_ranking_order_true_kinds_and_receptive_fields(study, root):
    import pandas as pd

    cells = study.cells
    np.testing.assert_array_equal(cells.cell_id, load_ensemble(root / "models" / "ensemble").cell_ids)
    ranking = pd.read_csv(root / "results" / "ranking" / "ranking.csv").set_index("cell_id")
    np.testing.assert_array_equal(cells["rank"], ranking.loc[cells.cell_id, "rank"])
    assert list(cells["rank"]) == sorted(cells["rank"])  # the model's columns are in rank order
    truth = json.loads(next((root / "data").rglob("ground_truth/*.json")).read_text())
    kinds = {c["cell_id"]: c["kind"] for c in truth["cells"]}
    assert list(cells.kind) == [kinds[c] for c in cells.cell_id]
    # the receptive field in degrees maps back onto its model pixel (pixel i spans [i, i + 1) there)
    row, col = VisualField.from_crop(STUDY_CROP, study.image_shape).model_coordinates(cells.rf_x_deg, cells.rf_y_deg)
    np.testing.assert_allclose(row, cells.rf_row + 0.5, atol=1e-9)
    np.testing.assert_allclose(col, cells.rf_col + 0.5, atol=1e-9)


def test_geometry_is_the_whole_scene_on_the_allen_screen(study):
    height, width = study.image_shape
    assert study.degrees_per_pixel == pytest.approx((SCENE_HEIGHT_PX / PIXELS_PER_DEGREE / height,
                                                     SCENE_WIDTH_PX / PIXELS_PER_DEGREE / width))
    x, y = study.pixel_to_degrees((height - 1) / 2, (width - 1) / 2)
    assert (x, y) == pytest.approx((0.0, 0.0), abs=1e-9)  # the scene is centred on the screen
    x, y = study.pixel_to_degrees(-0.5, -0.5)  # the top left corner: left and UP
    assert (x, y) == pytest.approx((-SCENE_WIDTH_PX / 2 / PIXELS_PER_DEGREE, SCENE_HEIGHT_PX / 2 / PIXELS_PER_DEGREE))
    assert 0 <= study.pixel_mean <= 255 and study.pixel_std > 0


def test_gabor_parameters_describe_the_optimal_gabor(study):
    from meiscope.insilico.gabor import gabor_images

    cell = int(study.cell_ids[0])
    params = study.optimal_gabor_params(cell)
    image = study.optimal_gabor(cell) - study.pixel_mean
    shape = gabor_images([[params[k] for k in ("x", "y", "theta", "wavelength", "sigma", "phase")]],
                         study.image_shape, "cpu")[0].numpy()
    # the saved image is that Gabor at some contrast: the same pattern up to a positive factor
    assert np.corrcoef(image.ravel(), shape.ravel())[0, 1] > 0.99
    assert params["wavelength_deg"] == pytest.approx(params["wavelength"] * np.mean(study.degrees_per_pixel))


def test_prepare_area_averages_like_extract_and_refuses_other_aspect_ratios(study):
    image = np.random.default_rng(1).uniform(0, 255, study.image_shape)
    big = np.kron(image, np.ones((4, 4)))  # each pixel as a 4 x 4 block: averaging gives it back
    np.testing.assert_allclose(study.prepare(big), image, rtol=1e-5)
    np.testing.assert_allclose(study.prepare(np.stack([big, 255 - big])), [image, 255 - image], rtol=1e-5)
    with pytest.raises(MeiscopeError, match=r"aspect ratio .* crop them"):
        study.prepare(np.zeros((100, 100)))


def test_prepare_cuts_extract_crop_out_of_a_whole_scene(root, tmp_path):
    cropped = copy_study(root, tmp_path / "cropped")
    (cropped / "params.yaml").write_text(yaml.safe_dump({**STUDY, "extract": {**STUDY["extract"],
                                                                              "crop": [0.25, 0.75, 0.25, 0.75]}}))
    study = load_study(cropped)
    image = np.random.default_rng(4).uniform(0, 255, study.image_shape)
    scene = np.random.default_rng(5).uniform(0, 255, (72, 92))  # twice the model's size: the crop is its middle
    scene[18:54, 23:69] = np.kron(image, np.ones((2, 2)))
    np.testing.assert_allclose(study.prepare(scene), image, rtol=1e-5)
    whole = load_study(root)  # half the scene on as many pixels: half the degrees per pixel (the crop
    half = tuple(d / 2 for d in whole.degrees_per_pixel)  # is cut in whole scene pixels: 458 of 918 rows)
    assert study.degrees_per_pixel == pytest.approx(half, rel=5e-3)
    with pytest.raises(MeiscopeError, match=r"images of shape \(0, 5\): expected .* at least one pixel"):
        study.prepare(np.zeros((0, 5)))


@pytest.mark.parametrize("call, words", [
    (lambda s: s.predict(np.zeros((10, 10))), ["(10, 10)", "(18, 23)", "study.prepare"]),
    (lambda s: s.predict(np.zeros((1, 1, 18, 23))), ["(1, 1, 18, 23)", "(18, 23)"]),
    (lambda s: s.predict(np.full((18, 23), np.nan)), ["NaN"]),
    (lambda s: s.predict(np.full((18, 23), 300.0)), ["300", "0-255"]),
    (lambda s: s.predict(np.zeros((18, 23)), cells=123), ["cell 123", "not modelled"]),
    (lambda s: s.predict(np.zeros((18, 23)), cells="abc"), ["'abc'"]),
    (lambda s: s.mei(42), ["cell 42", "not modelled"]),
    (lambda s: s.optimal_gabor(True), ["cell True", "integers"]),
], ids=["wrong-shape", "4d", "nan", "out-of-range", "unknown-cell", "cell-not-an-id", "mei-unknown-cell", "bool-cell"])
def test_bad_calls_get_one_line_errors(study, call, words):
    with pytest.raises(MeiscopeError) as caught:
        call(study)
    message = str(caught.value)
    assert "\n" not in message and all(w in message for w in words), message


def _without(root: Path, target: Path, relative: str) -> Path:
    copy = copy_study(root, target)
    victim = copy / relative
    shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
    return copy


def test_missing_or_changed_study_files_get_one_line_errors(root, tmp_path):
    cases = {
        "no-folder": (tmp_path / "nowhere", "nowhere: no such study folder"),
        "no-params": (_without(root, tmp_path / "a", "params.yaml"), "params.yaml: missing"),
        "no-models": (_without(root, tmp_path / "b", "models"), "models/ensemble: no such ensemble folder"),
        "no-outputs": (_without(root, tmp_path / "c", "results"), "study.json: missing"),
    }
    changed = copy_study(root, tmp_path / "d")
    (changed / "params.yaml").write_text(yaml.safe_dump({**STUDY, "extract": {**STUDY["extract"], "image_height": 20}}))
    cases["changed-params"] = (changed, "extract.image_height/image_width (20, 23) differ from the trained model's")
    for name, (folder, words) in cases.items():
        with pytest.raises(MeiscopeError) as caught:
            load_study(folder)
        assert words in str(caught.value) and "\n" not in str(caught.value), (name, str(caught.value))


def test_missing_or_stale_mei_and_gabor_files_are_named(root, tmp_path):
    study = load_study(_without(root, tmp_path / "a", "results/mei"))
    with pytest.raises(MeiscopeError, match=r"meis.npz: missing \(run `meiscope mei` first\)"):
        study.mei(int(study.cell_ids[0]))
    study.optimal_gabor(int(study.cell_ids[0]))  # the Gabors are still there
    stale = copy_study(root, tmp_path / "b")
    with np.load(root / "results" / "gabor" / "gabors.npz") as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(stale / "results" / "gabor" / "gabors.npz", **{**arrays, "cell_ids": arrays["cell_ids"][::-1]})
    study = load_study(stale)
    with pytest.raises(MeiscopeError, match=r"gabors.npz: made for other cells than models/ensemble"):
        study.optimal_gabor_params(int(study.cell_ids[0]))


def test_an_unavailable_device_is_refused_in_one_line(root):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(MeiscopeError, match="CUDA is not available"):
        load_study(root, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_predictions_on_cuda_match_the_cpu(root, study, no_tf32):
    gpu = load_study(root, device="cuda")
    images = study.natural_images[:8]
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.predict(images), study.predict(images), rtol=1e-4, atol=1e-6)


def test_the_docs_example_runs_on_a_study_and_on_a_picture_file(root, tmp_path):
    from PIL import Image

    picture = np.random.default_rng(2).uniform(0, 255, (90, 115)).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "photo.png")
    before = digests(root)
    command = [sys.executable, str(EXAMPLE), "--study", str(root), "--image", str(tmp_path / "photo.png"),
               "--out", str(tmp_path / "figure.png")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "your image: predicted response" in result.stdout and "dF/F" in result.stdout
    assert (tmp_path / "figure.png").stat().st_size > 0 and digests(root) == before
