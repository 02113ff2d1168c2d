"""SFT then DPO on the preference shards, launched as their own processes through Dagster Pipes
(``python -m training.sft`` / ``training.dpo``, or torchrun when the profile has more than one
GPU per run). Global rank 0 reports the checkpoint URI, its metrics and a data version equal to
the checkpoint's SHA-256.

Each asset takes its training settings as Dagster run config (``SFTRunConfig``, ``DPORunConfig``,
``PromptDPORunConfig``, built per profile so the launchpad shows the profile's defaults). A run's
folder is keyed by the hash of its config (less where it runs and how much it recomputes) and its
inputs, so a rerun with the same settings on the same data resumes or returns the finished
checkpoint, and any other change trains anew; the loops refuse to resume a checkpoint whose saved
config differs (training.checkpoints.check_resumable). The benchmark's ``sft_ablation`` launches its runs
the same way (``generator_config`` and ``launch``).

A run's config names the files under the storage root relative to it, and the launched process
works in the root (``--root``), so the config, its key and the checkpoints' manifests do not
depend on where the root is mounted: a root copied or mounted elsewhere returns its finished runs
instead of training them again. The model folders lie outside the storage root; a config names
them by path (the process loads from there) and carries their content fingerprints
(``model_fingerprints``), which stand for the paths in the run key and the resume check.

Both assets run in the ``gpu`` pool (dagster.yaml limits it) and carry ``dagster-k8s/config``
tags that request the run's GPUs when a cluster launches them (docs/deployment.md)."""

import dataclasses
import hashlib
import json
import math
import os
import sys
import typing
from dataclasses import asdict
from pathlib import Path

import dagster as dg
import pydantic

from assets.metadata import checkpoint_of, checkpoint_path_metadata
from assets.resources import IdglowSettings, ModelHubResource
from idglow import environment
from idglow.models.registry import FACE_PACK, GENERATOR, PROMPT_MODEL, component_fingerprint
from idglow.paths import ArtifactPaths
from idglow.profiles import Profile, ProfileError, load_profile
from idglow.shards import manifest_hash
from idglow.storage import relative_to_root, sha256_file, write_json_atomic
from training import dpo as dpo_module
from training import prompt_dpo as prompt_dpo_module
from training import sft as sft_module
from training.dpo import DPOConfig
from training.prompt_dpo import PromptDPOConfig
from training.sft import SFTConfig

GROUP = "training"

# SFT / DPO fields a run's config cannot set. The asset fills the paths and leaves the device
# to the launched process; the seed is the settings resource's; the target resolution and the
# reference budgets are the profile's, because inference encodes with the same ones.
GENERATOR_FILLED = (
    "generator_dir",
    "shards",
    "output_dir",
    "face_pack_dir",
    "model_fingerprints",
    "sft_checkpoint",
    "device",
    "seed",
    "resolution",
    "reference_resolution",
    "condition_pixels",
)
PROMPT_DPO_FILLED = (
    "model_dir",
    "model_fingerprints",
    "preferences",
    "catalog",
    "source_root",
    "output_dir",
    "device",
    "seed",
    "portrait_pixels",
)
# The model folders each generator run names (config field: the registry's role).
SFT_MODELS = {"generator_dir": GENERATOR, "face_pack_dir": FACE_PACK}
DPO_MODELS = {"generator_dir": GENERATOR}


def reference_side(pixels: int) -> int:
    """The side of the square reference portrait with ``pixels`` pixels; it must make whole
    2x2-packed latent tokens (VAE factor 8, packing 2)."""
    side = math.isqrt(pixels)
    if side * side != pixels or side % 16:
        raise ProfileError(f"reference_pixels {pixels} is not the square of a multiple of 16")
    return side


def profile_filled(profile: Profile) -> dict:
    """The SFT / DPO settings that come from the profile and the settings resource, not from run config."""
    return {
        "seed": profile.seed,
        "resolution": profile.generation_size,
        "reference_resolution": reference_side(profile.reference_pixels),
        "condition_pixels": profile.condition_pixels,
    }


def training_config(config_type: type, profile: Profile, run: dict, **paths):
    """The config a run trains with: its run config's values (the profile's defaults for those it
    leaves out), the profile's fixed settings, and the asset's paths; ``output_dir`` stays empty
    until ``in_run_dir`` names the run's folder."""
    return config_type(
        **{"output_dir": "", **profile_defaults(profile, config_type), **run, **paths, **profile_filled(profile)}
    )


def profile_defaults(profile: Profile, config_type: type) -> dict:
    """The run-config defaults a profile sets; every other field keeps its config class's default."""
    if issubclass(config_type, PromptDPOConfig):
        return {"steps": profile.prompt_dpo_steps}
    steps = profile.dpo_steps if issubclass(config_type, DPOConfig) else profile.sft_steps
    return {
        "steps": steps,
        "lora_rank": profile.lora_rank,
        "checkpoint_every": profile.checkpoint_every_steps,
        "checkpoint_every_minutes": profile.checkpoint_every_minutes,
        "gradient_checkpoint_blocks": profile.gradient_checkpoint_blocks,
    }


def _config_type(hint, default):
    """The Dagster config type of a field, and its default: Dagster config has no unions but
    Optional, so a count-or-"auto" field is text there (the config class parses it back)."""
    if hint == int | str:
        return str, str(default)
    return hint, default


def run_config_class(
    name: str, config_type: type, profile: Profile, left_out: tuple[str, ...], help_text: dict[str, str]
) -> type[dg.Config]:
    """A Dagster run config with ``config_type``'s fields less ``left_out``, its defaults the
    profile's (so the launchpad shows what a run with no config would train with)."""
    hints = typing.get_type_hints(config_type)
    defaults = profile_defaults(profile, config_type)
    fields = {}
    for spec in dataclasses.fields(config_type):
        if spec.name in left_out:
            continue
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        hint, default = _config_type(hints[spec.name], defaults.get(spec.name, default))
        fields[spec.name] = (hint, pydantic.Field(default=default, description=help_text.get(spec.name)))
    return pydantic.create_model(
        name,
        __base__=dg.Config,
        __doc__=f"{config_type.__name__}'s settings a run may change "
        f"(profile {profile.name!r} defaults; docs/training.md).",
        **fields,
    )


def run_key(config, inputs_sha256: str, gpus: int) -> str:
    """The hash a run's folder is named by: the whole config but what may differ when a run is
    resumed (where it is written, its device and recomputation, and the paths of the model folders
    whose fingerprints it carries: training.sft.location_fields), its inputs' hash, and the GPU
    count (more ranks, a larger effective batch: another run)."""
    values = asdict(config)
    where = sft_module.location_fields(values)
    settings = {name: value for name, value in values.items() if name not in where}
    payload = json.dumps({"config": settings, "inputs": inputs_sha256, "gpus": gpus}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def in_run_dir(config, root: Path, inputs_sha256: str, gpus: int):
    """``config`` with ``output_dir`` set to its own folder under ``root`` (the assets pass their
    folder relative to the storage root): a rerun with the same config on the same inputs resumes
    or returns its checkpoint, any other change trains anew."""
    folder = Path(root) / f"{inputs_sha256[:12]}-{run_key(config, inputs_sha256, gpus)}"
    return dataclasses.replace(config, output_dir=folder.as_posix())


def stored_path(path: str | Path, root: Path) -> str:
    """``path`` as a run's config names it: relative to the storage ``root`` when it lies under it
    (the launched process works in the root, so it finds it wherever the root is mounted), else
    absolute (a CelebA-HQ root elsewhere)."""
    path = Path(os.path.abspath(path))
    return relative_to_root(path, root) if path.is_relative_to(os.path.abspath(root)) else str(path)


def model_fields(hub, models: dict[str, str]) -> dict:
    """The config fields naming model folders (``models``: field -> registry role), each the
    folder's path, and ``model_fingerprints`` with each folder's content fingerprint. The models
    directory is not under the storage root and may be mounted elsewhere too: the run key and the
    resume check compare what the folder holds, not where it is (training.sft.location_fields)."""
    return {
        **{name: str(hub.path(role)) for name, role in models.items()},
        "model_fingerprints": {
            name: component_fingerprint(hub.profile, role, hub.models_dir) for name, role in models.items()
        },
    }


def generator_config(
    config_type: type,
    profile: Profile,
    run: dict,
    paths: ArtifactPaths,
    hub,
    shards: str,
    runs: str,
    models: dict[str, str],
    **fields,
):
    """An SFT or DPO run's config, as its run folder keeps it: ``run`` over the profile's settings
    (``training_config``), the shards of the asset ``shards``, the ``models`` folders with their
    fingerprints, ``fields`` (a DPO run's storage-relative ``sft_checkpoint``), and ``output_dir``
    its own folder in the asset folder ``runs``, keyed by all of it and the shards' manifest."""
    config = training_config(
        config_type,
        profile,
        run,
        shards=stored_path(paths.asset_dir(shards), paths.root),
        **model_fields(hub, models),
        **fields,
    )
    return in_run_dir(config, Path(runs), manifest_hash(paths.asset_dir(shards)), profile.training_gpus)


def training_command(module: str, config_file: Path, gpus: int, root: Path) -> list[str]:
    """One process, or torchrun with a process per GPU; the run works in the storage ``root``."""
    arguments = ["-m", module, "--config", str(config_file), "--root", str(root)]
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *arguments]
    return [sys.executable, *arguments]


def gpu_op_tags(gpus: int) -> dict:
    """What a Kubernetes run launcher or executor reads to schedule the step on GPU nodes."""
    count = str(max(gpus, 1))
    return {
        "dagster-k8s/config": {
            "container_config": {
                "resources": {"requests": {"nvidia.com/gpu": count}, "limits": {"nvidia.com/gpu": count}}
            }
        }
    }


def launch(context, client: dg.PipesSubprocessClient, module: str, config, gpus: int, root: Path):
    """Write ``config`` into its run folder (``output_dir``, relative to the storage ``root``), run
    the module on it through Pipes in ``root``, and return the launched process's materialization
    with the config it trained with, its checkpoint's absolute ``checkpoint_uri`` (for people) and
    its ``checkpoint_path`` relative to ``root`` (what later assets read, so they survive the root
    moving). Several launches may share one step (the ablation's runs)."""
    config_file = write_json_atomic(root / config.output_dir / "config.json", asdict(config))
    # the launched process settles like an entry point: its environment is set before it starts
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **environment.DEFAULTS}
    command = training_command(module, config_file, gpus, root)
    context.log.info(f"launching {' '.join(command)}")
    materialization = client.run(command=command, context=context, env=env).get_materialize_result()
    # The process reports its checkpoint as it names it: relative to the root it worked in.
    checkpoint = {"checkpoint_uri": dg.MetadataValue.path(str(root / materialization.metadata["checkpoint_uri"].value))}
    return dg.MaterializeResult(
        metadata={
            **materialization.metadata,
            **checkpoint,
            "config": dg.MetadataValue.json(asdict(config)),
            **checkpoint_path_metadata(checkpoint, root),
        },
        data_version=materialization.data_version,
    )


def build_training_assets(gpus: int, profile: Profile | None = None) -> list[dg.AssetsDefinition]:
    """The training assets for a profile: its GPU count shapes the launch and the op tags, its
    settings are the run configs' defaults (``profile`` None: the environment's, load_profile)."""
    profile = profile or load_profile()
    tags = gpu_op_tags(gpus)
    sft_run_config = run_config_class("SFTRunConfig", SFTConfig, profile, GENERATOR_FILLED, sft_module.FIELD_HELP)
    dpo_run_config = run_config_class(
        "DPORunConfig",
        DPOConfig,
        profile,
        GENERATOR_FILLED + dpo_module.UNUSED_SFT_FIELDS,
        {**sft_module.FIELD_HELP, **dpo_module.FIELD_HELP},
    )
    prompt_run_config = run_config_class(
        "PromptDPORunConfig", PromptDPOConfig, profile, PROMPT_DPO_FILLED, prompt_dpo_module.FIELD_HELP
    )

    @dg.asset(
        group_name=GROUP,
        code_version="5",
        deps=["sft_shards", "model_weights"],
        pool="gpu",
        kinds={"pytorch"},
        op_tags=tags,
    )
    def sft_checkpoint(
        context: dg.AssetExecutionContext,
        config: sft_run_config,
        settings: IdglowSettings,
        models: ModelHubResource,
        pipes_subprocess_client: dg.PipesSubprocessClient,
    ) -> dg.MaterializeResult:
        """Stage 1: LoRA SFT of the generator with the task-adaptive identity loss (annealing for
        Task 1, temporal gate for Task 2); safetensors checkpoint with its manifest."""
        profile, paths, hub = settings.resolved(), settings.paths, models.hub(settings)
        training = generator_config(
            SFTConfig, profile, config.model_dump(), paths, hub, "sft_shards", "sft_checkpoint", SFT_MODELS
        )
        return launch(context, pipes_subprocess_client, "training.sft", training, profile.training_gpus, paths.root)

    @dg.asset(
        group_name=GROUP,
        code_version="5",
        deps=["dpo_shards", sft_checkpoint],
        pool="gpu",
        kinds={"pytorch"},
        op_tags=tags,
    )
    def dpo_checkpoint(
        context: dg.AssetExecutionContext,
        config: dpo_run_config,
        settings: IdglowSettings,
        models: ModelHubResource,
        pipes_subprocess_client: dg.PipesSubprocessClient,
    ) -> dg.MaterializeResult:
        """Stage 2: weighted-margin DPO (Eq. 7) with a fresh adapter on the merged SFT model; exported
        as one LoRA against the base model (SFT and DPO factors concatenated along the rank)."""
        profile, paths, hub = settings.resolved(), settings.paths, models.hub(settings)
        event = context.instance.get_latest_materialization_event(sft_checkpoint.key)
        sft = checkpoint_of(event.asset_materialization.metadata, paths.root)
        training = generator_config(
            DPOConfig,
            profile,
            config.model_dump(),
            paths,
            hub,
            "dpo_shards",
            "dpo_checkpoint",
            DPO_MODELS,
            sft_checkpoint=stored_path(sft, paths.root),
        )
        lora = paths.root / training.output_dir / "combined" / "pytorch_lora_weights.safetensors"
        result = launch(context, pipes_subprocess_client, "training.dpo", training, profile.training_gpus, paths.root)
        # lora_sha256 stays the training process's content hash (the version's name): the file's own
        # SHA-256 changes whenever the same weights are written again by another process
        return dg.MaterializeResult(
            metadata={**result.metadata, "lora_uri": dg.MetadataValue.path(str(lora))}, data_version=result.data_version
        )

    @dg.asset(
        group_name=GROUP,
        code_version="4",
        deps=["prompts", "model_weights"],
        pool="gpu",
        kinds={"pytorch"},
        op_tags=gpu_op_tags(1),
    )
    def prompt_model_alignment(
        context: dg.AssetExecutionContext,
        config: prompt_run_config,
        settings: IdglowSettings,
        models: ModelHubResource,
        pipes_subprocess_client: dg.PipesSubprocessClient,
    ) -> dg.MaterializeResult:
        """Section 3.2: DPO of the prompt model on the prompt preference set (descriptive,
        attribute-bound prompts over barren ones). The aligned model is a complete folder; set
        ``prompt_model_version`` to its ``checkpoint_uri`` and the prompts asset writes with it
        (and names it ``aligned:<sha>`` on every prompt)."""
        profile, paths, hub = settings.resolved(), settings.paths, models.hub(settings)
        preferences = paths.asset_dir("prompts") / "prompt_preferences.parquet"
        training = PromptDPOConfig(
            **model_fields(hub, {"model_dir": PROMPT_MODEL}),
            preferences=stored_path(preferences, paths.root),
            catalog=stored_path(paths.catalog, paths.root),
            source_root=stored_path(profile.celebahq_source, paths.root),
            output_dir="",
            seed=profile.seed,
            portrait_pixels=profile.prompt_portrait_pixels,
            **config.model_dump(),
        )
        inputs = sha256_file(preferences)
        training = dataclasses.replace(training, output_dir=f"prompt_model_alignment/{run_key(training, inputs, 1)}")
        result = launch(context, pipes_subprocess_client, "training.prompt_dpo", training, 1, paths.root)
        folder = Path(result.metadata["checkpoint_uri"].value)
        return dg.MaterializeResult(
            metadata={
                **result.metadata,
                "prompt_model_version": dg.MetadataValue.text(f"aligned:{result.data_version.value[:12]}"),
                "use_it": dg.MetadataValue.md(f"Set `prompt_model_version` to `{folder}` (resource `settings`)."),
            },
            data_version=result.data_version,
        )

    return [sft_checkpoint, dpo_checkpoint, prompt_model_alignment]


def profile_definitions(profile: Profile) -> dg.Definitions:
    """This stage's definitions that depend on the profile (pipelines.definitions merges them with
    the module's own): the training assets for its GPU count and run-config defaults."""
    return dg.Definitions(assets=build_training_assets(profile.training_gpus, profile))
