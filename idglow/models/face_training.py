"""Train the tiny face models on procedural faces whose boxes, landmarks and identities are known.

A randomly initialised recogniser is not identity-aware and a random detector finds nothing, so
the demo's tiny insightface pack is trained for a few seconds on scenes drawn by
``idglow.data.faces`` (fresh random identities, never the demo dataset's), then exported in
insightface's ONNX layouts. Everything is seeded and runs on one thread, so the pack is
byte-for-byte reproducible on a machine.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from insightface.utils import face_align
from tqdm.auto import tqdm

from idglow.data.faces import (
    YOUNG_CHILD_AGES,
    FaceTruth,
    background,
    draw_face,
    render_group,
    render_portrait,
    sample_style,
)
from idglow.data.scenes import render_scene
from idglow.models.face_nets import (
    ANCHORS,
    STRIDES,
    TinyArcFace,
    TinyGenderAge,
    TinySCRFD,
    export_onnx,
    scrfd_output_names,
)

DETECTOR_FILE = "det_tiny_scrfd.onnx"
RECOGNIZER_FILE = "rec_tiny_arcface.onnx"
GENDERAGE_FILE = "genderage_tiny.onnx"
RECIPE_VERSION = 5  # 5: age learnt from the world's ages; the detector and the recogniser see its scenes
CANVAS = 256
# the sides the world's scenes are drawn at for training: the demo generates at 64 px (where a
# scene face is about 10 px wide, a child's about 8), the detector upsamples to its input
WORLD_SCENE_SIDES = (64, 96, 128, 256)


@dataclass(frozen=True)
class WorldAgeConfig:
    """How the gender/age model's age output learns the world's ground truth. People are drawn
    at their identity's own adult age (``FaceStyle.age``, 20-69) or, ``child_fraction`` of them,
    at a young child's age (``YOUNG_CHILD_AGES``), in portraits or group scenes, and cropped on a
    jittered face box (as insightface crops on the detector's); the target is age / 100,
    insightface's convention.
    ``samples`` and ``epochs`` stand in for ``genderage_samples`` and ``genderage_epochs``
    (benchmarks/world_genderage.py measures it against the constant-age recipe).

    Adult faces are drawn with their identity's adult proportions whatever their age, so no model
    can tell 25 from 65 here: on adults the best it can do is their mean age."""

    samples: int = 2400  # faces
    child_fraction: float = 0.5  # of the people drawn
    scene_fraction: float = 0.5  # of the images drawn, group scenes (``render_scene``) rather than portraits
    box_jitter: float = 0.03  # of the face box's size, shift and scale
    scene_sides: tuple[int, ...] = WORLD_SCENE_SIDES
    epochs: int = 10
    age_weight: float = 10.0  # on the age MSE (in units of 100 years), against gender's cross-entropy


@dataclass(frozen=True)
class FaceTrainingConfig:
    seed: int = 0
    detector_input: int = 128
    detector_scenes: int = 2000
    detector_epochs: int = 12
    detector_world_scenes: int = 1300  # more, drawn by draw_world_scene (recipe 5): 39 % of them all
    recognizer_identities: int = 400
    renders_per_identity: int = 6
    recognizer_world_renders: int = 10  # per identity, faces from the world's scenes (_identity_crops; recipe 5)
    recognizer_epochs: int = 10
    embedding_size: int = 64
    genderage_samples: int = 600  # without world_age
    genderage_epochs: int = 3  # without world_age
    # the age output trained on the world's ages; None trains it towards a constant 30 years
    # (recipe version 4's pack: its age column said ~37 for every face)
    world_age: WorldAgeConfig | None = field(default_factory=lambda: WorldAgeConfig())

    def recorded(self) -> dict:
        """Every field as JSON reads it back (tuples as lists): the pack's training.json and its
        cache stamp, which must compare equal to the stamp read from disk."""
        return json.loads(json.dumps(asdict(self)))


# ------------------------------------------------------------------------ scenes


def draw_scene(rng: np.random.Generator, size: int = CANVAS, max_faces: int = 3) -> tuple[np.ndarray, list[FaceTruth]]:
    """An RGB image with one to ``max_faces`` non-overlapping faces of random new identities."""
    kind = rng.random()
    if kind < 0.25:
        image, truth = render_portrait(sample_style(rng), size, rng)
        return np.asarray(image), [truth]
    if kind < 0.5:
        image, truths = render_group([sample_style(rng) for _ in range(int(rng.integers(2, 4)))], size, rng)
        return np.asarray(image), truths
    image = background(size, rng)
    truths: list[FaceTruth] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, max_faces + 1))):
        for _attempt in range(12):
            half_width = float(math.exp(rng.uniform(math.log(size * 0.04), math.log(size * 0.26))))
            margin = half_width * 1.5
            if margin * 2 >= size:
                continue
            cx, cy = rng.uniform(margin, size - margin, size=2)
            if all(math.hypot(cx - x, cy - y) > (half_width + w) * 1.6 for x, y, w in placed):
                placed.append((cx, cy, half_width))
                truths.append(
                    draw_face(
                        image,
                        sample_style(rng),
                        (float(cx), float(cy)),
                        half_width,
                        angle_deg=float(rng.uniform(-10, 10)),
                        smile=float(rng.uniform(-0.3, 1)),
                        light=float(rng.uniform(0.85, 1.12)),
                    )
                )
                break
    return np.asarray(image), truths


def draw_world_scene(rng: np.random.Generator, child_fraction: float = 0.3) -> tuple[np.ndarray, list[FaceTruth]]:
    """A two- or three-person scene as the demo's group photos are drawn (``render_scene``), a
    share of its people as young children, at one of ``WORLD_SCENE_SIDES``: the detector sees the
    world's small, soft scene faces, not only faces pasted on a background."""
    side = WORLD_SCENE_SIDES[int(rng.integers(len(WORLD_SCENE_SIDES)))]
    styles = [sample_style(rng) for _ in range(int(rng.integers(2, 4)))]
    ages = [
        int(rng.integers(YOUNG_CHILD_AGES.start, YOUNG_CHILD_AGES.stop)) if rng.random() < child_fraction else None
        for _ in styles
    ]
    image, truths, _ = render_scene(styles, side, rng, ages=ages)
    return np.asarray(image), truths


# ------------------------------------------------------------------ training loop


def _fit(
    parameters: list[torch.nn.Parameter],
    count: int,
    epochs: int,
    batch: int,
    step_loss,
    seed: int,
    description: str,
    progress: bool,
    weight_decay: float,
) -> None:
    """AdamW with a one-cycle schedule over seeded shuffles of ``count`` examples;
    ``step_loss(index)`` returns the loss of one batch of example indices."""
    optimizer = torch.optim.AdamW(parameters, lr=3e-3, weight_decay=weight_decay)
    steps = epochs * math.ceil(count / batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc=description, disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, batch):
            loss = step_loss(order[start : start + batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()


# ---------------------------------------------------------------------- detector


def _detector_targets(truths: list[FaceTruth], scale: float, input_size: int) -> list[np.ndarray]:
    """Per stride, an (H, W, 16) array: score, 4 distances, 10 keypoint offsets, positive mask."""
    levels = [np.zeros((input_size // s, input_size // s, 16), dtype=np.float32) for s in STRIDES]
    # The extent of the face that owns each cell: a cell two faces claim goes to the smaller one.
    owners = [np.full((input_size // s, input_size // s), np.inf) for s in STRIDES]
    for truth in truths:
        x1, y1, x2, y2 = (c * scale for c in truth.bbox)
        w, h = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        extent = max(w, h)
        level = 0 if extent < 28 else 1 if extent < 56 else 2
        stride = STRIDES[level]
        grid = input_size // stride
        kps = np.asarray(truth.landmarks, dtype=np.float32) * scale
        rx, ry = max(0.22 * w, stride * 0.5), max(0.22 * h, stride * 0.5)
        nearest = (int(np.clip(round(cx / stride), 0, grid - 1)), int(np.clip(round(cy / stride), 0, grid - 1)))
        for gy in range(grid):
            for gx in range(grid):
                ax, ay = gx * stride, gy * stride
                inside = abs(ax - cx) <= rx and abs(ay - cy) <= ry
                if not inside and (gx, gy) != nearest:
                    continue
                if owners[level][gy, gx] <= extent:
                    continue
                owners[level][gy, gx] = extent
                cell = levels[level][gy, gx]
                cell[0] = 1.0
                cell[1:5] = np.array([ax - x1, ay - y1, x2 - ax, y2 - ay]) / stride
                cell[5:15] = ((kps - np.array([ax, ay])) / stride).reshape(-1)
                cell[15] = 1.0
    return levels


def _to_input(image: np.ndarray, std: float) -> torch.Tensor:
    return torch.from_numpy((image.astype(np.float32) - 127.5) / std).permute(2, 0, 1)


def train_detector(config: FaceTrainingConfig, progress: bool = True) -> TinySCRFD:
    rng = np.random.default_rng([config.seed, 1])
    size = config.detector_input
    inputs, targets = [], [[] for _ in STRIDES]
    world_rng = np.random.default_rng([config.seed, 5])
    scenes = (draw_scene(rng) for _ in range(config.detector_scenes))
    world_scenes = (draw_world_scene(world_rng) for _ in range(config.detector_world_scenes))
    for image, truths in itertools.chain(scenes, world_scenes):
        small = cv2.resize(image, (size, size))  # bilinear, as insightface resizes to the detector's input
        inputs.append(_to_input(small, 128.0))
        for level, target in enumerate(_detector_targets(truths, size / len(image), size)):
            targets[level].append(torch.from_numpy(target))
    x_all = torch.stack(inputs)
    t_all = [torch.stack(t) for t in targets]

    torch.manual_seed(config.seed)
    model = TinySCRFD(size).train()
    _fit(
        list(model.parameters()),
        len(x_all),
        config.detector_epochs,
        32,
        lambda index: _detector_loss(model.raw(x_all[index]), [t[index] for t in t_all]),
        config.seed,
        "training tiny face detector",
        progress,
        weight_decay=1e-4,
    )
    return model.eval()


def _detector_loss(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    score_loss, box_loss, kps_loss, positives = 0.0, 0.0, 0.0, 0.0
    for out, target in zip(outputs, targets, strict=True):
        target = target.unsqueeze(3).expand(-1, -1, -1, ANCHORS, -1)
        logits = out[..., 0]
        label = target[..., 0]
        prob = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
        p_t = prob * label + (1 - prob) * (1 - label)
        alpha = 0.5  # balanced: insightface keeps boxes above 0.5, so scores must be calibrated high
        score_loss = score_loss + (alpha * (1 - p_t) ** 2 * ce).sum()
        mask = target[..., 15] > 0
        positives = positives + mask.sum()
        if mask.any():
            box_loss = box_loss + F.smooth_l1_loss(
                out[..., 1:5][mask], target[..., 1:5][mask], reduction="sum", beta=0.1
            )
            kps_loss = kps_loss + F.smooth_l1_loss(
                out[..., 5:15][mask], target[..., 5:15][mask], reduction="sum", beta=0.1
            )
    n = torch.clamp(torch.as_tensor(positives, dtype=torch.float32), min=1.0)
    return (score_loss + box_loss / 4 + kps_loss / 10) / n


# -------------------------------------------------------------------- recogniser


def aligned_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """insightface's own alignment (similarity transform to the ArcFace template)."""
    return face_align.norm_crop(image, landmark=np.asarray(landmarks, dtype=np.float32), image_size=size)


def _identity_crops(config: FaceTrainingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned crops of each identity: ``renders_per_identity`` portraits, then
    ``recognizer_world_renders`` faces from the world's scenes (the identity beside one or two
    others, at the scene sides ``draw_world_scene`` uses, 30 % of them as a young child)."""
    rng = np.random.default_rng([config.seed, 2])
    world_rng = np.random.default_rng([config.seed, 6])
    crops, labels = [], []
    for label in range(config.recognizer_identities):
        style = sample_style(rng)
        for _ in range(config.renders_per_identity):
            image, truth = render_portrait(style, CANVAS, rng)
            landmarks = np.asarray(truth.landmarks) + rng.normal(0, 1.2, size=(5, 2))
            crops.append(_to_input(aligned_crop(np.asarray(image), landmarks), 127.5))
            labels.append(label)
        for _ in range(config.recognizer_world_renders):
            image, truth = _world_scene_face(style, world_rng)
            width = truth.bbox[2] - truth.bbox[0]  # a detector's landmarks err by a few percent of it
            landmarks = np.asarray(truth.landmarks) + world_rng.normal(0, 0.03 * width, size=(5, 2))
            crops.append(_to_input(aligned_crop(image, landmarks), 127.5))
            labels.append(label)
    return torch.stack(crops), torch.tensor(labels)


def _world_scene_face(style, rng: np.random.Generator, child_fraction: float = 0.3) -> tuple[np.ndarray, FaceTruth]:
    """``style`` in a world scene with one or two new people (at a random place in it)."""
    side = WORLD_SCENE_SIDES[int(rng.integers(len(WORLD_SCENE_SIDES)))]
    styles = [sample_style(rng) for _ in range(int(rng.integers(1, 3)))]
    place = int(rng.integers(len(styles) + 1))
    styles.insert(place, style)
    ages = [
        int(rng.integers(YOUNG_CHILD_AGES.start, YOUNG_CHILD_AGES.stop)) if rng.random() < child_fraction else None
        for _ in styles
    ]
    image, truths, _ = render_scene(styles, side, rng, ages=ages)
    return np.asarray(image), truths[place]


def train_recognizer(config: FaceTrainingConfig, progress: bool = True) -> TinyArcFace:
    """Metric learning with a CosFace margin over random procedural identities."""
    x_all, y_all = _identity_crops(config)
    torch.manual_seed(config.seed)
    model = TinyArcFace(config.embedding_size).train()
    classes = torch.nn.Parameter(torch.randn(config.recognizer_identities, config.embedding_size) * 0.01)
    scale, margin = 16.0, 0.25

    def cosface_loss(index: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(model(x_all[index])) @ F.normalize(classes).T
        one_hot = F.one_hot(y_all[index], config.recognizer_identities).float()
        return F.cross_entropy(scale * (cosine - margin * one_hot), y_all[index])

    _fit(
        [*model.parameters(), classes],
        len(x_all),
        config.recognizer_epochs,
        64,
        cosface_loss,
        config.seed,
        "training tiny face recogniser",
        progress,
        weight_decay=5e-4,
    )
    return model.eval()


# -------------------------------------------------------------------- gender/age


def _attribute_crop(image: np.ndarray, bbox: tuple[float, float, float, float], size: int = 96) -> np.ndarray:
    """The crop insightface's attribute model sees: centred on the box, 1.5x its longer side."""
    w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
    center = ((bbox[2] + bbox[0]) / 2, (bbox[3] + bbox[1]) / 2)
    crop, _ = face_align.transform(image, center, size, size / (max(w, h) * 1.5), 0)
    return crop


def _jitter(bbox: tuple[float, float, float, float], rng: np.random.Generator, amount: float):
    """``bbox`` shifted and rescaled by up to ``amount`` of its size, as a detector's box differs
    from the drawn one."""
    w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
    dx, dy, ds = rng.uniform(-amount, amount, size=3)
    cx, cy = (bbox[0] + bbox[2]) / 2 + dx * w, (bbox[1] + bbox[3]) / 2 + dy * h
    half_w, half_h = w * (1 + ds) / 2, h * (1 + ds) / 2
    return (float(cx - half_w), float(cy - half_h), float(cx + half_w), float(cy + half_h))


def _world_age_samples(
    config: FaceTrainingConfig, world_age: WorldAgeConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attribute crops, genders and ages / 100 of ``world_age.samples`` drawn faces. Styles and
    renders come from the default recipe's stream (``render_portrait``'s age draws nothing from
    it); ages, scenes and box jitter from a stream of their own."""
    rng = np.random.default_rng([config.seed, 3])
    age_rng = np.random.default_rng([config.seed, 3, 1])

    def draw_age() -> int | None:
        child = age_rng.random() < world_age.child_fraction
        return int(age_rng.integers(YOUNG_CHILD_AGES.start, YOUNG_CHILD_AGES.stop)) if child else None

    crops, genders, ages = [], [], []
    while len(crops) < world_age.samples:
        if age_rng.random() < world_age.scene_fraction:
            styles = [sample_style(rng) for _ in range(int(age_rng.integers(2, 4)))]
            side = world_age.scene_sides[int(age_rng.integers(len(world_age.scene_sides)))]
            image, truths, _ = render_scene(styles, side, rng, ages=[draw_age() for _ in styles])
        else:
            image, truth = render_portrait(sample_style(rng), CANVAS, rng, age=draw_age())
            truths = [truth]
        pixels = np.asarray(image)
        for truth in truths[: world_age.samples - len(crops)]:
            box = _jitter(truth.bbox, age_rng, world_age.box_jitter)
            crops.append(_to_input(_attribute_crop(pixels, box), 128.0))
            genders.append(int(truth.male))
            ages.append(truth.age / 100)
    return torch.stack(crops), torch.tensor(genders), torch.tensor(ages, dtype=torch.float32)


def train_genderage(config: FaceTrainingConfig, progress: bool = True) -> TinyGenderAge:
    """Gender from the drawn style; age from the ages the faces were drawn at
    (``config.world_age``), or without it towards a constant 0.3 (30 years)."""
    world_age = config.world_age
    if world_age is None:
        rng = np.random.default_rng([config.seed, 3])
        crops, genders = [], []
        for _ in range(config.genderage_samples):
            style = sample_style(rng)
            image, truth = render_portrait(style, CANVAS, rng)
            crops.append(_to_input(_attribute_crop(np.asarray(image), truth.bbox), 128.0))
            genders.append(int(style.male))
        x_all, y_all = torch.stack(crops), torch.tensor(genders)
        a_all, age_weight, epochs = torch.full((len(x_all),), 0.3), 1.0, config.genderage_epochs
    else:
        x_all, y_all, a_all = _world_age_samples(config, world_age)
        age_weight, epochs = world_age.age_weight, world_age.epochs
    torch.manual_seed(config.seed)
    model = TinyGenderAge().train()

    def gender_age_loss(index: torch.Tensor) -> torch.Tensor:
        out = model(x_all[index])
        return F.cross_entropy(out[:, :2], y_all[index]) + age_weight * F.mse_loss(out[:, 2], a_all[index])

    _fit(
        list(model.parameters()),
        len(x_all),
        epochs,
        64,
        gender_age_loss,
        config.seed,
        "training tiny gender/age",
        progress,
        weight_decay=1e-4,
    )
    return model.eval()


# ------------------------------------------------------------------------- pack


def write_tiny_face_pack(
    folder: Path,
    config: FaceTrainingConfig = FaceTrainingConfig(),
    progress: bool = True,
) -> Path:
    """Train the three tiny models and export them as an insightface pack folder."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        detector = train_detector(config, progress)
        recognizer = train_recognizer(config, progress)
        genderage = train_genderage(config, progress)
    finally:
        torch.set_num_threads(previous_threads)
    folder.mkdir(parents=True, exist_ok=True)
    size = config.detector_input
    export_onnx(detector, torch.zeros(1, 3, size, size), folder / DETECTOR_FILE, scrfd_output_names())
    export_onnx(recognizer, torch.zeros(1, 3, 112, 112), folder / RECOGNIZER_FILE, ["embedding"], dynamic_batch=True)
    export_onnx(genderage, torch.zeros(1, 3, 96, 96), folder / GENDERAGE_FILE, ["fc1"])
    recorded = {"recipe_version": RECIPE_VERSION, **config.recorded()}
    (folder / "training.json").write_text(json.dumps(recorded, indent=2))
    return folder
