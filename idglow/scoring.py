"""Scores of generated images against their condition portraits and prompt: Eq. 8 for the
preference pairs and the benchmark's per-image metrics, from one batched ``ImageScorer``.

Metrics (higher is better), each for an image ``x`` with condition portraits ``C`` and prompt ``p``:

- identity: Hungarian-matched mean ArcFace similarity between condition faces and faces in ``x``
  (``evaluation.metrics.face_similarity``; an unmatched condition counts 0), the benchmark's FaceSim;
- object: CLIP image-image similarity between each condition portrait and its matched person's
  head-and-shoulders region in ``x``, averaged (an unmatched condition counts 0);
- semantic: CLIP text-image similarity of ``p`` and ``x``;
- aesthetic: the LAION predictor on the normalised CLIP image embedding;
- people_count: 1 for exactly N faces, 1/(1 + |M - N|) otherwise;
- faces, and on request age and child_rate: the faces found in ``x``, their mean estimated age
  and the share of them judged children (``evaluation.metrics.child_rate``).

``ImageScorer`` analyses each distinct image and portrait once and runs the face pack, CLIP, its
text tower and the aesthetic MLP in batches; ``score_pairs`` scores both sides of every pair with
it and takes the deltas. ``naive_scores`` is the obvious per-pair loop, kept as the benchmark's
baseline and as a reference the batched scorer must agree with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from evaluation.metrics import child_rate, hungarian_match, people_count_score
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


def _image_scores(
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


class ImageScorer:
    """Scores batches of images with the hub's face pack, CLIP and aesthetic predictor, each
    distinct image and portrait analysed once per call."""

    def __init__(self, hub: ModelHub, batch_size: int = 64, progress: bool = True):
        self.hub = hub
        self.batch_size = batch_size
        self.progress = progress

    def score(
        self,
        images: Sequence[str],
        condition_paths: Sequence[Sequence[str]],
        prompts: Sequence[str],
        age: bool = False,
    ) -> pd.DataFrame:
        """One row per image file of ``images``, in order, against its condition portraits and
        prompt: the metrics above and ``faces``; ``age`` also runs the pack's attribute model for
        ``age`` and ``child_rate`` (NaN otherwise, and where no face is found)."""
        columns = [*METRICS, "faces", "age", "child_rate"]
        if not len(images):
            return pd.DataFrame(columns=columns, dtype=float)
        app, clip, mlp = self.hub.face_analysis(), self.hub.clip(), self.hub.aesthetic()
        distinct = list(dict.fromkeys(images))
        portraits = list(dict.fromkeys(p for paths in condition_paths for p in paths))
        distinct_prompts = list(dict.fromkeys(prompts))

        everything = distinct + portraits
        loaded = {
            p: Image.open(p).convert("RGB") for p in tqdm(everything, desc="reading images", disable=not self.progress)
        }
        found = detect_faces_batched(app, [loaded[p] for p in everything], self.batch_size, age, self.progress)
        faces = dict(zip(everything, found, strict=True))

        crops, crop_owner = [], []
        for p in distinct:
            image = loaded[p]
            for box in faces[p].boxes:
                crops.append(image.crop(head_and_shoulders(box, *image.size)))
                crop_owner.append(p)
        clip_embeddings = clip.encode_images([loaded[p] for p in everything] + crops, batch_size=self.batch_size)
        clip_embeddings = clip_embeddings.cpu().numpy()
        image_clip = dict(zip(everything, clip_embeddings[: len(everything)], strict=True))
        crop_clip: dict[str, list[np.ndarray]] = {p: [] for p in distinct}
        for p, embedding in zip(crop_owner, clip_embeddings[len(everything) :], strict=True):
            crop_clip[p].append(embedding)
        text_clip = dict(zip(distinct_prompts, clip.encode_texts(distinct_prompts).cpu().numpy(), strict=True))
        with torch.no_grad():
            aesthetic_scores = mlp(torch.as_tensor(np.stack([image_clip[p] for p in distinct]), device=self.hub.device))
        aesthetic = dict(zip(distinct, aesthetic_scores.float().cpu().numpy().tolist(), strict=True))

        rows = []
        for path, paths, prompt in zip(images, condition_paths, prompts, strict=True):
            crops_here = np.stack(crop_clip[path]) if crop_clip[path] else np.zeros((0, clip_embeddings.shape[1]))
            ages = faces[path].ages  # NaN unless ``age``
            scores = _image_scores(
                np.stack([portrait_embedding(faces[p]) for p in paths]),
                np.stack([image_clip[p] for p in paths]),
                faces[path],
                crops_here,
                image_clip[path],
                text_clip[prompt],
                aesthetic[path],
            )
            judged = ages if age else np.zeros(0)
            rows.append(
                {**scores, "age": float(ages.mean()) if len(ages) else float("nan"), "child_rate": child_rate(judged)}
            )
        return pd.DataFrame(rows, columns=columns)


def _with_deltas(pairs: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    scores = scores.reset_index(drop=True)
    for metric in METRICS:
        scores[f"delta_{metric}"] = scores[f"chosen_{metric}"] - scores[f"rejected_{metric}"]
    return pd.concat([pairs[["pair_id"]].reset_index(drop=True), scores], axis=1)


def score_pairs(scorer: ImageScorer, pairs: pd.DataFrame) -> pd.DataFrame:
    """Eq. 8 for both sides of every pair, and the deltas (chosen minus rejected), in one batch.
    ``pairs`` needs pair_id, chosen_path, rejected_path, condition_paths, prompt."""
    scored = scorer.score(
        [*pairs["chosen_path"], *pairs["rejected_path"]],
        [*pairs["condition_paths"]] * 2,
        [*pairs["prompt"]] * 2,
    )[[*METRICS, "faces"]]
    chosen = scored.iloc[: len(pairs)].add_prefix("chosen_").reset_index(drop=True)
    rejected = scored.iloc[len(pairs) :].add_prefix("rejected_").reset_index(drop=True)
    return _with_deltas(pairs, pd.concat([chosen, rejected], axis=1))


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
            side_scores = _image_scores(
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
    return _with_deltas(pairs, pd.DataFrame(rows))


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
