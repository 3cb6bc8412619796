"""The users API against a real PostgreSQL server: round trip, every validation case (4xx with
a JSON message and no row written), pagination, concurrency, exactly-once POSTs (request IDs
and Idempotency-Key), a restart waited out, an outage past the wait, recovery."""

import importlib.util
import json
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from werkzeug.serving import make_server

APP_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "users", "files", "app")


def load_app_module():
    spec = importlib.util.spec_from_file_location("users_app", os.path.join(APP_DIR, "app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def users_app(postgres_server):
    module = load_app_module()
    module.migrate(postgres_server.env)
    return module.create_app(dict(postgres_server.env, DB_WAIT_SECONDS="2"))


@pytest.fixture
def client(users_app):
    return users_app.test_client()


def row_count(client):
    count, after_id = 0, 0
    while after_id is not None:
        page = client.get(f"/users?limit=200&after_id={after_id}").get_json()
        count += len(page["users"])
        after_id = page["next_after_id"]
    return count


def test_post_then_get_round_trip(client):
    created = client.post("/users", json={"name": "Ada Lovelace"})
    assert created.status_code == 201
    user = created.get_json()
    assert set(user) == {"id", "name", "created_at"} and user["name"] == "Ada Lovelace"
    assert client.get(f"/users/{user['id']}").get_json() == user
    assert client.get("/users").get_json() == {"users": [user], "next_after_id": None}


def test_migrate_is_idempotent(postgres_server, client):
    client.post("/users", json={"name": "kept"})
    load_app_module().migrate(postgres_server.env)
    assert row_count(client) == 1


BAD_POSTS = [
    ("invalid JSON", {"data": b'{"name": ', "content_type": "application/json"}, 400, "not valid JSON"),
    ("not an object", {"json": ["Ada"]}, 400, "must be a JSON object"),
    ("JSON string", {"json": "Ada"}, 400, "must be a JSON object"),
    ("name missing", {"json": {"nom": "Ada"}}, 400, "name is required"),
    ("name empty", {"json": {"name": ""}}, 400, "must not be empty"),
    ("name whitespace", {"json": {"name": " \t\n "}}, 400, "must not be empty"),
    ("name not a string", {"json": {"name": 42}}, 400, "must be a string"),
    ("name null", {"json": {"name": None}}, 400, "must be a string"),
    ("name too long", {"json": {"name": "x" * 81}}, 400, "at most 80 characters"),
    ("body over the cap", {"json": {"name": "x" * 5000}}, 413, ""),
    ("wrong content type", {"data": '{"name": "Ada"}', "content_type": "text/plain"}, 415, "application/json"),
    ("form post", {"data": {"name": "Ada"}}, 415, "application/json"),
]


@pytest.mark.parametrize("case, kwargs, status, message", BAD_POSTS, ids=[case[0] for case in BAD_POSTS])
def test_bad_posts_get_a_json_4xx_and_write_nothing(client, case, kwargs, status, message):
    response = client.post("/users", **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    assert message in response.get_json()["detail"]
    assert row_count(client) == 0


def test_name_of_exactly_80_characters_is_accepted(client):
    assert client.post("/users", json={"name": "x" * 80}).status_code == 201


@pytest.mark.parametrize("path, status", [("/users/999999", 404), ("/users/abc", 404), ("/nope", 404),
                                          ("/users?limit=0", 400), ("/users?limit=201", 400),
                                          ("/users?limit=x", 400), ("/users?after_id=-1", 400)])
def test_bad_reads_get_json_errors(client, path, status):
    response = client.get(path)
    assert response.status_code == status
    assert response.is_json and response.get_json()["error"]


def test_unknown_methods_get_json_405(client):
    response = client.delete("/users")
    assert response.status_code == 405 and response.is_json


def test_pagination_walks_every_row_once_in_id_order(client):
    ids = [client.post("/users", json={"name": f"user {n}"}).get_json()["id"] for n in range(23)]
    seen, after_id, pages = [], 0, 0
    while after_id is not None:
        page = client.get(f"/users?limit=10&after_id={after_id}").get_json()
        assert len(page["users"]) <= 10
        seen += [user["id"] for user in page["users"]]
        after_id, pages = page["next_after_id"], pages + 1
    assert seen == ids == sorted(ids)
    assert pages == 3
    assert len(client.get("/users").get_json()["users"]) == 23  # default limit 50


def post_in_parallel(users_app, bodies, headers=None):
    """(status, id) of each POST /users of `bodies`, ten at a time, to the app served on a free
    port by a threaded server."""
    server = make_server("127.0.0.1", 0, users_app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def post(body):
        request = urllib.request.Request(f"http://127.0.0.1:{server.server_port}/users", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", **(headers or {})})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())["id"]
    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            return list(pool.map(post, bodies))
    finally:
        server.shutdown()


def test_parallel_inserts_give_distinct_rows(users_app, client):
    results = post_in_parallel(users_app, [{"name": f"parallel {n}"} for n in range(100)])
    assert {status for status, _ in results} == {201}
    assert len({user_id for _, user_id in results}) == 100
    assert row_count(client) == 100


def test_a_request_resent_by_the_proxy_creates_one_user_and_gets_the_first_answer(client):
    """The entry proxy resends a request whose replica died after the commit, with the same
    X-Request-ID: no second row, and the first answer (the same user, 201)."""
    first = client.post("/users", json={"name": "resent"}, headers={"X-Request-ID": "req-1"})
    again = client.post("/users", json={"name": "resent"}, headers={"X-Request-ID": "req-1"})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.get_json() == first.get_json()
    other = client.post("/users", json={"name": "resent"}, headers={"X-Request-ID": "req-2"})
    assert other.status_code == 201 and other.get_json()["id"] != first.get_json()["id"]
    assert row_count(client) == 2  # names may repeat on purpose: no unique constraint on name


def test_an_idempotency_key_gives_the_same_answer_and_a_422_for_another_body(client):
    headers = {"Idempotency-Key": '"8e03978e-40d5-43e8-bc93-6894a57f9324"'}
    first = client.post("/users", json={"name": "Ada"}, headers=headers)
    # The same key unquoted (Stripe's form), the proxy's request ID changed: the same request.
    again = client.post("/users", json={"name": "Ada"},
                        headers={"Idempotency-Key": "8e03978e-40d5-43e8-bc93-6894a57f9324", "X-Request-ID": "other"})
    assert (first.status_code, again.status_code) == (201, 201) and again.get_json() == first.get_json()
    changed = client.post("/users", json={"name": "Grace"}, headers=headers)
    assert changed.status_code == 422 and "another body" in changed.get_json()["detail"]
    assert row_count(client) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_bad_idempotency_key_is_a_json_400_and_writes_nothing(client, key):
    response = client.post("/users", json={"name": "Ada"}, headers={"Idempotency-Key": key})
    assert response.status_code == 400 and "Idempotency-Key" in response.get_json()["detail"]
    assert row_count(client) == 0


def test_concurrent_requests_with_one_key_create_one_user(users_app, client):
    results = set(post_in_parallel(users_app, [{"name": "once"}] * 20, {"Idempotency-Key": "k-1"}))
    assert len(results) == 1 and next(iter(results))[0] == 201
    assert row_count(client) == 1


def test_expired_keys_are_cleaned_up_and_the_key_is_free_again(postgres_server):
    module = load_app_module()
    module.migrate(postgres_server.env)
    client = module.create_app(dict(postgres_server.env, IDEMPOTENCY_KEY_SECONDS="0")).test_client()
    first = client.post("/users", json={"name": "Ada"}, headers={"Idempotency-Key": "k-1"}).get_json()
    client.post("/users", json={"name": "Bob"}, headers={"Idempotency-Key": "k-2"})
    client.post("/users", json={"name": "Cy"})  # the proxy's or a fresh key: kept REQUEST_ID_SECONDS
    engine = module.make_engine(postgres_server.env)
    assert module.delete_expired_keys(engine, batch_size=1) == 2  # two batches of one
    again = client.post("/users", json={"name": "Ada"}, headers={"Idempotency-Key": "k-1"}).get_json()
    assert again["id"] != first["id"]
    with engine.connect() as connection:
        indexes = connection.execute(module.text("SELECT indexdef FROM pg_indexes WHERE tablename = 'user_requests'")).scalars()
        assert any("(expires_at)" in index for index in indexes)


def test_a_database_restart_within_the_wait_costs_latency_not_errors(client, postgres_server):
    """Requests that arrive while PostgreSQL is down wait for it (DB_WAIT_SECONDS, 2 here) and
    are answered as usual once it is back."""
    assert client.post("/users", json={"name": "before"}).status_code == 201
    postgres_server.stop()
    threading.Timer(0.8, postgres_server.start).start()
    started = time.monotonic()
    during = client.post("/users", json={"name": "during"})
    assert during.status_code == 201, during.get_json()
    assert 0.5 < time.monotonic() - started < 2.5
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert [user["name"] for user in client.get("/users").get_json()["users"]] == ["before", "during"]


def test_database_outage_past_the_wait_is_a_json_503_and_the_api_recovers(client, postgres_server):
    assert client.post("/users", json={"name": "before"}).status_code == 201
    postgres_server.stop()
    for send in (lambda: client.get("/users"), lambda: client.post("/users", json={"name": "during"}),
                 lambda: client.get("/healthz")):
        started = time.monotonic()
        response = send()
        assert 1.5 < time.monotonic() - started < 3.5  # the 2 s wait, then at once
        assert response.status_code == 503
        assert response.get_json()["error"] == "database unavailable"
    postgres_server.start()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert [user["name"] for user in client.get("/users").get_json()["users"]] == ["before"]


def test_a_resend_waits_only_what_is_left_of_the_bound(client, postgres_server):
    """The proxy stamps X-Request-Start once: a resend 1.5 s into a 2 s wait waits 0.5 s more."""
    assert client.get("/healthz").status_code == 200
    postgres_server.stop()
    started = time.monotonic()
    response = client.get("/users", headers={"X-Request-Start": f"t={int((time.time() - 1.5) * 1e6)}"})
    assert response.status_code == 503 and 0.3 < time.monotonic() - started < 1.2


def test_a_database_never_reached_is_a_quick_json_503(postgres_server):
    """A wrong address is a configuration error, not a restart: no wait (the proxy resends the
    503 to a replica that works, and the rollout's health gate sees it at once)."""
    module = load_app_module()
    client = module.create_app(dict(postgres_server.env, DB_PORT="1", DB_WAIT_SECONDS="5")).test_client()
    started = time.monotonic()
    response = client.post("/users", json={"name": "nowhere"})
    assert response.status_code == 503 and time.monotonic() - started < 1.0


def test_without_pre_ping_a_database_restart_costs_no_error_either(postgres_server):
    """DB_POOL_PRE_PING=0 saves a round trip per request; the first request on a connection the
    restart closed finds it invalidated and is retried on a new one."""
    module = load_app_module()
    env = dict(postgres_server.env, DB_POOL_PRE_PING="0")
    module.migrate(env)
    client = module.create_app(env).test_client()
    assert client.get("/healthz").status_code == 200
    postgres_server.stop()
    postgres_server.start()
    assert client.get("/healthz").get_json() == {"status": "ok"}
