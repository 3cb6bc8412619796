"""The users API (seed 004, production-grade): Flask + SQLAlchemy + PostgreSQL.

POST /users {"name": ...}      201 {"id", "name", "created_at"}
GET  /users?limit=&after_id=    users ordered by id, keyset-paginated (limit <= MAX_PAGE)
GET  /users/<id>                one user or a JSON 404
GET  /healthz                   checks the database
Config only from the environment: DB_HOST, DB_PORT, DB_NAME, DB_USER and DB_PASSWORD_FILE (the
password is read from a file, never from the environment). The schema is created by migrate(),
which the deployment runs before gunicorn's workers start (WSGI_MIGRATE).
"""

import json
import os
from datetime import datetime
from http import HTTPStatus

from flask import Flask, jsonify, request
from sqlalchemy import BigInteger, DateTime, Identity, String, create_engine, func, insert, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.exceptions import HTTPException

NAME_MAX = 80
PAGE_DEFAULT = 50
PAGE_MAX = 200


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


# Requests use SQLAlchemy Core on this table: no ORM objects per row, less CPU per request.
USERS = User.__table__


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

    @app.post("/users")
    def create_user():
        name = parse_new_user()
        with engine.begin() as connection:
            row = connection.execute(insert(USERS).values(name=name).returning(*USERS.c)).one()
        return jsonify(as_dict(row)), 201

    @app.get("/users")
    def list_users():
        limit = int_arg("limit", PAGE_DEFAULT, 1, PAGE_MAX)
        after_id = int_arg("after_id", 0, 0, 2 ** 63 - 1)
        with engine.connect() as connection:
            rows = connection.execute(select(USERS).where(USERS.c.id > after_id).order_by(USERS.c.id).limit(limit)).all()
        return jsonify(users=[as_dict(row) for row in rows],
                       next_after_id=rows[-1].id if len(rows) == limit else None)

    @app.get("/users/<int:user_id>")
    def get_user(user_id):
        with engine.connect() as connection:
            row = connection.execute(select(USERS).where(USERS.c.id == user_id)).first()
        if row is None:
            return jsonify(error="not found", detail=f"no user with id {user_id}"), 404
        return jsonify(as_dict(row))

    @app.get("/healthz")
    def healthz():
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
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
