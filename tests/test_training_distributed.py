"""Data parallelism on CPU with gloo: two torchrun ranks equal one process on the concatenated
batch, only rank 0 writes, and the shard deal gives every rank data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.data import shards_for_rank

pytestmark = pytest.mark.slow  # starts torchrun and gloo process groups

REPO = Path(__file__).resolve().parent.parent


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_shard_deal_covers_every_shard_once_per_epoch_and_never_starves_a_rank():
    urls = [f"shard-{i}.tar" for i in range(5)]
    for epoch in range(3):
        dealt = [shards_for_rank(urls, 0, epoch, rank, 2) for rank in range(2)]
        assert sorted(dealt[0] + dealt[1]) == urls and not set(dealt[0]) & set(dealt[1])
    assert shards_for_rank(urls, 0, 0) == shards_for_rank(urls, 0, 0, 0, 1)  # one process reads them all
    few = [shards_for_rank(urls[:1], 0, 0, rank, 3) for rank in range(3)]
    assert all(len(share) == 1 for share in few)


def test_two_ranks_equal_one_process_on_the_concatenated_batch(tiny_models_dir, sft_shards, tmp_path):
    common = ["--generator", str(tiny_models_dir / "generator"), "--shards", str(sft_shards), "--steps", "3"]
    done = torchrun("tests/ddp_worker.py", *common, "--out", str(tmp_path / "ddp.safetensors"))
    assert "rank 1 of 2 done" in done.stdout and "rank 0 of 2 done" in done.stdout
    single = subprocess.run(
        [sys.executable, "tests/ddp_worker.py", *common, "--out", str(tmp_path / "one.safetensors")],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp, one = load_file(str(tmp_path / "ddp.safetensors")), load_file(str(tmp_path / "one.safetensors"))
    assert ddp.keys() == one.keys()
    moved = [k for k in ddp if k.endswith("lora_B.weight") and ddp[k].abs().max() > 0]
    assert moved  # the steps changed the weights
    # gloo's all-reduce sums the two ranks' gradients in another order than one batch's mean, and
    # AdamW divides by sqrt(v), so a near-zero gradient rounded apart moves its weight by another
    # fraction of the rate (1e-3 a step): 1e-5 is a hundredth of one step.
    for key in ddp:
        torch.testing.assert_close(ddp[key], one[key], atol=1e-5, rtol=1e-5)


def test_torchrun_sft_loop_writes_from_rank_zero_only(tiny_models_dir, sft_shards, tmp_path):
    out = tmp_path / "run"
    config = {
        "generator_dir": str(tiny_models_dir / "generator"),
        "shards": str(sft_shards),
        "output_dir": str(out),
        "steps": 2,
        "checkpoint_every": 2,
        "modulation": "none",
    }
    (tmp_path / "sft.json").write_text(json.dumps(config))
    torchrun("-m", "training.sft", "--config", str(tmp_path / "sft.json"))
    log = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2]  # one writer
    manifest = json.loads((out / "step-000002" / "manifest.json").read_text())
    state = json.loads((out / "step-000002" / "training_state.json").read_text())
    assert manifest["step"] == 2 and state["data_position"] == 2  # batches of this rank's own stream
    assert (out / "step-000002" / "pytorch_lora_weights.safetensors").exists()
