"""The reviewer web app: server-rendered pages, a little JavaScript for the keyboard.

    idglow review serve --host 127.0.0.1 --port 8765

Every page and image needs a signed-in session; every form post carries the session's CSRF
token; images are served only from inside the storage root. A reviewer holds one item at a time
(a lease that expires); left and right are randomised per showing and stored with the decision.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from idglow.review.rules import fleiss, pairwise_cohen_kappa
from idglow.review.security import csrf_matches, new_csrf_token, verify_password
from idglow.review.store import PREFERENCE_REVERSED, REJECT_REASONS, ReviewError, ReviewStore

TEMPLATES = Environment(loader=PackageLoader("idglow.review", "templates"), autoescape=select_autoescape())


def _page(name: str, request: Request, status: int = 200, **values) -> HTMLResponse:
    session = request.session
    if "csrf" not in session:
        session["csrf"] = new_csrf_token()
    html = TEMPLATES.get_template(name).render(csrf=session["csrf"], user=session.get("user"), **values)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def _signed_in(request: Request) -> dict | None:
    return request.session.get("user")


async def _form_with_csrf(request: Request):
    form = await request.form()
    if not csrf_matches(request.session.get("csrf"), form.get("csrf_token")):
        return None
    return form


def decision_from_key(action: str, left: str) -> tuple[str, list[str]]:
    """What a key press means: 1/left and 2/right pick the better image, which accepts the pair
    when it is the proposed chosen image and rejects it otherwise."""
    if action in ("accept", "reject", "skip"):
        return action, []
    if action in ("prefer-left", "prefer-right"):
        picked = left if action == "prefer-left" else ("rejected" if left == "chosen" else "chosen")
        return ("accept", []) if picked == "chosen" else ("reject", [PREFERENCE_REVERSED])
    raise ReviewError(f"unknown action {action!r}")


def create_app(store: ReviewStore, storage_root: Path, secret: str) -> Starlette:
    root = storage_root.resolve()

    async def login_page(request: Request):
        return _page("login.html", request)

    async def login(request: Request):
        form = await _form_with_csrf(request)
        if form is None:
            return _page("login.html", request, status=403, error="The form expired; please sign in again.")
        reviewer = store.reviewer(str(form.get("username", "")))
        if not verify_password(str(form.get("password", "")), reviewer["password_hash"] if reviewer else None):
            return _page("login.html", request, status=401, error="Wrong username or password.")
        request.session.clear()  # a fresh session (and CSRF token) on sign-in
        request.session["user"] = {"id": reviewer["id"], "name": reviewer["username"], "admin": bool(reviewer["is_admin"])}
        request.session["csrf"] = new_csrf_token()
        return RedirectResponse("/review", status_code=303)

    async def logout(request: Request):
        if await _form_with_csrf(request) is None:
            return Response("missing or wrong CSRF token", status_code=403)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def home(request: Request):
        return RedirectResponse("/review" if _signed_in(request) else "/login", status_code=303)

    async def review(request: Request):
        user = _signed_in(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        claim = store.claim(user["id"], user["name"])
        if claim is None:
            return _page("empty.html", request)
        payload = claim.payload
        images = {"chosen": payload["chosen_path"], "rejected": payload["rejected_path"]}
        right = "rejected" if claim.left == "chosen" else "chosen"
        return _page(
            "review.html", request, item=claim, prompt=payload.get("prompt", ""), task=payload.get("task", ""),
            conditions=[_url(root, p) for p in payload.get("condition_paths", [])],
            left_url=_url(root, images[claim.left]), right_url=_url(root, images[right]),
            scores={"left": _scores(payload, claim.left), "right": _scores(payload, right)},
            reasons=list(enumerate(REJECT_REASONS, start=3)), lease_seconds=int(claim.expires_at - time.time()),
            message=request.session.pop("message", None),
        )

    async def decide(request: Request):
        user = _signed_in(request)
        if user is None:
            return Response("sign in first", status_code=401)
        form = await _form_with_csrf(request)
        if form is None:
            return Response("missing or wrong CSRF token", status_code=403)
        try:
            decision, implied = decision_from_key(str(form.get("action")), str(form.get("left")))
            reasons = implied + [r for r in form.getlist("reason") if r]
            seconds = float(form.get("seconds") or 0) or None
            store.decide(user["id"], user["name"], int(form.get("item_id")), decision, reasons, seconds)
        except (ReviewError, ValueError, TypeError) as error:
            request.session["message"] = str(error)
        return RedirectResponse("/review", status_code=303)

    async def undo(request: Request):
        user = _signed_in(request)
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
        if _signed_in(request) is None:
            return RedirectResponse("/login", status_code=303)
        return _page("stats.html", request, **review_statistics(store))

    async def files(request: Request):
        if _signed_in(request) is None:
            return Response("sign in first", status_code=401)
        wanted = (root / request.path_params["path"]).resolve()
        if not wanted.is_relative_to(root) or not wanted.is_file():
            return Response("not found", status_code=404)
        return FileResponse(wanted, headers={"Cache-Control": "private, max-age=300"})

    routes = [
        Route("/", home), Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]), Route("/review", review, methods=["GET"]),
        Route("/review/decide", decide, methods=["POST"]), Route("/review/undo", undo, methods=["POST"]),
        Route("/stats", stats), Route("/files/{path:path}", files),
    ]
    middleware = [Middleware(SessionMiddleware, secret_key=secret, session_cookie="idglow_review", same_site="strict",
                             max_age=12 * 3600)]
    return Starlette(routes=routes, middleware=middleware)


def _url(root: Path, path: str) -> str:
    resolved = Path(path).resolve()
    return "/files/" + str(resolved.relative_to(root)) if resolved.is_relative_to(root) else ""


def _scores(payload: dict, side: str) -> dict:
    return {metric: round(value, 3) for metric, value in (payload.get("scores", {}).get(side) or {}).items()}


def review_statistics(store: ReviewStore) -> dict:
    """Progress per batch, throughput per reviewer, agreement, disagreements, gold accuracy."""
    batches, by_item, gold = [], {}, defaultdict(lambda: [0, 0])
    for batch_id in store.batch_ids():
        outcomes = store.item_outcomes(batch_id)
        decided = sum(o["final"] is not None for o in outcomes)
        accepted = sum(o["final"] == "accept" for o in outcomes)
        batches.append({"batch": batch_id, "items": len(outcomes), "decided": decided,
                        "progress": f"{decided / max(len(outcomes), 1):.0%}",
                        "acceptance_rate": f"{accepted / decided:.2f}" if decided else "-"})
        for o in outcomes:
            by_item[o["item_id"]] = {"pair_id": o["pair_id"], "batch": batch_id,
                                     "votes": dict(zip(o["reviewers"], o["decisions"], strict=True))}
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
    reviewers = [{"reviewer": name, "decisions": t["decisions"],
                  "per_hour": round(t["decisions"] / max((t["last"] - t["first"]) / 3600, 1 / 60), 1),
                  "median_seconds": round(sorted(t["seconds"])[len(t["seconds"]) // 2], 1) if t["seconds"] else "-",
                  "gold_accuracy": f"{gold[name][0]}/{gold[name][1]}" if gold[name][1] else "-"}
                 for name, t in sorted(throughput.items())]
    votes = {item: v["votes"] for item, v in by_item.items() if len(v["votes"]) >= 2}
    disagreements = [{"batch": v["batch"], "pair_id": v["pair_id"], "votes": json.dumps(v["votes"])}
                     for v in by_item.values() if len(set(v["votes"].values())) > 1]
    return {"batches": batches, "reviewers": reviewers, "kappas": pairwise_cohen_kappa(votes),
            "fleiss": fleiss(votes), "disagreements": disagreements}
