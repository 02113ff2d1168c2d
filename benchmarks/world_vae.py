"""Study: does a tiny VAE trained on the demo world keep its faces? (issue #14)

Builds the world's VAE (``idglow.models.world_vae``; cached by its stamp under ``--folder``),
then reconstructs held-out world pictures (new identities from ``--eval-seed``) and compares,
with the demo's tiny face pack, the originals, the trained VAE's reconstructions and the current
random tiny VAE's (the demo generator's ``vae`` folder):

* PSNR against the original;
* portraits: the share with a face found, and the recognition cosine of the reconstruction's
  face to the original's (``portrait_embedding``); for the originals, the cosine to another
  portrait of the same person (what "same person" scores) and to another person's;
* scenes: the share of drawn faces detected (a detection within IoU 0.3 of the truth box), and
  the cosine of each face found in both the original and the reconstruction.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/world_vae.py
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLQwenImage

from idglow.data.faces import render_portrait, sample_style
from idglow.data.scenes import render_scene
from idglow.faces import Faces, detect_faces_batched, portrait_embedding
from idglow.models.hub import ModelHub
from idglow.models.world_vae import (
    TRAINING_FILE,
    WorldVAEConfig,
    _age,
    build_world_vae,
    reconstruct,
    to_images,
    to_tensor,
)

REPO = Path(__file__).resolve().parents[1]


def held_out(seed: int, size: int, portraits: int, scenes: int, child_fraction: float = 0.3):
    """Portraits (each with a second portrait of the same person) and scenes of new people."""
    rng = np.random.default_rng([seed, 7])
    portrait_images, second_images = [], []
    for _ in range(portraits):
        style = sample_style(rng)
        age = _age(rng, child_fraction)
        portrait_images.append(render_portrait(style, size, rng, age=age)[0])
        second_images.append(render_portrait(style, size, rng, age=age)[0])
    scene_images, scene_truths = [], []
    for _ in range(scenes):
        people = int(rng.integers(2, 4))
        styles = [sample_style(rng) for _ in range(people)]
        image, truths, _ = render_scene(styles, size, rng, ages=[_age(rng, child_fraction) for _ in range(people)])
        scene_images.append(image)
        scene_truths.append([t.bbox for t in truths])
    return portrait_images, second_images, scene_images, scene_truths


def _iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _match(faces: Faces, truths) -> list[int | None]:
    """For each truth box, the index of the best detection with IoU >= 0.3, or None."""
    matches = []
    for box in truths:
        scores = [_iou(box, found) for found in faces.boxes]
        best = int(np.argmax(scores)) if scores else None
        matches.append(best if best is not None and scores[best] >= 0.3 else None)
    return matches


def psnr(a: list, b: list) -> float:
    x = np.stack([np.asarray(i, dtype=np.float64) for i in a])
    y = np.stack([np.asarray(i, dtype=np.float64) for i in b])
    return float(np.mean([10 * np.log10(255**2 / max(np.mean((p - q) ** 2), 1e-10)) for p, q in zip(x, y)]))


@torch.no_grad()
def round_trip(vae, images: list) -> list:
    return [
        image for i in range(0, len(images), 16) for image in to_images(reconstruct(vae, to_tensor(images[i : i + 16])))
    ]


def measure(app, originals, seconds, scenes, truths, reconstructions=None) -> dict:
    """The row of one image source (the originals when ``reconstructions`` is None)."""
    images_p = originals if reconstructions is None else reconstructions[0]
    images_s = scenes if reconstructions is None else reconstructions[1]
    faces_o = detect_faces_batched(app, originals)
    faces_p = detect_faces_batched(app, images_p)
    reference = detect_faces_batched(app, seconds) if reconstructions is None else faces_p
    cosines = [
        float(portrait_embedding(o) @ portrait_embedding(r)) if len(o) else np.nan
        for o, r in zip(faces_o, reference, strict=True)
    ]
    row = {
        "psnr": np.inf if reconstructions is None else psnr(originals + scenes, images_p + images_s),
        "portrait_detected": float(np.mean([len(f) > 0 for f in faces_p])),
        "portrait_cosine": float(np.nanmean(cosines)),
    }
    scene_o = detect_faces_batched(app, scenes)
    scene_r = scene_o if reconstructions is None else detect_faces_batched(app, images_s)
    found, total, scene_cosines = 0, 0, []
    for fo, fr, boxes in zip(scene_o, scene_r, truths, strict=True):
        mo, mr = _match(fo, boxes), _match(fr, boxes)
        total += len(boxes)
        found += sum(m is not None for m in mr)
        for a, b in zip(mo, mr, strict=True):
            if a is not None and b is not None and reconstructions is not None:
                scene_cosines.append(float(fo.embeddings[a] @ fr.embeddings[b]))
    row["scene_detected"] = found / total
    row["scene_cosine"] = float(np.mean(scene_cosines)) if scene_cosines else np.nan
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=REPO / "var" / "models" / "world_vae")
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models" / "demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=1000)
    parser.add_argument("--portraits", type=int, default=60)
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--eval-sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides, e.g. steps=300 base_dim=12")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = WorldVAEConfig(seed=args.seed)
    for item in args.set:
        key, value = item.split("=", 1)
        current = getattr(config, key)
        parsed = tuple(int(v) for v in value.split(",")) if isinstance(current, tuple) else type(current)(value)
        config = replace(config, **{key: parsed})
    started = time.perf_counter()
    built = build_world_vae(args.folder, args.seed, config, progress=True)
    print(f"build: {'trained' if built else 'cached'} in {time.perf_counter() - started:.0f} s")
    training = json.loads((args.folder / TRAINING_FILE).read_text())
    megabytes = (args.folder / "diffusion_pytorch_model.safetensors").stat().st_size / 1e6
    print(
        f"training: {training['seconds']} s wall on 1 thread ({training.get('cpu_seconds', '?')} s CPU), "
        f"loss {training['first_loss']:.3f} -> {training['last_loss']:.3f}, weights {megabytes:.2f} MB"
    )
    trained = AutoencoderKLQwenImage.from_pretrained(args.folder).eval()
    hub = ModelHub("demo", args.models_dir, device="cpu")
    random_vae = AutoencoderKLQwenImage.from_pretrained(hub.path("generator"), subfolder="vae").eval()
    app = hub.face_analysis()
    for size in args.eval_sizes:
        portraits, seconds, scenes, truths = held_out(args.eval_seed, size, args.portraits, args.scenes)
        rows = {"originals": measure(app, portraits, seconds, scenes, truths)}
        for name, vae in (("world VAE (trained)", trained), ("random tiny VAE", random_vae)):
            rows[name] = measure(
                app, portraits, seconds, scenes, truths, (round_trip(vae, portraits), round_trip(vae, scenes))
            )
        print(f"\n{size} px: {args.portraits} portraits, {args.scenes} scenes of 2-3 people (held out, 30% children)")
        print("| images | PSNR dB | portrait face found | portrait cosine | scene faces found | scene face cosine |")
        print("|---|---|---|---|---|---|")
        for name, row in rows.items():
            print(
                f"| {name} | {row['psnr']:.1f} | {row['portrait_detected']:.0%} | {row['portrait_cosine']:.3f} "
                f"| {row['scene_detected']:.0%} | {row['scene_cosine']:.3f} |"
            )
        others = detect_faces_batched(app, seconds[1:] + seconds[:1])  # everyone's neighbour's second portrait
        first = detect_faces_batched(app, portraits)
        different = float(np.mean([portrait_embedding(a) @ portrait_embedding(b) for a, b in zip(first, others)]))
        print(f"(originals' cosine: to a second portrait of the same person; to another person's: {different:.3f})")


if __name__ == "__main__":
    main()
