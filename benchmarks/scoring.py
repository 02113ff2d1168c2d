"""Pairs per second of the batched pair scorer against the naive loop, on the demo profile.

The naive loop is the obvious first version: for each pair and each image, call every model on
that one image (insightface ``get``, CLIP's image and text towers, the aesthetic MLP) with no
batching and no reuse of the condition portraits between pairs. Both run in the same process on
the same pairs, and their scores must agree.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scoring.py [--photos 24] [--candidates 2]

``--gpu``: the pair scorer's images per second end to end (decode, face pack, CLIP, aesthetic MLP:
``score_pairs`` over files on disk) with the real profile's components in their real formats and
random weights, built locally by idglow.models.rehearsal (CLIP ViT-L/14 in OpenAI's TorchScript
layout via open_clip, the aesthetic MLP on its 768-wide embedding, the buffalo_l face pack:
SCRFD-10G detector, iresnet50 recogniser, attribute model), on CUDA where there is one and on
the CPU otherwise (a dry run of the same path: use a small ``--pairs``). The images are drawn
scenes at ``--size`` (1024², the real profile's output), each file distinct (a shifted copy of
one of 16 drawings), PNG as the candidates are; each pair has two portraits from a pool of 32 (fewer for fewer pairs).
Then the same images through each part alone (decode, faces, CLIP), to say where the time goes.
The issue's target: at least 1,000 images per second on one GPU.

    python benchmarks/scoring.py --gpu [--pairs 512] [--size 1024] [--batch 256] [--models-dir DIR]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scoring.py --gpu --pairs 4 --size 128   # CPU dry run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from idglow.data.celebahq import ingest_celebahq
from idglow.data.demo_celebahq import write_demo_celebahq
from idglow.data.group_photos import write_demo_group_photos
from idglow.data.groups import make_training_groups, split_identities
from idglow.editing import ReferenceBudget
from idglow.generation import GenerationSettings, generate_candidates
from idglow.models.hub import ModelHub
from idglow.pairs import build_pairs
from idglow.profiles import load_profile
from idglow.prompts import static_prompt
from idglow.scoring import METRICS, ImageScorer, naive_scores, score_pairs


def demo_pairs(hub: ModelHub, work: Path, photos: int, candidates: int) -> pd.DataFrame:
    dataset = write_demo_celebahq(work / "celebahq")
    catalog = ingest_celebahq(dataset.root, expected_size=256, progress=False).catalog
    splits = split_identities(catalog, 10, seed=0)
    groups = make_training_groups(catalog, splits, groups_of_two=8, groups_of_three=6, seed=0)
    photo_table = write_demo_group_photos(groups, catalog, dataset.root, work / "photos", photos, 256, 0)
    # As in the demo: every training group x both tasks x (static, dynamic) prompt, K candidates each,
    # so many pairs share their condition portraits.
    jobs = pd.concat(
        [
            groups.assign(
                job_id=groups["group_id"] + f"-{task}-{kind}",
                task=task,
                prompt_kind=kind,
                photo_id=None,
                prompt=[static_prompt(task, n) for n in groups["n_subjects"]],
            )
            for task in ("group_fusion", "age_transformed")
            for kind in ("static", "dynamic")
        ],
        ignore_index=True,
    )
    jobs["condition_paths"] = [[str(dataset.root / p) for p in ps] for ps in jobs["condition_paths"]]
    settings = GenerationSettings(
        64, 64, 4, 1.0, candidates, 0, ReferenceBudget.of_profile(load_profile("demo", env={}))
    )
    table, _ = generate_candidates(
        hub.generator(), jobs, settings, work / "candidates", "bench", "base", progress=False
    )
    return build_pairs(table, photo_table, work / "perturbed", seed=0)


def write_scene_files(folder: Path, count: int, size: int, seed: int = 0) -> list[str]:
    """``count`` distinct PNG files at ``size``²: 16 drawn two-person scenes, each file one of them
    rolled by its own offset (the same content statistics, no two files alike)."""
    from gpu_rehearsal import drawn_portraits  # benchmarks/ is this script's folder, first on sys.path
    from PIL import Image

    people = drawn_portraits(32, size // 2, seed)
    scenes = []
    for i in range(16):
        scene = Image.new("RGB", (size, size), (120 + 5 * i, 140, 160))
        scene.paste(people[2 * i], (0, size // 4))
        scene.paste(people[2 * i + 1], (size // 2, size // 4))
        scenes.append(np.asarray(scene))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        shifted = np.roll(scenes[i % 16], shift=(i // 16) % (size // 8), axis=1)
        path = folder / f"image-{i:05d}.png"
        Image.fromarray(shifted).save(path)
        paths.append(str(path))
    return paths


def gpu_scoring(args) -> None:
    """The pair scorer end to end on the real formats (see the module's docstring)."""
    from gpu_rehearsal import drawn_portraits
    from PIL import Image

    from idglow.faces import detect_faces_batched
    from idglow.models.registry import AESTHETIC, CLIP, FACE_PACK, REAL_COMPONENTS
    from idglow.models.rehearsal import build_rehearsal_models
    from idglow.storage import sha256_file

    device = "cuda" if torch.cuda.is_available() else "cpu"
    models_dir = args.models_dir if args.models_dir != Path("var/models/demo") else Path("var/models/scoring-real")
    started = time.perf_counter()
    build_rehearsal_models(models_dir, roles=(AESTHETIC, CLIP, FACE_PACK), progress=False)  # skipped when stamped
    built_s = time.perf_counter() - started
    clip_file = models_dir / REAL_COMPONENTS[CLIP].path
    hub = ModelHub("real", models_dir, device=device, clip_sha256=sha256_file(clip_file))  # our own random CLIP
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        started = time.perf_counter()
        images = write_scene_files(work / "images", 2 * args.pairs, args.size)
        portraits = []
        pool = min(32, 2 * args.pairs)
        for i, portrait in enumerate(drawn_portraits(pool, 256, 1)):
            portrait.save(work / f"portrait-{i:02d}.png")
            portraits.append(str(work / f"portrait-{i:02d}.png"))
        pairs = pd.DataFrame(
            {
                "pair_id": [f"pair-{i:05d}" for i in range(args.pairs)],
                "chosen_path": images[: args.pairs],
                "rejected_path": images[args.pairs :],
                "condition_paths": [
                    [portraits[(2 * i) % pool], portraits[(2 * i + 1) % pool]] for i in range(args.pairs)
                ],
                "prompt": [f"two friends, photo {i % 64}" for i in range(args.pairs)],
            }
        )
        written_s = time.perf_counter() - started
        scorer = ImageScorer(hub, batch_size=args.batch, progress=False)
        started = time.perf_counter()
        score_pairs(scorer, pairs.head(2))  # models loaded and first-call set-up (CUDA kernels, ONNX sessions)
        load_s = time.perf_counter() - started

        def timed(run):
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            out = run()
            if device == "cuda":
                torch.cuda.synchronize()
            return out, time.perf_counter() - started

        scores, seconds = timed(lambda: score_pairs(scorer, pairs))
        everything = images + portraits
        loaded, decode_s = timed(lambda: [Image.open(p).convert("RGB") for p in everything])
        _, faces_s = timed(lambda: detect_faces_batched(hub.face_analysis(), loaded, args.batch))
        _, clip_s = timed(lambda: hub.clip().encode_images(loaded, batch_size=args.batch))
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} thread(s) (dry run)"
    assert len(scores) == args.pairs and scores["chosen_aesthetic"].notna().all()
    n = len(images)
    print(
        f"pair scorer on {name}: {args.pairs} pairs, {n} distinct images at {args.size}x{args.size} (PNG),"
        f" {len(portraits)} portraits at 256x256, batch {args.batch}; real formats, random weights"
    )
    print(
        f"models built {built_s:.1f} s (0 when already built), images written {written_s:.1f} s,"
        f" models loaded + first call {load_s:.1f} s: none of these in the rate"
    )
    print(
        f"score_pairs end to end: {seconds:.2f} s, {n / seconds:.1f} images/s"
        f" ({len(everything)} files decoded and analysed, portraits included: {len(everything) / seconds:.1f} files/s)"
    )
    print(
        f"alone, on the same {len(everything)} files: decode {len(everything) / decode_s:.1f}/s,"
        f" faces (detect + recognise) {len(everything) / faces_s:.1f}/s,"
        f" CLIP image tower {len(everything) / clip_s:.1f}/s"
    )
    print(f"images per second: {n / seconds:.1f} (target 1,000)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--photos", type=int, default=6, help="demo group photos (real pairs)")
    parser.add_argument("--candidates", type=int, default=2, help="candidates per synthetic job")
    parser.add_argument("--gpu", action="store_true", help="real formats, random weights: images/s end to end")
    parser.add_argument("--pairs", type=int, default=512, help="--gpu: pairs (two distinct images each)")
    parser.add_argument("--size", type=int, default=1024, help="--gpu: image side")
    parser.add_argument("--batch", type=int, default=256, help="--gpu: the scorer's batch size")
    args = parser.parse_args()
    if args.gpu:
        gpu_scoring(args)
        return
    torch.set_num_threads(1)
    hub = ModelHub("demo", args.models_dir, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        pairs = demo_pairs(hub, Path(folder), args.photos, args.candidates)
        scorer = ImageScorer(hub, progress=False)
        score_pairs(scorer, pairs.head(2))  # load every model before timing either side
        naive_scores(hub, pairs.head(2))

        started = time.perf_counter()
        batched = score_pairs(scorer, pairs)
        batched_s = time.perf_counter() - started
        started = time.perf_counter()
        naive = naive_scores(hub, pairs)
        naive_s = time.perf_counter() - started

    columns = [f"delta_{m}" for m in METRICS]
    worst = float(np.abs(batched[columns].to_numpy() - naive[columns].to_numpy()).max())
    images = len(set(pairs["chosen_path"]) | set(pairs["rejected_path"]))
    print(f"{len(pairs)} pairs ({images} distinct images, {pairs['source'].value_counts().to_dict()})")
    print(f"{'scorer':<10}{'seconds':>10}{'pairs/s':>10}")
    print(f"{'naive':<10}{naive_s:>10.2f}{len(pairs) / naive_s:>10.1f}")
    print(f"{'batched':<10}{batched_s:>10.2f}{len(pairs) / batched_s:>10.1f}")
    print(f"speed-up: {naive_s / batched_s:.1f}x; largest difference in any delta: {worst:.2e}")


if __name__ == "__main__":
    main()
