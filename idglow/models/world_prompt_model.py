"""A tiny Qwen2.5-VL trained to describe the demo world: the demo profile's prompt model.

A prompt model with random weights (``idglow.models.tiny_qwen_vl.write_tiny_vl``, the demo's
before) writes dynamic prompts that never pass ``validate_dynamic_prompt``, so every one falls
back to the static template. This module fine-tunes the same classes
(``Qwen2_5_VLForConditionalGeneration`` with a ``Qwen2VLProcessor``) by teacher forcing,
cross-entropy on the response tokens only, on examples drawn from the world itself: one to three
people (mostly two and three), each portrait drawn the way ``idglow.data.demo_celebahq`` draws
one (``identity_style``, ``render_portrait`` at 256², a JPEG round trip, ``_attributes``) and
resized by ``prompt_portrait`` to the profile's 56²; the input is exactly the chat that
``write_dynamic_prompt`` builds (``dynamic_instruction``), the target the attribute-bound
``descriptive_prompt`` of those people's CelebA attributes, for both tasks. Identities are split
by number: a held-out set (``heldout_identities``) that training never draws, for evaluation.

The tokenizer is a byte-level BPE with Qwen's special tokens, as the tiny twin's, trained on a
corpus that adds the instructions and descriptive prompts to the twin's corpus, so the words of
a description are a token or two each.

Everything is seeded and runs on one thread, so a recipe gives the same weights on a machine.
``idglow.models.tiny.ensure_tiny_models`` builds it into the demo's models folder
(``write_world_prompt_model``, stamped with ``recipe_stamp``). Both it and
``build_world_prompt_model`` save model, processor and tokenizer with ``save_pretrained`` (they
load back with ``AutoModelForImageTextToText`` / ``AutoProcessor.from_pretrained``, as the hub
loads the prompt model) and a stamp of the recipe (``idglow.models.tiny.build_atomically``).
``benchmarks/world_prompt_model.py`` measures it.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor

from idglow.data import celebahq as layout
from idglow.data.demo_celebahq import _attributes, identity_style
from idglow.data.faces import background, render_group, render_portrait, sample_style
from idglow.data.groups import TASKS
from idglow.data.scenes import render_scene
from idglow.models import tiny_qwen_vl
from idglow.models.tiny import build_atomically
from idglow.people_check import COUNT_WORDS, PEOPLE_QUESTION, check_image, people_question_chat
from idglow.profiles import Profile
from idglow.prompt_synthesis import prompt_portrait
from idglow.prompts import describe_person, descriptive_prompt, dynamic_instruction

RECIPE_VERSION = 2  # 2: the people question of the VLM check
ROLE = "world_prompt_model"
TRAINING_FILE = "training.json"
IDENTITY_NUMBERS = range(1, 10178)  # CelebA's identity numbers, as demo_celebahq draws them
PORTRAIT_SIZE = 256  # the demo dataset's image side (DemoDatasetSpec.size)
ATTRIBUTE_NAMES = tuple(layout.CELEBA_ATTRIBUTES)


_DEMO_DEFAULTS = {f.name: f for f in fields(Profile)}  # the demo profile keeps these fields' defaults


@dataclass(frozen=True)
class WorldPromptConfig:
    """Everything that decides the trained weights."""

    seed: int = 0
    steps: int = 480
    batch_size: int = 8
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    hidden_size: int = 96
    intermediate_size: int = 192
    num_hidden_layers: int = 3
    head_dim: int = 16
    num_key_value_heads: int = 2
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_depth: int = 1
    vocab_size: int = 1024
    portrait_pixels: int = _DEMO_DEFAULTS["prompt_portrait_pixels"].default  # what the demo's prompts stage gives
    world_seed: int = 0  # the demo dataset's seed: identity_style(identity, world_seed)
    heldout: int = 400  # identity numbers training never draws
    group_sizes: tuple[int, ...] = (1, 2, 3)
    group_weights: tuple[float, ...] = (0.1, 0.45, 0.45)
    vision_lr_scale: float = 1.0  # the vision tower's learning rate, relative to learning_rate
    # an auxiliary linear probe (discarded after training) on each picture's merged vision tokens,
    # predicting a portrait's drawn attributes (hair phrase, glasses, beard, smile) and how many
    # people a people-question picture shows; 0 turns it off
    probe_weight: float = 1.0
    # the VLM check of stage 1 (idglow.people_check): the share of examples that ask how many people
    # a world picture shows (nobody, a portrait, a scene or row of two or three), and the pixels the
    # picture is given at (the demo profile's people_check_pixels)
    count_fraction: float = 0.5
    count_pixels: int = _DEMO_DEFAULTS["people_check_pixels"].default
    count_sides: tuple[int, ...] = (64, 96, 128)


def heldout_identities(config: WorldPromptConfig) -> np.ndarray:
    """The identity numbers kept for evaluation (seeded by the world seed, not the training seed)."""
    rng = np.random.default_rng([config.world_seed, 1414])
    return np.sort(rng.choice(np.asarray(IDENTITY_NUMBERS), size=config.heldout, replace=False))


def training_identities(config: WorldPromptConfig) -> np.ndarray:
    return np.setdiff1d(np.asarray(IDENTITY_NUMBERS), heldout_identities(config))


@dataclass
class WorldPerson:
    identity: int
    portrait: Image.Image  # at the prompt model's pixels, as prompt_portrait gives it
    attributes: dict[str, bool]


def draw_person(identity: int, image_key: int, world_seed: int, young: bool, pixels: int) -> WorldPerson:
    """One portrait of ``identity`` and its CelebA attributes, as demo_celebahq draws an image
    (``image_key`` plays the hq_idx), through a JPEG round trip and ``prompt_portrait``."""
    style = identity_style(identity, world_seed)
    image_rng = np.random.default_rng([world_seed, image_key, 7])
    smile = float(image_rng.uniform(-0.3, 1.0))
    image, _ = render_portrait(style, PORTRAIT_SIZE, image_rng, smile=smile)
    attributes = dict(zip(ATTRIBUTE_NAMES, _attributes(style, young, smile, image_rng), strict=True))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return WorldPerson(identity, prompt_portrait(image, pixels), attributes)


def draw_group(rng: np.random.Generator, identities: np.ndarray, config: WorldPromptConfig) -> list[WorldPerson]:
    n = int(rng.choice(config.group_sizes, p=np.asarray(config.group_weights) / sum(config.group_weights)))
    chosen = rng.choice(identities, size=n, replace=False)
    return [
        draw_person(
            int(i), int(rng.integers(1 << 30)), config.world_seed, bool(rng.random() < 0.7), config.portrait_pixels
        )
        for i in chosen
    ]


@dataclass
class CountExample:
    """A picture of the world and how many people it shows, for the people question."""

    image: Image.Image  # at the config's count_pixels, as check_image gives it
    people: int
    face_centers: tuple[tuple[float, float], ...] = ()  # each face's box centre, as fractions of the sides


def _child_or_own_age(rng: np.random.Generator) -> int | None:
    return int(rng.integers(3, 18)) if rng.random() < 0.3 else None


def draw_count_picture(rng: np.random.Generator, side: int) -> tuple[Image.Image, list]:
    """A picture of new people of the world and their face truths: nobody (a backdrop, or noise as
    an untrained generator draws), one (a portrait), or two or three (a scene, or a row of tiles as
    the demo's group photos), children among them."""
    kind = rng.choice(("nobody", "portrait", "scene", "row"), p=(0.15, 0.1, 0.5, 0.25))
    if kind == "nobody":
        if rng.random() < 0.5:
            return background(side, rng), []
        return Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8), "RGB"), []
    if kind == "portrait":
        image, truth = render_portrait(sample_style(rng), side, rng, age=_child_or_own_age(rng))
        return image, [truth]
    n = int(rng.integers(2, 4))
    styles = [sample_style(rng) for _ in range(n)]
    if kind == "scene":
        image, truths, _ = render_scene(styles, side, rng, ages=[_child_or_own_age(rng) for _ in range(n)])
        return image, truths
    return render_group(styles, side, rng)


def draw_count_example(rng: np.random.Generator, config: WorldPromptConfig) -> CountExample:
    side = int(rng.choice(config.count_sides))
    image, truths = draw_count_picture(rng, side)
    centers = tuple(((t.bbox[0] + t.bbox[2]) / (2 * side), (t.bbox[1] + t.bbox[3]) / (2 * side)) for t in truths)
    return CountExample(check_image(image, config.count_pixels), len(truths), centers)


def heldout_count_examples(config: WorldPromptConfig, count: int, seed: int = 2025) -> list[CountExample]:
    """``count`` people-question examples of new people, the same for every training seed."""
    rng = np.random.default_rng([config.world_seed, seed])
    return [draw_count_example(rng, config) for _ in range(count)]


def heldout_groups(config: WorldPromptConfig, count: int, seed: int = 2024) -> list[list[WorldPerson]]:
    """``count`` groups of held-out identities, the same for every training seed."""
    rng = np.random.default_rng([config.world_seed, seed])
    return [draw_group(rng, heldout_identities(config), config) for _ in range(count)]


# ------------------------------------------------------------------------------------- tokenizer


def _corpus() -> list[str]:
    """The tiny twin's corpus, every instruction, and descriptive prompts over attribute combinations."""
    texts = list(tiny_qwen_vl._CORPUS)
    texts += [dynamic_instruction(task, n) for task in TASKS for n in range(1, 6)]
    texts += [PEOPLE_QUESTION, *COUNT_WORDS]
    hair = ("Bald", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", None)
    extras = ("Eyeglasses", "Goatee", "Mustache", "Wearing_Hat", "Wearing_Earrings", "Wearing_Necktie", "Smiling")
    people = []
    for male, h, extra in itertools.product((False, True), hair, (None, *extras)):
        person = {"Male": male}
        if h:
            person[h] = True
        if extra:
            person[extra] = True
        people.append(person)
    for task in TASKS:
        for n in (1, 2, 3):
            for k in range(0, len(people), n):
                texts.append(descriptive_prompt(task, [people[(k + j) % len(people)] for j in range(n)]))
    return texts


def build_world_tokenizer(vocab_size: int = 1024) -> Qwen2Tokenizer:
    """The twin's tokenizer (byte-level BPE, Qwen's special tokens, its chat template) trained on ``_corpus()``."""
    return tiny_qwen_vl.build_tokenizer(vocab_size, corpus=_corpus())


# ------------------------------------------------------------------------------------ model/data


def build_untrained(config: WorldPromptConfig) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2VLProcessor]:
    tokenizer = build_world_tokenizer(config.vocab_size)
    processor = tiny_qwen_vl.build_processor(tokenizer)
    sizes = tiny_qwen_vl.VLSizes(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        head_dim=config.head_dim,
        num_key_value_heads=config.num_key_value_heads,
        vision_depth=config.vision_depth,
        vision_hidden_size=config.vision_hidden_size,
        vision_intermediate_size=config.vision_intermediate_size,
        vision_num_heads=config.vision_hidden_size // 16,
        vision_out_hidden_size=config.hidden_size,
    )
    return tiny_qwen_vl.build_model(tokenizer, config.seed, sizes), processor


def chat_prompt(processor, n_portraits: int, task: str) -> str:
    """The chat text ``write_dynamic_prompt`` gives the model."""
    messages = [
        {
            "role": "user",
            "content": [
                *({"type": "image"} for _ in range(n_portraits)),
                {"type": "text", "text": dynamic_instruction(task, n_portraits)},
            ],
        }
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def target_prompt(task: str, group: list[WorldPerson]) -> str:
    return descriptive_prompt(task, [p.attributes for p in group])


Example = tuple[list[WorldPerson], str] | CountExample


def _chat(processor, example: Example) -> tuple[str, list[Image.Image], str]:
    """(prompt, images, target) of a description (a group and its task) or a people question."""
    if isinstance(example, CountExample):
        return people_question_chat(processor), [example.image], COUNT_WORDS[example.people]
    group, task = example
    return chat_prompt(processor, len(group), task), [p.portrait for p in group], target_prompt(task, group)


def batch_inputs(processor, examples: list[Example]) -> dict[str, torch.Tensor]:
    """Right-padded inputs with labels on the response tokens (and the closing ``<|im_end|>``) only."""
    end = processor.tokenizer.eos_token
    texts, images, prompt_lengths = [], [], []
    for example in examples:
        prompt, pictures, target = _chat(processor, example)
        prompt_lengths.append(processor(text=[prompt], images=pictures, return_tensors="pt")["input_ids"].shape[1])
        texts.append(prompt + target + end)
        images.extend(pictures)
    processor.tokenizer.padding_side = "right"
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    labels = inputs["input_ids"].clone()
    for row, start in enumerate(prompt_lengths):
        labels[row, :start] = -100
    labels[inputs["attention_mask"] == 0] = -100
    inputs["labels"] = labels
    return dict(inputs)


def response_loss(model, processor, examples: list[Example], batch_size: int = 8) -> float:
    """Mean cross-entropy per response token of ``examples`` (teacher forcing)."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            inputs = batch_inputs(processor, examples[start : start + batch_size])
            count = int((inputs["labels"][:, 1:] != -100).sum())
            total += float(model(**inputs).loss) * count
            tokens += count
    return total / tokens


HAIR_PHRASES = ("a bald head", "black hair", "blond hair", "brown hair", "grey hair", "dark hair")
_PROBE_FLAGS = ("Eyeglasses", "Goatee", "Smiling")


def probe_targets(people: list[WorldPerson]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per portrait: the hair phrase ``describe_person`` writes (a class) and the drawn flags."""
    hair = [next(i for i, h in enumerate(HAIR_PHRASES) if h in describe_person(p.attributes)) for p in people]
    flags = [[float(p.attributes.get(k, False)) for k in _PROBE_FLAGS] for p in people]
    return torch.tensor(hair), torch.tensor(flags)


COUNT_CLASSES = 4  # the people question's answers the world draws: nobody, one, two, three


def face_token_marks(example: CountExample, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """1 for each merged vision token (raster order, as the vision tower returns them) whose cell
    holds a face's centre, else 0."""
    rows, cols = int(grid_thw[1]) // merge, int(grid_thw[2]) // merge
    marks = torch.zeros(rows, cols)
    for x, y in example.face_centers:
        marks[min(rows - 1, int(y * rows)), min(cols - 1, int(x * cols))] = 1.0
    return marks.flatten()


def _row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's mean next-token cross-entropy over its labelled tokens."""
    shifted = labels[:, 1:]
    tokens = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), shifted, ignore_index=-100, reduction="none")
    mask = (shifted != -100).float()
    return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1)


class _VisionCapture:
    """Keeps the vision tower's merged tokens of the last forward (a forward hook)."""

    def __init__(self, visual) -> None:
        self.output = None
        self.handle = visual.register_forward_hook(lambda _m, _a, out: setattr(self, "output", out.pooler_output))


def _learning_rate(config: WorldPromptConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_world_prompt_model(
    seed: int = 0, steps: int | None = None, config: WorldPromptConfig | None = None, progress=None
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2VLProcessor, list[dict]]:
    """Supervised fine-tuning on freshly drawn world groups; returns model (eval mode), processor
    and the training log. ``seed``/``steps`` override ``config``'s."""
    config = config or WorldPromptConfig()
    config = WorldPromptConfig(**{**asdict(config), "seed": seed, **({"steps": steps} if steps is not None else {})})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, processor = build_untrained(config)
        model.train()
        torch.manual_seed(config.seed)
        visual = model.model.visual
        vision_ids = {id(p) for p in visual.parameters()}
        probe = torch.nn.Linear(config.hidden_size, len(HAIR_PHRASES) + len(_PROBE_FLAGS) + COUNT_CLASSES)
        face_probe = torch.nn.Linear(config.hidden_size, 1)
        probes = list(probe.parameters()) + list(face_probe.parameters())
        groups = [
            {"params": [p for p in model.parameters() if id(p) not in vision_ids], "scale": 1.0},
            {"params": list(visual.parameters()) + probes, "scale": config.vision_lr_scale},
        ]
        optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
        capture = _VisionCapture(visual) if config.probe_weight > 0 else None
        rng = np.random.default_rng([config.seed, 77])
        identities = training_identities(config)
        log = []
        for step in range(config.steps):
            examples: list[Example] = []
            for _ in range(config.batch_size):
                if config.count_fraction and rng.random() < config.count_fraction:
                    examples.append(draw_count_example(rng, config))
                    continue
                group = draw_group(rng, identities, config)
                examples.append((group, TASKS[int(rng.integers(len(TASKS)))]))
            inputs = batch_inputs(processor, examples)
            for group_ in optimizer.param_groups:
                group_["lr"] = _learning_rate(config, step) * group_["scale"]
            labels = inputs.pop("labels")
            row_losses = _row_losses(model(**inputs).logits, labels)
            counting = torch.tensor([isinstance(e, CountExample) for e in examples])
            # each kind's own mean: a one-word answer would weigh nothing beside 80-token descriptions
            response = row_losses[~counting].mean() if (~counting).any() else row_losses.new_zeros(())
            loss = response + (row_losses[counting].mean() if counting.any() else 0.0)
            if capture is not None:
                per_image = (inputs["image_grid_thw"].prod(-1) // visual.spatial_merge_size**2).tolist()
                pooled = torch.stack([t.mean(0) for t in torch.split(capture.output, per_image)])
                is_count = torch.tensor([isinstance(e, CountExample) for e in examples for _ in _chat(processor, e)[1]])
                if (~is_count).any():
                    hair, flags = probe_targets([p for e in examples if not isinstance(e, CountExample) for p in e[0]])
                    logits = probe(pooled[~is_count])
                    probe_loss = F.cross_entropy(logits[:, : len(HAIR_PHRASES)], hair)
                    flag_logits = logits[:, len(HAIR_PHRASES) : len(HAIR_PHRASES) + len(_PROBE_FLAGS)]
                    probe_loss = probe_loss + F.binary_cross_entropy_with_logits(flag_logits, flags)
                    loss = loss + config.probe_weight * probe_loss
                if is_count.any():
                    counted = [e for e in examples if isinstance(e, CountExample)]
                    people = torch.tensor([e.people for e in counted])
                    logits = probe(pooled[is_count])[:, len(HAIR_PHRASES) + len(_PROBE_FLAGS) :]
                    loss = loss + config.probe_weight * F.cross_entropy(logits, people)
                    # where the faces are: each merged token of a people-question picture, whether
                    # a face's centre falls in it, so the tokens the answer reads mark faces
                    tokens = [t for t, c in zip(torch.split(capture.output, per_image), is_count, strict=True) if c]
                    grids = inputs["image_grid_thw"][is_count]
                    marks = torch.cat(
                        [face_token_marks(e, g, visual.spatial_merge_size) for e, g in zip(counted, grids)]
                    )
                    face_logits = face_probe(torch.cat(tokens)).squeeze(-1)
                    loss = loss + config.probe_weight * F.binary_cross_entropy_with_logits(face_logits, marks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            row = {"step": step + 1, "loss": loss.item(), "response_loss": response.item(), "time": time.time()}
            log.append(row)
            if progress is not None:
                progress(row)
        if capture is not None:
            capture.handle.remove()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), processor, log


def recipe_stamp(config: WorldPromptConfig) -> dict:
    return {"recipe": RECIPE_VERSION, "role": ROLE, "config": json.loads(json.dumps(asdict(config)))}


def write_world_prompt_model(
    folder: Path, config: WorldPromptConfig, progress: bool = True, on_step: Callable[[dict], None] | None = None
) -> Path:
    """Train with ``config`` and save model, processor and tokenizer (and ``training.json``: the
    time and the final response loss) into ``folder``; a tqdm bar over the steps, and ``on_step``
    called with each step's log row."""
    started = time.time()
    with tqdm(total=config.steps, desc="training the world prompt model", disable=not progress) as bar:

        def advance(row: dict) -> None:
            bar.update(1)
            bar.set_postfix(response_loss=f"{row['response_loss']:.3f}", refresh=False)
            if on_step is not None:
                on_step(row)

        model, processor, log = train_world_prompt_model(config.seed, config=config, progress=advance)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / TRAINING_FILE).write_text(
        json.dumps(
            {"seconds": time.time() - started, "final_response_loss": log[-1]["response_loss"] if log else None},
            indent=2,
        )
    )
    return folder


def build_world_prompt_model(
    folder: Path, seed: int = 0, config: WorldPromptConfig | None = None, progress=None
) -> bool:
    """Train and save to ``folder`` (``write_world_prompt_model``; the stamp beside them),
    atomically; reuses a folder whose stamp records the same recipe. Returns whether it was built.
    ``progress``, a callable, receives each step's log row in place of the progress bar."""
    config = WorldPromptConfig(**{**asdict(config or WorldPromptConfig()), "seed": seed})
    return build_atomically(
        Path(folder),
        recipe_stamp(config),
        lambda staging: write_world_prompt_model(staging, config, progress=progress is None, on_step=progress),
    )
