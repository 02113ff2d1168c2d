"""The reviewer web app: server-rendered pages, a little JavaScript for the keyboard.

    idglow review serve --host 127.0.0.1 --port 8765

Every page and image needs a signed-in session, and a session is a row in the database that the
cookie names: signing out deletes it, so a copied cookie stops working. Every form post carries
the session's CSRF token. Sign-ins are limited per account and per client address, and the
password is checked off the event loop. Only the images that items name are served, each under
an opaque token (``/files/<item id>/<token>``), never a path. A reviewer holds one item at a time
(a lease that expires); left and right are randomised per showing, stored with the lease, and a
preference is read against the lease, not against what the browser sends.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from idglow.review.rules import fleiss, pairwise_cohen_kappa
from idglow.review.security import LoginLimits, csrf_matches, file_token, new_csrf_token, same_token, verify_password
from idglow.review.store import REJECT_REASONS, ReviewError, ReviewStore
from idglow.storage import resolve_under

TEMPLATES = Environment(loader=PackageLoader("idglow.review", "templates"), autoescape=select_autoescape())
SESSION_SECONDS = 12 * 3600


def _page(
    name: str, request: Request, user: dict | None = None, status: int = 200, headers: dict | None = None, **values
) -> HTMLResponse:
    session = request.session
    if not isinstance(session.get("csrf"), str):
        session["csrf"] = new_csrf_token()
    html = TEMPLATES.get_template(name).render(csrf=session["csrf"], user=user, **values)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


def _text(form: FormData, name: str) -> str | None:
    """A form field's text; None when it is missing or was sent as a file."""
    value = form.get(name)
    return value if isinstance(value, str) else None


async def _form_with_csrf(request: Request) -> FormData | None:
    form = await request.form()
    if not csrf_matches(request.session.get("csrf"), form.get("csrf_token")):
        return None
    return form


def _item_id(text: str | None) -> int:
    """An item id from a form or URL; SQLite integers are 64-bit, so anything larger names no item
    (and would overflow the driver instead of missing)."""
    value = int(text or "")
    if not 0 < value < 2**63:
        raise ValueError(f"there is no item {value}")
    return value


def _seconds(text: str | None) -> float | None:
    value = float(text or 0)
    return value if math.isfinite(value) and value > 0 else None


def item_files(payload: dict) -> Iterator[tuple[str, int, str]]:
    """The files an item names, as (role, index, path): the only files the app serves."""
    for role in ("chosen", "rejected"):
        if isinstance(payload.get(role + "_path"), str):
            yield role, 0, payload[role + "_path"]
    for index, path in enumerate(payload.get("condition_paths") or []):
        if isinstance(path, str):
            yield "condition", index, path


def _sqlite_files(store: ReviewStore) -> set[Path]:
    if not store.url.startswith("sqlite:///"):
        return set()
    database = Path(store.url.removeprefix("sqlite:///")).resolve()
    return {database, *(database.with_name(database.name + suffix) for suffix in ("-wal", "-shm", "-journal"))}


def _served_file(root: Path, named: str) -> Path | None:
    """The file a payload names: a relative path (what tables store) under the storage root the
    app serves now, an absolute one (payloads published before paths were stored relative) as
    it is; None for a path that climbs out of the root. The caller still checks it is inside."""
    if Path(named).is_absolute():
        return Path(named).resolve()
    try:
        return resolve_under(root, named).resolve()
    except ValueError:
        return None


def create_app(
    store: ReviewStore,
    storage_root: Path,
    secret: str,
    limits: LoginLimits = LoginLimits(),
    private_files: Iterable[Path] = (),
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The app over ``store``. Images are served only when an item names them and they lie inside
    ``storage_root``; the database's files and ``private_files`` (the session secret) never are."""
    root = storage_root.resolve()
    never_served = _sqlite_files(store) | {Path(p).resolve() for p in private_files}

    def signed_in(request: Request) -> dict | None:
        """The reviewer of the request's live session. A cookie naming a closed or unknown session,
        or a reviewer who is gone, signs the browser out."""
        token = request.session.get("sid")
        reviewer = store.session_reviewer(token, clock()) if isinstance(token, str) and token else None
        if reviewer is None:
            if set(request.session) - {"csrf"}:
                request.session.clear()
            return None
        return {"id": reviewer["id"], "name": reviewer["username"], "admin": bool(reviewer["is_admin"])}

    def file_url(item_id: int, role: str, index: int = 0) -> str:
        return f"/files/{item_id}/{file_token(secret, item_id, role, index)}"

    async def login_page(request: Request):
        return _page("login.html", request)

    async def login(request: Request):
        form = await _form_with_csrf(request)
        if form is None:
            return _page("login.html", request, status=403, error="The form expired; please sign in again.")
        username, password = _text(form, "username"), _text(form, "password")
        if username is None or password is None:
            return _page("login.html", request, status=400, error="Send a username and a password.")
        account = f"account:{username[:100]}"
        address = f"address:{request.client.host if request.client else 'unknown'}"
        wait = store.admit_sign_in(
            {account: limits.account_failures, address: limits.address_failures}, limits, clock()
        )
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            return _page(
                "login.html",
                request,
                status=429,
                headers={"Retry-After": str(seconds)},
                error=f"Too many failed sign-ins; try again in {seconds} seconds.",
            )
        reviewer = store.reviewer(username)
        # scrypt takes tens of milliseconds of CPU: in a worker thread, so other requests go on.
        correct = await run_in_threadpool(verify_password, password, reviewer["password_hash"] if reviewer else None)
        if not correct:
            return _page("login.html", request, status=401, error="Wrong username or password.")
        store.signed_in(account, [address])
        request.session.clear()  # a fresh session (and CSRF token) on sign-in
        request.session["sid"] = store.open_session(reviewer["id"], SESSION_SECONDS, clock())
        request.session["csrf"] = new_csrf_token()
        return RedirectResponse("/review", status_code=303)

    async def logout(request: Request):
        if await _form_with_csrf(request) is None:
            return Response("missing or wrong CSRF token", status_code=403)
        token = request.session.get("sid")
        if isinstance(token, str):
            store.close_session(token)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def home(request: Request):
        return RedirectResponse("/review" if signed_in(request) else "/login", status_code=303)

    async def review(request: Request):
        user = signed_in(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        claim = store.claim(user["id"], user["name"])
        if claim is None:
            return _page("empty.html", request, user)
        payload = claim.payload
        right = "rejected" if claim.left == "chosen" else "chosen"
        return _page(
            "review.html",
            request,
            user,
            item=claim,
            prompt=payload.get("prompt", ""),
            task=payload.get("task", ""),
            conditions=[
                file_url(claim.item_id, "condition", i) for i, _ in enumerate(payload.get("condition_paths", []))
            ],
            left_url=file_url(claim.item_id, claim.left),
            right_url=file_url(claim.item_id, right),
            scores={"left": _scores(payload, claim.left), "right": _scores(payload, right)},
            reasons=list(enumerate(REJECT_REASONS, start=3)),
            lease_seconds=int(claim.expires_at - time.time()),
            message=request.session.pop("message", None),
        )

    async def decide(request: Request):
        user = signed_in(request)
        if user is None:
            return Response("sign in first", status_code=401)
        form = await _form_with_csrf(request)
        if form is None:
            return Response("missing or wrong CSRF token", status_code=403)
        try:
            # A "left" field from the browser is ignored: the lease knows what was shown.
            reasons = [r for r in form.getlist("reason") if isinstance(r, str) and r]
            store.decide(
                user["id"],
                user["name"],
                _item_id(_text(form, "item_id")),
                _text(form, "action") or "",
                reasons,
                _seconds(_text(form, "seconds")),
            )
        except (ReviewError, ValueError) as error:
            request.session["message"] = str(error)
        return RedirectResponse("/review", status_code=303)

    async def undo(request: Request):
        user = signed_in(request)
        if user is None:
            return Response("sign in first", status_code=401)
        if await _form_with_csrf(request) is None:
            return Response("missing or wrong CSRF token", status_code=403)
        try:
            item = store.undo_last(user["id"], user["name"])
            request.session["message"] = "Undone: the item is back." if item else "Nothing to undo."
        except ReviewError as error:
            request.session["message"] = str(error)
        return RedirectResponse("/review", status_code=303)

    async def stats(request: Request):
        user = signed_in(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        return _page("stats.html", request, user, **review_statistics(store))

    async def files(request: Request):
        if signed_in(request) is None:
            return Response("sign in first", status_code=401)
        item_id, token = request.path_params["item_id"], request.path_params["token"]
        payload = store.item_payload(item_id) if 0 < item_id < 2**63 else None
        payload = payload or {}
        named = [
            path
            for role, index, path in item_files(payload)
            if same_token(file_token(secret, item_id, role, index), token)
        ]
        wanted = _served_file(root, named[0]) if named else None
        if wanted is None or not wanted.is_relative_to(root) or wanted in never_served or not wanted.is_file():
            return Response("not found", status_code=404)
        return FileResponse(wanted, headers={"Cache-Control": "private, max-age=300"})

    routes = [
        Route("/", home),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/review", review, methods=["GET"]),
        Route("/review/decide", decide, methods=["POST"]),
        Route("/review/undo", undo, methods=["POST"]),
        Route("/stats", stats),
        Route("/files/{item_id:int}/{token}", files),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=secret,
            session_cookie="idglow_review",
            same_site="strict",
            max_age=SESSION_SECONDS,
        )
    ]
    return Starlette(routes=routes, middleware=middleware)


def _scores(payload: dict, side: str) -> dict:
    return {metric: round(value, 3) for metric, value in (payload.get("scores", {}).get(side) or {}).items()}


def review_statistics(store: ReviewStore) -> dict:
    """Progress per batch, throughput per reviewer, agreement, disagreements, gold accuracy."""
    batches, by_item, gold = [], {}, defaultdict(lambda: [0, 0])
    for batch_id in store.batch_ids():
        outcomes = store.item_outcomes(batch_id)
        decided = sum(o["final"] is not None for o in outcomes)
        accepted = sum(o["final"] == "accept" for o in outcomes)
        batches.append(
            {
                "batch": batch_id,
                "items": len(outcomes),
                "decided": decided,
                "progress": f"{decided / max(len(outcomes), 1):.0%}",
                "acceptance_rate": f"{accepted / decided:.2f}" if decided else "-",
            }
        )
        for o in outcomes:
            by_item[o["item_id"]] = {
                "pair_id": o["pair_id"],
                "batch": batch_id,
                "votes": dict(zip(o["reviewers"], o["decisions"], strict=True)),
            }
            if o["is_gold"]:
                for reviewer, vote in zip(o["reviewers"], o["decisions"], strict=True):
                    gold[reviewer][0] += vote == o["gold_answer"]
                    gold[reviewer][1] += 1
    throughput = defaultdict(lambda: {"decisions": 0, "first": None, "last": None, "seconds": []})
    for row in store.decision_log():
        if row["decision"] not in ("accept", "reject", "skip"):
            continue
        t = throughput[row["reviewer"]]
        t["decisions"] += 1
        t["first"] = row["created_at"] if t["first"] is None else t["first"]
        t["last"] = row["created_at"]
        if row["seconds"]:
            t["seconds"].append(row["seconds"])
    reviewers = [
        {
            "reviewer": name,
            "decisions": t["decisions"],
            "per_hour": round(t["decisions"] / max((t["last"] - t["first"]) / 3600, 1 / 60), 1),
            "median_seconds": round(sorted(t["seconds"])[len(t["seconds"]) // 2], 1) if t["seconds"] else "-",
            "gold_accuracy": f"{gold[name][0]}/{gold[name][1]}" if gold[name][1] else "-",
        }
        for name, t in sorted(throughput.items())
    ]
    votes = {item: v["votes"] for item, v in by_item.items() if len(v["votes"]) >= 2}
    disagreements = [
        {"batch": v["batch"], "pair_id": v["pair_id"], "votes": json.dumps(v["votes"])}
        for v in by_item.values()
        if len(set(v["votes"].values())) > 1
    ]
    return {
        "batches": batches,
        "reviewers": reviewers,
        "kappas": pairwise_cohen_kappa(votes),
        "fleiss": fleiss(votes),
        "disagreements": disagreements,
    }
