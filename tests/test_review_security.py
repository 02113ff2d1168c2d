"""The review app's security, route by route, against the real app and a real SQLite database.

Every route of the app (read from ``app.routes``, so a new route is walked too) is tried by a
stranger, by a thief holding a cookie its reviewer signed out of, and with forged cookies; none
gets anything. Reviewers cannot act on each other's items. The session secret and the database
cannot be fetched through ``/files`` by any path trick. Failed sign-ins are limited, the
password check leaves the server answering, and processes starting at once share one secret.
"""

import hashlib
import json
import multiprocessing
import re
import threading
from base64 import b64encode
from pathlib import Path

import httpx
import itsdangerous
import pytest
from review_fixtures import PASSWORD, review_setup
from starlette.routing import Route
from starlette.testclient import TestClient

from idglow.review.app import create_app
from idglow.review.load import BackgroundServer
from idglow.review.security import LoginLimits, file_token, hash_password, session_secret

COOKIE = "idglow_review"
PUBLIC = {("GET", "/login"), ("POST", "/login")}  # what a stranger may use; tested on their own below


class Clock:
    """Time that a test moves on by hand, so lock lengths are checked without waiting."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path, monkeypatch):
    """The review app as `idglow review serve` lays it out: images under ``storage``, the database
    and the session secret in the review home beside it; symbolic links inside the storage root
    point at both; a second reviewer ``bob``; a batch whose items name the secret, the database
    and the links (a careless or hostile publisher)."""
    monkeypatch.delenv("IDGLOW_REVIEW_SECRET", raising=False)
    store = review_setup(tmp_path)
    storage, home = tmp_path / "storage", tmp_path / "storage-review"
    secret = session_secret(home)
    database = Path(store.url.removeprefix("sqlite:///"))
    store.add_reviewer("bob", hash_password(PASSWORD))
    (storage / "img" / "link-to-secret").symlink_to(home / "session_secret")
    (storage / "img" / "link-to-database").symlink_to(database)
    (storage / "img" / "not-named-by-any-item.png").write_bytes((storage / "img" / "chosen.png").read_bytes())
    private = [
        str(home / "session_secret"),
        str(database),
        str(storage / "img" / "link-to-secret"),
        str(storage / "img" / "link-to-database"),
        "../storage-review/session_secret",
    ]
    store.publish(
        "batch-hostile",
        "test",
        [
            {
                "pair_id": "hostile",
                "chosen_path": private[0],
                "rejected_path": private[1],
                "condition_paths": private[2:],
            }
        ],
    )
    app = create_app(store, storage, secret, private_files=[home / "session_secret"])
    return {"app": app, "store": store, "secret": secret, "home": home, "database": database, "storage": storage}


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(app, username: str = "ann", password: str = PASSWORD, address: str = "10.0.0.1") -> TestClient:
    client = TestClient(app, client=(address, 50000))
    token = csrf(client.get("/login").text)
    response = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    return client


def page_csrf(client: TestClient) -> str:
    return csrf(client.get("/review").text)


def signed_cookie(secret: str, data: dict) -> str:
    """A session cookie as Starlette's SessionMiddleware writes it, signed with ``secret``."""
    return itsdangerous.TimestampSigner(secret).sign(b64encode(json.dumps(data).encode())).decode()


def item_of(store, batch: str) -> int:
    return store.item_outcomes(batch)[0]["item_id"]


def every_route(world) -> list[tuple[str, str]]:
    """(method, concrete path) for every route of the app; path parameters are filled with values
    that would work for a signed-in reviewer (a real item and a real file token)."""
    item_id = item_of(world["store"], "batch-web")
    samples = {
        "item_id": str(item_id),
        "token": file_token(world["secret"], item_id, "chosen"),
        "path": "img/chosen.png",
    }
    found = []
    for route in world["app"].routes:
        assert isinstance(route, Route), f"{route!r}: teach this walker about the new kind of route"
        unknown = set(route.param_convertors) - set(samples)
        assert not unknown, f"{route.path}: give the walker a sample value for {unknown}"
        path = route.path_format.format(**{name: samples[name] for name in route.param_convertors})
        found += [(method, path) for method in sorted(route.methods - {"HEAD"})]
    return found


def assert_refused_everywhere(world, client: TestClient, token: str | None) -> None:
    """Every route but sign-in answers 401/403 or sends the browser to /login, with or without a
    CSRF token; nothing is decided, undone, or served."""
    routes = [r for r in every_route(world) if r not in PUBLIC]
    assert {path for _, path in routes} >= {"/", "/review", "/stats", "/review/decide", "/review/undo", "/logout"}
    before = world["store"].decision_log()
    for method, path in routes:
        data = (
            {"csrf_token": token, "action": "accept", "item_id": str(item_of(world["store"], "batch-web"))}
            if token
            else {}
        )
        response = client.request(method, path, data=data if method == "POST" else None, follow_redirects=False)
        refused = response.status_code in (401, 403) or (
            response.status_code == 303 and response.headers["location"] == "/login"
        )
        assert refused, f"{method} {path} answered {response.status_code}"
        assert b"\x89PNG" not in response.content
    assert world["store"].decision_log() == before


# --------------------------------------------------------------------------- who may do what


def test_the_walker_sees_every_route(world):
    paths = {path for _, path in every_route(world)}
    assert len(paths) == len({route.path for route in world["app"].routes}) and any(
        p.startswith("/files/") for p in paths
    )


def test_a_stranger_gets_nothing_from_any_route(world):
    stranger = TestClient(world["app"])
    assert_refused_everywhere(world, stranger, None)
    assert_refused_everywhere(world, stranger, csrf(stranger.get("/login").text))  # a CSRF token is no sign-in


def test_a_cookie_copied_before_sign_out_stops_working_after_it(world):
    ann = sign_in(world["app"])
    token = page_csrf(ann)
    stolen = dict(ann.cookies)
    assert ann.post("/logout", data={"csrf_token": token}, follow_redirects=False).headers["location"] == "/login"
    thief = TestClient(world["app"], cookies=stolen)
    assert_refused_everywhere(world, thief, token)


@pytest.mark.parametrize(
    "forgery", ["wrong secret", "unknown session", "expired session", "old user cookie", "not text"]
)
def test_forged_cookies_get_nothing(world, forgery):
    store, secret = world["store"], world["secret"]
    ann = store.reviewer("ann")["id"]
    live = store.open_session(ann, 3600)  # a live session: only a cookie signed with the real secret may name it
    data = {
        "wrong secret": (secret[::-1], {"sid": live, "csrf": "t"}),
        "unknown session": (secret, {"sid": "no-such-session-" + "x" * 30, "csrf": "t"}),
        "expired session": (secret, {"sid": store.open_session(ann, -1), "csrf": "t"}),
        # What the app signed before sessions lived on the server: enough, then, to be anyone.
        "old user cookie": (secret, {"user": {"id": ann, "name": "ann", "admin": True}, "csrf": "t"}),
        "not text": (secret, {"sid": ["a", 1], "csrf": 7}),
    }[forgery]
    client = TestClient(world["app"])
    client.cookies.set(COOKIE, signed_cookie(*data))
    assert_refused_everywhere(world, client, "t")


def test_a_reviewer_cannot_decide_or_undo_for_another(world):
    store = world["store"]
    ann, bob = sign_in(world["app"], "ann"), sign_in(world["app"], "bob", address="10.0.0.2")
    ann_token, bob_token = page_csrf(ann), page_csrf(bob)
    ann_item = store.claim(store.reviewer("ann")["id"], "ann").item_id  # held by ann since her page
    answer = bob.post("/review/decide", data={"csrf_token": bob_token, "item_id": str(ann_item), "action": "reject"})
    assert store.decision_log() == [] and "no longer yours" in answer.text
    ann.post("/review/decide", data={"csrf_token": ann_token, "item_id": str(ann_item), "action": "accept"})
    assert [(r["reviewer"], r["item_id"], r["decision"]) for r in store.decision_log()] == [("ann", ann_item, "accept")]
    assert "Nothing to undo" in bob.post("/review/undo", data={"csrf_token": bob_token}).text
    assert [r["decision"] for r in store.decision_log()] == ["accept"]


def test_sign_out_ends_only_that_session(world):
    first, second = sign_in(world["app"]), sign_in(world["app"])
    first.post("/logout", data={"csrf_token": page_csrf(first)})
    assert first.get("/review", follow_redirects=False).status_code == 303
    assert second.get("/review", follow_redirects=False).status_code == 200


# ------------------------------------------------------------------------------------- files


def test_only_the_files_items_name_are_served(world):
    store, secret = world["store"], world["secret"]
    ann = sign_in(world["app"])
    page = ann.get("/review").text
    urls = re.findall(r'src="(/files/[^"]+)"', page)
    assert urls and all(re.fullmatch(r"/files/\d+/[0-9a-f]{32}", url) for url in urls)  # no path, no role in the URL
    assert all(ann.get(url).content.startswith(b"\x89PNG") for url in urls)
    item_id = item_of(store, "batch-web")
    for made_up in (
        file_token(secret[::-1], item_id, "chosen"),
        file_token(secret, item_id, "condition", 1),
        file_token(secret, item_id + 1000, "chosen"),
        "0" * 32,
        "é",
    ):
        assert ann.get(f"/files/{item_id}/{made_up}").status_code == 404


def test_the_secret_and_the_database_cannot_be_fetched_by_any_path(world):
    store, secret, storage = world["store"], world["secret"], world["storage"]
    ann = sign_in(world["app"])
    secret_file, database = world["home"] / "session_secret", world["database"]
    hostile = item_of(store, "batch-hostile")
    tokens = [
        file_token(secret, hostile, role, index)
        for role, index in (("chosen", 0), ("rejected", 0), ("condition", 0), ("condition", 1), ("condition", 2))
    ]
    tries = [f"/files/{hostile}/{token}" for token in tokens]  # an item that names them, directly or through links
    for target in (secret_file, database):
        relative = Path("..") / target.relative_to(storage.parent)
        tries += [
            f"/files/{relative}",
            f"/files/{str(relative).replace('..', '%2e%2e')}",
            f"/files/{str(relative).replace('/', '%2f')}",
            f"/files/{target}",
            f"/files//{target}",
            f"/files/%2f{str(target).lstrip('/').replace('/', '%2f')}",
            f"/files/img/{'link-to-' + target.stem}",
            f"/files/1/..%2f..%2f{target.name}",
            f"/files/1/{'%2e%2e/' * 8}{target}",
            f"/files/img/%2e%2e/%2e%2e/{relative}",
            f"/files/{hostile}/../../{relative}",
        ]
    tries += ["/files/img/not-named-by-any-item.png", "/files/img/chosen.png"]
    for path in tries:
        response = ann.get(path)
        assert response.status_code == 404, path
        assert secret.encode() not in response.content and b"SQLite format" not in response.content


def test_a_database_inside_the_storage_root_is_never_served_even_when_an_item_names_it(tmp_path):
    store = review_setup(tmp_path)
    storage = tmp_path / "storage"
    from idglow.review.store import ReviewStore

    inside = ReviewStore(storage / "review" / "review.sqlite")  # the layout before the review home
    inside.add_reviewer("ann", hash_password(PASSWORD))
    database = storage / "review" / "review.sqlite"
    inside.publish(
        "b",
        "test",
        [
            {
                "pair_id": "p",
                "chosen_path": str(database),
                "rejected_path": str(database) + "-wal",
                "condition_paths": [str(storage / "img" / "portrait.png")],
            }
        ],
    )
    app = create_app(inside, storage, "s" * 32)
    ann = sign_in(app)
    item_id = item_of(inside, "b")
    assert ann.get(f"/files/{item_id}/{file_token('s' * 32, item_id, 'condition', 0)}").status_code == 200
    for role in ("chosen", "rejected"):
        assert ann.get(f"/files/{item_id}/{file_token('s' * 32, item_id, role)}").status_code == 404
    assert store.url != inside.url


# ------------------------------------------------------------------------------ sign-in limits


def attempt(app, username: str, password: str, address: str = "10.0.0.1") -> httpx.Response:
    client = TestClient(app, client=(address, 50000))
    token = csrf(client.get("/login").text)
    return client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}, follow_redirects=False
    )


def test_repeated_wrong_passwords_lock_the_account_for_doubling_times(world):
    clock = Clock()
    limits = LoginLimits(account_failures=3, address_failures=100, lock_seconds=60)
    app = create_app(world["store"], world["storage"], world["secret"], limits=limits, clock=clock)
    assert [attempt(app, "ann", "wrong password").status_code for _ in range(3)] == [401] * 3
    locked = attempt(app, "ann", "wrong password")
    assert locked.status_code == 429 and locked.headers["Retry-After"] == "60"
    assert "try again in 60 seconds" in locked.text
    refused = attempt(app, "ann", PASSWORD, address="10.9.9.9")  # the right password, from anywhere: still locked
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    assert attempt(app, "bob", PASSWORD).status_code == 303  # another account, same address: unaffected
    assert attempt(app, "nobody", "wrong password").status_code == 401
    clock.now += 61
    assert [attempt(app, "ann", "wrong password").status_code for _ in range(3)] == [401] * 3
    assert (
        attempt(app, "ann", "wrong password").headers["Retry-After"] == "120"
    )  # the next lock in a row: twice as long
    clock.now += 30
    assert attempt(app, "ann", PASSWORD).headers["Retry-After"] == "90"
    clock.now += 91
    assert attempt(app, "ann", PASSWORD).status_code == 303  # the lock is over; the right password clears the count
    assert [attempt(app, "ann", "wrong password").status_code for _ in range(3)] == [401] * 3


def test_one_address_guessing_many_accounts_is_locked_but_other_addresses_are_not(world):
    clock = Clock()
    limits = LoginLimits(account_failures=100, address_failures=4, lock_seconds=60)
    app = create_app(world["store"], world["storage"], world["secret"], limits=limits, clock=clock)
    assert [attempt(app, f"guess{i}", "wrong password", "10.6.6.6").status_code for i in range(4)] == [401] * 4
    assert attempt(app, "ann", PASSWORD, "10.6.6.6").status_code == 429
    assert attempt(app, "ann", PASSWORD, "10.0.0.7").status_code == 303
    assert attempt(app, "guess0", "wrong password", "10.0.0.7").status_code == 401


def test_successful_sign_ins_do_not_add_up_to_a_lock(world):
    app = create_app(
        world["store"], world["storage"], world["secret"], limits=LoginLimits(account_failures=2, address_failures=2)
    )
    assert [attempt(app, "ann", PASSWORD).status_code for _ in range(6)] == [303] * 6


def test_the_server_answers_other_requests_while_a_password_is_checked(world, monkeypatch):
    """scrypt runs in a worker thread: while one sign-in is held inside it, another request is
    answered. The hash is held at a gate (then computed for real), so the order is certain."""
    real_scrypt = hashlib.scrypt
    hashing, release = threading.Event(), threading.Event()

    def gated_scrypt(*args, **kwargs):
        hashing.set()
        release.wait(timeout=60)
        return real_scrypt(*args, **kwargs)

    order: list[tuple[str, int]] = []
    with BackgroundServer(world["app"]) as server, httpx.Client(base_url=server.url, timeout=60) as browser:
        token = csrf(browser.get("/login").text)
        monkeypatch.setattr(hashlib, "scrypt", gated_scrypt)

        def sign_in_slowly() -> None:
            response = browser.post("/login", data={"username": "ann", "password": PASSWORD, "csrf_token": token})
            order.append(("sign-in", response.status_code))

        thread = threading.Thread(target=sign_in_slowly)
        thread.start()
        try:
            assert hashing.wait(timeout=60), "the sign-in never reached the password check"
            other = httpx.get(server.url + "/login", timeout=20)
            order.append(("other request", other.status_code))
        finally:
            release.set()
            thread.join(timeout=60)
    assert order == [("other request", 200), ("sign-in", 303)]  # the sign-in succeeded, after the other answer


# ------------------------------------------------------------------------- the session secret


def _read_secret(folder: str, barrier, results) -> None:
    try:
        barrier.wait(timeout=60)
        results.put(("ok", session_secret(Path(folder))))
    except BaseException as error:  # reported to the test rather than lost in the child
        results.put(("error", repr(error)))


@pytest.mark.slow
def test_processes_starting_at_once_on_a_fresh_folder_share_one_complete_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("IDGLOW_REVIEW_SECRET", raising=False)
    context = multiprocessing.get_context("fork")
    processes = 10
    for round_ in range(30):  # the race is narrow: several rounds so that it is met
        folder = tmp_path / f"home-{round_}"
        barrier, results = context.Barrier(processes), context.Queue()
        children = [
            context.Process(target=_read_secret, args=(str(folder), barrier, results)) for _ in range(processes)
        ]
        for child in children:
            child.start()
        answers = [results.get(timeout=120) for _ in children]
        for child in children:
            child.join(timeout=60)
        written = (folder / "session_secret").read_text()
        assert len(written) == 64 and answers == [("ok", written)] * processes, f"round {round_}"
        assert sorted(p.name for p in folder.iterdir()) == ["session_secret"]  # no temporary file left behind
        assert (folder / "session_secret").stat().st_mode & 0o777 == 0o600
