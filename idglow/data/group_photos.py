"""Authentic multi-person group photos: a manifest the user points at, or the demo's own.

A group photo record: the photo, the people in it (identities), one single portrait per person
as conditions, and a caption. On the real profile the manifest is a Parquet or CSV file with
columns ``photo_path``, ``condition_paths`` (a list, or ``;``-separated) and ``caption``
(optional ``identities``). The demo draws photos of its own identities with the same faces as
their CelebA-layout portraits, so the people's identities really match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from idglow.data.demo_celebahq import identity_style
from idglow.data.faces import render_group
from idglow.paths import TableRoots
from idglow.prompts import describe_person, picture_list
from idglow.storage import atomic_path, copy_in

GROUP_PHOTO_COLUMNS = ("photo_id", "photo_path", "group_id", "identities", "condition_paths", "caption", "n_subjects")


def render_group_photo(identities: list[int], seed: int, size: int, rng: np.random.Generator) -> Image.Image:
    """People side by side, each drawn with their demo identity's face."""
    image, _ = render_group([identity_style(identity, seed) for identity in identities], size, rng)
    return image


def write_demo_group_photos(
    training_groups: pd.DataFrame,
    catalog: pd.DataFrame,
    source_root: Path,
    out_dir: Path,
    count: int,
    size: int,
    seed: int,
) -> pd.DataFrame:
    """Draw ``count`` group photos of training groups; conditions are the groups' own portraits."""
    attributes = catalog.set_index("hq_idx")
    rng = np.random.default_rng([seed, 5])
    records = []
    pairs, triples = (training_groups[training_groups["n_subjects"] == n] for n in (2, 3))
    chosen = pd.concat([pairs.head(count - count // 2), triples.head(count // 2)])
    for group in chosen.itertuples():
        identities = [int(i) for i in group.identities]
        photo = render_group_photo(identities, seed, size, rng)
        path = out_dir / f"{group.group_id}.png"
        with atomic_path(path) as tmp:
            photo.save(tmp, format="PNG")
        people = [attributes.loc[int(hq)].to_dict() for hq in group.condition_hq_idx]
        caption = (
            f"A group photo of the people from {picture_list(len(identities))}: "
            + "; ".join(describe_person(p) for p in people)
            + "."
        )
        records.append(
            {
                "photo_id": f"photo-{group.group_id}",
                "photo_path": str(path),
                "group_id": group.group_id,
                "identities": identities,
                "condition_paths": [str(source_root / p) for p in group.condition_paths],
                "caption": caption,
                "n_subjects": len(identities),
            }
        )
    return pd.DataFrame(records, columns=list(GROUP_PHOTO_COLUMNS))


def read_group_photo_manifest(path: Path) -> pd.DataFrame:
    """A user's manifest of authentic group photos; relative paths are taken from its folder."""
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = {"photo_path", "condition_paths", "caption"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: group photo manifest lacks columns {sorted(missing)}")
    base = path.parent

    def absolute(p: str) -> str:
        return str(p if Path(p).is_absolute() else base / p)

    conditions = frame["condition_paths"].map(lambda v: v.split(";") if isinstance(v, str) else list(v))
    frame = frame.assign(
        photo_path=frame["photo_path"].map(absolute),
        condition_paths=conditions.map(lambda ps: [absolute(p) for p in ps]),
    )
    frame["n_subjects"] = frame["condition_paths"].map(len)
    frame["photo_id"] = [f"photo-{i:06d}" for i in range(len(frame))]
    frame["group_id"] = frame.get("group_id", pd.Series([None] * len(frame)))
    frame["identities"] = frame.get("identities", pd.Series([[]] * len(frame)))
    return frame[list(GROUP_PHOTO_COLUMNS)]


def copy_outside_files(photos: pd.DataFrame, roots: TableRoots, folder: Path) -> pd.DataFrame:
    """``photos`` with every photo and condition portrait that lies outside both roots copied
    into ``folder`` (under the storage root), so the table can name it relative to a root and
    survives the root moving. Missing files are left as named, for the quarantine."""
    storage, dataset = roots.storage.absolute(), roots.dataset.absolute()

    def inside(path: str) -> str:
        source = Path(path).absolute()
        if source.is_relative_to(storage) or source.is_relative_to(dataset) or not source.is_file():
            return path
        return str(copy_in(source, folder))

    return photos.assign(
        photo_path=photos["photo_path"].map(inside),
        condition_paths=photos["condition_paths"].map(lambda ps: [inside(p) for p in ps]),
    )
