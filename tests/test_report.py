"""The HTML report: self-contained, and its images render in a real headless browser."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from meiscope.atomic import save_figure
from meiscope.report import Section, render_report, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.random.default_rng(0).random((8, 8)))
    save_figure(fig, path)
    return path


def test_report_inlines_images_and_escapes_text(tmp_path):
    fig = _png(tmp_path / "a.png")
    html = render_report("t", "<sub>", [Section("S", "intro & more", {"x": 0.123456, "k": "<b>"}, [fig, tmp_path / "missing.png"])])
    assert "data:image/png;base64," in html
    assert "src=\"http" not in html and "<link" not in html  # nothing loaded from a network
    assert "&lt;sub&gt;" in html and "&lt;b&gt;" in html and "0.123" in html
    assert "Not produced: missing.png" in html


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_report_images_render_in_headless_chromium(tmp_path):
    figs = [_png(tmp_path / f"f{i}.png") for i in range(3)]
    page = write_report(tmp_path / "report" / "index.html", "meiscope", "test",
                        [Section("A", "a", {"v": 1.0}, figs[:2]), Section("B", "b", {}, figs[2:])])
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    loaded = re.search(r'data-images-loaded="(\d+)"', out.stdout)
    total = re.search(r'data-images-total="(\d+)"', out.stdout)
    assert loaded and total, out.stderr[-2000:]
    assert int(total.group(1)) == 3 and int(loaded.group(1)) == 3
