"""CLIP through open_clip: the real ViT-L/14 (quick-GELU, OpenAI weights) or a tiny twin.

The OpenAI weights were trained with quick-GELU, so the real model must be built as
``ViT-L-14-quickgelu``; plain ``ViT-L-14`` runs them with the wrong activation and only warns.

Two file formats load, chosen by what the file is (never by profile): OpenAI's TorchScript
archive as released (``ViT-L-14.pt``), which ``torch.load(weights_only=True)`` refuses, goes
through open_clip's own OpenAI loader after its SHA-256 is checked; open_clip's state dicts
(``open_clip_pytorch_model.bin``, ``*.safetensors``) go through ``create_model_and_transforms``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.factory import set_model_preprocess_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from safetensors.torch import save_file

from idglow.models.registry import COMPONENTS_BY_PROFILE
from idglow.storage import sha256_file

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
            batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images[start : start + batch_size]])
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


class WeightsHashMismatch(ValueError):
    """A weights file is not the release its name promises; the message names both hashes."""


def released_sha256(weights: Path) -> str | None:
    """The pinned SHA-256 of a released file of this name (the registry's), else None."""
    for components in COMPONENTS_BY_PROFILE.values():
        for component in components.values():
            for required in component.required:
                if required.sha256 and Path(component.path, required.relative_path).name == weights.name:
                    return required.sha256
    return None


def verify_sha256(weights: Path, expected: str) -> None:
    actual = sha256_file(weights)
    if actual != expected:
        raise WeightsHashMismatch(
            f"{weights}: SHA-256 {actual}, expected {expected}; this is not the released file "
            f"(a partial download or another checkpoint). Replace it; nothing is downloaded."
        )


def is_torchscript_archive(weights: Path) -> bool:
    """A TorchScript archive is a zip holding ``constants.pkl`` (torch's own test); a
    ``torch.save`` zip has no such record, and safetensors is no zip at all."""
    if not zipfile.is_zipfile(weights):
        return False
    with zipfile.ZipFile(weights) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def _structure(model: torch.nn.Module) -> list[tuple]:
    """What makes two CLIPs the same network: every module's type and head count, every tensor's
    shape (the activation shows as QuickGELU against GELU)."""
    modules = [(name, type(m).__name__, getattr(m, "num_heads", None)) for name, m in model.named_modules()]
    return modules + sorted((name, tuple(t.shape)) for name, t in model.state_dict().items())


def _require_architecture(model: torch.nn.Module, model_name: str, weights: Path) -> None:
    """open_clip's OpenAI loader infers the network from the weights; it must be the one
    ``model_name`` names (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        named = open_clip.create_model(model_name, pretrained=None, device="meta")
    expected, found = _structure(named), _structure(model)
    if expected != found:
        first = next((e, f) for e, f in zip(expected + [None], found + [None], strict=False) if e != f)
        raise ValueError(
            f"{weights} holds a different network than {model_name!r}: first difference "
            f"{first[1]} where {model_name!r} has {first[0]}"
        )


def _load_openai_torchscript(model_name: str, weights: Path, device: torch.device, expected_sha256: str | None):
    """OpenAI's TorchScript release, loaded as open_clip's own OpenAI path does (``torch.jit.load``
    on the CPU, then a plain CLIP rebuilt from its state dict, fp32). TorchScript is no
    weights-only format, so the file must match a known SHA-256 first."""
    pin = expected_sha256 or released_sha256(weights)
    if pin is None:
        raise ValueError(
            f"{weights} is a TorchScript archive with no known SHA-256: name it as released "
            f"(ViT-L-14.pt) or pass expected_sha256"
        )
    verify_sha256(weights, pin)
    model = open_clip.load_openai_model(str(weights), precision="fp32", device="cpu")
    _require_architecture(model, model_name, weights)
    # the preprocessing create_model gives a checkpoint file: open_clip's defaults at the model's size
    set_model_preprocess_cfg(model, {**asdict(PreprocessCfg()), "size": model.visual.image_size})
    return model.to(device), image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)


def load_clip(
    model_name: str,
    weights: Path,
    device: torch.device,
    config_dir: Path | None = None,
    expected_sha256: str | None = None,
) -> ClipModel:
    """Build ``model_name`` and load ``weights`` (a local file) into it; nothing is downloaded.

    ``expected_sha256``: the hash to check the file against; a TorchScript archive named as a
    pinned release is checked against the pin without it."""
    weights = Path(weights)
    if config_dir is not None:
        open_clip.add_model_config(config_dir)
    if is_torchscript_archive(weights):
        model, preprocess = _load_openai_torchscript(model_name, weights, device, expected_sha256)
    else:
        if expected_sha256 is not None:
            verify_sha256(weights, expected_sha256)
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(weights), device=device)
    return ClipModel(model_name, model.eval(), preprocess, open_clip.get_tokenizer(model_name), device)
