"""CLIP through open_clip: the real ViT-L/14 (quick-GELU, OpenAI weights) or a tiny twin.

The OpenAI weights were trained with quick-GELU, so the real model must be built as
``ViT-L-14-quickgelu``; plain ``ViT-L-14`` runs them with the wrong activation and only warns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

TINY_CLIP_NAME = "idglow-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@dataclass
class ClipModel:
    """An open_clip model with its preprocessing and tokenizer, in eval mode."""

    name: str
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: torch.device

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised image embeddings, one row per image."""
        rows = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images[start:start + batch_size]])
            rows.append(self.model.encode_image(batch.to(self.device), normalize=True).float())
        return torch.cat(rows) if rows else torch.empty(0, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings, one row per text."""
        if not texts:
            return torch.empty(0, self.embed_dim)
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens, normalize=True).float()


def write_tiny_clip(folder: Path, seed: int) -> Path:
    """A tiny open_clip model: its config JSON and a safetensors state dict in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    open_clip.add_model_config(folder)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder


def load_clip(model_name: str, weights: Path, device: torch.device, config_dir: Path | None = None) -> ClipModel:
    """Build ``model_name`` and load ``weights`` (a local file) into it; nothing is downloaded."""
    if config_dir is not None:
        open_clip.add_model_config(config_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(weights), device=device)
    return ClipModel(model_name, model.eval(), preprocess, open_clip.get_tokenizer(model_name), device)
