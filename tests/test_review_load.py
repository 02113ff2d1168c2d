"""A bounded load test on 127.0.0.1: 20 concurrent reviewer clients, 500 items with overlap 2.
Afterwards every item has exactly the decisions its overlap asks for (none lost, none doubled,
no reviewer twice on an item) and the leases of walked-away clients were reclaimed."""

import collections
import json

import pytest

from idglow.review.load import run_load

pytestmark = pytest.mark.slow  # twenty clients against a real server


def test_twenty_reviewers_work_through_five_hundred_items(tmp_path):
    report, store = run_load(tmp_path, clients=20, items=500, overlap=2, lease_seconds=2.0, abandon_rate=0.02)
    outcomes = store.item_outcomes("load-batch")
    assert len(outcomes) == 500
    assert collections.Counter(len(o["decisions"]) for o in outcomes) == {2: 500}
    assert all(len(set(o["reviewers"])) == 2 for o in outcomes)
    log = [row for row in store.decision_log() if row["decision"] in ("accept", "reject")]
    assert len(log) == 1000 == report.decisions  # every posted decision is in the log, once
    assert report.abandoned > 0 and store.reclaimed_leases() >= report.abandoned
    assert store.finished_batches()[0][0] == "load-batch"
    (tmp_path / "figures.json").write_text(
        json.dumps({"decisions_per_second": report.decisions_per_second, "p95_ms": report.p95_ms})
    )
    print(
        f"\nreview load: {report.decisions} decisions by {report.clients} clients in {report.seconds:.1f} s: "
        f"{report.decisions_per_second:.1f} decisions/s, p95 {report.p95_ms:.0f} ms, "
        f"{report.abandoned} walked away, {store.reclaimed_leases()} leases reclaimed"
    )
