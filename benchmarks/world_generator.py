"""Study: can a tiny base generator learn to draw the demo world on this CPU? (issue #14)

Pre-trains the world generator (``idglow.models.world_generator``: the demo pipeline with a
bigger ``QwenImageTransformer2DModel`` and the world VAE of ``--vae-folder``, flow matching on
freshly drawn portraits -> group scene pairs of both tasks), cached under ``--folder`` by its
stamp, then generates held-out groups (new people, another rng stream) through ``idglow.editing
.edit`` as the pipeline does (the demo's 64 px, ``--inference-steps``, true CFG 1) and scores them
with the demo's face pack, as the benchmark does: FaceSim (Hungarian-matched cosine of each
portrait's face to the image's faces; a missing face counts 0) with its bootstrap 95% interval,
the missing-face rate, and for Task 2 the share of found faces the age model puts under 18.

Rows: the drawn scenes themselves (a model that copies identities perfectly, at the world's own
rendering), the drawn scenes through the VAE (the best this VAE lets a generator do), the drawn
scenes of *other* people (what a model that ignores the references scores), the trained world
generator, and the demo's random tiny generator (today's). Then, per task, where along t the
identity goes: the held-out drawn scenes noised to each t of ``T_BINS``, the flow-matching loss on
the tokens over faces and on the rest, and the one-step clean estimate scored like a generation.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/world_generator.py
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import QwenImageEditPlusPipeline

from evaluation.benchmark import bootstrap_ci
from evaluation.metrics import child_rate, face_similarity
from idglow.data.groups import TASKS
from idglow.editing import edit
from idglow.faces import detect_faces, portrait_embedding
from idglow.models.hub import load_face_analysis
from idglow.models.world_generator import COMMITTED_FOLDER as WORLD_GENERATOR_FOLDER
from idglow.models.world_generator import (
    STAGE_STAMP,
    WorldGeneratorConfig,
    checkpoint_folder_for,
    draw_pair,
    encode_pairs,
    recipe_stamp,
    save_stage,
    snapshots,
    write_world_generator,
)
from idglow.models.world_vae import COMMITTED_FOLDER, face_mask, reconstruct, to_images, to_tensor
from training.encodings import stack
from training.flow import clean_estimate, decode, noisy, predict_velocity, randn, unpack, vae_scale_factor

REPO = Path(__file__).resolve().parents[1]
STAMP = "world_generator_stamp.json"


def _coerce(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_or_train(
    folder: Path,
    config: WorldGeneratorConfig,
    vae_folder: Path,
    snapshot_every: int | None = None,
    start_from: Path | None = None,
):
    parent = None if start_from is None else json.loads((start_from / STAGE_STAMP).read_text())
    stamp = recipe_stamp(config, json.loads((vae_folder / "config.json").read_text()), parent)
    if (folder / STAMP).exists() and json.loads((folder / STAMP).read_text()) == stamp:
        print(f"generator: cached in {folder}")
        return QwenImageEditPlusPipeline.from_pretrained(folder).to("cpu")
    started, cpu = time.perf_counter(), time.process_time()
    pipeline, log = write_world_generator(
        folder, config, vae_folder, snapshot_every=snapshot_every, start_from=start_from
    )  # fmt: skip
    losses = [row["loss"] for row in log]
    print(
        f"generator: trained in {time.perf_counter() - started:.0f} s wall ({time.process_time() - cpu:.0f} s CPU), "
        f"loss first/last 50 steps {np.mean(losses[:50]):.4f} -> {np.mean(losses[-50:]):.4f}"
    )
    (folder / "training_log.json").write_text(json.dumps(log))
    (folder / STAMP).write_text(json.dumps(stamp))
    return pipeline


def held_out_groups(app, config: WorldGeneratorConfig, groups: int, eval_seed: int) -> tuple[dict, dict]:
    """``groups`` held-out pairs per task (their own rng stream, apart from any training pairs) and
    each pair's portrait embeddings, the references its generations are scored against."""
    rng = np.random.default_rng([eval_seed, 3])
    held_out = {task: [draw_pair(rng, config, task) for _ in range(groups)] for task in TASKS}
    references = {
        task: [[portrait_embedding(detect_faces(app, p)) for p in pair.portraits] for pair in pairs]
        for task, pairs in held_out.items()
    }
    return held_out, references


def score(app, portraits_faces, image, task) -> dict:
    faces = detect_faces(app, image)
    n = len(portraits_faces)
    return {
        "face_sim": face_similarity(np.stack(portraits_faces), faces.embeddings),
        "missing": max(n - len(faces), 0) / n,
        "child": child_rate(faces.ages) if task == "age_transformed" else np.nan,
        "faces": len(faces),
    }


def summarise(rows: list[dict]) -> str:
    face_sim = bootstrap_ci([r["face_sim"] for r in rows])
    missing = np.mean([r["missing"] for r in rows])
    children = [r["child"] for r in rows if not np.isnan(r["child"])]
    child = f", child rate {np.mean(children):.2f}" if children else ""
    return f"FaceSim {face_sim[0]:.3f} [{face_sim[1]:.3f}, {face_sim[2]:.3f}], missing-face rate {missing:.2f}{child}"


T_BINS = (0.1, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def per_t_bin(pipeline, pairs, references, config: WorldGeneratorConfig, app, task: str) -> list[str]:
    """At each t of ``T_BINS``, the held-out scenes noised to t: the flow-matching loss on the
    tokens over faces (any share of a drawn face) and on the rest, and the one-step clean estimate
    x0_hat = x_t - t v decoded and scored like a generation (where along t the identity is lost);
    then the same estimate given another group's portraits and prompt (a group of the same size):
    scored against the true people, it tells how much of the identity comes from the references
    rather than from what the noised scene still shows."""
    encoded, _, settings = encode_pairs(pipeline, pairs, config, progress=False)
    order = {n: [i for i, pair in enumerate(pairs) if len(pair.portraits) == n] for n in encoded}
    lines = ["  t    FM loss face tokens  other tokens   x0_hat | x0_hat given another group's references"]
    for t in T_BINS:
        face_losses, other_losses, scored, swapped = [], [], [], []
        for n, encodings in encoded.items():
            batch = stack(encodings, "target", settings)
            sigma = torch.full((len(encodings),), t)
            noise = randn(tuple(batch.x0.shape), torch.Generator().manual_seed(int(t * 1000) + n))
            x_t = noisy(batch.x0, noise, sigma)
            grid = batch.shapes[0][1]
            for given, rows in ((batch, scored), (_rolled(batch), swapped)):
                velocity = predict_velocity(
                    pipeline.transformer, x_t, given.refs, given.prompt, given.mask, sigma, given.shapes
                )
                latents = unpack(
                    clean_estimate(x_t, velocity, sigma),
                    config.resolution,
                    config.resolution,
                    vae_scale_factor(pipeline.vae),
                )
                images = to_images(decode(pipeline.vae, latents).unsqueeze(2))
                rows += [score(app, references[i], image, task) for i, image in zip(order[n], images, strict=True)]
                if given is batch:
                    error = ((velocity - (noise - batch.x0)) ** 2).mean(dim=-1)
                    for row, i in enumerate(order[n]):
                        share = F.adaptive_avg_pool2d(face_mask(pairs[i].truths, config.resolution), grid)
                        on_face = share.flatten() > 0
                        face_losses.append(error[row][on_face].mean().item())
                        other_losses.append(error[row][~on_face].mean().item())
        lines.append(
            f"  {t:.1f}  {np.mean(face_losses):19.3f}  {np.mean(other_losses):12.3f}   "
            f"{summarise(scored)} | {summarise(swapped)}"
        )
    return lines


def _rolled(batch):
    """``batch`` with each sample's references and prompt those of the next sample."""
    mask = None if batch.mask is None else batch.mask.roll(1, dims=0)
    return replace(batch, refs=batch.refs.roll(1, dims=0), prompt=batch.prompt.roll(1, dims=0), mask=mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae-folder", type=Path, default=COMMITTED_FOLDER, help="default: the committed world VAE")
    parser.add_argument("--folder", type=Path, default=REPO / "var" / "studies" / "world_generator")
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models" / "demo")
    parser.add_argument("--groups", type=int, default=40, help="held-out groups per task")
    parser.add_argument("--inference-steps", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--eval-seed", type=int, default=4242)
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides, e.g. steps=300 pairs=500")
    parser.add_argument(
        "--snapshot-every", type=int, help="keep the transformer's weights every N steps (beside --folder, to score)"
    )
    parser.add_argument(
        "--snapshots", action="store_true", help="only score the kept snapshots and the final weights, per task"
    )
    parser.add_argument(
        "--start-from", type=Path, help="a stage folder (--save-stage) whose weights the training starts from"
    )
    parser.add_argument(
        "--save-stage",
        type=Path,
        help="also save the trained transformer as a stage there (bf16, with its stamp), for a later --start-from; "
        f"the committed one: {WORLD_GENERATOR_FOLDER.relative_to(REPO)}",
    )
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    config = replace(WorldGeneratorConfig(), **{k: _coerce(v) for k, v in overrides.items()})
    print(f"recipe: {asdict(config)}")
    if args.snapshots and not (args.folder / STAMP).exists():
        raise SystemExit(f"--snapshots: no trained generator in {args.folder} (run without --snapshots first)")
    pipeline = load_or_train(args.folder, config, args.vae_folder, args.snapshot_every, args.start_from)
    if args.save_stage:
        parent = None if args.start_from is None else json.loads((args.start_from / STAGE_STAMP).read_text())
        log = json.loads((args.folder / "training_log.json").read_text())
        save_stage(args.save_stage, pipeline, config, log, parent)
        print(f"stage saved in {args.save_stage}")
    app = load_face_analysis(args.models_dir / "insightface" / "tiny_pack")

    held_out, references_by_task = held_out_groups(app, config, args.groups, args.eval_seed)
    if args.snapshots:
        score_snapshots(pipeline, args.folder, held_out, references_by_task, config, app, args.inference_steps[0])
        return
    random_pipeline = QwenImageEditPlusPipeline.from_pretrained(args.models_dir / "generator").to("cpu")
    for task, pairs in held_out.items():
        print(f"\n== {task}: {len(pairs)} held-out groups of 2-3 people, {config.resolution} px")
        references = references_by_task[task]
        others = pairs[1:] + pairs[:1]  # each group against another group's scene
        with torch.no_grad():
            rounds = to_images(reconstruct(pipeline.vae, to_tensor([pair.scene for pair in pairs])))
        rows = {
            "drawn scene (copies identities)": [
                score(app, refs, pair.scene, task) for refs, pair in zip(references, pairs, strict=True)
            ],
            "drawn scene through the VAE": [
                score(app, refs, image, task) for refs, image in zip(references, rounds, strict=True)
            ],
            "another group's drawn scene": [
                score(app, refs, other.scene, task) for refs, other in zip(references, others, strict=True)
            ],
        }
        for steps in args.inference_steps:
            for name, generator in (("world generator", pipeline), ("random tiny generator (today)", random_pipeline)):
                if name.startswith("random") and steps != args.inference_steps[0]:
                    continue
                images = generate(generator, pairs, config, steps)
                rows[f"{name}, {steps} steps"] = [
                    score(app, refs, image, task) for refs, image in zip(references, images, strict=True)
                ]
                if name == "world generator":
                    sheet = args.folder / f"samples_{task}_{steps}.png"
                    _contact_sheet(pairs[:8], images[:8], rounds[:8], sheet)
        for name, scored in rows.items():
            print(f"  {name:<42} {summarise(scored)}")
        print("  the world generator's one-step estimate from the drawn scene noised to t:")
        print("\n".join(per_t_bin(pipeline, pairs, references, config, app, task)))


def generate(pipeline, pairs, config: WorldGeneratorConfig, steps: int) -> list:
    """The held-out groups generated as the pipeline does (``idglow.editing.edit``), one seed each."""
    return [
        edit(
            pipeline,
            pair.portraits,
            pair.prompt,
            generator=torch.Generator().manual_seed(1000 + i),
            budget=config.reference_budget,
            height=config.resolution,
            width=config.resolution,
            num_inference_steps=steps,
        )
        for i, pair in enumerate(pairs)
    ]


def score_snapshots(pipeline, folder: Path, held_out: dict, references: dict, config, app, steps: int) -> None:
    """FaceSim and the missing-face rate per task of each snapshot ``train_transformer`` kept
    (``step_NNNNNN.pt``) and of the final weights: how the base's identity grows along the training."""
    final = {k: v.clone() for k, v in pipeline.transformer.state_dict().items()}
    kept = snapshots(checkpoint_folder_for(folder))
    print(f"\n== along the training ({steps} inference steps; {len(kept)} snapshots)")
    for step, path in [*kept, (None, None)]:
        pipeline.transformer.load_state_dict(final if path is None else torch.load(path, weights_only=True))
        cells = []
        for task, pairs in held_out.items():
            images = generate(pipeline, pairs, config, steps)
            scored = [score(app, refs, image, task) for refs, image in zip(references[task], images, strict=True)]
            cells.append(f"{task}: {summarise(scored)}")
        label = "final" if step is None else f"step {step}"
        print(f"  {label:<11} " + " | ".join(cells), flush=True)
    pipeline.transformer.load_state_dict(final)


def _contact_sheet(pairs, images, rounds, path: Path) -> None:
    """Per group a row: its portraits, the drawn scene, the VAE's round trip, the generation."""
    from PIL import Image

    tile = 64
    canvas = Image.new("RGB", (tile * 6, tile * len(pairs)), "white")
    for row, (pair, image, rounded) in enumerate(zip(pairs, images, rounds, strict=True)):
        cells = [p.resize((tile, tile)) for p in pair.portraits] + [None] * (3 - len(pair.portraits))
        cells += [pair.scene.resize((tile, tile)), rounded.resize((tile, tile)), image.resize((tile, tile))]
        for column, cell in enumerate(cells):
            if cell is not None:
                canvas.paste(cell, (column * tile, row * tile))
    canvas.save(path)


if __name__ == "__main__":
    main()
