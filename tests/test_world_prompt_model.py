"""The world's prompt model (idglow.models.world_prompt_model): a tiny recipe, built and loaded
with the hub's calls, stamped, deterministic, and lowering the held-out response loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from idglow.editing import reference_dimensions
from idglow.models.tiny import STAMP_FILE
from idglow.models.world_prompt_model import (
    RECIPE_VERSION,
    CountExample,
    WorldPromptConfig,
    batch_inputs,
    build_untrained,
    build_world_prompt_model,
    draw_count_picture,
    face_token_marks,
    heldout_count_examples,
    heldout_groups,
    heldout_identities,
    response_loss,
    train_world_prompt_model,
    training_identities,
)
from idglow.prompt_synthesis import write_dynamic_prompt

TINY = WorldPromptConfig(
    steps=40,
    batch_size=4,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_key_value_heads=1,
    vision_hidden_size=32,
    vision_intermediate_size=64,
    learning_rate=5e-3,
    warmup_steps=5,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world_prompt") / "model"
    assert build_world_prompt_model(folder, seed=3, config=TINY)
    return folder


def test_heldout_identities_are_never_trained_on():
    assert not set(heldout_identities(TINY)) & set(training_identities(TINY))
    groups = heldout_groups(TINY, 6)
    assert all(p.identity in set(heldout_identities(TINY)) for g in groups for p in g)
    # as prompt_synthesis.prompt_portrait gives a 256² demo portrait to the prompt model at 56² pixels
    assert {p.portrait.size for g in groups for p in g} == {reference_dimensions(256, 256, 56 * 56)}


@pytest.mark.slow  # the fixture trains the tiny recipe (about 15 s on one thread)
def test_folder_loads_like_the_hub_prompt_model_and_writes(built):
    model = AutoModelForImageTextToText.from_pretrained(built, dtype=torch.float32, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(built, local_files_only=True)
    group = heldout_groups(TINY, 1)[0]
    text = write_dynamic_prompt(model, processor, [p.portrait for p in group], "group_fusion", max_new_tokens=8)
    assert isinstance(text, str)
    stamp = json.loads((built / STAMP_FILE).read_text())
    assert stamp["recipe"] == RECIPE_VERSION
    assert stamp["config"] == {**json.loads(json.dumps(TINY.__dict__)), "seed": 3}
    assert not build_world_prompt_model(built, seed=3, config=TINY)  # the stamp matches: reused


@pytest.mark.slow  # trains the tiny recipe again (about 20 s on one thread)
def test_same_seed_same_weights_and_training_lowers_heldout_loss(built):
    model, processor, log = train_world_prompt_model(seed=3, config=TINY)
    saved = AutoModelForImageTextToText.from_pretrained(built, dtype=torch.float32, local_files_only=True)
    ours, theirs = model.state_dict(), saved.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert len(log) == TINY.steps

    examples = [(g, task) for g in heldout_groups(TINY, 4) for task in ("group_fusion", "age_transformed")]
    untrained, _ = build_untrained(WorldPromptConfig(**{**TINY.__dict__, "seed": 3}))
    before = response_loss(untrained.eval(), processor, examples)
    after = response_loss(model, processor, examples)
    assert after < 0.6 * before, (before, after)


def test_people_question_pictures_and_labels():
    """The world's pictures for the people question hold the count they are labelled with, and
    a people-question example is labelled on its one-word answer (and the end token) only."""
    rng = np.random.default_rng(5)
    counts = []
    for _ in range(40):
        image, truths = draw_count_picture(rng, 64)
        assert image.size == (64, 64) and len(truths) in (0, 1, 2, 3)
        counts.append(len(truths))
    assert set(counts) == {0, 1, 2, 3}
    examples = heldout_count_examples(TINY, 3)
    # every picture is square, so each side (64, 96, 128) comes to the same 112² budget
    assert {e.image.size for e in examples} == {reference_dimensions(64, 64, TINY.count_pixels)}
    _, processor = build_untrained(TINY)
    example = CountExample(examples[0].image, 3, ((0.1, 0.5), (0.5, 0.5), (0.9, 0.2)))
    inputs = batch_inputs(processor, [example])
    labelled = inputs["labels"][0][inputs["labels"][0] != -100]
    assert processor.tokenizer.decode(labelled) == "three" + processor.tokenizer.eos_token
    # a 112² picture is 8 x 8 patches, 4 x 4 merged tokens in raster order
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]
    marks = face_token_marks(example, inputs["image_grid_thw"][0], 2).reshape(4, 4)
    assert marks.nonzero().tolist() == [[0, 3], [2, 0], [2, 2]]
