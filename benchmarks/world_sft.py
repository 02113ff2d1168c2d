"""Study: does SFT with the identity loss keep the people better than SFT without it? (issue #14)

Table 3's first rows on the demo world, outside Dagster so that they can run long enough to
tell: from the demo's base generator (the committed world generator, ``committed_pipeline``),
one fresh LoRA per configuration of ``--configurations`` (``training.sft.SFTConfig.modulation``:
``none`` is SFT without the ID loss, ``constant``, ``task`` the task-adaptive lambda(t):
annealing for Task 1, the gate for Task 2) is trained for the same steps on the same pairs in
the same order, with the same t and noise per step: the world's portraits -> group scenes of both
tasks (new people, ``draw_pair``), the drawn scene as the target. Each step is
``training.sft.sft_loss`` with the run's ``training.identity.IdentityLoss`` over the demo face
pack, as the pipeline's SFT runs it. Then every configuration, and the base, generates the same
held-out groups (another rng stream) as ``benchmarks/world_generator.py`` does and is scored the
same way: FaceSim with its bootstrap 95% interval, the missing-face rate, Task 2's child rate.
The ID loss's own figures along the run (its value, the faces it found per t-bin) are printed
per configuration.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/world_sft.py --steps 2000 --pairs 2000 --groups 120 \
        --set learning_rate=1e-3 lambda_id=1.0

docs/models.md ("SFT from the committed base") gives the runs and their figures.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from world_generator import _coerce, generate, held_out_groups, score, summarise  # benchmarks/ is first on sys.path

from idglow.models.hub import load_face_analysis
from idglow.models.world_generator import (
    _EncodingSettings,
    committed_pipeline,
    committed_stamp,
    config_of,
    draw_pair,
)
from training.checkpoints import add_lora
from training.data import Sample
from training.encodings import encode_sample, stack
from training.identity import IdentityLoss
from training.sft import SFTConfig, sft_loss

REPO = Path(__file__).resolve().parents[1]


def training_samples(pipeline, world_config, pairs: int, seed: int):
    """``pairs`` new pairs of both tasks as SFT samples with their encodings, by subject count."""
    rng = np.random.default_rng([seed, 51])
    settings = _EncodingSettings(world_config.resolution, world_config.reference_budget)
    by_count: dict[int, list[tuple[Sample, object]]] = {}
    with torch.no_grad():
        for i in range(pairs):
            pair = draw_pair(rng, world_config)
            sample = Sample(
                f"sft-{seed}-{i}",
                {"prompt": pair.prompt, "n_subjects": len(pair.portraits), "task": pair.task},
                {"target": pair.scene},
                pair.portraits,
            )
            by_count.setdefault(len(pair.portraits), []).append((sample, encode_sample(pipeline, sample, settings)))
    return by_count, settings


def train_configuration(
    pipeline, by_count, settings, config: SFTConfig, face_pack: Path, adapter: str, fixed_batch: bool = False
) -> list[dict]:
    """A fresh LoRA ``adapter`` trained with ``config``; the batch of each step (its subject count
    and samples) and its t and noise are drawn from (seed, step), so every configuration sees the
    same ones. ``fixed_batch`` draws every step's as step 0's: whether the LoRA can lower the loss
    on one batch at all."""
    transformer = pipeline.transformer
    add_lora(transformer, config, adapter_name=adapter)
    transformer.set_adapter(adapter)
    transformer.enable_adapters()
    transformer.train()
    parameters = [p for name, p in transformer.named_parameters() if adapter in name]
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    with_pack = replace(config, face_pack_dir=str(face_pack))
    identity = None if config.modulation == "none" else IdentityLoss(pipeline, with_pack)
    counts = sorted(by_count)
    report_every = 10 if fixed_batch else 50
    log = []
    for step in range(config.steps):
        drawn = 0 if fixed_batch else step
        rng = np.random.default_rng([config.seed, drawn])
        n = counts[int(rng.integers(len(counts)))]
        chosen = rng.choice(len(by_count[n]), size=config.batch_size, replace=False)
        samples = [by_count[n][i][0] for i in chosen]
        batch = stack([by_count[n][i][1] for i in chosen], "target", settings)
        generator = torch.Generator().manual_seed(10_000 * config.seed + drawn)
        loss, logs = sft_loss(
            transformer, pipeline.scheduler, batch, [s.meta["task"] for s in samples], config, generator,
            identity, samples,
        )  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        log.append({"step": step + 1, "loss": loss.item(), "n": n, **logs})
        if (step + 1) % report_every == 0:
            recent = log[-report_every:]
            line = f"  {adapter} step {step + 1}: loss {np.mean([r['loss'] for r in recent]):.4f}"
            line += f", FM {np.mean([r['loss_fm'] for r in recent]):.4f}"
            if identity is not None:
                line += f", ID {np.mean([r['loss_id'] for r in recent if r['decoded']] or [np.nan]):.3f}"
            print(line, flush=True)
    transformer.eval()
    return log


def detection_by_t_bin(log: list[dict]) -> str:
    """The ID loss's found faces per expected face, per t-bin, over the run (where it saw faces)."""
    bins: dict[str, list[float]] = {}
    for row in log:
        for key, value in row.items():
            if key.startswith("detect_rate_t"):
                bins.setdefault(key.removeprefix("detect_rate_t"), []).append(value)
    return ", ".join(f"t {k}: {np.mean(v):.2f} ({len(v)})" for k, v in sorted(bins.items())) or "no ID loss"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models" / "demo")
    parser.add_argument("--configurations", nargs="+", default=["none", "constant", "task"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--pairs", type=int, default=600, help="training pairs, drawn once, shared by every run")
    parser.add_argument("--groups", type=int, default=30, help="held-out groups per task")
    parser.add_argument("--inference-steps", type=int, default=4)
    parser.add_argument("--eval-seed", type=int, default=4242)
    parser.add_argument(
        "--fixed-batch", action="store_true", help="every step on step 0's batch, t and noise: can the loss fall?"
    )
    parser.add_argument("--out", type=Path, help="write every run's log and summary rows here (JSON)")
    parser.add_argument(
        "--set", nargs="*", default=[], help="SFTConfig overrides, e.g. learning_rate=5e-4 lora_rank=16 lambda_id=0.1"
    )
    args = parser.parse_args()
    world_config = config_of(committed_stamp())
    base = {"learning_rate": 5e-4, "lora_rank": 16, "batch_size": 8}
    for item in args.set:
        name, value = item.split("=", 1)
        base[name] = _coerce(value)
    config = SFTConfig(
        generator_dir="committed world generator", shards="world pairs", output_dir="-", steps=args.steps,
        resolution=world_config.resolution, **base,
    )  # fmt: skip
    print(f"SFT: {config}")
    face_pack = args.models_dir / "insightface" / "tiny_pack"
    app = load_face_analysis(face_pack)
    pipeline = committed_pipeline()
    for p in pipeline.transformer.parameters():
        p.requires_grad_(False)
    started = time.perf_counter()
    by_count, settings = training_samples(pipeline, world_config, args.pairs, config.seed)
    print(f"{args.pairs} training pairs encoded in {time.perf_counter() - started:.0f} s", flush=True)

    held_out, references = held_out_groups(app, world_config, args.groups, args.eval_seed)

    def evaluate(label: str) -> dict:
        cells = {}
        for task, pairs in held_out.items():
            images = generate(pipeline, pairs, world_config, args.inference_steps)
            scored = [score(app, refs, image, task) for refs, image in zip(references[task], images, strict=True)]
            cells[task] = {"summary": summarise(scored), "rows": scored}
            print(f"  {label:<10} {task:<16} {cells[task]['summary']}", flush=True)
        return cells

    results = {"sft": asdict(config), "runs": {}}
    print(f"\n== base (no LoRA), {args.groups} held-out groups per task, {args.inference_steps} steps")
    results["runs"]["base"] = {"eval": evaluate("base")}
    for modulation in args.configurations:
        run = replace(config, modulation=modulation)
        started = time.perf_counter()
        print(f"\n== SFT, modulation {modulation}: {run.steps} steps", flush=True)
        log = train_configuration(
            pipeline, by_count, settings, run, face_pack, adapter=f"sft_{modulation}", fixed_batch=args.fixed_batch
        )
        seconds = time.perf_counter() - started
        print(f"  trained in {seconds:.0f} s; the ID loss's faces found per t-bin: {detection_by_t_bin(log)}")
        results["runs"][modulation] = {"seconds": seconds, "log": log, "eval": evaluate(modulation)}
        pipeline.transformer.disable_adapters()
        pipeline.transformer.delete_adapters(f"sft_{modulation}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, default=float))
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
