"""Groundwork of the benchmark: per-image metrics against an independent computation, bootstrap
intervals, and the external-image manifest with its problems reported."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from evaluation.benchmark import aggregate, bootstrap_ci, image_scores, read_external_manifest
from evaluation.metrics import child_rate
from idglow.data.group_photos import write_demo_group_photos
from idglow.data.groups import make_training_groups, split_identities
from idglow.faces import pil_to_bgr
from idglow.scoring import ImageScorer


def test_bootstrap_interval_holds_the_mean_and_narrows_with_data():
    assert bootstrap_ci([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4, 0.4))
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.5, 0.1, 20), rng.normal(0.5, 0.1, 2000)
    mean, low, high = bootstrap_ci(small)
    assert low < mean < high and mean == pytest.approx(small.mean())
    _, low_large, high_large = bootstrap_ci(large)
    assert high_large - low_large < (high - low) / 4
    table = aggregate(
        pd.DataFrame({"method": ["a"] * 20 + ["b"] * 20, "face_sim": np.r_[small, small + 0.2]}),
        ["method"],
        metrics=("face_sim",),
    )
    assert list(table["n"]) == [20, 20] and table.loc[1, "face_sim"] == pytest.approx(table.loc[0, "face_sim"] + 0.2)


def test_child_rate_is_the_share_of_faces_estimated_under_18():
    assert child_rate(np.array([5.0, 17.9, 18.0, 40.0])) == pytest.approx(0.5)
    assert child_rate(np.array([30.0]), below=31) == 1.0
    assert np.isnan(child_rate(np.zeros(0)))


def test_face_sim_equals_an_independent_insightface_computation(hub, demo_dataset, demo_ingest, tmp_path):
    catalog = demo_ingest.catalog
    groups = make_training_groups(catalog, split_identities(catalog, 10, 0), 4, 0, seed=0)
    photos = write_demo_group_photos(groups, catalog, demo_dataset.root, tmp_path, 3, 256, 0)
    scorer, app = ImageScorer(hub), hub.face_analysis()
    for photo in photos.itertuples():
        image, portraits = (
            Image.open(photo.photo_path).convert("RGB"),
            [Image.open(p).convert("RGB") for p in photo.condition_paths],
        )
        prompt = photo.prompt if hasattr(photo, "prompt") else "a group photo"
        (scores,) = image_scores(scorer, [photo.photo_path], [list(photo.condition_paths)], [prompt])

        def largest(faces):
            return max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))

        sources = np.stack([largest(app.get(pil_to_bgr(p))).normed_embedding for p in portraits])
        generated = np.stack([f.normed_embedding for f in app.get(pil_to_bgr(image))])
        similarity = sources @ generated.T
        rows, cols = linear_sum_assignment(similarity, maximize=True)
        expected = similarity[rows, cols].sum() / len(sources)  # an unmatched portrait counts 0
        assert scores.face_sim == pytest.approx(expected, abs=1e-6)
        assert scores.faces_found == len(generated) and scores.missing_faces == max(len(sources) - len(generated), 0)
        assert -1 <= scores.clip_score <= 1 and scores.age >= 0
        ages = np.array([f.age for f in app.get(pil_to_bgr(image))], dtype=float)
        assert scores.age == pytest.approx(ages.mean()) and scores.child_rate == pytest.approx((ages < 18).mean())
        # Aesthetic: the LAION MLP formula on the normalised CLIP embedding, written out.
        x = hub.clip().encode_images([image]).float()
        x = x / x.norm(dim=1, keepdim=True)
        for index in (0, 2, 4, 6, 7):
            layer = hub.aesthetic().layers[index]
            x = x @ layer.weight.T.float() + layer.bias.float()
        assert scores.aesthetic == pytest.approx(float(x), abs=1e-5)


def test_external_manifest_reports_missing_and_unreadable_images(tmp_path):
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_text("not an image")
    rows = [
        {"group_id": "g1", "task": "group_fusion", "prompt_kind": "static", "image": "good.png"},
        {"group_id": "g1", "task": "group_fusion", "prompt_kind": "dynamic", "image": "gone.png"},
        {"group_id": "g2", "task": "age_transformed", "prompt_kind": "static", "image": "broken.png"},
        {"group_id": "g1", "task": "group_fusion", "prompt_kind": "static", "image": str(tmp_path / "good.png")},
    ]
    (tmp_path / "manifest.json").write_text(json.dumps(rows))
    usable, problems = read_external_manifest(tmp_path / "manifest.json")
    assert list(usable["group_id"]) == ["g1"] and usable.loc[0, "image"] == str(tmp_path / "good.png")
    assert sorted(p.reason.split(" (")[0] for p in problems) == [
        "duplicate group/task/prompt kind",
        "missing file",
        "unreadable image",
    ]
    assert len(usable) + len(problems) == len(rows)
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    assert len(read_external_manifest(tmp_path / "manifest.csv")[0]) == 1
    pd.DataFrame(rows).drop(columns="task").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="lacks the columns"):
        read_external_manifest(tmp_path / "bad.csv")
