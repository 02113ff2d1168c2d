"""Reporting back to Dagster through Pipes when a training run was launched by it.

Only global rank 0 opens the Pipes session: it streams a log line per step and, at the end,
reports the materialization with the checkpoint URI, its metrics, and a data version equal to
the checkpoint's SHA-256. Run by hand (no Pipes context in the environment) nothing is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes

from training.distributed import DistributedContext


@contextlib.contextmanager
def pipes_session(dist: DistributedContext) -> Iterator[PipesContext | None]:
    if dist.is_main and PipesEnvVarParamsLoader().is_dagster_pipes_process():
        with open_dagster_pipes() as pipes:
            yield pipes
    else:
        yield None


def step_reporter(pipes: PipesContext | None, total_steps: int, every: int = 1):
    """A per-step callback for ``training.loop.train`` that logs progress into the Dagster run."""
    if pipes is None:
        return None

    def report(row: dict) -> None:
        if row["step"] % every == 0 or row["step"] == total_steps:
            pipes.log.info(
                f"step {row['step']}/{total_steps} " + json.dumps({k: v for k, v in row.items() if k != "step"})
            )

    return report


def report_checkpoint(
    pipes: PipesContext | None, checkpoint: Path, dist: DistributedContext, extra: dict | None = None
) -> None:
    """The materialization of a finished run: URI, SHA-256 (also the data version), the trained-on
    shard manifest, the last step's metrics, and who trained it."""
    if pipes is None:
        return
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    log = checkpoint.parent / "log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    last = json.loads(lines[-1]) if lines else {}
    metadata = {
        "checkpoint_uri": {"raw_value": str(checkpoint), "type": "path"},
        "lora_sha256": {"raw_value": manifest["lora_sha256"], "type": "text"},
        "world_size": {"raw_value": dist.world, "type": "int"},
        "training_pid": {"raw_value": os.getpid(), "type": "int"},
        "last_step": {"raw_value": last, "type": "json"},
        **{key: {"raw_value": value, "type": "__infer__"} for key, value in (extra or {}).items()},
    }
    if "step" in manifest:
        metadata["step"] = {"raw_value": manifest["step"], "type": "int"}
    if "shard_manifest_sha256" in manifest:
        metadata["shard_manifest_sha256"] = {"raw_value": manifest["shard_manifest_sha256"], "type": "text"}
    pipes.report_asset_materialization(metadata=metadata, data_version=manifest["lora_sha256"])


def run_command(
    description: str,
    config_type,
    train: Callable,
    label: str,
    distributed: bool = True,
    extra_metadata: Callable[[Path], dict] | None = None,
) -> Path:
    """The ``python -m training.X --config FILE`` entry point the loops share: read the config
    (JSON with ``config_type``'s fields), join torchrun's process group when there is one, train,
    and report to Dagster through Pipes from global rank 0 when Dagster launched the run."""
    import torch

    from training.distributed import setup_distributed

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, required=True, help=f"JSON file with {config_type.__name__} fields")
    parser.add_argument(
        "--root",
        type=Path,
        help="folder the config's relative paths are relative to; the run works in it (Dagster passes the "
        "storage root, so a config and its checkpoints name no mount point)",
    )
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = config_type(**json.loads(args.config.read_text()))
    if args.root is not None:
        os.chdir(args.root)
    dist = setup_distributed() if distributed else DistributedContext()
    with pipes_session(dist) as pipes:
        result = train(config, on_step=step_reporter(pipes, config.steps))
        report_checkpoint(pipes, result, dist, extra_metadata(result) if pipes is not None and extra_metadata else None)
    if dist.is_main:
        print(f"{label}: {result}")
    return result
