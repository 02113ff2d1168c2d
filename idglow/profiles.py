"""Profiles: one set of settings per way of running the pipeline.

``demo`` (the default) runs everything on a laptop CPU from a generated dataset in the official
CelebA-HQ layout; ``real`` reads the real CelebA-HQ and local weights. Environment variables
override the locations (documented in docs/configuration.md):

- ``IDGLOW_PROFILE``: ``demo`` or ``real``.
- ``IDGLOW_STORAGE_ROOT``: where every artifact is written (default ``./var/storage/<profile>``).
- ``IDGLOW_CELEBAHQ_ROOT``: the CelebA-HQ root (required by ``real``; the demo generates its
  own under the storage root when unset).
- ``IDGLOW_MODELS_DIR``: the models directory (docs/models.md). The demo builds its tiny twins
  there on first use (default ``./var/models/demo``); the real profile reads local weights from
  it (default ``./models``).
- ``IDGLOW_PROFILE_OVERRIDES``: a TOML file of profile fields to change (counts, steps, sizes),
  applied before the variables above; ``configs/rehearsal.toml`` is the rehearsal's.
- ``IDGLOW_CLIP_SHA256``: the SHA-256 a TorchScript CLIP file must have instead of OpenAI's
  release (a file you built or re-exported yourself; TorchScript is no weights-only format).
"""

from __future__ import annotations

import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from idglow.data.demo_celebahq import DemoDatasetSpec


@dataclass(frozen=True)
class Profile:
    """Every setting a stage reads; each field is documented in docs/configuration.md."""

    name: str
    storage_root: Path
    models_dir: Path
    celebahq_root: Path | None
    generate_demo_data: bool
    demo_dataset: DemoDatasetSpec
    image_size: int
    seed: int
    ingest_workers: int
    benchmark_groups_of_two: int
    benchmark_groups_of_three: int
    benchmark_partitions: tuple[str, ...]
    training_partitions: tuple[str, ...]
    training_groups_of_two: int
    training_groups_of_three: int
    min_portraits_per_training_identity: int
    # preference data (docs/configuration.md)
    candidates_per_job: int = 2
    generation_size: int = 64
    generation_steps: int = 4
    true_cfg_scale: float = 1.0
    generation_model_version: str = "base"
    # lossy accelerations of the generator (idglow.acceleration), each off unless set; what each
    # costs in FaceSim and Aesthetic: benchmarks/generation.py --lossy (docs/benchmarks/README.md)
    step_cache_threshold: float | None = None  # diffusers' First Block Cache at this threshold
    fp8_transformer: bool = False  # torchao float8 matmuls (CUDA, compute capability >= 8.9)
    distilled_lora: str | None = None  # a few-step distilled LoRA (local folder or .safetensors)
    distilled_steps: int = 8  # the steps and true-CFG scale it is run with
    distilled_true_cfg_scale: float = 1.0
    dynamic_prompts: bool = True
    prompt_model_version: str = "base"  # or the folder of an aligned prompt model (prompt_model_alignment)
    prompt_token_budget: int = 512
    demo_group_photos: int = 6
    group_photos_manifest: Path | None = None
    sft_min_identity: float = 0.3
    sft_min_aesthetic: float = float("-inf")
    shard_max_bytes: int = 512 * 1024 * 1024
    review_mode: str = "auto"
    review_overlap: int = 1  # reviews per item; the final decision needs that many, unanimous
    acceptance_rate_min: float = 0.05  # a batch whose acceptance rate falls outside [min, max] does not train
    acceptance_rate_max: float = 1.0
    # training (docs/training.md)
    sft_steps: int = 4
    dpo_steps: int = 3
    lora_rank: int = 4
    prompt_dpo_steps: int = 8
    retrain_min_new_pairs: int = 10  # newly accepted pairs that trigger a retraining run (sensor)
    training_gpus: int = 0  # GPUs per training run: 0 = one process on whatever device; > 1 = torchrun
    # The generator's pixel budgets per reference portrait: for the VAE (what diffusers calls
    # VAE_IMAGE_SIZE) and for the text encoder's vision input (CONDITION_IMAGE_SIZE). Training
    # and inference both encode references with these (idglow.editing.ReferenceBudget), or the
    # LoRA would learn from inputs it never sees again.
    reference_pixels: int = 64 * 64
    condition_pixels: int = 56 * 56
    # pixels of each portrait the prompt model sees, when it writes prompts and in its alignment
    # (prompt_model_alignment) alike; the demo's tiny VLM takes 56^2, the real one the portrait whole
    prompt_portrait_pixels: int = 56 * 56
    prompt_max_new_tokens: int = 160  # the longest dynamic prompt the prompt model may write
    # the VLM check of stage 1 (idglow.people_check): the prompt model is asked how many people each
    # chosen image shows; applied where its answers read as counts. The image's pixels for it.
    people_check: bool = True
    people_check_pixels: int = 112 * 112
    checkpoint_every_steps: int = 250  # SFT / DPO checkpoint cadence (and always at the last step)
    checkpoint_every_minutes: float | None = 30.0  # also checkpoint after this long since the last one
    gradient_checkpoint_blocks: int | str = (
        0  # SFT / DPO blocks recomputed in backward; "auto": planned for the GPU's memory
    )
    # the SHA-256 a TorchScript CLIP (clip/ViT-L-14.pt) must have; unset: OpenAI's release. Set it
    # (IDGLOW_CLIP_SHA256) only for a file you made or re-exported yourself, such as the rehearsal's.
    clip_sha256: str | None = None

    @property
    def benchmark_identities(self) -> int:
        return 2 * self.benchmark_groups_of_two + 3 * self.benchmark_groups_of_three

    @property
    def celebahq_source(self) -> Path:
        """The CelebA-HQ root this profile reads."""
        if self.celebahq_root is not None:
            return self.celebahq_root
        if self.generate_demo_data:
            return self.storage_root / "sources" / "celebahq_demo"
        raise ProfileError(
            f"profile {self.name!r} needs IDGLOW_CELEBAHQ_ROOT: the folder holding CelebA-HQ-img/ and the "
            "annotation files (see docs/data.md); nothing is ever downloaded"
        )


class ProfileError(ValueError):
    """A profile is unknown or misses a setting it needs."""


def _demo(storage_root: Path) -> Profile:
    spec = DemoDatasetSpec()
    return Profile(
        name="demo",
        storage_root=storage_root,
        models_dir=Path.cwd() / "var" / "models" / "demo",
        celebahq_root=None,
        generate_demo_data=True,
        demo_dataset=spec,
        image_size=spec.size,
        seed=0,
        ingest_workers=1,
        benchmark_groups_of_two=2,
        benchmark_groups_of_three=2,
        benchmark_partitions=("test",),
        training_partitions=("train", "val"),
        training_groups_of_two=8,
        training_groups_of_three=6,
        min_portraits_per_training_identity=2,
    )


def _real(storage_root: Path) -> Profile:
    return Profile(
        name="real",
        storage_root=storage_root,
        models_dir=Path.cwd() / "models",
        celebahq_root=None,
        generate_demo_data=False,
        demo_dataset=DemoDatasetSpec(),
        image_size=1024,
        seed=0,
        ingest_workers=min(os.cpu_count() or 1, 8),
        benchmark_groups_of_two=50,
        benchmark_groups_of_three=50,
        benchmark_partitions=("test",),
        training_partitions=("train", "val"),
        training_groups_of_two=3000,
        training_groups_of_three=3000,
        min_portraits_per_training_identity=2,
        candidates_per_job=4,
        generation_size=1024,
        generation_steps=40,
        true_cfg_scale=4.0,
        demo_group_photos=0,
        sft_min_aesthetic=5.0,
        review_mode="human",
        acceptance_rate_min=0.2,
        acceptance_rate_max=0.95,
        sft_steps=2000,
        dpo_steps=1000,
        prompt_dpo_steps=500,
        retrain_min_new_pairs=2000,
        lora_rank=32,
        training_gpus=1,
        reference_pixels=1024 * 1024,  # diffusers QwenImageEditPlus: VAE_IMAGE_SIZE, CONDITION_IMAGE_SIZE (tested)
        condition_pixels=384 * 384,
        prompt_portrait_pixels=1024 * 1024,
        people_check_pixels=448 * 448,
        gradient_checkpoint_blocks="auto",
    )


PROFILES = {"demo": _demo, "real": _real}


# The profile fields an environment variable sets (docs/configuration.md): ``load_profile`` reads
# them for the command line and the training processes, and the Dagster resources read the same
# variables through ``dg.EnvVar`` (assets/resources.py), so each has this one table.
ENVIRONMENT_FIELDS = {
    "storage_root": "IDGLOW_STORAGE_ROOT",
    "models_dir": "IDGLOW_MODELS_DIR",
    "celebahq_root": "IDGLOW_CELEBAHQ_ROOT",
    "group_photos_manifest": "IDGLOW_GROUP_PHOTOS_MANIFEST",
    "clip_sha256": "IDGLOW_CLIP_SHA256",
    "training_gpus": "IDGLOW_TRAINING_GPUS",
}


def field_from_text(name: str, text: str):
    """Field ``name``'s value written as text (an environment variable, a resource's string):
    a location becomes an absolute path, a hash lower case, a count an int."""
    hint = typing.get_type_hints(Profile)[name]
    accepted = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if Path in accepted:
        return Path(text).absolute()
    if name == "clip_sha256":
        return text.strip().lower()
    if int in accepted:
        return int(text)
    return text


def defaults(name: str, storage_root: Path) -> Profile:
    """Profile ``name``'s plain defaults, with nothing from the environment."""
    if name not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name](storage_root)


def load_profile(name: str | None = None, env: Mapping[str, str] | None = None) -> Profile:
    """The named profile (or ``IDGLOW_PROFILE``, default ``demo``) with the overrides file and the
    environment variables of ``ENVIRONMENT_FIELDS`` applied."""
    env = os.environ if env is None else env
    name = name or env.get("IDGLOW_PROFILE", "demo")
    storage_root = Path(env.get("IDGLOW_STORAGE_ROOT") or Path.cwd() / "var" / "storage" / name).absolute()
    profile = defaults(name, storage_root)
    if env.get("IDGLOW_PROFILE_OVERRIDES"):
        profile = apply_overrides(profile, Path(env["IDGLOW_PROFILE_OVERRIDES"]))
    from_environment = {
        field: field_from_text(field, env[variable])
        for field, variable in ENVIRONMENT_FIELDS.items()
        if field != "storage_root" and env.get(variable)
    }
    return replace(profile, **from_environment)


# Fields an overrides file may not set: the profile's identity and its locations, which the
# environment variables above own (one source each), and the demo's dataset recipe.
_NOT_OVERRIDABLE = frozenset(
    {"name", "storage_root", "models_dir", "celebahq_root", "group_photos_manifest", "demo_dataset", "clip_sha256"}
)


def _coerce(name: str, hint, value):
    """``value`` as field ``name``'s type, or a ProfileError saying what was expected."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    accepted = typing.get_args(hint) if union else (hint,)
    if value == "-inf" and float in accepted:
        return -math.inf
    for kind in accepted:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
        if typing.get_origin(kind) is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    raise ProfileError(f"profile override {name} = {value!r}: expected {hint}")


def apply_overrides(profile: Profile, path: Path) -> Profile:
    """``profile`` with the fields a TOML file sets (``key = value`` at top level); an unknown
    or location field is an error naming it, never ignored."""
    try:
        values = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ProfileError(f"IDGLOW_PROFILE_OVERRIDES names {path}, which does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"{path} is not valid TOML: {error}") from None
    hints = typing.get_type_hints(Profile)
    known = {f.name for f in fields(Profile)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ProfileError(f"{path}: unknown profile fields {unknown} (see docs/configuration.md)")
    locations = sorted(set(values) & _NOT_OVERRIDABLE)
    if locations:
        raise ProfileError(f"{path}: {locations} cannot be set by an overrides file (the environment sets locations)")
    return replace(profile, **{name: _coerce(name, hints[name], value) for name, value in values.items()})
