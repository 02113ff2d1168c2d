"""Memory and time of the encoding cache: the old in-memory cache (every sample's encodings kept
on the device for the whole run) against the disk cache (training.encodings), for a growing
number of samples, with equal work: epoch 1 encodes every sample, epoch 2 reuses them, and a
second run (a new cache object on the same folder: a new process would do the same) reuses what
the first wrote; the in-memory cache has nothing to reuse then and encodes again.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/encoding_cache.py [--samples 8 32 128] [--resolution 256]
        [--generator var/models/demo/generator] [--device cpu|cuda]

Each (cache, N) runs in its own process, so that the peak RSS (``resource.getrusage``) is that
case's alone. Columns: held MiB (the tensor bytes reachable from the cache object after the two
epochs, the pipeline's weights left out), the RSS after the two epochs and the peak RSS, both
above the process's once the pipeline was loaded (the peak is mostly the encoders' activations),
on CUDA the peak allocated device memory above the same point, and the
seconds of epoch 1, epoch 2 and the second run's epoch. The tiny demo generator's encodings are
small, so the RSS column moves by little; the held column is the one that grows with N.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from training.data import Sample  # noqa: E402
from training.encodings import EncodingCache, SampleEncoding, encode_sample, held_tensor_bytes  # noqa: E402
from training.loop import load_generator  # noqa: E402
from training.sft import SFTConfig  # noqa: E402


class InMemoryCache(EncodingCache):
    """The cache as it was before the disk one: a dict of every sample's encodings on the device."""

    def __init__(self, pipeline, config, directory: Path):
        super().__init__(pipeline, config, directory)
        self.entries: dict[str, SampleEncoding] = {}

    def get(self, sample: Sample) -> SampleEncoding:
        if sample.key not in self.entries:
            self.entries[sample.key] = encode_sample(self.pipeline, sample, self.config)
            self.encoded += 1
        else:
            self.read += 1
        return self.entries[sample.key]


def synthetic_samples(count: int, size: int, subjects: int) -> list[Sample]:
    def portrait(seed: int) -> Image.Image:
        return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))

    return [
        Sample(
            f"s{i:05d}",
            {"prompt": f"A group of friends, photo {i}.", "task": "group_photo"},
            {"target": portrait(i)},
            [portrait(1_000_000 + subjects * i + j) for j in range(subjects)],
        )
        for i in range(count)
    ]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mib() -> float:
    """Resident memory now (Linux /proc), after handing glibc's free blocks back to the system, so
    that what the encoders' activations left in malloc's arenas is not counted as held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure then includes the arenas' free space
        pass
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def epoch(cache: EncodingCache, samples: list[Sample], batch_size: int) -> float:
    start = time.perf_counter()
    for index in range(0, len(samples), batch_size):
        batch = cache.batch(samples[index : index + batch_size], "target")
        del batch  # what a step does with it: use it, then let it go
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def worker(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    config = SFTConfig(
        generator_dir=args.generator,
        shards="",
        output_dir="",
        resolution=args.resolution,
        reference_resolution=args.resolution,
        device=args.device,
        encoding_cache_dir=args.cache_dir,
    )
    pipeline = load_generator(config)
    samples = synthetic_samples(args.count, args.resolution, args.subjects)
    kind = InMemoryCache if args.variant == "memory" else EncodingCache
    on_cuda = pipeline.transformer.device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_peak, base_rss, base_cuda = peak_rss_mib(), rss_mib(), torch.cuda.memory_allocated() if on_cuda else 0
    cache = kind(pipeline, config, Path(args.cache_dir))
    first, second = epoch(cache, samples, args.batch_size), epoch(cache, samples, args.batch_size)
    held = held_tensor_bytes(cache, skip=(pipeline, config), modules=("training", "__main__"))
    rss_after = rss_mib() - base_rss
    encoded_first_run = cache.encoded
    rerun = kind(pipeline, config, Path(args.cache_dir))  # a second run with the same settings
    third = epoch(rerun, samples, args.batch_size)
    return {
        "variant": args.variant,
        "samples": args.count,
        "held_mib": held / 2**20,
        "rss_mib": rss_after,
        "peak_rss_mib": peak_rss_mib() - base_peak,
        "peak_cuda_mib": (torch.cuda.max_memory_allocated() - base_cuda) / 2**20 if on_cuda else None,
        "epoch1_s": first,
        "epoch2_s": second,
        "rerun_s": third,
        "encoded": encoded_first_run,
        "rerun_encoded": rerun.encoded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--resolution", type=int, default=256, help="target and reference side in pixels")
    parser.add_argument("--subjects", type=int, default=2, help="condition portraits per sample")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--generator", default=str(REPO / "var" / "models" / "demo" / "generator"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["memory", "disk"], help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(
        f"{'cache':<8}{'N':>6}{'held MiB':>10}{'RSS MiB':>9}{'peak RSS MiB':>14}{'peak CUDA MiB':>15}"
        f"{'epoch1 s':>10}{'epoch2 s':>10}{'rerun s':>9}{'rerun encodes':>15}"
    )
    for count in args.samples:
        for variant in ("memory", "disk"):
            with tempfile.TemporaryDirectory(prefix="encoding-bench-") as folder:
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--variant",
                    variant,
                    "--count",
                    str(count),
                    "--cache-dir",
                    folder,
                    "--resolution",
                    str(args.resolution),
                    "--subjects",
                    str(args.subjects),
                    "--batch-size",
                    str(args.batch_size),
                    "--generator",
                    args.generator,
                    "--device",
                    args.device,
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode:
                    sys.exit(f"{variant} N={count} failed:\n{done.stderr[-3000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
            cuda = "-" if row["peak_cuda_mib"] is None else f"{row['peak_cuda_mib']:.1f}"
            print(
                f"{variant:<8}{count:>6}{row['held_mib']:>10.2f}{row['rss_mib']:>9.1f}{row['peak_rss_mib']:>14.1f}{cuda:>15}"
                f"{row['epoch1_s']:>10.2f}{row['epoch2_s']:>10.2f}{row['rerun_s']:>9.2f}{row['rerun_encoded']:>15}",
                flush=True,
            )


if __name__ == "__main__":
    main()
