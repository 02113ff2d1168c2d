"""The training loop SFT and DPO share: ``train(config, objective)``.

    python -m training.sft --config sft.json    # SFTConfig, training.sft.SFTObjective
    python -m training.dpo --config dpo.json    # DPOConfig, training.dpo.DPOObjective

``train`` reads top to bottom: set-up (distributed, seed, the generator, a fresh LoRA and AdamW,
resuming from the latest checkpoint), data (the shards' batches and the per-sample encodings on
disk), the memory plan when ``gradient_checkpoint_blocks`` is ``auto``, then the loop: per
optimizer step, ``gradient_accumulation`` micro-batches through the objective's loss and
backward, clipping, the AdamW update, a JSON line in ``log.jsonl`` and a checkpoint when due.

Words: a *step* is one optimizer update (``config.steps`` of them; the log, the checkpoints and
the per-sample generators count these); a *micro-batch* is one batch of ``batch_size`` samples,
``gradient_accumulation`` of them per step; the *data position* counts the micro-batches
consumed. The denoising time of a sample is its sigma (training.flow), never a step.

The objective (``Objective``) supplies the rest: what it changes on the loaded pipeline and the
loss of one micro-batch. Under torchrun the transformer is wrapped in DistributedDataParallel,
each rank reads its own shards, and only rank 0 writes the log and the checkpoints.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from functools import partial
from pathlib import Path
from typing import Protocol

import torch
from diffusers import QwenImageEditPlusPipeline
from diffusers.training_utils import cast_training_params
from peft import LoraConfig

from idglow.editing import skip_unused_logits
from idglow.models.hub import compute_dtype, resolve_device
from idglow.shards import load_manifest
from idglow.storage import write_json_atomic
from training.checkpoints import (
    add_lora,
    check_resumable,
    checkpoint_due,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    truncate_log,
)
from training.config import AUTO, RunConfig
from training.data import Sample, batches
from training.distributed import setup_distributed, wrap_for_data_parallel
from training.encodings import EncodingCache
from training.flow import sample_generators
from training.memory import checkpoint_blocks, plan_recomputation


class Objective(Protocol):
    """What SFT (training.sft) and DPO (training.dpo) each supply to the loop."""

    def prepare(self, pipeline: QwenImageEditPlusPipeline) -> None:
        """Change the loaded pipeline before the LoRA goes on (DPO folds the SFT adapter in) and
        keep what the loss needs of it (the scheduler, the identity loss)."""

    def loss(
        self,
        model: torch.nn.Module,
        cache: EncodingCache,
        samples: list[Sample],
        generators: list[torch.Generator],
        heaviest: bool = False,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch's loss through ``model`` (the transformer, or its data-parallel
        wrapper) on the samples' encodings from ``cache``, and what to log; ``generators`` draw
        each sample's noise and sigma. ``heaviest``: the form that needs the most memory (the
        memory planner measures it)."""


def load_generator(config: RunConfig) -> QwenImageEditPlusPipeline:
    """The frozen pipeline on the config's device (CUDA when there is one) in the hub's dtype
    (bf16 on CUDA, fp32 on the CPU), so training and inference run the same numbers."""
    device = resolve_device(config.device or None)  # an empty device, as None: CUDA when there is one
    pipeline = QwenImageEditPlusPipeline.from_pretrained(
        config.generator_dir, dtype=compute_dtype(device), local_files_only=True
    ).to(device)
    pipeline.set_progress_bar_config(disable=True)
    skip_unused_logits(pipeline.text_encoder)  # as the hub's pipeline: encodings read hidden states only
    for module in (pipeline.vae, pipeline.text_encoder, pipeline.transformer):
        module.requires_grad_(False)
    return pipeline


def prepare_trainable(
    transformer, config: RunConfig
) -> tuple[LoraConfig, list[torch.nn.Parameter], torch.optim.Optimizer]:
    """A fresh LoRA, the speed levers the config asks for, and AdamW over the LoRA weights.

    On CUDA the base weights stay bf16 while the LoRA weights and the optimizer state are fp32
    (the loop runs the forward under bf16 autocast), and AdamW is the fused kernel."""
    lora = add_lora(transformer, config)
    on_gpu = transformer.device.type == "cuda"
    if on_gpu:
        cast_training_params(transformer, dtype=torch.float32)
    if config.attention_backend:
        transformer.set_attention_backend(config.attention_backend)
    # "auto" starts with none recomputed; on CUDA the loop plans the count on its first micro-batch.
    checkpoint_blocks(
        transformer, 0 if config.gradient_checkpoint_blocks == AUTO else config.gradient_checkpoint_blocks
    )
    if config.compile:
        transformer.compile_repeated_blocks(dynamic=False)
    parameters = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay, fused=on_gpu)
    return lora, parameters, optimizer


def train(
    config: RunConfig,
    objective: Objective,
    stop_after: int | None = None,
    on_step=None,
    pipeline: QwenImageEditPlusPipeline | None = None,
) -> Path:
    """Train (or resume) a LoRA on the generator's transformer with ``objective``'s loss; returns
    the latest checkpoint folder. ``stop_after`` ends the run after that many steps (a simulated
    interruption for the resume tests); ``on_step`` gets each log row on rank 0 (the Dagster
    Pipes reporter); ``pipeline`` is a generator already in memory (the GPU rehearsal), loaded
    from ``config.generator_dir`` by default."""
    # ---------------------------------------------------------------- set-up
    dist = setup_distributed()  # one process, or this rank of torchrun's group
    if dist.device is not None:
        config.device = dist.device  # under torchrun each rank has its own device
    torch.manual_seed(config.seed)
    if pipeline is None:
        pipeline = load_generator(config)
    objective.prepare(pipeline)
    transformer = pipeline.transformer
    on_gpu = transformer.device.type == "cuda"
    lora, parameters, optimizer = prepare_trainable(transformer, config)

    output_dir = Path(config.output_dir)
    step, data_position = 0, 0  # optimizer steps taken, micro-batches consumed
    resume_from = latest_checkpoint(output_dir)
    if resume_from is not None:
        check_resumable(resume_from, config)  # only with the config it was trained with
        step, data_position = load_checkpoint(resume_from, transformer, optimizer)

    # ------------------------------------------------------------------ data
    cache = EncodingCache(pipeline, config)  # per-sample encodings on disk, encoded on first use
    shard_manifest, shard_hash = load_manifest(Path(config.shards))
    loader = batches(
        Path(config.shards),
        config.batch_size,
        config.seed,
        skip=data_position,
        rank=dist.rank,
        world=dist.world,
        manifest=shard_manifest,
    )

    # "auto" recomputation on CUDA: each rank plans on its first micro-batch, in the objective's
    # heaviest form, before the DDP wrap, so that no probe takes part in DDP's all-reduce.
    plan = None
    if config.gradient_checkpoint_blocks == AUTO and on_gpu:
        first = next(loader)
        loader = itertools.chain([first], loader)  # training still starts with the probed micro-batch
        generators = sample_generators(config.seed, step, [s.key for s in first])
        probe = partial(objective.loss, transformer, cache, first, generators, heaviest=True)
        count, info = plan_recomputation(transformer, parameters, optimizer, config, probe)
        plan = {"recomputed_blocks": count, "of": len(transformer.transformer_blocks), **info}
    model = wrap_for_data_parallel(transformer, dist)
    if dist.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        truncate_log(output_dir / "log.jsonl", step)  # the steps after the checkpoint are logged again
        if plan is not None:
            write_json_atomic(output_dir / "memory_plan.json", plan)

    # -------------------------------------------------------------- the loop
    last_saved = time.monotonic()
    while step < config.steps:
        optimizer.zero_grad(set_to_none=True)
        for micro_step in range(config.gradient_accumulation):
            samples = next(loader)
            data_position += 1
            # Noise and sigma per sample from (seed, step, key): the same on any rank and in any
            # batch, and a resumed run draws what the uninterrupted one drew.
            generators = sample_generators(config.seed, step, [s.key for s in samples])
            # Under DDP the gradients are all-reduced once per step, in the last micro-batch's backward.
            last = micro_step == config.gradient_accumulation - 1
            sync = model.no_sync() if dist.world > 1 and not last else contextlib.nullcontext()
            with sync:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                    loss, logs = objective.loss(model, cache, samples, generators)
                (loss / config.gradient_accumulation).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        step += 1

        if dist.is_main:
            # The last micro-batch's loss and logs, the gradient norm before clipping.
            row = {"step": step, "time": time.time(), "loss": loss.item(), "grad_norm": grad_norm.item(), **logs}
            with open(output_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
            if on_step is not None:
                on_step(row)
            if checkpoint_due(step, config, time.monotonic() - last_saved):
                folder = output_dir / f"step-{step:06d}"
                save_checkpoint(folder, transformer, optimizer, step, data_position, config, lora, shard_hash)
                last_saved = time.monotonic()
        if stop_after is not None and step >= stop_after:
            break
    dist.barrier()  # the other ranks return the checkpoint rank 0 has finished writing
    return latest_checkpoint(output_dir)
