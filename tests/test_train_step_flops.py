"""The per-stream FLOP count of a LoRA training step (benchmarks/train_flops.py): a hand count on
a tiny shape, and torch's FlopCounterMode on a tiny QwenImageTransformer2DModel on the CPU; and
the GPU benchmark's table on the CPU (benchmarks/gpu_train_step.py, its --tiny dry run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from train_flops import StepTokens, TransformerShape, previous_count, step_flops  # noqa: E402


def test_hand_count_on_a_tiny_shape():
    """Two blocks of width 8 (2 heads of 4), 6-wide prompt embeddings, 4 target + 8 reference
    image tokens, 3 text tokens (joint sequence 15), LoRA rank 2 on the default targets, the
    first block recomputed. Counted by hand, term by term (2 FLOPs per multiply-add)."""
    shape = TransformerShape(layers=2, heads=2, head_dim=4, joint_attention_dim=6)
    flops = step_flops(shape, StepTokens(target=4, references=8, text=3), lora_rank=2, recomputed_blocks=1)
    d, n_img, n_txt, s, r = 8, 12, 3, 15, 2
    stream_weights = 4 * d * d + d * 4 * d + 4 * d * d  # q, k, v, out; MLP up; MLP down: 768 per stream
    # forward, per block and stream: 2 x tokens x weights
    assert flops.forward["image"] == 2 * (2 * n_img * stream_weights)  # 36864
    assert flops.forward["text"] == 2 * (2 * n_txt * stream_weights)  # 9216: only the 3 prompt tokens
    assert flops.forward["attention"] == 2 * (4 * s * s * d)  # 14400: QK^T and AV over text + image
    # img_mod on the two timestep vectors (zero_cond_t), txt_mod on one: 6d outputs, no token
    assert flops.forward["modulation"] == 2 * (2 * 2 * d * 6 * d + 2 * 1 * d * 6 * d)  # 4608
    embedding = 2 * n_img * 64 * d + 2 * n_txt * 6 * d + 2 * 2 * (256 * d + d * d) + 2 * d * 2 * d + 2 * n_img * d * 64
    assert flops.forward["embedding"] == embedding  # img_in, txt_in, timestep MLP, norm_out, proj_out: 33568
    lora_image = 4 * (2 * n_img * r * (d + d)) + 2 * n_img * r * (4 * d + d)  # q, k, v, out; MLP down
    lora_text = 4 * (2 * n_txt * r * (d + d)) + 2 * n_txt * r * (4 * d + d)
    assert flops.forward["lora"] == 2 * (lora_image + lora_text)  # 12480
    assert sum(flops.forward.values()) == 111136

    # backward: input gradients of frozen linears (1x), none for block 0's Q/K/V (frozen input),
    # none for the last block's text stream after attention (unused), none for modulation
    assert flops.backward["image"] == 2 * n_img * (stream_weights - 3 * d * d) + 2 * n_img * stream_weights  # 32256
    assert flops.backward["text"] == 2 * n_txt * (stream_weights - 3 * d * d) + 2 * n_txt * 3 * d * d  # 4608
    assert flops.backward["attention"] == 2 * 2 * (4 * s * s * d)  # dV, dP, dQ, dK: 28800
    assert flops.backward["modulation"] == 0
    assert flops.backward["embedding"] == 2 * n_img * d * 64  # proj_out's input gradient: 12288

    def lora_backward(n: int, fan_in: int, fan_out: int, input_gradient: bool) -> int:
        # dB, the gradient of A's output, dA; and A's input gradient
        return 2 * n * r * fan_out * 2 + 2 * n * r * fan_in + (2 * n * r * fan_in if input_gradient else 0)

    block0 = (
        3 * lora_backward(n_img, d, d, False)
        + lora_backward(n_img, d, d, True)
        + lora_backward(n_img, 4 * d, d, True)
        + 3 * lora_backward(n_txt, d, d, False)
        + lora_backward(n_txt, d, d, True)
        + lora_backward(n_txt, 4 * d, d, True)
    )
    block1 = 4 * lora_backward(n_img, d, d, True) + lora_backward(n_img, 4 * d, d, True)
    block1 += 3 * lora_backward(n_txt, d, d, True)
    assert flops.backward["lora"] == block0 + block1  # 22176
    assert flops.model == 111136 + 100128
    # hardware: block 0's forward again, and QK^T again in each fused attention backward
    block0_forward = 2 * n_img * stream_weights + 2 * n_txt * stream_weights + 4 * s * s * d + 2304 + 6240
    assert flops.recompute == block0_forward  # 38784
    assert flops.score_recompute == 2 * (2 * s * s * d)
    assert flops.hardware == 211264 + 38784 + 7200


def test_real_shape_against_the_previous_count():
    """At 1024² with 2 references and 256 prompt tokens the earlier '4 N T + attention' count was
    about 1.8x the model FLOPs: a third of the weights (text stream) see 256 tokens, a third
    (modulation) one vector, while attention's backward was counted once instead of twice."""
    shape = TransformerShape(layers=60, heads=24, head_dim=128)
    tokens = StepTokens.square(1024, references=2, text=256)
    assert (tokens.target, tokens.references, tokens.joint) == (4096, 8192, 12544)
    flops = step_flops(shape, tokens, lora_rank=32)
    assert flops.part("modulation") / flops.model < 1e-4
    assert flops.part("text") / flops.part("image") == pytest.approx(256 / 12288, rel=0.01)
    old = previous_count(20_430_000_000, 60, 3072, tokens.joint)
    assert 1.7 < old / flops.model < 1.9


@pytest.fixture(scope="module")
def tiny_lora_transformer():
    from diffusers import QwenImageTransformer2DModel

    from training.loop import prepare_trainable
    from training.sft import SFTConfig

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        num_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=24,
        axes_dims_rope=(4, 6, 6),
        zero_cond_t=True,
    )
    transformer.requires_grad_(False)
    config = SFTConfig(generator_dir="", shards="", output_dir="", lora_rank=4, modulation="none")
    prepare_trainable(transformer, config)
    return transformer, config


def _counted(transformer, tokens: StepTokens, backward: bool) -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from training.flow import predict_velocity

    side = int(tokens.target**0.5)
    references = tokens.references // tokens.target
    b = tokens.batch
    x, refs = torch.randn(b, tokens.target, 64), torch.randn(b, tokens.references, 64)
    prompt = torch.randn(b, tokens.text, transformer.config.joint_attention_dim)
    sigma = torch.full((b,), 0.5)
    shapes = [(1, side, side)] * (1 + references)
    # the CPU's fused SDPA kernel has no FLOP formula; the math kernel's matmuls are counted (it keeps the scores)
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        with torch.set_grad_enabled(backward):
            velocity = predict_velocity(transformer, x, refs, prompt, None, sigma, shapes)
            if backward:
                velocity.float().pow(2).mean().backward()
    transformer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("tokens", "recomputed"),
    [
        (StepTokens(target=16, references=32, text=7), 0),
        (StepTokens(target=16, references=32, text=7), 2),
        (StepTokens(target=16, references=16, text=5, batch=2), -1),
    ],
)
def test_flop_counter_mode_agrees(tiny_lora_transformer, tokens, recomputed):
    """What torch counts over a real forward and backward equals the per-stream count exactly
    (hardware FLOPs: the math kernel recomputes no scores, checkpointed blocks run twice)."""
    from training.memory import checkpoint_blocks

    transformer, config = tiny_lora_transformer
    count = checkpoint_blocks(transformer, recomputed)
    expected = step_flops(
        TransformerShape.of(transformer.config), tokens, 4, config.lora_targets, count, fused_attention=False
    )
    assert expected.score_recompute == 0
    assert _counted(transformer, tokens, backward=True) == pytest.approx(expected.hardware, rel=1e-9)
    checkpoint_blocks(transformer, 0)


def test_flop_counter_mode_agrees_without_gradient_and_adapters(tiny_lora_transformer):
    """DPO's reference forward: no gradient, the adapters disabled."""
    transformer, config = tiny_lora_transformer
    tokens = StepTokens(target=16, references=32, text=7, batch=2)
    shape = TransformerShape.of(transformer.config)
    with_lora = step_flops(shape, tokens, 4, config.lora_targets, backward=False)
    assert _counted(transformer, tokens, backward=False) == with_lora.model
    transformer.disable_adapters()
    try:
        without = step_flops(shape, tokens, 4, config.lora_targets, backward=False, lora=False)
        assert _counted(transformer, tokens, backward=False) == without.model
    finally:
        transformer.enable_adapters()
    assert without.forward["lora"] == 0 < with_lora.forward["lora"]


def test_comparison_rows_pair_each_case_with_its_baseline():
    from gpu_train_step import comparison_rows

    shape = TransformerShape(layers=2, heads=2, head_dim=16, joint_attention_dim=32)
    tokens = {128: StepTokens.square(128, 2, 8), 64: StepTokens.square(64, 2, 8)}
    ours = {
        "a": {"res": 128, "recomputed": 2, "s_per_step": 0.5, "peak_gib": 10.0, "mfu_vs_989": 0.1, "hfu_vs_989": 0.2},
        "b": {"res": 64, "recomputed": 0, "error": "out of memory"},
    }
    base = {
        "a": {"res": 128, "recomputed": 2, "s_per_step": 1.0, "peak_gib": 9.0},
        "b": {"res": 64, "recomputed": 0, "error": "Traceback...\ntorch.OutOfMemoryError: CUDA out of memory"},
    }
    rows = comparison_rows(ours, base, shape, tokens, 4, cuda=True)
    assert rows[0][:8] == ["(a) all recomputed vs baseline default", 128, "2 / 2", "0.500", "1.000", "2.00", "10.0",
                           "9.0"]  # fmt: skip
    expected = step_flops(shape, tokens[128], 4, recomputed_blocks=2)
    assert rows[0][9] == f"{expected.model / 1.0 / 989e12:.3f}"
    assert rows[1][3] == "out of memory" and rows[1][4].startswith("baseline: torch.OutOfMemoryError")


@pytest.mark.slow
def test_gpu_benchmark_dry_run_prints_the_table(tmp_path):
    """``train_step.py --gpu --tiny`` on the CPU: the baseline's two cases in their own processes,
    ours in the three cases, the ID path with the rehearsal pack's detector on the decoded image,
    the FLOP check and the table."""
    baseline = REPO.parent / "shared" / "bench" / "baseline_train_step.py"
    if not baseline.exists():
        pytest.skip(f"no baseline script at {baseline}")
    out = tmp_path / "rows.jsonl"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--gpu", "--tiny", "--phases", "a,b,c,id,flops"]
        + ["--steps", "1", "--out", str(out), "--baseline", str(baseline)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        cwd=REPO,
    )
    assert "| (a) all recomputed vs baseline default | 128 | 2 / 2 |" in done.stdout
    assert "| (b) none recomputed vs baseline --no-ckpt | 64 | 0 / 0 |" in done.stdout
    assert "PYTORCH_CUDA_ALLOC_CONF='expandable_segments:True' for ours and every baseline process" in done.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    check = next(r for r in rows if r["case"] == "flops")
    assert check["relative_difference"] == 0
    assert {(r["case"], r["who"]) for r in rows if "s_per_step" in r} >= {("a", "baseline"), ("a", "idglow")}
    parts = next(r for r in rows if r["case"] == "id-parts")
    assert set(parts["parts_s"]) == {"decode (forward)", "detect (copy to host, detector, NMS)", "recogniser (forward)"}
    assert parts["faces_embedded_per_image"] == 2 and parts["id_path_hardware_flop"] > 0
    assert "ID path at 128²" in done.stdout


@pytest.mark.slow
def test_gpu_rehearsal_dry_run(tmp_path):
    """benchmarks/gpu_rehearsal.py --tiny: one generation, 3 SFT steps with the ID loss, 2 DPO
    steps and the export, through the training loops, on the demo's tiny generator."""
    out = tmp_path / "rehearsal.jsonl"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_rehearsal.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        cwd=REPO,
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["build", "generation"] + ["sft"] * 3 + ["sft checkpoint"] + ["dpo"] * 2 + [
        "dpo checkpoint and export"
    ]
    assert all(r["decoded"] == 1 for r in rows if r["phase"] == "sft")  # constant lambda: every step decodes
    assert "| sft | 3 |" in done.stdout
