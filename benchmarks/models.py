"""Load and run times of every demo-profile component, and the tiny generation against the
pipeline's default reference sizes (about 1 MP for the VAE), side by side.

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
from idglow.models.hub import DEMO_CONDITION_IMAGE_PIXELS, DEMO_VAE_IMAGE_PIXELS, ModelHub, set_pipeline_reference_sizes
from idglow.models.smoke import smoke_test


def portraits(n: int) -> list:
    return [
        render_portrait(sample_style(np.random.default_rng(i)), 256, np.random.default_rng(100 + i))[0]
        for i in range(n)
    ]


def generation_seconds(pipeline, references, repeats: int) -> float:
    times = []
    for seed in range(repeats):
        started = time.perf_counter()
        pipeline(
            image=references,
            prompt="A group photo of these people",
            height=64,
            width=64,
            num_inference_steps=4,
            true_cfg_scale=1.0,
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
    timings = smoke_test(hub, portraits(3))
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
        set_pipeline_reference_sizes(DEMO_VAE_IMAGE_PIXELS, DEMO_CONDITION_IMAGE_PIXELS)
        patched = generation_seconds(pipeline, references, args.repeats)
        set_pipeline_reference_sizes(1024 * 1024, 384 * 384)
        default = generation_seconds(pipeline, references, 1)
        set_pipeline_reference_sizes(DEMO_VAE_IMAGE_PIXELS, DEMO_CONDITION_IMAGE_PIXELS)
        print(f"{n:<12}{patched:>16.3f}{default:>20.3f}{default / patched:>8.1f}x")


if __name__ == "__main__":
    main()
