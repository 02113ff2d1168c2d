"""SFT then DPO on the preference shards, launched as their own processes through Dagster Pipes
(``python -m training.sft`` / ``training.dpo``, or torchrun when the profile has more than one
GPU per run). Global rank 0 reports the checkpoint URI, its metrics and a data version equal to
the checkpoint's SHA-256. Each run's folder is keyed by its inputs, so a rerun on the same shards
and settings resumes or returns the finished checkpoint instead of training again.

Both assets run in the ``gpu`` pool (dagster.yaml limits it) and carry ``dagster-k8s/config``
tags that request the run's GPUs when a cluster launches them (docs/deployment.md)."""

import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import dagster as dg
from assets.metadata import file_metadata
from assets.resources import IdglowSettings, ModelHubResource
from idglow.models.registry import FACE_PACK, GENERATOR, PROMPT_MODEL
from idglow.shards import manifest_hash
from idglow.storage import sha256_file, write_json_atomic
from training.dpo import DPOConfig
from training.prompt_dpo import PromptDPOConfig
from training.sft import SFTConfig

GROUP = "training"


def _run_dir(root: Path, shards: Path, settings: dict) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return root / f"{manifest_hash(shards)[:12]}-{key}"


def _knobs(profile, steps: int) -> dict:
    """The settings a run's folder is keyed by (with its inputs' hash)."""
    return {"steps": steps, "resolution": profile.generation_size, "seed": profile.seed,
            "lora_rank": profile.lora_rank, "checkpoint_every": steps}


def training_command(module: str, config_file: Path, gpus: int) -> list[str]:
    """One process, or torchrun with a process per GPU."""
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                "-m", module, "--config", str(config_file)]
    return [sys.executable, "-m", module, "--config", str(config_file)]


def gpu_op_tags(gpus: int) -> dict:
    """What a Kubernetes run launcher or executor reads to schedule the step on GPU nodes."""
    count = str(max(gpus, 1))
    return {"dagster-k8s/config": {"container_config": {"resources": {
        "requests": {"nvidia.com/gpu": count}, "limits": {"nvidia.com/gpu": count}}}}}


def _launch(context, client: dg.PipesSubprocessClient, module: str, config, gpus: int, extra_metadata: dict):
    folder = Path(config.output_dir)
    config_file = write_json_atomic(folder / "config.json", asdict(config))
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    context.log.info(f"launching {' '.join(training_command(module, config_file, gpus))}")
    result = client.run(command=training_command(module, config_file, gpus), context=context, env=env)
    materialization = result.get_materialize_result()
    return dg.MaterializeResult(metadata={**materialization.metadata, **extra_metadata},
                                data_version=materialization.data_version)


def build_training_assets(gpus: int) -> list[dg.AssetsDefinition]:
    """The two training assets for a profile's GPU count (it shapes the launch and the op tags)."""
    tags = gpu_op_tags(gpus)

    @dg.asset(group_name=GROUP, code_version="2", deps=["sft_shards", "model_weights"], pool="gpu", kinds={"pytorch"},
              op_tags=tags)
    def sft_checkpoint(context: dg.AssetExecutionContext, settings: IdglowSettings, models: ModelHubResource,
                       pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        """Stage 1: LoRA SFT of the generator with the task-adaptive identity loss (annealing for
        Task 1, temporal gate for Task 2); safetensors checkpoint with its manifest."""
        profile, paths, hub = settings.resolved(), settings.paths, models.hub()
        shards = paths.asset_dir("sft_shards")
        knobs = _knobs(profile, profile.sft_steps)
        key = {**knobs, "gpus": profile.training_gpus}  # more ranks, a larger effective batch: another run
        config = SFTConfig(generator_dir=str(hub.path(GENERATOR)), shards=str(shards), face_pack_dir=str(hub.path(FACE_PACK)),
                           output_dir=str(_run_dir(paths.asset_dir("sft_checkpoint"), shards, key)), **knobs)
        return _launch(context, pipes_subprocess_client, "training.sft", config, profile.training_gpus, {
            "config": dg.MetadataValue.json(asdict(config)),
        })

    @dg.asset(group_name=GROUP, code_version="2", deps=["dpo_shards", sft_checkpoint], pool="gpu", kinds={"pytorch"},
              op_tags=tags)
    def dpo_checkpoint(context: dg.AssetExecutionContext, settings: IdglowSettings, models: ModelHubResource,
                       pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        """Stage 2: weighted-margin DPO (Eq. 7) with a fresh adapter on the merged SFT model; exported
        as one LoRA against the base model (SFT and DPO factors concatenated along the rank)."""
        profile, paths, hub = settings.resolved(), settings.paths, models.hub()
        event = context.instance.get_latest_materialization_event(sft_checkpoint.key)
        sft = Path(event.asset_materialization.metadata["checkpoint_uri"].value)
        shards = paths.asset_dir("dpo_shards")
        knobs = {**_knobs(profile, profile.dpo_steps), "sft_checkpoint": str(sft)}
        key = {**knobs, "gpus": profile.training_gpus}
        config = DPOConfig(generator_dir=str(hub.path(GENERATOR)), shards=str(shards),
                           output_dir=str(_run_dir(paths.asset_dir("dpo_checkpoint"), shards, key)), **knobs)
        lora = Path(config.output_dir) / "combined" / "pytorch_lora_weights.safetensors"
        result = _launch(context, pipes_subprocess_client, "training.dpo", config, profile.training_gpus, {})
        return dg.MaterializeResult(metadata={**result.metadata, **file_metadata("lora", lora)},
                                    data_version=result.data_version)

    @dg.asset(group_name=GROUP, code_version="1", deps=["prompts", "model_weights"], pool="gpu", kinds={"pytorch"},
              op_tags=gpu_op_tags(1))
    def prompt_model_alignment(context: dg.AssetExecutionContext, settings: IdglowSettings, models: ModelHubResource,
                               pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        """Section 3.2: DPO of the prompt model on the prompt preference set (descriptive,
        attribute-bound prompts over barren ones). The aligned model is a complete folder; set
        ``prompt_model_version`` to its ``checkpoint_uri`` and the prompts asset writes with it
        (and names it ``aligned:<sha>`` on every prompt)."""
        profile, paths, hub = settings.resolved(), settings.paths, models.hub()
        preferences = paths.asset_dir("prompts") / "prompt_preferences.parquet"
        knobs = {"steps": profile.prompt_dpo_steps, "seed": profile.seed}
        key = hashlib.sha256((sha256_file(preferences) + json.dumps(knobs, sort_keys=True)).encode()).hexdigest()[:12]
        config = PromptDPOConfig(model_dir=str(hub.path(PROMPT_MODEL)), preferences=str(preferences),
                                 catalog=str(paths.catalog), source_root=str(profile.celebahq_source),
                                 output_dir=str(paths.asset_dir("prompt_model_alignment") / key), **knobs)
        result = _launch(context, pipes_subprocess_client, "training.prompt_dpo", config, 1, {})
        folder = Path(result.metadata["checkpoint_uri"].value)
        return dg.MaterializeResult(metadata={
            **result.metadata, "prompt_model_version": dg.MetadataValue.text(f"aligned:{result.data_version.value[:12]}"),
            "use_it": dg.MetadataValue.md(f"Set `prompt_model_version` to `{folder}` (resource `settings`)."),
        }, data_version=result.data_version)

    return [sft_checkpoint, dpo_checkpoint, prompt_model_alignment]
