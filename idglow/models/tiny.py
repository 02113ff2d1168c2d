"""Build the demo profile's tiny twins once, in the real libraries' on-disk formats.

Each component is written to a temporary folder and renamed into place, with a stamp of the
recipe and seed; an existing component with the same stamp is reused, so the face models are
trained once per machine and a killed build resumes with what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from idglow.models.aesthetic import write_tiny_aesthetic
from idglow.models.clip import TINY_CLIP_CONFIG, write_tiny_clip
from idglow.models.face_training import RECIPE_VERSION as FACE_RECIPE_VERSION
from idglow.models.face_training import FaceTrainingConfig, write_tiny_face_pack
from idglow.models.registry import AESTHETIC, CLIP, FACE_PACK, GENERATOR, PROMPT_MODEL, TINY_COMPONENTS, Component
from idglow.storage import atomic_dir, exclusive_lock

RECIPE_VERSION = 1
STAMP_FILE = ".idglow-stamp.json"
BUILD_LOCK_SUFFIX = ".build-lock"  # an empty file beside each built folder (never deleted: exclusive_lock)


def component_folder(models_dir: Path, role: str, components: dict[str, Component] = TINY_COMPONENTS) -> Path:
    """The folder a component lives in (its file's parent for single-file components). A
    component is a folder when its required files lie inside it: a name's dot says nothing
    ("Qwen2.5-VL-7B-Instruct" is a folder)."""
    component = components[role]
    path = models_dir / component.path
    return path if any(f.relative_path for f in component.required) else path.parent


def build_atomically(folder: Path, stamp: dict, build: Callable[[Path], object]) -> bool:
    """Run ``build`` into a staging folder and rename it to ``folder``; skip if already stamped.
    One process builds a folder at a time: another asking for it meanwhile (``make demo`` beside
    ``make test``) waits and then finds it built, instead of training it a second time and
    replacing the folder while the first process reads from it. Returns whether it built."""
    if _stamped(folder, stamp):
        return False
    with exclusive_lock(folder.parent / f".{folder.name}{BUILD_LOCK_SUFFIX}", f"the build of {folder}"):
        if _stamped(folder, stamp):
            return False
        with atomic_dir(folder) as staging:
            build(staging)
            (staging / STAMP_FILE).write_text(json.dumps(stamp, sort_keys=True))
    return True


def _stamped(folder: Path, stamp: dict) -> bool:
    stamp_path = folder / STAMP_FILE
    return stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp


def ensure_tiny_models(models_dir: Path, seed: int = 0, progress: bool = True) -> list[str]:
    """Make sure every tiny component exists for ``seed``; returns the roles that were built.
    The face pack and the prompt model are trained on the demo world (a few minutes, once); the
    generator is the committed world generator (``idglow.models.world_generator``), the same for
    every seed."""
    # imported here: the world prompt model's module builds its own folders with build_atomically
    from idglow.models.world_generator import committed_stamp, write_committed_world_generator
    from idglow.models.world_prompt_model import WorldPromptConfig, recipe_stamp, write_world_prompt_model

    face_config = FaceTrainingConfig(seed=seed)
    prompt_config = WorldPromptConfig(seed=seed)
    builders: dict[str, Callable[[Path], object]] = {
        # the committed world generator stage (trained over several sessions, not from ``seed``)
        GENERATOR: write_committed_world_generator,
        PROMPT_MODEL: lambda d: write_world_prompt_model(d, prompt_config, progress),
        CLIP: lambda d: write_tiny_clip(d, seed + 20),
        AESTHETIC: lambda d: write_tiny_aesthetic(
            d / Path(TINY_COMPONENTS[AESTHETIC].path).name, TINY_CLIP_CONFIG["embed_dim"], seed + 30
        ),
        FACE_PACK: lambda d: write_tiny_face_pack(d, face_config, progress),
    }
    built = []
    for role, build in builders.items():
        stamp = {"recipe": RECIPE_VERSION, "seed": seed, "role": role}
        if role == FACE_PACK:
            stamp["face_training"] = {**face_config.recorded(), "recipe": FACE_RECIPE_VERSION}
        if role == GENERATOR:
            stamp["world_generator"] = committed_stamp()
        if role == PROMPT_MODEL:
            stamp["world_prompt_model"] = recipe_stamp(prompt_config)
        if build_atomically(component_folder(models_dir, role), stamp, build):
            built.append(role)
    return built
