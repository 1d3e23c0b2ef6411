"""Closed-loop helpers: phase-invariant comparison and true responses through the model's pixel space."""

import numpy as np
import pandas as pd
import pytest
import torch

from meiscope.validation import (TrueNeuronsInModelSpace, image_correlation, mei_truth_correlations,
                                 phase_invariant_correlation, quadrature_partner, summarise_validation,
                                 true_optima, true_responses)


def gabor(shape=(36, 46), x=22.0, y=17.0, theta=0.6, wavelength=9.0, sigma=5.0, phase=0.0):
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(float)
    u = (xx - x) * np.cos(theta) + (yy - y) * np.sin(theta)
    envelope = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return envelope * np.cos(2 * np.pi * u / wavelength + phase)


def test_quadrature_partner_of_even_gabor_is_the_odd_gabor():
    even, odd = gabor(phase=0.0), gabor(phase=-np.pi / 2)
    assert abs(image_correlation(quadrature_partner(even), odd)) > 0.97


@pytest.mark.parametrize("phase", [0.0, 0.7, np.pi / 2, 2.5, np.pi])
def test_phase_invariant_correlation_ignores_phase_but_not_orientation(phase):
    optimum = gabor(phase=0.3)
    shifted = gabor(phase=0.3 + phase)
    assert phase_invariant_correlation(shifted, optimum) > 0.97
    rotated = gabor(theta=0.6 + np.pi / 2, phase=0.3 + phase)
    assert phase_invariant_correlation(rotated, optimum) < 0.5


def test_plain_correlation_is_used_for_non_complex_cells():
    optimum = gabor()
    opposite = gabor(phase=np.pi)
    corr = mei_truth_correlations(np.stack([opposite, opposite]), np.stack([optimum, optimum]), ["simple", "complex"])
    assert corr[0] < -0.95  # a simple cell's MEI with the wrong sign is wrong
    assert corr[1] > 0.95   # a complex cell does not care


class SquareNeurons(torch.nn.Module):
    """Rates = sum of squared contrast over two image halves (columns = cells)."""

    cell_ids = np.array([10, 11])

    def forward(self, pixels):
        c = (pixels - 127.0) / 127.0
        half = pixels.shape[-1] // 2
        return torch.stack([(c[..., :half] ** 2).sum((-1, -2)), (c[..., half:] ** 2).sum((-1, -2))], dim=1)

    drive = forward


def test_true_neurons_in_model_space_map_pixels_and_pick_each_neurons_own_image():
    mean, std = 127.0, 50.0
    truth = TrueNeuronsInModelSpace(SquareNeurons(), [1, 0], mean, std)
    images = np.zeros((2, 4, 6), dtype=np.float32)
    images[0, :, 3:] = 1.0   # neuron 0 = population column 1 (right half)
    images[1, :, :3] = 2.0   # neuron 1 = population column 0 (left half)
    rates = true_responses(truth, images, "cpu")
    expected = np.array([12 * (50 / 127) ** 2, 12 * (100 / 127) ** 2])
    np.testing.assert_allclose(rates, expected, rtol=1e-5)


def test_summary_reports_overall_and_per_kind_medians():
    table = pd.DataFrame({"kind": ["simple", "simple", "conjunction"], "mei_truth_corr": [0.9, 0.8, 0.5],
                          "mei_over_true_optimum": [1.0, 0.9, 0.7], "mei_over_gabor": [1.0, 1.1, 1.6],
                          "mei_over_best_image": [2.0, 2.0, 3.0], "mei_beats_gabor": [False, True, True]})
    s = summarise_validation(table)
    assert s["gt_mei_corr_median"] == pytest.approx(0.8)
    assert s["gt_mei_corr_median_simple"] == pytest.approx(0.85)
    assert s["gt_mei_over_gabor_median_conjunction"] == pytest.approx(1.6)
    assert s["gt_frac_mei_beats_gabor_simple"] == pytest.approx(0.5)
    assert s["n_simple"] == 2 and s["n_neurons"] == 3


class ConjunctionDrive(torch.nn.Module):
    """Neuron 0: relu(<g1, x>)^2 (simple); neuron 1: relu(<g1, x>) * relu(<g2, x>) (conjunction)."""

    def __init__(self, g1, g2):
        super().__init__()
        self.g1 = torch.as_tensor(g1 / np.linalg.norm(g1), dtype=torch.float32)
        self.g2 = torch.as_tensor(g2 / np.linalg.norm(g2), dtype=torch.float32)

    def forward(self, x):
        a = (x[:, 0] * self.g1).sum((-1, -2))
        b = (x[:, 0] * self.g2).sum((-1, -2))
        return torch.stack([torch.relu(a) ** 2, torch.relu(a) * torch.relu(b)], dim=1)


def test_true_optima_find_the_filter_and_the_plaid_under_the_budget():
    g1, g2 = gabor(theta=0.3), gabor(theta=0.3 + np.pi / 2)
    model = ConjunctionDrive(g1, g2)
    noise = np.random.default_rng(0).normal(size=g1.shape)
    starts = np.stack([np.stack([noise, g1 + noise, g2]), np.stack([g1, g2, g1 + g2])]).astype(np.float32)
    optima = true_optima(model, starts, norm=5.0, bounds=(-3.0, 3.0), steps=60, lr=0.5, device="cpu")
    assert np.linalg.norm(optima, axis=(1, 2)) == pytest.approx([5.0, 5.0], rel=1e-4)
    assert image_correlation(optima[0], g1) > 0.95
    assert image_correlation(optima[1], g1 + g2) > 0.95  # the plaid, not either Gabor alone
