"""The SFT loop on the tiny generator: exact resume, the LoRA round trip through stock diffusers,
and the identity path switching on and off with lambda."""

import json

import pandas as pd
import pytest
import torch
from diffusers import QwenImageEditPlusPipeline
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from idglow.data.group_photos import write_demo_group_photos
from idglow.data.groups import make_training_groups, split_identities
from idglow.shards import write_shard_sets
from idglow.storage import tensors_sha256
from training.loop import load_generator
from training.sft import SFTConfig, train

X = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(1))
REFS = torch.randn(1, 32, 64, generator=torch.Generator().manual_seed(2))
PROMPT = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(3))


def transformer_output(transformer) -> torch.Tensor:
    with torch.no_grad():
        return transformer(
            hidden_states=torch.cat([X, REFS], 1),
            timestep=torch.tensor([0.6]),
            encoder_hidden_states=PROMPT,
            encoder_hidden_states_mask=torch.ones(1, 6, dtype=torch.long),
            img_shapes=[[(1, 4, 4), (1, 4, 4), (1, 4, 4)]],
            return_dict=False,
        )[0]


def config(tiny_models_dir, shards, out, **overrides) -> SFTConfig:
    settings = {"steps": 4, "checkpoint_every": 2, "learning_rate": 1e-3, **overrides}
    return SFTConfig(
        generator_dir=str(tiny_models_dir / "generator"), shards=str(shards), output_dir=str(out), **settings
    )


def log_rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_exact_resume_and_lora_round_trip(tiny_models_dir, sft_shards, tmp_path):
    straight = train(config(tiny_models_dir, sft_shards, tmp_path / "a"))
    train(config(tiny_models_dir, sft_shards, tmp_path / "b"), stop_after=3)  # stopped one step after a checkpoint
    assert (tmp_path / "b" / "step-000002" / "manifest.json").exists() and not (tmp_path / "b" / "step-000004").exists()
    assert [row["step"] for row in log_rows(tmp_path / "b")] == [1, 2, 3]
    resumed = train(config(tiny_models_dir, sft_shards, tmp_path / "b"))
    a = load_file(str(straight / "pytorch_lora_weights.safetensors"))
    b = load_file(str(resumed / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Step 3 was trained again after the resume from step 2, and is logged once, as the straight run has it.
    assert [row["step"] for row in log_rows(tmp_path / "b")] == [1, 2, 3, 4]
    assert [row["loss"] for row in log_rows(tmp_path / "b")] == [row["loss"] for row in log_rows(tmp_path / "a")]
    assert json.loads((resumed / "manifest.json").read_text())["lora_sha256"] == tensors_sha256(
        straight / "pytorch_lora_weights.safetensors"
    )  # the same weights, the same version
    assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)  # moved away from the zero init
    manifest = json.loads((straight / "manifest.json").read_text())
    assert manifest["step"] == 4 and len(manifest["shard_manifest_sha256"]) == 64
    # Both runs kept their encodings beside their folders, one file per sample: run b read run a's.
    assert (
        len(list((tmp_path / "encodings").glob("*.safetensors")))
        == json.loads((sft_shards / "manifest.json").read_text())["samples"]
    )

    # The trained model, rebuilt the way training holds it, against stock diffusers loading the file.
    trained = load_generator(config(tiny_models_dir, sft_shards, tmp_path / "c"))
    from training.checkpoints import add_lora, load_checkpoint

    add_lora(trained.transformer, config(tiny_models_dir, sft_shards, tmp_path / "c"))
    optimizer = torch.optim.AdamW([p for p in trained.transformer.parameters() if p.requires_grad])
    load_checkpoint(straight, trained.transformer, optimizer)
    expected = transformer_output(trained.transformer)

    stock = QwenImageEditPlusPipeline.from_pretrained(tiny_models_dir / "generator")
    base = transformer_output(stock.transformer)
    stock.load_lora_weights(straight)
    loaded = transformer_output(stock.transformer)
    assert torch.allclose(loaded, expected, atol=1e-6)
    assert not torch.allclose(loaded, base, atol=1e-4)
    stored = {k.removeprefix("transformer.") for k in a}
    assert set(get_peft_model_state_dict(stock.transformer, adapter_name=stock.get_active_adapters()[0])) == stored


def test_identity_path_runs_only_with_lambda(tiny_models_dir, sft_shards, tmp_path):
    pack = str(tiny_models_dir / "insightface" / "tiny_pack")
    train(config(tiny_models_dir, sft_shards, tmp_path / "on", face_pack_dir=pack, modulation="constant", steps=2))
    train(config(tiny_models_dir, sft_shards, tmp_path / "off", face_pack_dir=pack, modulation="none", steps=2))
    on = [json.loads(line) for line in (tmp_path / "on" / "log.jsonl").read_text().splitlines()]
    off = [json.loads(line) for line in (tmp_path / "off" / "log.jsonl").read_text().splitlines()]
    assert all(row["decoded"] == 1 and row["loss"] > row["loss_fm"] for row in on)
    assert all(any(key.startswith("detect_rate_t") for key in row) for row in on)
    assert all(row["decoded"] == 0 and row["loss"] == pytest.approx(row["loss_fm"]) for row in off)


@pytest.mark.slow
def test_command_line_entry_point(tiny_models_dir, sft_shards, tmp_path):
    import subprocess
    import sys
    from dataclasses import asdict

    path = tmp_path / "sft.json"
    path.write_text(json.dumps(asdict(config(tiny_models_dir, sft_shards, tmp_path / "cli", steps=1))))
    result = subprocess.run(
        [sys.executable, "-m", "training.sft", "--config", str(path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step-000001" in result.stdout
    assert (tmp_path / "cli" / "step-000001" / "pytorch_lora_weights.safetensors").exists()


@pytest.fixture(scope="module")
def dpo_shards(hub, demo_dataset, demo_ingest, tmp_path_factory):
    from idglow.filtering import apply_filter
    from idglow.pairs import build_pairs
    from idglow.sample_sets import dpo_samples
    from idglow.scoring import ImageScorer, score_pairs

    catalog = demo_ingest.catalog
    groups = make_training_groups(catalog, split_identities(catalog, 10, 0), 4, 0, seed=0)
    work = tmp_path_factory.mktemp("dpo")
    photos = write_demo_group_photos(groups, catalog, demo_dataset.root, work / "photos", 4, 256, 0)
    empty = pd.DataFrame(
        columns=[
            "photo_id",
            "job_id",
            "round",
            "k",
            "path",
            "seed",
            "model_version",
            "prompt",
            "task",
            "condition_paths",
            "identities",
            "n_subjects",
            "group_id",
            "candidate_id",
        ]
    )
    pairs = build_pairs(empty, photos, work / "perturbed", seed=0)
    scored = apply_filter(score_pairs(ImageScorer(hub, progress=False), pairs), pairs)
    write_shard_sets(dpo_samples(scored.assign(review_decision="accept", review_mode="test")), work / "shards", "dpo")
    return work / "shards"


def test_dpo_trains_a_fresh_adapter_and_exports_one_lora_stock_diffusers_loads(
    tiny_models_dir, sft_shards, dpo_shards, tmp_path
):
    from training.checkpoints import add_lora, load_checkpoint
    from training.dpo import UNUSED_SFT_FIELDS, DPOConfig, merge_sft
    from training.dpo import train as train_dpo

    sft = train(config(tiny_models_dir, sft_shards, tmp_path / "sft"))
    shared = config(tiny_models_dir, dpo_shards, tmp_path / "dpo", steps=3, checkpoint_every=3).__dict__
    dpo_config = DPOConfig(
        **{name: value for name, value in shared.items() if name not in UNUSED_SFT_FIELDS}, sft_checkpoint=str(sft)
    )
    combined = train_dpo(dpo_config)
    logs = [json.loads(line) for line in (tmp_path / "dpo" / "log.jsonl").read_text().splitlines()]
    assert logs[0]["reward_margin"] == 0.0  # a fresh adapter starts as the reference
    assert {"implicit_accuracy", "mse_chosen", "mse_rejected"} <= logs[-1].keys()

    trained = load_generator(dpo_config)
    merge_sft(trained, sft)
    add_lora(trained.transformer, dpo_config)
    optimizer = torch.optim.AdamW([p for p in trained.transformer.parameters() if p.requires_grad])
    load_checkpoint(tmp_path / "dpo" / "step-000003", trained.transformer, optimizer)
    expected = transformer_output(trained.transformer)

    stock = QwenImageEditPlusPipeline.from_pretrained(tiny_models_dir / "generator")
    base = transformer_output(stock.transformer)
    stock.load_lora_weights(sft, adapter_name="sft_only")
    sft_only = transformer_output(stock.transformer)
    stock.unload_lora_weights()
    stock.load_lora_weights(combined)
    loaded = transformer_output(stock.transformer)
    assert torch.allclose(loaded, expected, atol=1e-5)
    assert not torch.allclose(loaded, sft_only, atol=1e-5) and not torch.allclose(loaded, base, atol=1e-5)
    rank = json.loads((combined / "manifest.json").read_text())["rank"]
    assert rank == 2 * dpo_config.lora_rank


def test_selective_gradient_checkpointing_keeps_gradients_and_keys(tiny_models_dir, sft_shards, tmp_path):
    from peft.utils import get_peft_model_state_dict as lora_state

    from training.checkpoints import add_lora
    from training.memory import checkpoint_blocks

    def gradients(count):
        pipeline = load_generator(config(tiny_models_dir, sft_shards, tmp_path))
        add_lora(pipeline.transformer, config(tiny_models_dir, sft_shards, tmp_path))
        with torch.no_grad():  # make the LoRA path non-trivial
            for name, parameter in pipeline.transformer.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
        every_block = len(pipeline.transformer.transformer_blocks)
        assert checkpoint_blocks(pipeline.transformer, count) == (every_block if count < 0 else count)
        out = pipeline.transformer(
            hidden_states=torch.cat([X, REFS], 1),
            timestep=torch.tensor([0.6]),
            encoder_hidden_states=PROMPT,
            encoder_hidden_states_mask=torch.ones(1, 6, dtype=torch.long),
            img_shapes=[[(1, 4, 4), (1, 4, 4), (1, 4, 4)]],
            return_dict=False,
        )[0]
        out.square().mean().backward()
        keys = set(lora_state(pipeline.transformer))
        # Parameters that cannot reach the image output (the last block's text stream) get no gradient.
        return {
            n: None if p.grad is None else p.grad.clone()
            for n, p in pipeline.transformer.named_parameters()
            if p.requires_grad
        }, keys

    plain, plain_keys = gradients(0)
    for count in (1, -1):
        checkpointed, keys = gradients(count)
        assert keys == plain_keys
        assert {n for n, g in plain.items() if g is None} == {n for n, g in checkpointed.items() if g is None}
        assert sum(g is not None for g in plain.values()) > 0
        assert all(g is None or torch.allclose(g, checkpointed[n], atol=1e-6) for n, g in plain.items())


def test_saved_adapter_metadata_does_not_depend_on_set_order():
    from peft import LoraConfig

    from training.checkpoints import lora_metadata

    a = lora_metadata(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    b = lora_metadata(LoraConfig(r=4, target_modules=["to_out.0", "to_v", "to_k", "to_q"]))
    assert a == b and a["target_modules"] == ["to_k", "to_out.0", "to_q", "to_v"]
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_the_log_keeps_each_step_once_when_a_run_restarts(tmp_path):
    from training.checkpoints import truncate_log

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 0.5}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    truncate_log(log, 2)  # resumed from step 2: steps 3 and 4 (torn by the kill) are logged again
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]
    truncate_log(log, 0)  # a fresh start after a run killed before its first checkpoint
    assert log.read_text() == ""
    truncate_log(tmp_path / "absent.jsonl", 3)
    assert not (tmp_path / "absent.jsonl").exists()


def test_resume_refuses_a_folder_trained_with_other_settings(tiny_models_dir, sft_shards, tmp_path):
    from training.checkpoints import ConfigMismatch

    out = tmp_path / "run"
    train(config(tiny_models_dir, sft_shards, out, modulation="none"), stop_after=2)
    saved = json.loads((out / "step-000002" / "manifest.json").read_text())["config"]
    assert saved["lambda_id"] == 0.1 and saved["modulation"] == "none"
    with pytest.raises(ConfigMismatch, match=r"lambda_id: saved 0\.1, now 0\.3") as refused:
        train(config(tiny_models_dir, sft_shards, out, modulation="none", lambda_id=0.3))
    assert "tau" not in str(refused.value)  # only what differs is named
    assert not (out / "step-000004").exists()
    # Where the run lives and runs, and how much it recomputes, may change: these settings resume it.
    resumed = train(
        config(tiny_models_dir, sft_shards, out, modulation="none", device="cpu", gradient_checkpoint_blocks=1)
    )
    assert resumed.name == "step-000004"


def test_the_loop_checkpoints_on_the_minute_cadence_too(tiny_models_dir, sft_shards, tmp_path):
    # Zero minutes: every step is due by time, whatever the step cadence says (no clock is involved).
    train(
        config(
            tiny_models_dir,
            sft_shards,
            tmp_path / "run",
            steps=3,
            checkpoint_every=100,
            modulation="none",
            checkpoint_every_minutes=0,
        )
    )
    assert sorted(p.name for p in (tmp_path / "run").glob("step-*")) == ["step-000001", "step-000002", "step-000003"]


def test_auto_recomputation_means_none_on_the_cpu(tiny_models_dir, sft_shards, tmp_path):
    from training.loop import prepare_trainable

    auto = config(
        tiny_models_dir, sft_shards, tmp_path / "auto", gradient_checkpoint_blocks="auto", modulation="none", steps=1
    )
    pipeline = load_generator(auto)
    prepare_trainable(pipeline.transformer, auto)
    assert not any(block.recompute_in_backward for block in pipeline.transformer.transformer_blocks)
    train(auto)
    assert (tmp_path / "auto" / "step-000001").is_dir() and not (tmp_path / "auto" / "memory_plan.json").exists()
