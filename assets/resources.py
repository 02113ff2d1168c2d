"""The settings resource every asset reads: the active profile plus the knobs people change.

Each field shows in the Dagster UI's resource view and can be overridden in a run's config;
``pipelines/resources.py`` fills the defaults from the profile.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg

from idglow.models.hub import ModelHub
from idglow.paths import ArtifactPaths, TableRoots
from idglow.profiles import Profile, load_profile

_PATH_FIELDS = ("storage_root", "celebahq_root", "group_photos_manifest")
_VALUE_FIELDS = (
    "seed",
    "image_size",
    "ingest_workers",
    "benchmark_groups_of_two",
    "benchmark_groups_of_three",
    "training_groups_of_two",
    "training_groups_of_three",
    "candidates_per_job",
    "generation_model_version",
    "prompt_model_version",
    "review_mode",
    "review_overlap",
    "acceptance_rate_min",
    "acceptance_rate_max",
)


class IdglowSettings(dg.ConfigurableResource):
    """The active profile and its overridable settings (see docs/configuration.md)."""

    profile: str = "demo"
    storage_root: str
    celebahq_root: str | None = None
    group_photos_manifest: str | None = None
    seed: int = 0
    image_size: int = 1024
    ingest_workers: int = 1
    benchmark_groups_of_two: int = 50
    benchmark_groups_of_three: int = 50
    training_groups_of_two: int = 3000
    training_groups_of_three: int = 3000
    candidates_per_job: int = 4
    generation_model_version: str = "base"
    prompt_model_version: str = "base"
    review_mode: str = "human"
    review_overlap: int = 1
    acceptance_rate_min: float = 0.2
    acceptance_rate_max: float = 0.95

    @classmethod
    def from_profile(cls, profile: Profile) -> IdglowSettings:
        paths = {name: str(getattr(profile, name)) if getattr(profile, name) else None for name in _PATH_FIELDS}
        return cls(profile=profile.name, **paths, **{name: getattr(profile, name) for name in _VALUE_FIELDS})

    def resolved(self) -> Profile:
        """The profile (with its environment) and this resource's values applied on top."""
        paths = {name: Path(getattr(self, name)) if getattr(self, name) else None for name in _PATH_FIELDS}
        return replace(load_profile(self.profile), **paths, **{name: getattr(self, name) for name in _VALUE_FIELDS})

    @property
    def paths(self) -> ArtifactPaths:
        return ArtifactPaths(Path(self.storage_root))

    @property
    def roots(self) -> TableRoots:
        """What the paths in tables are stored relative to, and resolved against, in this run."""
        return TableRoots(Path(self.storage_root).absolute(), self.resolved().celebahq_source.absolute())


class ModelHubResource(dg.ConfigurableResource):
    """Every model component for the active profile, loaded once per process (docs/models.md)."""

    profile: str = "demo"
    models_dir: str
    device: str | None = None  # "cuda", "cpu", or unset for CUDA when available
    seed: int = 0
    clip_sha256: str | None = None  # a TorchScript CLIP's expected hash; unset: OpenAI's release

    @classmethod
    def from_profile(cls, profile: Profile) -> ModelHubResource:
        return cls(
            profile=profile.name, models_dir=str(profile.models_dir), seed=profile.seed, clip_sha256=profile.clip_sha256
        )

    def hub(self) -> ModelHub:
        return ModelHub(
            self.profile, Path(self.models_dir), device=self.device, seed=self.seed, clip_sha256=self.clip_sha256
        )
