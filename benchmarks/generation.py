"""Images per second of the generation step: the stock per-image pipeline call against ours, on
equal work (the same jobs, seeds, sizes, steps and true CFG; the same images, PSNR printed).

CPU (default): the demo's tiny twin (var/models/demo, built if missing), side by side:

- the plain call: ``QwenImageEditPlusPipeline.__call__`` once per image with that image's seed;
- ours, one at a time: ``edit_candidates`` with ``candidates_batch=1`` (each job's prompt and
  references encoded once, the conditional and unconditional passes in one transformer call);
- ours, batched: ``edit_candidates`` with all K candidates of a job in one batch (one worker);
- Ray with 1 and 2 workers (``engine_rows``, CPU only; ``--no-ray`` leaves them out): the
  candidate stage of idglow.inference.candidates through ``run_stage``, each actor one thread
  (``num_cpus=1``) holding its own pipeline loaded from the models folder, one job per batch with
  its K candidates in one ``edit_candidates`` batch, on the same jobs, seeds, sizes and steps.
  Ray is started once for both rows (embedded, ``num_cpus=2``, at the first Ray row) and its
  start-up is printed apart; so is each row's start-up (actors started, the pipeline loaded, the
  same two-step warm-up the other rows have): a Ray row's seconds are its steady state, from
  its first batch's start to its last batch's end, and ``workers speed-up`` is 2 workers' images
  per second over 1 worker's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generation.py [--tiny] [--jobs 2] [--k 4] [--size 128] [--steps 8]

References are resized to diffusers' default budgets (about 1 MP for the VAE, 384² for the text
encoder), the only ones the plain call knows, so that both sides make the same images; on the
tiny twin that 1 MP VAE encode is most of a plain call's time. ``--tiny`` is the smallest
workload that gives 2 workers something to share (64², 4 steps, 4 jobs x K=2, one reference
each; the plain call on the first seed of each job, as its seconds per image do not depend on
the count; no one-at-a-time row): about 3 to 5 minutes, by the machine's load, which the output
prints at its start and end.

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
apart; ``--repeats N`` runs the rows N times in turn and keeps each row's fastest run.

Lossy options (idglow.acceleration, each off by default; ``--lossy``, which ``--tiny`` takes): a
second table after the rows, each option on the batched row's work (the same jobs, seeds, size,
steps and batch) on the same pipeline (applied, warmed up, timed, taken off again), with its
images per second, its speed-up over the lossless batched row, the lowest PSNR against the
lossless batched images at the same seeds, and the benchmark's own FaceSim and Aesthetic
(``evaluation.benchmark.image_scores`` with ``idglow.scoring.ImageScorer``, each image against its
job's reference portraits as condition images; the metric models of ``--models-dir``, in the
formats of ``--metrics-profile``: ``demo``, the tiny twin's, unless ``real`` is given) of its
images next to the lossless images', with the deltas and the faces found:

- the step cache, diffusers' First Block Cache at threshold T (``--first-block-cache T``, 0.05
  unless given; that flag alone adds this row only);
- the distilled LoRA given by ``--distilled-lora PATH`` at its own ``--distilled-steps`` (8; for
  runs of 8 steps or fewer, half) and ``--distilled-cfg`` (1): fewer steps are its point, and the
  row says so. ``--tiny`` without a path builds a LoRA of random weights locally
  (``write_random_lora``) and labels the row RANDOM: a dry run of the path, no distillation;
- fp8, torchao's dynamic-activation float8, last (it cannot be taken off): only where the device
  runs it (CUDA with compute capability ≥ 8.9, and not with ``--compile``); elsewhere the row
  says it was skipped and why.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generation.py --tiny --lossy
    python benchmarks/generation.py --gpu --steps 10 --lossy [--distilled-lora PATH]

    python benchmarks/generation.py --gpu [--k 4] [--steps 40] [--size 1024] [--plain-images 2] [--compile]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from PIL import Image

from idglow.acceleration import (
    Acceleration,
    AccelerationError,
    apply_acceleration,
    fp8_supported,
    remove_acceleration,
    write_random_lora,
)
from idglow.editing import ReferenceBudget, compile_repeated_blocks, edit_candidates
from idglow.generation import GenerationSettings
from idglow.inference.candidates import CandidateReplica, CandidateReplicaFactory, HubSpec, candidate_items
from idglow.paths import TableRoots

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


def engine_rows(engine: RayEngine) -> list[tuple[str, int, Callable[[], list[Image.Image]]]]:
    """The Ray engine's rows on the same workload, each (name, workers, a call that returns the
    workload's images in job order, each job's candidates in seed order)."""
    return [
        ("ray, 1 worker (batch K, steady state)", 1, lambda: engine.run(1)),
        ("ray, 2 workers (batch K, steady state)", 2, lambda: engine.run(2)),
    ]


class TimedCandidateReplica(CandidateReplica):
    """The candidate stage's replica as the stage builds it, on one thread, with the other rows'
    two-step warm-up call at load (so a row's first batch pays no first-call set-up), and the wall
    clock at the start and end of each batch (``describe``), for the steady-state window."""

    def __init__(self, factory: CandidateReplicaFactory, warm_up: Job, size: int, true_cfg_scale: float):
        torch.set_num_threads(1)  # one thread per actor, as the other rows (num_cpus=1 each)
        super().__init__(factory)
        edit_candidates(
            self.pipeline,
            warm_up.references,
            warm_up.prompt,
            budget=ReferenceBudget(128 * 128, 64 * 64),
            height=size,
            width=size,
            num_inference_steps=2,
            true_cfg_scale=true_cfg_scale,
            negative_prompt=NEGATIVE_PROMPT,
            generators=seeded(warm_up.seeds),
        )
        self.window = (0.0, 0.0)

    def run(self, items):
        started = time.time()
        images = super().run(items)
        self.window = (started, time.time())
        return images

    def describe(self, item, path):
        return {"batch_start": self.window[0], "batch_end": self.window[1]}


@dataclass(frozen=True)
class TimedFactory:
    factory: CandidateReplicaFactory
    warm_up: Job
    size: int
    true_cfg_scale: float

    def __call__(self) -> TimedCandidateReplica:
        return TimedCandidateReplica(self.factory, self.warm_up, self.size, self.true_cfg_scale)


@dataclass
class RayTimes:
    """What a Ray row's time is made of: ``startup`` from run_stage's call to the first batch's
    start (actors started, each loading the pipeline and running the warm-up), ``steady`` from the
    first batch's start to the last batch's end (the figure the table's img/s is made of)."""

    ray_init: float = 0.0  # ray.init, once for both rows
    startup: float = 0.0
    steady: float = 0.0
    total: float = 0.0
    per_worker: dict[str, tuple[int, float, float]] = field(default_factory=dict)  # items, busy s, first batch at


class RayEngine:
    """Ray started once (embedded, ``num_cpus`` 2, lazily at the first Ray row, so the other rows
    run without its processes) for the rows of 1 and 2 workers: run_stage over the candidate stage
    (idglow.inference.candidates: candidate_items, CandidateReplicaFactory with the workload's
    size, steps, true CFG, diffusers' budgets and each job's seeds; one job per batch, all its K
    candidates in one ``edit_candidates`` batch), references as PNG files (lossless) in a scratch
    storage root, each run's outputs in a fresh folder, read back in job and seed order."""

    def __init__(self, workload: Workload, warm_up: Job):
        import tempfile

        if workload.generator_dir is None:
            raise ValueError("the Ray rows load the pipeline from a folder (the CPU tiny twin)")
        self.workload, self.warm_up = workload, warm_up
        self.root = Path(tempfile.mkdtemp(prefix="idglow-generation-bench-"))
        self.roots = TableRoots(self.root, self.root)
        self.runs = 0
        self.ray_init: float | None = None
        self.times: dict[int, RayTimes] = {}
        conditions = []
        for j, job in enumerate(workload.jobs):
            paths = []
            for r, reference in enumerate(job.references):
                (self.root / "references").mkdir(exist_ok=True)
                reference.save(self.root / "references" / f"job{j}-{r}.png")
                paths.append(f"references/job{j}-{r}.png")
            conditions.append(paths)
        self.conditions = conditions

    def items(self, out_dir: str) -> pa.Table:
        records = [
            {
                "candidate_id": f"job{j}-k{k}",
                "job_id": f"job{j}",
                "path": f"{out_dir}/job{j}-k{k}.png",
                "seed": seed,
                "k": k,
                "prompt": job.prompt,
                "condition_paths": self.conditions[j],
                "n_subjects": len(job.references),
            }
            for j, job in enumerate(self.workload.jobs)
            for k, seed in enumerate(job.seeds)
        ]
        return candidate_items(pd.DataFrame(records))

    def run(self, workers: int) -> list[Image.Image]:
        import ray

        from idglow.inference.engine import RayOptions, init_ray, run_stage

        if not ray.is_initialized():
            # Ray renices its worker processes to 15 by default (RAY_worker_niceness): on a shared
            # machine they would then get less CPU than the in-process rows (niceness 0) for the
            # same work. 0 here, for equal priority; the stages themselves keep Ray's default.
            os.environ.setdefault("RAY_worker_niceness", "0")
            started = time.perf_counter()
            init_ray(RayOptions(num_cpus=2))
            self.ray_init = time.perf_counter() - started
        w = self.workload
        k = max(len(job.seeds) for job in w.jobs)
        settings = GenerationSettings(w.height, w.width, w.steps, w.true_cfg_scale, k, 0, DIFFUSERS_DEFAULTS)
        hub = HubSpec("demo", str(w.generator_dir.parent), device="cpu")
        factory = CandidateReplicaFactory(hub, settings, self.roots, count_faces=False, candidates_batch=k)
        self.runs += 1
        out_dir = f"ray-{workers}-{self.runs}"
        started = time.perf_counter(), time.time()
        result = run_stage(
            self.items(out_dir),
            TimedFactory(factory, self.warm_up, w.height, w.true_cfg_scale),
            self.root,
            stage=f"generation benchmark, {workers} worker(s)",
            options=RayOptions(workers=workers),
            batch_size=k,
            group_column="job_id",
        )
        total = time.perf_counter() - started[0]
        table = result.table
        first, last = min(table.column("batch_start").to_pylist()), max(table.column("batch_end").to_pylist())
        times = RayTimes(self.ray_init or 0.0, first - started[1], last - first, total)
        for row in table.select(["worker", "seconds", "batch_start"]).to_pylist():
            items, busy, start = times.per_worker.get(row["worker"], (0, 0.0, float("inf")))
            times.per_worker[row["worker"]] = (items + 1, busy + row["seconds"], min(start, row["batch_start"] - first))
        self.times[workers] = times
        images = []
        for path in table.column("output_path").to_pylist():
            with Image.open(self.root / path) as image:
                images.append(image.convert("RGB"))
        return images

    def close(self) -> None:
        import shutil

        import ray

        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(self.root, ignore_errors=True)


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


def load_average() -> str:
    """The machine's load (other people's processes share its cores), as ``uptime`` prints it."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def print_ray_times(kept: dict[int, RayTimes], ray_rows: dict[str, int]) -> None:
    """What the Ray rows' seconds leave out, and what their total was."""
    init = next(iter(kept.values())).ray_init
    print(f"ray rows: ray.init (embedded, num_cpus=2) {init:.1f} s, once for both rows, in neither row's seconds")
    for name, workers in ray_rows.items():
        t = kept[workers]
        spread = "; ".join(
            f"{n} items, busy {busy:.2f} s, first batch at +{start:.2f} s" for n, busy, start in t.per_worker.values()
        )
        print(
            f"  {name}: seconds = steady state {t.steady:.2f} s (first batch start to last batch end, all actors);"
            f" start-up {t.startup:.2f} s (actors started, pipeline loaded, 2-step warm-up); whole run_stage"
            f" {t.total:.2f} s; per worker: {spread}"
        )


def drawn_references(count: int, size: int, seed: int) -> list[Image.Image]:
    from gpu_rehearsal import drawn_portraits  # benchmarks/ is this script's folder, first on sys.path

    return drawn_portraits(count, size, seed)


def cpu_pipeline(models_dir: Path):
    from idglow.models.hub import ModelHub
    from idglow.models.tiny import ensure_tiny_models

    ensure_tiny_models(models_dir, seed=0, progress=False)
    return ModelHub("demo", models_dir, device="cpu").generator()


@dataclass(frozen=True)
class LossyRow:
    """A lossy option's row: its timed run (None: skipped, ``note`` says why) and the benchmark's
    mean FaceSim and Aesthetic of its images."""

    name: str
    row: Row | None
    note: str = ""
    face_sim: float | None = None
    aesthetic: float | None = None
    faces: str = ""  # faces found / faces the references ask for


class BenchmarkScores:
    """The benchmark's own metrics (``evaluation.benchmark.image_scores`` with
    ``idglow.scoring.ImageScorer``) of a row's images, each against its job's reference portraits
    as condition images and its prompt, the PNG files in a scratch folder."""

    def __init__(self, hub, workload: Workload):
        import tempfile

        from idglow.scoring import ImageScorer

        self.scorer, self.workload = ImageScorer(hub, progress=False), workload
        self.root = Path(tempfile.mkdtemp(prefix="idglow-generation-lossy-"))
        self.conditions = []
        for j, job in enumerate(workload.jobs):
            paths = []
            for r, reference in enumerate(job.references):
                path = self.root / f"reference-{j}-{r}.png"
                reference.save(path)
                paths.append(str(path))
            self.conditions.append(paths)

    def means(self, tag: str, images: list[Image.Image]) -> tuple[float, float, str]:
        """Mean FaceSim and mean Aesthetic of ``images`` (the workload's order), and the faces
        found of those asked for (FaceSim counts a portrait without a matching face as 0)."""
        from evaluation.benchmark import image_scores

        conditions = [self.conditions[j] for j, job in enumerate(self.workload.jobs) for _ in job.seeds]
        prompts = [job.prompt for job in self.workload.jobs for _ in job.seeds]
        paths = []
        for i, image in enumerate(images):
            path = self.root / f"{tag}-{i}.png"
            image.save(path)
            paths.append(str(path))
        scores = image_scores(self.scorer, paths, conditions, prompts)
        found = f"{sum(s.faces_found for s in scores)}/{sum(len(c) for c in conditions)}"
        return float(np.mean([s.face_sim for s in scores])), float(np.mean([s.aesthetic for s in scores])), found

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


def lossy_options(
    args, transformer, workload: Workload, device: torch.device, scratch: Path
) -> list[tuple[str, object]]:
    """(name, Acceleration or the reason it is skipped) of each lossy row, fp8 last (it cannot be
    taken off the pipeline again)."""
    threshold = 0.05 if args.first_block_cache is None else args.first_block_cache
    options: list[tuple[str, object]] = [(f"step cache (first block) {threshold:g}", Acceleration(threshold))]
    if not args.lossy:
        return options
    distilled_steps = args.distilled_steps or (8 if workload.steps > 8 else max(2, workload.steps // 2))
    lora, label = args.distilled_lora, "distilled LoRA"
    if lora is None and args.tiny:
        lora = write_random_lora(transformer, scratch / "random-lora")  # only the layers' shapes are read
        label = "RANDOM LoRA (dry run, no distillation)"
    if lora is None:
        options.append(("distilled LoRA", "skipped: give --distilled-lora PATH (a local LoRA folder or file)"))
    else:
        acceleration = Acceleration(
            distilled_lora=str(lora), distilled_steps=distilled_steps, distilled_true_cfg_scale=args.distilled_cfg
        )
        steps, cfg = acceleration.sampling(workload.steps, workload.true_cfg_scale)
        options.append((f"{label}, {steps} steps, CFG {cfg:g}", acceleration))
    if not fp8_supported(device):
        options.append(("fp8 (torchao float8)", f"skipped on {device}: it needs CUDA with compute capability ≥ 8.9"))
    elif importlib.util.find_spec("torchao") is None:
        options.append(("fp8 (torchao float8)", "skipped: torchao is not installed (make gpu-runtime, or idglow[fp8])"))
    elif args.compile:
        options.append(("fp8 (torchao float8)", "skipped: float8 layers cannot be taken off before --compile's row"))
    else:
        options.append(("fp8 (torchao float8)", Acceleration(fp8=True)))
    return options


def lossy_rows(
    args, pipeline, workload: Workload, warm_up: Workload, k: int, lossless: list[Image.Image], scores, device
) -> list[LossyRow]:
    """Each lossy option on the batched row's work (the same jobs, seeds, size, steps and batch;
    the distilled LoRA at its own fewer steps and CFG, its point), on the one pipeline: applied,
    warmed up, timed (``--repeats``), taken off again (fp8, last, stays)."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="idglow-generation-lora-"))
    rows = []
    for name, acceleration in lossy_options(args, pipeline.transformer, workload, device, scratch):
        if not isinstance(acceleration, Acceleration):
            rows.append(LossyRow(name, None, acceleration))
            continue
        steps, cfg = acceleration.sampling(workload.steps, workload.true_cfg_scale)
        work = replace(workload, steps=steps, true_cfg_scale=cfg)
        try:
            apply_acceleration(pipeline, acceleration)
        except AccelerationError as error:
            rows.append(LossyRow(name, None, f"skipped: {error}"))
            continue
        ours(pipeline, replace(warm_up, true_cfg_scale=cfg), 1, ReferenceBudget(128 * 128, 64 * 64))
        made: list[Image.Image] = []

        def run(work=work, made=made) -> list[Image.Image]:
            made[:] = ours(pipeline, work, k)
            return made

        best = None
        for _ in range(args.repeats):
            best = fastest(best, measure(name, run, dict(enumerate(lossless))))
        if not acceleration.fp8:
            remove_acceleration(pipeline)
        note = (
            ""
            if steps == workload.steps
            else f"{steps} steps, CFG {cfg:g} instead of {workload.steps}, CFG {workload.true_cfg_scale:g}: its point"
        )
        rows.append(LossyRow(name, best, note, *scores.means(f"lossy{len(rows)}", made)))
    return rows


def print_lossy(rows: list[LossyRow], lossless: Row, lossless_images: list[Image.Image], scores) -> None:
    """The lossy rows against the lossless batched row: img/s and speed-up, PSNR against its
    images at the same seeds, FaceSim and Aesthetic (the benchmark's) beside its own, and the deltas."""
    face, aesthetic, faces = scores.means("lossless", lossless_images)
    base = lossless.images / lossless.seconds
    print(
        "lossy options, each on the batched row's work (same jobs, seeds, size, steps, batch; PSNR, FaceSim and"
        " Aesthetic against the lossless batched images at the same seeds):"
    )
    header = f"{'row':<54}{'images':>7}{'img/s':>9}{'speed-up':>9}{'min PSNR':>10}"
    print(
        f"{header}{'faces':>7}{'FaceSim':>9}{'(lossless)':>11}{'delta':>9}{'Aesth.':>8}{'(lossless)':>11}{'delta':>9}"
    )
    print(
        f"{'lossless, batched (the reference)':<54}{lossless.images:>7}{base:>9.3f}{1:>8.2f}x{'inf':>10}{faces:>7}"
        f"{face:>9.3f}{face:>11.3f}{'-':>9}{aesthetic:>8.3f}{aesthetic:>11.3f}{'-':>9}"
    )
    for lossy in rows:
        if lossy.row is None:
            print(f"{lossy.name:<54}{lossy.note}")
            continue
        row, rate = lossy.row, lossy.row.images / lossy.row.seconds
        quality = "inf" if row.min_psnr == float("inf") else f"{row.min_psnr:.1f}"
        print(
            f"{lossy.name:<54}{row.images:>7}{rate:>9.3f}{rate / base:>8.2f}x{quality:>10}{lossy.faces:>7}"
            f"{lossy.face_sim:>9.3f}{face:>11.3f}{lossy.face_sim - face:>+9.4f}"
            f"{lossy.aesthetic:>8.3f}{aesthetic:>11.3f}{lossy.aesthetic - aesthetic:>+9.4f}"
            + (f"  ({lossy.note})" if lossy.note else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the smallest workload (64², 4 steps, 4 jobs x K=2, 1 reference; the plain call on 1 seed per job;"
        " no one-at-a-time row)",
    )
    parser.add_argument("--gpu", action="store_true", help="the real architecture, random weights, bf16")
    parser.add_argument("--jobs", type=int, default=None, help="jobs (CPU 2, GPU 1; --tiny 4)")
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
    parser.add_argument(
        "--lossy",
        action="store_true",
        help="add the lossy rows (step cache, distilled LoRA, fp8) with their FaceSim and Aesthetic cost",
    )
    parser.add_argument(
        "--distilled-lora",
        type=Path,
        default=None,
        metavar="PATH",
        help="--lossy: a few-step distilled LoRA (folder or .safetensors); --tiny without it: a random one",
    )
    parser.add_argument("--distilled-steps", type=int, default=None, help="its steps (8; at most 8 steps: half)")
    parser.add_argument("--distilled-cfg", type=float, default=1.0, help="its true-CFG scale (1)")
    parser.add_argument(
        "--metrics-profile",
        choices=("demo", "real"),
        default="demo",
        help="the lossy rows' metric models: --models-dir's in this profile's formats (demo: the tiny twin)",
    )
    parser.add_argument("--compile", action="store_true", help="add a row with the repeated block compiled")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray rows (CPU)")
    parser.add_argument(
        "--depth", type=int, default=60, help="--gpu: transformer blocks (60); the text encoder takes min(depth, 28)"
    )
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models" / "demo")
    args = parser.parse_args()
    gpu_defaults = args.gpu and not args.tiny
    jobs = args.jobs or (1 if args.gpu else 4 if args.tiny else 2)
    if args.tiny and args.plain_images is None and not args.gpu:
        args.plain_images = 1  # the plain call is per image: its seconds per image do not depend on the count
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
        f" {subjects} reference(s) at diffusers' budgets (1 MP VAE, 384² text); {load_average()}",
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
    one_at_a_time = (
        [] if args.tiny and not args.gpu else [("ours, one at a time (batch 1)", lambda: ours(pipeline, workload, 1))]
    )
    lossless: list[Image.Image] = []  # the batched row's images, what the lossy rows are compared with

    def run_batched() -> list[Image.Image]:
        lossless[:] = ours(pipeline, workload, k)
        return lossless

    cases = [(plain_name, run_plain), *one_at_a_time, (batched_name, run_batched)]
    if args.gpu or args.cfg_two_calls:
        cases.append(
            (f"ours, batched, CFG in 2 calls (batch {k})", lambda: ours(pipeline, workload, k, cfg_in_one_call=False))
        )
    engine = None if args.gpu or args.no_ray else RayEngine(workload, warm_up.jobs[0])
    ray_rows = {name: workers for name, workers, _ in engine_rows(engine)} if engine else {}
    cases.extend((name, run) for name, _, run in (engine_rows(engine) if engine else []))
    best: dict[str, Row] = {}
    kept: dict[int, RayTimes] = {}  # the Ray rows' times, of the run each row keeps
    try:
        for _ in range(args.repeats):  # the rows take turns, so a busy spell of the machine hits them alike
            for name, run in cases:
                row = measure(name, run, expected if name != plain_name else None)
                if name in ray_rows:  # img/s of the steady state; start-up and loading printed apart
                    times = engine.times[ray_rows[name]]
                    row = replace(row, seconds=times.steady)
                    if fastest(best.get(name), row) is row:
                        kept[ray_rows[name]] = times
                best[name] = fastest(best.get(name), row)
    finally:
        if engine:
            engine.close()
    lossy, scores = [], None
    if args.lossy or args.first_block_cache is not None:  # before --compile's row, which changes the transformer
        from idglow.models.hub import ModelHub
        from idglow.models.tiny import ensure_tiny_models

        transformer_device = next(pipeline.transformer.parameters()).device
        if args.metrics_profile == "demo":  # the tiny twin's metric models, built if missing
            ensure_tiny_models(args.models_dir, seed=0, progress=False)
        hub = ModelHub(args.metrics_profile, args.models_dir, device=transformer_device.type)
        scores = BenchmarkScores(hub, workload)
        lossy = lossy_rows(args, pipeline, workload, warm_up, k, lossless, scores, transformer_device)
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
    if scores is not None:
        print_lossy(lossy, best[batched_name], lossless, scores)
        scores.close()
    print(f"at the end: {load_average()}")
    if kept:
        print_ray_times(kept, ray_rows)
        one, two = (best[name] for name in ray_rows)
        print(f"workers speed-up: {(two.images / two.seconds) / (one.images / one.seconds):.2f}")
    ratio = (best[batched_name].images / best[batched_name].seconds) / (rows[0].images / rows[0].seconds)
    print(f"batched vs plain: {ratio:.2f}")


if __name__ == "__main__":
    main()
