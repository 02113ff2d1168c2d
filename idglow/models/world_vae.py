"""A tiny ``AutoencoderKLQwenImage`` trained to reconstruct the demo world (a study; not wired in).

The demo generator's VAE (``idglow.models.tiny_generator.TINY_VAE_CONFIG``) has random weights:
its decodes are noise, so no face survives a round trip through its latent space. This module
trains the same class, with the same latent width (z_dim 16, 8x spatial compression, the real
temporal layout), on pictures drawn by the world itself: one-person portraits and two- or
three-person scenes (``idglow.data.scenes``), a share of the people drawn as children, every
picture freshly drawn from a seeded rng for each step (fresh identities, never the demo
dataset's). The loss is L1 on pixels plus L1 on their Sobel edges (the features and outlines a
face detector and recogniser look at; no downloaded network) plus a small KL term.

Everything is seeded and runs on one thread, so a recipe gives the same weights on a machine.
``build_world_vae`` saves the model with ``save_pretrained`` (it loads back with
``AutoencoderKLQwenImage.from_pretrained``) and a stamp of the recipe, like the other tiny twins
(``idglow.models.tiny.build_atomically``). ``benchmarks/world_vae.py`` measures it.

The weights of ``COMMITTED_RECIPE`` (28 minutes of one thread to train) are committed in
``COMMITTED_FOLDER`` with their stamp and training report, so the studies built on them start at
once; ``python -m idglow.models.world_vae DIR`` trains the same recipe into ``DIR``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLQwenImage
from diffusers.models.autoencoders import autoencoder_kl_qwenimage
from PIL import Image
from tqdm.auto import tqdm

from idglow.data.faces import render_portrait, sample_style
from idglow.data.scenes import render_scene
from idglow.models.tiny import build_atomically

RECIPE_VERSION = 1
ROLE = "world_vae"
TRAINING_FILE = "training.json"
CHILD_AGES = (3, 17)  # a child is drawn at an age uniform in this closed range
COMMITTED_FOLDER = Path(__file__).parent / "weights" / "world_vae"


@dataclass(frozen=True)
class WorldVAEConfig:
    """Everything that decides the trained weights."""

    seed: int = 0
    size: int = 64  # the side of every training picture (the demo's generation size)
    steps: int = 420
    batch_size: int = 8
    base_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 1
    learning_rate: float = 2e-3
    warmup_steps: int = 20
    edge_weight: float = 0.5  # Sobel-edge L1, relative to pixel L1
    face_weight: float = 0.0  # extra weight of the pixels in and around drawn faces (0: every pixel alike)
    kl_weight: float = 1e-4  # per latent element, relative to pixel L1 per pixel
    scene_fraction: float = 0.5  # the rest are portraits
    child_fraction: float = 0.3  # of the people drawn, those drawn as children
    stats_images: int = 64  # pictures the latents' per-channel mean and std are measured on
    # The class's fixed structure, kept as the real model has it.
    z_dim: int = field(default=16, init=False)
    # the real model's: no temporal downsampling at the first level, then at each (one per level
    # but the last, so 2 ** len(...) is the spatial compression: 8 for four levels)
    temperal_downsample: tuple[bool, ...] = field(default=(False, True, True), init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperal_downsample", (False, *([True] * (len(self.dim_mult) - 2))))

    def vae_config(self) -> dict:
        return {
            "base_dim": self.base_dim,
            "z_dim": self.z_dim,
            "dim_mult": list(self.dim_mult),
            "num_res_blocks": self.num_res_blocks,
            "attn_scales": [],
            "temperal_downsample": list(self.temperal_downsample),
            "latents_mean": [0.0] * self.z_dim,
            "latents_std": [1.0] * self.z_dim,
        }


# The committed weights' recipe: 4x spatial compression (three levels), faces weighted 4x in the
# loss, 4000 steps (docs/models.md, "The world's VAE").
COMMITTED_RECIPE = WorldVAEConfig(seed=0, dim_mult=(1, 2, 4), steps=4000, face_weight=4.0)


def stamp(config: WorldVAEConfig) -> dict:
    """The stamp a built folder carries: the recipe's version and every hyper-parameter."""
    recipe = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(config).items()}
    return {"recipe": RECIPE_VERSION, "role": ROLE, "seed": config.seed, "world_vae": recipe}


# ---------------------------------------------------------------------------- data


def _age(rng: np.random.Generator, child_fraction: float) -> int | None:
    return int(rng.integers(CHILD_AGES[0], CHILD_AGES[1] + 1)) if rng.random() < child_fraction else None


def draw_world_image(
    rng: np.random.Generator, size: int, scene_fraction: float = 0.5, child_fraction: float = 0.3
) -> tuple[Image.Image, list, bool]:
    """One picture of the world: (image, face truths, is_scene), new identities from ``rng``."""
    if rng.random() < scene_fraction:
        people = int(rng.integers(2, 4))
        styles = [sample_style(rng) for _ in range(people)]
        ages = [_age(rng, child_fraction) for _ in range(people)]
        image, truths, _ = render_scene(styles, size, rng, ages=ages)
        return image, truths, True
    style = sample_style(rng)
    image, truth = render_portrait(style, size, rng, age=_age(rng, child_fraction))
    return image, [truth], False


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """(B, 3, 1, H, W) in [-1, 1]: the VAE's one-frame video layout."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).unsqueeze(2) / 127.5 - 1


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    pixels = ((batch[:, :, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p, "RGB") for p in pixels]


def face_mask(truths: list, size: int, margin: float = 0.25) -> torch.Tensor:
    """(1, size, size): 1 inside each drawn face's box grown by ``margin`` of its side, else 0."""
    mask = torch.zeros(1, size, size)
    for truth in truths:
        x1, y1, x2, y2 = truth.bbox
        grow_x, grow_y = margin * (x2 - x1), margin * (y2 - y1)
        left, top = max(0, int(x1 - grow_x)), max(0, int(y1 - grow_y))
        right, bottom = min(size, int(math.ceil(x2 + grow_x))), min(size, int(math.ceil(y2 + grow_y)))
        mask[:, top:bottom, left:right] = 1.0
    return mask


def _batch(rng: np.random.Generator, config: WorldVAEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of fresh world pictures and their (B, 1, H, W) face masks."""
    drawn = [
        draw_world_image(rng, config.size, config.scene_fraction, config.child_fraction)
        for _ in range(config.batch_size)
    ]
    masks = torch.stack([face_mask(truths, config.size) for _, truths, _ in drawn])
    return to_tensor([image for image, _, _ in drawn]), masks


# ---------------------------------------------------------------------------- loss

_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4


def sobel_edges(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 6, H, W): horizontal and vertical Sobel gradients of each channel."""
    kernels = torch.stack([_SOBEL, _SOBEL.T]).unsqueeze(1).repeat(3, 1, 1, 1).to(images)
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernels, groups=3)


def reconstruction_loss(
    target: torch.Tensor,
    output: torch.Tensor,
    edge_weight: float,
    faces: torch.Tensor | None = None,
    face_weight: float = 0.0,
) -> torch.Tensor:
    """Pixel L1 plus ``edge_weight`` times Sobel-edge L1, on (B, 3, 1, H, W) batches; each pixel
    inside ``faces`` (a (B, 1, H, W) mask) weighs ``1 + face_weight``, the weights normalised to a
    mean of one per picture, so a 10 px face of a 64 px scene is not outvoted by its wall."""
    target, output = target[:, :, 0], output[:, :, 0]
    if faces is None or not face_weight:
        weights = torch.ones_like(target[:, :1])
    else:
        weights = 1 + face_weight * faces
        weights = weights / weights.mean(dim=(1, 2, 3), keepdim=True)
    loss = ((output - target).abs() * weights).mean()
    if edge_weight:
        loss = loss + edge_weight * ((sobel_edges(output) - sobel_edges(target)).abs() * weights).mean()
    return loss


def _kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()


def reconstruct(vae: AutoencoderKLQwenImage, batch: torch.Tensor, sample: bool = False) -> torch.Tensor:
    """Encode (the posterior's mode, or a sample) and decode a (B, 3, 1, H, W) batch."""
    posterior = vae.encode(batch).latent_dist
    return vae.decode(posterior.sample() if sample else posterior.mode()).sample


# ------------------------------------------------------------------------ training


@contextlib.contextmanager
def image_convolutions() -> Iterator[None]:
    """While open, a causal 3D convolution of a one-frame input without a cached frame (every
    convolution a picture's encode and decode runs) is computed as the 2D convolution of its
    kernel's last time slice: its zero causal padding meets the other slices, so the result and
    the gradients of every weight are the same, at about half the time on a CPU. The saved
    weights are the class's own; nothing outside training sees the difference."""
    conv = autoencoder_kl_qwenimage.QwenImageCausalConv3d
    original = conv.forward

    def forward(self, x, cache_x=None):
        if cache_x is None and x.shape[2] == 1 and self.stride[0] == 1 and self._padding[4] == self.kernel_size[0] - 1:
            padding = (self._padding[2], self._padding[0])
            return F.conv2d(x[:, :, 0], self.weight[:, :, -1], self.bias, self.stride[1:], padding).unsqueeze(2)
        return original(self, x, cache_x)

    conv.forward = forward
    try:
        yield
    finally:
        conv.forward = original


def init_world_vae(config: WorldVAEConfig) -> AutoencoderKLQwenImage:
    """The untrained model of ``config``, its weights fixed by the seed."""
    torch.manual_seed(config.seed)
    return AutoencoderKLQwenImage(**config.vae_config())


def train_world_vae(
    seed: int = 0, size: int = 64, steps: int = 420, progress: bool = False, **overrides
) -> AutoencoderKLQwenImage:
    """Train the world's VAE (``WorldVAEConfig(seed, size, steps, **overrides)``) on one thread."""
    return _train(WorldVAEConfig(seed=seed, size=size, steps=steps, **overrides), progress)[0]


def _train(config: WorldVAEConfig, progress: bool) -> tuple[AutoencoderKLQwenImage, dict]:
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        vae = init_world_vae(config).train()
        rng = np.random.default_rng([config.seed, 1])
        optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=0.0)

        def rate(step: int) -> float:
            if step < config.warmup_steps:
                return (step + 1) / config.warmup_steps
            progress_ = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress_))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
        losses = []
        bar = tqdm(range(config.steps), desc="world VAE", disable=not progress)
        with image_convolutions():
            for _ in bar:
                batch, faces = _batch(rng, config)
                posterior = vae.encode(batch).latent_dist
                output = vae.decode(posterior.sample()).sample
                loss = reconstruction_loss(batch, output, config.edge_weight, faces, config.face_weight)
                loss = loss + config.kl_weight * _kl(posterior.mean, posterior.logvar)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            vae.eval()
            _set_latent_statistics(vae, config)
    finally:
        torch.set_num_threads(previous_threads)
    report = {
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - started_cpu, 1),  # below "seconds" when others share the CPU
        "first_loss": losses[0] if losses else None,
        "last_loss": float(np.mean(losses[-20:])) if losses else None,
    }
    return vae, report


@torch.no_grad()
def _set_latent_statistics(vae: AutoencoderKLQwenImage, config: WorldVAEConfig) -> None:
    """Record the latents' per-channel mean and std on world pictures in the config, as the real
    model's ``latents_mean`` / ``latents_std`` (the pipeline normalises latents with them)."""
    rng = np.random.default_rng([config.seed, 2])
    images = [
        draw_world_image(rng, config.size, config.scene_fraction, config.child_fraction)[0]
        for _ in range(config.stats_images)
    ]
    latents = torch.cat(
        [vae.encode(to_tensor(images[i : i + 16])).latent_dist.mode() for i in range(0, len(images), 16)]
    )
    channels = latents.transpose(0, 1).reshape(config.z_dim, -1)
    mean = [round(float(v), 5) for v in channels.mean(1)]
    std = [round(float(v), 5) for v in channels.std(1).clamp(min=1e-3)]
    vae.register_to_config(latents_mean=mean, latents_std=std)


def write_world_vae(folder: Path, config: WorldVAEConfig = WorldVAEConfig(), progress: bool = False) -> Path:
    """Train and save to ``folder`` (``save_pretrained``, safetensors) with a training report."""
    vae, report = _train(config, progress)
    vae.save_pretrained(folder)
    (Path(folder) / TRAINING_FILE).write_text(json.dumps({**stamp(config), **report}, indent=2))
    return Path(folder)


def build_world_vae(folder: Path, seed: int = 0, config: WorldVAEConfig | None = None, progress: bool = False) -> bool:
    """Make sure ``folder`` holds the world's VAE of ``config`` (default: the recipe's defaults
    for ``seed``); trains and saves it atomically unless already stamped. True if it was built."""
    config = WorldVAEConfig(seed=seed) if config is None else config
    if config.seed != seed:
        raise ValueError(f"seed {seed} and the config's seed {config.seed} differ")
    return build_atomically(Path(folder), stamp(config), lambda staging: write_world_vae(staging, config, progress))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Train the committed world VAE's recipe into a folder.")
    parser.add_argument("folder", type=Path, help="where to save it (skipped when already stamped)")
    folder = parser.parse_args().folder
    torch.set_num_threads(1)
    built = build_world_vae(folder, COMMITTED_RECIPE.seed, COMMITTED_RECIPE, progress=True)
    print(f"{'built' if built else 'already built'}: {folder}")


if __name__ == "__main__":
    main()
