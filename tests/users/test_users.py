"""The users API on a staging host: containers and limits, secrets, published ports, the API
with every bad input, supervisor, crash drills, reprovision and reboot with data kept."""

import json

import pytest

from conftest import container_name, recap_changed, run_playbook
from stack import (assert_limits, assert_published_by_nat, assert_supervisor_restarts_gunicorn, container_env, container_exec, crash_and_wait_for_restart, http,
                   inspect, post_user, reboot_staging_host, supervisor_status, wait_for, wait_healthy,
                   wait_until_the_proxy_routes)

WEB = "users-web-1"
DB = "users-db-1"
SECRETS = "/opt/users/secrets"


@pytest.fixture(scope="module")
def api(stack_vars):
    return f"http://127.0.0.1:{stack_vars['users_port']}"


def rows(host):
    return int(container_exec(host, DB, "psql -U users -d users -tAc 'SELECT count(*) FROM users'"))


def test_containers_run_with_the_configured_policy_and_limits(host, stack_vars):
    assert assert_limits(host, WEB, stack_vars, "users_web")["Config"]["User"] == "10001:10001"
    assert_limits(host, DB, stack_vars, "users_db")


def test_password_is_generated_once_and_stored_root_only(host):
    secret = host.file(f"{SECRETS}/db_password")
    assert (secret.user, secret.mode) == ("root", 0o600)
    assert len(secret.content_string.strip()) >= 32
    app_copy = host.file(f"{SECRETS}/db_password.10001")
    assert (app_copy.uid, app_copy.mode) == (10001, 0o400)
    assert app_copy.content_string == secret.content_string


def test_password_is_not_visible_in_inspect_compose_env_or_logs(host):
    password = host.file(f"{SECRETS}/db_password").content_string.strip()
    for container in host.check_output("docker ps -aq").split():
        assert password not in host.check_output(f"docker inspect {container}"), container
        assert password not in host.run(f"docker logs {container} 2>&1").stdout, container
    for path in ("/opt/users/compose.yaml", "/opt/users/.env"):
        assert password not in host.file(path).content_string, path
    env = container_env(host, DB)
    assert env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password" and "POSTGRES_PASSWORD" not in env


def test_web_port_is_published_and_the_database_port_is_not(host, stack_vars):
    assert_published_by_nat(host, "users", stack_vars)
    assert http(host, f"http://127.0.0.1:{stack_vars['users_port']}/healthz")[0] == 200
    assert not any(binding for binding in (inspect(host, DB)["NetworkSettings"]["Ports"] or {}).values())
    listening = host.socket.get_listening_sockets()
    assert not [socket for socket in listening if socket.endswith(":5432")], listening


def test_https_with_the_certificate_the_host_made_for_itself(host):
    """compose_stack_tls: self-signed (the scenario): made once on the host for its inventory name,
    localhost and 127.0.0.1; a client that trusts that certificate gets the API over HTTPS."""
    pem = host.file("/opt/users/tls/self-signed.pem")
    assert (pem.uid, pem.mode) == (99, 0o400)
    host.check_output(f"openssl x509 -in {pem.path} -out /root/users-tls.crt")
    names = host.check_output("openssl x509 -in /root/users-tls.crt -noout -subject -ext subjectAltName")
    assert "CN=staging-1" in names.replace(" = ", "=") and "DNS:localhost" in names and "IP Address:127.0.0.1" in names, names
    for url in ("https://127.0.0.1:8443/users?limit=1", "https://localhost:8443/healthz"):
        result = host.run(f"curl -s --max-time 10 --cacert /root/users-tls.crt -o /dev/null -w '%{{http_code}}' {url}")
        assert (result.rc, result.stdout) == (0, "200"), (url, result.stderr)
    user = post_user(host, "https://127.0.0.1:8443", "Radia Perlman", cacert="/root/users-tls.crt")
    assert http(host, f"http://127.0.0.1:{host.ansible.get_variables()['users_port']}/users/{user['id']}")[0] == 200


def test_post_then_get_round_trip(host, api):
    user = post_user(host, api, "Grace Hopper")
    status, body = http(host, f"{api}/users/{user['id']}")
    assert (status, json.loads(body)) == (200, user)
    status, body = http(host, f"{api}/users?after_id={user['id'] - 1}&limit=1")
    assert json.loads(body)["users"] == [user]


BAD_REQUESTS = [
    ("invalid JSON", "POST", "/users", '{"name": ', "application/json", 400),
    ("not an object", "POST", "/users", '["Ada"]', "application/json", 400),
    ("name missing", "POST", "/users", '{"nom": "Ada"}', "application/json", 400),
    ("name empty", "POST", "/users", '{"name": ""}', "application/json", 400),
    ("name whitespace", "POST", "/users", '{"name": "   "}', "application/json", 400),
    ("name not a string", "POST", "/users", '{"name": 7}', "application/json", 400),
    ("name too long", "POST", "/users", json.dumps({"name": "x" * 81}), "application/json", 400),
    ("body over the cap", "POST", "/users", json.dumps({"name": "x" * 6000}), "application/json", 413),
    ("wrong content type", "POST", "/users", '{"name": "Ada"}', "text/plain", 415),
    ("unknown user", "GET", "/users/987654321", None, None, 404),
    ("limit too big", "GET", "/users?limit=100000", None, None, 400),
    ("unknown method", "DELETE", "/users", None, None, 405),
]


@pytest.mark.parametrize("case, method, path, body, content_type, status", BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_json_4xx_and_write_nothing(host, api, case, method, path, body, content_type, status):
    before = rows(host)
    got, text = http(host, f"{api}{path}", method, body, content_type or "application/json")
    assert got == status, text
    assert json.loads(text)["error"]
    assert rows(host) == before


def test_supervisor_restarts_a_killed_gunicorn(host, api):
    assert supervisor_status(host, WEB)[:2] == ("gunicorn", "RUNNING")
    assert_supervisor_restarts_gunicorn(host, WEB, f"{api}/healthz")


def test_data_survives_a_web_crash(host, api):
    post_user(host, api, "before web crash")
    before = rows(host)
    crash_and_wait_for_restart(host, WEB)
    assert rows(host) == before
    assert http(host, f"{api}/users")[0] == 200


def test_data_survives_a_db_crash_and_the_api_recovers(host, api):
    post_user(host, api, "before db crash")
    before = rows(host)
    crash_and_wait_for_restart(host, DB)
    assert rows(host) == before
    wait_for("the API to reach the database again", lambda: http(host, f"{api}/healthz")[0] == 200, 30)
    post_user(host, api, "after db crash")
    assert rows(host) == before + 1


def test_reprovision_changes_nothing_and_keeps_the_password(host):
    password = host.file(f"{SECRETS}/db_password").sha256sum
    rc, output = run_playbook("site.yml")
    assert rc == 0, output
    assert recap_changed(output) == 0, output
    assert host.file(f"{SECRETS}/db_password").sha256sum == password


def test_data_survives_a_staging_host_reboot(host, api):
    post_user(host, api, "before reboot")
    before = rows(host)
    reboot_staging_host(host, container_name(host))
    wait_healthy(host, DB, 120)
    wait_healthy(host, WEB, 120)
    wait_until_the_proxy_routes(host, "users")
    assert rows(host) == before
    assert http(host, f"{api}/users")[0] == 200
