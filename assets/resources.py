"""The settings resource every asset reads: the active profile plus the knobs people change.

Each field shows in the Dagster UI's resource view and can be overridden in a run's config;
``pipelines/resources.py`` fills the defaults from the profile.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg

from idglow.models.hub import ModelHub
from idglow.paths import ArtifactPaths
from idglow.profiles import Profile, load_profile


class IdglowSettings(dg.ConfigurableResource):
    """The active profile and its overridable settings (see docs/configuration.md)."""

    profile: str = "demo"
    storage_root: str
    celebahq_root: str | None = None
    seed: int = 0
    image_size: int = 1024
    ingest_workers: int = 1
    benchmark_groups_of_two: int = 50
    benchmark_groups_of_three: int = 50
    training_groups_of_two: int = 3000
    training_groups_of_three: int = 3000
    candidates_per_job: int = 4
    generation_model_version: str = "base"
    review_mode: str = "human"

    @classmethod
    def from_profile(cls, profile: Profile) -> IdglowSettings:
        return cls(
            profile=profile.name,
            storage_root=str(profile.storage_root),
            celebahq_root=str(profile.celebahq_root) if profile.celebahq_root else None,
            seed=profile.seed,
            image_size=profile.image_size,
            ingest_workers=profile.ingest_workers,
            benchmark_groups_of_two=profile.benchmark_groups_of_two,
            benchmark_groups_of_three=profile.benchmark_groups_of_three,
            training_groups_of_two=profile.training_groups_of_two,
            training_groups_of_three=profile.training_groups_of_three,
            candidates_per_job=profile.candidates_per_job,
            generation_model_version=profile.generation_model_version,
            review_mode=profile.review_mode,
        )

    def resolved(self) -> Profile:
        """The profile with this resource's values applied on top of its defaults."""
        base = load_profile(self.profile, env={})
        return replace(
            base,
            storage_root=Path(self.storage_root),
            celebahq_root=Path(self.celebahq_root) if self.celebahq_root else None,
            seed=self.seed,
            image_size=self.image_size,
            ingest_workers=self.ingest_workers,
            benchmark_groups_of_two=self.benchmark_groups_of_two,
            benchmark_groups_of_three=self.benchmark_groups_of_three,
            training_groups_of_two=self.training_groups_of_two,
            training_groups_of_three=self.training_groups_of_three,
            candidates_per_job=self.candidates_per_job,
            generation_model_version=self.generation_model_version,
            review_mode=self.review_mode,
        )

    @property
    def paths(self) -> ArtifactPaths:
        return ArtifactPaths(Path(self.storage_root))


class ModelHubResource(dg.ConfigurableResource):
    """Every model component for the active profile, loaded once per process (docs/models.md)."""

    profile: str = "demo"
    models_dir: str
    device: str | None = None  # "cuda", "cpu", or unset for CUDA when available
    seed: int = 0

    @classmethod
    def from_profile(cls, profile: Profile) -> ModelHubResource:
        return cls(profile=profile.name, models_dir=str(profile.models_dir), seed=profile.seed)

    def hub(self) -> ModelHub:
        return ModelHub(self.profile, Path(self.models_dir), device=self.device, seed=self.seed)
