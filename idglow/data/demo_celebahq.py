"""A small dataset in exactly CelebA-HQ's official layout, for the demo profile and the tests.

The real ingest code reads it unchanged. Identities are procedural faces (``idglow.data.faces``)
that differ visibly; their boxes, landmarks and identities are written beside the official
files in ``idglow_demo_truth.parquet`` (which the ingest ignores), so later stages can train the
tiny face models on known faces. A few deliberately broken records exercise the quarantine:
``DemoDataset.expected_quarantine`` lists them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from idglow.data import celebahq as layout
from idglow.data.faces import FaceStyle, render_portrait, sample_style
from idglow.storage import write_parquet_atomic

TRUTH_FILE = "idglow_demo_truth.parquet"
MANIFEST_FILE = "idglow_demo_manifest.json"
_FILE_NUMBER_RANGES = {
    "train": (1, layout.LAST_TRAIN_FILE_NUMBER),
    "val": (layout.LAST_TRAIN_FILE_NUMBER + 1, layout.LAST_VAL_FILE_NUMBER),
    "test": (layout.LAST_VAL_FILE_NUMBER + 1, 202599),
}


@dataclass(frozen=True)
class DemoDatasetSpec:
    """What to generate. The defaults are the demo profile's dataset."""

    identities: int = 40
    images_per_identity: int = 4
    size: int = 256
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    broken_records: bool = True


@dataclass(frozen=True)
class DemoDataset:
    root: Path
    spec: DemoDatasetSpec
    good_images: int
    expected_quarantine: dict[str, str]  # quarantine path -> a fragment of the expected reason


def write_demo_celebahq(root: str | os.PathLike[str], spec: DemoDatasetSpec = DemoDatasetSpec()) -> DemoDataset:
    """Write the dataset to ``root`` (atomically, as a whole folder), or reuse it if present.

    An existing root whose manifest records the same spec is reused as it is; any other
    existing content is an error rather than something to overwrite.
    """
    root = Path(root)
    manifest_path = root / MANIFEST_FILE
    if manifest_path.exists():
        recorded = json.loads(manifest_path.read_text())
        if recorded["spec"] == asdict(spec):
            return _dataset_from_manifest(root, recorded)
        raise FileExistsError(f"{root} holds a demo dataset made with another spec: {recorded['spec']}")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a demo dataset; refusing to write into it")

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        manifest = _write(staging, spec)
        if root.exists():
            root.rmdir()
        os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return _dataset_from_manifest(root, manifest)


def identity_style(identity: int, seed: int) -> FaceStyle:
    """The look of a demo identity: the same for every portrait and group photo of that person."""
    return sample_style(np.random.default_rng([seed, identity]))


def _dataset_from_manifest(root: Path, manifest: dict) -> DemoDataset:
    return DemoDataset(
        root=root,
        spec=DemoDatasetSpec(**manifest["spec"]),
        good_images=manifest["good_images"],
        expected_quarantine=manifest["expected_quarantine"],
    )


def _attributes(style: FaceStyle, young: bool, smile: float, rng: np.random.Generator) -> list[bool]:
    """The 40 CelebA attributes: the ones the drawing shows follow the style, the rest are random."""
    values = {name: bool(rng.random() < 0.2) for name in layout.CELEBA_ATTRIBUTES}
    values.update(
        Male=style.male,
        Eyeglasses=style.glasses,
        Bald=style.hair_style == "bald",
        Bangs=style.hair_style == "bangs",
        Black_Hair=style.hair_name == "black",
        Brown_Hair=style.hair_name in ("dark_brown", "brown"),
        Blond_Hair=style.hair_name == "blond",
        Gray_Hair=style.hair_name in ("gray", "white"),
        No_Beard=not style.beard,
        Goatee=style.beard,
        Smiling=smile > 0.5,
        Young=young,
        Wearing_Lipstick=False if style.male else values["Wearing_Lipstick"],
    )
    return [values[name] for name in layout.CELEBA_ATTRIBUTES]


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _write(staging: Path, spec: DemoDatasetSpec) -> dict:
    rng = np.random.default_rng(spec.seed)
    image_dir = staging / layout.IMAGE_DIR
    image_dir.mkdir(parents=True)

    identity_numbers = rng.choice(np.arange(1, 10178), size=spec.identities + 1, replace=False)
    n_test = round(spec.identities * spec.test_fraction)
    n_val = round(spec.identities * spec.val_fraction)
    partitions = ["test"] * n_test + ["val"] * n_val + ["train"] * (spec.identities - n_test - n_val)

    used_numbers: set[int] = set()

    def file_number(partition: str) -> int:
        low, high = _FILE_NUMBER_RANGES[partition]
        while True:
            number = int(rng.integers(low, high + 1))
            if number not in used_numbers:
                used_numbers.add(number)
                return number

    total_good = spec.identities * spec.images_per_identity
    hq_order = rng.permutation(total_good)
    mapping_rows: list[tuple[int, int, str]] = []
    identity_rows: list[tuple[str, int]] = []
    attribute_rows: list[tuple[str, list[bool]]] = []
    truth_rows: list[dict] = []
    counter = 0
    for person in range(spec.identities):
        style = identity_style(int(identity_numbers[person]), spec.seed)
        young = bool(rng.random() < 0.7)
        for _ in range(spec.images_per_identity):
            hq_idx = int(hq_order[counter])
            counter += 1
            number = file_number(partitions[person])
            image_rng = np.random.default_rng([spec.seed, hq_idx, 7])
            smile = float(image_rng.uniform(-0.3, 1.0))
            image, truth = render_portrait(style, spec.size, image_rng, smile=smile)
            (image_dir / f"{hq_idx}.jpg").write_bytes(_jpeg_bytes(image))
            celeba_file = f"{number:06d}.jpg"
            mapping_rows.append((hq_idx, number - 1, celeba_file))
            identity_rows.append((celeba_file, int(identity_numbers[person])))
            attribute_rows.append((f"{hq_idx}.jpg", _attributes(style, young, smile, image_rng)))
            truth_rows.append(
                {
                    "hq_idx": hq_idx,
                    "identity": int(identity_numbers[person]),
                    "bbox": list(truth.bbox),
                    "landmarks": [c for point in truth.landmarks for c in point],
                    "hair_style": style.hair_style,
                }
            )

    expected_quarantine: dict[str, str] = {}
    if spec.broken_records:
        expected_quarantine = _write_broken_records(
            image_dir,
            spec,
            total_good,
            int(identity_numbers[-1]),
            file_number,
            mapping_rows,
            identity_rows,
            attribute_rows,
        )

    mapping_rows.sort()
    lines = [f"{'idx':<8}{'orig_idx':<10}orig_file"]
    lines += [f"{idx:<8}{orig_idx:<10}{orig_file}" for idx, orig_idx, orig_file in mapping_rows]
    if spec.broken_records:
        lines.append(lines[1])  # a duplicate mapping row, quarantined on its own line
    (staging / layout.MAPPING_FILE).write_text("\n".join(lines) + "\n")
    identity_rows.sort()
    (staging / layout.IDENTITY_FILE).write_text("".join(f"{name} {ident}\n" for name, ident in identity_rows))
    attribute_rows.sort(key=lambda row: int(row[0].split(".")[0]))
    attribute_lines = [str(len(attribute_rows)), " ".join(layout.CELEBA_ATTRIBUTES)]
    attribute_lines += [f"{name}  " + " ".join("1" if v else "-1" for v in values) for name, values in attribute_rows]
    (staging / layout.ATTRIBUTE_FILE).write_text("\n".join(attribute_lines) + "\n")
    write_parquet_atomic(staging / TRUTH_FILE, pd.DataFrame(truth_rows).sort_values("hq_idx"))

    manifest = {
        "spec": asdict(spec),
        "good_images": total_good,
        "expected_quarantine": expected_quarantine,
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _write_broken_records(
    image_dir: Path,
    spec: DemoDatasetSpec,
    first_idx: int,
    identity: int,
    file_number,
    mapping_rows: list,
    identity_rows: list,
    attribute_rows: list,
) -> dict[str, str]:
    """One record for each quarantine reason the ingest knows about the image folder."""
    rng = np.random.default_rng([spec.seed, 99])
    style = sample_style(rng)
    good, _ = render_portrait(style, spec.size, rng)
    good_jpeg = _jpeg_bytes(good)
    small_jpeg = _jpeg_bytes(good.resize((spec.size // 2, spec.size // 2)))
    png = io.BytesIO()
    good.save(png, format="PNG")

    cases = [
        ("empty", b"", "empty file"),
        ("truncated", good_jpeg[: len(good_jpeg) // 2], "truncated"),
        ("text", b"this is not an image\n", "not an image"),
        ("small", small_jpeg, "expected"),
        ("png", png.getvalue(), "not a JPEG"),
        ("unmapped", good_jpeg, "image without mapping row"),
        ("no_identity", good_jpeg, "no identity"),
        ("no_image", None, "mapping row without image"),
    ]
    expected: dict[str, str] = {}
    for offset, (case, payload, reason) in enumerate(cases):
        hq_idx = first_idx + offset
        if payload is not None:
            (image_dir / f"{hq_idx}.jpg").write_bytes(payload)
        expected[f"{layout.IMAGE_DIR}/{hq_idx}.jpg"] = reason
        number = file_number("train")
        if case != "unmapped":
            mapping_rows.append((hq_idx, number - 1, f"{number:06d}.jpg"))
        if case != "no_identity":
            identity_rows.append((f"{number:06d}.jpg", identity))
        attribute_rows.append((f"{hq_idx}.jpg", [False] * len(layout.CELEBA_ATTRIBUTES)))
    (image_dir / "README.txt").write_text("not part of the dataset\n")
    expected[f"{layout.IMAGE_DIR}/README.txt"] = "unexpected file name"
    # The duplicate mapping row is written last in the file: total rows + header + 1.
    expected[f"{layout.MAPPING_FILE}:{len(mapping_rows) + 2}"] = "duplicate row"
    return expected
