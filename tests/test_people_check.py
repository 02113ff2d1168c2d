"""The VLM check of stage 1 (idglow.people_check, idglow.filtering.apply_people_check): reading a
count from an answer, when a run's answers let the check veto, and the veto over the filter's
table with every pair kept in the count."""

from __future__ import annotations

import pandas as pd
import pytest

from idglow.filtering import apply_people_check
from idglow.people_check import parse_people_count, people_check_reason, people_check_verdict


@pytest.mark.parametrize(
    ("answer", "count"),
    [
        ("three", 3),
        ("Two.", 2),
        ("2 people", 2),
        ("  Zero", 0),
        ("none", 0),
        ("There are three people", None),  # the first word is no count
        ("", None),
        ("Picture 1 is a man", None),
        ("eleven", None),
    ],
)
def test_parse_people_count(answer, count):
    assert parse_people_count(answer) == count


def test_the_check_vetoes_only_when_half_the_answers_are_counts_and_the_known_ones_are_right():
    assert people_check_verdict([2, 3, None, None]).able  # 2 of 4: the bar is half
    unable = people_check_verdict([2, None, None])
    assert not unable.able and unable.reason == "the prompt model gave a count for 1 of 3 images: not applied"
    assert not people_check_verdict([]).able
    # four real photos known, three counted right: 75% < 80%
    wrong = people_check_verdict([2, 3, 2, 2], [(2, 2), (3, 3), (2, 2), (2, 3)])
    assert not wrong.able and (wrong.known, wrong.agreed, wrong.agreement) == (4, 3, 0.75)
    assert wrong.reason == "the prompt model's count was right for 3 of 4 real group photos (under 80%): not applied"
    right = people_check_verdict([2, 3, 2, 2, 0], [(2, 2), (3, 3), (2, 2), (2, 2), (None, 3)])
    assert right.able and right.agreement == 0.8


def test_veto_reasons():
    assert people_check_reason(3, 3) is None
    assert people_check_reason(None, 3) is None  # no count read: never a veto on its own
    assert people_check_reason(1, 2) == "VLM check: the chosen image shows 1 person, the prompt describes 2"
    assert people_check_reason(0, 3) == "VLM check: the chosen image shows 0 people, the prompt describes 3"


SYNTHETIC = "synthetic_vs_synthetic"


def _filtered() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pair_id": ["a", "b", "c", "d", "e"],
            "source": ["real_vs_perturbed", SYNTHETIC, SYNTHETIC, "real_vs_synthetic", "synthetic_vs_perturbed"],
            "chosen_path": ["real/1.png", "cand/1.png", "cand/2.png", "real/1.png", "cand/3.png"],
            "n_subjects": [2, 3, 3, 2, 2],
            "kept": [True, True, False, True, True],
            "reason": ["kept: identity", "kept: aesthetic", "no metric reaches", "kept: identity", "kept: object"],
        }
    )


def test_apply_people_check_vetoes_kept_pairs_whose_chosen_image_shows_other_counts():
    counts = pd.DataFrame(
        {
            "chosen_path": ["real/1.png", "cand/1.png", "cand/2.png", "cand/3.png"],
            "vlm_answer": ["two", "zero", "one", "blue"],
            "vlm_people": pd.array([2, 0, 1, None], dtype="Int64"),
        }
    )
    checked, verdict = apply_people_check(_filtered(), counts)
    assert verdict.able and (verdict.answered, verdict.asked) == (3, 4)
    assert (verdict.known, verdict.agreed) == (1, 1)  # real/1.png, chosen twice, is one photo
    assert checked["pair_id"].tolist() == ["a", "b", "c", "d", "e"]  # pairs in = pairs out, in order
    assert checked["kept"].tolist() == [True, False, False, True, True]
    assert checked["reason"].tolist() == [
        "kept: identity",
        "VLM check: the chosen image shows 0 people, the prompt describes 3",
        "no metric reaches",  # already dropped: its own reason stays
        "kept: identity",
        "kept: object",  # no count read from "blue"
    ]
    assert checked["rule_vlm_vetoes"].tolist() == [False, True, True, False, False]


def test_a_prompt_model_that_cannot_count_vetoes_nothing():
    unparsed = pd.DataFrame(
        {
            "chosen_path": ["real/1.png", "cand/1.png", "cand/2.png", "cand/3.png"],
            "vlm_answer": ["Picture", "0", "a b", "c"],
            "vlm_people": pd.array([None, 0, None, None], dtype="Int64"),
        }
    )
    miscounted = unparsed.assign(vlm_answer=["three", "zero", "two", "one"], vlm_people=[3, 0, 2, 1])
    for counts in (unparsed, miscounted):  # no counts; or counts, but the real photo's is wrong
        checked, verdict = apply_people_check(_filtered(), counts)
        assert not verdict.able
        assert checked["kept"].tolist() == _filtered()["kept"].tolist()
        assert checked["reason"].tolist() == _filtered()["reason"].tolist()
        assert not checked["rule_vlm_vetoes"].any()
