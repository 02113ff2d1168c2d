"""The LoRA adapter, checkpoints and resuming, for SFT and DPO alike (``training.loop``).

A checkpoint (``step-NNNNNN/``) holds the LoRA in diffusers' format, the optimizer tensors and
the torch RNG, the step and the data position, and a manifest with the LoRA's content hash, the
shard manifest's hash and the whole config. A run resumes from its latest checkpoint only with
the config it was trained with (``check_resumable``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import QwenImageEditPlusPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from idglow.storage import atomic_path, tensors_sha256, write_json_atomic, write_text_atomic
from training.config import RunConfig

# ---------------------------------------------------------------------------- LoRA


def add_lora(transformer, config: RunConfig, adapter_name: str = "default") -> LoraConfig:
    """A fresh LoRA (alpha = rank, Gaussian A, zero B) on ``config.lora_targets``, drawn from the run's seed."""
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_rank,
        init_lora_weights="gaussian",
        target_modules=list(config.lora_targets),
    )
    torch.manual_seed(config.seed)
    transformer.add_adapter(lora, adapter_name=adapter_name)
    return lora


def lora_metadata(lora: LoraConfig) -> dict:
    """The adapter config saved beside the weights, with its sets sorted: peft keeps
    ``target_modules`` as a set, whose order changes from process to process, and the file's
    SHA-256 (a model version's name) must depend on the weights alone."""
    return {
        key: sorted(value) if isinstance(value, set | frozenset) else value for key, value in lora.to_dict().items()
    }


# ----------------------------------------------------------------------- checkpoints


def save_checkpoint(
    folder: Path,
    transformer,
    optimizer,
    step: int,
    data_position: int,
    config: RunConfig,
    lora: LoraConfig,
    shard_hash: str,
) -> Path:
    """LoRA (diffusers format), optimizer tensors and the torch RNG in safetensors, the rest in
    JSON, and a manifest with the checkpoint's SHA-256 and the shard manifest it trained on.
    (Noise and t come from per-sample generators seeded by the step, so need no saved state.)"""
    folder.mkdir(parents=True, exist_ok=True)
    QwenImageEditPlusPipeline.save_lora_weights(
        folder,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=lora_metadata(lora),
    )
    optimizer_state = optimizer.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    for index, state in optimizer_state["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
    with atomic_path(folder / "training_state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(
        folder / "training_state.json",
        {
            "step": step,
            "data_position": data_position,
            "param_groups": optimizer_state["param_groups"],
        },
    )
    lora_file = folder / "pytorch_lora_weights.safetensors"
    manifest = {
        # "lora_sha256" is the tensors' content hash (tensors_sha256), not the file's SHA-256: the
        # safetensors header's metadata order changes from process to process. The key keeps its
        # name because the model versions, the registry and the Pipes reports read it.
        "step": step,
        "lora_sha256": tensors_sha256(lora_file),
        "shard_manifest_sha256": shard_hash,
        "config": asdict(config),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(folder / "manifest.json", manifest)
    return folder


def load_checkpoint(folder: Path, transformer, optimizer) -> tuple[int, int]:
    """Restore LoRA weights, optimizer, RNG; returns (step, data position)."""
    lora = load_file(str(folder / "pytorch_lora_weights.safetensors"))
    state = {k.removeprefix("transformer."): v for k, v in lora.items()}
    set_peft_model_state_dict(transformer, state)
    tensors = load_file(str(folder / "training_state.safetensors"))
    meta = json.loads((folder / "training_state.json").read_text())
    optimizer_state: dict = {"state": {}, "param_groups": meta["param_groups"]}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(tensors["rng.torch"])
    return meta["step"], meta["data_position"]


def checkpoint_due(step: int, config: RunConfig, seconds_since_last: float) -> bool:
    """Whether the loop saves a checkpoint after ``step``: every ``checkpoint_every`` steps, when
    ``checkpoint_every_minutes`` have passed since the last one, and at the end."""
    if step == config.steps or step % config.checkpoint_every == 0:
        return True
    return config.checkpoint_every_minutes is not None and seconds_since_last >= 60 * config.checkpoint_every_minutes


def latest_checkpoint(output_dir: Path) -> Path | None:
    done = sorted(p.parent for p in output_dir.glob("step-*/manifest.json"))
    return done[-1] if done else None


def truncate_log(log: Path, step: int) -> None:
    """Keep the log's rows up to ``step`` (the checkpoint a run resumes from, 0 for a fresh
    start): the steps after it are trained again and logged again, and each step must appear
    once. A torn last line (a run killed while writing it) goes too."""
    if not log.exists():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", step + 1) <= step:
            kept.append(line + "\n")
    write_text_atomic(log, "".join(kept))


# -------------------------------------------------------------------------- resuming

# What may change between a run's start and its resume: where the run and its encodings live,
# which device it runs on and how much it recomputes to fit there (recomputation leaves the
# gradients as they are, and a cached encoding equals a fresh one: both tested), not what it
# trains. Every other field must equal the checkpoint's saved config.
MAY_DIFFER_ON_RESUME = ("output_dir", "device", "gradient_checkpoint_blocks", "memory_fraction", "encoding_cache_dir")


def location_fields(config: dict) -> set[str]:
    """The fields of a config (as a dict) that say where a run works, not what it trains:
    MAY_DIFFER_ON_RESUME, and the model folders whose content fingerprint it carries in
    ``model_fingerprints`` (a models directory mounted elsewhere holds the same models)."""
    return set(MAY_DIFFER_ON_RESUME) | set(config.get("model_fingerprints") or {})


class ConfigMismatch(ValueError):
    """A run folder holds checkpoints of a run with other settings."""


def config_differences(saved: dict, current: dict) -> dict[str, tuple]:
    """Fields whose saved and current values differ, as (saved, current); "<absent>" for a field
    one side lacks (a checkpoint written before the field existed). A model folder's path counts
    only when one side lacks its fingerprint (``model_fingerprints`` is compared itself)."""
    names = sorted((saved.keys() | current.keys()) - (location_fields(saved) & location_fields(current)))
    absent = "<absent>"
    return {
        name: (saved.get(name, absent), current.get(name, absent))
        for name in names
        if saved.get(name, absent) != current.get(name, absent)
    }


def check_resumable(checkpoint: Path, config: RunConfig) -> None:
    """Refuse to resume ``checkpoint`` with a config other than the one it was trained with:
    the result would be neither run."""
    saved = json.loads((checkpoint / "manifest.json").read_text())["config"]
    differences = config_differences(saved, json.loads(json.dumps(asdict(config))))  # compared as the manifest holds it
    if differences:
        listed = "; ".join(
            f"{name}: saved {old!r}, now {new!r}"
            for name, old, new in ((name, *values) for name, values in differences.items())
        )
        raise ConfigMismatch(
            f"{checkpoint.parent} holds a run trained with other settings ({listed}); it cannot be resumed "
            f"with these. Use another output_dir (the Dagster assets key each run's folder by its whole config), "
            f"or restore the saved values to resume it."
        )
