"""GPU training-step benchmark: the project's SFT and DPO steps on the real Qwen-Image-Edit-2511
transformer configuration (random weights, LoRA, bf16), next to the plain diffusers-style
baseline (../shared/bench/baseline_train_step.py) run on the same machine in the same call.

    python benchmarks/train_step.py --gpu [--layers 60] [--budget-s 480] [--out results.jsonl]

Phases, in this order, each skipped when the time budget is spent (results are appended to
``--out`` as they come, so a run cut short keeps what it measured):

1. 1024² SFT without the ID loss: the baseline, then ours.
2. 1024² SFT with a constant ID loss: the real Qwen-Image VAE (random weights) decodes the clean
   estimate with gradient; fixed face landmarks are injected because a random generator draws
   no faces (so alignment, the face encoder and the Hungarian loss really run). The encoder is a
   ResNet-50 with a 512-d head standing in for insightface's w600k_r50 (same family and cost
   class; its weights are not needed to time the path).
3. a 1024² DPO step (policy on chosen and rejected as one batch of 2, reference forward without
   gradient), against its FLOP bound of 8/3 SFT steps.
4. 512² SFT: the baseline, then ours.
5. 1024² SFT with the repeated block compiled (torch.compile), when time is left.

What makes ours faster is the training code itself, not benchmark settings: no prompt mask when
no prompt is padded (a mask forces SDPA off flash attention), selective gradient checkpointing
sized by a memory planner (the fewest recomputed blocks that fit), fp32 LoRA weights under bf16
autocast with fused AdamW, encodings cached (here: fixed tensors, as the cache hands them over).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

from idglow.models.tiny_generator import QWEN_IMAGE_SCHEDULER_CONFIG
from training.dpo import DPOConfig, dpo_loss
from training.identity import modulated_identity_term
from training.memory import plan_checkpointing
from training.sft import EncodedBatch, SFTConfig, checkpoint_blocks, optimizer_step, prepare_trainable, sft_loss

PEAK_FLOPS = 989e12  # dense bf16, H100/H200 SXM datasheet


def model_flops(n_params: int, layers: int, width: int, tokens: int, backward: bool = True) -> float:
    """The baseline's count: forward 2NT (+ attention), activation-gradient backward as much again;
    recomputation by checkpointing is not counted."""
    attention = layers * 4 * tokens * tokens * width
    forward = 2 * n_params * tokens + attention
    return 2 * forward if backward else forward


def on_cuda() -> bool:
    return torch.cuda.is_available()


def synchronize() -> None:
    if on_cuda():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if on_cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_bytes() -> float:
    return float(torch.cuda.max_memory_allocated()) if on_cuda() else float("nan")


def device_and_dtype() -> dict:
    return {"device": "cuda", "dtype": torch.bfloat16} if on_cuda() else {"device": "cpu", "dtype": torch.float32}


def random_batch(resolution: int, references: int, text: int, joint_dim: int, seed: int) -> EncodedBatch:
    """What the encoding cache hands the step for one sample, with random values."""
    side = resolution // 16
    tokens = side * side
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(1, tokens, 64, generator=generator)
    refs = torch.randn(1, tokens * references, 64, generator=generator)
    prompt = torch.randn(1, text, joint_dim, generator=generator)
    to = device_and_dtype()
    return EncodedBatch(x0.to(**to), refs.to(**to), prompt.to(**to), None, [(1, side, side)] * (1 + references))


class FixedFacesIdentity:
    """The ID term with the real VAE decoder and fixed landmarks for two faces (see phase 2)."""

    def __init__(self, resolution: int, tiny: bool, faces: int = 2):
        from insightface.utils.face_align import arcface_dst
        from torchvision.models import resnet50

        to = device_and_dtype()
        vae = AutoencoderKLQwenImage(base_dim=8) if tiny else AutoencoderKLQwenImage()
        self.vae = vae.to(**to).eval().requires_grad_(False)
        self.encoder = resnet50(num_classes=512).to(**to).eval().requires_grad_(False)
        scale = 0.3 * resolution / 112  # the 112 px ArcFace crop covers 30% of the image side
        self.landmarks = np.stack(
            [
                (arcface_dst - 56) * scale + np.array([resolution * (i + 0.5) / faces, resolution * 0.4])
                for i in range(faces)
            ]
        ).astype(np.float32)
        self.sources = F.normalize(torch.randn(faces, 512, generator=torch.Generator().manual_seed(7)), dim=-1).to(
            to["device"]
        )
        self.resolution = resolution

    def __call__(self, x_t, velocity, sigma, lambdas, samples):
        return modulated_identity_term(
            x_t,
            velocity,
            sigma,
            lambdas,
            self.resolution,
            self.resolution,
            self.vae,
            [self.sources] * x_t.shape[0],
            lambda image: self.landmarks,
            self.encoder,
        )


def timed_steps(run: Callable[[], None], warmup: int, steps: int) -> tuple[float, float]:
    """Seconds per step and peak GiB after ``warmup`` steps."""
    for _ in range(warmup):
        run()
    synchronize()
    reset_peak()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    synchronize()
    return (time.perf_counter() - start) / steps, peak_bytes() / 2**30


def plan_for(run: Callable[[], None], transformer, budget_bytes: float) -> tuple[int, dict]:
    """The training loop's memory planner (training.memory) over a full step; on the CPU (the
    --tiny dry run) there are no memory figures, and every block is recomputed."""
    layers = len(transformer.transformer_blocks)
    if not on_cuda():
        return checkpoint_blocks(transformer, layers), {}
    return plan_checkpointing(run, lambda count: checkpoint_blocks(transformer, count), layers, budget_bytes)


class Harness:
    """One transformer (built once) with a LoRA, re-planned per phase."""

    def __init__(self, args):
        self.args = args
        torch.manual_seed(0)
        to = device_and_dtype()
        shape = {"num_layers": args.layers, "zero_cond_t": True}
        if args.tiny:  # the baseline's --tiny shape, for a dry run on CPU
            shape.update(attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
        torch.set_default_dtype(to["dtype"])
        with torch.device(to["device"]):
            self.transformer = QwenImageTransformer2DModel(**shape)
        torch.set_default_dtype(torch.float32)
        self.transformer.requires_grad_(False)
        self.n_params = sum(p.numel() for p in self.transformer.parameters())
        self.config = SFTConfig(
            generator_dir="",
            shards="",
            output_dir="",
            lora_rank=args.lora_rank,
            modulation="none",
            gradient_checkpoint_blocks=-1,
        )
        _, self.parameters, self.optimizer = prepare_trainable(self.transformer, self.config)
        self.scheduler = FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG)
        self.generator = torch.Generator().manual_seed(0)
        self.width = self.transformer.config.num_attention_heads * self.transformer.config.attention_head_dim
        self.budget = torch.cuda.get_device_properties(0).total_memory * args.memory_fraction if on_cuda() else 0.0

    def sft_runner(self, batch: EncodedBatch, config: SFTConfig, identity=None) -> Callable[[], None]:
        def step_fn(b):
            return sft_loss(self.transformer, self.scheduler, b, ["direct_fusion"], config, self.generator, identity)

        return lambda: optimizer_step(step_fn, lambda: batch, self.parameters, self.optimizer, config)

    def dpo_runner(self, chosen: EncodedBatch, rejected_x0: torch.Tensor, config: DPOConfig) -> Callable[[], None]:
        def step_fn(b):
            return dpo_loss(self.transformer, self.scheduler, b, rejected_x0, config, self.generator)

        return lambda: optimizer_step(step_fn, lambda: chosen, self.parameters, self.optimizer, config)

    def measure(
        self, name: str, run: Callable[[], None], resolution: int, pairs: bool = False, plan: bool = True
    ) -> dict:
        if plan and self.args.checkpoint_blocks is not None:  # a fixed count, to compare paths at equal recomputation
            checkpoint_blocks(self.transformer, self.args.checkpoint_blocks)
            plan = False
        count, plan_info = (
            plan_for(run, self.transformer, self.budget)
            if plan
            else (sum(b.recompute_in_backward for b in self.transformer.transformer_blocks), {})
        )
        seconds, peak = timed_steps(run, self.args.warmup, self.args.steps)
        side = resolution // 16
        image_tokens = side * side * (1 + self.args.refs)
        tokens = image_tokens + self.args.text
        flops = model_flops(self.n_params, self.args.layers, self.width, tokens)
        if pairs:  # policy on chosen and rejected with gradient, reference forward on both without
            flops = 2 * flops + 2 * model_flops(self.n_params, self.args.layers, self.width, tokens, backward=False)
        samples = 2 if pairs else 1
        return {
            "run": name,
            "who": "idglow",
            "res": resolution,
            "layers": self.args.layers,
            "params_b": round(self.n_params / 1e9, 3),
            "checkpointed_blocks": count,
            **plan_info,
            "s_per_step": round(seconds, 3),
            "image_tokens_per_s": round(samples * image_tokens / seconds, 1),
            "tflops_per_s": round(flops / seconds / 1e12, 1),
            "mfu_vs_989": round(flops / seconds / PEAK_FLOPS, 3),
            "peak_gib": round(peak, 1),
        }


def run_baseline(path: Path, resolution: int, args) -> dict:
    command = [
        sys.executable,
        str(path),
        "--res",
        str(resolution),
        "--layers",
        str(args.layers),
        "--steps",
        str(args.steps),
        "--refs",
        str(args.refs),
        "--text",
        str(args.text),
    ] + (["--tiny"] if args.tiny else [])
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}  # the baseline as it ships
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        return {"run": f"sft {resolution}", "who": "baseline", "error": done.stderr[-2000:]}
    return {"run": f"sft {resolution}", "who": "baseline", **json.loads(done.stdout.strip().splitlines()[-1])}


def main(args) -> None:
    if not on_cuda() and not args.tiny:
        raise SystemExit("--gpu needs a CUDA device (or --tiny for a dry run of the script on CPU)")
    large, small = args.resolutions
    start = time.monotonic()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []

    def record(row: dict) -> None:
        row = {
            "device": torch.cuda.get_device_name() if on_cuda() else "cpu",
            "elapsed_s": round(time.monotonic() - start, 1),
            **row,
        }
        results.append(row)
        with open(out, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def time_left() -> bool:
        return time.monotonic() - start < args.budget_s

    baseline = Path(args.baseline)
    if baseline.exists() and not args.skip_baseline:  # before ours: two 20 B models do not share 80 GB
        for resolution in (large, small):
            record(run_baseline(baseline, resolution, args))
    elif not args.skip_baseline:
        record({"run": "baseline", "error": f"baseline script not found: {baseline}"})

    harness = Harness(args)
    joint = harness.transformer.config.joint_attention_dim
    batch = random_batch(large, args.refs, args.text, joint, seed=1)
    sft = harness.config
    phases = set(args.phases.split(","))
    if "sft" in phases or "compiled" in phases:
        record(harness.measure(f"sft {large}, no ID loss", harness.sft_runner(batch, sft), large))
        plain_large = results[-1]["checkpointed_blocks"]
    if time_left() and "id" in phases:
        identity = FixedFacesIdentity(large, args.tiny)
        constant = SFTConfig(**{**sft.__dict__, "modulation": "constant"})
        record(harness.measure(f"sft {large}, constant ID loss", harness.sft_runner(batch, constant, identity), large))
        del identity
    if time_left() and "dpo" in phases:
        rejected = random_batch(large, args.refs, args.text, joint, seed=2).x0
        dpo = DPOConfig(**{**sft.__dict__})
        record(harness.measure(f"dpo {large}", harness.dpo_runner(batch, rejected, dpo), large, pairs=True))
    if time_left() and "small" in phases:
        small_batch = random_batch(small, args.refs, args.text, joint, seed=3)
        record(harness.measure(f"sft {small}, no ID loss", harness.sft_runner(small_batch, sft), small))
    if time_left() and "compiled" in phases and not args.no_compile:
        checkpoint_blocks(harness.transformer, plain_large)
        harness.transformer.compile_repeated_blocks(dynamic=False)
        try:
            record(
                harness.measure(f"sft {large}, no ID loss, compiled", harness.sft_runner(batch, sft), large, plan=False)
            )
            if "compiled-small" in phases:
                small_batch = random_batch(small, args.refs, args.text, joint, seed=3)
                record(
                    harness.measure(f"sft {small}, no ID loss, compiled", harness.sft_runner(small_batch, sft), small)
                )
        except Exception as error:  # a compiler failure must not lose the summary of what was measured
            record({"run": f"sft {large}, no ID loss, compiled", "who": "idglow", "error": repr(error)[-2000:]})
    summarise(results, large, small)


def summarise(results: list[dict], large: int, small: int) -> None:
    ours = {r["run"]: r for r in results if r.get("who") == "idglow" and "s_per_step" in r}
    base = {r["run"]: r for r in results if r.get("who") == "baseline" and "s_per_step" in r}
    print("\nrun                                   s/step   baseline   speed-up   MFU    peak GiB  recomputed blocks")
    compared = {
        f"sft {large}, no ID loss": f"sft {large}",
        f"sft {small}, no ID loss": f"sft {small}",
        f"sft {large}, no ID loss, compiled": f"sft {large}",
    }
    for name, row in ours.items():
        reference = base.get(compared.get(name, ""))
        speedup = f"{reference['s_per_step'] / row['s_per_step']:.2f}x" if reference else "-"
        print(
            f"{name:<36}{row['s_per_step']:>8.3f}{(reference or {}).get('s_per_step', float('nan')):>11.3f}"
            f"{speedup:>11}{row['mfu_vs_989']:>7.3f}{row['peak_gib']:>10.1f}{row['checkpointed_blocks']:>10}"
        )
    plain, constant, dpo = (
        ours.get(f"{k} {large}{rest}")
        for k, rest in (("sft", ", no ID loss"), ("sft", ", constant ID loss"), ("dpo", ""))
    )
    if plain and constant:
        print(
            f"ID path, added seconds per {large}² image with lambda > 0: "
            f"{constant['s_per_step'] - plain['s_per_step']:.3f}"
        )
    if plain and dpo:
        print(f"DPO step / SFT step: {dpo['s_per_step'] / plain['s_per_step']:.2f} (FLOP bound 8/3 = 2.67)")
