"""Badcase-driven alignment of the prompt model (section 3.2): DPO on the prompt preference set.

    python -m training.prompt_dpo --config prompt_dpo.json

Each preference row holds a group's portraits, the task, a descriptive attribute-bound prompt
(chosen) and a barren one (rejected). The vision-language model sees the portraits and the
same instruction that prompt synthesis gives it; the response log-likelihoods of chosen and
rejected under the LoRA policy and under the frozen model (the same network with the adapter
disabled) enter the standard DPO loss. The result is a complete model folder (the LoRA merged),
loadable exactly like the base prompt model, whose version is the SHA-256 of its weights.
"""

from __future__ import annotations

if __name__ == "__main__":  # a training process: settle its environment before a model library is imported
    from idglow.environment import settle

    settle()

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from PIL import Image

from idglow.prompt_synthesis import prompt_portrait
from idglow.prompts import dynamic_instruction
from idglow.storage import atomic_dir, tensors_sha256, write_json_atomic
from training.reporting import run_command


@dataclass
class PromptDPOConfig:
    model_dir: str  # the base prompt model (a transformers folder with its processor)
    preferences: str  # prompt_preferences.parquet (the prompts asset writes it)
    catalog: str  # catalog.parquet, to find each hq_idx's portrait
    source_root: str  # the CelebA-HQ root the catalog's paths are relative to
    output_dir: str
    steps: int = 8
    learning_rate: float = 5e-4
    beta: float = 0.1
    lora_rank: int = 8
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    portrait_pixels: int = 56 * 56  # pixels of each portrait the VLM sees (the profile's prompt_portrait_pixels)
    seed: int = 0
    device: str | None = None  # None: CUDA when available, else the CPU
    # model_dir's content fingerprint (the Dagster asset fills it): the run key uses it, not the path
    model_fingerprints: dict[str, str] = field(default_factory=dict)


FIELD_HELP = {  # what the launchpad shows beside each run-config field (assets/training.py)
    "steps": "optimizer steps (one preference pair each)",
    "learning_rate": "AdamW learning rate of the LoRA weights",
    "beta": "beta of the sequence DPO loss",
    "lora_rank": "LoRA rank r (alpha = r)",
    "lora_targets": "VLM module names that get a LoRA",
    "portrait_pixels": "pixels of each portrait the VLM sees, at its aspect ratio (as when it writes prompts)",
}


def sequence_dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO on sequence log-likelihoods (Rafailov et al.): -log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l))),
    averaged over the batch. Inputs are summed response log-probabilities, shape (B,)."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin).mean()


def response_logprob(model, processor, portraits: list[Image.Image], instruction: str, response: str) -> torch.Tensor:
    """Summed log-probability of ``response`` after the chat prompt with the portraits."""
    messages = [
        {"role": "user", "content": [*({"type": "image"} for _ in portraits), {"type": "text", "text": instruction}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    end = processor.tokenizer.eos_token or ""
    prompt_ids = processor(text=[prompt], images=portraits, return_tensors="pt")["input_ids"]
    inputs = processor(text=[prompt + response + end], images=portraits, return_tensors="pt").to(model.device)
    start = prompt_ids.shape[1]
    logits = model(**inputs).logits[:, start - 1 : -1].float()
    targets = inputs["input_ids"][:, start:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1).sum()


def model_placement(config: PromptDPOConfig) -> tuple[torch.device, torch.dtype]:
    """Where the VLM runs and in which dtype: bf16 on CUDA, fp32 on the CPU, as the hub loads it
    (a 7 B model in fp32 on a CPU would take hours per step)."""
    from idglow.models.hub import compute_dtype, resolve_device  # the hub pulls in CLIP and onnxruntime

    device = resolve_device(config.device)
    return device, compute_dtype(device)


def load_policy(config: PromptDPOConfig):
    """The base VLM, frozen, with a fresh LoRA; on CUDA the LoRA weights (and so the optimizer
    state) are fp32 over the bf16 base, as in SFT."""
    from diffusers.training_utils import cast_training_params
    from transformers import AutoModelForImageTextToText

    device, dtype = model_placement(config)
    base = AutoModelForImageTextToText.from_pretrained(config.model_dir, dtype=dtype, local_files_only=True).to(device)
    base.requires_grad_(False)
    model = get_peft_model(
        base,
        LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_rank,
            target_modules=config.lora_targets,
            init_lora_weights="gaussian",
        ),
    )
    if device.type == "cuda":
        cast_training_params(model, dtype=torch.float32)
    return model


def stored_dtype(model_dir: str) -> torch.dtype:
    """The dtype a checkpoint's config says its weights are stored in (fp32 when it says none)."""
    from transformers import AutoConfig

    stored = AutoConfig.from_pretrained(model_dir, local_files_only=True).dtype
    return getattr(torch, stored) if isinstance(stored, str) else stored or torch.float32


def load_pairs(config: PromptDPOConfig) -> list[dict]:
    preferences = pd.read_parquet(config.preferences)
    paths = pd.read_parquet(config.catalog).set_index("hq_idx")["path"]
    pairs = []
    for row in preferences.itertuples():
        portraits = [
            prompt_portrait(
                Image.open(Path(config.source_root) / paths.loc[int(h)]).convert("RGB"), config.portrait_pixels
            )
            for h in row.condition_hq_idx
        ]
        pairs.append(
            {
                "portraits": portraits,
                "instruction": dynamic_instruction(row.task, int(row.n_subjects)),
                "chosen": row.chosen,
                "rejected": row.rejected,
                "badcase": row.badcase,
            }
        )
    if not pairs:
        raise ValueError(f"no prompt preference pairs in {config.preferences}")
    return pairs


def train(config: PromptDPOConfig, on_step=None) -> Path:
    """Align the prompt model; returns the folder of the aligned model (skips if it exists)."""
    from transformers import AutoProcessor

    out = Path(config.output_dir)
    final = out / "model"
    if (final / "manifest.json").exists():
        return final
    torch.manual_seed(config.seed)
    processor = AutoProcessor.from_pretrained(config.model_dir, local_files_only=True)
    model = load_policy(config)
    on_gpu = model.device.type == "cuda"
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, fused=on_gpu)
    pairs = load_pairs(config)
    order = random.Random(config.seed)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"
    log.unlink(missing_ok=True)
    for step in range(1, config.steps + 1):
        pair = pairs[order.randrange(len(pairs))]
        args = (processor, pair["portraits"], pair["instruction"])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            policy = [response_logprob(model, *args, pair[k]) for k in ("chosen", "rejected")]
            with torch.no_grad(), model.disable_adapter():
                reference = [response_logprob(model, *args, pair[k]) for k in ("chosen", "rejected")]
        loss = sequence_dpo_loss(policy[0][None], policy[1][None], reference[0][None], reference[1][None], config.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        margin = ((policy[0] - reference[0]) - (policy[1] - reference[1])).item()
        row = {
            "step": step,
            "time": time.time(),
            "loss": loss.item(),
            "reward_margin": config.beta * margin,
            "implicit_accuracy": float(margin > 0),
            "badcase": pair["badcase"],
        }
        with open(log, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if on_step is not None:
            on_step(row)
    # Saved in the dtype the base was released in (bf16 for Qwen2.5-VL): an fp32 copy of a merged
    # CPU run would be twice the base on disk for no precision a bf16 consumer keeps.
    merged = model.merge_and_unload().to(stored_dtype(config.model_dir))
    with atomic_dir(final) as staging:
        merged.save_pretrained(staging)
        processor.save_pretrained(staging)
        weights = sorted(staging.glob("*.safetensors"))
        digest = tensors_sha256(*weights)  # "lora_sha256" below: the merged weights' content hash, not a file's
        write_json_atomic(
            staging / "manifest.json",
            {
                "lora_sha256": digest,
                "base_model": config.model_dir,
                "pairs": len(pairs),
                "step": config.steps,
                "config": asdict(config),
            },
        )
    return final


def main() -> None:
    run_command(
        "DPO alignment of the prompt model on the prompt preference set.",
        PromptDPOConfig,
        train,
        "aligned prompt model",
        distributed=False,
    )


if __name__ == "__main__":
    main()
