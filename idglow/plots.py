"""Small PNG plots for asset metadata (matplotlib, no display)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from idglow.storage import write_bytes_atomic  # noqa: E402


def delta_histograms(frame: pd.DataFrame, metrics: list[str], thresholds: dict, path: Path) -> Path:
    """One histogram per delta, the keep threshold and the veto line marked, kept vs dropped."""
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.8), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        column = frame[f"delta_{metric}"]
        axis.hist(
            [column[frame["kept"]], column[~frame["kept"]]],
            bins=20,
            stacked=True,
            label=["kept", "dropped"],
            color=["#2a9d8f", "#e76f51"],
        )
        axis.axvline(thresholds[metric].delta, color="black", linestyle="--", linewidth=1)
        axis.axvline(-thresholds[metric].epsilon, color="grey", linestyle=":", linewidth=1)
        axis.set_title(f"Δ {metric}", fontsize=9)
        axis.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return write_bytes_atomic(path, buffer.getvalue())


def markdown_image(path: Path, alt: str) -> str:
    """Markdown that shows a PNG inline in the Dagster UI."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"
