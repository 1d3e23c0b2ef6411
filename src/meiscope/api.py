"""Use a trained study from Python: ``meiscope.load_study(path)`` -> :class:`Study`.

After ``make run`` (or ``dvc repro``) a checkout holds the trained ensemble (``models/ensemble``) and
the stages' outputs (``results/``). :func:`load_study` reads them, and nothing else: no MLflow, no
raw data (except the synthetic cortex's ground-truth summary, for each cell's kind), and it never
writes into the study's folder. The :class:`Study` it returns speaks the stimulus' own units:

- images are 0-255 grey levels (the Allen natural scenes' screen pixels) at the model's
  resolution ``image_shape``; :meth:`Study.prepare` crops and resizes a larger scene the way the
  ``extract`` stage did;
- responses are the recording's: dF/F (two-photon: mean over the response window minus the
  baseline window) or spike counts (Neuropixels: spikes in ``neuropixels.count_window``), per
  trial, as the model was trained to predict them;
- cells are the recording's ids (Allen cell specimen ids, or unit ids), in the model's output order.

torch is imported only by :func:`load_study`, so ``import meiscope`` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from meiscope.errors import MeiscopeError

RESPONSE_UNITS = {"dff": "dF/F", "counts": "spike counts"}  # ResponseDataset.response_kind -> its unit
PIXEL_RANGE = (0.0, 255.0)  # the screen's grey levels
PIXEL_SLACK = 0.5  # half a grey level: room for float rounding of pixels that went through model space
ASPECT_TOLERANCE = 0.05  # prepare() refuses images whose aspect ratio differs more from the model's


class StudyError(MeiscopeError, ValueError):
    """A study folder, an image or a cell id that the Python API cannot use (one line naming it)."""


@dataclass(eq=False)
class Study:
    """A trained study, read from its checkout by :func:`load_study`.

    Attributes:
        path: the study's folder (the one holding ``params.yaml``).
        experiment_id: the studied session.
        cells: one row per modelled cell, in the model's output order (a ``pandas.DataFrame``):
            ``cell_id``; ``rank`` and ``reliability`` (``results/ranking``); ``test_corr_to_avg``
            (the ensemble's test accuracy, ``results/train``); ``rf_row``, ``rf_col`` (the model's
            receptive-field centre in model pixels, 0 = the first pixel's centre) and ``rf_x_deg``,
            ``rf_y_deg`` (the same in screen degrees: x right, y up from the screen centre); ``kind``
            (the true cell kind of a synthetic session, None for real data). Values a stage did not
            write are NaN.
        image_shape: ``(height, width)`` of the images the model takes.
        degrees_per_pixel: ``(height, width)`` of one model pixel in visual degrees.
        pixel_mean, pixel_std: the model's normalisation of 0-255 pixels: ``(pixels - mean) / std``.
        response_kind: ``dff`` or ``counts`` (see :attr:`response_units`).
    """

    path: Path
    experiment_id: int
    cells: Any
    image_shape: tuple[int, int]
    degrees_per_pixel: tuple[float, float]
    pixel_mean: float
    pixel_std: float
    response_kind: str
    _ensemble: Any = field(repr=False)
    _field: Any = field(repr=False)
    _crop: tuple[float, ...] = field(repr=False)
    _natural: np.ndarray = field(repr=False)
    _npz: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (f"Study({str(self.path)!r}, session {self.experiment_id}, {len(self.cell_ids)} cells, "
                f"{self.image_shape[0]}x{self.image_shape[1]} px images, responses in {self.response_units})")

    @property
    def cell_ids(self) -> np.ndarray:
        """``(n_cells,)`` int64 ids of the modelled cells, in the model's output order."""
        return np.asarray(self._ensemble.cell_ids, dtype=np.int64)

    @property
    def response_units(self) -> str:
        """What :meth:`predict` returns: ``dF/F`` or ``spike counts`` (per trial's response window)."""
        return RESPONSE_UNITS[self.response_kind]

    @property
    def device(self) -> Any:
        """The ``torch.device`` the ensemble runs on."""
        return self._ensemble.device

    @property
    def natural_images(self) -> np.ndarray:
        """``(n_images, H, W)`` the natural scenes the session showed, as 0-255 pixels at model resolution."""
        return self._natural * self.pixel_std + self.pixel_mean

    def predict(self, images: Any, cells: Any = None) -> np.ndarray:
        """The ensemble's predicted response ``(n_images, n_cells)`` in :attr:`response_units`.

        Args:
            images: ``(H, W)`` or ``(N, H, W)`` 0-255 grey levels with ``(H, W) == image_shape``
                (any other shape is refused: :meth:`prepare` resizes).
            cells: one cell id, a sequence of them, or None for every modelled cell (columns in
                that order).
        """
        batch = _image_batch(images, self.image_shape)
        columns = self._columns(cells)
        predicted = self._ensemble.predict(self._ensemble.to_model(batch).astype(np.float32))
        return predicted[:, columns]

    def prepare(self, images: Any, crop: bool = True) -> np.ndarray:
        """Images of any size -> ``image_shape``, as the ``extract`` stage made the model's images.

        ``crop=True`` treats each image as a whole natural scene (the Allen template's frame, at any
        resolution) and cuts ``extract.crop`` out of it first; ``crop=False`` takes images that already
        show the model's field of view. The result is area-averaged to ``image_shape`` (0-255 pixels).
        An aspect ratio more than 5% off the model's is refused rather than stretched.
        """
        from meiscope.responses import prepare_images

        arr = _pixels(images, "images")
        batch = arr[None] if arr.ndim == 2 else arr
        if batch.ndim != 3 or min(batch.shape[1:], default=0) < 1:
            raise StudyError(f"images of shape {arr.shape}: expected (height, width) or (n, height, width) "
                             "with at least one pixel")
        frame = self._crop if crop else (0.0, 1.0, 0.0, 1.0)
        _check_aspect(batch.shape[1:], frame, self.image_shape)
        out = prepare_images(np.ascontiguousarray(batch, dtype=np.float32), list(frame), self.image_shape)
        return out[0] if arr.ndim == 2 else out

    def mei(self, cell: Any) -> np.ndarray:
        """``(H, W)`` the cell's Most Exciting Input (``results/mei/meis.npz``) in 0-255 pixels."""
        return self._ensemble.to_pixels(self._saved("mei", "meis.npz", "meis")[self._column(cell)])

    def optimal_gabor(self, cell: Any) -> np.ndarray:
        """``(H, W)`` the cell's optimal Gabor under the MEI's budget (``results/gabor``) in 0-255 pixels."""
        return self._ensemble.to_pixels(self._saved("gabor", "gabors.npz", "optimal")[self._column(cell)])

    def optimal_gabor_params(self, cell: Any) -> dict[str, float]:
        """The optimal Gabor's parameters.

        ``x``, ``y``: centre (model pixel column, row; 0 = the first pixel's centre); ``theta``:
        orientation of the carrier (radians); ``wavelength``, ``sigma``: carrier period and envelope
        s.d. (model pixels); ``phase`` (radians). Also ``x_deg``, ``y_deg`` (screen degrees, y up),
        ``wavelength_deg`` and ``sigma_deg`` (at the mean of the two axes' degrees per pixel).
        """
        from meiscope.insilico.gabor import PARAM_NAMES

        values = self._saved("gabor", "gabors.npz", "optimal_params")[self._column(cell)]
        params = {name: float(v) for name, v in zip(PARAM_NAMES, values)}
        x_deg, y_deg = self.pixel_to_degrees(params["y"], params["x"])
        scale = float(np.mean(self.degrees_per_pixel))
        return {**params, "x_deg": float(x_deg), "y_deg": float(y_deg),
                "wavelength_deg": params["wavelength"] * scale, "sigma_deg": params["sigma"] * scale}

    def pixel_to_degrees(self, row: Any, col: Any) -> tuple[np.ndarray, np.ndarray]:
        """Screen degrees ``(x right, y up)`` from the screen centre of model pixel coordinates
        (``row``, ``col``; 0 = the first pixel's centre, fractions allowed)."""
        return _pixel_to_degrees(self._field, row, col)

    def _column(self, cell: Any) -> int:
        """The model output column of ``cell`` (a one-line error for an unknown id)."""
        if isinstance(cell, (bool, np.bool_)) or not isinstance(cell, (int, np.integer)):
            raise StudyError(f"cell {cell!r}: cell ids are integers (see study.cells.cell_id)")
        hits = np.flatnonzero(self.cell_ids == int(cell))
        if not len(hits):
            raise StudyError(f"cell {int(cell)} is not modelled by the study in {self.path} "
                             f"({len(self.cell_ids)} cells, e.g. {int(self.cell_ids[0])}: see study.cells)")
        return int(hits[0])

    def _columns(self, cells: Any) -> np.ndarray:
        if cells is None:
            return np.arange(len(self.cell_ids))
        if isinstance(cells, (int, np.integer)) and not isinstance(cells, (bool, np.bool_)):
            cells = [cells]
        if isinstance(cells, (str, bytes)) or not isinstance(cells, Iterable):
            raise StudyError(f"cells {cells!r}: expected a cell id, a sequence of ids, or None")
        return np.array([self._column(c) for c in cells], dtype=np.int64)

    def _saved(self, stage: str, name: str, key: str) -> np.ndarray:
        """Array ``key`` of ``results/<stage>/<name>``, checked to hold the ensemble's cells in its order."""
        path = self.path / "results" / stage / name
        if path not in self._npz:
            self._npz[path] = _read_npz(path, stage)
        arrays = self._npz[path]
        if key not in arrays or "cell_ids" not in arrays:
            raise StudyError(f"{path}: lacks {key!r} or 'cell_ids' (rerun `meiscope {stage}`)")
        if not np.array_equal(np.asarray(arrays["cell_ids"], dtype=np.int64), self.cell_ids):
            raise StudyError(f"{path}: made for other cells than models/ensemble (rerun `meiscope {stage}`)")
        return arrays[key]


def load_study(path: str | Path = ".", device: str = "cpu") -> Study:
    """Read the trained study in ``path`` (a checkout after ``make run``); writes nothing there.

    Args:
        path: the folder holding the study's ``params.yaml``, ``models/`` and ``results/``.
        device: where the ensemble runs: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``auto``.

    Raises:
        MeiscopeError: a missing or incomplete study, a ``params.yaml`` changed since the study ran,
            or an unavailable device (one line naming the file, key or device).
    """
    from meiscope.config import load_params
    from meiscope.model import resolve_device
    from meiscope.model.ensemble import load_ensemble
    from meiscope.paths import Layout
    from meiscope.study import load_study_dataset
    from meiscope.visual_field import VisualField

    root = Path(path)
    if not root.is_dir():
        raise StudyError(f"{root}: no such study folder (pass the checkout where `make run` ran)")
    params_path = root / "params.yaml"
    if not params_path.is_file():
        raise StudyError(f"{params_path}: missing (load_study reads the study's checkout: params.yaml, "
                         "models/ and results/)")
    params = load_params(params_path)
    layout = Layout.from_params(params, root)
    ensemble = load_ensemble(layout.ensemble, device=resolve_device(device))
    dataset = load_study_dataset(layout)
    shape = tuple(int(v) for v in ensemble.image_shape)
    _check_geometry(params_path, params.extract, shape, dataset.images.shape[1:])
    visual_field = VisualField.from_crop(params.extract.crop, shape)
    cells = _cell_table(layout, ensemble.cell_ids, dataset, visual_field)
    return Study(path=root, experiment_id=int(dataset.experiment_id), cells=cells, image_shape=shape,
                 degrees_per_pixel=tuple(float(v) for v in visual_field.pixel_size_deg()),
                 pixel_mean=float(ensemble.pixel_mean), pixel_std=float(ensemble.pixel_std),
                 response_kind=dataset.response_kind, _ensemble=ensemble, _field=visual_field,
                 _crop=tuple(float(v) for v in params.extract.crop), _natural=dataset.images)


def _check_geometry(params_path: Path, extract: Any, model_shape: tuple[int, ...], data_shape: tuple[int, ...]) -> None:
    """The model, the dataset and params.yaml must agree on the image size (else params.yaml changed since)."""
    configured = (int(extract.image_height), int(extract.image_width))
    if tuple(data_shape) != model_shape:
        raise StudyError(f"models/ensemble takes {model_shape} images but results/responses holds "
                         f"{tuple(data_shape)}: the study is half re-run (finish `dvc repro`)")
    if configured != model_shape:
        raise StudyError(f"{params_path}: extract.image_height/image_width {configured} differ from the trained "
                         f"model's {model_shape}: params.yaml changed since the study ran (restore it or `dvc repro`)")


def _cell_table(layout: Any, cell_ids: np.ndarray, dataset: Any, visual_field: Any) -> Any:
    """One row per modelled cell (model output order): ids, rank, accuracy, receptive field, true kind."""
    import pandas as pd

    table = pd.DataFrame({"cell_id": np.asarray(cell_ids, dtype=np.int64)})
    table = _merge_columns(table, layout.ranking / "ranking.csv", {"rank": "rank", "reliability": "reliability"})
    table = _merge_columns(table, layout.train / "per_neuron.csv",
                           {"test_corr_to_avg": "test_corr_to_avg", "readout_row": "rf_row", "readout_col": "rf_col"})
    x_deg, y_deg = _pixel_to_degrees(visual_field, table["rf_row"].to_numpy(float), table["rf_col"].to_numpy(float))
    table["rf_x_deg"], table["rf_y_deg"] = x_deg, y_deg
    table["kind"] = _true_kinds(layout, dataset, table["cell_id"].to_numpy())
    return table


def _merge_columns(table: Any, path: Path, columns: dict[str, str]) -> Any:
    """``table`` with ``columns`` (file name -> our name) of the CSV at ``path`` joined on cell_id (NaN if absent)."""
    import pandas as pd

    found = pd.DataFrame(columns=["cell_id", *columns])
    if path.is_file():
        try:
            found = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise StudyError(f"{path}: unreadable ({str(err).splitlines()[0]})") from None
        missing = [c for c in ("cell_id", *columns) if c not in found.columns]
        if missing:
            raise StudyError(f"{path}: missing columns {missing}")
    found = found.loc[:, ["cell_id", *columns]].rename(columns=columns).astype({"cell_id": np.int64})
    return table.merge(found.drop_duplicates("cell_id"), on="cell_id", how="left")


def _true_kinds(layout: Any, dataset: Any, cell_ids: np.ndarray) -> list[str | None]:
    """Each cell's true kind from the synthetic cortex's ground-truth summary; None for real data."""
    from meiscope import truth

    if not truth.is_synthetic(layout.cache_dir, dataset.experiment_id):
        return [None] * len(cell_ids)
    from meiscope.synthetic.population import ground_truth_summary

    summary = ground_truth_summary(layout.cache_dir, dataset.experiment_id)
    kinds = {int(c["cell_id"]): str(c["kind"]) for c in summary.get("cells", [])}
    return [kinds.get(int(c)) for c in cell_ids]


def _pixel_to_degrees(visual_field: Any, row: Any, col: Any) -> tuple[np.ndarray, np.ndarray]:
    """Model pixel ``(row, col)`` (0 = first pixel's centre) -> screen degrees ``(x, y up)``."""
    from meiscope.recordings.screen import monitor_to_degrees

    vf = visual_field
    # pixel i spans [i, i + 1) of the field's edges, so its centre (our 0) sits at i + 0.5
    monitor_row = vf.top + (np.asarray(row, dtype=float) + 0.5) * (vf.bottom - vf.top) / vf.shape[0]
    monitor_col = vf.left + (np.asarray(col, dtype=float) + 0.5) * (vf.right - vf.left) / vf.shape[1]
    return monitor_to_degrees(monitor_row, monitor_col)


def _pixels(images: Any, what: str) -> np.ndarray:
    """``images`` as a float64 array of finite 0-255 grey levels (one-line errors otherwise)."""
    arr = np.asarray(images)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)) or arr.dtype == bool:
        raise StudyError(f"{what}: expected numbers (0-255 grey levels), got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.size and not np.isfinite(arr).all():
        raise StudyError(f"{what}: contain NaN or inf")
    low, high = (float(arr.min()), float(arr.max())) if arr.size else PIXEL_RANGE
    if low < PIXEL_RANGE[0] - PIXEL_SLACK or high > PIXEL_RANGE[1] + PIXEL_SLACK:
        raise StudyError(f"{what}: pixel values {low:.4g}..{high:.4g} are outside the screen's 0-255 grey levels "
                         "(multiply 0-1 images by 255)")
    return arr


def _image_batch(images: Any, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` or ``(N, H, W)`` 0-255 images -> ``(N, H, W)``, refusing any other shape with the expected one."""
    arr = np.asarray(images)
    if arr.ndim not in (2, 3) or tuple(arr.shape[-2:]) != tuple(shape):
        raise StudyError(f"images of shape {arr.shape}: the model takes (H, W) or (N, H, W) images with "
                         f"(H, W) = {tuple(shape)} (resize with study.prepare(images))")
    arr = _pixels(arr, "images")
    return arr[None] if arr.ndim == 2 else arr


def _check_aspect(size: tuple[int, ...], crop: tuple[float, ...], shape: tuple[int, int]) -> None:
    """Refuse images whose (cropped) aspect ratio is more than :data:`ASPECT_TOLERANCE` off the model's."""
    top, bottom, left, right = crop
    # whole pixels, as meiscope.responses.prepare_images cuts them
    kept = (round(bottom * size[0]) - round(top * size[0]), round(right * size[1]) - round(left * size[1]))
    if min(kept) < 1:
        raise StudyError(f"images of size {tuple(size)}: extract.crop {list(crop)} leaves no pixel of them")
    aspect = kept[1] / kept[0]
    wanted = shape[1] / shape[0]
    if abs(aspect / wanted - 1) > ASPECT_TOLERANCE:
        frame = "after extract.crop " if crop != (0.0, 1.0, 0.0, 1.0) else ""
        raise StudyError(f"images of size {tuple(size)} have aspect ratio (width / height) {aspect:.3f} {frame}but "
                         f"the model's images are {wanted:.3f} ({shape[1]} x {shape[0]}): crop them to that first")


def _read_npz(path: Path, stage: str) -> dict[str, np.ndarray]:
    """Every array of ``path`` (a one-line error when the stage has not run or the file is damaged)."""
    if not path.is_file():
        raise StudyError(f"{path}: missing (run `meiscope {stage}` first)")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as err:  # zip / format errors of a damaged file
        raise StudyError(f"{path}: unreadable ({type(err).__name__})") from None
