"""A falcon app configured from its environment (12-factor): GREETING, and the Redis that
compose_stack gives it (REDIS_URL) to count visits; its own module, callable and health path."""

import os

import falcon
import redis

store = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2)


class Greeting:
    def on_get(self, req, resp):
        resp.media = {"greeting": os.environ.get("GREETING", "Hello from falcon!"), "visits": store.incr("visits")}


class Ready:
    def on_get(self, req, resp):
        store.ping()
        resp.media = {"status": "ok"}


application = falcon.App()
application.add_route("/", Greeting())
application.add_route("/ready", Ready())
