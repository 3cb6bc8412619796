"""The users API on the same 3-node cluster, switched to from the hit counter and back: its
PostgreSQL password as a Swarm secret readable by the web replicas' user alone, POSTs through
every node's proxy stored exactly once, a rolling update under a paced POST load with no failed
request and every acknowledged row stored once, backup and restore of PostgreSQL on the data
node, and teardown.yml removing the stack from every node. Each test finds the users stack
deployed (deployed again if a test before tore it down); the module leaves the cluster running
the hit counter, converged, whatever ran before it."""

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import failure_report, run_playbook
from stack import PacedLoad, wait_for
from test_swarm import DATA_NODE, MANAGER, NODES, node_address, node_host, running_tasks

USERS = ["-e", "app_stack=users"]
PORT = 8000
WEB, DB = "users_web", "users_db"


def site(*args):
    rc, output = run_playbook("site.yml", *args)
    assert rc == 0, failure_report(output)
    return output


def task_container(host, service):
    return host.check_output(f"docker ps -q --filter label=com.docker.swarm.service.name={service}").split()[0]


def sql(query):
    """One query in the database's task on the data node."""
    data_node = node_host(DATA_NODE)
    return data_node.check_output(f"docker exec {task_container(data_node, DB)} psql -U users -d users -tA -F ' ' -c \"{query}\"")


def answered_post(url, name):
    """POST's status, or None while the proxy answers with an error (no replica up yet)."""
    try:
        return post(url, name)
    except urllib.error.HTTPError:
        return None


def post(url, name):
    request = urllib.request.Request(url, data=json.dumps({"name": name}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=15) as response:
        return response.status


def users_deployed(manager):
    return "users" in manager.check_output("docker stack ls --format '{{.Name}}'").split()


@pytest.fixture(scope="module")
def users_module():
    yield node_host(MANAGER)
    # Back to the scenario's stack: the users stack is removed from the cluster (volumes kept).
    site()


@pytest.fixture
def users_cluster(users_module):
    """The manager of the cluster running the users stack (deployed once, again after a teardown)."""
    if not users_deployed(users_module):
        site(*USERS)
    return users_module


def test_the_password_is_a_swarm_secret_only_the_web_user_reads(users_cluster):
    manager = users_cluster
    assert {"users_db_password", "users_db_password_app"} <= set(manager.check_output("docker secret ls --format '{{.Name}}'").split())
    for _, name in running_tasks(manager, WEB):
        node = node_host(name)
        mode = node.check_output(f"docker exec {task_container(node, WEB)} stat -c '%u %a' /run/secrets/db_password")
        assert mode == "10001 400", (name, mode)
    assert [node for _, node in running_tasks(manager, DB)] == [DATA_NODE]


def test_posts_through_every_node_are_stored_exactly_once(users_cluster):
    urls = [f"http://{node_address(name)}:{PORT}/users" for name in NODES]
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda i: post(urls[i % len(urls)], f"across-{i}"), range(300)))
    assert statuses.count(201) == 300
    assert sql("SELECT count(*), count(DISTINCT name) FROM users WHERE name LIKE 'across-%'").split() == ["300", "300"]


def test_a_rolling_update_under_post_load_fails_no_request_and_stores_each_row_once(users_cluster):
    manager = users_cluster
    with PacedLoad(manager, f"http://127.0.0.1:{PORT}/users", name_prefix="swarm-roll") as load:
        site(*USERS, "-e", json.dumps({"users_env": {"SWARM_DRILL": "rolling"}}))
    assert load.result["failed"] == 0 and load.result["total"] > 100, load.report()
    rows, names = sql("SELECT count(*), count(DISTINCT name) FROM users WHERE name LIKE 'swarm-roll-%'").split()
    assert (int(rows), int(names)) == (load.result["total"], load.result["total"]), (load.result, "rows lost or written twice")
    assert "SWARM_DRILL=rolling" in manager.file("/opt/users/.env").content_string


def test_backup_and_restore_of_postgres_on_the_data_node(users_cluster, tmp_path):
    url = f"http://{node_address('swarm-3')}:{PORT}/users"
    assert post(url, "kept-by-backup") == 201
    rc, output = run_playbook("backup.yml", *USERS, "-e", f"backup_dir={tmp_path}")
    assert rc == 0, failure_report(output)
    assert (tmp_path / MANAGER / "users" / "users.dump").stat().st_size > 0
    assert post(url, "lost-by-restore") == 201
    rc, output = run_playbook("restore.yml", *USERS, "-e", f"backup_dir={tmp_path}")
    assert rc == 0, failure_report(output)
    assert sql("SELECT name FROM users WHERE name IN ('kept-by-backup', 'lost-by-restore')") == "kept-by-backup"
    assert wait_for("POST after the restore", lambda: answered_post(url, "after-restore") == 201, 60, interval=1)


def test_teardown_with_purge_removes_the_stack_from_every_node(users_cluster):
    manager = users_cluster
    rc, output = run_playbook("teardown.yml", *USERS, "-e", "teardown_purge=true")
    assert rc == 0, failure_report(output)
    assert not users_deployed(manager)
    assert not [name for name in manager.check_output("docker secret ls --format '{{.Name}}'").split() if name.startswith("users_")]
    assert not manager.file("/opt/users").exists
    for name in NODES:
        node = node_host(name)
        assert node.check_output("docker ps -aq --filter label=com.docker.stack.namespace=users") == "", name
        assert node.check_output("docker images -q --filter label=compose-stack.app=users") == "", name
        assert node.check_output("docker volume ls -q --filter label=com.docker.stack.namespace=users") == "", name
