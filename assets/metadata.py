"""Metadata every asset reports about the files it wrote."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from idglow.storage import sha256_file


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
