"""Seconds per training step.

Demo profile (default): SFT without the ID loss, with the temporal gate, with a constant ID
loss, and a DPO step on the tiny generator, side by side in one run, with their ratios. Needs
the demo's shards (`make demo` first).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_step.py [--storage var/storage/demo] [--steps 6]

GPU (``--gpu``): our step on the real Qwen-Image-Edit-2511 transformer configuration (random
weights) against ../shared/bench/baseline_train_step.py at equal work, in the same call, with the
same allocator settings: every block recomputed against the baseline's default, none against its
``--no-ckpt``, our planner's choice beside the baseline's memory, then the ID path with the face
detector running and a FLOP check; see benchmarks/gpu_train_step.py and docs/benchmarks/README.md.

    python benchmarks/train_step.py --gpu [--rehearsal] [--out results.jsonl]
    python benchmarks/train_step.py --gpu --tiny [--rehearsal]   # a dry run of both on the CPU (2 layers)

``--rehearsal`` first runs benchmarks/gpu_rehearsal.py (the generator at full depth: one generation,
3 SFT steps with the ID loss, 2 DPO steps, seconds and peak memory per step) in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from training.dpo import DPOConfig
from training.dpo import train as train_dpo
from training.sft import SFTConfig
from training.sft import train as train_sft


def step_times(log: Path, skip: int = 1) -> list[float]:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [b["time"] - a["time"] for a, b in zip(rows[skip - 1 :], rows[skip:], strict=False)]


def samples_in(shards: Path) -> int:
    return json.loads((shards / "manifest.json").read_text())["samples"]


def timed(run, output: Path, warmup: int) -> float:
    """Median seconds per step from the loop's own log timestamps, after ``warmup`` steps (one
    epoch, so every sample's latents and prompt embeddings are cached, as in later epochs)."""
    run()
    return statistics.median(step_times(output / "log.jsonl", skip=warmup))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", type=Path, default=Path("var/storage/demo"))
    parser.add_argument("--models-dir", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--steps", type=int, default=12, help="timed steps after one warm-up epoch")
    parser.add_argument("--resolution", type=int, default=128)
    gpu = parser.add_argument_group("--gpu benchmark")
    gpu.add_argument("--gpu", action="store_true", help="the real transformer shape against the baseline")
    gpu.add_argument("--tiny", action="store_true", help="the baseline's toy shape (dry run on CPU)")
    gpu.add_argument("--layers", type=int, default=None, help="transformer blocks (2511 has 60; --tiny: 2)")
    gpu.add_argument(
        "--resolutions",
        type=int,
        nargs=2,
        default=None,
        help="large side (cases a, c, ID path) and small side (case b) (1024 512; tiny 128 64)",
    )
    gpu.add_argument("--refs", type=int, default=2)
    gpu.add_argument("--text", type=int, default=256, help="prompt tokens")
    gpu.add_argument("--lora-rank", type=int, default=32)
    gpu.add_argument(
        "--alloc-conf",
        default=None,
        help="PYTORCH_CUDA_ALLOC_CONF for ours and every baseline process (default: the environment's, "
        "else expandable_segments:True)",
    )
    gpu.add_argument("--budget-s", type=float, default=420, help="start no phase after this many seconds")
    gpu.add_argument(
        "--phases",
        default="a,b,c,id,flops",
        help="comma list of a, b, c, id, flops, dpo, compiled (see gpu_train_step)",
    )
    gpu.add_argument("--face-pack", default=None, help="an insightface pack for the ID path (default: the rehearsal's)")
    gpu.add_argument(
        "--no-calibrate",
        action="store_true",
        help="keep the detector's own threshold (a random detector then passes thousands of boxes to NMS)",
    )
    gpu.add_argument(
        "--rehearsal",
        action="store_true",
        help="first the full-depth rehearsal (benchmarks/gpu_rehearsal.py: one generation, 3 SFT steps with the ID "
        "loss, 2 DPO steps) in its own process, then the benchmark",
    )
    gpu.add_argument("--skip-baseline", action="store_true")
    gpu.add_argument(
        "--baseline", default=str(Path(__file__).resolve().parents[1].parent / "shared/bench/baseline_train_step.py")
    )
    gpu.add_argument("--out", default="gpu_train_step.jsonl")
    args = parser.parse_args()
    if args.gpu:
        import gpu_train_step  # beside this script; importing it does not touch CUDA

        # set before anything touches CUDA; the baseline's processes inherit the same value
        alloc_conf = args.alloc_conf or os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or gpu_train_step.DEFAULT_ALLOC_CONF
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = alloc_conf

        args.steps = 5 if args.steps == 12 else args.steps  # the baseline's default
        args.layers = args.layers or (2 if args.tiny else 60)
        args.resolutions = args.resolutions or ([128, 64] if args.tiny else [1024, 512])
        if args.rehearsal:  # its own process: its 57 GB of models are gone before the benchmark starts
            rehearsal = [sys.executable, str(Path(__file__).with_name("gpu_rehearsal.py"))]
            rehearsal += ["--out", str(Path(args.out).with_name("gpu_rehearsal.jsonl"))] + (
                ["--tiny"] if args.tiny else []
            )
            done = subprocess.run(rehearsal, check=False)  # a failed rehearsal must not cost the benchmark
            if done.returncode:
                print(f"rehearsal failed (exit {done.returncode}); the benchmark follows", flush=True)
        return gpu_train_step.main(args)
    torch.set_num_threads(1)
    generator = str(args.models_dir / "generator")
    pack = str(args.models_dir / "insightface" / "tiny_pack")
    n_sft, n_dpo = samples_in(args.storage / "sft_shards"), samples_in(args.storage / "dpo_shards")
    common = {"checkpoint_every": 10**6, "resolution": args.resolution, "reference_resolution": args.resolution}
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        sft_shards = str(args.storage / "sft_shards")
        for name, extra in (
            ("sft, no ID loss", {"modulation": "none"}),
            ("sft, temporal gate", {"modulation": "gate", "face_pack_dir": pack}),
            ("sft, constant ID loss", {"modulation": "constant", "face_pack_dir": pack}),
        ):
            out = work / name.replace(" ", "_").replace(",", "")
            config = SFTConfig(
                generator_dir=generator,
                shards=sft_shards,
                output_dir=str(out),
                steps=n_sft + args.steps,
                **common,
                **extra,
            )
            results[name] = timed(lambda c=config: train_sft(c), out, warmup=n_sft)
        sft = SFTConfig(
            generator_dir=generator, shards=sft_shards, output_dir=str(work / "sft_for_dpo"), steps=1, **common
        )
        checkpoint = train_sft(sft)
        out = work / "dpo"
        dpo = DPOConfig(
            generator_dir=generator,
            shards=str(args.storage / "dpo_shards"),
            output_dir=str(out),
            sft_checkpoint=str(checkpoint),
            steps=n_dpo + args.steps,
            **common,
        )
        results["dpo"] = timed(lambda: train_dpo(dpo), out, warmup=n_dpo)
        shutil.rmtree(work, ignore_errors=True)
    base = results["sft, no ID loss"]
    print(
        f"demo profile, {args.resolution}² targets, batch 1, CPU one thread, "
        f"median of {args.steps} steps after one epoch"
    )
    print(f"{'step':<24}{'s/step':>10}{'x no-ID SFT':>14}")
    for name, seconds in results.items():
        print(f"{name:<24}{seconds:>10.3f}{seconds / base:>14.2f}")


if __name__ == "__main__":
    main()
