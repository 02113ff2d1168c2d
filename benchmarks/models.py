"""Load and run times of every demo-profile component, and the tiny generation at the demo
profile's reference budgets against diffusers' default ones (about 1 MP for the VAE), side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/models.py [--models-dir var/models/demo] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from idglow.data.faces import render_portrait, sample_style
from idglow.editing import ReferenceBudget, edit
from idglow.models.hub import ModelHub
from idglow.models.smoke import smoke_test
from idglow.profiles import load_profile

DIFFUSERS_DEFAULTS = ReferenceBudget(1024 * 1024, 384 * 384)  # QwenImageEditPlus' VAE_IMAGE_SIZE, CONDITION_IMAGE_SIZE


def portraits(n: int) -> list:
    return [
        render_portrait(sample_style(np.random.default_rng(i)), 256, np.random.default_rng(100 + i))[0]
        for i in range(n)
    ]


def generation_seconds(pipeline, references, budget: ReferenceBudget, repeats: int) -> float:
    times = []
    for seed in range(repeats):
        started = time.perf_counter()
        edit(
            pipeline,
            references,
            "A group photo of these people",
            budget=budget,
            height=64,
            width=64,
            num_inference_steps=4,
            generator=torch.Generator().manual_seed(seed),
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    hub = ModelHub("demo", args.models_dir, device=args.device)
    started = time.perf_counter()
    built = hub.prepare()
    print(f"tiny twins ready in {time.perf_counter() - started:.1f} s (built now: {built or 'none, cached'})")
    demo_budget = ReferenceBudget.of_profile(load_profile("demo", env={}))
    timings = smoke_test(hub, portraits(3), demo_budget)
    print(f"\ndevice: {hub.device}")
    print(f"{'step':<28}{'seconds':>10}")
    for name, value in timings.items():
        if name.endswith("_s"):
            print(f"{name:<28}{value:>10.4f}")

    pipeline = hub.generator()
    print(f"\n64x64, 4 steps, median of {args.repeats}:")
    print(f"{'references':<12}{'demo sizes (s)':>16}{'default sizes (s)':>20}{'ratio':>8}")
    for n in (2, 3):
        references = portraits(n)
        demo = generation_seconds(pipeline, references, demo_budget, args.repeats)
        default = generation_seconds(pipeline, references, DIFFUSERS_DEFAULTS, 1)
        print(f"{n:<12}{demo:>16.3f}{default:>20.3f}{default / demo:>8.1f}x")


if __name__ == "__main__":
    main()
