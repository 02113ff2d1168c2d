"""Study: which of a world person's traits does FaceSim read in a 64 px group scene? (issue #14)

The issue wants a base generator between 0.2 and 0.6 FaceSim, "keeping identities only partly".
A small generator takes coarse traits from its references first (colours, hair, glasses) and the
face's geometry last. This measures what a scene drawn with look-alikes scores against the true
people's portraits: each person replaced by a new identity (``sample_style``) that keeps only
some of their traits, in the same room, light and layout (the scene's random draws replayed).

Look-alikes, from nothing kept to everything kept:

- ``another``: a new person (what a generator that ignores its references scores);
- ``skin``: the skin tone;
- ``skin+hair``: and the hair colour and style;
- ``coarse``: and the eye colour, glasses, beard and sex (everything but the face's geometry);
- ``all``: the person themselves (the drawn scene: what a perfect copy scores).

FaceSim is the benchmark's (``evaluation.metrics.face_similarity`` on the demo face pack, the
references' embeddings from their 256 px portraits), with bootstrap 95% intervals, per task.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/world_identity_traits.py --groups 60
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace
from pathlib import Path

import numpy as np

from evaluation.benchmark import bootstrap_ci
from evaluation.metrics import face_similarity
from idglow.data.faces import YOUNG_CHILD_AGES, FaceStyle, render_portrait, sample_style
from idglow.data.groups import TASKS
from idglow.data.scenes import render_scene
from idglow.faces import detect_faces, portrait_embedding
from idglow.models.hub import load_face_analysis
from idglow.models.registry import FACE_PACK, TINY_COMPONENTS

REPO = Path(__file__).resolve().parents[1]
KEPT = {
    "another": (),
    "skin": ("skin",),
    "skin+hair": ("skin", "hair_name", "hair_style"),
    "coarse": ("skin", "hair_name", "hair_style", "eye_color", "glasses", "beard", "male"),
    "all": None,
}


def look_alike(person: FaceStyle, stranger: FaceStyle, kept: tuple[str, ...] | None) -> FaceStyle:
    """``stranger`` with ``person``'s ``kept`` traits (``None``: ``person`` themselves)."""
    if kept is None:
        return person
    look = replace(stranger, **{name: getattr(person, name) for name in kept})
    return replace(look, beard=look.beard and look.male)  # the world draws beards on men only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models" / "demo")
    parser.add_argument("--groups", type=int, default=60, help="held-out groups per task")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=4243)
    args = parser.parse_args()
    pack = args.models_dir / TINY_COMPONENTS[FACE_PACK].path
    if not pack.exists():
        parser.error(f"no demo face pack in {pack}: build it with `idglow models build` first")
    app = load_face_analysis(pack)
    print(f"{args.groups} groups of 2-3 people per task, scenes at {args.resolution} px, the demo face pack")
    for task in TASKS:
        scores: dict[str, list[float]] = {name: [] for name in KEPT}
        found: dict[str, int] = dict.fromkeys(KEPT, 0)
        people = 0
        for group in range(args.groups):
            rng = np.random.default_rng([args.seed, TASKS.index(task), group])
            persons = [sample_style(rng) for _ in range(int(rng.integers(2, 4)))]
            strangers = [sample_style(rng) for _ in persons]
            portraits = [render_portrait(person, 256, rng)[0] for person in persons]
            references = np.stack([portrait_embedding(detect_faces(app, portrait)) for portrait in portraits])
            ages = (
                [int(rng.integers(YOUNG_CHILD_AGES.start, YOUNG_CHILD_AGES.stop)) for _ in persons]
                if task == "age_transformed"
                else None
            )
            people += len(persons)
            for name, kept in KEPT.items():
                styles = [look_alike(p, s, kept) for p, s in zip(persons, strangers, strict=True)]
                scene, _, _ = render_scene(styles, args.resolution, copy.deepcopy(rng), ages=ages)
                faces = detect_faces(app, scene)
                scores[name].append(face_similarity(references, faces.embeddings))
                found[name] += min(len(faces.boxes), len(persons))
        print(f"\n{task}:")
        for name in KEPT:
            mean, low, high = bootstrap_ci(scores[name])
            print(f"  {name:<10} FaceSim {mean:.3f} [{low:.3f}, {high:.3f}]  faces found {found[name] / people:.2f}")


if __name__ == "__main__":
    main()
