"""Where each stage's artifacts live under the storage root.

One place for these names, so the assets, the command line and the tests agree. Each asset owns
one folder named after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
