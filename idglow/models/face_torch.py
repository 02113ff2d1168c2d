"""The differentiable face path of the training ID loss.

Detection runs without gradient (insightface's detector on a uint8 copy); alignment to the
ArcFace 112x112 template is a similarity transform of the five landmarks, estimated exactly as
insightface does and applied with ``affine_grid``/``grid_sample`` so gradients reach the pixels;
the embedding comes from the recogniser converted to torch. Images are RGB tensors in [-1, 1]
(a VAE decode's range), which is exactly the recogniser's input normalisation
``(p - 127.5) / 127.5``; insightface itself takes BGR uint8, and ``to_bgr_uint8`` converts.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from insightface.utils import face_align

from idglow.faces import find_faces

ARCFACE_SIZE = 112


def to_bgr_uint8(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) RGB tensor in [-1, 1] as the (H, W, 3) BGR uint8 array insightface expects."""
    rgb = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return np.ascontiguousarray(rgb.permute(1, 2, 0).cpu().numpy()[:, :, ::-1])


def alignment_matrix(landmarks: np.ndarray) -> np.ndarray:
    """The 2x3 pixel transform insightface's ``norm_crop`` applies (source -> 112 template)."""
    return face_align.estimate_norm(np.asarray(landmarks, dtype=np.float32), ARCFACE_SIZE)


def _pixel_to_normalized(size_h: int, size_w: int) -> np.ndarray:
    """Pixel centres (align_corners=False) to grid_sample's [-1, 1] coordinates."""
    return np.array([[2.0 / size_w, 0.0, 1.0 / size_w - 1.0], [0.0, 2.0 / size_h, 1.0 / size_h - 1.0], [0, 0, 1]])


def affine_theta(matrix: np.ndarray, image_h: int, image_w: int, out: int = ARCFACE_SIZE) -> np.ndarray:
    """``affine_grid``'s theta for cv2.warpAffine(image, matrix, (out, out)).

    warpAffine samples the source at M^-1 (x, y) for every output pixel; theta does the same in
    normalised coordinates: N_in . M^-1 . N_out^-1.
    """
    forward = np.vstack([matrix, [0.0, 0.0, 1.0]])
    theta = (
        _pixel_to_normalized(image_h, image_w) @ np.linalg.inv(forward) @ np.linalg.inv(_pixel_to_normalized(out, out))
    )
    return theta[:2]


def align_faces(images: torch.Tensor, image_index: list[int], landmarks: list[np.ndarray]) -> torch.Tensor:
    """Differentiably crop faces: ``images`` (B, 3, H, W) -> (N, 3, 112, 112), one per landmark set."""
    if not landmarks:
        return images.new_zeros((0, 3, ARCFACE_SIZE, ARCFACE_SIZE))
    _, _, height, width = images.shape
    thetas = np.stack([affine_theta(alignment_matrix(points), height, width) for points in landmarks])
    theta = torch.as_tensor(thetas, dtype=images.dtype, device=images.device)
    source = images[torch.as_tensor(image_index, device=images.device)]
    grid = F.affine_grid(theta, [len(landmarks), 3, ARCFACE_SIZE, ARCFACE_SIZE], align_corners=False)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def detect_landmarks(face_analysis, image: torch.Tensor) -> np.ndarray:
    """Five-point landmarks of every face insightface's detector finds (no gradient)."""
    return find_faces(face_analysis, to_bgr_uint8(image))[1]


def embed_faces(encoder: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """L2-normalised embeddings of aligned crops (RGB in [-1, 1])."""
    if len(crops) == 0:
        return crops.new_zeros((0, 1))
    return F.normalize(encoder(crops), dim=-1)
