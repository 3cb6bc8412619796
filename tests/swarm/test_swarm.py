"""The hit counter on a 3-node Swarm cluster (swarm-1: manager with the data label; swarm-2 and
swarm-3: workers), deployed by site.yml's cluster play: nodes, placement and limits, the page
on every node, an exact count across nodes, a rolling update and rollback.yml under paced load, an
automatic rollback, a service changed by hand, backup and restore of Redis on the data node, the
loss of a worker, a node that leaves and joins again, and three managers. Each test starts from
and leaves the converged cluster (site.yml changed=0), so they pass in any order (run once in
reverse order with pytest-reverse)."""

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import testinfra
import yaml

from conftest import PROJECT_DIR, changed_tasks, failure_report, recap_changed, run_playbook
from stack import PacedLoad, inspect, size_in_bytes, wait_for

NODES = ["swarm-1", "swarm-2", "swarm-3"]
MANAGER, DATA_NODE = "swarm-1", "swarm-1"
PORT = 8080
WEB, REDIS = "hitcounter_web", "hitcounter_redis"
RELEASE_LABEL = "compose-stack.release"


def node_host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


@pytest.fixture(scope="module")
def manager():
    return node_host(MANAGER)


@pytest.fixture(scope="module")
def stack_vars(manager):
    """The hit counter's defaults under the deploying manager's inventory variables."""
    with open(os.path.join(PROJECT_DIR, "roles", "hitcounter", "defaults", "main.yml"), encoding="utf-8") as handle:
        return {**yaml.safe_load(handle), **manager.ansible.get_variables()}


def playbook(*args, inventory=None):
    """site.yml, which must succeed; returns its output."""
    rc, output = run_playbook("site.yml", *args, inventory=inventory)
    assert rc == 0, failure_report(output)
    return output


def assert_converged(inventory=None):
    output = playbook(inventory=inventory)
    assert recap_changed(output) == 0, changed_tasks(output)


def node_address(name):
    """A node's address on the cluster network (its eth0), as this machine (a client on that network) reaches it."""
    return node_host(name).check_output("ip -4 -o addr show dev eth0").split()[3].split("/")[0]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def count(url):
    status, body = get(url)
    assert status == 200, body
    return int(re.fullmatch(r"Hello World! (\d+) times\.", body).group(1))


def answered_count(url):
    """The count, or None while the proxy answers with an error (503: no replica up yet)."""
    try:
        return count(url)
    except urllib.error.HTTPError:
        return None


def nodes(manager):
    """{hostname: node} of `docker node ls` (Hostname, Status, Availability, ManagerStatus)."""
    lines = manager.check_output("docker node ls --format '{{json .}}'").splitlines()
    return {node["Hostname"]: node for node in map(json.loads, lines)}


def running_tasks(manager, service):
    """[(task name, node)] of a service's tasks that run (healthy: Swarm reports a task with a
    health check as starting until it is healthy)."""
    lines = manager.check_output(f"docker service ps {service} --filter desired-state=running "
                                 "--format '{{.Name}} {{.Node}} {{.CurrentState}}'").splitlines()
    return [(name, node) for name, node, state, *_ in (line.split() for line in lines) if state == "Running"]


def service_spec(manager, service):
    return json.loads(manager.check_output(f"docker service inspect {service}"))[0]


def web_release(manager):
    return service_spec(manager, WEB)["Spec"]["TaskTemplate"]["ContainerSpec"]["Labels"][RELEASE_LABEL]


def wait_for_replicas(manager, want, timeout=120):
    return wait_for(f"{want} running web replicas", lambda: len(running_tasks(manager, WEB)) == want
                    and running_tasks(manager, WEB), timeout, interval=1)


def write_inventory(groups):
    """A copy of molecule's inventory with other cluster groups, beside it (so the scenario's
    group_vars and host_vars apply); the caller removes it."""
    with open(os.environ["MOLECULE_INVENTORY_FILE"], encoding="utf-8") as handle:
        inventory = yaml.safe_load(handle)
    # Each host keeps the SSH address molecule gave it.
    connection = inventory["all"]["hosts"]
    for group in ("swarm_managers", "swarm_workers", "swarm_leaving"):
        inventory[group] = {"hosts": {name: connection[name] for name in groups.get(group, [])}}
    path = os.path.join(os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]), "test-cluster.yml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(inventory, handle)
    return path


def test_nodes_roles_and_labels(manager, stack_vars):
    found = nodes(manager)
    assert sorted(found) == NODES
    assert all(node["Status"] == "Ready" and node["Availability"] == "Active" for node in found.values()), found
    assert found[MANAGER]["ManagerStatus"] == "Leader"
    assert not found["swarm-2"]["ManagerStatus"] and not found["swarm-3"]["ManagerStatus"]
    labels = {name: json.loads(manager.check_output(f"docker node inspect {name} --format '{{{{json .Spec.Labels}}}}'"))
              for name in NODES}
    assert labels == {MANAGER: {"stack-data": "true"}, "swarm-2": {}, "swarm-3": {}}
    # Swarm refuses live-restore; the engine role wrote it off before the engine started.
    for name in NODES:
        assert json.loads(node_host(name).file("/etc/docker/daemon.json").content_string)["live-restore"] is False


def test_replicas_spread_with_the_single_host_limits(manager, stack_vars):
    tasks = running_tasks(manager, WEB)
    assert len(tasks) == int(stack_vars["hitcounter_web_replicas"]) >= 2
    assert len({node for _, node in tasks}) > 1, tasks
    assert [node for _, node in running_tasks(manager, REDIS)] == [DATA_NODE]
    spec = service_spec(manager, WEB)["Spec"]
    assert spec["EndpointSpec"]["Mode"] == "dnsrr"
    assert spec["UpdateConfig"]["Order"] == "start-first" and spec["UpdateConfig"]["FailureAction"] == "rollback"
    assert spec["RollbackConfig"]["Order"] == "start-first"
    for _, name in tasks:
        host = node_host(name)
        container = host.check_output(f"docker ps -q --filter label=com.docker.swarm.service.name={WEB}").split()[0]
        state = inspect(host, container)
        config = state["HostConfig"]
        assert state["Config"]["User"] == "10001:10001"
        assert config["ReadonlyRootfs"] is True and config["CapDrop"] == ["ALL"]
        assert config["Memory"] == size_in_bytes(stack_vars["hitcounter_web_memory"])
        assert config["NanoCpus"] == round(float(stack_vars["hitcounter_web_cpus"]) * 1e9)
        assert config["PidsLimit"] == int(stack_vars["hitcounter_web_pids"])
        assert state["State"]["Health"]["Status"] == "healthy"
        env = dict(item.split("=", 1) for item in state["Config"]["Env"])
        assert env["HOST_REDIS"] == "redis" and env["PORT_REDIS"] == str(stack_vars["hitcounter_redis_port"])


def test_the_page_answers_on_every_node():
    for name in NODES:
        status, body = get(f"http://{node_address(name)}:{PORT}/")
        assert status == 200 and re.fullmatch(r"Hello World! \d+ times\.", body), (name, body)


def test_https_on_every_node_from_the_managers_certificate_as_a_swarm_secret(manager):
    """compose_stack_tls: self-signed (the scenario): made once on the manager, handed to every
    node's proxy as a Swarm secret (its name carries the PEM's checksum), readable by uid 99 alone."""
    certificate = manager.check_output("openssl x509 -in /opt/hitcounter/tls/self-signed.pem")
    secrets = service_spec(manager, "hitcounter_proxy")["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
    assert [(s["File"]["Name"], s["File"]["UID"], s["File"]["Mode"]) for s in secrets] == [("proxy_tls.pem", "99", 0o400)], secrets
    assert re.fullmatch(r"hitcounter_proxy_tls_[0-9a-f]{12}", secrets[0]["SecretName"]), secrets
    for name in NODES:
        node = node_host(name)
        node.check_output(f"cat > /root/cluster-tls.crt <<'EOF'\n{certificate}\nEOF")
        result = node.run("curl -s --max-time 10 --cacert /root/cluster-tls.crt https://127.0.0.1:8443/")
        assert result.rc == 0 and re.fullmatch(r"Hello World! \d+ times\.", result.stdout), (name, result.stdout, result.stderr)


def test_the_count_is_exact_across_nodes():
    urls = [f"http://{node_address(name)}:{PORT}/" for name in NODES]
    before = count(urls[0])
    with ThreadPoolExecutor(max_workers=48) as pool:
        statuses = list(pool.map(lambda i: get(urls[i % len(urls)])[0], range(1000)))
    assert statuses.count(200) == 1000
    assert count(urls[1]) == before + 1001


def test_a_rolling_update_and_a_rollback_under_load_fail_no_request(manager, stack_vars):
    before = web_release(manager)
    changed_env = json.dumps({"hitcounter_env": {"SWARM_DRILL": "rolling"}})
    with PacedLoad(manager, f"http://127.0.0.1:{PORT}/") as load:
        playbook("-e", changed_env)
    assert web_release(manager) != before
    assert load.result["failed"] == 0 and load.result["total"] > 100, load.result
    # Back to the inventory's release with rollback.yml: a second rolling update, from the manager.
    with PacedLoad(manager, f"http://127.0.0.1:{PORT}/") as load:
        rc, output = run_playbook("rollback.yml")
    assert rc == 0, failure_report(output)
    assert web_release(manager) == before
    assert load.result["failed"] == 0 and load.result["total"] > 100, load.result
    assert "SWARM_DRILL" not in manager.file("/opt/hitcounter/.env").content_string
    assert "SWARM_DRILL=rolling" in manager.file("/opt/hitcounter/previous/.env").content_string
    assert_converged()


def test_a_service_changed_by_hand_is_put_back(manager, stack_vars):
    manager.check_output(f"docker service scale --detach {WEB}=1")
    output = playbook()
    assert recap_changed(output) > 0, "site.yml did not notice the service scaled by hand"
    wait_for_replicas(manager, int(stack_vars["hitcounter_web_replicas"]))
    assert_converged()


def test_backup_and_restore_on_the_data_node(manager, tmp_path):
    url = f"http://{node_address('swarm-2')}:{PORT}/"
    saved = count(url)
    rc, output = run_playbook("backup.yml", "-e", f"backup_dir={tmp_path}")
    assert rc == 0, failure_report(output)
    # Named after the manager that deploys the stack; made on the data node.
    assert (tmp_path / MANAGER / "hitcounter" / "redis.rdb").stat().st_size > 0
    for _ in range(3):
        count(url)
    rc, output = run_playbook("restore.yml", "-e", f"backup_dir={tmp_path}")
    assert rc == 0, failure_report(output)
    # The first page served after the restore (the proxy finds the new replicas by DNS).
    assert wait_for("the page after the restore", lambda: answered_count(url), 60, interval=1) == saved + 1
    assert_converged()


def test_an_unhealthy_update_is_rolled_back_without_a_failed_request(manager):
    before = web_release(manager)
    with PacedLoad(manager, f"http://127.0.0.1:{PORT}/") as load:
        # Redis has 16 databases: db 99 passes the variable checks but fails the app's health check.
        rc, output = run_playbook("site.yml", "-e", "hitcounter_redis_db=99")
    assert rc != 0
    assert "did not converge on the cluster" in output and "rolled back" in output, output[-3000:]
    assert load.result["failed"] == 0 and load.result["total"] > 100, load.result
    assert service_spec(manager, WEB)["UpdateStatus"]["State"] == "rollback_completed"
    assert web_release(manager) == before
    assert "DB_REDIS=99" not in manager.file("/opt/hitcounter/.env").content_string
    assert_converged()


def test_losing_a_worker_reschedules_its_replicas(manager, stack_vars):
    lost = next(node for _, node in running_tasks(manager, WEB) if node != MANAGER)
    with PacedLoad(manager, f"http://127.0.0.1:{PORT}/") as load:
        stopped = time.monotonic()
        subprocess.run(["docker", "stop", lost], check=True, capture_output=True)
        wait_for("the replicas to run on the other nodes", lambda: len(
            tasks := running_tasks(manager, WEB)) == int(stack_vars["hitcounter_web_replicas"])
            and lost not in {node for _, node in tasks}, 120, interval=1)
        rescheduled = time.monotonic() - stopped
    print(f"worker {lost} lost: replicas back after {rescheduled:.1f} s; {load.result}")
    assert load.result["failed"] == 0 and load.result["total"] > 100, load.result
    assert nodes(manager)[lost]["Status"] == "Down"
    # The node comes back (its engine keeps its cluster state) and rejoins by itself.
    subprocess.run(["docker", "start", lost], check=True, capture_output=True)
    wait_for(f"{lost} to be ready again", lambda: nodes(manager)[lost]["Status"] == "Ready", 180, interval=2)
    assert_converged()


def test_a_node_leaves_and_joins_again(manager, stack_vars):
    leaving = write_inventory({"swarm_managers": [MANAGER], "swarm_workers": ["swarm-2"], "swarm_leaving": ["swarm-3"]})
    try:
        playbook(inventory=leaving)
    finally:
        os.remove(leaving)
    assert sorted(nodes(manager)) == ["swarm-1", "swarm-2"]
    assert node_host("swarm-3").check_output("docker info --format '{{.Swarm.LocalNodeState}}'") == "inactive"
    wait_for_replicas(manager, int(stack_vars["hitcounter_web_replicas"]))
    assert count(f"http://{node_address('swarm-2')}:{PORT}/") > 0
    # Listed again as a worker: it joins, and the cluster is as before.
    playbook()
    assert sorted(nodes(manager)) == NODES and nodes(manager)["swarm-3"]["Status"] == "Ready"
    assert_converged()


def test_three_managers_keep_a_quorum_when_one_is_lost(manager):
    all_managers = write_inventory({"swarm_managers": NODES})
    try:
        playbook(inventory=all_managers)
        found = nodes(manager)
        assert sorted(node["ManagerStatus"] for node in found.values()) == ["Leader", "Reachable", "Reachable"], found
        subprocess.run(["docker", "stop", "swarm-3"], check=True, capture_output=True)
        # Two of three managers are a majority: the cluster still takes changes.
        wait_for("swarm-3 to be seen down", lambda: nodes(manager)["swarm-3"]["Status"] == "Down", 60, interval=2)
        manager.check_output("docker node update --label-add drill=quorum swarm-2")
        manager.check_output("docker node update --label-rm drill swarm-2")
        subprocess.run(["docker", "start", "swarm-3"], check=True, capture_output=True)
        wait_for("swarm-3 to be ready again", lambda: nodes(manager)["swarm-3"]["Status"] == "Ready", 180, interval=2)
    finally:
        os.remove(all_managers)
    # The scenario's inventory again: swarm-2 and swarm-3 are demoted to workers.
    playbook()
    assert [name for name, node in nodes(manager).items() if node["ManagerStatus"]] == [MANAGER]
    assert_converged()
