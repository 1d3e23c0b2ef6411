"""Image similarity with and without phase: quadrature partners, spans, seed consistency of MEIs."""

import numpy as np
import pytest

from meiscope.insilico.similarity import (image_correlation, phase_aware_consistency, phase_invariant_correlation,
                                          quadrature_partner, seed_consistency, span_correlation)


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
    reference = gabor(phase=0.3)
    assert phase_invariant_correlation(gabor(phase=0.3 + phase), reference) > 0.97
    assert phase_invariant_correlation(gabor(theta=0.6 + np.pi / 2, phase=0.3 + phase), reference) < 0.5


def test_span_correlation_is_the_best_correlation_within_the_span():
    g1, g2 = gabor(phase=0.0), gabor(phase=np.pi / 2)
    for phi in np.linspace(0, 2 * np.pi, 7):
        assert span_correlation(np.cos(phi) * g1 + np.sin(phi) * g2, np.stack([g1, g2])) == pytest.approx(1, abs=1e-9)
    other = gabor(theta=2.0)
    brute = max(abs(image_correlation(other, np.cos(p) * g1 + np.sin(p) * g2)) for p in np.linspace(0, np.pi, 2001))
    assert span_correlation(other, np.stack([g1, g2])) == pytest.approx(brute, abs=1e-4)
    # a degenerate basis (the same image twice) is the span of one image
    assert span_correlation(-g1, np.stack([g1, g1])) == pytest.approx(1.0)


def test_phase_aware_consistency_forgives_phase_and_nothing_else():
    starts = np.stack([
        [gabor(phase=0.2), gabor(phase=0.2 + np.pi)],          # same pattern, opposite phase
        [gabor(phase=0.2), gabor(phase=0.2 + np.pi / 2)],      # quadrature phase
        [gabor(theta=0.1), gabor(theta=0.1 + np.pi / 2)],      # another orientation
        [gabor(x=12.0), gabor(x=34.0)],                        # another place
    ])
    signed = seed_consistency(starts)
    aware = phase_aware_consistency(starts)
    assert signed[0] < -0.95 and aware[0] > 0.95
    assert abs(signed[1]) < 0.2 and aware[1] > 0.95
    assert aware[2] < 0.4 and aware[3] < 0.4
    assert np.isnan(phase_aware_consistency(starts[:, :1])).all()
