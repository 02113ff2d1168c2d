"""Security of the review app: sessions, CSRF, the storage root, sign-in errors."""

import re

import pytest
from review_fixtures import PASSWORD, review_setup
from starlette.testclient import TestClient

from idglow.review.app import create_app


@pytest.fixture
def app_and_store(tmp_path):
    store = review_setup(tmp_path)
    return create_app(store, tmp_path / "storage", "test-secret-" + "x" * 20), store


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def signed_in(app) -> tuple[TestClient, str]:
    client = TestClient(app)
    token = csrf(client.get("/login").text)
    page = client.post("/login", data={"username": "ann", "password": PASSWORD, "csrf_token": token})
    assert page.status_code == 200 and "Two friends" in page.text
    return client, page.text


def test_nothing_is_served_without_a_session(app_and_store):
    app, _ = app_and_store
    client = TestClient(app)
    for path in ("/", "/review", "/stats"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/login"
    for path in ("/files/img/chosen.png", "/files/1/0123456789abcdef0123456789abcdef"):
        assert client.get(path).status_code in (401, 404)
    assert client.post("/review/decide", data={"action": "accept"}).status_code == 401
    assert client.post("/review/undo").status_code == 401


def test_a_post_without_the_csrf_token_is_refused(app_and_store):
    app, store = app_and_store
    client, page = signed_in(app)
    item = re.search(r'name="item_id" value="(\d+)"', page).group(1)
    for token in (None, "forged"):
        data = {"item_id": item, "left": "chosen", "action": "accept", **({"csrf_token": token} if token else {})}
        assert client.post("/review/decide", data=data).status_code == 403
    assert client.post("/logout").status_code == 403
    assert store.decision_log() == []
    fresh = TestClient(app)  # the sign-in form needs it too
    assert fresh.post("/login", data={"username": "ann", "password": PASSWORD}).status_code == 403


def test_image_paths_cannot_leave_the_storage_root(app_and_store):
    app, _ = app_and_store
    client, page = signed_in(app)
    image = re.search(r'src="(/files/[^"]+)"', page).group(1)
    assert client.get(image).status_code == 200
    for path in (
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/img/%2e%2e/%2e%2e/secret.txt",
        "/files//etc/passwd",
        "/files/img/missing.png",
    ):
        response = client.get(path)
        assert response.status_code == 404 and "outside" not in response.text


def test_a_wrong_password_is_refused_without_saying_whether_the_user_exists(app_and_store):
    app, _ = app_and_store
    answers = []
    for username, password in (("ann", "wrong password"), ("nobody", "wrong password"), ("nobody", PASSWORD)):
        client = TestClient(app)
        token = csrf(client.get("/login").text)
        response = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
        assert response.status_code == 401
        answers.append(re.search(r'role="alert">([^<]+)<', response.text).group(1))
        assert client.get("/review", follow_redirects=False).status_code == 303
    assert len(set(answers)) == 1


def test_decisions_and_statistics_through_the_forms(app_and_store):
    app, store = app_and_store
    client, page = signed_in(app)
    for action in ("prefer-left", "reject", "accept"):
        fields = dict(re.findall(r'name="(csrf_token|item_id|left)" value="([^"]*)"', page))
        page = client.post(
            "/review/decide",
            data={**fields, "action": action, "reason": ["artifact"] if action == "reject" else [], "seconds": "2.5"},
        ).text
    log = store.decision_log()
    assert [row["decision"] for row in log][1:] == ["reject", "accept"]
    first = log[0]
    assert first["decision"] == ("accept" if first["left"] == "chosen" else "reject")  # left picked as better
    assert log[1]["reasons"] == '["artifact"]' and log[1]["seconds"] == 2.5
    stats = client.get("/stats").text
    assert "batch-web" in stats and "ann" in stats and "50%" in stats


def sign_in_without_following(app) -> TestClient:
    client = TestClient(app)
    token = csrf(client.get("/login").text)
    response = client.post(
        "/login", data={"username": "ann", "password": PASSWORD, "csrf_token": token}, follow_redirects=False
    )
    assert response.status_code == 303
    return client


@pytest.mark.parametrize("token", ["é", "forged-é-token", "\u2603" * 40])
def test_a_non_ascii_csrf_token_is_refused_not_an_error(app_and_store, token):
    app, store = app_and_store
    client = TestClient(app)
    client.get("/login")
    response = client.post("/login", data={"username": "ann", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 403
    signed = sign_in_without_following(app)
    assert signed.post("/logout", data={"csrf_token": token}).status_code == 403
    assert signed.post("/review/undo", data={"csrf_token": token}).status_code == 403


def test_a_csrf_token_sent_as_a_file_upload_is_refused_not_an_error(app_and_store):
    app, _ = app_and_store
    client = TestClient(app)
    token = csrf(client.get("/login").text)
    response = client.post(
        "/login", data={"username": "ann", "password": PASSWORD}, files={"csrf_token": ("token.txt", token.encode())}
    )
    assert response.status_code == 403
    fields = {"username": ("u.txt", b"ann"), "password": ("p.txt", PASSWORD.encode())}
    response = client.post("/login", data={"csrf_token": token}, files=fields)
    assert response.status_code in (400, 401)


def test_a_session_of_a_deleted_reviewer_is_signed_out_not_an_error(app_and_store):
    import sqlalchemy as sa

    from idglow.review.store import leases, reviewers

    app, store = app_and_store
    client = sign_in_without_following(app)
    with store.engine.begin() as db:
        db.execute(leases.delete())
        db.execute(reviewers.delete().where(reviewers.c.username == "ann"))
    assert store.reviewer("ann") is None and sa  # gone, as if removed by an administrator
    response = client.get("/review", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert client.get("/stats", follow_redirects=False).headers["location"] == "/login"
    assert client.post("/review/decide", data={"action": "accept", "item_id": "1"}).status_code == 401
    assert store.decision_log() == []


def test_a_preference_is_recorded_against_the_side_the_server_showed(app_and_store):
    app, store = app_and_store
    client, page = signed_in(app)
    fields = dict(re.findall(r'name="(csrf_token|item_id)" value="([^"]*)"', page))
    shown = store.claim(store.reviewer("ann")["id"], "ann")  # the lease the page was rendered from
    assert shown.item_id == int(fields["item_id"])
    lie = "rejected" if shown.left == "chosen" else "chosen"
    client.post("/review/decide", data={**fields, "left": lie, "action": "prefer-left"})
    (row,) = store.decision_log()
    assert row["left"] == shown.left
    assert row["decision"] == ("accept" if shown.left == "chosen" else "reject")


def test_the_statistics_page_shows_the_number_of_items_per_batch(app_and_store):
    app, _ = app_and_store
    client, _ = signed_in(app)
    stats = client.get("/stats").text
    assert "built-in method" not in stats
    assert re.search(r"<td>batch-web</td><td>6</td><td>0</td>", stats), stats


def test_out_of_range_numbers_are_refused_not_an_error(app_and_store):
    app, store = app_and_store
    client, page = signed_in(app)
    token = csrf(page)
    huge = "9" * 30
    assert client.get(f"/files/{huge}/{'0' * 32}").status_code == 404
    for item_id, seconds in ((huge, "1"), ("-1", "1"), ("1", "nan"), ("1", "inf")):
        response = client.post(
            "/review/decide",
            data={"csrf_token": token, "item_id": item_id, "action": "skip", "seconds": seconds},
            follow_redirects=False,
        )
        assert response.status_code == 303
    log = store.decision_log()
    assert len(log) == 1 and log[0]["seconds"] is None  # the one skip of the held item, its time unknown


def test_relative_payload_paths_are_served_from_the_storage_root_the_app_is_started_with(tmp_path):
    from PIL import Image

    from idglow.review.security import hash_password
    from idglow.review.store import ReviewStore

    # What review_queue publishes: paths relative to the storage root, which may have moved since.
    storage = tmp_path / "mounted" / "storage"
    (storage / "img").mkdir(parents=True)
    for name in ("chosen", "rejected", "portrait"):
        Image.new("RGB", (32, 32), (10, 20, 30)).save(storage / "img" / f"{name}.png")
    (tmp_path / "mounted" / "secret.png").write_bytes((storage / "img" / "chosen.png").read_bytes())
    store = ReviewStore(tmp_path / "review" / "review.sqlite", lease_seconds=120)
    store.add_reviewer("ann", hash_password(PASSWORD))
    store.publish(
        "batch-relative",
        "test",
        [
            {
                "pair_id": "pair-0",
                "prompt": "Two friends, relative",
                "task": "group_fusion",
                "n_subjects": 1,
                "condition_paths": ["../secret.png"],
                "chosen_path": "img/chosen.png",
                "rejected_path": "img/rejected.png",
                "scores": {"chosen": {"identity": 0.5}, "rejected": {"identity": 0.3}},
                "deltas": {"identity": 0.2},
            }
        ],
    )
    client, page = signed_in(create_app(store, storage, "test-secret-" + "x" * 20))
    images = dict.fromkeys(re.findall(r'src="(/files/[^"]+)"', page))
    # Both sides from the root given now; the portrait that climbs out of it is never served.
    assert sorted(client.get(url).status_code for url in images) == [200, 200, 404]
