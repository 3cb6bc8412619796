"""The hit-counter app against a real redis-server: counting, concurrency, errors as JSON,
Redis outages as 503 and recovery without a restart."""

import importlib.util
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from werkzeug.serving import make_server

APP_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "hitcounter", "files", "app", "app.py")


def load_app_module():
    spec = importlib.util.spec_from_file_location("hitcounter_app", APP_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def client(redis_server):
    app = load_app_module().create_app({"HOST_REDIS": "127.0.0.1", "PORT_REDIS": str(redis_server.port)})
    return app.test_client()


def hits(response):
    text = response.get_data(as_text=True)
    assert text.startswith("Hello World! ") and text.endswith(" times."), text
    return int(text.split()[2])


def test_each_get_counts_exactly_one(client):
    first = hits(client.get("/"))
    assert [hits(client.get("/")) for _ in range(5)] == [first + n for n in range(1, 6)]


def test_a_request_resent_by_the_proxy_counts_once(client):
    """The proxy resends a request whose replica died mid-request with the same X-Request-ID:
    it gets the count the first attempt made, and the counter does not move."""
    first = hits(client.get("/", headers={"X-Request-ID": "req-1"}))
    assert hits(client.get("/", headers={"X-Request-ID": "req-1"})) == first
    assert hits(client.get("/", headers={"X-Request-ID": "req-2"})) == first + 1
    assert hits(client.get("/")) == first + 2


def test_page_text_is_the_seed_text(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "Hello World! 1 times."
    assert response.mimetype == "text/plain"


def test_config_comes_from_the_environment(redis_server, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("unused\n")
    module = load_app_module()
    app = module.create_app({"HOST_REDIS": "127.0.0.1", "PORT_REDIS": str(redis_server.port), "DB_REDIS": "3"})
    app.test_client().get("/")
    assert redis.Redis(port=redis_server.port, db=3).get("hits") == b"1"
    assert redis.Redis(port=redis_server.port, db=0).get("hits") is None
    assert module.redis_password({"PASSWORD_FILE_REDIS": str(password_file)}) == "unused"


def test_concurrent_requests_lose_no_increment(redis_server):
    app = load_app_module().create_app({"HOST_REDIS": "127.0.0.1", "PORT_REDIS": str(redis_server.port)})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        def get(_):
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.read().decode().split()[2])
        with ThreadPoolExecutor(max_workers=16) as pool:
            counts = list(pool.map(get, range(200)))
    finally:
        server.shutdown()
    assert sorted(counts) == list(range(1, 201))


@pytest.mark.parametrize("method, path, status", [("GET", "/nope", 404), ("POST", "/", 405), ("DELETE", "/healthz", 405)])
def test_unknown_routes_and_methods_get_json_errors(client, method, path, status):
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.is_json and response.get_json()["error"]


@pytest.fixture
def waiting_client(redis_server):
    """The app with a 2 s wait for Redis (WAIT_SECONDS_REDIS)."""
    return load_app_module().create_app({"HOST_REDIS": "127.0.0.1", "PORT_REDIS": str(redis_server.port),
                                         "WAIT_SECONDS_REDIS": "2"}).test_client()


def test_healthz_checks_redis(waiting_client, redis_server):
    assert waiting_client.get("/healthz").get_json() == {"status": "ok"}
    redis_server.stop()
    response = waiting_client.get("/healthz")
    assert response.status_code == 503 and response.get_json()["error"] == "redis unavailable"


def test_a_redis_restart_within_the_wait_costs_latency_not_errors(waiting_client, redis_server):
    assert hits(waiting_client.get("/")) == 1
    redis_server.stop()
    threading.Timer(0.8, redis_server.start).start()
    started = time.monotonic()
    during = waiting_client.get("/", headers={"X-Request-ID": "during"})
    assert during.status_code == 200
    assert 0.5 < time.monotonic() - started < 2.5
    assert hits(during) == 1  # same port, empty data (no persistence in this test)


def test_redis_outage_past_the_wait_is_a_json_503_and_the_app_recovers(waiting_client, redis_server):
    assert hits(waiting_client.get("/")) == 1
    redis_server.stop()
    started = time.monotonic()
    down = waiting_client.get("/")
    assert 1.5 < time.monotonic() - started < 3.0  # the 2 s wait, then at once
    assert down.status_code == 503
    assert down.get_json() == {"error": "redis unavailable", "detail": "ConnectionError"}
    redis_server.start()  # same port, empty data (no persistence in this test)
    assert hits(waiting_client.get("/")) == 1


def test_a_resend_waits_only_what_is_left_of_the_bound(waiting_client, redis_server):
    """The proxy stamps X-Request-Start once: a resend 1.5 s into a 2 s wait waits 0.5 s more."""
    assert hits(waiting_client.get("/")) == 1
    redis_server.stop()
    started = time.monotonic()
    response = waiting_client.get("/", headers={"X-Request-Start": f"t={int((time.time() - 1.5) * 1e6)}"})
    assert response.status_code == 503 and 0.3 < time.monotonic() - started < 1.2


def test_a_redis_never_reached_is_a_quick_json_503(redis_server):
    """A wrong address is a configuration error, not a restart: no wait (the proxy resends the
    503 to a replica that works, and the rollout's health gate sees it at once)."""
    client = load_app_module().create_app({"HOST_REDIS": "127.0.0.1", "PORT_REDIS": "1"}).test_client()
    started = time.monotonic()
    response = client.get("/")
    assert response.status_code == 503 and time.monotonic() - started < 1.0
