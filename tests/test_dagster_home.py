"""Several processes starting at once on a fresh Dagster home all succeed and leave it usable."""

import multiprocessing
import traceback
from pathlib import Path

import pytest

STARTS = 4


def _start(home: str, barrier, answers) -> None:
    import dagster as dg

    from pipelines.instance import ensure_dagster_home

    barrier.wait()  # every process past its imports: the first starts really coincide
    try:
        ensure_dagster_home(Path(home))
        with dg.DagsterInstance.get() as instance:
            instance.get_runs(limit=1)
        answers.put("ok")
    except Exception:  # noqa: BLE001 - the test reports whatever the start raised
        answers.put(traceback.format_exc())


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(2))
def test_simultaneous_first_starts_on_a_fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attempt: int):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = tmp_path / "dagster"
    context = multiprocessing.get_context("spawn")
    barrier, answers = context.Barrier(STARTS), context.Queue()
    processes = [context.Process(target=_start, args=(str(home), barrier, answers)) for _ in range(STARTS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    results = [answers.get(timeout=10) for _ in processes]
    assert results == ["ok"] * STARTS, "\n".join(r for r in results if r != "ok")
    assert (home / "dagster.yaml").resolve() == (Path(__file__).resolve().parent.parent / "dagster.yaml")
    assert (home / ".initialized").exists()
