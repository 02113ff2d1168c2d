"""Controlled degradations of a real or good generated image (section 3.4.3).

Each returns the degraded image and the parameters that reproduce it; the same image, kind,
strength and seed always give the same pixels.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

KINDS = ("gaussian_noise", "saturation", "jpeg", "blur")


@dataclass(frozen=True)
class Perturbation:
    kind: str
    strength: float  # sigma in pixel units, saturation factor, JPEG quality, or blur radius in pixels
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def gaussian_noise(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    """Add N(0, sigma^2) noise per pixel and channel, sigma in 0-255 pixel units."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=pixels.shape)
    return Image.fromarray(np.clip(np.round(pixels + noise), 0, 255).astype(np.uint8), "RGB")


def saturation(image: Image.Image, factor: float) -> Image.Image:
    """Scale colour saturation: 0 is grey, 1 unchanged, above 1 oversaturated."""
    return ImageEnhance.Color(image.convert("RGB")).enhance(factor)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """Re-compress as JPEG at ``quality`` (1-95) and decode again."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def blur(image: Image.Image, radius: float) -> Image.Image:
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))


def apply(image: Image.Image, perturbation: Perturbation) -> Image.Image:
    if perturbation.kind == "gaussian_noise":
        return gaussian_noise(image, perturbation.strength, perturbation.seed)
    if perturbation.kind == "saturation":
        return saturation(image, perturbation.strength)
    if perturbation.kind == "jpeg":
        return jpeg(image, int(perturbation.strength))
    if perturbation.kind == "blur":
        return blur(image, perturbation.strength)
    raise ValueError(f"unknown perturbation {perturbation.kind!r}; expected one of {KINDS}")


def sample_perturbation(rng: np.random.Generator, seed: int) -> Perturbation:
    """A clearly visible degradation (choice): noise sigma 12-30, saturation 0.3-0.6 or 1.6-2.2,
    JPEG quality 8-20, blur radius 1.5-3 px."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    if kind == "gaussian_noise":
        strength = float(rng.uniform(12, 30))
    elif kind == "saturation":
        strength = float(rng.uniform(0.3, 0.6) if rng.random() < 0.5 else rng.uniform(1.6, 2.2))
    elif kind == "jpeg":
        strength = float(rng.integers(8, 21))
    else:
        strength = float(rng.uniform(1.5, 3.0))
    return Perturbation(kind, round(strength, 3), seed)
