"""The review queue's database: batches of pairs, items with leases, an append-only decision log.

SQLite (WAL) by default, Postgres by URL; the schema is created and upgraded by Alembic
migrations (``idglow/review/migrations``). Writes that hand out or fill a slot run in one
serialised transaction (SQLite: ``BEGIN IMMEDIATE``; Postgres: row locks), so twenty reviewers
at once never get the same item beyond its overlap and never lose or double a decision.

Decisions are never updated or deleted: an undo is a row of its own that points at the decision
it withdraws. An item's effective decisions are its accepts and rejects that no undo withdrew;
its final decision follows the batch's rule once it has ``overlap`` of them.

Signed-in sessions live here too (``review_sessions``: a cookie only names a row, so signing out
deletes it and a copied cookie stops working), and so do the counts of failed sign-ins
(``review_login_throttle``), so a lock holds across restarts and across server processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from idglow import __version__ as APP_VERSION
from idglow.review.rules import FinalRule, final_decision
from idglow.review.security import LoginLimits

METADATA = sa.MetaData()

reviewers = sa.Table(
    "reviewers",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", sa.String(80), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(300), nullable=False),
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
batches = sa.Table(
    "review_batches",
    METADATA,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("overlap", sa.Integer, nullable=False),
    sa.Column("rule", sa.Text, nullable=False),  # FinalRule as JSON
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
)
items = sa.Table(
    "review_items",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("batch_id", sa.String(80), sa.ForeignKey("review_batches.id"), nullable=False, index=True),
    sa.Column("pair_id", sa.String(200), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # what the reviewer is shown (JSON)
    sa.Column("is_gold", sa.Boolean, nullable=False, default=False),
    sa.Column("gold_answer", sa.String(10), nullable=True),
    # How many standing decisions the item has: kept in step with the log in the same transaction
    # that appends to it, so handing out slots does not re-read the whole log.
    sa.Column("standing", sa.Integer, nullable=False, default=0),
    sa.UniqueConstraint("batch_id", "pair_id"),
)
leases = sa.Table(
    "review_leases",
    METADATA,
    sa.Column("item_id", sa.Integer, sa.ForeignKey("review_items.id"), primary_key=True),
    sa.Column("reviewer_id", sa.Integer, sa.ForeignKey("reviewers.id"), primary_key=True),
    sa.Column("left", sa.String(10), nullable=False),  # which image is shown on the left: chosen | rejected
    sa.Column("expires_at", sa.Float, nullable=False),
)
decisions = sa.Table(
    "review_decisions",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("review_items.id"), nullable=False, index=True),
    sa.Column("reviewer", sa.String(80), nullable=False, index=True),
    sa.Column("decision", sa.String(10), nullable=False),  # accept | reject | skip | undo
    sa.Column("reasons", sa.Text, nullable=False, default="[]"),
    sa.Column("left", sa.String(10), nullable=True),
    sa.Column("seconds", sa.Float, nullable=True),  # time the reviewer took
    sa.Column("automatic", sa.Boolean, nullable=False, default=False),
    sa.Column("undoes", sa.Integer, nullable=True, index=True),
    sa.Column("app_version", sa.String(40), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_review_decisions_reviewer_item", "reviewer", "item_id"),
)
events = sa.Table(  # housekeeping that is not a decision: reclaimed leases
    "review_events",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

sessions = sa.Table(  # one row per signed-in browser; the cookie carries the token, the table its hash
    "review_sessions",
    METADATA,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("reviewer_id", sa.Integer, sa.ForeignKey("reviewers.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
login_throttle = sa.Table(  # failed sign-ins per key: "account:<name>" or "address:<client address>"
    "review_login_throttle",
    METADATA,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),  # attempts counted in the current window
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("locked_until", sa.Float, nullable=False),
    sa.Column("lockouts", sa.Integer, nullable=False),  # locks in a row: each one lasts twice the last
    sa.Column("last_attempt_at", sa.Float, nullable=False),
)

DECISIONS = ("accept", "reject", "skip")
PREFERENCES = ("prefer-left", "prefer-right")  # resolved against the side the server showed
REJECT_REASONS = ("identity mismatch", "artifact", "wrong number of people", "prompt mismatch")
PREFERENCE_REVERSED = "rejected image is better"  # implied when the reviewer picks the proposed rejected image


class ReviewError(Exception):
    """A request the queue refuses (with a reason the reviewer can read)."""


@dataclass
class Claim:
    item_id: int
    batch_id: str
    pair_id: str
    payload: dict
    left: str
    expires_at: float


def preference_decision(preference: str, left: str) -> tuple[str, list[str]]:
    """What picking a side means, given which image the server showed on the left: picking the
    proposed chosen image accepts the pair, picking the proposed rejected image rejects it."""
    picked = left if preference == "prefer-left" else ("rejected" if left == "chosen" else "chosen")
    return ("accept", []) if picked == "chosen" else ("reject", [PREFERENCE_REVERSED])


def review_home(storage_root: Path) -> Path:
    """Where the review database and the session secret live by default: ``IDGLOW_REVIEW_HOME``,
    or ``<storage root>-review`` beside the storage root. Never inside it: the storage root holds
    the images the app serves, and neither the secret nor the password hashes may sit among them."""
    if os.environ.get("IDGLOW_REVIEW_HOME"):
        return Path(os.environ["IDGLOW_REVIEW_HOME"]).absolute()
    root = storage_root.absolute()
    return root.with_name(f"{root.name}-review")


def default_database(storage_root: Path) -> Path:
    return review_home(storage_root) / "review.sqlite"


def _token_hash(token: str) -> str:
    # Only a hash is stored, so a copy of the database does not hand out live sessions.
    return hashlib.sha256(token.encode()).hexdigest()


def database_url(path_or_url: str | Path) -> str:
    text = str(path_or_url)
    return text if "://" in text else f"sqlite:///{Path(text).absolute()}"


def make_engine(url: str) -> Engine:
    """An engine with SQLite set to WAL and to take the write lock when a transaction begins."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_settings(connection, _record):
            connection.isolation_level = None  # SQLAlchemy issues BEGIN itself (below)
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_size=20, max_overflow=20)


class ReviewStore:
    def __init__(self, url: str | Path, lease_seconds: float = 300.0, migrate: bool = True):
        self.url = database_url(url)
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(self.url)
        self.lease_seconds = lease_seconds
        if migrate:
            from idglow.review.migrate import upgrade

            upgrade(self.url)

    # ------------------------------------------------------------------ reviewers

    def add_reviewer(self, username: str, password_hash: str, is_admin: bool = False) -> int:
        with self.engine.begin() as db:
            if db.execute(sa.select(reviewers.c.id).where(reviewers.c.username == username)).first():
                raise ReviewError(f"reviewer {username!r} exists already")
            return db.execute(
                reviewers.insert().values(
                    username=username, password_hash=password_hash, is_admin=is_admin, created_at=time.time()
                )
            ).inserted_primary_key[0]

    def reviewer(self, username: str) -> dict | None:
        with self.engine.connect() as db:
            row = db.execute(sa.select(reviewers).where(reviewers.c.username == username)).mappings().first()
        return dict(row) if row else None

    # ------------------------------------------------------------------- sessions

    def open_session(self, reviewer_id: int, lifetime: float, now: float | None = None) -> str:
        """A new session for the reviewer; returns the token the cookie carries."""
        now = time.time() if now is None else now
        token = secrets.token_urlsafe(32)
        with self.engine.begin() as db:
            db.execute(sessions.delete().where(sessions.c.expires_at <= now))  # housekeeping, cheap with few rows
            db.execute(
                sessions.insert().values(
                    token_hash=_token_hash(token), reviewer_id=reviewer_id, created_at=now, expires_at=now + lifetime
                )
            )
        return token

    def session_reviewer(self, token: str, now: float | None = None) -> dict | None:
        """The reviewer whose live session the token names; None when it was closed, has expired, or
        its reviewer is gone."""
        now = time.time() if now is None else now
        query = (
            sa.select(reviewers.c.id, reviewers.c.username, reviewers.c.is_admin)
            .join(sessions, sessions.c.reviewer_id == reviewers.c.id)
            .where(sessions.c.token_hash == _token_hash(token), sessions.c.expires_at > now)
        )
        with self.engine.connect() as db:
            row = db.execute(query).mappings().first()
        return dict(row) if row else None

    def close_session(self, token: str) -> None:
        with self.engine.begin() as db:
            db.execute(sessions.delete().where(sessions.c.token_hash == _token_hash(token)))

    # ------------------------------------------------------------ sign-in limits

    def admit_sign_in(self, allowed: dict[str, int], limits: LoginLimits, now: float | None = None) -> float | None:
        """Count a sign-in attempt against each key (key -> failures it may have in a window) before
        the password is checked, so a burst of parallel guesses is counted as it arrives. Returns
        None when admitted, else the seconds until the caller may try again (nothing is counted
        then: waiting out a lock is what ends it)."""
        now = time.time() if now is None else now
        with self.engine.begin() as db:
            rows = {key: self._throttle_row(db, key, limits, now) for key in allowed}
            waits = [row["locked_until"] - now for row in rows.values() if row["locked_until"] > now]
            if not waits:
                waits = self._count_or_lock(rows, allowed, limits, now)
                for key, row in rows.items():
                    db.execute(login_throttle.delete().where(login_throttle.c.key == key))
                    db.execute(login_throttle.insert().values(key=key, **row))
        return max(waits) if waits else None

    @staticmethod
    def _count_or_lock(rows: dict[str, dict], allowed: dict[str, int], limits: LoginLimits, now: float) -> list[float]:
        """A key that has used up its failures is locked now and the attempt refused (the seconds to
        wait are returned); otherwise the attempt counts against every key."""
        full = [key for key, row in rows.items() if row["failures"] >= allowed[key]]
        for key in full:
            row = rows[key]
            row.update(lockouts=row["lockouts"] + 1, failures=0, window_start=now)
            row["locked_until"] = now + limits.lock_for(row["lockouts"])
        for row in rows.values():
            row["failures"] += 0 if full else 1
            row["last_attempt_at"] = now
        return [rows[key]["locked_until"] - now for key in full]

    @staticmethod
    def _throttle_row(db, key: str, limits: LoginLimits, now: float) -> dict:
        row = db.execute(sa.select(login_throttle).where(login_throttle.c.key == key)).mappings().first()
        fresh = {"failures": 0, "window_start": now, "locked_until": 0.0, "lockouts": 0, "last_attempt_at": now}
        if row is None or now - row["last_attempt_at"] > limits.forget_seconds:
            return fresh
        row = {name: value for name, value in row.items() if name != "key"}
        if now - row["window_start"] > limits.window_seconds and row["locked_until"] <= now:
            row.update(failures=0, window_start=now)
        return row

    def signed_in(self, account_key: str, other_keys: list[str]) -> None:
        """A correct password: its account starts afresh; the attempt counted against the other keys
        (the address) is taken back, without clearing them, so one good account cannot wipe the
        record of guesses from the same address."""
        with self.engine.begin() as db:
            db.execute(login_throttle.delete().where(login_throttle.c.key == account_key))
            db.execute(
                login_throttle.update()
                .where(login_throttle.c.key.in_(other_keys), login_throttle.c.failures > 0)
                .values(failures=login_throttle.c.failures - 1)
            )

    # -------------------------------------------------------------------- batches

    def publish(
        self,
        batch_id: str,
        source: str,
        pairs: list[dict],
        overlap: int = 1,
        rule: FinalRule | None = None,
        gold: list[dict] | None = None,
    ) -> int:
        """A batch of items (``pair_id`` and the payload shown); gold items carry ``gold_answer``.
        Publishing the same batch again adds nothing (idempotent); returns the item count."""
        rule = rule or FinalRule.for_overlap(overlap)
        with self.engine.begin() as db:
            if db.execute(sa.select(batches.c.id).where(batches.c.id == batch_id)).first():
                return db.execute(
                    sa.select(sa.func.count()).select_from(items).where(items.c.batch_id == batch_id)
                ).scalar_one()
            db.execute(
                batches.insert().values(
                    id=batch_id, source=source, overlap=overlap, rule=json.dumps(rule.__dict__), created_at=time.time()
                )
            )
            rows = [
                {
                    "batch_id": batch_id,
                    "pair_id": p["pair_id"],
                    "payload": json.dumps(p),
                    "is_gold": False,
                    "gold_answer": None,
                    "standing": 0,
                }
                for p in pairs
            ]
            rows += [
                {
                    "batch_id": batch_id,
                    "pair_id": g["pair_id"],
                    "payload": json.dumps(g),
                    "is_gold": True,
                    "gold_answer": g["gold_answer"],
                    "standing": 0,
                }
                for g in gold or []
            ]
            if rows:
                db.execute(items.insert(), rows)
            return len(rows)

    def item_payload(self, item_id: int) -> dict | None:
        with self.engine.connect() as db:
            payload = db.execute(sa.select(items.c.payload).where(items.c.id == item_id)).scalar_one_or_none()
        return json.loads(payload) if payload is not None else None

    def batch_ids(self) -> list[str]:
        with self.engine.connect() as db:
            return list(db.execute(sa.select(batches.c.id).order_by(batches.c.created_at)).scalars())

    # ---------------------------------------------------------------- the queue

    @staticmethod
    def _effective():
        """Decisions no undo withdrew (accept and reject)."""
        undo = decisions.alias("undo")
        return sa.and_(
            decisions.c.decision.in_(("accept", "reject")),
            ~sa.exists().where(sa.and_(undo.c.undoes == decisions.c.id, undo.c.decision == "undo")),
        )

    def _reclaim(self, db, now: float) -> None:
        expired = db.execute(sa.select(leases).where(leases.c.expires_at < now)).mappings().all()
        if expired:
            db.execute(leases.delete().where(leases.c.expires_at < now))
            db.execute(
                events.insert(),
                [
                    {
                        "kind": "lease_reclaimed",
                        "created_at": now,
                        "detail": json.dumps({"item_id": e["item_id"], "reviewer_id": e["reviewer_id"]}),
                    }
                    for e in expired
                ],
            )

    def claim(self, reviewer_id: int, username: str) -> Claim | None:
        """The reviewer's current item, or the next one with a free slot that they have not
        reviewed (or skipped); None when nothing is left for them."""
        now = time.time()
        with self.engine.begin() as db:
            self._reclaim(db, now)
            held = db.execute(sa.select(leases).where(leases.c.reviewer_id == reviewer_id)).mappings().first()
            if held is None:
                item_id = self._next_free(db, username)
                if item_id is None:
                    return None
                left = "chosen" if secrets.randbelow(2) else "rejected"  # so position cannot bias the choice
                db.execute(
                    leases.insert().values(
                        item_id=item_id, reviewer_id=reviewer_id, left=left, expires_at=now + self.lease_seconds
                    )
                )
                held = {"item_id": item_id, "left": left, "expires_at": now + self.lease_seconds}
            item = db.execute(sa.select(items).where(items.c.id == held["item_id"])).mappings().one()
        return Claim(
            item["id"], item["batch_id"], item["pair_id"], json.loads(item["payload"]), held["left"], held["expires_at"]
        )

    def _next_free(self, db, username: str) -> int | None:
        leased = sa.select(sa.func.count()).select_from(leases).where(leases.c.item_id == items.c.id).scalar_subquery()
        mine = decisions.alias("mine")
        withdrawn = decisions.alias("withdrawn")
        already = sa.exists().where(
            sa.and_(
                mine.c.reviewer == username,
                mine.c.item_id == items.c.id,
                mine.c.decision.in_(DECISIONS),
                ~sa.exists().where(withdrawn.c.undoes == mine.c.id),
            )
        )
        query = (
            sa.select(items.c.id)
            .join(batches, batches.c.id == items.c.batch_id)
            .where(
                batches.c.finished_at.is_(None),
                items.c.standing < batches.c.overlap,
                items.c.standing + leased < batches.c.overlap,
                ~already,
            )
            .order_by(items.c.id)
            .limit(1)
        )
        if not self.url.startswith("sqlite"):
            query = query.with_for_update(skip_locked=True, of=items)
        return db.execute(query).scalar_one_or_none()

    def decide(
        self,
        reviewer_id: int,
        username: str,
        item_id: int,
        decision: str,
        reasons: list[str] | None = None,
        seconds: float | None = None,
    ) -> int:
        """Record the reviewer's decision on the item they hold; returns the decision's id. A
        preference (``prefer-left``, ``prefer-right``) is read against the side the lease says was
        shown on the left, never against what a client claims."""
        if decision not in DECISIONS + PREFERENCES:
            raise ReviewError(f"unknown decision {decision!r}; expected one of {DECISIONS + PREFERENCES}")
        unknown = set(reasons or []) - {*REJECT_REASONS, PREFERENCE_REVERSED}
        if unknown:
            raise ReviewError(f"unknown reasons {sorted(map(str, unknown))}")
        now = time.time()
        with self.engine.begin() as db:
            lease = (
                db.execute(sa.select(leases).where(leases.c.item_id == item_id, leases.c.reviewer_id == reviewer_id))
                .mappings()
                .first()
            )
            if lease is None:
                raise ReviewError("this item is no longer yours (its lease expired); take the next one")
            db.execute(leases.delete().where(leases.c.item_id == item_id, leases.c.reviewer_id == reviewer_id))
            if decision in PREFERENCES:
                decision, implied = preference_decision(decision, lease["left"])
                reasons = implied + [r for r in reasons or [] if r not in implied]
            batch_id, overlap, standing = db.execute(
                sa.select(items.c.batch_id, batches.c.overlap, items.c.standing)
                .join(batches, batches.c.id == items.c.batch_id)
                .where(items.c.id == item_id)
            ).one()
            if decision != "skip" and standing >= overlap:
                raise ReviewError("this item already has all the reviews it needs")
            decision_id = db.execute(
                decisions.insert().values(
                    item_id=item_id,
                    reviewer=username,
                    decision=decision,
                    reasons=json.dumps(reasons or []),
                    left=lease["left"],
                    seconds=seconds,
                    automatic=False,
                    app_version=APP_VERSION,
                    created_at=now,
                )
            ).inserted_primary_key[0]
            if decision != "skip":
                db.execute(items.update().where(items.c.id == item_id).values(standing=items.c.standing + 1))
                if standing + 1 >= overlap:
                    self._close_finished(db, batch_id, overlap, now)
        return decision_id

    def undo_last(self, reviewer_id: int, username: str) -> int | None:
        """Withdraw the reviewer's last standing decision; they get that item back. Returns its id."""
        now = time.time()
        with self.engine.begin() as db:
            last = (
                db.execute(
                    sa.select(decisions)
                    .where(
                        decisions.c.reviewer == username,
                        decisions.c.decision.in_(DECISIONS),
                        ~sa.exists().where(sa.and_(decisions.alias("u").c.undoes == decisions.c.id)),
                    )
                    .order_by(decisions.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if last is None:
                return None
            batch = db.execute(
                sa.select(batches.c.finished_at)
                .join(items, items.c.batch_id == batches.c.id)
                .where(items.c.id == last["item_id"])
            ).scalar_one()
            if batch is not None:
                raise ReviewError("that batch is finished; its decisions are final")
            db.execute(
                decisions.insert().values(
                    item_id=last["item_id"],
                    reviewer=username,
                    decision="undo",
                    reasons="[]",
                    undoes=last["id"],
                    automatic=False,
                    app_version=APP_VERSION,
                    created_at=now,
                )
            )
            if last["decision"] != "skip":
                db.execute(items.update().where(items.c.id == last["item_id"]).values(standing=items.c.standing - 1))
            db.execute(leases.delete().where(leases.c.reviewer_id == reviewer_id))
            db.execute(
                leases.insert().values(
                    item_id=last["item_id"],
                    reviewer_id=reviewer_id,
                    left=last["left"] or "chosen",
                    expires_at=now + self.lease_seconds,
                )
            )
            return last["item_id"]

    def decide_automatically(self, batch_id: str, rule_name: str, decide) -> int:
        """Review mode ``auto``: ``decide(payload) -> accept | reject`` for every item without a
        decision, each labelled automatic and signed by the rule's name, then the batch is closed
        (the rule is the batch's one reviewer: publish it with overlap 1). Returns how many were written."""
        now = time.time()
        written = 0
        with self.engine.begin() as db:
            rows = db.execute(
                sa.select(items.c.id, items.c.payload).where(items.c.batch_id == batch_id, items.c.standing == 0)
            ).all()
            for item_id, payload in rows:
                db.execute(
                    decisions.insert().values(
                        item_id=item_id,
                        reviewer=rule_name,
                        decision=decide(json.loads(payload)),
                        reasons="[]",
                        automatic=True,
                        app_version=APP_VERSION,
                        created_at=now,
                    )
                )
                db.execute(items.update().where(items.c.id == item_id).values(standing=items.c.standing + 1))
                written += 1
            db.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.finished_at.is_(None))
                .values(finished_at=now)
            )
        return written

    def _close_finished(self, db, batch_id: str, overlap: int, now: float) -> None:
        open_items = db.execute(
            sa.select(sa.func.count())
            .select_from(items)
            .where(items.c.batch_id == batch_id, items.c.standing < overlap)
        ).scalar_one()
        if open_items == 0:
            db.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.finished_at.is_(None))
                .values(finished_at=now)
            )

    # ------------------------------------------------------------------ reading

    def decision_log(self, batch_id: str | None = None) -> list[dict]:
        query = sa.select(decisions, items.c.batch_id, items.c.pair_id).join(items, items.c.id == decisions.c.item_id)
        if batch_id is not None:
            query = query.where(items.c.batch_id == batch_id)
        with self.engine.connect() as db:
            return [dict(r) for r in db.execute(query.order_by(decisions.c.id)).mappings()]

    def item_outcomes(self, batch_id: str) -> list[dict]:
        """Per item: its effective decisions and its final decision under the batch's rule
        (None while it has fewer than ``overlap``)."""
        with self.engine.connect() as db:
            batch = db.execute(sa.select(batches).where(batches.c.id == batch_id)).mappings().one()
            rule = FinalRule(**json.loads(batch["rule"]))
            rows = (
                db.execute(sa.select(items).where(items.c.batch_id == batch_id).order_by(items.c.id)).mappings().all()
            )
            standing = (
                db.execute(
                    sa.select(decisions).where(self._effective(), decisions.c.item_id.in_([r["id"] for r in rows]))
                )
                .mappings()
                .all()
            )
        by_item: dict[int, list[dict]] = {}
        for d in standing:
            by_item.setdefault(d["item_id"], []).append(dict(d))
        return [
            {
                "item_id": r["id"],
                "pair_id": r["pair_id"],
                "is_gold": r["is_gold"],
                "gold_answer": r["gold_answer"],
                "decisions": [d["decision"] for d in by_item.get(r["id"], [])],
                "reviewers": [d["reviewer"] for d in by_item.get(r["id"], [])],
                "automatic": any(d["automatic"] for d in by_item.get(r["id"], [])),
                "final": final_decision([d["decision"] for d in by_item.get(r["id"], [])], rule),
            }
            for r in rows
        ]

    def finished_batches(self, after: float = 0.0) -> list[tuple[str, float]]:
        with self.engine.connect() as db:
            return [
                tuple(r)
                for r in db.execute(
                    sa.select(batches.c.id, batches.c.finished_at)
                    .where(batches.c.finished_at > after)
                    .order_by(batches.c.finished_at)
                )
            ]

    def reclaimed_leases(self) -> int:
        with self.engine.connect() as db:
            return db.execute(
                sa.select(sa.func.count()).select_from(events).where(events.c.kind == "lease_reclaimed")
            ).scalar_one()
