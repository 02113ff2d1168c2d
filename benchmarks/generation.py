"""Images per second of the generation step: the stock per-image pipeline call against ours, on
equal work (the same jobs, seeds, sizes, steps and true CFG; the same images, PSNR printed).

CPU (default): the demo's tiny twin (var/models/demo, built if missing), side by side:

- the plain call: ``QwenImageEditPlusPipeline.__call__`` once per image with that image's seed;
- ours, one at a time: ``edit_candidates`` with ``candidates_batch=1`` (each job's prompt and
  references encoded once, the conditional and unconditional passes in one transformer call);
- ours, batched: ``edit_candidates`` with all K candidates of a job in one batch (one worker);
- the rows ``engine_rows`` adds (the Ray engine with 1 and 2 workers, once it exists).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generation.py [--tiny] [--jobs 2] [--k 4] [--size 128] [--steps 8]

References are resized to diffusers' default budgets (about 1 MP for the VAE, 384² for the text
encoder), the only ones the plain call knows, so that both sides make the same images; on the
tiny twin that 1 MP VAE encode is most of a plain call's time. ``--tiny`` is the smallest
workload (64², 4 steps, 2 jobs x K=2, one reference each: about 90 s).

GPU (``--gpu``, where a GPU is lent): the real Qwen-Image-Edit-2511 architecture (60 transformer
blocks, the rehearsal's Qwen2.5-VL-7B-wide text encoder, the real VAE; random weights, bf16,
built on the GPU by benchmarks/gpu_rehearsal.py's ``build_pipeline``), 1024², 40 steps, true CFG
4.0, one job of K=4 from two drawn portraits; seconds per image and peak memory
(``torch.cuda.max_memory_allocated``) per row. A further row runs the batch with true CFG's two
passes as two unmasked calls (``cfg_in_one_call=False``; ``--cfg-two-calls`` adds it on the
CPU): one call needs a padding mask, which keeps CUDA's SDPA off its flash kernel, so that row
says which of the two is faster there. ``--gpu --tiny`` is a dry run of this path on the CPU
(the tiny twin built in memory).

Either: ``--plain-images N`` times the plain call on the first N seeds of each job only (it is
per image, so its seconds per image do not depend on N); ``--compile`` adds a row with the
transformer's repeated block compiled (``compile_repeated_blocks``), its compilation timed
apart; ``--first-block-cache T`` adds a lossy row, the batch with diffusers' First Block Cache at
threshold T (``enable_first_block_cache``; off by default), whose PSNR says what it costs;
``--repeats N`` runs the rows N times in turn and keeps each row's fastest run.

    python benchmarks/generation.py --gpu [--k 4] [--steps 40] [--size 1024] [--plain-images 2] [--compile]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from idglow.editing import ReferenceBudget, compile_repeated_blocks, edit_candidates, enable_first_block_cache

REPO = Path(__file__).resolve().parent.parent
DIFFUSERS_DEFAULTS = ReferenceBudget(1024 * 1024, 384 * 384)  # QwenImageEditPlus' VAE_IMAGE_SIZE, CONDITION_IMAGE_SIZE
PROMPT = "A group photo of these people, smiling in a park."
NEGATIVE_PROMPT = " "  # generate_candidates' negative prompt under true CFG


@dataclass(frozen=True)
class Job:
    references: list[Image.Image]
    prompt: str
    seeds: list[int]


@dataclass(frozen=True)
class Workload:
    """What every row generates: each job's candidates, one per seed, at the same settings."""

    jobs: list[Job]
    height: int
    width: int
    steps: int
    true_cfg_scale: float
    generator_dir: Path | None  # where a worker process loads the pipeline from (None: built in memory)

    @property
    def images(self) -> int:
        return sum(len(job.seeds) for job in self.jobs)


@dataclass(frozen=True)
class Row:
    name: str
    images: int
    seconds: float
    peak_gib: float | None
    min_psnr: float | None  # against the plain call's images at the same seeds


def seeded(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]  # as generate_candidates seeds


def plain(pipeline, workload: Workload, per_job: int | None = None) -> list[Image.Image]:
    """The stock pipeline call, one image per call with its own generator (the first ``per_job``
    seeds of each job; all by default)."""
    return [
        pipeline(
            image=job.references,
            prompt=job.prompt,
            negative_prompt=NEGATIVE_PROMPT,
            true_cfg_scale=workload.true_cfg_scale,
            height=workload.height,
            width=workload.width,
            num_inference_steps=workload.steps,
            generator=generator,
        ).images[0]
        for job in workload.jobs
        for generator in seeded(job.seeds[:per_job])
    ]


def ours(
    pipeline,
    workload: Workload,
    candidates_batch: int,
    budget: ReferenceBudget = DIFFUSERS_DEFAULTS,
    cfg_in_one_call: bool = True,
) -> list[Image.Image]:
    """Our step: ``edit_candidates`` per job, as generate_candidates calls it, at the plain call's budgets."""
    return [
        image
        for job in workload.jobs
        for image in edit_candidates(
            pipeline,
            job.references,
            job.prompt,
            budget=budget,
            height=workload.height,
            width=workload.width,
            num_inference_steps=workload.steps,
            true_cfg_scale=workload.true_cfg_scale,
            negative_prompt=NEGATIVE_PROMPT,
            generators=seeded(job.seeds),
            candidates_batch=candidates_batch,
            cfg_in_one_call=cfg_in_one_call,
        )
    ]


def engine_rows(workload: Workload) -> list[tuple[str, Callable[[], list[Image.Image]]]]:
    """Rows of other engines on the same workload, each (name, a call that returns the workload's
    images in job order, each job's candidates in seed order). The Ray engine of idglow.inference
    adds "ray, 1 worker" and "ray, 2 workers" here: workers that load the pipeline from
    ``workload.generator_dir`` and run ``edit_candidates`` per job; they are timed and compared
    with the plain call like the rows above. None yet."""
    return []


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255**2 / error))


def on_cuda() -> bool:
    return torch.cuda.is_available()


def synchronize() -> None:
    if on_cuda():
        torch.cuda.synchronize()


def measure(name: str, run: Callable[[], list[Image.Image]], expected: dict[int, Image.Image] | None) -> Row:
    """Time ``run`` (peak device memory from a reset); its images against ``expected``, the plain
    call's images by their position in the workload (all of them, or the first seeds of each job)."""
    if on_cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    synchronize()
    started = time.perf_counter()
    images = run()
    synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_cuda() else None
    lowest = None if expected is None else min(psnr(images[i], image) for i, image in expected.items())
    return Row(name, len(images), seconds, peak, lowest)


def fastest(best: Row | None, row: Row) -> Row:
    """The faster of two runs of a row (the other engineers' processes share this machine's cores)."""
    return row if best is None or row.seconds < best.seconds else best


def plain_positions(workload: Workload, per_job: int | None) -> list[int]:
    """Where the plain call's images (the first ``per_job`` seeds of each job) sit in the workload's order."""
    positions, start = [], 0
    for job in workload.jobs:
        positions.extend(range(start, start + len(job.seeds[:per_job])))
        start += len(job.seeds)
    return positions


def print_rows(rows: list[Row]) -> None:
    base = rows[0].images / rows[0].seconds
    header = f"{'row':<42}{'images':>7}{'seconds':>9}{'img/s':>9}{'s/img':>8}{'vs plain':>9}"
    print(f"{header}{'peak GiB':>9}{'min PSNR dB':>12}")
    for row in rows:
        rate = row.images / row.seconds
        peak = "-" if row.peak_gib is None else f"{row.peak_gib:.1f}"
        quality = "-" if row.min_psnr is None else ("inf" if row.min_psnr == float("inf") else f"{row.min_psnr:.1f}")
        print(
            f"{row.name:<42}{row.images:>7}{row.seconds:>9.2f}{rate:>9.3f}{1 / rate:>8.2f}{rate / base:>8.2f}x"
            f"{peak:>9}{quality:>12}"
        )


def drawn_references(count: int, size: int, seed: int) -> list[Image.Image]:
    from gpu_rehearsal import drawn_portraits  # benchmarks/ is this script's folder, first on sys.path

    return drawn_portraits(count, size, seed)


def cpu_pipeline(models_dir: Path):
    from idglow.models.hub import ModelHub
    from idglow.models.tiny import ensure_tiny_models

    ensure_tiny_models(models_dir, seed=0, progress=False)
    return ModelHub("demo", models_dir, device="cpu").generator()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tiny", action="store_true", help="the smallest workload (64², 4 steps, 2 jobs x K=2, 1 reference)"
    )
    parser.add_argument("--gpu", action="store_true", help="the real architecture, random weights, bf16")
    parser.add_argument("--jobs", type=int, default=None, help="jobs (CPU 2, GPU 1)")
    parser.add_argument("--k", type=int, default=None, help="candidates per job (4; --tiny 2)")
    parser.add_argument("--size", type=int, default=None, help="image side (CPU 128, GPU 1024; --tiny 64)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (CPU 8, GPU 40; --tiny 4)")
    parser.add_argument("--true-cfg", type=float, default=4.0)
    parser.add_argument("--subjects", type=int, default=None, help="reference portraits per job (2; --tiny 1)")
    parser.add_argument("--plain-images", type=int, default=None, help="time the plain call on this many seeds per job")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row, the fastest kept")
    parser.add_argument(
        "--cfg-two-calls", action="store_true", help="add the batched row with CFG's passes in two calls (--gpu: on)"
    )
    parser.add_argument(
        "--first-block-cache", type=float, default=None, metavar="T", help="add a lossy row: First Block Cache at T"
    )
    parser.add_argument("--compile", action="store_true", help="add a row with the repeated block compiled")
    parser.add_argument(
        "--depth", type=int, default=60, help="--gpu: transformer blocks (60); the text encoder takes min(depth, 28)"
    )
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models" / "demo")
    args = parser.parse_args()
    gpu_defaults = args.gpu and not args.tiny
    jobs = args.jobs or (1 if args.gpu else 2)
    k = args.k or (2 if args.tiny else 4)
    size = args.size or (64 if args.tiny else 1024 if gpu_defaults else 128)
    steps = args.steps or (4 if args.tiny else 40 if gpu_defaults else 8)
    subjects = args.subjects or (1 if args.tiny else 2)

    if gpu_defaults and not on_cuda():
        parser.error("--gpu needs CUDA; --gpu --tiny is its dry run on the CPU")
    if args.gpu:
        from gpu_rehearsal import build_pipeline

        pipeline, generator_dir = build_pipeline(tiny=not on_cuda(), depth=args.depth), None
        device = f"{torch.cuda.get_device_name()} (bf16, {args.depth} blocks)" if on_cuda() else "cpu (dry run)"
    else:
        pipeline, generator_dir = cpu_pipeline(args.models_dir), args.models_dir / "generator"
        device = f"cpu, tiny twin, {torch.get_num_threads()} thread(s)"
    workload = Workload(
        [
            Job(drawn_references(subjects, 256, seed=job), PROMPT, [1000 * job + i for i in range(k)])
            for job in range(jobs)
        ],
        size,
        size,
        steps,
        args.true_cfg,
        generator_dir,
    )
    print(
        f"generation step on {device}: {jobs} job(s) x K={k}, {size}x{size}, {steps} steps, true CFG {args.true_cfg},"
        f" {subjects} reference(s) at diffusers' budgets (1 MP VAE, 384² text)",
        flush=True,
    )
    # first-call set-up (kernels, allocator) out of every row; two steps, as one step's sigma
    # schedule divides zero by zero (shift_terminal); small references, as their size is not the point
    warm_up = Workload([Job(workload.jobs[0].references, PROMPT, [0])], size, size, 2, args.true_cfg, generator_dir)
    small = ReferenceBudget(128 * 128, 64 * 64)
    ours(pipeline, warm_up, 1, small)

    expected: dict[int, Image.Image] = {}  # the plain call's images, what every other row is compared with

    def run_plain() -> list[Image.Image]:
        made = plain(pipeline, workload, args.plain_images)
        expected.update(zip(plain_positions(workload, args.plain_images), made, strict=True))
        return made

    plain_name, batched_name = "plain pipeline call (per image)", f"ours, batched (batch {k}, 1 worker)"
    cases = [
        (plain_name, run_plain),
        ("ours, one at a time (batch 1)", lambda: ours(pipeline, workload, 1)),
        (batched_name, lambda: ours(pipeline, workload, k)),
    ]
    if args.gpu or args.cfg_two_calls:
        cases.append(
            (f"ours, batched, CFG in 2 calls (batch {k})", lambda: ours(pipeline, workload, k, cfg_in_one_call=False))
        )
    cases.extend(engine_rows(workload))
    best: dict[str, Row] = {}
    for _ in range(args.repeats):  # the rows take turns, so a busy spell of the machine hits them alike
        for name, run in cases:
            best[name] = fastest(best.get(name), measure(name, run, expected if name != plain_name else None))
    if args.first_block_cache is not None:  # lossy: its PSNR column is what it costs
        enable_first_block_cache(pipeline, args.first_block_cache)
        name = f"ours, batched, first-block cache {args.first_block_cache:g} (lossy)"
        for _ in range(args.repeats):
            best[name] = fastest(best.get(name), measure(name, lambda: ours(pipeline, workload, k), expected))
        pipeline.transformer.disable_cache()
    compile_seconds = None
    if args.compile:  # after the eager rows: compiling changes the transformer in place
        started = time.perf_counter()
        compile_repeated_blocks(pipeline, fullgraph=True)
        ours(pipeline, replace(warm_up, jobs=workload.jobs[:1]), k)  # compiled at the timed rows' shapes
        compile_seconds = time.perf_counter() - started
        name = f"ours, batched, compiled (batch {k})"
        for _ in range(args.repeats):
            best[name] = fastest(best.get(name), measure(name, lambda: ours(pipeline, workload, k), expected))
    rows = list(best.values())
    print_rows(rows)
    if compile_seconds is not None:
        print(f"compilation (compile_repeated_blocks, with a first two-step call): {compile_seconds:.1f} s")
    ratio = (best[batched_name].images / best[batched_name].seconds) / (rows[0].images / rows[0].seconds)
    print(f"batched vs plain: {ratio:.2f}")


if __name__ == "__main__":
    main()
