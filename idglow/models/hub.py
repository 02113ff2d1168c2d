"""One loader for every model component, for both profiles.

``ModelHub(profile, models_dir)`` returns the generator pipeline, the prompt model, CLIP, the
aesthetic MLP, insightface's ``FaceAnalysis`` and the differentiable torch face encoder. The demo
profile's tiny twins are built on first use (``ensure_tiny_models``) and then loaded through
exactly the calls the real weights go through. Each component loads once per process.

Every load reads a local folder; the entry points set ``HF_HUB_OFFLINE`` before this module is
imported (``idglow.environment.settle``), importing it sets nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import onnxruntime
import torch

from idglow.editing import skip_unused_logits  # noqa: E402
from idglow.models.aesthetic import AestheticPredictor, load_aesthetic
from idglow.models.clip import ClipModel, load_clip
from idglow.models.registry import (
    AESTHETIC,
    CLIP,
    COMPONENTS_BY_PROFILE,
    FACE_PACK,
    GENERATOR,
    PROMPT_MODEL,
    MissingModelFile,
    require_component,
)

_CACHE: dict[tuple, object] = {}
_LOCK = threading.RLock()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as asked, or CUDA when available, else the CPU."""
    return torch.device(device) if device is not None else default_device()


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 for the diffusion and VLM models on CUDA, fp32 on the CPU (bf16 matmuls on a CPU
    are slow, and fp32 keeps the demo's numbers exact)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def onnx_providers() -> list[str]:
    """onnxruntime's CUDA provider when onnxruntime-gpu is installed, else the CPU."""
    available = onnxruntime.get_available_providers()
    return (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available
        else ["CPUExecutionProvider"]
    )


@dataclass(frozen=True)
class FaceAnalysisSettings:
    """How faces are seen: by the FaceSim metric, the pair scorer and the training ID loss alike."""

    det_size: int = 640  # one detection size; left unset, insightface 2.1 detects at 128^2 and 640^2 and merges
    det_thresh: float = 0.5
    # buffalo_l also holds two landmark models (1k3d68, 2d106det) that would run on every face
    # although nothing reads their output
    modules: tuple[str, ...] = ("detection", "recognition", "genderage")


FACE_ANALYSIS = FaceAnalysisSettings()


def load_face_analysis(pack_dir: Path, settings: FaceAnalysisSettings = FACE_ANALYSIS):
    """insightface's ``FaceAnalysis`` over ``pack_dir``, prepared with ``settings``; one object per
    pack folder and settings in this process."""
    from insightface.app import FaceAnalysis

    key = ("face_analysis", str(Path(pack_dir).resolve()), settings)
    with _LOCK:
        if key not in _CACHE:
            providers = onnx_providers()
            app = FaceAnalysis(name=str(pack_dir), providers=providers, allowed_modules=list(settings.modules))
            app.prepare(
                ctx_id=0 if providers[0].startswith("CUDA") else -1,
                det_thresh=settings.det_thresh,
                det_size=(settings.det_size, settings.det_size),
            )
            _CACHE[key] = app
        return _CACHE[key]


def load_face_encoder(pack_dir: Path, device: torch.device) -> torch.nn.Module:
    """The recogniser of ``load_face_analysis(pack_dir)`` as a frozen torch module (onnx2torch) on
    ``device``, for the training ID loss; one module per pack folder and device in this process."""
    from onnx2torch import convert

    key = ("face_encoder", str(Path(pack_dir).resolve()), str(device))
    with _LOCK:
        if key not in _CACHE:
            module = convert(str(load_face_analysis(pack_dir).models["recognition"].model_file))
            for parameter in module.parameters():
                parameter.requires_grad_(False)
            _CACHE[key] = module.to(device).eval()
        return _CACHE[key]


@dataclass
class ModelHub:
    """Loads each component of ``profile`` from ``models_dir`` (see docs/models.md)."""

    profile: str
    models_dir: Path
    device: torch.device | None = None
    seed: int = 0
    build_missing_twins: bool = True
    # the SHA-256 a TorchScript CLIP must have; unset, OpenAI's release (the registry's pin)
    clip_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.profile not in COMPONENTS_BY_PROFILE:
            raise ValueError(f"unknown profile {self.profile!r}; choose one of {sorted(COMPONENTS_BY_PROFILE)}")
        self.models_dir = Path(self.models_dir)
        self.device = resolve_device(self.device)

    @classmethod
    def of_profile(cls, profile, device: str | torch.device | None = None) -> ModelHub:
        """The hub of a profile (``idglow.profiles.Profile``): its models folder and trusted CLIP hash."""
        return cls(profile.name, profile.models_dir, device=device, clip_sha256=profile.clip_sha256)

    # ------------------------------------------------------------------ helpers

    @property
    def is_tiny(self) -> bool:
        return self.profile == "demo"

    @property
    def dtype(self) -> torch.dtype:
        return compute_dtype(self.device)

    def prepare(self, progress: bool = True) -> list[str]:
        """Build any missing tiny twin (demo profile); returns the roles built."""
        if not self.is_tiny:
            return []
        from idglow.models.tiny import ensure_tiny_models

        return ensure_tiny_models(self.models_dir, seed=self.seed, progress=progress)

    def path(self, role: str) -> Path:
        if self.is_tiny and self.build_missing_twins:
            try:
                return require_component(self.profile, role, self.models_dir)
            except MissingModelFile:
                self.prepare()
        return require_component(self.profile, role, self.models_dir)

    def _cached(self, role: str, load, variant: str = ""):
        key = (self.profile, str(self.models_dir), role, variant, str(self.device))
        with _LOCK:
            if key not in _CACHE:
                _CACHE[key] = load(self.path(role))
            return _CACHE[key]

    # --------------------------------------------------------------- components

    def generator(self):
        """``QwenImageEditPlusPipeline`` on the hub's device and dtype. Generate with
        ``idglow.editing.edit``, which takes the profile's reference budgets per call (calling the
        pipeline resizes references to diffusers' defaults, about 1 MP each)."""
        from diffusers import QwenImageEditPlusPipeline

        def load(path: Path):
            pipeline = QwenImageEditPlusPipeline.from_pretrained(path, dtype=self.dtype, local_files_only=True)
            pipeline.set_progress_bar_config(disable=True)
            skip_unused_logits(pipeline.text_encoder)
            return pipeline.to(self.device)

        return self._cached(GENERATOR, load)

    def generator_tokenizer(self):
        """The generator's own tokenizer, for the text encoder's token budget (no weights loaded)."""
        from transformers import AutoTokenizer

        return self._cached(
            GENERATOR,
            lambda path: AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True),
            variant="tokenizer",
        )

    def prompt_model(self, aligned: Path | None = None):
        """(model, processor) of the vision-language prompt writer: the base weights, or an
        aligned version (a folder `training.prompt_dpo` wrote), loaded the same way."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        def load(path: Path):
            path = aligned or path
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=self.dtype, local_files_only=True)
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            return model.to(self.device).eval(), processor

        return self._cached(PROMPT_MODEL, load, variant=str(aligned or ""))

    def clip(self) -> ClipModel:
        component = COMPONENTS_BY_PROFILE[self.profile][CLIP]

        def load(path: Path) -> ClipModel:
            config_dir = path.parent if self.is_tiny else None
            return load_clip(component.loader_name, path, self.device, config_dir, expected_sha256=self.clip_sha256)

        return self._cached(CLIP, load)

    def aesthetic(self) -> AestheticPredictor:
        return self._cached(AESTHETIC, lambda path: load_aesthetic(path, self.device))

    def face_analysis(self):
        """insightface's ``FaceAnalysis`` over the profile's pack folder, prepared with
        ``FACE_ANALYSIS`` (the same object the training ID loss gets for this pack); run it
        through ``idglow.faces``."""
        return load_face_analysis(self.path(FACE_PACK))

    def face_encoder(self) -> torch.nn.Module:
        """The pack's recogniser as a frozen torch module (onnx2torch), for the training ID loss."""
        return load_face_encoder(self.path(FACE_PACK), self.device)
