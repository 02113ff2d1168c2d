"""The world generator's recipe: its pairs are what the tasks ask for, a short training lowers the
flow-matching loss, and the trained pipeline saves and loads as the demo generator does."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLQwenImage, QwenImageEditPlusPipeline

from idglow.data.faces import ADULT_AGE
from idglow.editing import edit
from idglow.models.world_generator import (
    WorldGeneratorConfig,
    _learning_rate,
    draw_pair,
    face_token_weights,
    write_world_generator,
)
from idglow.models.world_vae import WorldVAEConfig

TINY = WorldGeneratorConfig(
    pairs=24, steps=30, batch_size=4, warmup_steps=5, num_layers=1, num_attention_heads=2, attention_head_dim=16,
    axes_dims_rope=(4, 6, 6),
)  # fmt: skip


@pytest.mark.parametrize("task", ["group_fusion", "age_transformed"])
def test_a_pair_holds_each_persons_portrait_and_their_scene(task):
    rng = np.random.default_rng(5)
    for _ in range(6):
        pair = draw_pair(rng, WorldGeneratorConfig(), task)
        assert 2 <= len(pair.portraits) <= 3 and len(pair.truths) == len(pair.portraits)
        assert pair.scene.size == (64, 64) and all(p.size == (256, 256) for p in pair.portraits)
        ages = [t.age for t in pair.truths]
        assert all(a < ADULT_AGE for a in ages) if task == "age_transformed" else all(a >= ADULT_AGE for a in ages)
        assert f"Picture {len(pair.portraits)}" in pair.prompt
        assert ("children" in pair.prompt) == (task == "age_transformed")


def test_the_pictures_stand_left_to_right_as_the_prompt_places_them():
    config = WorldGeneratorConfig(descriptive_fraction=1.0)
    shuffled = 0
    for seed in range(12):
        pair = draw_pair(np.random.default_rng(seed), config, "group_fusion")
        centres = [(t.bbox[0] + t.bbox[2]) / 2 for t in pair.truths]
        assert centres == sorted(centres)
        # Picture i's description is of the person drawn at the i-th place
        described = re.findall(r"Picture \d is an? (man|woman)", pair.prompt)
        assert described == ["man" if t.male else "woman" for t in pair.truths]
        drawn_order = draw_pair(
            np.random.default_rng(seed), replace(config, pictures_left_to_right=False), "group_fusion"
        )
        # the same draws (the recipe-1 pairs), only listed in another order
        assert np.array_equal(np.asarray(drawn_order.scene), np.asarray(pair.scene))
        assert sorted(drawn_order.truths, key=lambda t: t.bbox) == sorted(pair.truths, key=lambda t: t.bbox)
        shuffled += drawn_order.truths != pair.truths
    assert shuffled > 0  # without it, the layout puts Picture 1 anywhere


def test_a_portrait_pair_is_one_person_drawn_again_at_the_generation_size():
    config = WorldGeneratorConfig(portrait_fraction=1.0)
    pair = draw_pair(np.random.default_rng(3), config)
    assert len(pair.portraits) == 1 and pair.portraits[0].size == (256, 256)
    assert pair.scene.size == (64, 64) and "Picture 1" in pair.prompt
    x1, y1, x2, y2 = pair.truths[0].bbox
    assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
    assert not np.array_equal(np.asarray(pair.portraits[0].resize((64, 64))), np.asarray(pair.scene))
    # the default recipe draws group scenes only
    first = draw_pair(np.random.default_rng(3), WorldGeneratorConfig())
    assert len(first.portraits) >= 2


def test_face_tokens_weigh_by_their_share_of_face_pixels():
    # a 4 px face at (10, 10) of a 32 px scene, grown by a quarter of its side (1 px): pixels 9..14,
    # 36 of token (1, 1)'s 64 pixels (tokens of 8 px on a 4 x 4 grid)
    face = SimpleNamespace(bbox=(10, 10, 14, 14))
    weights = face_token_weights([face], 32, 4, face_weight=4.0)
    raw = torch.ones(16)
    raw[1 * 4 + 1] = 1 + 4.0 * 36 / 64
    assert torch.allclose(weights, raw / raw.mean())
    assert torch.allclose(weights.mean(), torch.tensor(1.0))
    assert torch.equal(face_token_weights([face], 32, 4, face_weight=0.0), torch.ones(16))


def test_a_short_training_lowers_the_loss_and_the_pipeline_loads_back(tmp_path):
    vae_config = WorldVAEConfig(base_dim=8)
    torch.manual_seed(0)
    AutoencoderKLQwenImage(**vae_config.vae_config()).save_pretrained(tmp_path / "vae")
    pipeline, log = write_world_generator(tmp_path / "generator", TINY, tmp_path / "vae", progress=False)
    losses = [row["loss"] for row in log]
    assert len(losses) == TINY.steps and np.mean(losses[-10:]) < np.mean(losses[:10])
    loaded = QwenImageEditPlusPipeline.from_pretrained(tmp_path / "generator")
    assert loaded.transformer.config.num_layers == 1 and loaded.transformer.config.zero_cond_t
    for name, value in pipeline.transformer.state_dict().items():
        assert torch.equal(value, loaded.transformer.state_dict()[name]), name
    pair = draw_pair(np.random.default_rng(1), TINY)
    image = edit(
        loaded,
        pair.portraits,
        pair.prompt,
        generator=torch.Generator().manual_seed(0),
        budget=TINY.reference_budget,
        height=64,
        width=64,
        num_inference_steps=2,
    )
    assert image.size == (64, 64)


def test_the_text_encoder_can_come_from_a_saved_qwen_vl_folder(tmp_path):
    # The real 2511 pipeline's text encoder is a trained Qwen2.5-VL; the world generator can be
    # built around a saved one (the world prompt model's folder) instead of the random twin.
    from idglow.models.tiny_qwen_vl import build_model, build_processor, build_tokenizer
    from idglow.models.world_generator import build_pipeline
    from idglow.models.world_vae import init_world_vae

    tokenizer = build_tokenizer()
    saved = build_model(tokenizer, seed=11)
    saved.save_pretrained(tmp_path / "vl")
    build_processor(tokenizer).save_pretrained(tmp_path / "vl")
    vae = init_world_vae(WorldVAEConfig(dim_mult=(1, 2, 4)))
    pipeline = build_pipeline(TINY, vae, text_encoder_folder=tmp_path / "vl")
    loaded = pipeline.text_encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.state_dict().items())
    assert pipeline.transformer.config.joint_attention_dim == saved.config.text_config.hidden_size
    assert pipeline.tokenizer("Picture 1")["input_ids"] == tokenizer("Picture 1")["input_ids"]


def test_a_killed_training_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    from idglow.models.world_generator import CHECKPOINT, build_pipeline, train_transformer
    from idglow.models.world_vae import init_world_vae

    config = replace(TINY, pairs=8, steps=12)
    vae = init_world_vae(WorldVAEConfig(base_dim=8))

    def fresh():
        return build_pipeline(config, vae)

    straight = fresh()
    straight_log = train_transformer(straight, config, progress=False)
    killed = fresh()
    partial = train_transformer(
        killed, config, progress=False, checkpoint_folder=tmp_path, checkpoint_every=5, snapshot_every=4, stop_after=7
    )
    assert len(partial) == 7 and (tmp_path / CHECKPOINT).exists()
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_000004.pt"]
    resumed = fresh()  # a new process: fresh weights, then the checkpoint
    log = train_transformer(resumed, config, progress=False, checkpoint_folder=tmp_path, checkpoint_every=5)
    assert [row["loss"] for row in log] == [row["loss"] for row in straight_log]
    for name, value in straight.transformer.state_dict().items():
        assert torch.equal(value, resumed.transformer.state_dict()[name]), name
    with pytest.raises(ValueError, match="another recipe"):
        train_transformer(fresh(), replace(config, learning_rate=1e-4), progress=False, checkpoint_folder=tmp_path)
    with pytest.raises(ValueError, match="another VAE"):
        train_transformer(
            build_pipeline(config, init_world_vae(WorldVAEConfig(base_dim=8, seed=1))),
            config,
            progress=False,
            checkpoint_folder=tmp_path,
        )


def test_the_learning_rate_warms_up_then_decays_or_holds():
    cosine = WorldGeneratorConfig(learning_rate=4e-3, warmup_steps=10, steps=110)
    constant = replace(cosine, lr_schedule="constant")
    # warmup: (step + 1) / warmup of the rate; cosine: half the rate halfway through what follows
    assert _learning_rate(cosine, 4) == pytest.approx(2e-3)
    assert _learning_rate(cosine, 60) == pytest.approx(2e-3)
    assert _learning_rate(cosine, 110) == pytest.approx(0.0, abs=1e-12)
    assert _learning_rate(constant, 4) == pytest.approx(2e-3)
    assert _learning_rate(constant, 60) == _learning_rate(constant, 109) == 4e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        WorldGeneratorConfig(lr_schedule="linear")


def test_a_run_starts_from_a_saved_stage_and_carries_its_stamp(tmp_path):
    from idglow.models.world_generator import (
        STAGE_DTYPE,
        build_pipeline,
        load_stage,
        reproduce_stages,
        save_stage,
        stage_chain,
        stage_stamp,
        train_transformer,
    )
    from idglow.models.world_vae import init_world_vae

    config = replace(TINY, pairs=8, steps=6)
    vae = init_world_vae(WorldVAEConfig(base_dim=8))
    first = build_pipeline(config, vae)
    log = train_transformer(first, config, progress=False)
    save_stage(tmp_path / "stage1", first, config, log)
    saved = json.loads((tmp_path / "stage1" / "stamp.json").read_text())
    assert saved == stage_stamp(config, first) and "parent" not in saved
    report = json.loads((tmp_path / "stage1" / "training.json").read_text())
    assert report["steps_trained"] == 6 and {k: report[k] for k in saved} == saved

    second_config = replace(config, seed=1, learning_rate=5e-4, lr_schedule="constant")  # new pairs, new noise
    second = build_pipeline(second_config, vae)
    train_transformer(second, second_config, progress=False, stop_after=0, start_from=tmp_path / "stage1")
    for name, value in first.transformer.state_dict().items():  # the stage's bf16 weights, as float32
        assert torch.equal(second.transformer.state_dict()[name], value.to(STAGE_DTYPE).float()), name
    log2 = train_transformer(second, second_config, progress=False, start_from=tmp_path / "stage1")
    save_stage(tmp_path / "stage2", second, second_config, log2, parent=saved)
    chain = stage_chain(json.loads((tmp_path / "stage2" / "stamp.json").read_text()))
    assert [c["config"]["learning_rate"] for c in chain] == [config.learning_rate, 5e-4]

    # the chain's stamp alone retrains both runs to the same weights (seeded, one thread)
    vae.save_pretrained(tmp_path / "vae")
    again = reproduce_stages(chain[-1], tmp_path / "again", tmp_path / "vae", progress=False)
    assert json.loads((again / "stamp.json").read_text()) == chain[-1]
    retrained = load_stage(again, second_config, second)[0]
    for name, value in load_stage(tmp_path / "stage2", second_config, second)[0].items():
        assert torch.equal(retrained[name], value), name

    with pytest.raises(ValueError, match="num_layers"):
        load_stage(
            tmp_path / "stage1", replace(config, num_layers=2), build_pipeline(replace(config, num_layers=2), vae)
        )
    with pytest.raises(ValueError, match="another VAE"):
        load_stage(
            tmp_path / "stage1", config, build_pipeline(config, init_world_vae(WorldVAEConfig(base_dim=8, seed=1)))
        )
    with pytest.raises(ValueError, match="another text encoder"):
        load_stage(tmp_path / "stage1", config, build_pipeline(config, vae, text_seed=3))
    with pytest.raises(FileNotFoundError, match="no stage"):
        load_stage(tmp_path, config, first)


def test_the_committed_stage_is_its_stamp_and_predicts_better_than_its_init():
    # The committed weights and their recipe must not drift apart (python -m
    # idglow.models.world_generator DIR retrains the chain in the stamp), and they are trained:
    # on pairs the world draws afresh, their flow-matching loss is well below a fresh init's.
    from idglow.models.world_generator import (
        COMMITTED_FOLDER,
        STAGE_REPORT,
        STAGE_STAMP,
        build_pipeline,
        config_of,
        encode_pairs,
        load_stage,
        stage_chain,
    )
    from idglow.models.world_vae import COMMITTED_FOLDER as VAE_FOLDER
    from training.encodings import stack
    from training.flow import flow_matching_loss, noisy, predict_velocity

    stamp = json.loads((COMMITTED_FOLDER / STAGE_STAMP).read_text())
    report = json.loads((COMMITTED_FOLDER / STAGE_REPORT).read_text())
    assert {k: report[k] for k in stamp} == stamp and report["last_loss"] < report["first_loss"]
    assert all(run["recipe"] == stamp["recipe"] for run in stage_chain(stamp))
    config = config_of(stamp)
    vae = AutoencoderKLQwenImage.from_pretrained(VAE_FOLDER)
    fresh, trained = build_pipeline(config, vae), build_pipeline(config, vae)
    trained.transformer.load_state_dict(load_stage(COMMITTED_FOLDER, config, trained)[0])  # checks VAE, sizes

    rng = np.random.default_rng([2026, 12])
    pairs = [pair for pair in (draw_pair(rng, config, "group_fusion") for _ in range(16)) if len(pair.portraits) == 2]
    encoded, token_weights, settings = encode_pairs(fresh, pairs[:6], config, progress=False)
    batch = stack(encoded[2], "target", settings)
    sigma = torch.full((batch.x0.shape[0],), 0.5)
    noise = torch.randn(tuple(batch.x0.shape), generator=torch.Generator().manual_seed(0))
    x_t = noisy(batch.x0, noise, sigma)
    losses = {}
    with torch.no_grad():
        for name, pipeline in (("fresh", fresh), ("trained", trained)):
            velocity = predict_velocity(
                pipeline.transformer.eval(), x_t, batch.refs, batch.prompt, batch.mask, sigma, batch.shapes
            )
            losses[name] = flow_matching_loss(velocity, batch.x0, noise).mean().item()
    assert losses["trained"] < 0.6 * losses["fresh"], losses
