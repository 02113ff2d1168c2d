"""Study: can the tiny face pack's gender/age model tell a child from an adult in the demo world?

Trains the gender/age model twice with one seed, as ``write_tiny_face_pack`` does (one thread):
the constant-age recipe of face recipe 4 (age trained towards 0.3; ``world_age=None``) and
the ``WorldAgeConfig`` the pack uses since recipe 5 (age trained on the ages the faces were
drawn at). Each is exported with ``export_onnx`` into a copy
of the demo pack (the detector and recogniser of ``--models-dir``'s pack) and loaded with the
hub's loader (``load_face_analysis``), so faces go through insightface's attribute model exactly
as in the pipeline: its crop, its preprocessing (BGR in), age = round(100 x output).

Held-out identities (another rng stream than any training one) are drawn as adults (their own
age, 20-69) and as young children (``YOUNG_CHILD_AGES``):

* portraits, the attribute model run on the drawn face box;
* two- and three-person scenes (``render_scene``), all adults or all children, the attribute
  model run on what the tiny detector finds (matched to a drawn face at IoU >= 0.3), as
  ``detect_faces_batched`` does.

Printed: age MAE, the predicted age's distribution, the child rate (predicted age < 18, the
world's ``ADULT_AGE``), gender accuracy, the training time and the ONNX file's size.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/world_genderage.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from insightface.app.common import Face

from idglow.data.faces import ADULT_AGE, YOUNG_CHILD_AGES, render_portrait, sample_style
from idglow.data.scenes import render_scene
from idglow.faces import find_faces, pil_to_bgr
from idglow.models.face_nets import export_onnx
from idglow.models.face_training import (
    CANVAS,
    DETECTOR_FILE,
    GENDERAGE_FILE,
    RECOGNIZER_FILE,
    FaceTrainingConfig,
    WorldAgeConfig,
    train_genderage,
)
from idglow.models.hub import load_face_analysis

REPO = Path(__file__).resolve().parents[1]
PACK = Path("insightface") / "tiny_pack"


def _child_age(rng: np.random.Generator) -> int:
    return int(rng.integers(YOUNG_CHILD_AGES.start, YOUNG_CHILD_AGES.stop))


def held_out(seed: int, identities: int, scenes: int, scene_side: int = CANVAS):
    """(image, [(bbox, age, male)]) pairs: each identity's portrait as an adult and as a child,
    then scenes of new people at ``scene_side`` px, all adults or all children."""
    rng = np.random.default_rng([seed, 4242])
    portraits = {"adult": [], "child": []}
    for _ in range(identities):
        style = sample_style(rng)
        for group, age in (("adult", None), ("child", _child_age(rng))):
            image, truth = render_portrait(style, CANVAS, rng, age=age)
            portraits[group].append((image, [(truth.bbox, truth.age, truth.male)]))
    groups = {"adult": [], "child": []}
    for index in range(scenes):
        styles = [sample_style(rng) for _ in range(int(rng.integers(2, 4)))]
        group = "child" if index % 2 else "adult"
        ages = [_child_age(rng) if group == "child" else None for _ in styles]
        image, truths, _ = render_scene(styles, scene_side, rng, ages=ages)
        groups[group].append((image, [(t.bbox, t.age, t.male) for t in truths]))
    return portraits, groups


def _iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def predict(app, samples, detect: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Predicted ages and genders with their truths, over the drawn faces (``detect``: those the
    detector finds, at their detected box and landmarks); and how many drawn faces there were."""
    attributes = app.models["genderage"]
    ages, genders, true_ages, true_males, total = [], [], [], [], 0
    for image, truths in samples:
        bgr = pil_to_bgr(image)
        total += len(truths)
        if detect:
            found, landmarks = find_faces(app, bgr)
            faces = []
            for bbox, age, male in truths:
                scores = [_iou(bbox, row[:4]) for row in found]
                best = int(np.argmax(scores)) if scores else -1
                if best >= 0 and scores[best] >= 0.3:
                    row = found[best]
                    faces.append((Face(bbox=row[:4], kps=landmarks[best], det_score=row[4]), age, male))
        else:
            faces = [(Face(bbox=np.asarray(bbox, dtype=np.float32)), age, male) for bbox, age, male in truths]
        for face, age, male in faces:
            attributes.get(bgr, face)
            ages.append(face.age)
            genders.append(int(face.gender))
            true_ages.append(age)
            true_males.append(int(male))
    return np.array(ages), np.array(genders), np.array(true_ages), np.array(true_males), total


def _auc(child: np.ndarray, adult: np.ndarray) -> float:
    """P(a child's predicted age < an adult's), ties half: 0.5 is chance (and a constant)."""
    if not len(child) or not len(adult):
        return float("nan")
    less = (child[:, None] < adult[None, :]).mean()
    ties = (child[:, None] == adult[None, :]).mean()
    return float(less + ties / 2)


def evaluate(app, portraits, scenes) -> dict[str, dict[str, float]]:
    rows = {}
    for source, data, detect in (("portraits", portraits, False), ("scenes", scenes, True)):
        predicted = {}
        for group in ("adult", "child"):
            if not data[group]:
                continue
            ages, genders, true_ages, males, total = predict(app, data[group], detect)
            predicted[group] = ages
            quartiles = np.percentile(ages, [10, 50, 90]) if len(ages) else [np.nan] * 3
            rows[f"{source} {group}"] = {
                "faces": len(ages),
                "of drawn": total,
                "age MAE": float(np.abs(ages - true_ages).mean()) if len(ages) else np.nan,
                "age mean": float(ages.mean()) if len(ages) else np.nan,
                "age p10/p50/p90": "/".join(f"{q:.0f}" for q in quartiles),
                f"child rate (<{ADULT_AGE})": float((ages < ADULT_AGE).mean()) if len(ages) else np.nan,
                "gender acc": float((genders == males).mean()) if len(ages) else np.nan,
            }
        if len(predicted) == 2:
            rows[f"{source} child/adult AUC"] = {"AUC": _auc(predicted["child"], predicted["adult"])}
    return rows


def build(name: str, config: FaceTrainingConfig, world_age: WorldAgeConfig | None, source: Path, folder: Path):
    """Train one gender/age model as the pack build does, export it into a pack folder beside the
    source pack's detector and recogniser, and load that pack as the hub does."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        model = train_genderage(replace(config, world_age=world_age), progress=False)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    pack = folder / name
    pack.mkdir(parents=True)
    for file in (DETECTOR_FILE, RECOGNIZER_FILE):
        (pack / file).symlink_to((source / file).resolve())
    path = export_onnx(model, torch.zeros(1, 3, 96, 96), pack / GENDERAGE_FILE, ["fc1"])
    return load_face_analysis(pack), seconds, path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="the training seed (the demo pack's is 0)")
    parser.add_argument("--eval-seed", type=int, default=1, help="the held-out identities' stream")
    parser.add_argument("--identities", type=int, default=200, help="held-out identities (a portrait each age)")
    parser.add_argument("--scenes", type=int, default=60, help="held-out scenes, half adults, half children")
    parser.add_argument("--samples", type=int, default=WorldAgeConfig.samples, help="world-age training portraits")
    parser.add_argument("--epochs", type=int, default=WorldAgeConfig.epochs)
    parser.add_argument("--scene-fraction", type=float, default=WorldAgeConfig.scene_fraction)
    parser.add_argument("--box-jitter", type=float, default=WorldAgeConfig.box_jitter)
    parser.add_argument("--age-weight", type=float, default=WorldAgeConfig.age_weight)
    parser.add_argument(
        "--scene-sides", type=int, nargs="+", default=list(WorldAgeConfig.scene_sides), help="training scenes' sides"
    )
    parser.add_argument(
        "--scene-side", type=int, default=CANVAS, help="the held-out scenes' side (the demo generates at 64 px)"
    )
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models" / "demo")
    args = parser.parse_args()

    source = args.models_dir / PACK
    if not (source / DETECTOR_FILE).exists():
        parser.error(f"no tiny face pack in {source}: build it with `idglow models` (or run a test that uses it)")
    portraits, scenes = held_out(args.eval_seed, args.identities, args.scenes, args.scene_side)
    config = FaceTrainingConfig(seed=args.seed, world_age=None)
    world_age = WorldAgeConfig(
        samples=args.samples,
        epochs=args.epochs,
        scene_fraction=args.scene_fraction,
        box_jitter=args.box_jitter,
        age_weight=args.age_weight,
        scene_sides=tuple(args.scene_sides),
    )
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, recipe in (("constant (age -> 0.3)", None), (f"world age ({world_age})", world_age)):
            app, seconds, size = build(name.split(" ")[0], config, recipe, source, Path(folder))
            results[name] = (seconds, size, evaluate(app, portraits, scenes))

    print(
        f"held out: {args.identities} identities (adult + child portrait each), "
        f"{args.scenes} scenes at {args.scene_side} px\n"
    )
    for name, (seconds, size, rows) in results.items():
        print(f"== {name}: trained in {seconds:.1f} s (1 thread), {GENDERAGE_FILE} {size / 1024:.1f} KiB")
        for row, values in rows.items():
            cells = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
            print(f"  {row:<26} {cells}")
        print()


if __name__ == "__main__":
    main()
