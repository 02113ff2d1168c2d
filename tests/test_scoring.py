"""The pair scorer (Eq. 8) on demo group photos: real faces are found and matched, the batched
scorer equals the naive loop, and the deltas are chosen minus rejected."""

import numpy as np
import pandas as pd
import pytest

from idglow.data.group_photos import write_demo_group_photos
from idglow.data.groups import make_training_groups, split_identities
from idglow.pairs import build_pairs
from idglow.scoring import METRICS, ImageScorer, naive_scores, orient_by_score, score_pairs


@pytest.fixture(scope="module")
def real_pairs(demo_dataset, demo_ingest, tmp_path_factory):
    catalog = demo_ingest.catalog
    groups = make_training_groups(catalog, split_identities(catalog, 10, seed=0), 6, 6, seed=0)
    work = tmp_path_factory.mktemp("scoring")
    photos = write_demo_group_photos(groups, catalog, demo_dataset.root, work / "photos", 8, 256, 0)
    empty = pd.DataFrame(
        columns=[
            "photo_id",
            "job_id",
            "round",
            "k",
            "path",
            "seed",
            "model_version",
            "prompt",
            "task",
            "condition_paths",
            "identities",
            "n_subjects",
            "group_id",
            "candidate_id",
        ]
    )
    return build_pairs(empty, photos, work / "perturbed", seed=0)


def test_real_group_photos_match_their_people(hub, real_pairs):
    scores = score_pairs(ImageScorer(hub, progress=False), real_pairs)
    assert len(scores) == len(real_pairs) == 8
    # The tiny detector finds most faces in group photos (it misses some low-contrast faces).
    found = np.minimum(scores["chosen_faces"], real_pairs["n_subjects"])
    assert found.sum() / real_pairs["n_subjects"].sum() >= 0.85
    complete = scores["chosen_faces"] == real_pairs["n_subjects"]
    assert complete.sum() >= 6
    assert (scores.loc[complete, "chosen_people_count"] == 1.0).all()
    assert (scores.loc[complete, "chosen_identity"] > 0.3).all(), scores["chosen_identity"].tolist()
    for metric in METRICS:
        assert np.allclose(scores[f"delta_{metric}"], scores[f"chosen_{metric}"] - scores[f"rejected_{metric}"])


def test_batched_scorer_equals_the_naive_loop(hub, real_pairs):
    batched = score_pairs(ImageScorer(hub, progress=False), real_pairs)
    naive = naive_scores(hub, real_pairs)
    columns = [c for c in batched.columns if c != "pair_id"]
    assert np.allclose(batched[columns].to_numpy(float), naive[columns].to_numpy(float), atol=1e-5)


def test_orientation_by_score_swaps_only_undecided_pairs():
    pairs = pd.DataFrame(
        {
            "pair_id": ["a", "b"],
            "orientation": ["by_score", "fixed"],
            "chosen_path": ["x1", "y1"],
            "rejected_path": ["x2", "y2"],
        }
    )
    scores = pd.DataFrame(
        {"pair_id": ["a", "b"], **{f"{s}_{m}": [0.0, 0.0] for s in ("chosen", "rejected") for m in METRICS}}
    )
    scores["rejected_identity"] = [0.5, 0.5]
    scores, oriented = orient_by_score(
        scores.assign(**{f"delta_{m}": 0.0 for m in METRICS}).assign(delta_identity=[-0.5, -0.5]), pairs
    )
    assert oriented["chosen_path"].tolist() == ["x2", "y1"]
    assert scores["delta_identity"].tolist() == [0.5, -0.5]
    assert scores["swapped"].tolist() == [True, False]
