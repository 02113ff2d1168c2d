"""Perturbations: deterministic from their parameters, and they change what they claim to."""

import numpy as np
import pytest
from PIL import Image

from idglow.perturb import KINDS, Perturbation, apply, sample_perturbation


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize(
    "perturbation",
    [
        Perturbation("gaussian_noise", 20.0, 7),
        Perturbation("saturation", 0.4),
        Perturbation("jpeg", 10),
        Perturbation("blur", 2.0),
    ],
)
def test_same_parameters_same_pixels(image, perturbation):
    first, again = np.asarray(apply(image, perturbation)), np.asarray(apply(image, perturbation))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, np.asarray(image))


def test_noise_depends_on_seed_and_has_its_sigma(image):
    flat = Image.new("RGB", (64, 64), (128, 128, 128))
    a = np.asarray(apply(flat, Perturbation("gaussian_noise", 10.0, 1)), dtype=float)
    b = np.asarray(apply(flat, Perturbation("gaussian_noise", 10.0, 2)), dtype=float)
    assert not np.array_equal(a, b)
    assert np.std(a - 128) == pytest.approx(10.0, rel=0.05)


def test_saturation_zero_is_grey(image):
    grey = np.asarray(apply(image, Perturbation("saturation", 0.0)), dtype=int)
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1


def test_unknown_kind_is_an_error(image):
    with pytest.raises(ValueError, match="unknown perturbation"):
        apply(image, Perturbation("swirl", 1.0))


def test_sampling_is_seeded():
    draws = [sample_perturbation(np.random.default_rng(3), seed=5) for _ in range(2)]
    assert draws[0] == draws[1] and draws[0].kind in KINDS
