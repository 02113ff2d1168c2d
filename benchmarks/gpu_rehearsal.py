"""The real profile's generator at full depth on one GPU, random weights: one generation and the
training loops' first steps, with seconds and peak memory per phase and per step.

    python benchmarks/gpu_rehearsal.py [--out rehearsal.jsonl]     # CUDA: 60 transformer blocks, 28 + 32 text encoder
    python benchmarks/gpu_rehearsal.py --tiny                      # CPU dry run: the demo's tiny generator

The generator is the rehearsal's (idglow.models.rehearsal: Qwen-Image-Edit-2511's transformer,
the Qwen-Image VAE and a Qwen2.5-VL-7B-wide text encoder, released widths and token ids), built in
memory on the GPU at ``--depth`` (default: full, 60 transformer blocks, 28 text and 32 vision
blocks): writing 57 GB of random weights to disk and reading them back would take minutes and
most of the machine's disk, and tests nothing the depth-1 rehearsal directory does not.
Everything after the build is the project's own code, at the real profile's settings:

1. one generation (idglow.editing.edit, as generate_candidates calls it: 1024², 40 steps, true
   CFG 4.0 with the blank negative prompt, the profile's reference budgets) from two drawn
   portraits;
2. ``--sft-steps`` SFT steps with the ID loss (training.sft.train, the loop of training.loop, on
   the pipeline in memory; constant lambda so that every step decodes; the encoding cache, the
   memory planner with ``gradient_checkpoint_blocks: auto``, training.identity.IdentityLoss with
   the rehearsal's buffalo_l, whose detector runs on every decoded image), the generated image
   as the target;
3. ``--dpo-steps`` DPO steps (training.dpo.train on the same pipeline: the SFT checkpoint
   merged, the DPO loss through the same loop, re-planned), the generated image chosen and its
   mirror image rejected, and the combined export.

The first step of each loop includes its set-up (LoRA, the planner's probe steps, encoding the
sample); the later ones read the cached encodings. Results go to ``--out`` as JSON lines and a
table at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from idglow.editing import ReferenceBudget, edit
from idglow.profiles import load_profile
from idglow.shards import write_shard_sets

FACE_PACK_SEED = 40  # idglow.models.rehearsal's seed + 40 for the face pack


def on_cuda() -> bool:
    return torch.cuda.is_available()


def synchronize() -> None:
    if on_cuda():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if on_cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_cuda() else None


def build_pipeline(tiny: bool, depth: int, seed: int = 0):
    """The generator pipeline, frozen, on the device: the demo's tiny twin (fp32, CPU) or the
    rehearsal's real widths at ``depth`` (bf16, built directly on the GPU)."""
    if tiny:
        from idglow.models.tiny_generator import build_tiny_generator

        pipeline = build_tiny_generator(seed)
    else:
        from idglow.models.rehearsal import (
            build_rehearsal_generator,
            build_released_processor,
            build_released_tokenizer,
        )

        tokenizer, _, _ = build_released_tokenizer()
        processor = build_released_processor(tokenizer)
        device = "cuda" if on_cuda() else "cpu"
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device(device):  # initialised where it runs: 28 B parameters on a CPU take minutes
                pipeline = build_rehearsal_generator(tokenizer, processor, seed, depth)
        finally:
            torch.set_default_dtype(torch.float32)
        # the scheduler as from_pretrained makes it (its tables in fp32 on the CPU, not in the build's defaults)
        pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
    pipeline = pipeline.to("cuda" if on_cuda() else "cpu")
    pipeline.set_progress_bar_config(disable=True)
    for module in (pipeline.vae, pipeline.text_encoder, pipeline.transformer):
        module.requires_grad_(False)
    return pipeline


def drawn_portraits(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Procedural head-and-shoulders portraits (the demo dataset's drawing), one per identity."""
    from idglow.data.demo_celebahq import identity_style
    from idglow.data.faces import render_portrait

    rng = np.random.default_rng(seed)
    return [render_portrait(identity_style(i, seed), size, rng)[0].convert("RGB") for i in range(count)]


def _encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 95} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def write_rehearsal_shards(folder: Path, target: Image.Image, portraits: list[Image.Image], prompt: str):
    """One SFT sample (``target``) and one DPO pair (``target`` chosen, its mirror image rejected)."""
    conditions = {f"cond.{i}.jpg": _encoded(p, "JPEG") for i, p in enumerate(portraits)}
    meta = {"task": "direct_fusion", "n_subjects": len(portraits), "prompt": prompt}
    sft = {"__key__": "rehearsal-sft", "target.png": _encoded(target, "PNG"), **conditions, "json": meta}
    pair = {
        "__key__": "rehearsal-dpo",
        "chosen.png": _encoded(target, "PNG"),
        "rejected.png": _encoded(ImageOps.mirror(target), "PNG"),
        **conditions,
        "json": meta,
    }
    write_shard_sets([sft], folder / "sft_shards", "sft")
    write_shard_sets([pair], folder / "dpo_shards", "dpo")
    return folder / "sft_shards", folder / "dpo_shards"


class StepClock:
    """Seconds and peak memory of each step of a training loop, from its ``on_step`` rows."""

    def __init__(self):
        self.start = time.time()
        self.last = self.start
        self.steps: list[dict] = []
        reset_peak()

    def __call__(self, row: dict) -> None:
        synchronize()
        now = time.time()
        logged = {k: row[k] for k in ("decoded", "detections") if k in row}  # the ID path's own log (SFT)
        self.steps.append({"step": row["step"], "s": round(now - self.last, 3), "peak_gib": peak_gib(), **logged})
        self.last = now
        reset_peak()


def run_sft(pipeline, config, on_step) -> Path:
    """training.sft.train on the pipeline in memory (by default it loads one from disk)."""
    from training.identity import IdentityLoss
    from training.sft import train

    return train(config, IdentityLoss, on_step=on_step, pipeline=pipeline)


def run_dpo(pipeline, config, on_step) -> Path:
    """training.dpo.train on the pipeline in memory (it merges the SFT checkpoint and writes the
    combined export); returns the combined export."""
    from training.dpo import train

    pipeline.transformer.unload_lora()  # the SFT run's adapter; a fresh process would load the base model
    return train(config, on_step=on_step, pipeline=pipeline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny generator and settings (CPU dry run)")
    parser.add_argument("--depth", type=int, default=60, help="blocks per tower, clipped to the real counts")
    parser.add_argument("--generation-steps", type=int, default=None, help="default: the profile's (real 40)")
    parser.add_argument("--sft-steps", type=int, default=3)
    parser.add_argument("--dpo-steps", type=int, default=2)
    parser.add_argument("--out", default="gpu_rehearsal.jsonl")
    parser.add_argument("--work-dir", default=None, help="shards, encodings and checkpoints (default: a temporary one)")
    args = parser.parse_args()
    if not on_cuda() and not args.tiny:
        raise SystemExit("the full-depth rehearsal needs a CUDA device (or --tiny for a dry run on the CPU)")
    from training.dpo import UNUSED_SFT_FIELDS, DPOConfig
    from training.sft import SFTConfig

    profile = load_profile("demo" if args.tiny else "real", env={})
    size = profile.generation_size
    budget = ReferenceBudget.of_profile(profile)
    steps = args.generation_steps or profile.generation_steps
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        with open(out, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    scratch = None if args.work_dir else tempfile.TemporaryDirectory(prefix="idglow-gpu-rehearsal-")
    work = Path(args.work_dir or scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if on_cuda() else "cpu"

    reset_peak()
    start = time.time()
    pipeline = build_pipeline(args.tiny, args.depth)
    synchronize()
    sizes = {
        "transformer_blocks": len(pipeline.transformer.transformer_blocks),
        "text_layers": pipeline.text_encoder.config.text_config.num_hidden_layers,
        "vision_blocks": pipeline.text_encoder.config.vision_config.depth,
        "parameters_b": round(
            sum(p.numel() for m in (pipeline.transformer, pipeline.text_encoder, pipeline.vae) for p in m.parameters())
            / 1e9,
            3,
        ),
    }
    record({"phase": "build", "device": device, **sizes, "s": round(time.time() - start, 1), "peak_gib": peak_gib()})

    from idglow.models.rehearsal_faces import write_rehearsal_face_pack

    pack = write_rehearsal_face_pack(work / "buffalo_l", FACE_PACK_SEED)
    portraits = drawn_portraits(2, 1024 if not args.tiny else 256)
    prompt = "Two friends standing side by side in a sunny park, smiling at the camera."

    reset_peak()
    start = time.time()
    image = edit(
        pipeline,
        portraits,
        prompt,
        budget=budget,
        height=size,
        width=size,
        num_inference_steps=steps,
        true_cfg_scale=profile.true_cfg_scale,
        negative_prompt=" " if profile.true_cfg_scale > 1 else None,
        generator=torch.Generator(device="cpu").manual_seed(0),
    )
    synchronize()
    record(
        {
            "phase": "generation",
            "size": size,
            "steps": steps,
            "true_cfg_scale": profile.true_cfg_scale,
            "s": round(time.time() - start, 2),
            "peak_gib": peak_gib(),
        }
    )
    sft_shards, dpo_shards = write_rehearsal_shards(work, image, portraits, prompt)

    side = int(round(budget.vae_pixels**0.5))
    sft = SFTConfig(
        generator_dir=str(work / "generator-in-memory"),  # nothing there: the encodings' key hashes no files
        shards=str(sft_shards),
        output_dir=str(work / "sft"),
        steps=args.sft_steps,
        resolution=size,
        reference_resolution=side,
        condition_pixels=budget.condition_pixels,
        lora_rank=profile.lora_rank,
        modulation="constant",  # every step takes the ID path
        face_pack_dir=str(pack),
        gradient_checkpoint_blocks=profile.gradient_checkpoint_blocks,
        checkpoint_every=10**6,
        checkpoint_every_minutes=None,
    )
    clock = StepClock()
    checkpoint = run_sft(pipeline, sft, clock)
    save_s = round(time.time() - clock.last, 2)
    plan = _plan(sft)
    for row in clock.steps:
        record({"phase": "sft", **row, **plan})
    record({"phase": "sft checkpoint", "s": save_s})

    dpo = DPOConfig(
        **{
            **{name: value for name, value in sft.__dict__.items() if name not in UNUSED_SFT_FIELDS},
            "shards": str(dpo_shards),
            "output_dir": str(work / "dpo"),
            "steps": args.dpo_steps,
            "sft_checkpoint": str(checkpoint),
        }
    )
    clock = StepClock()
    combined = run_dpo(pipeline, dpo, clock)
    save_s = round(time.time() - clock.last, 2)
    plan = _plan(dpo)
    for row in clock.steps:
        record({"phase": "dpo", **row, **plan})
    record({"phase": "dpo checkpoint and export", "s": save_s, "export": combined.name})
    summarise(rows, sizes, device)
    if scratch is not None:
        scratch.cleanup()


def _plan(config) -> dict:
    """The loop's memory plan (memory_plan.json, written on CUDA with ``auto``), else the fixed count."""
    plan = Path(config.output_dir) / "memory_plan.json"
    if not plan.exists():
        return {"recomputed_blocks": f"{config.gradient_checkpoint_blocks} (not planned)"}
    return {"recomputed_blocks": json.loads(plan.read_text())["recomputed_blocks"]}


def summarise(rows: list[dict], sizes: dict, device: str) -> None:
    print()
    print(
        f"Rehearsal on {device}: {sizes['transformer_blocks']} transformer blocks, {sizes['text_layers']} text and "
        f"{sizes['vision_blocks']} vision blocks in the text encoder, {sizes['parameters_b']} B parameters, random "
        f"weights"
    )
    print("| phase | step | s | peak GiB | recomputed blocks | faces detected |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        peak = row.get("peak_gib")
        print(
            f"| {row['phase']} | {row.get('step', '')} | {row['s']} | {'-' if peak is None else peak} | "
            f"{row.get('recomputed_blocks', '')} | {row.get('detections', '')} |"
        )


if __name__ == "__main__":
    main()
