"""Report pieces: the paper's table layouts with published rows marked, a valid Pareto PNG, a grid."""

import pandas as pd
import pytest
from PIL import Image

from evaluation.report import (
    ABLATION_COLUMNS,
    COLUMNS,
    ablation_grid_rows,
    ablation_results,
    ablation_table,
    pareto_plot,
    results_table,
    sample_grid,
)

PNG = b"\x89PNG\r\n\x1a\n"


def aggregates() -> pd.DataFrame:
    rows = []
    for method, base in (("base", 0.1), ("dpo", 0.3)):
        for index, (task, kind) in enumerate(COLUMNS):
            rows.append(
                {
                    "method": method,
                    "task": task,
                    "prompt_kind": kind,
                    "face_sim": base + index / 100,
                    "aesthetic": 4 + base,
                    "face_sim_low": base - 0.05,
                    "face_sim_high": base + 0.1,
                    "aesthetic_low": 3.9,
                    "aesthetic_high": 4.5,
                }
            )
    return pd.DataFrame(rows)


def test_results_table_has_our_rows_and_the_published_ones_marked():
    table = results_table(aggregates()).splitlines()
    assert table[0] == "| method | T1 static | T1 dynamic | T2 static | T2 dynamic |"
    assert table[2] == "| base | 0.10 / 4.10 | 0.11 / 4.10 | 0.12 / 4.10 | 0.13 / 4.10 |"
    assert (
        table[3] == "| *Qwen-Image-Edit-2511 (base) (published)* "
        "| *0.52 / 4.69* | *0.59 / 5.02* | *0.23 / 5.21* | *0.24 / 5.48* |"
    )
    assert table[4].startswith("| dpo | 0.30 / 4.30") and table[5].startswith("| *IdGlow (published)* | *0.72 / 6.21*")
    assert len(table) == 6


def test_ablation_table_pairs_ours_with_table_3():
    frame = pd.DataFrame(
        [
            {"method": "constant", "task": "group_fusion", "prompt_kind": "static", "face_sim": 0.2, "aesthetic": 3.0},
            {"method": "gating", "task": "age_transformed", "prompt_kind": "static", "face_sim": 0.1, "aesthetic": 2.0},
            {
                "method": "gating",
                "task": "age_transformed",
                "prompt_kind": "dynamic",
                "face_sim": 0.1,
                "aesthetic": 2.0,
            },
        ]
    )
    frame["child_rate"] = [0.5, 0.25, 0.75]
    lines = ablation_table(frame).splitlines()
    assert lines[2] == "| group_fusion | constant | 0.20 / 3.00 | - | *0.59 / 5.83* |"
    assert lines[3] == "| age_transformed | gating | 0.10 / 2.00 | 0.25 | *0.28 / 6.45* |" and len(lines) == 4


def test_ablation_results_key_the_configurations_as_the_issue_names_them():
    rows = []
    for task, method, face_sim in (
        ("group_fusion", "no ID loss", 0.1),
        ("group_fusion", "annealing", 0.3),
        ("age_transformed", "gating", 0.2),
        ("age_transformed", "+ DPO", 0.25),
    ):
        for kind in ("static", "dynamic"):
            rows.append(
                {
                    "method": method,
                    "task": task,
                    "prompt_kind": kind,
                    "face_sim": face_sim,
                    "face_sim_low": face_sim - 0.05,
                    "face_sim_high": face_sim + 0.05,
                    "aesthetic": 2.0,
                    "missing_face_rate": 0.1,
                    "child_rate": 0.4,
                }
            )
    results = ablation_results(pd.DataFrame(rows))
    assert list(results.columns) == list(ABLATION_COLUMNS)
    assert list(results["configuration"]) == ["no_id_loss", "task_adaptive", "task_adaptive", "task_adaptive+dpo"]
    assert results["child_rate"].isna().tolist() == [True, True, False, False]
    assert results["face_sim_low"].tolist() == pytest.approx([0.05, 0.25, 0.15, 0.2])


def test_plots_are_valid_pngs(tmp_path):
    pareto = pareto_plot(aggregates(), tmp_path / "pareto.png")
    assert pareto.read_bytes()[:8] == PNG and Image.open(pareto).size[0] > 300
    for colour in ("red", "blue", "green"):
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{colour}.png")
    samples = pd.DataFrame(
        {
            "method": ["base", "dpo", "dpo"],
            "caption": ["g1 T1", "g1 T1", "g2 T2"],
            "image": [str(tmp_path / f"{c}.png") for c in ("red", "blue", "green")],
        }
    )
    grid = sample_grid(samples, tmp_path / "grid.png", tile=64, per_row=2)
    assert grid.read_bytes()[:8] == PNG and Image.open(grid).size == (128, 2 * (64 + 18))
    assert Image.open(grid).getpixel((70, 10)) == (0, 0, 255)  # the second tile is the blue image


def test_the_ablation_grid_shows_one_group_under_every_configuration():
    samples = pd.DataFrame(
        {
            "task": ["group_fusion"] * 5 + ["age_transformed"] * 4,
            "method": ["no ID loss", "no ID loss", "annealing", "annealing", "no ID loss"]
            + ["no ID loss", "gating", "no ID loss", "gating"],
            # g1 lacks an annealing image, so g2 is Task 1's first group every configuration drew
            "group_id": ["g1", "g2", "g2", "g3", "g3", "g4", "g4", "g5", "g5"],
            "image": [f"{i}.png" for i in range(9)],
        }
    )
    rows = ablation_grid_rows(samples)
    assert rows[["task", "group_id", "method"]].values.tolist() == [
        ["group_fusion", "g2", "no ID loss"],
        ["group_fusion", "g2", "annealing"],
        ["age_transformed", "g4", "no ID loss"],
        ["age_transformed", "g4", "gating"],
    ]
    assert rows["caption"].tolist() == ["group fusion"] * 2 + ["age transformed"] * 2


def test_the_ablation_rows_follow_table_3_whatever_order_they_come_in():
    methods = {"group_fusion": ["+ DPO", "annealing", "constant", "no ID loss"]}
    methods["age_transformed"] = ["+ DPO", "constant", "gating", "no ID loss"]
    frame = pd.DataFrame(
        [
            {"method": m, "task": t, "prompt_kind": "static", "face_sim": 0.1, "aesthetic": 1.0, "child_rate": 0.5}
            for t in ("age_transformed", "group_fusion")
            for m in methods[t]
        ]
    )
    rows = [line.split(" | ")[:2] for line in ablation_table(frame).splitlines()[2:]]
    assert rows == [
        ["| group_fusion", "no ID loss"],
        ["| group_fusion", "constant"],
        ["| group_fusion", "annealing"],
        ["| group_fusion", "+ DPO"],
        ["| age_transformed", "no ID loss"],
        ["| age_transformed", "constant"],
        ["| age_transformed", "gating"],
        ["| age_transformed", "+ DPO"],
    ]
