"""The 12-factor hit counter: every GET / increments the Redis key `hits`.

Behind the entry proxy every request carries a unique X-Request-ID, which stays the same when the
proxy resends a request to another replica (one that died mid-request, say): the increment and
its answer are then recorded under that ID for a while, so a resent request counts once.

Config comes only from the environment: HOST_REDIS, PORT_REDIS, DB_REDIS, and the password
from PASSWORD_FILE_REDIS (a file, so it never shows in `docker inspect`) or PASSWORD_REDIS.
"""

import os

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException


def redis_password(env):
    path = env.get("PASSWORD_FILE_REDIS")
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    return env.get("PASSWORD_REDIS") or None


# Atomic in Redis: INCR once per request ID, and give a resent request the count it got first.
INCR_ONCE = """
local seen = redis.call('GET', KEYS[2])
if seen then return tonumber(seen) end
local hits = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], hits, 'EX', tonumber(ARGV[1]))
return hits
"""
# Seconds a request ID is remembered: far longer than the proxy's retries take.
REQUEST_ID_SECONDS = 60


def create_app(env=os.environ):
    app = Flask(__name__)
    client = redis.Redis(
        host=env.get("HOST_REDIS", "redis"),
        port=int(env.get("PORT_REDIS", "6379")),
        db=int(env.get("DB_REDIS", "0")),
        password=redis_password(env),
        socket_connect_timeout=1,
        socket_timeout=2,
        # No retries here (redis-py retries 3 times with backoff by default: a 503 took 3.7 s):
        # the app answers 503 at once and the entry proxy resends to another replica.
        retry=Retry(NoBackoff(), 0),
    )

    incr_once = client.register_script(INCR_ONCE)

    @app.get("/")
    def hello():
        # INCR returns the new value atomically: no INCR-then-GET race across workers.
        request_id = request.headers.get("X-Request-ID")
        hits = incr_once(keys=["hits", f"hits:request:{request_id}"], args=[REQUEST_ID_SECONDS]) if request_id else client.incr("hits")
        return f"Hello World! {hits} times.", 200, {"Content-Type": "text/plain; charset=utf-8"}

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
