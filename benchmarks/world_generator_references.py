"""Study: does the world generator learn to take what it draws from its references? (issue #14)

Trains a fresh world generator (``idglow.models.world_generator``: the demo pipeline, the world
VAE of ``--vae-folder``, by default the committed one, flow matching as ``train_transformer`` does
it) on one kind of pair and,
every few steps, measures on held-out pairs of the same kind the flow-matching loss at fixed t
twice: with each pair's own references and prompt, and with another pair's (the batch rolled by
one). Where the second loss is higher, the velocity depends on who is in the references; where
both are equal, the model ignores them. For group scenes the loss over the tokens on drawn faces
(each token weighted by its share of ``world_vae.face_mask``) is reported too.

Kinds of pair (``--task``):

- ``copy``: one portrait as the reference, the same portrait at the generation size as the target
  (the answer is in the reference: a test of the wiring, references to attention);
- ``repose``: one portrait as the reference, a new portrait of that person (``render_portrait``:
  new pose, light, expression, background and clothes) as the target;
- ``shifted``: as ``repose``, but the new portrait is drawn at a third to two thirds of the
  generation size and placed anywhere on a new background (a pasted tile, not a world scene): the
  person is no longer where the reference has them, so the model has to find them by content;
- ``group``: ``draw_pair``'s portraits -> group scene pairs of both tasks, as the world generator
  is pre-trained on them.

``--train`` trains on other kinds first or beside it (a curriculum): phases of ``KIND:STEPS``, a
``+`` mixing kinds step by step with equal odds, e.g. ``--task group --train shifted:500
group+shifted:1000``; the measurements stay on held-out pairs of ``--task``, and the learning
rate's warm-up and cosine run over all phases' steps.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/world_generator_references.py --task repose
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/world_generator_references.py --task group \\
        --train shifted:500 group+shifted:1000 --evaluations 6
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLQwenImage

from idglow.data.faces import FaceTruth, background, render_portrait, sample_style
from idglow.models.world_generator import (
    PORTRAIT_PROMPT,
    PORTRAIT_SIZE,
    WorldGeneratorConfig,
    WorldPair,
    build_pipeline,
    draw_pair,
    encode_pairs,
    snapshots,
    training_step,
)
from idglow.models.world_vae import COMMITTED_FOLDER
from training.encodings import stack
from training.flow import flow_matching_loss, noisy, predict_velocity, randn

TIMES = (0.3, 0.5, 0.6, 0.8, 0.9, 1.0)
FACE_ONLY = 1e6  # face_token_weights' face weight that leaves only the face tokens' share
SETTINGS = {
    "copy": (400, 32, 1, 2),
    "repose": (400, 32, 1, 2),
    "shifted": (400, 32, 1, 2),
    "group": (1000, 48, (0, 91), 7),
}  # pairs, held out, rngs


def _field(item: str) -> tuple[str, object]:
    name, _, text = item.partition("=")
    if text.lower() in ("true", "false"):
        return name, text.lower() == "true"
    for kind in (int, float):
        try:
            return name, kind(text)
        except ValueError:
            pass
    return name, text


def _portrait_pair(rng: np.random.Generator, task: str, resolution: int) -> WorldPair:
    style = sample_style(rng)
    portrait, _ = render_portrait(style, PORTRAIT_SIZE, rng)
    if task == "copy":
        return WorldPair([portrait], portrait.resize((resolution, resolution)), PORTRAIT_PROMPT, "group_fusion", [])
    if task == "repose":
        target, truth = render_portrait(style, resolution, rng)
        return WorldPair([portrait], target, PORTRAIT_PROMPT, "group_fusion", [truth])
    side = int(rng.integers(resolution // 3, 2 * resolution // 3 + 1))
    tile, truth = render_portrait(style, side, rng)
    x, y = (int(v) for v in rng.integers(0, resolution - side + 1, size=2))
    target = background(resolution, rng)
    target.paste(tile, (x, y))
    return WorldPair([portrait], target, PORTRAIT_PROMPT, "group_fusion", [_moved(truth, x, y)])


def _moved(truth: FaceTruth, x: int, y: int) -> FaceTruth:
    x1, y1, x2, y2 = truth.bbox
    landmarks = tuple((u + x, v + y) for u, v in truth.landmarks)
    return replace(truth, bbox=(x1 + x, y1 + y, x2 + x, y2 + y), landmarks=landmarks)


def parse_phases(phases: list[str]) -> list[tuple[tuple[str, ...], int]]:
    """``["shifted:500", "group+shifted:1000"]`` -> ``[(("shifted",), 500), (("group", "shifted"), 1000)]``."""
    parsed = []
    for phase in phases:
        kinds, _, steps = phase.partition(":")
        unknown = [kind for kind in kinds.split("+") if kind not in SETTINGS]
        if unknown or not steps.isdigit() or int(steps) < 1:
            raise SystemExit(f"--train {phase!r}: want KIND[+KIND...]:STEPS, KIND one of {sorted(SETTINGS)}")
        parsed.append((tuple(kinds.split("+")), int(steps)))
    return parsed


def draw_pairs(task: str, config: WorldGeneratorConfig) -> tuple[list[WorldPair], list[WorldPair]]:
    _, held_out, train_seed, held_seed = SETTINGS[task]
    if task == "group":
        rng = np.random.default_rng(list(train_seed))
        train = [draw_pair(rng, config) for _ in range(config.pairs)]
        held = [draw_pair(np.random.default_rng([held_seed, i]), config) for i in range(held_out)]
    else:
        rng = np.random.default_rng(train_seed)
        train = [_portrait_pair(rng, task, config.resolution) for _ in range(config.pairs)]
        held = [_portrait_pair(np.random.default_rng([held_seed, i]), task, config.resolution) for i in range(held_out)]
    return train, held


@torch.no_grad()
def reference_dependence(transformer, encoded, weights, settings) -> dict[float, dict[str, float]]:
    """Per t: the held-out loss with own / another pair's references, over all tokens and face tokens."""
    transformer.eval()
    result = {}
    for t in TIMES:
        totals, count = np.zeros(4), 0
        for n in sorted(encoded):
            batch = stack(encoded[n], "target", settings)
            face = torch.stack(weights[n])
            noise = randn(tuple(batch.x0.shape), torch.Generator().manual_seed(5))
            sigma = torch.full((batch.x0.shape[0],), t)
            x_t = noisy(batch.x0, noise, sigma)
            own = predict_velocity(transformer, x_t, batch.refs, batch.prompt, batch.mask, sigma, batch.shapes)
            rolled = predict_velocity(
                transformer, x_t, batch.refs.roll(1, 0), batch.prompt.roll(1, 0), batch.mask, sigma, batch.shapes
            )
            losses = [
                flow_matching_loss(v, batch.x0, noise, w).mean().item() for w in (None, face) for v in (own, rolled)
            ]
            totals += len(encoded[n]) * np.array(losses)
            count += len(encoded[n])
        own_all, rolled_all, own_face, rolled_face = (totals / count).tolist()
        result[t] = {"own": own_all, "another": rolled_all, "own_face": own_face, "another_face": rolled_face}
    transformer.train()
    return result


def _cells(task: str, measured: dict) -> str:
    return "own/another references: " + "  ".join(
        f"t {t}: {m['own']:.3f}/{m['another']:.3f}"
        + (f" (faces {m['own_face']:.3f}/{m['another_face']:.3f})" if task != "copy" else "")
        for t, m in measured.items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(SETTINGS), default="repose", help="the kind measured")
    parser.add_argument("--train", nargs="*", metavar="KIND[+KIND]:STEPS", help="phases (default: --task for --steps)")
    parser.add_argument("--vae-folder", type=Path, default=COMMITTED_FOLDER, help="default: the committed world VAE")
    parser.add_argument(
        "--text-encoder",
        type=Path,
        help="a Qwen2.5-VL folder (e.g. var/models/demo/prompt_model) as the generator's text encoder "
        "(default: the demo generator's random tiny one)",
    )
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pairs", type=int, help="training pairs per kind (default: portraits 400, groups 1000)")
    parser.add_argument("--evaluations", type=int, default=5, help="how many times along the training to measure")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument(
        "--snapshots",
        type=Path,
        metavar="FOLDER",
        help="train nothing: measure each transformer snapshot (step_NNNNNN.pt) kept in FOLDER by a world "
        "generator run (benchmarks/world_generator.py --snapshot-every; --set its recipe's sizes)",
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="WorldGeneratorConfig fields")
    args = parser.parse_args()
    torch.set_num_threads(1)

    phases = parse_phases(args.train) if args.train else [((args.task,), args.steps)]
    steps = sum(length for _, length in phases)
    overrides = dict(_field(item) for item in args.set)
    config = WorldGeneratorConfig(steps=steps, resolution=args.resolution, **overrides)
    vae = AutoencoderKLQwenImage.from_pretrained(args.vae_folder)
    pipeline = build_pipeline(config, vae, text_encoder_folder=args.text_encoder)
    pipeline.text_encoder.eval()
    encoded, settings, held_encoded, held_weights = {}, None, None, None
    for kind in sorted({kind for kinds, _ in phases for kind in kinds} | {args.task}):
        # --snapshots trains nothing: one training pair for the encoding settings (the held-out
        # pairs have rngs of their own, so they stay the same)
        kind_config = replace(config, pairs=1 if args.snapshots else args.pairs or SETTINGS[kind][0])
        train, held = draw_pairs(kind, kind_config)
        encoded[kind], _, settings = encode_pairs(pipeline, train, kind_config, progress=False)
        if kind == args.task:
            held_encoded, held_weights, _ = encode_pairs(
                pipeline, held, replace(kind_config, face_weight=FACE_ONLY), progress=False
            )

    transformer = pipeline.transformer.train()
    if args.snapshots:
        for step, path in snapshots(args.snapshots):
            transformer.load_state_dict(torch.load(path, weights_only=True))
            measured = reference_dependence(transformer, held_encoded, held_weights, settings)
            print(f"step {step:5d} ({path.parent.name})  {_cells(args.task, measured)}", flush=True)
        return
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    batch_rng = np.random.default_rng(3)
    sizes = {kind: sorted(by_size) for kind, by_size in encoded.items()}
    counts = {kind: np.array([len(encoded[kind][n]) for n in sizes[kind]], dtype=float) for kind in encoded}
    shares = {kind: count / count.sum() for kind, count in counts.items()}
    schedule = [kinds for kinds, length in phases for _ in range(length)]
    every = max(1, steps // args.evaluations)
    started, losses, rows = time.time(), [], []
    for step, kinds in enumerate(schedule):
        kind = kinds[int(batch_rng.integers(len(kinds)))] if len(kinds) > 1 else kinds[0]
        by_size, kind_sizes, share = encoded[kind], sizes[kind], shares[kind]
        n = kind_sizes[int(batch_rng.choice(len(kind_sizes), p=share))] if len(kind_sizes) > 1 else kind_sizes[0]
        chosen = batch_rng.choice(len(by_size[n]), config.batch_size, replace=False)
        batch = stack([by_size[n][int(i)] for i in chosen], "target", settings)
        loss = training_step(pipeline, optimizer, config, step, batch, torch.Generator().manual_seed(step))
        losses.append(loss.item())
        if (step + 1) % every == 0:
            measured = reference_dependence(transformer, held_encoded, held_weights, settings)
            rows.append({"step": step + 1, "train_loss": float(np.mean(losses[-30:])), "by_t": measured})
            print(
                f"step {step + 1:5d} ({'+'.join(kinds)})  train loss {rows[-1]['train_loss']:.4f}  "
                f"{_cells(args.task, measured)}  [{time.time() - started:.0f} s]",
                flush=True,
            )
    if args.json:
        record = {"task": args.task, "phases": phases, "config": asdict(config), "rows": rows}
        args.json.write_text(json.dumps(record))


if __name__ == "__main__":
    main()
