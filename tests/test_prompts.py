"""Prompt templates, the dynamic-prompt validator and its fallback."""

import pytest

from idglow.prompts import BADCASES, badcase_for, descriptive_prompt, static_prompt, validate_dynamic_prompt


def test_static_templates_name_every_picture():
    assert "Picture 1, Picture 2 and Picture 3" in static_prompt("group_fusion", 3)
    assert "young children" in static_prompt("age_transformed", 2)
    assert static_prompt("group_fusion", 2) != static_prompt("group_fusion", 3)


def test_a_static_template_needs_a_group():
    with pytest.raises(ValueError, match="two or more people"):
        static_prompt("group_fusion", 1)


GOOD = (
    "Picture 1, a woman with long blond hair and a red coat, stands on the left; Picture 2, a man with "
    "glasses and a grey beard, stands on the right with his arm around her; warm evening light in a park."
)


def test_a_hand_written_good_prompt_is_accepted():
    assert validate_dynamic_prompt(GOOD, "group_fusion", 2, token_count=60, token_budget=512).ok


def test_a_prompt_that_forgets_a_person_falls_back():
    check = validate_dynamic_prompt(GOOD, "group_fusion", 3, token_count=60, token_budget=512)
    assert not check.ok and check.reason == "does not name Picture 3"


def test_token_budget_and_empty_output():
    assert validate_dynamic_prompt(GOOD, "group_fusion", 2, 600, 512).reason == "600 tokens exceed the budget of 512"
    assert validate_dynamic_prompt("  ", "group_fusion", 2, 0, 512).reason == "empty output"


def test_task_two_must_ask_for_children():
    check = validate_dynamic_prompt(GOOD, "age_transformed", 2, 60, 512)
    assert not check.ok and "children" in check.reason
    assert validate_dynamic_prompt(GOOD + " Both as young children.", "age_transformed", 2, 60, 512).ok


def test_descriptive_prompt_binds_attributes_and_passes_the_validator():
    people = [{"Male": True, "Black_Hair": True, "Eyeglasses": True}, {"Male": False, "Blond_Hair": True}]
    text = descriptive_prompt("age_transformed", people)
    assert "Picture 1 is a man with black hair and glasses" in text
    assert "Picture 2 is a woman with blond hair" in text
    assert validate_dynamic_prompt(text, "age_transformed", 2, 80, 512).ok
    assert [badcase_for(people, i) for i in range(3)] == list(BADCASES)
    same = [{"Male": True}, {"Male": True}]
    assert badcase_for(same, 0) == "lighting inconsistency"  # nothing to leak between identical looks


def test_the_tiny_prompt_model_falls_back_with_reasons(hub, demo_ingest, demo_dataset):
    from idglow.data.groups import make_benchmark_groups, split_identities
    from idglow.prompt_synthesis import build_prompts

    catalog = demo_ingest.catalog
    groups = make_benchmark_groups(catalog, split_identities(catalog, 10, 0), 2, 2, 0).head(2)
    tokenizer = hub.generator_tokenizer()
    table = build_prompts(
        groups,
        demo_dataset.root,
        hub.prompt_model(),
        lambda t: len(tokenizer(t).input_ids),
        512,
        "demo:test",
        56 * 56,
        progress=False,
    )
    assert len(table) == 2 * 2 * 2  # groups x tasks x (static, dynamic)
    dynamic = table[table["prompt_kind"] == "dynamic"]
    for row in dynamic.itertuples():
        if row.fallback:
            assert row.fallback_reason and row.prompt == static_prompt(row.task, row.n_subjects)
        else:
            assert row.prompt == row.raw_output
    assert (table["prompt_model_version"] == "demo:test").all()


def test_the_prompt_model_sees_portraits_at_the_profiles_budget_when_writing_and_when_aligned(tmp_path):
    """Writing prompts and aligning the prompt model resize a portrait with one function, to
    the profile's prompt_portrait_pixels at its aspect ratio (sides rounded to multiples of 32)."""
    import pandas as pd
    from PIL import Image

    from idglow.profiles import load_profile
    from idglow.prompt_synthesis import prompt_portrait
    from training.prompt_dpo import PromptDPOConfig, load_pairs

    assert prompt_portrait(Image.new("RGB", (256, 256)), 56 * 56).size == (64, 64)  # 56 rounds up to 64
    assert prompt_portrait(Image.new("RGB", (1024, 1024)), 256 * 256).size == (256, 256)
    assert prompt_portrait(Image.new("RGB", (600, 300)), 128 * 64).size == (128, 64)
    whole = Image.new("RGB", (1024, 1024))
    assert prompt_portrait(whole, 1024 * 1024) is whole  # the real profile's budget: the portrait as it is
    assert (load_profile("demo").prompt_portrait_pixels, load_profile("real").prompt_portrait_pixels) == (
        56 * 56,
        1024 * 1024,
    )

    Image.new("RGB", (1024, 1024), (120, 80, 60)).save(tmp_path / "0.jpg")
    pd.DataFrame({"hq_idx": [0], "path": ["0.jpg"]}).to_parquet(tmp_path / "catalog.parquet")
    pd.DataFrame(
        {
            "task": ["group_fusion"],
            "n_subjects": [1],
            "condition_hq_idx": [[0]],
            "chosen": ["a"],
            "rejected": ["b"],
            "badcase": ["x"],
        }
    ).to_parquet(tmp_path / "preferences.parquet")
    config = PromptDPOConfig(
        model_dir="",
        preferences=str(tmp_path / "preferences.parquet"),
        catalog=str(tmp_path / "catalog.parquet"),
        source_root=str(tmp_path),
        output_dir="",
        portrait_pixels=256 * 256,
    )
    assert [p.size for p in load_pairs(config)[0]["portraits"]] == [(256, 256)]
