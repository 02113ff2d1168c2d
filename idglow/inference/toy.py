"""A cheap deterministic replica for exercising the engine on a laptop and in the tests: each
item's output is ``size``² RGB bytes drawn from a generator seeded by the item's id and the seed,
written in two halves (so a writer killed in between leaves a partial file), complete when it
has all its bytes.

``gate_dir`` is for the fault tests: before the second half of each output, the writing process
records its pid there (``<pid>.pid``) and waits until a file ``release`` appears, so a test can kill
a worker that is known to hold a half-written output."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from idglow.inference.engine import Replica


def toy_output(item_id: str, seed: int, size: int) -> bytes:
    """The bytes a toy replica writes for ``item_id`` (what an uninterrupted run writes)."""
    digest = hashlib.sha256(f"{seed}|{item_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8).tobytes()


@dataclass(frozen=True)
class ToyReplicaFactory:
    seed: int = 0
    size: int = 32
    gate_dir: str | None = None

    def __call__(self) -> ToyReplica:
        return ToyReplica(self)


class ToyReplica(Replica):
    def __init__(self, factory: ToyReplicaFactory):
        self.factory = factory
        self.loads = 1  # a real replica loads its weights here, once per actor

    def run(self, items: list[dict[str, Any]]) -> list[bytes]:
        return [toy_output(item["item_id"], self.factory.seed, self.factory.size) for item in items]

    def write(self, output: bytes, path: Path) -> None:
        half = len(output) // 2
        with open(path, "wb") as handle:
            handle.write(output[:half])
            handle.flush()
            if self.factory.gate_dir:
                gate = Path(self.factory.gate_dir)
                (gate / f"{os.getpid()}.pid").write_text(path.name)
                while not (gate / "release").exists():
                    time.sleep(0.05)
            handle.write(output[half:])

    def is_complete(self, path: Path) -> bool:
        return path.is_file() and path.stat().st_size == self.factory.size**2 * 3

    def describe(self, item: dict[str, Any], path: Path) -> dict[str, Any]:
        return {"mean": round(float(np.frombuffer(path.read_bytes(), np.uint8).mean()), 6)}
