"""The data a rehearsal of the real profile reads: a small CelebA-HQ tree at the real 1024² and a
manifest of authentic group photos, as a user would point the real profile at them.

The CelebA-HQ tree is the demo's generator (``idglow.data.demo_celebahq``, the official layout
with its broken records) at the real image size. The group photos are drawings of the tree's own
people, written with a CSV manifest in the format docs/preference_data.md describes; each
person's condition portrait is their first image in the tree.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from idglow.data import celebahq as layout
from idglow.data.demo_celebahq import TRUTH_FILE, DemoDatasetSpec, write_demo_celebahq
from idglow.data.group_photos import render_group_photo
from idglow.storage import atomic_dir, write_text_atomic

MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class RehearsalSources:
    celebahq_root: Path
    group_photos_manifest: Path


def write_rehearsal_sources(
    folder: Path,
    identities: int = 24,
    images_per_identity: int = 3,
    size: int = 1024,
    group_photos: int = 2,
    seed: int = 0,
) -> RehearsalSources:
    """Write (or reuse) ``folder/celebahq`` and ``folder/group_photos/manifest.csv``."""
    folder = Path(folder)
    spec = DemoDatasetSpec(identities=identities, images_per_identity=images_per_identity, size=size, seed=seed)
    dataset = write_demo_celebahq(folder / "celebahq", spec)
    photos_dir = folder / "group_photos"
    manifest = photos_dir / MANIFEST_NAME
    if not manifest.is_file():
        _write_group_photos(dataset.root, photos_dir, group_photos, size, seed)
    return RehearsalSources(dataset.root, manifest)


def _write_group_photos(celebahq_root: Path, photos_dir: Path, count: int, size: int, seed: int) -> None:
    """``count`` photos of two, then three, people; the manifest is written last, so a folder
    without it is incomplete and is redrawn."""
    truth = pd.read_parquet(celebahq_root / TRUTH_FILE)
    first_image = truth.groupby("identity")["hq_idx"].min().sort_index()
    people = list(first_image.index)
    rng = np.random.default_rng([seed, 7])
    rows = []
    with atomic_dir(photos_dir / "images") as images:
        for number in range(count):
            identities = [int(i) for i in rng.choice(people, size=2 + number % 2, replace=False)]
            name = f"group-{number:03d}.png"
            render_group_photo(identities, seed, size, rng).save(images / name, format="PNG")
            portraits = [str(celebahq_root / layout.IMAGE_DIR / f"{int(first_image[i])}.jpg") for i in identities]
            rows.append(
                {
                    "photo_path": f"images/{name}",
                    "condition_paths": ";".join(portraits),
                    "caption": f"A group photo of {len(identities)} people standing side by side.",
                }
            )
    write_text_atomic(photos_dir / MANIFEST_NAME, _csv_text(rows))


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["photo_path", "condition_paths", "caption"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
