"""Each rule of the automatic filter (Eq. 9, stage 1)."""

import pandas as pd
import pytest

from idglow.filtering import DEFAULT_THRESHOLDS, Threshold, apply_filter, filter_decision

ZERO = {"identity": 0.0, "object": 0.0, "semantic": 0.0, "aesthetic": 0.0, "people_count": 0.0}


@pytest.mark.parametrize(
    "metric, delta",
    [
        ("identity", 0.05),
        ("object", 0.02),
        ("semantic", 0.01),
        ("aesthetic", 0.3),
        ("people_count", 0.5),
    ],
)
def test_each_metric_alone_can_keep_a_pair(metric, delta):
    keep, reason = filter_decision({**ZERO, metric: delta})
    assert keep and metric in reason


@pytest.mark.parametrize(
    "metric, delta",
    [
        ("identity", 0.049),
        ("object", 0.0199),
        ("semantic", 0.0099),
        ("aesthetic", 0.299),
        ("people_count", 0.49),
    ],
)
def test_just_below_the_threshold_is_dropped(metric, delta):
    keep, reason = filter_decision({**ZERO, metric: delta})
    assert not keep and reason.startswith("no metric reaches its threshold")


@pytest.mark.parametrize(
    "metric, epsilon",
    [
        ("identity", 0.02),
        ("object", 0.02),
        ("semantic", 0.01),
        ("aesthetic", 0.2),
        ("people_count", 0.0),
    ],
)
def test_a_contradicting_metric_vetoes(metric, epsilon):
    other = "aesthetic" if metric == "identity" else "identity"
    supported = {**ZERO, other: 1.0}
    assert filter_decision({**supported, metric: -epsilon})[0]  # exactly -epsilon is allowed
    keep, reason = filter_decision({**supported, metric: -epsilon - 0.001})
    assert not keep and f"{metric} contradicts" in reason


def test_custom_thresholds():
    thresholds = {**DEFAULT_THRESHOLDS, "identity": Threshold(0.2, 0.02)}
    assert not filter_decision({**ZERO, "identity": 0.1}, thresholds)[0]


def test_real_vs_synthetic_needs_a_worse_synthetic_identity():
    pairs = pd.DataFrame({"pair_id": ["a", "b"], "source": ["real_vs_synthetic", "real_vs_perturbed"]})
    scores = pd.DataFrame({"pair_id": ["a", "b"], **{f"delta_{k}": [0.0, 0.0] for k in ZERO}})
    scores.loc[:, "delta_aesthetic"] = 0.5  # both supported by aesthetics
    result = apply_filter(scores, pairs).set_index("pair_id")
    assert not result.loc["a", "kept"] and "not worse" in result.loc["a", "reason"]
    assert result.loc["b", "kept"]
