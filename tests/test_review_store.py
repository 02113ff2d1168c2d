"""The review database: leases, overlap, undo, the append-only log, the final rule, migrations."""

import time

import pytest

from idglow.review.migrate import current_revision
from idglow.review.rules import FinalRule, auto_decision, final_decision, fleiss, pairwise_cohen_kappa
from idglow.review.store import ReviewError, ReviewStore


@pytest.fixture
def store(tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite", lease_seconds=60)
    for name in ("ann", "bob", "cat"):
        store.add_reviewer(name, "hash")
    return store


def ids(store):
    return {r["username"]: r["id"] for r in (store.reviewer(n) for n in ("ann", "bob", "cat"))}


def publish(store, n=3, overlap=1, batch="b1"):
    store.publish(batch, "test", [{"pair_id": f"p{i}", "deltas": {"identity": 0.1}} for i in range(n)], overlap=overlap)


def test_schema_is_versioned_and_publishing_is_idempotent(store, tmp_path):
    assert current_revision(store.url) == "0002"
    publish(store)
    publish(store)
    assert len(store.item_outcomes("b1")) == 3


def test_the_models_in_store_py_agree_with_the_migrations(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from idglow.review.store import METADATA

    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), METADATA) == []


def test_two_reviewers_never_hold_the_same_item_and_nobody_reviews_twice(store):
    publish(store, n=2, overlap=1)
    who = ids(store)
    first, second = store.claim(who["ann"], "ann"), store.claim(who["bob"], "bob")
    assert first.item_id != second.item_id and first.left in ("chosen", "rejected")
    assert store.claim(who["cat"], "cat") is None  # both items are held
    store.decide(who["ann"], "ann", first.item_id, "accept")
    store.decide(who["bob"], "bob", second.item_id, "reject", ["artifact"])
    assert store.claim(who["ann"], "ann") is None
    assert [o["final"] for o in store.item_outcomes("b1")] == ["accept", "reject"]
    assert store.finished_batches() and store.finished_batches()[0][0] == "b1"


def test_overlap_two_needs_two_different_reviewers_and_unanimity(store):
    publish(store, n=1, overlap=2)
    who = ids(store)
    a = store.claim(who["ann"], "ann")
    b = store.claim(who["bob"], "bob")
    assert a.item_id == b.item_id  # overlap asks for two at once
    assert store.claim(who["cat"], "cat") is None
    store.decide(who["ann"], "ann", a.item_id, "accept")
    assert store.claim(who["ann"], "ann") is None  # never the same item twice
    store.decide(who["bob"], "bob", b.item_id, "reject", ["identity mismatch"])
    outcome = store.item_outcomes("b1")[0]
    assert outcome["decisions"] == ["accept", "reject"] and outcome["final"] == "reject"


def test_an_expired_lease_returns_the_item_and_its_late_decision_is_refused(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite", lease_seconds=0.2)
    for name in ("ann", "bob"):
        store.add_reviewer(name, "hash")
    publish(store, n=1)
    ann, bob = store.reviewer("ann")["id"], store.reviewer("bob")["id"]
    held = store.claim(ann, "ann")
    time.sleep(0.3)
    again = store.claim(bob, "bob")
    assert again.item_id == held.item_id and store.reclaimed_leases() == 1
    with pytest.raises(ReviewError, match="lease expired"):
        store.decide(ann, "ann", held.item_id, "accept")
    store.decide(bob, "bob", again.item_id, "accept")
    assert store.item_outcomes("b1")[0]["reviewers"] == ["bob"]


def test_undo_withdraws_the_last_decision_in_an_append_only_log(store):
    publish(store, n=2, overlap=1)
    ann = ids(store)["ann"]
    first = store.claim(ann, "ann")
    store.decide(ann, "ann", first.item_id, "reject", ["artifact"])
    assert store.undo_last(ann, "ann") == first.item_id
    assert store.claim(ann, "ann").item_id == first.item_id  # back to the reviewer
    store.decide(ann, "ann", first.item_id, "accept")
    log = store.decision_log("b1")
    assert [row["decision"] for row in log] == ["reject", "undo", "accept"]
    assert log[1]["undoes"] == log[0]["id"] and log[0]["reasons"] == '["artifact"]'
    assert store.item_outcomes("b1")[0]["decisions"] == ["accept"]
    with pytest.raises(ReviewError, match="unknown reasons"):
        store.decide(ann, "ann", store.claim(ann, "ann").item_id, "reject", ["too blue"])


def test_skip_passes_the_item_on_without_counting(store):
    publish(store, n=1)
    who = ids(store)
    item = store.claim(who["ann"], "ann")
    store.decide(who["ann"], "ann", item.item_id, "skip")
    assert store.claim(who["ann"], "ann") is None
    assert store.claim(who["bob"], "bob").item_id == item.item_id
    assert store.item_outcomes("b1")[0]["final"] is None


def test_auto_mode_decides_by_the_written_rule_and_labels_it(store):
    store.publish(
        "b2",
        "test",
        [
            {"pair_id": "good", "deltas": {"identity": 0.2, "aesthetic": 0.0}},
            {"pair_id": "mixed", "deltas": {"identity": 0.2, "aesthetic": -0.01}},
        ],
    )
    assert store.decide_automatically("b2", "auto-rule", auto_decision) == 2
    outcomes = {o["pair_id"]: o for o in store.item_outcomes("b2")}
    assert outcomes["good"]["final"] == "accept" and outcomes["mixed"]["final"] == "reject"
    assert all(o["automatic"] and o["reviewers"] == ["auto-rule"] for o in outcomes.values())
    assert store.finished_batches()[-1][0] == "b2"


def test_final_rule_and_agreement_by_hand():
    rule = FinalRule.for_overlap(2)
    assert final_decision(["accept"], rule) is None
    assert final_decision(["accept", "accept"], rule) == "accept"
    assert final_decision(["accept", "reject"], rule) == "reject"
    assert final_decision(["accept", "reject"], FinalRule(overlap=2, min_accepts=1, max_rejects=1)) == "accept"
    votes = {
        1: {"a": "accept", "b": "accept"},
        2: {"a": "reject", "b": "reject"},
        3: {"a": "accept", "b": "reject"},
        4: {"a": "accept", "b": "accept"},
    }
    # observed agreement 3/4; a accepts 3/4, b 2/4; expected 3/8 + 1/8 = 1/2; kappa = (0.75 - 0.5) / 0.5
    assert pairwise_cohen_kappa(votes)[0]["cohen_kappa"] == pytest.approx(0.5)
    # Fleiss, 2 raters: P_i = 1, 1, 0, 1 -> 0.75; p_accept = 5/8 -> P_e = 25/64 + 9/64; (0.75 - 34/64) / (1 - 34/64)
    assert fleiss(votes) == pytest.approx((0.75 - 34 / 64) / (1 - 34 / 64))


def _open_store(path: str, barrier, results) -> None:
    """One process starting the review store on a fresh database at the same moment as the others."""
    try:
        barrier.wait(timeout=60)
        store = ReviewStore(path)
        results.put(("ok", current_revision(store.url)))
    except BaseException as error:  # reported to the test rather than lost in the child
        results.put(("error", repr(error)))


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(3))
def test_several_processes_starting_at_once_on_a_fresh_database_all_end_at_head(tmp_path, round_):
    import multiprocessing

    import sqlalchemy as sa
    from alembic.script import ScriptDirectory

    from idglow.review.migrate import alembic_config
    from idglow.review.store import METADATA

    context = multiprocessing.get_context("fork")
    path = str(tmp_path / "fresh" / "review.sqlite")
    processes = 6
    barrier, results = context.Barrier(processes), context.Queue()
    children = [context.Process(target=_open_store, args=(path, barrier, results)) for _ in range(processes)]
    for child in children:
        child.start()
    answers = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert answers == [("ok", head)] * processes
    tables = set(sa.inspect(sa.create_engine(f"sqlite:///{path}")).get_table_names())
    assert set(METADATA.tables) <= tables
