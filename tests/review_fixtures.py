"""A small review setup shared by the web, browser and Dagster review tests."""

from pathlib import Path

from PIL import Image

from idglow.review.security import hash_password
from idglow.review.store import ReviewStore

PASSWORD = "correct horse battery"


def review_setup(folder: Path, items: int = 6, overlap: int = 1) -> ReviewStore:
    """Images under ``folder/storage``, the database in the review home beside it (as by default: never
    inside what is served), a store with reviewer ``ann``, one batch of ``items``."""
    storage = folder / "storage"
    (storage / "img").mkdir(parents=True)
    colours = {"chosen": (200, 60, 60), "rejected": (60, 60, 200), "portrait": (90, 160, 90)}
    for name, colour in colours.items():
        Image.new("RGB", (64, 64), colour).save(storage / "img" / f"{name}.png")
    (folder / "secret.txt").write_text("outside the storage root")
    store = ReviewStore(folder / "storage-review" / "review.sqlite", lease_seconds=120)
    store.add_reviewer("ann", hash_password(PASSWORD))
    store.publish(
        "batch-web",
        "test",
        [
            {
                "pair_id": f"pair-{i}",
                "prompt": f"Two friends, prompt {i}",
                "task": "group_fusion",
                "n_subjects": 1,
                "condition_paths": [str(storage / "img" / "portrait.png")],
                "chosen_path": str(storage / "img" / "chosen.png"),
                "rejected_path": str(storage / "img" / "rejected.png"),
                "scores": {"chosen": {"identity": 0.5}, "rejected": {"identity": 0.3}},
                "deltas": {"identity": 0.2},
            }
            for i in range(items)
        ],
        overlap=overlap,
    )
    return store
