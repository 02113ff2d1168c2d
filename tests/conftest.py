"""Shared fixtures. Tests run on one thread and never reach a model or data hub."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from idglow.data.celebahq import ingest_celebahq  # noqa: E402
from idglow.data.demo_celebahq import DemoDataset, write_demo_celebahq  # noqa: E402


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    """The demo profile's dataset (40 identities x 4 images at 256 px plus broken records)."""
    return write_demo_celebahq(tmp_path_factory.mktemp("celebahq") / "root")


@pytest.fixture(scope="session")
def demo_ingest(demo_dataset: DemoDataset):
    return ingest_celebahq(demo_dataset.root, expected_size=demo_dataset.spec.size, progress=False)


@pytest.fixture
def storage_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh storage root for the demo profile, set through the environment as a user would."""
    root = tmp_path / "storage"
    monkeypatch.setenv("IDGLOW_PROFILE", "demo")
    monkeypatch.setenv("IDGLOW_STORAGE_ROOT", str(root))
    monkeypatch.delenv("IDGLOW_CELEBAHQ_ROOT", raising=False)
    return root


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_models_dir() -> Path:
    """The demo's tiny twins, shared with `make demo` (built once per machine, then reused)."""
    from idglow.models.tiny import ensure_tiny_models

    folder = Path(os.environ.get("IDGLOW_TEST_MODELS_DIR", REPO / "var" / "models" / "demo"))
    ensure_tiny_models(folder, seed=0, progress=False)
    return folder


@pytest.fixture(scope="session")
def hub(tiny_models_dir: Path):
    from idglow.models.hub import ModelHub

    return ModelHub("demo", tiny_models_dir, device="cpu")


@pytest.fixture(scope="session")
def sft_shards(demo_dataset, demo_ingest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SFT shards of four demo group photos (one shard set per subject count), for the loop tests."""
    import pandas as pd

    from idglow.data.group_photos import write_demo_group_photos
    from idglow.data.groups import make_training_groups, split_identities
    from idglow.sample_sets import select_sft_examples, sft_samples
    from idglow.shards import write_shard_sets

    catalog = demo_ingest.catalog
    groups = make_training_groups(catalog, split_identities(catalog, 10, 0), 4, 0, seed=0)
    work = tmp_path_factory.mktemp("sft")
    photos = write_demo_group_photos(groups, catalog, demo_dataset.root, work / "photos", 4, 256, 0)
    examples = select_sft_examples(
        photos, pd.DataFrame(columns=["kept", "source", "chosen_identity", "chosen_aesthetic"]), 0.3, 0
    )
    write_shard_sets(sft_samples(examples), work / "shards", "sft")
    return work / "shards"
