"""Candidate images across a rerun: a truncated candidate is generated again (with its recorded
seed and in its batch, so byte for byte as an uninterrupted run wrote it), a complete one is
kept, and the partial file of a killed write is removed."""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from idglow.editing import ReferenceBudget
from idglow.generation import GenerationSettings, candidate_folder, generate_candidates, is_complete_image


@pytest.fixture(scope="module")
def generator(hub):
    return hub.generator()


def jobs(folder: Path) -> pd.DataFrame:
    portraits = []
    for i, colour in enumerate(((200, 120, 90), (80, 140, 210))):
        path = folder / f"portrait-{i}.png"
        Image.new("RGB", (32, 32), colour).save(path)
        portraits.append(str(path))
    return pd.DataFrame(
        [
            {
                "job_id": "job-1",
                "group_id": "g1",
                "task": "group_fusion",
                "prompt_kind": "static",
                "prompt": "Two friends smiling in a park.",
                "condition_paths": portraits,
                "identities": [1, 2],
                "n_subjects": 2,
                "photo_id": None,
            }
        ]
    )


SETTINGS = GenerationSettings(
    height=32,
    width=32,
    steps=2,
    true_cfg_scale=1.0,
    candidates_per_job=2,
    seed=0,
    budget=ReferenceBudget(64 * 64, 56 * 56),
)


def test_a_rerun_regenerates_a_truncated_candidate_and_keeps_the_rest(generator, tmp_path):
    table = jobs(tmp_path)
    straight, generated = generate_candidates(
        generator, table, SETTINGS, tmp_path / "straight", "r1", "base", progress=False
    )
    assert generated == 2
    expected = {Path(p).name: Path(p).read_bytes() for p in straight["path"]}

    out = tmp_path / "rerun"
    generate_candidates(generator, table, SETTINGS, out, "r1", "base", progress=False)
    folder = out / candidate_folder(SETTINGS, "base")
    truncated, kept = folder / "job-1-k0.png", folder / "job-1-k1.png"
    truncated.write_bytes(expected["job-1-k0.png"][: len(expected["job-1-k0.png"]) // 2])  # a crash mid-copy
    (folder / ".job-1-k0.png.abc123.partial").write_bytes(b"half")  # a killed write's leftover
    kept_inode = kept.stat().st_ino
    assert not is_complete_image(truncated) and is_complete_image(kept)

    _, generated = generate_candidates(generator, table, SETTINGS, out, "r1", "base", progress=False)
    assert generated == 1
    assert {p.name: p.read_bytes() for p in folder.glob("*.png")} == expected
    assert kept.stat().st_ino == kept_inode  # the complete candidate was not written again
    assert not list(folder.glob(".*.partial"))


def test_a_rerun_redoes_the_batch_of_a_truncated_candidate(generator, tmp_path, monkeypatch):
    """Four candidates in batches of three under true CFG: a rerun missing k0 and k3 denoises
    both batches whole, (k0, k1, k2) and (k3), not a batch (k0, k3) whose rounding may differ
    (on this CPU it does for some seeds, by one 8-bit level), so its files are those of an
    uninterrupted run, byte for byte; k1 and k2 are not written again."""
    from idglow import generation

    table = jobs(tmp_path)
    settings = replace(SETTINGS, height=64, width=64, steps=3, true_cfg_scale=4.0, candidates_per_job=4)
    straight, generated = generate_candidates(
        generator, table, settings, tmp_path / "straight", "r1", "base", progress=False, candidates_batch=3
    )
    assert generated == 4
    expected = {Path(p).name: Path(p).read_bytes() for p in straight["path"]}
    out = tmp_path / "rerun"
    folder = out / candidate_folder(settings, "base")
    folder.mkdir(parents=True)
    for name in ("job-1-k1.png", "job-1-k2.png"):
        (folder / name).write_bytes(expected[name])
    inodes = {p.name: p.stat().st_ino for p in folder.glob("*.png")}
    calls, edit_candidates = [], generation.edit_candidates

    def counted(*args, generators, **kwargs):  # records the batches the rerun asks for
        calls.append((len(generators), kwargs["candidates_batch"]))
        return edit_candidates(*args, generators=generators, **kwargs)

    monkeypatch.setattr(generation, "edit_candidates", counted)
    _, generated = generate_candidates(
        generator, table, settings, out, "r1", "base", progress=False, candidates_batch=3
    )
    assert generated == 2 and calls == [(4, 3)]
    assert {p.name: p.read_bytes() for p in folder.glob("*.png")} == expected
    assert {name: (folder / name).stat().st_ino for name in inodes} == inodes


def test_image_completeness_check(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(path)
    data = path.read_bytes()
    assert is_complete_image(path)
    for cut in (1, 12, len(data) // 2, len(data) - 8):  # even one byte short of the IEND chunk's CRC
        path.write_bytes(data[:-cut])
        assert not is_complete_image(path), cut
    path.write_bytes(b"not an image")
    assert not is_complete_image(path)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "b.jpg")
    assert is_complete_image(tmp_path / "b.jpg")


def test_a_changed_setting_or_model_writes_new_candidates_instead_of_keeping_the_old(generator, tmp_path):
    """A candidate's path is a function of its job, k and what made it (settings but K, the model
    version): rerunning a round with another step count, or another model, keeps nothing of the
    old round's files as its own; a larger K keeps the first candidates."""
    table, out = jobs(tmp_path), tmp_path / "round"
    first, generated = generate_candidates(generator, table, SETTINGS, out, "r1", "base", progress=False)
    assert generated == 2
    more_steps, made = generate_candidates(
        generator, table, replace(SETTINGS, steps=3), out, "r1", "base", progress=False
    )
    other_model, made_too = generate_candidates(generator, table, SETTINGS, out, "r1", "lora:abc", progress=False)
    assert made == made_too == 2
    assert not set(first["path"]) & set(more_steps["path"]) and not set(first["path"]) & set(other_model["path"])
    assert Path(first["path"][0]).read_bytes() != Path(more_steps["path"][0]).read_bytes()
    wider, made = generate_candidates(
        generator, table, replace(SETTINGS, candidates_per_job=3), out, "r1", "base", progress=False
    )
    assert made == 1 and list(wider["path"][:2]) == list(first["path"])
