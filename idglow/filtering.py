"""Eq. 9, stage 1: the automatic filter over the deltas of Eq. 8.

Keep a pair when some delta reaches its threshold (Delta_k >= delta_k for at least one k) and
no delta contradicts the preference (Delta_k >= -epsilon_k for every k). Defaults are
method.md's choices; every dropped pair keeps the reason. The VLM check (``apply_people_check``)
may then veto a kept pair whose chosen image does not show the N people of its prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from idglow.people_check import PeopleCheckVerdict, people_check_reason, people_check_verdict
from idglow.scoring import METRICS


@dataclass(frozen=True)
class Threshold:
    delta: float  # Delta_k >= delta: this metric supports the preference
    epsilon: float  # Delta_k < -epsilon: this metric contradicts it


DEFAULT_THRESHOLDS: dict[str, Threshold] = {
    "identity": Threshold(0.05, 0.02),
    "object": Threshold(0.02, 0.02),
    "semantic": Threshold(0.01, 0.01),
    "aesthetic": Threshold(0.3, 0.2),
    "people_count": Threshold(0.5, 0.0),
}


def filter_decision(
    deltas: dict[str, float], thresholds: dict[str, Threshold] = DEFAULT_THRESHOLDS
) -> tuple[bool, str]:
    """(keep, reason) for one pair; the reason names every rule that failed."""
    contradictions = [
        f"{k} contradicts (delta {deltas[k]:+.3f} < -{t.epsilon:g})"
        for k, t in thresholds.items()
        if deltas[k] < -t.epsilon
    ]
    supporting = [k for k, t in thresholds.items() if deltas[k] >= t.delta]
    if contradictions:
        return False, "; ".join(contradictions)
    if not supporting:
        best = max(thresholds, key=lambda k: deltas[k] - thresholds[k].delta)
        return (
            False,
            f"no metric reaches its threshold (closest: {best} delta {deltas[best]:+.3f} < {thresholds[best].delta:g})",
        )
    return True, "kept: " + ", ".join(supporting)


def apply_filter(
    scores: pd.DataFrame,
    pairs: pd.DataFrame,
    thresholds: dict[str, Threshold] = DEFAULT_THRESHOLDS,
) -> pd.DataFrame:
    """``scores`` joined to ``pairs`` with ``kept``, ``reason`` and per-rule flags."""
    merged = pairs.merge(scores, on="pair_id", validate="one_to_one")
    decisions = [filter_decision({k: row[f"delta_{k}"] for k in METRICS}, thresholds) for _, row in merged.iterrows()]
    merged["kept"] = [keep for keep, _ in decisions]
    merged["reason"] = [reason for _, reason in decisions]
    # The paper's real-vs-synthetic pairs reject the model's output only when its identity is worse.
    worse = (merged["source"] == "real_vs_synthetic") & (merged["delta_identity"] <= 0)
    merged.loc[worse & merged["kept"], "reason"] = "synthetic identity is not worse than the real photo"
    merged.loc[worse, "kept"] = False
    for k, t in thresholds.items():
        merged[f"rule_{k}_supports"] = merged[f"delta_{k}"] >= t.delta
        merged[f"rule_{k}_contradicts"] = merged[f"delta_{k}"] < -t.epsilon
    return merged


def apply_people_check(filtered: pd.DataFrame, counts: pd.DataFrame) -> tuple[pd.DataFrame, PeopleCheckVerdict]:
    """The VLM check of stage 1 over ``apply_filter``'s table: each pair gets its chosen image's
    ``vlm_answer`` and ``vlm_people`` (from ``counts``, by ``chosen_path``), and, when the run's
    answers let the check veto (``people_check_verdict``; the truth is known where the chosen image
    is a real group photo of the pair's people, the real_vs_* sources), a kept pair whose chosen
    image shows another number of people than ``n_subjects`` is dropped with that reason
    (``rule_vlm_vetoes``). Pairs in = pairs out, in their order."""
    checked = filtered.merge(counts[["chosen_path", "vlm_answer", "vlm_people"]], on="chosen_path", how="left")
    answers = [None if pd.isna(c) else int(c) for c in checked["vlm_people"]]
    real = checked["source"].str.startswith("real_vs_") & ~checked["chosen_path"].duplicated()
    known = [(answers[i], int(checked["n_subjects"].iloc[i])) for i in range(len(checked)) if real.iloc[i]]
    verdict = people_check_verdict([None if pd.isna(c) else int(c) for c in counts["vlm_people"]], known)
    reasons = [people_check_reason(a, int(n)) for a, n in zip(answers, checked["n_subjects"], strict=True)]
    checked["rule_vlm_vetoes"] = [verdict.able and reason is not None for reason in reasons]
    vetoed = checked["kept"] & checked["rule_vlm_vetoes"]
    checked.loc[vetoed, "reason"] = [reason for reason, veto in zip(reasons, vetoed, strict=True) if veto]
    checked.loc[vetoed, "kept"] = False
    return checked, verdict
