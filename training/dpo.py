"""Stage 2, fine-grained group-level DPO with the weighted-margin objective (Eq. 6-7).

    python -m training.dpo --config dpo.json

The SFT adapter is merged into the transformer; a fresh DPO adapter is trained on top; the
reference is the same network with the DPO adapter disabled. Chosen and rejected share t and
noise. The result is exported as one LoRA against the base model: the SFT and DPO factors
concatenated along the rank (B1 A1 + B2 A2 = [B1 B2][A1; A2]), which stock diffusers loads.
"""

from __future__ import annotations

if __name__ == "__main__":  # a training process: settle its environment before a model library is imported
    from idglow.environment import settle

    settle()

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import QwenImageEditPlusPipeline
from peft import LoraConfig
from safetensors.torch import load_file

from idglow.storage import tensors_sha256, write_json_atomic
from training import loop
from training.checkpoints import lora_metadata
from training.config import FIELD_HELP as RUN_FIELD_HELP
from training.config import RunConfig
from training.data import Sample
from training.distributed import setup_distributed, unwrap
from training.encodings import EncodedBatch, EncodingCache, stack
from training.flow import Generators, flow_matching_loss, noisy, predict_velocity, randn, sample_sigmas
from training.losses import dpo_statistics, weighted_dpo_loss
from training.reporting import run_command


@dataclass
class DPOConfig(RunConfig):
    """The loop's fields (RunConfig; shards are DPO shards here) plus the SFT checkpoint and Eq. 7's knobs."""

    sft_checkpoint: str = ""
    beta: float = 2500.0
    chosen_weight: float = 1.5
    margin: float = 0.0
    sft_weight: float = 0.1


# SFTConfig's own fields (the identity loss and its modulation), which DPOConfig does not have:
# settings shared with an SFT run drop them before they configure DPO (assets.benchmark), and
# the DPO asset's run config leaves them out.
UNUSED_SFT_FIELDS = ("modulation", "lambda_id", "tau", "t1", "t2", "face_pack_dir")

FIELD_HELP = {
    **RUN_FIELD_HELP,
    "beta": "beta of Eq. 7 (Diffusion-DPO used 2500 to 5000)",
    "chosen_weight": "w of Eq. 7, the weight on the chosen term (>= 1)",
    "margin": "m of Eq. 7, the additive margin (>= 0)",
    "sft_weight": "lambda_sft of Eq. 7, the SFT term on the chosen image (>= 0)",
}


def merge_sft(pipeline: QwenImageEditPlusPipeline, checkpoint: Path) -> None:
    """Fold the SFT LoRA into the transformer's weights (the frozen reference network)."""
    pipeline.load_lora_weights(checkpoint, adapter_name="sft")
    pipeline.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=["sft"])
    pipeline.unload_lora_weights()


def dpo_loss(
    transformer, scheduler, chosen: EncodedBatch, rejected_x0: torch.Tensor, config: DPOConfig, generator: Generators
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 6-7 on encoded tensors. Chosen and rejected share t and noise and go through the network
    as one batch; the reference is the same network with the DPO adapter disabled, without gradient."""
    x_w, x_l = chosen.x0, rejected_x0
    noise = randn(tuple(x_w.shape), generator).to(x_w.device, x_w.dtype)
    sigma = sample_sigmas(
        x_w.shape[0], x_w.shape[1], scheduler, generator, config.logit_mean, config.logit_std, config.resolution_shift
    ).to(x_w.device)
    both = torch.cat([noisy(x_w, noise, sigma), noisy(x_l, noise, sigma)])
    mask = None if chosen.mask is None else torch.cat([chosen.mask, chosen.mask])
    args = (
        torch.cat([chosen.refs, chosen.refs]),
        torch.cat([chosen.prompt, chosen.prompt]),
        mask,
        torch.cat([sigma, sigma]),
        chosen.shapes,
    )
    targets, noises = torch.cat([x_w, x_l]), torch.cat([noise, noise])
    policy = flow_matching_loss(predict_velocity(transformer, both, *args), targets, noises)
    network = unwrap(transformer)
    network.disable_adapters()
    try:
        with torch.no_grad():
            reference = flow_matching_loss(predict_velocity(transformer, both, *args), targets, noises)
    finally:
        network.enable_adapters()
    n = x_w.shape[0]
    parts = (policy[:n], policy[n:], reference[:n], reference[n:])
    loss = weighted_dpo_loss(
        *parts, beta=config.beta, chosen_weight=config.chosen_weight, margin=config.margin, sft_weight=config.sft_weight
    )
    stats = dpo_statistics(*(p.detach() for p in parts), chosen_weight=config.chosen_weight)
    logs = {"mse_chosen": parts[0].mean().item(), "mse_rejected": parts[1].mean().item(), **stats}
    return loss, logs


class DPOObjective:
    """Eq. 6-7 for the loop, on the generator with the SFT adapter folded in."""

    def __init__(self, config: DPOConfig):
        self.config = config
        self.scheduler = None

    def prepare(self, pipeline) -> None:
        """Fold the SFT LoRA into the transformer (the reference network) before the DPO adapter goes on."""
        merge_sft(pipeline, Path(self.config.sft_checkpoint))
        self.scheduler = pipeline.scheduler

    def loss(
        self, model, cache: EncodingCache, samples: list[Sample], generators: Generators, heaviest: bool = False
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``dpo_loss`` of a micro-batch of pairs (each pair's file read once: it holds both
        images' latents). Every micro-batch takes the same path, so ``heaviest`` changes nothing."""
        encodings = [cache.get(s) for s in samples]
        chosen, rejected = stack(encodings, "chosen", self.config), stack(encodings, "rejected", self.config)
        return dpo_loss(model, self.scheduler, chosen, rejected.x0, self.config, generators)


def export_combined_lora(sft_checkpoint: Path, dpo_checkpoint: Path, out: Path) -> Path:
    """One LoRA against the base model: per layer A = [A_sft; A_dpo], B = [B_sft, B_dpo]."""
    sft, dpo = (load_file(str(p / "pytorch_lora_weights.safetensors")) for p in (sft_checkpoint, dpo_checkpoint))
    if sft.keys() != dpo.keys():
        raise ValueError("the SFT and DPO adapters target different layers; cannot concatenate them")
    combined = {}
    for key in sft:
        dim = 0 if "lora_A" in key else 1
        combined[key.removeprefix("transformer.")] = torch.cat([sft[key], dpo[key]], dim=dim).contiguous()
    rank = next(v.shape[0] for k, v in combined.items() if "lora_A" in k)
    sft_config = json.loads((sft_checkpoint / "manifest.json").read_text())["config"]
    # Both adapters use alpha = r (scale 1), so the concatenation keeps scale 1 with alpha = r_sft + r_dpo.
    lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=sft_config["lora_targets"])
    QwenImageEditPlusPipeline.save_lora_weights(
        out, transformer_lora_layers=combined, transformer_lora_adapter_metadata=lora_metadata(lora)
    )
    write_json_atomic(
        out / "manifest.json",
        {  # lora_sha256: the tensors' content hash (see training.checkpoints)
            "lora_sha256": tensors_sha256(out / "pytorch_lora_weights.safetensors"),
            "rank": rank,
            "sft_checkpoint": str(sft_checkpoint),
            "dpo_checkpoint": str(dpo_checkpoint),
            "sft_manifest": json.loads((sft_checkpoint / "manifest.json").read_text()),
            "dpo_manifest": json.loads((dpo_checkpoint / "manifest.json").read_text()),
        },
    )
    return out


def train(config: DPOConfig, stop_after: int | None = None, on_step=None, pipeline=None) -> Path:
    """Run (or resume) DPO (``training.loop.train``); returns the folder of the combined SFT+DPO
    LoRA (or, when stopped early, the latest DPO checkpoint)."""
    checkpoint = loop.train(config, DPOObjective(config), stop_after, on_step, pipeline)
    if stop_after is not None and json.loads((checkpoint / "manifest.json").read_text())["step"] < config.steps:
        return checkpoint
    combined = Path(config.output_dir) / "combined"
    dist = setup_distributed()
    if dist.is_main:
        export_combined_lora(Path(config.sft_checkpoint), checkpoint, combined)
    dist.barrier()
    return combined


def combined_metadata(combined: Path) -> dict:
    """What the Dagster materialization of a DPO run adds: the export's rank and lineage."""
    manifest = json.loads((combined / "manifest.json").read_text())
    return {
        "rank": manifest["rank"],
        "sft_lora_sha256": manifest["sft_manifest"]["lora_sha256"],
        "shard_manifest_sha256": manifest["dpo_manifest"]["shard_manifest_sha256"],
        "dpo_step": manifest["dpo_manifest"]["step"],
    }


def main() -> None:
    run_command(
        "Weighted-margin DPO on top of an SFT checkpoint.",
        DPOConfig,
        train,
        "combined LoRA",
        extra_metadata=combined_metadata,
    )


if __name__ == "__main__":
    main()
