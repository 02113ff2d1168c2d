"""What each model component is, where its files go, and whether they are there.

The models directory layout (docs/models.md) is the same idea for both profiles: one folder or
file per component, named in ``REAL_COMPONENTS`` or ``TINY_COMPONENTS``. ``check_models`` lists
each as present or missing with the exact path expected; loading with a file missing raises one
``MissingModelFile`` naming that file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from idglow.storage import sha256_file

GENERATOR, PROMPT_MODEL, CLIP, AESTHETIC, FACE_PACK = "generator", "prompt_model", "clip", "aesthetic", "face_pack"
ROLES = (GENERATOR, PROMPT_MODEL, CLIP, AESTHETIC, FACE_PACK)


class MissingModelFile(FileNotFoundError):
    """A component's file is not where the layout says; the message names it and its source."""


@dataclass(frozen=True)
class RequiredFile:
    relative_path: str
    sha256: str | None = None


@dataclass(frozen=True)
class Component:
    role: str
    path: str  # relative to the models directory: a folder, or a file
    required: tuple[RequiredFile, ...]
    source: str
    license: str
    loader_name: str = ""  # open_clip model name, or the diffusers/transformers class
    # other released forms of a one-file component, used in this order when ``path`` is absent;
    # they carry no pin (``required``'s hashes are ``path``'s)
    alternatives: tuple[str, ...] = ()

    def chosen_path(self, models_dir: Path) -> str:
        """``path``, or the first alternative present; ``path`` when none is."""
        if (models_dir / self.path).exists():
            return self.path
        return next((p for p in self.alternatives if (models_dir / p).is_file()), self.path)

    def files(self, models_dir: Path) -> list[tuple[Path, RequiredFile]]:
        chosen = self.chosen_path(models_dir)
        base = models_dir / chosen
        required = self.required if chosen == self.path else (RequiredFile(""),)
        return [(base / f.relative_path if f.relative_path else base, f) for f in required]


REAL_COMPONENTS: dict[str, Component] = {
    GENERATOR: Component(
        GENERATOR,
        "Qwen-Image-Edit-2511",
        tuple(
            RequiredFile(p)
            for p in (
                "model_index.json",
                "transformer/config.json",
                "vae/config.json",
                "text_encoder/config.json",
                "tokenizer/tokenizer_config.json",
                "processor/preprocessor_config.json",
                "scheduler/scheduler_config.json",
            )
        ),
        source="the diffusers repository Qwen/Qwen-Image-Edit-2511 "
        "(all files, snapshot_download on a connected machine)",
        license="Apache-2.0",
        loader_name="QwenImageEditPlusPipeline",
    ),
    PROMPT_MODEL: Component(
        PROMPT_MODEL,
        "Qwen2.5-VL-7B-Instruct",
        tuple(RequiredFile(p) for p in ("config.json", "preprocessor_config.json", "tokenizer_config.json")),
        source="Qwen/Qwen2.5-VL-7B-Instruct (any Qwen2.5-VL or Qwen3-VL Instruct folder works)",
        license="Apache-2.0",
        loader_name="AutoModelForImageTextToText",
    ),
    CLIP: Component(
        CLIP,
        "clip/ViT-L-14.pt",
        (RequiredFile("", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"),),
        source="OpenAI CLIP ViT-L/14 weights as released (ViT-L-14.pt), or open_clip's copy of them "
        "(timm/vit_large_patch14_clip_224.openai: open_clip_pytorch_model.safetensors or .bin)",
        license="MIT",
        loader_name="ViT-L-14-quickgelu",
        alternatives=("clip/open_clip_pytorch_model.safetensors", "clip/open_clip_pytorch_model.bin"),
    ),
    AESTHETIC: Component(
        AESTHETIC,
        "aesthetic/sac+logos+ava1-l14-linearMSE.pth",
        (RequiredFile(""),),
        source="LAION improved-aesthetic-predictor, sac+logos+ava1-l14-linearMSE.pth",
        license="Apache-2.0",
    ),
    FACE_PACK: Component(
        FACE_PACK,
        "insightface/buffalo_l",
        tuple(RequiredFile(p) for p in ("det_10g.onnx", "w600k_r50.onnx", "genderage.onnx")),
        source="insightface model pack buffalo_l (unzip buffalo_l.zip here)",
        license="insightface packs: non-commercial research use only",
    ),
}

TINY_COMPONENTS: dict[str, Component] = {
    GENERATOR: Component(
        GENERATOR,
        "generator",
        tuple(
            RequiredFile(p)
            for p in ("model_index.json", "transformer/config.json", "vae/config.json", "text_encoder/config.json")
        ),
        source="built by idglow (pre-trained on the demo world, committed weights: idglow.models.world_generator)",
        license="Apache-2.0",
        loader_name="QwenImageEditPlusPipeline",
    ),
    PROMPT_MODEL: Component(
        PROMPT_MODEL,
        "prompt_model",
        # transformers 5 writes the processor (image processor inside) as processor_config.json
        tuple(RequiredFile(p) for p in ("config.json", "processor_config.json", "tokenizer_config.json")),
        source="built by idglow (tiny twin trained on the demo world: idglow.models.world_prompt_model)",
        license="Apache-2.0",
        loader_name="AutoModelForImageTextToText",
    ),
    CLIP: Component(
        CLIP,
        "clip/open_clip_model.safetensors",
        (RequiredFile(""),),
        source="built by idglow (tiny random-weight twin)",
        license="Apache-2.0",
        loader_name="idglow-tiny-clip",
    ),
    AESTHETIC: Component(
        AESTHETIC,
        "aesthetic/aesthetic_mlp.pth",
        (RequiredFile(""),),
        source="built by idglow (tiny random-weight twin)",
        license="Apache-2.0",
    ),
    FACE_PACK: Component(
        FACE_PACK,
        "insightface/tiny_pack",
        tuple(RequiredFile(p) for p in ("det_tiny_scrfd.onnx", "rec_tiny_arcface.onnx", "genderage_tiny.onnx")),
        source="trained by idglow on procedural faces",
        license="Apache-2.0",
    ),
}

COMPONENTS_BY_PROFILE = {"real": REAL_COMPONENTS, "demo": TINY_COMPONENTS}


@dataclass(frozen=True)
class FileStatus:
    role: str
    path: Path
    present: bool
    expected_sha256: str | None
    actual_sha256: str | None = None

    @property
    def verified(self) -> bool:
        """Whether the file's hash was computed (only with ``verify_hashes`` and a pin)."""
        return self.actual_sha256 is not None

    @property
    def ok(self) -> bool:
        """Present, and not known to be wrong: an unverified pinned file counts as ok, since its
        hash was never computed (reading a 1.7 GB file is what ``verify_hashes`` opts into)."""
        if not self.present:
            return False
        return self.expected_sha256 is None or not self.verified or self.actual_sha256 == self.expected_sha256

    @property
    def state(self) -> str:
        """What a report shows: MISSING, HASH MISMATCH, present (unverified) or present."""
        if not self.present:
            return "MISSING"
        if not self.ok:
            return "HASH MISMATCH"
        return "present (unverified)" if self.expected_sha256 and not self.verified else "present"


def check_models(profile: str, models_dir: Path, verify_hashes: bool = False) -> list[FileStatus]:
    """One status per required file; hashes are computed only when asked (large files)."""
    statuses = []
    for component in COMPONENTS_BY_PROFILE[profile].values():
        for path, required in component.files(models_dir):
            present = path.is_file()
            actual = sha256_file(path) if present and verify_hashes and required.sha256 else None
            statuses.append(FileStatus(component.role, path, present, required.sha256, actual))
    return statuses


def require_component(profile: str, role: str, models_dir: Path) -> Path:
    """The component's path, or one clear error naming the first missing file and its source."""
    component = COMPONENTS_BY_PROFILE[profile][role]
    for path, _ in component.files(models_dir):
        if not path.is_file():
            alternatives = "".join(f" or {models_dir / a}" for a in component.alternatives)
            raise MissingModelFile(
                f"{role} for the {profile} profile: missing {path}{alternatives} (expected layout in docs/models.md; "
                f"source: {component.source}; licence: {component.license}). Nothing is downloaded."
            )
    return models_dir / component.chosen_path(models_dir)


def component_fingerprint(profile: str, role: str, models_dir: Path) -> str:
    """A SHA-256 over a component's files: full content for files under 2 GiB, and name plus size
    for larger weight shards (hashing a 40 GB generator on every check costs minutes)."""
    import hashlib

    root = models_dir / COMPONENTS_BY_PROFILE[profile][role].chosen_path(models_dir)
    files = sorted(
        p for p in (root.rglob("*") if root.is_dir() else [root]) if p.is_file() and not p.name.startswith(".")
    )
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        content = sha256_file(path) if size < 2 << 30 else f"size:{size}"
        digest.update(f"{path.relative_to(root.parent)}:{content}\n".encode())
    return digest.hexdigest()
