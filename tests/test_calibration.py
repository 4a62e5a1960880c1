"""Calibration: expected calibration error and temperature scaling (Guo et al. 2017)."""

import math

import pytest
import torch

from wiseft.core import expected_calibration_error, fit_temperature


def _two_class(confidences, predicted=0):
    """Logits whose softmax gives class ``predicted`` each confidence."""
    return torch.tensor([[math.log(c / (1 - c)), 0.0][::1 if predicted == 0 else -1] for c in confidences])


def test_ece_by_hand():
    logits = _two_class([0.9, 0.9, 0.6, 0.6])
    labels = torch.tensor([0, 1, 0, 0])
    # bin of 0.9: accuracy 0.5, confidence 0.9 -> 2 * 0.4; bin of 0.6: accuracy 1, confidence 0.6 -> 2 * 0.4
    assert expected_calibration_error(logits, labels).value == pytest.approx(1.6 / 4)
    assert expected_calibration_error(logits[:0], labels[:0]).value == 0.0


def test_temperature_is_recovered_and_calibrates():
    g = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(20000, 5, generator=g)
    labels = torch.multinomial((z / 2.5).softmax(dim=1), 1, generator=g).squeeze(1)  # true temperature 2.5
    t = fit_temperature(z, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    raw, scaled = expected_calibration_error(z, labels), expected_calibration_error(z, labels, t)
    assert scaled.value < 0.02 < raw.value
