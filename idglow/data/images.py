"""Reading a catalogued CelebA-HQ portrait as the pixels every later stage expects.

The ingest catalogues JPEGs whose source mode is RGB, L (grayscale) or CMYK (the catalog's
``mode`` column) and quarantines those whose EXIF orientation asks for a rotation or a mirror
(see docs/data.md). Whatever reads a portrait's pixels, and whatever writes them into a shard,
goes through :func:`load_rgb`, so a grayscale or CMYK source reaches the model as RGB.
"""

from __future__ import annotations

import os

from PIL import Image, ImageOps


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """The image at ``path`` decoded, upright and in RGB.

    ``exif_transpose`` is a no-op for a catalogued image (the ingest refuses orientations 2-8);
    it is applied anyway so an image from outside the catalog is not read sideways.
    """
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)
        # convert() always returns a new image, so nothing refers to the closed file.
        return upright.convert("RGB")


def is_rgb_source(path: str | os.PathLike[str]) -> bool:
    """Whether the file's own pixels are RGB (from the header alone, nothing decoded).

    A writer that copies a file's bytes unchanged into a shard may do so only when this holds;
    otherwise it encodes :func:`load_rgb`'s pixels.
    """
    with Image.open(path) as image:
        return image.mode == "RGB"
