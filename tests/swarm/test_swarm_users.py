"""The users API on the same 3-node cluster, switched to from the hit counter and back: its
PostgreSQL password as a Swarm secret readable by the web replicas' user alone, POSTs through
every node's proxy stored exactly once, and a rolling update under a paced POST load with no
failed request and every acknowledged row stored once. The module leaves the cluster running the
hit counter, converged, whatever ran before it."""

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import failure_report, run_playbook
from stack import PacedLoad
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


def post(url, name):
    request = urllib.request.Request(url, data=json.dumps({"name": name}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=15) as response:
        return response.status


@pytest.fixture(scope="module")
def users_cluster():
    site(*USERS)
    yield node_host(MANAGER)
    # Back to the scenario's stack: the users stack is removed from the cluster (volumes kept).
    site()


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
