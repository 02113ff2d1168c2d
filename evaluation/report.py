"""The benchmark report: tables in the layout of the paper's Tables 1-3 (the paper's published
numbers beside ours where the same method appears, marked as published), a Pareto plot of FaceSim
against Aesthetic per method, and a grid of sample outputs per task.

Groundwork of the benchmark issue: the assets that will call these are not written yet.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from idglow.storage import atomic_path  # noqa: E402

COLUMNS = (
    ("group_fusion", "static"),
    ("group_fusion", "dynamic"),
    ("age_transformed", "static"),
    ("age_transformed", "dynamic"),
)
COLUMN_TITLES = ("T1 static", "T1 dynamic", "T2 static", "T2 dynamic")

# The paper's FaceSim / Aesthetic (method.md, Evaluation), in COLUMNS order.
PUBLISHED = {
    "FastComposer": ((0.16, 2.34), (0.18, 2.94), (0.13, 2.35), (0.14, 2.81)),
    "Qwen-Image-Edit-2511 (base)": ((0.52, 4.69), (0.59, 5.02), (0.23, 5.21), (0.24, 5.48)),
    "IdGlow": ((0.72, 6.21), (0.75, 6.48), (0.35, 6.52), (0.37, 6.52)),
}
# Which published row a model version of ours corresponds to.
PUBLISHED_NAME = {"base": "Qwen-Image-Edit-2511 (base)", "dpo": "IdGlow"}
PUBLISHED_ABLATION = {  # Table 3, static prompts: FaceSim / Aesthetic
    "group_fusion": {
        "no ID loss": (0.45, 6.25),
        "constant": (0.59, 5.83),
        "annealing": (0.64, 6.09),
        "+ DPO": (0.72, 6.21),
    },
    "age_transformed": {
        "no ID loss": (0.12, 6.71),
        "constant": (0.18, 6.22),
        "gating": (0.28, 6.45),
        "+ DPO": (0.35, 6.52),
    },
}


def _cell(face_sim: float, aesthetic: float) -> str:
    return f"{face_sim:.2f} / {aesthetic:.2f}"


def results_table(aggregates: pd.DataFrame) -> str:
    """Tables 1 and 2: one row per method (``aggregates`` has method, task, prompt_kind,
    face_sim, aesthetic), FaceSim / Aesthetic per task and prompt kind; the paper's row for the
    same method follows ours, marked *published*."""
    lines = ["| method | " + " | ".join(COLUMN_TITLES) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    indexed = aggregates.set_index(["method", "task", "prompt_kind"])
    for method in dict.fromkeys(aggregates["method"]):
        cells = []
        for task, kind in COLUMNS:
            key = (method, task, kind)
            cells.append(
                _cell(indexed.loc[key, "face_sim"], indexed.loc[key, "aesthetic"]) if key in indexed.index else "-"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
        published = PUBLISHED.get(PUBLISHED_NAME.get(method, method))
        if published:
            lines.append(
                f"| *{PUBLISHED_NAME.get(method, method)} (published)* | "
                + " | ".join(f"*{_cell(*pair)}*" for pair in published)
                + " |"
            )
    return "\n".join(lines)


# The ablation's rows as Table 3 names them (report) and as its results table keys them.
ABLATION_CONFIGURATIONS = {
    "no ID loss": "no_id_loss",
    "constant": "constant",
    "annealing": "task_adaptive",
    "gating": "task_adaptive",
    "+ DPO": "task_adaptive+dpo",
}
ABLATION_COLUMNS = (
    "task",
    "configuration",
    "face_sim",
    "face_sim_low",
    "face_sim_high",
    "aesthetic",
    "missing_face_rate",
    "child_rate",
)


def ablation_results(aggregates: pd.DataFrame) -> pd.DataFrame:
    """Table 3's results (static prompts) as a table: one row per task and configuration
    (``ABLATION_CONFIGURATIONS``), with FaceSim's 95% interval; ``child_rate`` only for Task 2."""
    static = in_table_3_order(aggregates[aggregates["prompt_kind"] == "static"])
    frame = pd.DataFrame(
        {
            "task": static["task"].to_numpy(),
            "configuration": [ABLATION_CONFIGURATIONS[m] for m in static["method"]],
            **{c: static[c].to_numpy(dtype=float) for c in ABLATION_COLUMNS[2:]},
        }
    )
    frame.loc[frame["task"] != "age_transformed", "child_rate"] = np.nan
    return frame[list(ABLATION_COLUMNS)].reset_index(drop=True)


def _rate(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.2f}"


def in_table_3_order(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (task and method columns) ordered as Table 3: Task 1 then Task 2, and within a task
    no ID loss, constant, annealing / gating, + DPO; anything else after, in its own order."""
    tasks, methods = ["group_fusion", "age_transformed"], list(ABLATION_CONFIGURATIONS)

    def rank(values: pd.Series, order: list[str]) -> pd.Series:
        return values.map(lambda v: order.index(v) if v in order else len(order))

    key = rank(rows["task"], tasks) * (len(methods) + 1) + rank(rows["method"], methods)
    return rows.iloc[key.argsort(kind="stable")]


def ablation_table(aggregates: pd.DataFrame) -> str:
    """Table 3 (static prompts): one row per SFT configuration and task, ours then published, in
    the paper's order; Task 2's rows also give the share of faces judged children."""
    lines = ["| task | configuration | ours FaceSim / Aesthetic | child rate | published |", "|---|---|---|---|---|"]
    static = in_table_3_order(aggregates[aggregates["prompt_kind"] == "static"])
    for row in static.itertuples():
        published = PUBLISHED_ABLATION.get(row.task, {}).get(row.method)
        child = float(getattr(row, "child_rate", np.nan)) if row.task == "age_transformed" else np.nan
        lines.append(
            f"| {row.task} | {row.method} | {_cell(row.face_sim, row.aesthetic)} | {_rate(child)} | "
            + (f"*{_cell(*published)}*" if published else "-")
            + " |"
        )
    return "\n".join(lines)


def ablation_grid_rows(samples: pd.DataFrame) -> pd.DataFrame:
    """The rows of the ablation's sample grid: per task, the first benchmark group that every
    configuration generated, once per configuration (in the samples' order), captioned by task, so
    a row of the grid is the same group under each configuration."""
    rows = []
    for task, per_task in samples.groupby("task", sort=False):
        methods = per_task["method"].unique()
        shared = per_task.groupby("group_id")["method"].nunique()
        complete = [g for g in per_task["group_id"].unique() if shared[g] == len(methods)]
        if not complete:
            continue
        chosen = per_task[per_task["group_id"] == complete[0]].drop_duplicates("method")
        rows.append(chosen.assign(caption=task.replace("_", " ")))
    return pd.concat(rows, ignore_index=True) if rows else samples.iloc[:0].assign(caption=[])


def pareto_plot(aggregates: pd.DataFrame, path: Path, title: str = "FaceSim against Aesthetic") -> Path:
    """One point per method and column (with its confidence bars when present); PNG."""
    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=120)
    for method, group in aggregates.groupby("method", sort=False):
        x, y = group["aesthetic"], group["face_sim"]
        errors = {}
        if {"face_sim_low", "face_sim_high", "aesthetic_low", "aesthetic_high"} <= set(group.columns):
            errors = {
                "xerr": [x - group["aesthetic_low"], group["aesthetic_high"] - x],
                "yerr": [y - group["face_sim_low"], group["face_sim_high"] - y],
            }
        axes.errorbar(x, y, fmt="o", capsize=3, label=method, **errors)
    axes.set_xlabel("Aesthetic (LAION predictor)")
    axes.set_ylabel("FaceSim (Hungarian-matched cosine)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path


def sample_grid(samples: pd.DataFrame, path: Path, tile: int = 160, per_row: int = 4) -> Path:
    """Generated images (``samples`` has method, image, and a caption column) in a labelled grid; PNG."""
    rows = (len(samples) + per_row - 1) // per_row
    canvas = Image.new("RGB", (per_row * tile, max(rows, 1) * (tile + 18)), "white")
    draw = ImageDraw.Draw(canvas)
    for index, row in enumerate(samples.itertuples()):
        x, y = (index % per_row) * tile, (index // per_row) * (tile + 18)
        with Image.open(row.image) as image:
            canvas.paste(image.convert("RGB").resize((tile, tile)), (x, y))
        draw.text((x + 3, y + tile + 2), f"{row.method}: {row.caption}"[:28], fill="black")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
