"""SFT then DPO on the preference shards, launched as their own processes through Dagster Pipes
(``python -m training.sft`` / ``training.dpo``, or torchrun when the profile has more than one
GPU per run). Global rank 0 reports the checkpoint URI, its metrics and a data version equal to
the checkpoint's SHA-256.

Each asset takes its training settings as Dagster run config (``SFTRunConfig``, ``DPORunConfig``,
``PromptDPORunConfig``, built per profile so the launchpad shows the profile's defaults). A run's
folder is keyed by the hash of its config (less where it runs and how much it recomputes) and its
inputs, so a rerun with the same settings on the same data resumes or returns the finished
checkpoint, and any other change trains anew; the loops refuse to resume a checkpoint whose saved
config differs (training.sft.check_resumable).

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

from assets.metadata import checkpoint_of, checkpoint_path_metadata, file_metadata
from assets.resources import IdglowSettings, ModelHubResource
from idglow.models.registry import FACE_PACK, GENERATOR, PROMPT_MODEL
from idglow.profiles import Profile, ProfileError, load_profile
from idglow.shards import manifest_hash
from idglow.storage import sha256_file, write_json_atomic
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
    "sft_checkpoint",
    "device",
    "seed",
    "resolution",
    "reference_resolution",
    "condition_pixels",
)
PROMPT_DPO_FILLED = ("model_dir", "preferences", "catalog", "source_root", "output_dir", "device", "seed")


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


def training_config(config_type: type, profile: Profile, run: dict, **paths: str):
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
    resumed (where it is written, its device and recomputation: training.sft.MAY_DIFFER_ON_RESUME),
    its inputs' hash, and the GPU count (more ranks, a larger effective batch: another run)."""
    settings = {name: value for name, value in asdict(config).items() if name not in sft_module.MAY_DIFFER_ON_RESUME}
    payload = json.dumps({"config": settings, "inputs": inputs_sha256, "gpus": gpus}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def in_run_dir(config, root: Path, inputs_sha256: str, gpus: int):
    """``config`` with ``output_dir`` set to its own folder under ``root``: a rerun with the same
    config on the same inputs resumes or returns its checkpoint, any other change trains anew."""
    folder = root / f"{inputs_sha256[:12]}-{run_key(config, inputs_sha256, gpus)}"
    return dataclasses.replace(config, output_dir=str(folder))


def training_command(module: str, config_file: Path, gpus: int) -> list[str]:
    """One process, or torchrun with a process per GPU."""
    if gpus > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={gpus}",
            "-m",
            module,
            "--config",
            str(config_file),
        ]
    return [sys.executable, "-m", module, "--config", str(config_file)]


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


def _launch(context, client: dg.PipesSubprocessClient, module: str, config, gpus: int, root: Path):
    """Write ``config`` into its run folder, run the module on it through Pipes, and report the
    launched process's materialization with the config it trained with and its checkpoint
    relative to the storage ``root`` (what later assets read, so they survive the root moving)."""
    folder = Path(config.output_dir)
    config_file = write_json_atomic(folder / "config.json", asdict(config))
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    context.log.info(f"launching {' '.join(training_command(module, config_file, gpus))}")
    result = client.run(command=training_command(module, config_file, gpus), context=context, env=env)
    materialization = result.get_materialize_result()
    return dg.MaterializeResult(
        metadata={
            **materialization.metadata,
            "config": dg.MetadataValue.json(asdict(config)),
            **checkpoint_path_metadata(materialization.metadata, root),
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
        code_version="4",
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
        profile, paths, hub = settings.resolved(), settings.paths, models.hub()
        shards = paths.asset_dir("sft_shards")
        training = training_config(
            SFTConfig,
            profile,
            config.model_dump(),
            generator_dir=str(hub.path(GENERATOR)),
            shards=str(shards),
            face_pack_dir=str(hub.path(FACE_PACK)),
        )
        training = in_run_dir(training, paths.asset_dir("sft_checkpoint"), manifest_hash(shards), profile.training_gpus)
        return _launch(context, pipes_subprocess_client, "training.sft", training, profile.training_gpus, paths.root)

    @dg.asset(
        group_name=GROUP,
        code_version="4",
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
        profile, paths, hub = settings.resolved(), settings.paths, models.hub()
        event = context.instance.get_latest_materialization_event(sft_checkpoint.key)
        sft = checkpoint_of(event.asset_materialization.metadata, paths.root)
        shards = paths.asset_dir("dpo_shards")
        training = training_config(
            DPOConfig,
            profile,
            config.model_dump(),
            generator_dir=str(hub.path(GENERATOR)),
            shards=str(shards),
            sft_checkpoint=str(sft),
        )
        training = in_run_dir(training, paths.asset_dir("dpo_checkpoint"), manifest_hash(shards), profile.training_gpus)
        lora = Path(training.output_dir) / "combined" / "pytorch_lora_weights.safetensors"
        result = _launch(context, pipes_subprocess_client, "training.dpo", training, profile.training_gpus, paths.root)
        return dg.MaterializeResult(
            metadata={**result.metadata, **file_metadata("lora", lora)}, data_version=result.data_version
        )

    @dg.asset(
        group_name=GROUP,
        code_version="3",
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
        profile, paths, hub = settings.resolved(), settings.paths, models.hub()
        preferences = paths.asset_dir("prompts") / "prompt_preferences.parquet"
        training = PromptDPOConfig(
            model_dir=str(hub.path(PROMPT_MODEL)),
            preferences=str(preferences),
            catalog=str(paths.catalog),
            source_root=str(profile.celebahq_source),
            output_dir="",
            seed=profile.seed,
            **config.model_dump(),
        )
        inputs = sha256_file(preferences)
        training = dataclasses.replace(
            training, output_dir=str(paths.asset_dir("prompt_model_alignment") / run_key(training, inputs, 1))
        )
        result = _launch(context, pipes_subprocess_client, "training.prompt_dpo", training, 1, paths.root)
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
