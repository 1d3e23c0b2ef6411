"""What does a neuron answer to my image? Run after `make run`, from the checkout:

    python docs/examples/neuron_response.py                      # the best-ranked cell, one of the study's scenes
    python docs/examples/neuron_response.py --image photo.png --cell 600010010

It loads the trained study (meiscope.load_study), prints the cell's predicted response to the image,
to its Most Exciting Input (MEI) and to its optimal Gabor, and saves a figure of the three images.
The study's folder is only read; the figure goes to --out (default: the system's temporary folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import meiscope
from meiscope.errors import MeiscopeError


def read_image(path: Path) -> np.ndarray:
    """A picture file as 0-255 grey levels (the units the Allen screen showed)."""
    from PIL import Image

    with Image.open(path) as picture:
        return np.asarray(picture.convert("L"), dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=".", help="the checkout where `make run` ran (default: here)")
    parser.add_argument("--image", type=Path, help="a picture file (default: the study's first natural scene)")
    parser.add_argument("--cell", type=int, help="a modelled cell id (default: the best-ranked cell)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "meiscope_neuron_response.png")
    args = parser.parse_args(argv)
    try:
        study = meiscope.load_study(args.study)
        cell = int(study.cells.sort_values("rank").cell_id.iloc[0]) if args.cell is None else args.cell
        # a whole picture is taken as a natural scene: cropped and resized as the study's scenes were
        image = study.prepare(read_image(args.image)) if args.image else study.natural_images[0]
        shown = {"your image": image, "MEI": study.mei(cell), "optimal Gabor": study.optimal_gabor(cell)}
        responses = {name: float(study.predict(img, cells=cell)[0, 0]) for name, img in shown.items()}
    except MeiscopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(study)
    for name, value in responses.items():
        print(f"cell {cell}, {name}: predicted response {value:.4g} {study.response_units}")
    save_figure(shown, responses, cell, study.response_units, args.out)
    print(f"figure: {args.out}")
    return 0


def save_figure(images: dict, responses: dict, cell: int, units: str, path: Path) -> None:
    """The images side by side, each titled with the cell's predicted response."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meiscope.atomic import save_figure as save_atomically

    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 2.6))
    for ax, (name, img) in zip(axes, images.items()):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"cell {cell}, {name}\n{responses[name]:.3g} {units}", fontsize=9)
        ax.axis("off")
    save_atomically(fig, path)


if __name__ == "__main__":
    sys.exit(main())
