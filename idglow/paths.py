"""Where each stage's artifacts live under the storage root.

One place for these names, so the assets, the command line and the tests agree. Each asset owns
one folder named after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from idglow.storage import relative_to_root, resolve_under

# Table columns that name files (a string, or a list of strings for condition_paths).
PATH_COLUMNS = ("path", "photo_path", "chosen_path", "rejected_path", "target_path", "condition_paths", "image")
# A dataset file outside the storage root (the real profile's CelebA-HQ portraits) is stored
# relative to the dataset root behind this prefix, so the two roots can move independently.
DATASET_PREFIX = "celebahq:"


@dataclass(frozen=True)
class ArtifactPaths:
    root: Path

    def asset_dir(self, asset_name: str) -> Path:
        return self.root / asset_name

    @property
    def catalog(self) -> Path:
        return self.asset_dir("celebahq_images") / "catalog.parquet"

    @property
    def quarantine(self) -> Path:
        return self.asset_dir("celebahq_images") / "quarantine.parquet"

    @property
    def identity_splits(self) -> Path:
        return self.asset_dir("identity_splits") / "splits.parquet"

    @property
    def benchmark_groups(self) -> Path:
        return self.asset_dir("benchmark_groups") / "groups.parquet"

    @property
    def training_groups(self) -> Path:
        return self.asset_dir("training_groups") / "groups.parquet"

    def table(self, asset_name: str) -> Path:
        """The main Parquet table of an asset."""
        return self.asset_dir(asset_name) / f"{asset_name}.parquet"


@dataclass(frozen=True)
class TableRoots:
    """The roots every path stored in a table is relative to: the storage root, and the CelebA-HQ
    root for portraits that lie outside it. Writers store with ``store``, readers resolve with
    ``resolve`` against the roots of the current run, so moving a root breaks nothing."""

    storage: Path
    dataset: Path

    def store(self, path: str | Path) -> str:
        path = Path(path).absolute()
        if not path.is_relative_to(self.storage.absolute()) and path.is_relative_to(self.dataset.absolute()):
            return DATASET_PREFIX + relative_to_root(path, self.dataset)
        return relative_to_root(path, self.storage)

    def resolve(self, stored: str) -> Path:
        if stored.startswith(DATASET_PREFIX):
            return resolve_under(self.dataset, stored.removeprefix(DATASET_PREFIX))
        return resolve_under(self.storage, stored)

    def store_frame(self, frame: pd.DataFrame, columns: Iterable[str] = PATH_COLUMNS) -> pd.DataFrame:
        """``frame`` with its path columns in stored form."""
        return _map_paths(frame, columns, self.store)

    def resolve_frame(self, frame: pd.DataFrame, columns: Iterable[str] = PATH_COLUMNS) -> pd.DataFrame:
        """``frame`` with its stored path columns resolved to files under the current roots."""
        return _map_paths(frame, columns, lambda stored: str(self.resolve(stored)))


def _map_paths(frame: pd.DataFrame, columns: Iterable[str], convert) -> pd.DataFrame:
    def one(value):
        if isinstance(value, str):
            return convert(value) if value else value  # an empty string names no file
        if value is None or isinstance(value, float):  # a missing value (None / NaN)
            return value
        return [convert(v) for v in value]

    present = [c for c in columns if c in frame.columns]
    return frame.assign(**{c: frame[c].map(one) for c in present}) if present else frame
