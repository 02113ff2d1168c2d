"""Seconds per training step.

Demo profile (default): SFT without the ID loss, with the temporal gate, with a constant ID
loss, and a DPO step on the tiny generator, side by side in one run, with their ratios. Needs
the demo's shards (`make demo` first).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_step.py [--storage var/storage/demo] [--steps 6]

GPU (``--gpu``): the real Qwen-Image-Edit-2511 transformer configuration with random weights,
next to ../shared/bench/baseline_train_step.py in the same call; see benchmarks/gpu_train_step.py.

    python benchmarks/train_step.py --gpu [--layers 60] [--budget-s 420] [--out gpu_results.jsonl]
    python benchmarks/train_step.py --gpu --tiny --layers 2   # a dry run of that script on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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
    gpu.add_argument("--layers", type=int, default=60, help="transformer blocks (2511 has 60)")
    gpu.add_argument(
        "--resolutions", type=int, nargs=2, default=None, help="large and small side (1024 512; tiny 128 64)"
    )
    gpu.add_argument("--refs", type=int, default=2)
    gpu.add_argument("--text", type=int, default=256, help="prompt tokens")
    gpu.add_argument("--lora-rank", type=int, default=32)
    gpu.add_argument("--warmup", type=int, default=2)
    gpu.add_argument("--memory-fraction", type=float, default=0.9, help="share of GPU memory the planner may fill")
    gpu.add_argument("--budget-s", type=float, default=420, help="start no phase after this many seconds")
    gpu.add_argument(
        "--phases",
        default="sft,id,dpo,small,compiled",
        help="comma list of sft, id, dpo, small, compiled, compiled-small",
    )
    gpu.add_argument(
        "--checkpoint-blocks", type=int, default=None, help="fixed recomputed blocks instead of the planner"
    )
    gpu.add_argument("--no-compile", action="store_true", help="skip the compiled phase")
    gpu.add_argument("--skip-baseline", action="store_true")
    gpu.add_argument(
        "--baseline", default=str(Path(__file__).resolve().parents[1].parent / "shared/bench/baseline_train_step.py")
    )
    gpu.add_argument("--out", default="gpu_train_step.jsonl")
    args = parser.parse_args()
    if args.gpu:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        from gpu_train_step import main as gpu_main  # beside this script

        args.steps = 5 if args.steps == 12 else args.steps
        args.resolutions = args.resolutions or ([128, 64] if args.tiny else [1024, 512])
        return gpu_main(args)
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
