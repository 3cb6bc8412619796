"""The 12-factor hit counter: every GET / increments the Redis key `hits`.

Behind the entry proxy every request carries a unique X-Request-ID, which stays the same when the
proxy resends a request to another replica (one that died mid-request, say): the increment and
its answer are then recorded under that ID for a while, so a resent request counts once.

While Redis restarts (or reloads its append-only file after a crash), a request waits for it for
up to WAIT_SECONDS_REDIS after the proxy received it, then answers a JSON 503; the request ID makes
the retried INCR count once.

Config comes only from the environment: HOST_REDIS, PORT_REDIS, DB_REDIS, WAIT_SECONDS_REDIS, and
the password from PASSWORD_FILE_REDIS (a file, so it never shows in `docker inspect`) or PASSWORD_REDIS.
"""

import os
import threading
import time
import uuid

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


def wait_deadline(wait_seconds):
    """time.monotonic() by which this request stops waiting for Redis: wait_seconds after the
    entry proxy received it (X-Request-Start: t=<microseconds>, stamped once, so the proxy's
    resends to other replicas share the bound instead of each waiting again), else from now."""
    stamp = request.headers.get("X-Request-Start", "").removeprefix("t=")
    waited = time.time() - int(stamp) / 1e6 if stamp.isdigit() else 0.0
    return time.monotonic() + wait_seconds - min(max(waited, 0.0), wait_seconds)


def create_app(env=os.environ):
    app = Flask(__name__)
    client = redis.Redis(
        host=env.get("HOST_REDIS", "redis"),
        port=int(env.get("PORT_REDIS", "6379")),
        db=int(env.get("DB_REDIS", "0")),
        password=redis_password(env),
        socket_connect_timeout=1,
        socket_timeout=2,
        # redis-py's own retries count attempts (3, with backoff); the wait below is bounded in time.
        retry=Retry(NoBackoff(), 0),
    )
    wait_seconds = float(env.get("WAIT_SECONDS_REDIS", "5"))
    reached = threading.Event()  # this process has reached Redis once
    incr_once = client.register_script(INCR_ONCE)

    def with_redis(command):
        """command(), retried while a Redis this process has reached before cannot answer
        (refused, timed out, still loading its data) until wait_deadline(); then the error goes
        on to the JSON 503. One never reached (a wrong address, say) gets that 503 at once."""
        deadline, delay = wait_deadline(wait_seconds), 0.05
        while True:
            try:
                result = command()
                reached.set()
                return result
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if not reached.is_set() or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, 0.5)

    @app.get("/")
    def hello():
        # INCR returns the new value atomically: no INCR-then-GET race across workers. Without the
        # proxy's ID, a fresh one still makes a retry after a lost answer count once.
        request_id = request.headers.get("X-Request-ID") or f"new:{uuid.uuid4()}"
        hits = with_redis(lambda: incr_once(keys=["hits", f"hits:request:{request_id}"], args=[REQUEST_ID_SECONDS]))
        return f"Hello World! {hits} times.", 200, {"Content-Type": "text/plain; charset=utf-8"}

    @app.get("/healthz")
    def healthz():
        # Waits like any request: the proxy's check timeout is sized for it (compose_stack_proxy.wait_seconds).
        with_redis(client.ping)
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
