"""The users API (seed 004, production-grade): Flask + SQLAlchemy + PostgreSQL.

POST /users {"name": ...}      201 {"id", "name", "created_at"}; exactly once per request key
GET  /users?limit=&after_id=    users ordered by id, keyset-paginated (limit <= MAX_PAGE)
GET  /users/<id>                one user or a JSON 404
GET  /healthz                   checks the database
Config only from the environment: DB_HOST, DB_PORT, DB_NAME, DB_USER and DB_PASSWORD_FILE (the
password is read from a file, never from the environment), DB_WAIT_SECONDS, IDEMPOTENCY_KEY_SECONDS.
The schema is created by migrate(), which the deployment runs before gunicorn's workers start
(WSGI_MIGRATE).

Exactly once: a POST is recorded under a key in user_requests, in the transaction that inserts
the user. The key is the client's Idempotency-Key if it sent one, else the X-Request-ID the entry
proxy gives every request (the same when the proxy resends it), else a fresh one. The same key
again gets the first answer (201, the same user) and inserts nothing; with another body, a 422.
While the database restarts, a request waits for it (DB_WAIT_SECONDS), then answers a JSON 503.
"""

import hashlib
import json
import os
import random
import threading
import time
import uuid
from datetime import datetime, timedelta
from http import HTTPStatus

from flask import Flask, jsonify, request
from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, String, create_engine, delete, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.exceptions import HTTPException

NAME_MAX = 80
PAGE_DEFAULT = 50
PAGE_MAX = 200
KEY_MAX = 255
# A proxy's resend comes within seconds; a client's own retry may come hours later.
REQUEST_ID_SECONDS = 600
IDEMPOTENCY_KEY_SECONDS = 24 * 3600
CLEANUP_EVERY_SECONDS = 300


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class UserRequest(Base):
    """The key of a POST that created a user, kept until expires_at (index: the cleanup's scan)."""
    __tablename__ = "user_requests"
    key: Mapped[str] = mapped_column(String(KEY_MAX + 4), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey(User.id, ondelete="CASCADE"), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)


# Requests use SQLAlchemy Core on these tables: no ORM objects per row, less CPU per request.
USERS = User.__table__
REQUESTS = UserRequest.__table__


def as_dict(row):
    return {"id": row.id, "name": row.name, "created_at": row.created_at.isoformat()}


class BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def database_url(env):
    with open(env["DB_PASSWORD_FILE"], encoding="utf-8") as handle:
        password = handle.read().strip()
    return URL.create("postgresql+psycopg", username=env.get("DB_USER", "users"), password=password,
                      host=env.get("DB_HOST", "db"), port=int(env.get("DB_PORT", "5432")),
                      database=env.get("DB_NAME", "users"))


def make_engine(env):
    # Pre-ping (a round trip per checkout) finds connections a database restart closed;
    # DB_POOL_PRE_PING=0 saves that round trip (bench-users measures both).
    return create_engine(database_url(env), pool_pre_ping=env.get("DB_POOL_PRE_PING", "1") != "0",
                         pool_size=int(env.get("DB_POOL_SIZE", "5")), max_overflow=int(env.get("DB_POOL_OVERFLOW", "5")),
                         pool_timeout=5, connect_args={"connect_timeout": 3})


def migrate(env=os.environ):
    """Create the schema if it is missing; safe to run on every start and concurrently."""
    engine = make_engine(env)
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(4004)"))
        Base.metadata.create_all(connection)
    engine.dispose()


def parse_new_user():
    if request.mimetype != "application/json":
        raise BadRequest(415, "send the body as Content-Type: application/json")
    try:
        body = json.loads(request.get_data(cache=False) or b"")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object like {\"name\": \"Ada\"}")
    if "name" not in body:
        raise BadRequest(400, "name is required")
    name = body["name"]
    if not isinstance(name, str):
        raise BadRequest(400, "name must be a string")
    name = name.strip()
    if not name:
        raise BadRequest(400, "name must not be empty")
    if len(name) > NAME_MAX:
        raise BadRequest(400, f"name must be at most {NAME_MAX} characters")
    return name


def wait_deadline(wait_seconds):
    """time.monotonic() by which this request stops waiting for the database: wait_seconds after
    the entry proxy received it (X-Request-Start: t=<microseconds>, stamped once, so the proxy's
    resends to other replicas share the bound instead of each waiting again), else from now."""
    stamp = request.headers.get("X-Request-Start", "").removeprefix("t=")
    waited = time.time() - int(stamp) / 1e6 if stamp.isdigit() else 0.0
    return time.monotonic() + wait_seconds - min(max(waited, 0.0), wait_seconds)


def request_key(env):
    """(key, seconds to keep it) of this POST: the client's Idempotency-Key (a plain token or a
    quoted string, as in the IETF draft), else the proxy's X-Request-ID, else a fresh one (which
    still makes the app's own retry after a lost commit answer safe)."""
    client_key = request.headers.get("Idempotency-Key")
    if client_key is not None:
        client_key = client_key.strip().removeprefix('"').removesuffix('"')
        if not 1 <= len(client_key) <= KEY_MAX or not client_key.isascii() or not client_key.isprintable():
            raise BadRequest(400, f"Idempotency-Key must be 1 to {KEY_MAX} printable ASCII characters")
        return f"key:{client_key}", int(env.get("IDEMPOTENCY_KEY_SECONDS", IDEMPOTENCY_KEY_SECONDS))
    request_id = request.headers.get("X-Request-ID", "")[:KEY_MAX]
    return (f"rid:{request_id}" if request_id else f"new:{uuid.uuid4()}"), REQUEST_ID_SECONDS


def create_once(connection, name, key, keep_seconds):
    """The user created under `key`: inserted now, or the one its first request inserted."""
    fingerprint = hashlib.sha256(json.dumps({"name": name}).encode()).hexdigest()
    user = connection.execute(insert(USERS).values(name=name).returning(*USERS.c)).one()
    # A second request with this key waits here for the first one's transaction, then conflicts.
    claimed = connection.execute(pg_insert(REQUESTS).values(
        key=key, fingerprint=fingerprint, user_id=user.id, expires_at=func.now() + timedelta(seconds=keep_seconds),
    ).on_conflict_do_nothing(index_elements=[REQUESTS.c.key]).returning(REQUESTS.c.key)).first()
    if claimed:
        return user
    connection.rollback()  # the row just inserted goes: this key's first request made the user
    first = connection.execute(select(REQUESTS.c.fingerprint, *USERS.c).join(USERS, USERS.c.id == REQUESTS.c.user_id)
                               .where(REQUESTS.c.key == key)).one()
    if first.fingerprint != fingerprint:
        raise BadRequest(422, "this Idempotency-Key was already used with another body")
    return first


def delete_expired_keys(engine, batch_size=5000):
    """Deletes expired request keys, a batch per transaction (short locks); returns how many."""
    batch = select(REQUESTS.c.key).where(REQUESTS.c.expires_at < func.now()).limit(batch_size).scalar_subquery()
    total = 0
    while True:
        with engine.begin() as connection:
            deleted = connection.execute(delete(REQUESTS).where(REQUESTS.c.key.in_(batch))).rowcount
        total += deleted
        if deleted < batch_size:
            return total


def clean_expired_keys(engine, every):
    """delete_expired_keys every `every` seconds (spread out), off the request path. It runs in
    each worker; any worker's pass is enough."""
    while True:
        time.sleep(every * random.uniform(0.5, 1.5))
        try:
            delete_expired_keys(engine)
        except DBAPIError:
            pass  # the database is down: the next pass cleans up


def int_arg(name, default, low, high):
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(400, f"{name} must be an integer from {low} to {high}")
    return int(raw)


def create_app(env=os.environ):
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(env.get("MAX_BODY_BYTES", "4096"))
    engine = make_engine(env)
    wait_seconds = float(env.get("DB_WAIT_SECONDS", "5"))
    reached = threading.Event()  # this process has reached the database once
    threading.Thread(target=clean_expired_keys, args=(engine, CLEANUP_EVERY_SECONDS), daemon=True).start()

    def in_transaction(work):
        """work(connection) in a transaction, committed. While a database this process has
        reached before cannot be reached (restarting, recovering from a crash), the whole unit
        is retried until wait_deadline(); then the error goes on to the JSON 503. One that was
        never reached (a wrong address, say) gets that 503 at once. Safe for POST: its key makes
        it happen once."""
        deadline, delay = wait_deadline(wait_seconds), 0.05
        while True:
            try:
                with engine.connect() as connection:
                    result = work(connection)
                    connection.commit()
                reached.set()
                return result
            except DBAPIError as error:
                if not (isinstance(error, OperationalError) or error.connection_invalidated) \
                        or not reached.is_set() or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, 0.5)

    @app.post("/users")
    def create_user():
        name = parse_new_user()
        key, keep_seconds = request_key(env)
        row = in_transaction(lambda connection: create_once(connection, name, key, keep_seconds))
        return jsonify(as_dict(row)), 201

    @app.get("/users")
    def list_users():
        limit = int_arg("limit", PAGE_DEFAULT, 1, PAGE_MAX)
        after_id = int_arg("after_id", 0, 0, 2 ** 63 - 1)
        rows = in_transaction(lambda connection: connection.execute(
            select(USERS).where(USERS.c.id > after_id).order_by(USERS.c.id).limit(limit)).all())
        return jsonify(users=[as_dict(row) for row in rows],
                       next_after_id=rows[-1].id if len(rows) == limit else None)

    @app.get("/users/<int:user_id>")
    def get_user(user_id):
        row = in_transaction(lambda connection: connection.execute(select(USERS).where(USERS.c.id == user_id)).first())
        if row is None:
            return jsonify(error="not found", detail=f"no user with id {user_id}"), 404
        return jsonify(as_dict(row))

    @app.get("/healthz")
    def healthz():
        # Waits like any request: the proxy's check timeout is sized for it (compose_stack_proxy.wait_seconds).
        in_transaction(lambda connection: connection.execute(text("SELECT 1")))
        return jsonify(status="ok")

    @app.errorhandler(BadRequest)
    def bad_request(error):
        return jsonify(error=HTTPStatus(error.status).phrase, detail=error.message), error.status

    @app.errorhandler(DBAPIError)
    @app.errorhandler(PoolTimeout)
    def database_unavailable(error):
        reason = type(getattr(error, "orig", None) or error).__name__
        app.logger.warning("database unavailable: %s", reason)
        return jsonify(error="database unavailable", detail=reason), 503

    @app.errorhandler(HTTPException)
    def http_error(error):
        return jsonify(error=error.name, detail=error.description), error.code

    return app


if os.environ.get("DB_PASSWORD_FILE"):
    app = create_app()
