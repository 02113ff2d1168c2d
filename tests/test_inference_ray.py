"""The batch-inference engine on a real Ray: embedded, on a head started by address, and with a
worker killed mid-stage. The replica is the toy one (idglow/inference/toy.py): cheap and
deterministic, so every output can be checked byte for byte against an uninterrupted run."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow as pa
import pytest

from idglow.inference.engine import RESULT_COLUMNS, RayOptions, batches_of, output_path, run_stage, settings_hash
from idglow.inference.toy import ToyReplicaFactory, toy_output

pytestmark = pytest.mark.slow  # each test starts a Ray cluster (seconds)

STAGE = "toy_stage"
SETTINGS = {"seed": 0, "size": 32}


def _items(n: int) -> pa.Table:
    ids = [f"item-{i:03d}" for i in range(n)]
    return pa.table(
        {
            "item_id": ids,
            "output_path": [output_path(STAGE, i, SETTINGS, ".rgb") for i in ids],
            "group": [f"g{i // 3}" for i in range(n)],
        }
    )


def _plain_loop(items: pa.Table, root: Path) -> dict[str, bytes]:
    """The outputs of the same replica called in a plain loop, with no Ray."""
    replica = ToyReplicaFactory(**SETTINGS)()
    rows = items.to_pylist()
    return dict(zip([r["item_id"] for r in rows], replica.run(rows), strict=True))


def _outputs(root: Path, table: pa.Table) -> dict[str, bytes]:
    return {row["item_id"]: (root / row["output_path"]).read_bytes() for row in table.to_pylist()}


def _comparable(table: pa.Table) -> list[dict]:
    """A result table without what depends on the run (which worker, how long, whether now)."""
    return table.drop_columns(["worker", "seconds", "generated"]).to_pylist()


def _partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".partial")]


def test_batches_keep_groups_whole_and_paths_depend_on_id_and_settings():
    items = _items(10)
    assert [b.num_rows for b in batches_of(items, 4)] == [4, 4, 2]
    grouped = batches_of(items, 4, group_column="group")  # groups of 3: never split
    assert [b.column("group").to_pylist() for b in grouped][0] == ["g0"] * 3 + ["g1"] * 3
    assert sum(b.num_rows for b in grouped) == 10
    assert output_path(STAGE, "a", SETTINGS, ".rgb") == f"{STAGE}/{settings_hash(SETTINGS)}/a.rgb"
    assert settings_hash(SETTINGS) != settings_hash({**SETTINGS, "seed": 1})


def test_embedded_run_equals_a_plain_loop_and_a_rerun_skips_and_repairs(tmp_path):
    items, root = _items(12), tmp_path / "storage"
    result = run_stage(items, ToyReplicaFactory(**SETTINGS), root, stage=STAGE, options=RayOptions(workers=2))
    table = result.table
    assert table.column_names[: len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    assert table.column("item_id").to_pylist() == items.column("item_id").to_pylist()  # the items' order
    assert all(not Path(p).is_absolute() for p in table.column("output_path").to_pylist())
    assert result.generated == 12 and result.progress["items_done"] == result.progress["items_total"] == 12
    assert sum(w["items"] for w in result.progress["workers"].values()) == 12
    assert _outputs(root, table) == _plain_loop(items, root)

    # A rerun skips every complete output; a truncated one and a killed writer's partial are redone.
    victim = root / table.column("output_path")[5].as_py()
    victim.write_bytes(victim.read_bytes()[:100])
    (victim.parent / f".{victim.name}.abc123.partial").write_bytes(b"half")
    again = run_stage(items, ToyReplicaFactory(**SETTINGS), root, stage=STAGE, options=RayOptions(workers=2))
    assert again.table.column("generated").to_pylist() == [i == 5 for i in range(12)]
    assert _comparable(again.table) == _comparable(table)
    assert _outputs(root, again.table) == _plain_loop(items, root)
    assert _partials(root) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_in_group(group: int) -> list[psutil.Process]:
    """The live processes of a process group (the head's session: its GCS, raylet, agents, workers)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return found


@contextlib.contextmanager
def _running_head(dashboard_port: int | None = None):
    """A Ray head on 127.0.0.1 started with ``ray start --head --block`` in its own session (with
    its dashboard, which serves the job API, on ``dashboard_port`` if given), its address yielded;
    stopped afterwards by its process group, and checked to leave no process."""
    temp_dir = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = _free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    command = [
        ray,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        *(
            [f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
            if dashboard_port
            else ["--include-dashboard=false"]
        ),
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
    ]
    log = open(Path(temp_dir) / "ray-start.log", "wb")
    # A submitted job's entrypoint finds this environment's python on the head's PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if dashboard_port:
        # Token authentication off for a head that serves jobs, explicitly: Ray turns it on when a
        # token file exists in the home folder (or this process's Ray turned it on), and a job
        # client in another process (the command under test) sends the token only with
        # RAY_AUTH_MODE=token. Every driver of this head runs on it, in a job, so the mode is one.
        env["RAY_AUTH_MODE"] = "disabled"
    head = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (Path(temp_dir) / "ray_current_cluster").exists():
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed: {(Path(temp_dir) / 'ray-start.log').read_text()}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        # `ray stop` would stop every Ray of this user on the machine; this head is one process
        # group (start_new_session), ended by its id: SIGTERM, then SIGKILL for what remains.
        os.killpg(head.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(_processes_in_group(head.pid), timeout=5)
        if alive:
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        log.close()
        _, alive = psutil.wait_procs(_processes_in_group(head.pid), timeout=30)
        assert alive == [], f"ray processes left running: {[p.pid for p in alive]}"
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def ray_head():
    with _running_head() as address:
        yield address


@pytest.fixture
def ray_head_with_jobs():
    """A head with its dashboard: (its address, the dashboard's job API address)."""
    port = _free_port()
    with _running_head(dashboard_port=port) as address:
        yield address, f"http://127.0.0.1:{port}"


def test_a_stage_on_a_cluster_by_address_equals_the_embedded_run(tmp_path, ray_head):
    items = _items(8)
    embedded = run_stage(
        items,
        ToyReplicaFactory(**SETTINGS),
        tmp_path / "embedded",
        stage=STAGE,
        options=RayOptions(workers=2),
        batch_size=2,
    )
    clustered = run_stage(
        items,
        ToyReplicaFactory(**SETTINGS),
        tmp_path / "cluster",
        stage=STAGE,
        options=RayOptions(address=ray_head, workers=2),
        batch_size=2,
    )
    assert clustered.generated == 8
    assert _comparable(clustered.table) == _comparable(embedded.table)
    assert _outputs(tmp_path / "cluster", clustered.table) == _outputs(tmp_path / "embedded", embedded.table)


def test_a_worker_killed_mid_stage_costs_nothing_but_time(tmp_path):
    """One actor is killed (SIGKILL, by its pid) while it holds a half-written output: Ray restarts
    it and retries its batch; every item comes back once and every file is whole."""
    items, root, gate = _items(10), tmp_path / "storage", tmp_path / "gate"
    gate.mkdir()
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 300
        while not (pids := sorted(gate.glob("*.pid"))) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pids:
            pid = int(pids[0].stem)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        (gate / "release").touch()

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    result = run_stage(
        items,
        ToyReplicaFactory(**SETTINGS, gate_dir=str(gate)),
        root,
        stage=STAGE,
        options=RayOptions(workers=2),
        batch_size=2,
    )
    killer.join()
    assert len(killed) == 1 and not psutil.pid_exists(killed[0])
    ids = result.table.column("item_id").to_pylist()
    assert ids == items.column("item_id").to_pylist()  # each item once, none missing
    assert _outputs(root, result.table) == {i: toy_output(i, **SETTINGS) for i in ids}
    assert _partials(root) == []
    assert sorted(p.name for p in (root / STAGE / settings_hash(SETTINGS)).iterdir()) == sorted(f"{i}.rgb" for i in ids)


def test_the_candidate_stage_on_ray_equals_generate_candidates(tmp_path, tiny_models_dir, hub):
    """The real candidate_images path: the tiny generator in Ray actors writes the images the
    plain loop writes, byte for byte, and counts the faces in them as the asset did."""
    import pandas as pd
    from PIL import Image, ImageDraw

    from idglow.editing import ReferenceBudget
    from idglow.faces import count_faces
    from idglow.generation import GenerationSettings, generate_candidates
    from idglow.inference.candidates import CandidateReplicaFactory, HubSpec, candidate_items, candidate_table
    from idglow.paths import TableRoots

    dataset = tmp_path / "portraits"
    dataset.mkdir()
    for name, colour in (("a", "red"), ("b", "blue"), ("c", "green")):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((16, 12, 48, 52), fill=colour)
        image.save(dataset / f"{name}.png")
    jobs = pd.DataFrame(
        {
            "job_id": ["job-1", "job-2"],
            "group_id": ["g1", "g2"],
            "task": ["group_fusion", "group_fusion"],
            "prompt_kind": ["static", "caption"],
            "prompt": ["two friends at the beach", "three colleagues in an office"],
            "condition_paths": [[f"celebahq:{n}.png" for n in "ab"], [f"celebahq:{n}.png" for n in "abc"]],
            "identities": [["a", "b"], ["a", "b", "c"]],
            "n_subjects": [2, 3],
            "photo_id": [None, "photo-2"],
        }
    )
    settings = GenerationSettings(64, 64, 2, 1.0, 3, 0, ReferenceBudget(64 * 64, 56 * 56))  # K=3, batches of 2
    plain_roots, ray_roots = TableRoots(tmp_path / "plain", dataset), TableRoots(tmp_path / "ray", dataset)
    plain, generated = generate_candidates(
        hub.generator(),
        plain_roots.resolve_frame(jobs),
        settings,
        plain_roots.storage / "candidate_images" / "round-000",
        "round-000",
        "base",
        progress=False,
        candidates_batch=2,
    )
    table = candidate_table(jobs, settings, "candidate_images/round-000", "round-000", "base")
    assert table.equals(plain_roots.store_frame(plain))  # the asset's table, as it was

    hub_spec = HubSpec("demo", str(tiny_models_dir), "cpu")
    replicas = CandidateReplicaFactory(hub_spec, settings, ray_roots, candidates_batch=2)

    def stage():
        return run_stage(
            candidate_items(table),
            replicas,
            ray_roots.storage,
            stage="candidate_images",
            options=RayOptions(workers=1),
            batch_size=3,
            group_column="job_id",
        )

    result = stage()
    assert result.generated == generated == 6
    for stored in table["path"]:
        assert ray_roots.resolve(stored).read_bytes() == plain_roots.resolve(stored).read_bytes()
    # one candidate lost: its group of two is redone, only it is written, and it is as it was
    lost = ray_roots.resolve(table["path"][3])  # job-2's k0, batched with k1
    kept = ray_roots.resolve(table["path"][4])
    kept_time = kept.stat().st_mtime_ns
    lost.unlink()
    again = stage()
    assert again.generated == 1 and kept.stat().st_mtime_ns == kept_time
    assert lost.read_bytes() == plain_roots.resolve(table["path"][3]).read_bytes()
    app = hub.face_analysis()
    expected = [
        min(count_faces(app, Image.open(plain_roots.resolve(p))), n) for p, n in zip(table["path"], table["n_subjects"])
    ]
    assert result.table.column("faces_found").to_pylist() == expected


def test_the_prompt_stage_on_ray_equals_build_prompts(tmp_path, tiny_models_dir, hub):
    """Dynamic prompts written by the tiny prompt model in Ray actors give build_prompts' table."""
    import pandas as pd
    from PIL import Image, ImageDraw

    from idglow.inference.candidates import HubSpec
    from idglow.inference.prompts import PromptReplicaFactory, prompt_items, raw_outputs
    from idglow.prompt_synthesis import build_prompts

    source = tmp_path / "source"
    source.mkdir()
    for name, colour in (("a", "red"), ("b", "blue"), ("c", "green")):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((16, 12, 48, 52), fill=colour)
        image.save(source / f"{name}.png")
    groups = pd.DataFrame(
        {
            "group_id": ["g-1", "g-2"],
            "kind": ["train", "benchmark"],
            "n_subjects": [2, 3],
            "identities": [[1, 2], [1, 2, 3]],
            "condition_paths": [["a.png", "b.png"], ["a.png", "b.png", "c.png"]],
        }
    )
    tokenizer = hub.generator_tokenizer()
    arguments = (lambda text: len(tokenizer(text).input_ids), 512, "demo:test", 56 * 56, 12)
    plain = build_prompts(groups, source, hub.prompt_model(), *arguments, progress=False)

    stage_settings = {"prompt_model_version": "demo:test", "portrait_pixels": 56 * 56, "max_new_tokens": 12}
    items = prompt_items(groups, stage_settings)
    replicas = PromptReplicaFactory(HubSpec("demo", str(tiny_models_dir), "cpu"), str(source), 56 * 56, 12)
    result = run_stage(items, replicas, tmp_path / "storage", stage="prompts", options=RayOptions(workers=1))
    assert result.generated == 4 and items.num_rows == 4
    written = build_prompts(groups, source, None, *arguments, progress=False, written=raw_outputs(result))
    pd.testing.assert_frame_equal(written, plain)


def test_the_pair_score_stage_on_ray_equals_score_pairs(tmp_path, tiny_models_dir, hub):
    """Eq. 8 scored by ImageScorers in Ray actors, in batches, matches one score_pairs call."""
    import numpy as np
    import pandas as pd
    from PIL import Image, ImageDraw

    from idglow.inference.candidates import HubSpec
    from idglow.inference.scores import ScoreReplicaFactory, pair_items, scores_frame
    from idglow.paths import TableRoots
    from idglow.scoring import ImageScorer, score_pairs

    root = tmp_path / "storage"
    (root / "images").mkdir(parents=True)
    for i, colour in enumerate(("red", "blue", "green", "orange", "purple", "grey")):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((8 + i, 10, 50 - i, 54), fill=colour)
        image.save(root / "images" / f"{i}.png")
    pairs = pd.DataFrame(
        {
            "pair_id": [f"pair-{i}" for i in range(5)],
            "chosen_path": [f"images/{i}.png" for i in range(5)],
            "rejected_path": [f"images/{i + 1}.png" for i in range(5)],
            "condition_paths": [["images/0.png", "images/5.png"]] * 5,
            "prompt": ["two friends", "two colleagues", "two friends", "a couple", "two people"],
        }
    )
    roots = TableRoots(root, root)
    plain = score_pairs(ImageScorer(hub, progress=False), roots.resolve_frame(pairs))

    settings = {"profile": "demo", "scorers": "test"}
    replicas = ScoreReplicaFactory(HubSpec("demo", str(tiny_models_dir), "cpu"), roots)
    result = run_stage(pair_items(pairs, settings), replicas, root, stage="pair_scores", batch_size=2)
    scores = scores_frame(result, pairs)
    assert list(scores.columns) == list(plain.columns) and scores["pair_id"].tolist() == plain["pair_id"].tolist()
    numbers = plain.columns.drop("pair_id")
    np.testing.assert_allclose(scores[numbers].to_numpy(float), plain[numbers].to_numpy(float), rtol=1e-5, atol=1e-6)
    # no pairs: the empty table score_pairs gives, without starting Ray
    empty = run_stage(pair_items(pairs.iloc[:0], settings), replicas, root, stage="pair_scores")
    assert scores_frame(empty, pairs.iloc[:0]).columns.tolist() == plain.columns.tolist()


def test_a_stage_submitted_as_a_ray_job_streams_its_progress_and_equals_the_embedded_run(tmp_path, ray_head_with_jobs):
    """dagster-ray's Pipes client submits the stage to the head's job API; the job runs the same
    run_stage there, its progress lines reach the Dagster run's log, and the outputs equal an
    embedded run's."""
    import dagster as dg
    from dagster_ray import RayResource

    from assets.inference import IdglowRay, run_on_ray

    _, job_address = ray_head_with_jobs
    items, root = _items(6), tmp_path / "storage"
    embedded = run_stage(items, ToyReplicaFactory(**SETTINGS), tmp_path / "embedded", stage=STAGE)

    @dg.asset
    def toy_stage(context: dg.AssetExecutionContext, ray_cluster: RayResource) -> dg.MaterializeResult:
        result = run_on_ray(context, ray_cluster, items, ToyReplicaFactory(**SETTINGS), root, stage=STAGE, batch_size=2)
        rows = {"rows": _comparable(result.table), "done": result.progress["items_done"]}
        return dg.MaterializeResult(metadata={"result": dg.MetadataValue.json(rows)})

    instance = dg.DagsterInstance.ephemeral()
    ray_cluster = IdglowRay(job_address=job_address, workers=2)
    run = dg.materialize([toy_stage], resources={"ray_cluster": ray_cluster}, instance=instance)
    metadata = run.asset_materializations_for_node("toy_stage")[0].metadata
    assert metadata["result"].data == {"rows": _comparable(embedded.table), "done": 6}
    assert _outputs(root, embedded.table) == _outputs(tmp_path / "embedded", embedded.table)
    messages = [entry.user_message for entry in instance.all_logs(run.run_id)]
    assert any(f"{STAGE}: 6/6 items" in message for message in messages), messages
    assert _partials(root) == []


def test_the_image_score_stage_on_ray_equals_image_scores(tmp_path, tiny_models_dir, hub):
    """idglow eval external's scoring: image_scores by ImageScorers in Ray actors, in batches,
    matches the plain call; an image given twice is scored once."""
    import numpy as np
    from PIL import Image, ImageDraw

    from evaluation.benchmark import image_scores
    from idglow.inference.scores import image_items, image_scores_on_ray
    from idglow.paths import TableRoots
    from idglow.scoring import ImageScorer

    root = tmp_path / "storage"
    (root / "images").mkdir(parents=True)
    for i, colour in enumerate(("red", "blue", "green", "orange", "purple")):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((8 + i, 10, 50 - i, 54), fill=colour)
        image.save(root / "images" / f"{i}.png")
    roots = TableRoots(root, root)
    images = [str(root / "images" / f"{i}.png") for i in (0, 1, 2, 3, 0)]  # the last as the first
    conditions = [[str(root / "images" / "4.png"), str(root / "images" / "1.png")]] * 5
    prompts = ["two friends", "two colleagues", "two friends", "a couple", "two friends"]
    plain = image_scores(ImageScorer(hub, progress=False), images, conditions, prompts)

    stored = [roots.store(p) for p in images]
    assert image_items(stored, [[roots.store(p) for p in c] for c in conditions], prompts, {}, roots).num_rows == 4
    scored = image_scores_on_ray(hub, roots, images, conditions, prompts, batch_size=2, device="cpu")
    assert [type(s) for s in scored] == [type(s) for s in plain]
    assert [(s.faces_found, s.missing_faces) for s in scored] == [(s.faces_found, s.missing_faces) for s in plain]
    np.testing.assert_allclose(
        [list(s.__dict__.values()) for s in scored], [list(s.__dict__.values()) for s in plain], rtol=1e-5, atol=1e-6
    )
    assert image_scores_on_ray(hub, roots, [], [], []) == []


def _external_inputs(folder: Path) -> tuple[Path, Path, list[dict], pd.DataFrame]:
    """What `idglow eval external` scores in these tests, under ``folder``: a storage root whose
    prompts table has one benchmark group (two portraits, a static and a dynamic prompt), and a
    manifest naming one image made elsewhere for both prompts. Returns (the storage root, the
    manifest, its rows, the prompts table)."""
    import json

    from PIL import Image, ImageDraw

    from idglow.paths import ArtifactPaths

    root, made = folder / "storage", folder / "elsewhere"
    (root / "portraits").mkdir(parents=True)
    made.mkdir()
    for i, colour in enumerate(("red", "blue", "green")):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((8 + i, 10, 50 - i, 54), fill=colour)
        image.save((root / "portraits" if i < 2 else made) / f"{i}.png")
    prompts = pd.DataFrame(
        {
            "group_kind": ["bench", "bench"],
            "group_id": ["g0", "g0"],
            "task": ["group_fusion", "group_fusion"],
            "prompt_kind": ["static", "dynamic"],
            "condition_paths": [["portraits/0.png", "portraits/1.png"]] * 2,
            "prompt": ["two friends", "two friends in a park"],
            "n_subjects": [2, 2],
        }
    )
    paths = ArtifactPaths(root)
    paths.table("prompts").parent.mkdir(parents=True)
    prompts.to_parquet(paths.table("prompts"))
    manifest = folder / "manifest.json"
    rows = [
        {"group_id": "g0", "task": "group_fusion", "prompt_kind": kind, "image": str(made / "2.png")}
        for kind in ("static", "dynamic")
    ]
    manifest.write_text(json.dumps(rows))
    return root, manifest, rows, prompts


def _run_eval_external(
    root: Path, manifest: Path, models_dir: Path, *options: str, **variables: str
) -> subprocess.CompletedProcess:
    """`idglow eval external --name x` with ``options`` in a subprocess on the demo profile with
    ``variables`` set (no Ray address or job address from the caller's environment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("IDGLOW_RAY_ADDRESS", "IDGLOW_RAY_JOB_ADDRESS")}
    env.update(IDGLOW_PROFILE="demo", IDGLOW_MODELS_DIR=str(models_dir), IDGLOW_STORAGE_ROOT=str(root), **variables)
    command = [sys.executable, "-m", "idglow.cli", "eval", "external", "--manifest", str(manifest), "--name", "x"]
    return subprocess.run([*command, *options], capture_output=True, text=True, timeout=600, env=env)


def _eval_external(
    root: Path, manifest: Path, models_dir: Path, **variables: str
) -> tuple[subprocess.CompletedProcess, pd.DataFrame]:
    """``_run_eval_external`` that scored both images: its result and the table it wrote."""
    from idglow.paths import ArtifactPaths

    done = _run_eval_external(root, manifest, models_dir, **variables)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "scored 2 of 2 images" in done.stdout
    return done, pd.read_parquet(ArtifactPaths(root).asset_dir("benchmark_results") / "external-x.parquet")


def test_idglow_eval_external_scores_on_the_engine_as_score_external_does(tmp_path, tiny_models_dir, hub):
    """The command (embedded Ray, IDGLOW_RAY_ADDRESS unset) writes the table score_external
    writes with the scorer in process: same rows and columns, the numbers to float rounding."""
    import numpy as np

    from evaluation.protocol import score_external
    from idglow.paths import TableRoots
    from idglow.scoring import ImageScorer

    root, manifest, rows, prompts = _external_inputs(tmp_path)
    _, table = _eval_external(root, manifest, tiny_models_dir)

    roots = TableRoots(root, root)
    imported = [str(root / p) for p in table["image"]]
    frame = pd.DataFrame(rows).assign(image=imported)
    plain, _ = score_external(ImageScorer(hub, progress=False), frame, roots.resolve_frame(prompts), "external-x")
    plain = roots.store_frame(plain)
    assert list(table.columns) == list(plain.columns)
    numbers = [c for c in plain.columns if pd.api.types.is_float_dtype(plain[c])]
    pd.testing.assert_frame_equal(table.drop(columns=numbers), plain.drop(columns=numbers))
    np.testing.assert_allclose(table[numbers].to_numpy(float), plain[numbers].to_numpy(float), rtol=1e-5, atol=1e-6)


def test_idglow_eval_external_submitted_as_a_ray_job_streams_its_progress_and_equals_the_embedded_run(
    tmp_path, tiny_models_dir, ray_head_with_jobs
):
    """With IDGLOW_RAY_JOB_ADDRESS the command submits its image-score stage to the head's job API
    with Ray's JobSubmissionClient (no Dagster): the job's progress line reaches the command's
    output and the table equals an embedded run's. --ray-job-address wins over the variable, a
    missing job API ends the command with an error, and a job that fails raises with its status
    and the tail of its log."""
    from idglow.inference.jobs import RayJobFailed, StageRequest, submit_stage_job

    _, job_address = ray_head_with_jobs
    root, manifest, _, _ = _external_inputs(tmp_path / "job")
    variables = {"IDGLOW_RAY_JOB_ADDRESS": job_address}
    done, submitted = _eval_external(root, manifest, tiny_models_dir, **variables)
    assert "image_scores: 2/2 items" in done.stdout, done.stdout
    assert list((root / "ray_jobs").glob("image_scores-*/summary.json"))  # the job's progress summary, read back
    embedded_root, embedded_manifest, _, _ = _external_inputs(tmp_path / "embedded")
    _, embedded = _eval_external(embedded_root, embedded_manifest, tiny_models_dir)
    # the imported copy is named by its source's path, which differs between the two inputs
    pd.testing.assert_frame_equal(submitted.drop(columns="image"), embedded.drop(columns="image"))
    copies = zip(submitted["image"], embedded["image"], strict=True)
    assert all((root / a).read_bytes() == (embedded_root / b).read_bytes() for a, b in copies)

    # --ray-job-address wins over the variable; no job API there is an error, not a traceback
    nowhere = f"http://127.0.0.1:{_free_port()}"
    refused = _run_eval_external(root, manifest, tiny_models_dir, "--ray-job-address", nowhere, **variables)
    assert refused.returncode == 1 and f"error: Failed to connect to Ray at address: {nowhere}" in refused.stderr

    request = StageRequest(STAGE, _items(2), ToyReplicaFactory(**SETTINGS), 2, None, None)
    with pytest.raises(RayJobFailed, match="ended FAILED") as failed:
        submit_stage_job(job_address, request, tmp_path / "failing", python="no-such-python", echo=lambda line: None)
    assert "no-such-python" in str(failed.value)  # the shell's "not found", from the job's log


def test_a_job_not_launched_by_pipes_writes_its_result_and_summary_for_the_submitter(tmp_path, monkeypatch):
    """The job's entrypoint outside Pipes (as JobSubmissionClient starts it): it runs the request
    and writes the result table and the summary, which read_result gives back as a StageResult.
    No items: run_stage returns without starting Ray, so this needs none."""
    from idglow.inference.jobs import StageRequest, launched_by_pipes, main, read_result, write_request

    monkeypatch.delenv("DAGSTER_PIPES_CONTEXT", raising=False)
    assert not launched_by_pipes()
    request = StageRequest(STAGE, _items(0), ToyReplicaFactory(**SETTINGS), 2, None, None)
    request_path = write_request(request, tmp_path)
    main([str(tmp_path), request_path])
    result = read_result(tmp_path, request_path)
    assert result.table.num_rows == 0 and result.table.column_names == list(RESULT_COLUMNS)
    assert result.progress["items_total"] == 0 and result.progress["items_done"] == 0
    monkeypatch.setenv("DAGSTER_PIPES_CONTEXT", "set by a Pipes client")
    assert launched_by_pipes()


def test_the_ray_resource_leaves_ray_to_the_stages_inside_a_run():
    """In a run the resource keeps its lifecycle (connect=False): initialising it starts no Ray."""
    import dagster as dg
    import ray
    from dagster_ray import RayResource

    from assets.inference import IdglowRay

    @dg.asset
    def uses_ray(ray_cluster: RayResource) -> dict:
        return {"connect": ray_cluster.lifecycle.connect, "ray_started": ray.is_initialized()}

    run = dg.materialize([uses_ray], resources={"ray_cluster": IdglowRay()})
    assert run.output_for_node("uses_ray") == {"connect": False, "ray_started": False}
