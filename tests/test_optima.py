"""Exact true optima: textbook answers without clipping, brute-force searches where the box binds."""

import numpy as np
import pytest
import torch

from meiscope.insilico.budget import project_to_budget
from meiscope.optima import (SubunitFilters, drive_from_subunits, model_space_subunits, optimum_of_cell,
                             true_optima)

SHAPE = (4, 5)
P = SHAPE[0] * SHAPE[1]


def subunit_pair(cosine: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two random filters of different norms whose cosine similarity is ``cosine``."""
    rng = np.random.default_rng(seed)
    u, v = np.linalg.qr(rng.standard_normal((P, 2)))[0].T
    w1 = 1.3 * u
    w2 = 0.8 * (cosine * u + np.sqrt(1 - cosine ** 2) * v)
    return w1, w2


def brute_force(kind, w1, w2, a0, b0, norm, bounds, starts=256, steps=500, seed=1):
    """Best drive found by Adam over ALL image directions v (x = project_to_budget(v)), many random starts."""
    torch.manual_seed(seed)
    v = torch.randn(starts, 1, P, dtype=torch.float64, requires_grad=True)
    t1, t2 = torch.as_tensor(w1), torch.as_tensor(w2)
    opt = torch.optim.Adam([v], lr=0.05)
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.01 ** (1 / steps))
    best = 0.0
    for _ in range(steps):
        x = project_to_budget(v, norm, bounds)[:, 0]
        a, b = x @ t1 + a0, x @ t2 + b0
        if kind == "simple":
            d = torch.relu(a) ** 2
        elif kind == "complex":
            d = a ** 2 + b ** 2
        else:  # a smooth surrogate keeps gradients alive where one factor is negative
            d = torch.relu(a) * torch.relu(b) + 1e-3 * torch.nn.functional.softplus(torch.minimum(a, b), beta=20)
        with torch.no_grad():
            exact = drive_from_subunits(kind, a.numpy(), b.numpy())
            best = max(best, float(exact.max()))
        opt.zero_grad()
        (-d.sum()).backward()
        opt.step()
        decay.step()
    return best


def check_feasible(image, norm, bounds):
    assert np.linalg.norm(image) == pytest.approx(norm, rel=1e-9)
    assert image.min() >= bounds[0] - 1e-12 and image.max() <= bounds[1] + 1e-12


WIDE = (-50.0, 50.0)  # the box never binds
TIGHT = (-0.45, 0.7)  # many pixels clip at this budget


@pytest.mark.parametrize("cosine", [0.0, 0.6, -0.6])
def test_without_clipping_the_optima_are_the_textbook_ones(cosine):
    w1, w2 = subunit_pair(cosine)
    norm = 2.0
    n1, n2 = np.linalg.norm(w1), np.linalg.norm(w2)
    # simple: the filter itself
    image, drive, _ = optimum_of_cell("simple", w1, w2, 0.0, 0.0, norm, WIDE)
    np.testing.assert_allclose(image, norm * w1 / n1, atol=1e-9)
    assert drive == pytest.approx((norm * n1) ** 2, rel=1e-9)
    # complex: the top eigenvalue of w1 w1' + w2 w2' (its eigenvector lies in their span)
    image, drive, _ = optimum_of_cell("complex", w1, w2, 0.0, 0.0, norm, WIDE)
    top = np.linalg.eigvalsh(np.outer(w1, w1) + np.outer(w2, w2))[-1]
    assert drive == pytest.approx(norm ** 2 * top, rel=1e-7)
    # conjunction: the sum of the unit filters, drive (|w1||w2| + w1.w2) / 2 per unit norm squared
    image, drive, _ = optimum_of_cell("conjunction", w1, w2, 0.0, 0.0, norm, WIDE)
    expected_dir = w1 / n1 + w2 / n2
    np.testing.assert_allclose(image, norm * expected_dir / np.linalg.norm(expected_dir), atol=1e-6)
    assert drive == pytest.approx(norm ** 2 * (n1 * n2 + w1 @ w2) / 2, rel=1e-7)


@pytest.mark.parametrize("kind", ["simple", "complex", "conjunction"])
@pytest.mark.parametrize("cosine", [0.0, 0.6, -0.6, -0.95])
def test_optimum_beats_brute_force_when_the_box_binds(kind, cosine):
    w1, w2 = subunit_pair(cosine, seed=3)
    a0, b0 = 0.02, -0.01
    norm = 2.0
    image, drive, _ = optimum_of_cell(kind, w1, w2, a0, b0, norm, TIGHT)
    check_feasible(image, norm, TIGHT)
    assert np.mean((image <= TIGHT[0] + 1e-9) | (image >= TIGHT[1] - 1e-9)) > 0.1  # the box does bind
    assert drive == pytest.approx(float(drive_from_subunits(kind, image @ w1 + a0, image @ w2 + b0)), rel=1e-12)
    found = brute_force(kind, w1, w2, a0, b0, norm, TIGHT)
    assert drive >= found * (1 - 1e-6)  # nothing beats the optimum...
    assert drive <= found * (1 + 1e-2)  # ...and a thorough search gets close (the answer is feasible anyway)
    assert drive > 0


def test_random_feasible_stimuli_never_beat_the_optimum():
    w1, w2 = subunit_pair(-0.5, seed=7)
    rng = np.random.default_rng(0)
    stimuli = project_to_budget(torch.as_tensor(rng.standard_normal((5000, 1, P))), 2.0, TIGHT)[:, 0].numpy()
    for kind in ("simple", "complex", "conjunction"):
        _, drive, _ = optimum_of_cell(kind, w1, w2, 0.0, 0.0, 2.0, TIGHT)
        assert drive_from_subunits(kind, stimuli @ w1, stimuli @ w2).max() <= drive * (1 + 1e-9)


def test_anti_correlated_conjunction_does_not_collapse_to_zero():
    """The old ascent landed where one factor is negative (gradient exactly 0); the search cannot."""
    w1, w2 = subunit_pair(-0.9, seed=5)
    image, drive, phi = optimum_of_cell("conjunction", w1, w2, 0.0, 0.0, 2.0, TIGHT)
    a, b = image @ w1, image @ w2
    assert a > 0 and b > 0 and drive == pytest.approx(a * b)
    assert 0 < phi < np.pi / 2


def test_true_optima_batches_cells_of_every_kind():
    pairs = [subunit_pair(c, seed=s) for s, c in enumerate([0.0, 0.3, -0.7, 0.5, 0.1])]
    kinds = ["simple", "complex", "conjunction", "unresponsive", "conjunction"]
    filters = SubunitFilters(w1=np.stack([p[0] for p in pairs]).reshape(5, *SHAPE),
                             w2=np.stack([p[1] for p in pairs]).reshape(5, *SHAPE), a0=np.zeros(5), b0=np.zeros(5))
    result = true_optima(filters, kinds, 2.0, TIGHT, chunk=1)
    for i, kind in enumerate(kinds):
        image, drive, _ = optimum_of_cell(kind, pairs[i][0], pairs[i][1], 0.0, 0.0, 2.0, TIGHT)
        np.testing.assert_allclose(result.images[i].ravel(), image, atol=1e-12)
        assert result.drives[i] == pytest.approx(drive)
    assert result.drives[3] == 0  # an unresponsive cell's drive is 0 for every image


def test_model_space_filters_reproduce_the_population_exactly():
    from meiscope.synthetic.population import TruePopulation, sample_cells

    rng = np.random.default_rng(0)
    params = sample_cells(6, {"simple": 0.3, "complex": 0.3, "conjunction": 0.4, "unresponsive": 0.0},
                          (4.0, 8.0), (2.0, 10.0), 0.5, np.arange(6), rng)
    population = TruePopulation(params, work_shape=(23, 29))
    mean, std, shape = 118.0, 45.0, (9, 12)
    filters = model_space_subunits(population, [4, 0, 2], mean, std, shape)
    assert population.filters.dtype == torch.float32  # the caller's module is left as it was
    x = rng.standard_normal((7, *shape))
    with torch.no_grad():
        a, b = population.to(torch.float64).subunits(torch.as_tensor(x * std + mean))
    for j, col in enumerate([4, 0, 2]):
        np.testing.assert_allclose(x.reshape(7, -1) @ filters.w1[j].ravel() + filters.a0[j], a[:, col].numpy(),
                                   atol=1e-10)
        np.testing.assert_allclose(x.reshape(7, -1) @ filters.w2[j].ravel() + filters.b0[j], b[:, col].numpy(),
                                   atol=1e-10)


@pytest.mark.parametrize("kind", ["simple", "complex", "conjunction", "centre_surround", "suppressed"])
@pytest.mark.parametrize("bounds", [WIDE, TIGHT])
def test_certified_upper_bound_agrees_with_the_optimum_within_1_percent(kind, bounds):
    """Lower bound (the stored optimum's drive) and certified upper bound agree; no feasible stimulus beats the upper."""
    from meiscope.optima import drive_upper_bounds

    w1, w2 = subunit_pair(0.6, seed=11)
    w2 = 0.7 * w2  # a suppressed cell's surround weight lives in its filter
    _, drive, _ = optimum_of_cell(kind, w1, w2, 0.01, -0.02, 2.0, bounds)
    upper = float(drive_upper_bounds(kind, w1[None], w2[None], np.array([0.01]), np.array([-0.02]), 2.0, bounds)[0])
    assert drive > 0 and drive <= upper * (1 + 1e-12) and upper <= drive * 1.01  # equal to rounding where tight
    rng = np.random.default_rng(2)
    stimuli = project_to_budget(torch.as_tensor(rng.standard_normal((3000, 1, P))), 2.0, bounds)[:, 0].numpy()
    assert drive_from_subunits(kind, stimuli @ w1 + 0.01, stimuli @ w2 - 0.02).max() <= upper


def test_out_of_family_optima_are_certified_and_beat_every_gabor_of_a_grid():
    """On planted cells: centre-surround and suppressed optima beat the best Gabor of a grid that contains the
    cells' own orientation, frequency and position, while a simple cell's optimum is that grid's best Gabor (so
    the grid is fine enough to find a Gabor optimum); every optimum's lower and upper bounds agree within 1%."""
    import itertools

    from test_population import SHAPE, planted_cells

    from meiscope.synthetic.population import TruePopulation, gabor

    kinds = ["centre_surround", "centre_surround", "suppressed", "simple"]
    params = planted_cells(kinds, sigma=0.05, sf=12.0, orientation=0.3, ratio=[2.0, 3.0, 2.0, 1.0],
                           strength=[0.0, 0.0, 1.0, 0.0], polarity=[1.0, -1.0, 1.0, 1.0])
    # model space = contrast (pixel mean and s.d. 127): the filters are the population's own
    filters = model_space_subunits(TruePopulation(params, work_shape=SHAPE), range(4), 127.0, 127.0, SHAPE)
    norm, bounds = 6.0, (-1.0, 1.0)
    best = true_optima(filters, kinds, norm, bounds)
    assert np.all(best.drives > 0) and np.all(np.abs(best.relative_gap) < 0.01)
    assert np.all(best.drives <= best.upper * (1 + 1e-9))
    # Gabors at the cells' centre: 16 sizes x 8 frequencies x 8 orientations (the planted one among them) x 8 phases
    grid = np.array(list(itertools.product(np.geomspace(0.015, 0.12, 16), [2, 4, 6, 9, 11, 12, 13, 16],
                                           0.3 + np.arange(8) * np.pi / 8, np.arange(8) * np.pi / 4)))
    centre = np.full(len(grid), 0.5)
    images = gabor(centre, centre, *grid.T, *SHAPE).reshape(len(grid), -1)
    images = project_to_budget(torch.as_tensor(images)[:, None], norm, bounds)[:, 0].numpy()  # same budget
    ratio = []
    for i, kind in enumerate(kinds):
        drive = drive_from_subunits(kind, images @ filters.w1[i].ravel() + filters.a0[i],
                                    images @ filters.w2[i].ravel() + filters.b0[i])
        assert drive.max() <= best.upper[i]  # no Gabor beats the certificate
        ratio.append(best.drives[i] / drive.max())
    assert ratio[0] > 1.3 and ratio[1] > 1.3  # a DoG spot is far from any Gabor
    assert ratio[2] > 1.05  # the surround carves the optimum out of the centre Gabor
    assert ratio[3] < 1.01  # control: a Gabor cell's optimum is (nearly) on the grid
