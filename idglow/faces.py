"""Faces as insightface sees them, for every reader: the pair scorer, the benchmark, the training
ID loss's source faces and the candidates' face count.

The hub loads and prepares the face pack (``idglow.models.hub.load_face_analysis``, one
``FaceAnalysis`` per pack in a process); this module only runs it, so every reader detects and
embeds faces the same way. Images come in as PIL images; insightface takes BGR uint8 arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from insightface.app.common import Face
from insightface.utils import face_align
from PIL import Image
from tqdm.auto import tqdm


def pil_to_bgr(image: Image.Image) -> np.ndarray:
    """insightface takes OpenCV's BGR channel order."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


@dataclass
class Faces:
    """Every face found in one image, in the detector's order."""

    boxes: np.ndarray  # (M, 4)
    embeddings: np.ndarray  # (M, d), L2-normalised
    ages: np.ndarray  # (M,) the pack's estimated ages; NaN where the attribute model did not run

    def __len__(self) -> int:
        return len(self.boxes)


def embedding_width(app) -> int:
    """The width of the face pack's embeddings (the recogniser's output), known before any face."""
    return int(app.models["recognition"].output_shape[1])


def find_faces(app, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """insightface's detector on a BGR image: (F, 5) boxes with their scores and (F, 5, 2)
    landmarks, both empty when it finds nothing."""
    found, landmarks = app.det_model.detect(bgr)
    if not len(found):
        return np.zeros((0, 5), dtype=np.float32), np.zeros((0, 5, 2), dtype=np.float32)
    return found, landmarks


def count_faces(app, image: Image.Image) -> int:
    """How many faces ``FaceAnalysis.get`` would return: the detector's count (nothing else changes it)."""
    return len(find_faces(app, pil_to_bgr(image))[0])


def _no_faces(app) -> Faces:
    return Faces(np.zeros((0, 4)), np.zeros((0, embedding_width(app)), dtype=np.float32), np.zeros(0))


def detect_faces(app, image: Image.Image) -> Faces:
    """Boxes, normalised embeddings and ages of every face ``FaceAnalysis.get`` finds in ``image``."""
    found = app.get(pil_to_bgr(image))
    if not found:
        return _no_faces(app)
    return Faces(
        np.stack([f.bbox for f in found]),
        np.stack([f.normed_embedding for f in found]),
        np.array([f.get("age", np.nan) for f in found], dtype=np.float64),
    )


def detect_faces_batched(
    app, images: list[Image.Image], batch_size: int = 64, ages: bool = False, progress: bool = False
) -> list[Faces]:
    """What ``detect_faces`` returns for each of ``images``, with the recogniser run over every face
    of every image in batches; the attribute model runs only for ``ages`` (NaN otherwise), as
    most readers never look at it."""
    recognizer = app.models["recognition"]
    attributes = app.models.get("genderage") if ages else None
    boxes, face_ages, crops, owners = [], [], [], []
    for index, image in enumerate(tqdm(images, desc="detecting faces", disable=not progress)):
        bgr = pil_to_bgr(image)
        found, landmarks = find_faces(app, bgr)
        boxes.append(found[:, :4])
        here = np.full(len(found), np.nan)
        for face_index, (row, points) in enumerate(zip(found, landmarks, strict=True)):
            crops.append(face_align.norm_crop(bgr, landmark=points, image_size=recognizer.input_size[0]))
            owners.append(index)
            if attributes is not None:
                face = Face(bbox=row[:4], kps=points, det_score=row[4])
                attributes.get(bgr, face)
                here[face_index] = face.age
        face_ages.append(here)
    if isinstance(recognizer.input_shape[0], int):  # a recogniser exported with a fixed batch of one
        batch_size = recognizer.input_shape[0]
    features = [recognizer.get_feat(crops[i : i + batch_size]) for i in range(0, len(crops), batch_size)]
    embeddings = np.concatenate(features) if features else np.zeros((0, embedding_width(app)), dtype=np.float32)
    embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(min=1e-12)
    owners_array = np.asarray(owners)
    return [
        Faces(boxes[i], embeddings[owners_array == i] if len(owners) else embeddings, face_ages[i])
        for i in range(len(images))
    ]


def portrait_embedding(faces: Faces) -> np.ndarray:
    """The largest face of a portrait, or zeros (similarity 0) when none is found."""
    if len(faces.boxes) == 0:
        return np.zeros(faces.embeddings.shape[1], dtype=np.float32)
    areas = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
    return faces.embeddings[int(np.argmax(areas))]
