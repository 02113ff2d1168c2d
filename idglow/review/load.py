"""A bounded load run of the review app: concurrent reviewer clients over HTTP on 127.0.0.1.

Used by the load test (with assertions) and by ``benchmarks/review_load.py`` (figures)."""

from __future__ import annotations

import random
import re
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

from idglow.review.app import create_app
from idglow.review.security import hash_password
from idglow.review.store import ReviewStore

_FIELD = re.compile(r'name="(csrf_token|item_id)" value="([^"]*)"')


@dataclass
class LoadReport:
    clients: int
    items: int
    overlap: int
    decisions: int = 0
    abandoned: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def decisions_per_second(self) -> float:
        return self.decisions / self.seconds if self.seconds else 0.0

    @property
    def p95_ms(self) -> float:
        return 1000 * statistics.quantiles(self.latencies, n=20)[18] if len(self.latencies) >= 20 else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BackgroundServer:
    """uvicorn serving the app on 127.0.0.1 in a thread, stopped on exit."""

    def __init__(self, app, port: int | None = None):
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def run_load(
    folder: Path,
    clients: int = 20,
    items: int = 500,
    overlap: int = 2,
    lease_seconds: float = 2.0,
    abandon_rate: float = 0.02,
    seed: int = 0,
) -> tuple[LoadReport, ReviewStore]:
    """Publish ``items`` pairs, let ``clients`` reviewers work through them until the queue is
    empty for everyone; a few claims are abandoned (the client walks away) so leases expire."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png"):
        (images / name).write_bytes(b"PNG")  # never fetched by the load clients
    store = ReviewStore(folder / "review.sqlite", lease_seconds=lease_seconds)
    password = "load-test-password"
    for index in range(clients):
        store.add_reviewer(f"reviewer{index:02d}", hash_password(password))
    store.publish(
        "load-batch",
        "load test",
        [
            {
                "pair_id": f"pair-{i:04d}",
                "prompt": "two friends",
                "task": "group_fusion",
                "condition_paths": [],
                "chosen_path": str(images / "a.png"),
                "rejected_path": str(images / "b.png"),
                "deltas": {"identity": 0.1},
            }
            for i in range(items)
        ],
        overlap=overlap,
    )
    report = LoadReport(clients, items, overlap)
    lock = threading.Lock()

    def reviewer(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            page = http.get("/login")
            token = dict(_FIELD.findall(page.text))["csrf_token"]
            http.post("/login", data={"username": f"reviewer{index:02d}", "password": password, "csrf_token": token})
            while True:
                start = time.perf_counter()
                page = http.get("/review", follow_redirects=True)
                fields = dict(_FIELD.findall(page.text))
                if "item_id" not in fields:
                    return
                if rng.random() < abandon_rate:  # walk away from this one; its lease expires
                    with lock:
                        report.abandoned += 1
                    time.sleep(lease_seconds * 1.5)
                    continue
                action = rng.choice(["accept", "accept", "reject", "prefer-left", "prefer-right"])
                response = http.post("/review/decide", data={**fields, "action": action, "seconds": "1"})
                elapsed = time.perf_counter() - start
                with lock:
                    report.latencies.append(elapsed)
                    report.decisions += response.status_code in (200, 303)

    with BackgroundServer(create_app(store, folder, "load-test-secret-" + "x" * 16)) as server:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(reviewer, range(clients)))
        report.seconds = time.perf_counter() - started
    return report, store
