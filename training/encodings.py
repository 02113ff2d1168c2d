"""What the transformer sees of a sample, encoded once and kept on disk.

Training a LoRA on the transformer leaves the VAE and the text encoder frozen, so a sample's
target latents, reference latents and prompt embeddings are the same every epoch and every run
with the same encoders and sizes. They are written once to ``<cache dir>/<key>.safetensors``,
where the key is a SHA-256 of the sample's content (its decoded pixels and its prompt) and of the
encoding settings (the encoders' files, resolution, the reference budgets, dtype, library
versions). References are resized and encoded by ``idglow.editing``'s functions, the ones
inference uses, so the LoRA trains on the reference tokens it will be given. Each step reads its
samples' files to the CPU, moves them to the device, and drops them after the step: nothing in
memory grows with the sample count (a few thousand 1024² samples with two or three references
do not fit in GPU memory), and a second run with the same settings reads instead of encoding.
Files are written atomically (``idglow.storage.atomic_path``), so ranks or runs that encode the
same sample at once each publish a whole file, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import warnings
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import diffusers
import torch
import transformers
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from idglow.editing import ReferenceBudget, TokenShape, encode_references, prepare_references
from idglow.storage import atomic_path, sha256_file
from training.data import Sample, to_tensor
from training.flow import encode, pack

# Bump when encode_sample computes something else from the same inputs: old files then stop matching.
# 2: references resized and encoded as inference does (idglow.editing), their token grids stored.
ENCODING_VERSION = 2

# The generator's folders the encodings come from (the transformer and scheduler do not matter).
ENCODER_FOLDERS = ("vae", "text_encoder", "tokenizer", "processor")

FULL_HASH_LIMIT = 2 << 30  # larger weight shards count by name and size, as registry.component_fingerprint does


class EncodingConfig(Protocol):
    """The fields of an SFT or DPO config the encodings depend on or are stored by."""

    generator_dir: str
    output_dir: str
    resolution: int
    encoding_cache_dir: str | None

    @property
    def reference_budget(self) -> ReferenceBudget: ...


@dataclass
class EncodedBatch:
    """What the transformer needs for one batch: target tokens (B, T, 64), reference tokens
    (B, R, 64), prompt embeddings (B, L, D), their padding mask (None when no prompt is padded,
    which lets attention take its fastest kernel: a mask forces SDPA off flash attention), and
    the token grid of the target and of each reference."""

    x0: torch.Tensor
    refs: torch.Tensor
    prompt: torch.Tensor
    mask: torch.Tensor | None
    shapes: list[tuple[int, int, int]]


@dataclass
class SampleEncoding:
    """One sample's tokens: one (T, 64) latent per image (``target``, or ``chosen`` and
    ``rejected``), the (R, 64) reference latents, the (L, D) prompt embeddings, and each
    reference's token grid (a portrait keeps its aspect ratio, so the grids may differ)."""

    latents: dict[str, torch.Tensor]
    references: torch.Tensor
    prompt: torch.Tensor
    reference_shapes: list[TokenShape]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The safetensors layout, on the CPU and contiguous (what ``save_file`` takes)."""
        named = {f"latents.{name}": value for name, value in self.latents.items()}
        named.update(
            references=self.references,
            prompt=self.prompt,
            reference_shapes=torch.tensor(self.reference_shapes, dtype=torch.int64),
        )
        return {name: value.detach().to("cpu").contiguous() for name, value in named.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> SampleEncoding:
        latents = {
            name.removeprefix("latents."): value for name, value in tensors.items() if name.startswith("latents.")
        }
        needed = ("references", "prompt", "reference_shapes")
        if not latents or any(name not in tensors for name in needed):
            raise KeyError(f"an encoding file needs latents.*, {', '.join(needed)}; it has {sorted(tensors)}")
        shapes = [tuple(shape) for shape in tensors["reference_shapes"].tolist()]
        return cls(latents, tensors["references"], tensors["prompt"], shapes)

    def to(self, device: torch.device) -> SampleEncoding:
        return SampleEncoding(
            {k: v.to(device) for k, v in self.latents.items()},
            self.references.to(device),
            self.prompt.to(device),
            self.reference_shapes,
        )


def encoder_fingerprint(generator_dir: str | Path) -> str:
    """A SHA-256 over the generator's encoder files (``ENCODER_FOLDERS``): full content below
    2 GiB, name and size above (hashing a text encoder's 5 GB shards at every start costs minutes)."""
    root = Path(generator_dir)
    digest = hashlib.sha256()
    for folder in ENCODER_FOLDERS:
        base = root / folder
        for path in sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")):
            size = path.stat().st_size
            content = sha256_file(path) if size < FULL_HASH_LIMIT else f"size:{size}"
            digest.update(f"{path.relative_to(root)}:{content}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class EncodingSettings:
    """Everything besides the sample that the encodings depend on."""

    model: str  # encoder_fingerprint of the generator
    resolution: int
    reference_budget: ReferenceBudget
    dtype: str
    versions: str = (
        f"encoding {ENCODING_VERSION}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"
    )

    @classmethod
    def of(cls, pipeline, config: EncodingConfig) -> EncodingSettings:
        return cls(
            encoder_fingerprint(config.generator_dir),
            config.resolution,
            config.reference_budget,
            str(pipeline.transformer.dtype),
        )


def _pixels_sha256(image: Image.Image) -> str:
    return hashlib.sha256(f"{image.mode}:{image.size}:".encode() + image.tobytes()).hexdigest()


def sample_content(sample: Sample) -> dict:
    """What the encodings read of a sample: its decoded pixels (hashed: about 2 ms for a 1024²
    image, against a step of a second or more) and its prompt. Pixels rather than the shard's
    file bytes: what the encoders see is what counts, whichever way the sample was built or
    changed after reading. The sample's key is not part of it: the same content under another
    name is the same encoding."""
    return {
        "images": {name: _pixels_sha256(image) for name, image in sorted(sample.images.items())},
        "conditions": [_pixels_sha256(image) for image in sample.conditions],
        "prompt": sample.meta["prompt"],
    }


def encoding_key(sample: Sample, settings: EncodingSettings) -> str:
    payload = json.dumps({"sample": sample_content(sample), "settings": asdict(settings)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@torch.no_grad()
def encode_sample(pipeline, sample: Sample, config: EncodingConfig) -> SampleEncoding:
    """The VAE latents of every image of ``sample``, its condition portraits' latents and its
    prompt embeddings (the pipeline's own ``encode_prompt``, with the portraits), on the
    transformer's device and dtype. The portraits are resized to ``config.reference_budget`` and
    encoded by ``idglow.editing``, exactly as ``edit`` does at inference. No cache: the reference
    the cached path must equal."""
    device, dtype = pipeline.transformer.device, pipeline.transformer.dtype
    latents = {}
    for name, image in sample.images.items():
        target = to_tensor(image, config.resolution)[None].to(device, dtype)
        latents[name] = pack(encode(pipeline.vae, target))[0]
    prepared = prepare_references(sample.conditions, config.reference_budget, pipeline.image_processor)
    references = encode_references(pipeline, prepared.vae_images, device, dtype)[0]
    prompt, _ = pipeline.encode_prompt(sample.meta["prompt"], image=prepared.condition_images, device=device)
    return SampleEncoding(latents, references, prompt[0], prepared.token_shapes(pipeline.vae_scale_factor))


def stack(encodings: list[SampleEncoding], image_name: str, config: EncodingConfig) -> EncodedBatch:
    """Stacked tokens of ``image_name`` and padded prompt embeddings for a batch homogeneous in N
    (and in the references' token grids: portraits of one aspect ratio, as CelebA-HQ's are)."""
    reference_shapes = encodings[0].reference_shapes
    if any(e.reference_shapes != reference_shapes for e in encodings):
        raise ValueError(
            "a batch's samples must share their references' token grids (their aspect ratios); got "
            f"{sorted({tuple(e.reference_shapes) for e in encodings})}"
        )
    x0 = torch.stack([e.latents[image_name] for e in encodings])
    refs = torch.stack([e.references for e in encodings])
    lengths = [e.prompt.shape[0] for e in encodings]
    length = max(lengths)
    prompt = torch.stack(
        [torch.cat([e.prompt, e.prompt.new_zeros(length - e.prompt.shape[0], e.prompt.shape[1])]) for e in encodings]
    )
    mask = None
    if min(lengths) < length:
        mask = torch.stack([torch.arange(length) < n for n in lengths]).long().to(x0.device)
    side = math.isqrt(x0.shape[1])  # targets are square (to_tensor at config.resolution)
    return EncodedBatch(x0, refs, prompt, mask, [(1, side, side), *reference_shapes])


def default_cache_dir(config: EncodingConfig) -> Path | None:
    """``encoding_cache_dir``, else ``encodings/`` beside the run folder (shared by the runs kept
    side by side, as the Dagster assets keep them); None for a config without a run folder."""
    if config.encoding_cache_dir:
        return Path(config.encoding_cache_dir)
    if config.output_dir:
        return Path(config.output_dir).absolute().parent / "encodings"
    return None


class EncodingCache:
    """Encodings per sample in safetensors files; ``get`` encodes a sample the first time any run
    meets it and reads its file afterwards. It keeps no tensors between calls. ``encoded`` and
    ``read`` count what it did (a reused folder shows as reads only)."""

    def __init__(self, pipeline, config: EncodingConfig, directory: str | Path | None = None):
        self.pipeline, self.config = pipeline, config
        chosen = Path(directory) if directory is not None else default_cache_dir(config)
        self._scratch = None
        if chosen is None:  # a step driven from code without a run folder: a folder for this object only
            self._scratch = tempfile.TemporaryDirectory(prefix="idglow-encodings-")
            chosen = Path(self._scratch.name)
        self.directory = chosen
        self.settings = EncodingSettings.of(pipeline, config)
        self.encoded = 0
        self.read = 0

    def path(self, sample: Sample) -> Path:
        return self.directory / f"{encoding_key(sample, self.settings)}.safetensors"

    def get(self, sample: Sample) -> SampleEncoding:
        """The sample's encodings on the transformer's device."""
        path = self.path(sample)
        device = self.pipeline.transformer.device
        if path.exists():
            try:
                encoding = SampleEncoding.from_tensors(load_file(str(path), device="cpu"))
            except (SafetensorError, OSError, KeyError) as error:  # damaged outside our atomic writes
                warnings.warn(f"encoding file {path} cannot be read ({error}); encoding it again", stacklevel=2)
            else:  # the key covers the image names, so the file holds every latent the sample has
                self.read += 1
                return encoding.to(device)
        encoding = encode_sample(self.pipeline, sample, self.config)
        metadata = {
            "sample_key": sample.key,
            "content": json.dumps(sample_content(sample), sort_keys=True),
            "settings": json.dumps(asdict(self.settings), sort_keys=True),
        }
        with atomic_path(path) as tmp:
            save_file(encoding.tensors(), str(tmp), metadata=metadata)
        self.encoded += 1
        return encoding

    def batch(self, samples: list[Sample], image_name: str) -> EncodedBatch:
        return stack([self.get(s) for s in samples], image_name, self.config)


def held_tensor_bytes(root: object, skip: tuple = (), modules: tuple[str, ...] = ("training",)) -> int:
    """Bytes of the tensor storages reachable from ``root`` through containers and the attributes
    of objects defined in ``modules`` (each storage once), not counting what ``skip`` holds (the
    pipeline and its weights, which a cache only points to): what a cache keeps in memory."""
    skipped = {id(s) for s in skip}
    seen: set[int] = set()
    storages: dict[int, int] = {}
    queue = deque([root])
    while queue:
        obj = queue.popleft()
        if id(obj) in seen or id(obj) in skipped:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, dict):
            queue.extend(obj.keys())
            queue.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset | deque):
            queue.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type) and type(obj).__module__.split(".")[0] in modules:
            queue.extend(vars(obj).values())
    return sum(storages.values())
