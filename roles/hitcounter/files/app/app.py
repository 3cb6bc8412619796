"""The 12-factor hit counter: every GET / increments the Redis key `hits`.

Config comes only from the environment: HOST_REDIS, PORT_REDIS, DB_REDIS, and the password
from PASSWORD_FILE_REDIS (a file, so it never shows in `docker inspect`) or PASSWORD_REDIS.
"""

import os

import redis
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException


def redis_password(env):
    path = env.get("PASSWORD_FILE_REDIS")
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    return env.get("PASSWORD_REDIS") or None


def create_app(env=os.environ):
    app = Flask(__name__)
    client = redis.Redis(
        host=env.get("HOST_REDIS", "redis"),
        port=int(env.get("PORT_REDIS", "6379")),
        db=int(env.get("DB_REDIS", "0")),
        password=redis_password(env),
        socket_connect_timeout=1,
        socket_timeout=2,
    )

    @app.get("/")
    def hello():
        # INCR returns the new value atomically: no INCR-then-GET race across workers.
        return f"Hello World! {client.incr('hits')} times.", 200, {"Content-Type": "text/plain; charset=utf-8"}

    @app.get("/healthz")
    def healthz():
        client.ping()
        return jsonify(status="ok")

    @app.errorhandler(redis.exceptions.RedisError)
    def redis_unavailable(error):
        app.logger.warning("redis unavailable: %s", error)
        return jsonify(error="redis unavailable", detail=type(error).__name__), 503

    @app.errorhandler(HTTPException)
    def http_error(error):
        return jsonify(error=error.name, detail=error.description), error.code

    return app


app = create_app()
