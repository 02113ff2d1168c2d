"""SFT then DPO on the preference shards (in-process here; the scale-out issue moves them to
torchrun through Dagster Pipes). Each run's folder is keyed by its inputs, so a rerun on the same
shards and settings resumes or returns the finished checkpoint instead of training again."""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import dagster as dg
from assets.metadata import file_metadata
from assets.resources import IdglowSettings, ModelHubResource
from idglow.models.registry import FACE_PACK, GENERATOR
from idglow.shards import manifest_hash
from training.dpo import DPOConfig
from training.dpo import train as train_dpo
from training.sft import SFTConfig
from training.sft import train as train_sft

GROUP = "training"


def _run_dir(root: Path, shards: Path, settings: dict) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return root / f"{manifest_hash(shards)[:12]}-{key}"


def _knobs(profile, steps: int) -> dict:
    """The settings a run's folder is keyed by (with its inputs' hash)."""
    return {"steps": steps, "resolution": profile.generation_size, "seed": profile.seed,
            "lora_rank": profile.lora_rank, "checkpoint_every": steps}


def _last_log(folder: Path) -> dict:
    lines = (folder / "log.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


@dg.asset(group_name=GROUP, code_version="1", deps=["sft_shards", "model_weights"], pool="gpu", kinds={"pytorch"})
def sft_checkpoint(context: dg.AssetExecutionContext, settings: IdglowSettings, models: ModelHubResource) -> dg.MaterializeResult:
    """Stage 1: LoRA SFT of the generator with the task-adaptive identity loss (annealing for
    Task 1, temporal gate for Task 2); safetensors checkpoint with its manifest."""
    profile, paths, hub = settings.resolved(), settings.paths, models.hub()
    shards = paths.asset_dir("sft_shards")
    knobs = _knobs(profile, profile.sft_steps)
    config = SFTConfig(generator_dir=str(hub.path(GENERATOR)), shards=str(shards), face_pack_dir=str(hub.path(FACE_PACK)),
                       output_dir=str(_run_dir(paths.asset_dir("sft_checkpoint"), shards, knobs)), **knobs)
    checkpoint = train_sft(config)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    return dg.MaterializeResult(
        metadata={
            "checkpoint_uri": dg.MetadataValue.path(str(checkpoint)),
            **file_metadata("lora", checkpoint / "pytorch_lora_weights.safetensors"),
            "shard_manifest_sha256": dg.MetadataValue.text(manifest["shard_manifest_sha256"]),
            "step": dg.MetadataValue.int(manifest["step"]),
            "last_step": dg.MetadataValue.json(_last_log(Path(config.output_dir))),
            "config": dg.MetadataValue.json(asdict(config)),
        },
        data_version=dg.DataVersion(manifest["lora_sha256"]),
    )


@dg.asset(group_name=GROUP, code_version="1", deps=["dpo_shards", sft_checkpoint], pool="gpu", kinds={"pytorch"})
def dpo_checkpoint(context: dg.AssetExecutionContext, settings: IdglowSettings, models: ModelHubResource) -> dg.MaterializeResult:
    """Stage 2: weighted-margin DPO (Eq. 7) with a fresh adapter on the merged SFT model; exported
    as one LoRA against the base model (SFT and DPO factors concatenated along the rank)."""
    profile, paths, hub = settings.resolved(), settings.paths, models.hub()
    event = context.instance.get_latest_materialization_event(sft_checkpoint.key)
    sft = Path(event.asset_materialization.metadata["checkpoint_uri"].value)
    shards = paths.asset_dir("dpo_shards")
    knobs = {**_knobs(profile, profile.dpo_steps), "sft_checkpoint": str(sft)}
    config = DPOConfig(generator_dir=str(hub.path(GENERATOR)), shards=str(shards),
                       output_dir=str(_run_dir(paths.asset_dir("dpo_checkpoint"), shards, knobs)), **knobs)
    combined = train_dpo(config)
    manifest = json.loads((combined / "manifest.json").read_text())
    return dg.MaterializeResult(
        metadata={
            "checkpoint_uri": dg.MetadataValue.path(str(combined)),
            **file_metadata("lora", combined / "pytorch_lora_weights.safetensors"),
            "rank": dg.MetadataValue.int(manifest["rank"]),
            "sft_lora_sha256": dg.MetadataValue.text(manifest["sft_manifest"]["lora_sha256"]),
            "shard_manifest_sha256": dg.MetadataValue.text(manifest["dpo_manifest"]["shard_manifest_sha256"]),
            "last_step": dg.MetadataValue.json(_last_log(Path(config.output_dir))),
        },
        data_version=dg.DataVersion(manifest["lora_sha256"]),
    )
