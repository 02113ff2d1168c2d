"""Eq. 8: score both sides of every preference pair on five metrics, then take the deltas.

Metrics (higher is better), each for an image ``x`` with condition portraits ``C`` and prompt ``p``:

- identity: Hungarian-matched mean ArcFace similarity between condition faces and faces in ``x``
  (``evaluation.metrics.face_similarity``; an unmatched condition counts 0);
- object: CLIP image-image similarity between each condition portrait and its matched person's
  head-and-shoulders region in ``x``, averaged (an unmatched condition counts 0);
- semantic: CLIP text-image similarity of ``p`` and ``x``;
- aesthetic: the LAION predictor on the normalised CLIP image embedding;
- people_count: 1 for exactly N faces, 1/(1 + |M - N|) otherwise.

``PairScorer`` analyses each distinct image and portrait once and runs CLIP, its text tower and
the aesthetic MLP in batches; ``naive_scores`` is the obvious per-pair loop, kept as the
benchmark's baseline and as a reference the batched scorer must agree with.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from evaluation.metrics import hungarian_match, people_count_score
from idglow.faces import Faces, detect_faces, detect_faces_batched, portrait_embedding
from idglow.models.hub import ModelHub

METRICS = ("identity", "object", "semantic", "aesthetic", "people_count")


def head_and_shoulders(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The face box enlarged to head and shoulders (choice: 0.6 w each side, 0.4 h up, 1.0 h down)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    left, top = max(0, int(x1 - 0.6 * w)), max(0, int(y1 - 0.4 * h))
    right, bottom = min(width, int(x2 + 0.6 * w) + 1), min(height, int(y2 + 1.0 * h) + 1)
    return left, top, max(right, left + 1), max(bottom, top + 1)


def _side_scores(
    condition_faces: np.ndarray,
    condition_clip: np.ndarray,
    faces: Faces,
    crop_clip: np.ndarray,
    image_clip: np.ndarray,
    text_clip: np.ndarray,
    aesthetic: float,
) -> dict[str, float]:
    n = len(condition_faces)
    match = hungarian_match(condition_faces, faces.embeddings) if len(faces.boxes) else np.full(n, -1)
    identity = np.zeros(n)
    obj = np.zeros(n)
    for i, j in enumerate(match):
        if j >= 0:
            identity[i] = float(condition_faces[i] @ faces.embeddings[j])
            obj[i] = float(condition_clip[i] @ crop_clip[j])
    return {
        "identity": float(identity.mean()),
        "object": float(obj.mean()),
        "semantic": float(image_clip @ text_clip),
        "aesthetic": float(aesthetic),
        "people_count": people_count_score(n, len(faces.boxes)),
        "faces": float(len(faces.boxes)),
    }


def _frame(pairs: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    scores = pd.DataFrame(rows)
    for metric in METRICS:
        scores[f"delta_{metric}"] = scores[f"chosen_{metric}"] - scores[f"rejected_{metric}"]
    return pd.concat([pairs[["pair_id"]].reset_index(drop=True), scores], axis=1)


class PairScorer:
    """Batched scoring with each distinct image and portrait analysed once per call."""

    def __init__(self, hub: ModelHub, batch_size: int = 64, progress: bool = True):
        self.hub = hub
        self.batch_size = batch_size
        self.progress = progress

    def score(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """``pairs`` needs pair_id, chosen_path, rejected_path, condition_paths, prompt."""
        app, clip, mlp = self.hub.face_analysis(), self.hub.clip(), self.hub.aesthetic()
        images = list(dict.fromkeys([*pairs["chosen_path"], *pairs["rejected_path"]]))
        portraits = list(dict.fromkeys(p for paths in pairs["condition_paths"] for p in paths))
        prompts = list(dict.fromkeys(pairs["prompt"]))

        loaded = {
            p: Image.open(p).convert("RGB")
            for p in tqdm(images + portraits, desc="reading images", disable=not self.progress)
        }
        everything = images + portraits
        faces = dict(
            zip(
                everything,
                detect_faces_batched(app, [loaded[p] for p in everything], self.batch_size, progress=self.progress),
                strict=True,
            )
        )

        crops, crop_owner = [], []
        for p in images:
            image = loaded[p]
            for index, box in enumerate(faces[p].boxes):
                crops.append(image.crop(head_and_shoulders(box, *image.size)))
                crop_owner.append((p, index))
        clip_inputs = [loaded[p] for p in images + portraits] + crops
        clip_embeddings = clip.encode_images(clip_inputs, batch_size=self.batch_size).cpu().numpy()
        image_clip = dict(zip(images + portraits, clip_embeddings[: len(images) + len(portraits)], strict=True))
        crop_clip: dict[str, list[np.ndarray]] = {p: [] for p in images}
        for (p, _), embedding in zip(crop_owner, clip_embeddings[len(images) + len(portraits) :], strict=True):
            crop_clip[p].append(embedding)
        text_clip = dict(zip(prompts, clip.encode_texts(prompts).cpu().numpy(), strict=True))
        with torch.no_grad():
            aesthetic_scores = mlp(torch.as_tensor(np.stack([image_clip[p] for p in images]), device=self.hub.device))
        aesthetic = dict(zip(images, aesthetic_scores.float().cpu().numpy().tolist(), strict=True))

        rows = []
        for pair in pairs.itertuples():
            condition_faces = np.stack([portrait_embedding(faces[p]) for p in pair.condition_paths])
            condition_clip = np.stack([image_clip[p] for p in pair.condition_paths])
            row: dict[str, float] = {}
            for side, path in (("chosen", pair.chosen_path), ("rejected", pair.rejected_path)):
                crops_here = np.stack(crop_clip[path]) if crop_clip[path] else np.zeros((0, clip_embeddings.shape[1]))
                side_scores = _side_scores(
                    condition_faces,
                    condition_clip,
                    faces[path],
                    crops_here,
                    image_clip[path],
                    text_clip[pair.prompt],
                    aesthetic[path],
                )
                row.update({f"{side}_{k}": v for k, v in side_scores.items()})
            rows.append(row)
        return _frame(pairs, rows)


def naive_scores(hub: ModelHub, pairs: pd.DataFrame) -> pd.DataFrame:
    """The obvious first version: per pair, per image, every model on that one image, no reuse."""
    app, clip, mlp = hub.face_analysis(), hub.clip(), hub.aesthetic()
    rows = []
    for pair in pairs.itertuples():
        portraits = [Image.open(p).convert("RGB") for p in pair.condition_paths]
        portrait_faces = [detect_faces(app, portrait) for portrait in portraits]
        row: dict[str, float] = {}
        for side, path in (("chosen", pair.chosen_path), ("rejected", pair.rejected_path)):
            image = Image.open(path).convert("RGB")
            faces = detect_faces(app, image)
            condition_faces = np.stack([portrait_embedding(f) for f in portrait_faces])
            condition_clip = np.stack([clip.encode_images([p])[0].cpu().numpy() for p in portraits])
            crops = [
                clip.encode_images([image.crop(head_and_shoulders(b, *image.size))])[0].cpu().numpy()
                for b in faces.boxes
            ]
            image_clip = clip.encode_images([image])[0]
            with torch.no_grad():
                aesthetic = float(mlp(image_clip[None]).item())
            text_clip = clip.encode_texts([pair.prompt])[0].cpu().numpy()
            side_scores = _side_scores(
                condition_faces,
                condition_clip,
                faces,
                np.stack(crops) if crops else np.zeros((0, len(text_clip))),
                image_clip.cpu().numpy(),
                text_clip,
                aesthetic,
            )
            row.update({f"{side}_{k}": v for k, v in side_scores.items()})
        rows.append(row)
    return _frame(pairs, rows)


def orient_by_score(scores: pd.DataFrame, pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For pairs whose preference is decided by the scores (synthetic vs synthetic), make the side
    with the higher identity score (then aesthetic) the chosen one, swapping paths and scores."""
    swap = (pairs["orientation"] == "by_score").to_numpy() & (
        (scores["delta_identity"] < 0) | ((scores["delta_identity"] == 0) & (scores["delta_aesthetic"] < 0))
    ).to_numpy()
    pairs, scores = pairs.copy(), scores.copy()
    pairs.loc[swap, ["chosen_path", "rejected_path"]] = pairs.loc[swap, ["rejected_path", "chosen_path"]].to_numpy()
    chosen_cols = [c for c in scores.columns if c.startswith("chosen_")]
    rejected_cols = [c.replace("chosen_", "rejected_") for c in chosen_cols]
    scores.loc[swap, chosen_cols + rejected_cols] = scores.loc[swap, rejected_cols + chosen_cols].to_numpy()
    for metric in METRICS:
        scores[f"delta_{metric}"] = scores[f"chosen_{metric}"] - scores[f"rejected_{metric}"]
    scores["swapped"] = swap
    return scores, pairs
