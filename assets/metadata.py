"""Metadata every asset reports about the files it wrote."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from idglow.storage import relative_to_root, resolve_under, sha256_file

# The metadata key that names a training asset's checkpoint relative to the storage root: what
# downstream assets read (``checkpoint_uri`` is absolute, for people, and names the root as it was).
CHECKPOINT_PATH = "checkpoint_path"


def file_metadata(prefix: str, path: Path) -> dict[str, dg.MetadataValue]:
    """URI and SHA-256 of one written file, under keys starting with ``prefix``."""
    return {
        f"{prefix}_uri": dg.MetadataValue.path(str(path)),
        f"{prefix}_sha256": dg.MetadataValue.text(sha256_file(path)),
    }


def preview(frame: pd.DataFrame, rows: int = 10) -> dg.MetadataValue:
    """The first rows of a table as Markdown for the UI (list columns rendered as text)."""
    head = frame.head(rows).copy()
    for column in head.columns:
        if head[column].map(lambda v: isinstance(v, (list, tuple))).any():
            head[column] = head[column].map(str)
    return dg.MetadataValue.md(head.to_markdown(index=False))


def data_version_of(*paths: Path) -> dg.DataVersion:
    """A data version that changes exactly when the content of any of ``paths`` does."""
    return dg.DataVersion("-".join(sha256_file(p)[:16] for p in paths))


def checkpoint_path_metadata(metadata: dict, root: Path) -> dict[str, dg.MetadataValue]:
    """The storage-relative ``checkpoint_path`` of a materialization that reports ``checkpoint_uri``."""
    return {CHECKPOINT_PATH: dg.MetadataValue.text(relative_to_root(metadata["checkpoint_uri"].value, root))}


def checkpoint_of(metadata, root: Path) -> Path:
    """The checkpoint folder a training asset's materialization names, under the current storage root."""
    if CHECKPOINT_PATH not in metadata:
        raise dg.Failure(
            f"this materialization has no {CHECKPOINT_PATH!r} (it predates storage-relative checkpoint "
            "paths): materialise the checkpoint asset again"
        )
    return resolve_under(root, metadata[CHECKPOINT_PATH].value)
