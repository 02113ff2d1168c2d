"""Study: does the tiny recogniser know the world's people in its 64 px group scenes? (issue #14)

FaceSim compares each reference portrait's face with the faces of a generated group scene. At
the demo's 64 px a scene face is about 10 px wide, so the recogniser sees a blurred, upsampled
crop; trained on 256 px portraits alone it may not know the person. The issue needs headroom
between a base model and a model that copies identities perfectly, so what a perfect copy
scores (the drawn scene itself) sets the ceiling. This trains the recogniser with one seed, as
``write_tiny_face_pack`` does (one thread), once per ``--world-renders`` value
(``FaceTrainingConfig.recognizer_world_renders``: that many extra faces per training identity
from world scenes), exports each into a copy of the demo pack (its detector and gender/age
model) and loads it with the hub's ``load_face_analysis``.

Held out: new people (another rng stream), drawn as the world generator's pairs are
(``idglow.models.world_generator.draw_pair``: 2-3 adult portraits at 256 px and their scene at
64 px, as adults for Task 1 and as young children for Task 2). Printed per recogniser and task:
FaceSim of the drawn scene (with its bootstrap 95% interval), of another group's scene (what
ignoring the references scores), and the portraits' verification: cosine to a second portrait
of the same person and to another person's.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/world_recognizer.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from evaluation.benchmark import bootstrap_ci
from evaluation.metrics import face_similarity
from idglow.data.faces import render_portrait, sample_style
from idglow.data.groups import TASKS
from idglow.faces import detect_faces, portrait_embedding
from idglow.models.face_nets import export_onnx
from idglow.models.face_training import (
    DETECTOR_FILE,
    GENDERAGE_FILE,
    RECOGNIZER_FILE,
    FaceTrainingConfig,
    train_recognizer,
)
from idglow.models.hub import load_face_analysis
from idglow.models.world_generator import WorldGeneratorConfig, draw_pair

REPO = Path(__file__).resolve().parents[1]
PACK = Path("insightface") / "tiny_pack"


def build(config: FaceTrainingConfig, source: Path, pack: Path):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        recognizer = train_recognizer(config, progress=False)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    pack.mkdir(parents=True)
    for file in (DETECTOR_FILE, GENDERAGE_FILE):
        (pack / file).symlink_to((source / file).resolve())
    export_onnx(recognizer, torch.zeros(1, 3, 112, 112), pack / RECOGNIZER_FILE, ["embedding"], dynamic_batch=True)
    return load_face_analysis(pack), seconds


def evaluate(app, held_out: dict, portraits: list) -> dict[str, str]:
    rows = {}
    for task, pairs in held_out.items():
        references = [np.stack([portrait_embedding(detect_faces(app, p)) for p in pair.portraits]) for pair in pairs]
        scenes = [detect_faces(app, pair.scene).embeddings for pair in pairs]
        same = bootstrap_ci([face_similarity(r, s) for r, s in zip(references, scenes, strict=True)])
        other = bootstrap_ci([face_similarity(r, s) for r, s in zip(references, scenes[1:] + scenes[:1], strict=True)])
        rows[task] = (
            f"drawn scene FaceSim {same[0]:.3f} [{same[1]:.3f}, {same[2]:.3f}], "
            f"another group's scene {other[0]:.3f} [{other[1]:.3f}, {other[2]:.3f}]"
        )
    first = np.stack([portrait_embedding(detect_faces(app, a)) for a, _ in portraits])
    second = np.stack([portrait_embedding(detect_faces(app, b)) for _, b in portraits])
    same_person = (first * second).sum(1)
    other_person = (first * np.roll(second, 1, axis=0)).sum(1)
    auc = float((same_person[:, None] > other_person[None, :]).mean())
    rows["portraits"] = (
        f"same person {same_person.mean():.3f}, another person {other_person.mean():.3f}, verification AUC {auc:.3f}"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models" / "demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=4242)
    parser.add_argument("--groups", type=int, default=60, help="held-out groups per task")
    parser.add_argument("--portraits", type=int, default=100, help="held-out people, two portraits each")
    parser.add_argument("--world-renders", type=int, nargs="+", default=[0, 3])
    args = parser.parse_args()
    source = args.models_dir / PACK
    if not (source / DETECTOR_FILE).exists():
        parser.error(f"no tiny face pack in {source}: build it with `idglow models build` first")
    rng = np.random.default_rng([args.eval_seed, 3])
    pair_config = WorldGeneratorConfig()
    held_out = {task: [draw_pair(rng, pair_config, task) for _ in range(args.groups)] for task in TASKS}
    styles = [sample_style(rng) for _ in range(args.portraits)]
    portraits = [(render_portrait(s, 256, rng)[0], render_portrait(s, 256, rng)[0]) for s in styles]
    print(f"held out: {args.groups} groups of 2-3 people per task at 64 px, {args.portraits} people x 2 portraits")
    with tempfile.TemporaryDirectory() as folder:
        for renders in args.world_renders:
            config = replace(FaceTrainingConfig(seed=args.seed), recognizer_world_renders=renders)
            app, seconds = build(config, source, Path(folder) / f"pack-{renders}")
            print(f"\n== recognizer_world_renders={renders}: trained in {seconds:.1f} s (1 thread)")
            for name, line in evaluate(app, held_out, portraits).items():
                print(f"  {name:<16} {line}")


if __name__ == "__main__":
    main()
