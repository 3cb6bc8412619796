"""Reprovisioning two staging hosts (staging-1: hit counter, staging-2: users) through the
project's playbooks. The tests run in file order, each one leaving both hosts converged:
check mode, drift repair, config changes, a rolling run stopped by an unhealthy host,
backup/restore onto a rebuilt host, a stack switch and teardown."""

import json
import os
import re

import pytest
import testinfra

from conftest import changed_tasks, failure_report, recap_changed, run_playbook
from stack import container_env, deploy_history, http, inspect, page_count, post_user, replicas, wait_for

HITS = "http://127.0.0.1:8000/"
API = "http://127.0.0.1:8000"
COMPOSE_PROJECT = "com.docker.compose.project"


@pytest.fixture(scope="module")
def counter_host():
    return testinfra.get_host(f"ansible://staging-1?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


@pytest.fixture(scope="module")
def users_host():
    return testinfra.get_host(f"ansible://staging-2?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


def playbook(name, *args):
    """Runs a project playbook that must succeed; returns its output."""
    rc, output = run_playbook(name, *args)
    assert rc == 0, failure_report(output)
    return output


def assert_converged(*limit):
    """A check-mode run reports nothing to change (and so would a real run); returns its output."""
    output = playbook("site.yml", "--check", "--diff", *limit)
    assert recap_changed(output) == 0, changed_tasks(output)
    return output


def hits(host):
    return page_count(host, HITS)


def user_names(host):
    status, body = http(host, f"{API}/users")
    assert status == 200, body
    return [user["name"] for user in json.loads(body)["users"]]


def container_ids(host, project):
    """{service: [container IDs]} of a compose project (web has replicas), stopped containers included."""
    ids = {}
    for line in host.check_output(
            f"docker ps -a --filter label={COMPOSE_PROJECT}={project} "
            "--format '{{.Label \"com.docker.compose.service\"}} {{.ID}}'").splitlines():
        service, container = line.split()
        ids.setdefault(service, []).append(container)
    return {service: sorted(found) for service, found in ids.items()}


def project_leftovers(host, project):
    """Containers, networks, app images and files a removed project would have left behind."""
    label = f"label={COMPOSE_PROJECT}={project}"
    project_dir = host.file(f"/opt/{project}")
    return {"containers": host.check_output(f"docker ps -aq --filter {label}").split(),
            "networks": host.check_output(f"docker network ls -q --filter {label}").split(),
            "images": host.check_output(f"docker images -q --filter label=compose-stack.app={project}").split(),
            "files": sorted(project_dir.listdir()) if project_dir.exists else None}


NOTHING_LEFT = {"containers": [], "networks": [], "images": [], "files": None}


def volumes(host, project):
    return host.check_output(f"docker volume ls -q --filter label={COMPOSE_PROJECT}={project}").split()


def web_env(host, project):
    """The environment of the web replicas (asserted to be the same in each)."""
    envs = [container_env(host, name) for name in replicas(host, project)]
    assert envs and all(env == envs[0] for env in envs), envs
    return envs[0]


def test_converged_hosts_serve_their_stacks(counter_host, users_host):
    assert hits(counter_host) >= 1
    post_user(users_host, API, "alice")
    post_user(users_host, API, "bob")
    assert user_names(users_host)[-2:] == ["alice", "bob"]


def test_check_mode_on_converged_hosts_reports_no_change():
    assert "--- before" not in assert_converged()


def test_stopped_containers_are_reported_by_check_mode_then_started(counter_host):
    before = hits(counter_host)
    ids = container_ids(counter_host, "hitcounter")
    counter_host.check_output("docker stop hitcounter-web-1 hitcounter-redis-1")
    # The replica left running fails its health check without Redis: the repair must wait for it
    # to recover once Redis is back (compose up --wait alone gives up on an unhealthy container).
    running = [name for name in replicas(counter_host, "hitcounter") if name != "hitcounter-web-1"]
    wait_for("the running replica to fail its health check", lambda: all(
        inspect(counter_host, name)["State"]["Health"]["Status"] == "unhealthy" for name in running), 60)

    output = playbook("site.yml", "--check", "--diff", "--limit", "staging-1")
    assert changed_tasks(output) == ["compose_stack : Report what a real run would start, create or recreate "
                                     "(compose cannot dry-run a stopped dependency)"]
    assert "start hitcounter-web-1 (exited)" in output and "start hitcounter-redis-1 (exited)" in output
    assert not inspect(counter_host, "hitcounter-redis-1")["State"]["Running"], "check mode started a container"

    playbook("site.yml", "--limit", "staging-1")
    assert container_ids(counter_host, "hitcounter") == ids, "a stopped container needs a start, not a new container"
    assert hits(counter_host) == before + 1
    assert_converged("--limit", "staging-1")


def test_edited_and_deleted_project_files_are_reported_then_restored(counter_host):
    compose, env = counter_host.file("/opt/hitcounter/compose.yaml"), counter_host.file("/opt/hitcounter/.env")
    sums = (compose.sha256sum, env.sha256sum)
    ids = container_ids(counter_host, "hitcounter")
    counter_host.check_output("rm /opt/hitcounter/compose.yaml && sed -i s/GUNICORN_WORKERS=.*/GUNICORN_WORKERS=5/ /opt/hitcounter/.env")

    output = playbook("site.yml", "--check", "--diff", "--limit", "staging-1")
    assert set(changed_tasks(output)) == {
        "compose_stack : Write the release (compose.yaml, .env, proxy config)",
        "compose_stack : Report what a real run would start, create or recreate (compose cannot dry-run a stopped dependency)"}
    assert set(re.findall(r"^--- before: (\S+)$", output, re.MULTILINE)) == {"/opt/hitcounter/compose.yaml", "/opt/hitcounter/.env"}
    assert "apply the new release (.env, compose.yaml)" in output
    assert "-GUNICORN_WORKERS=5\n+GUNICORN_WORKERS=2" in output
    assert not compose.exists and "GUNICORN_WORKERS=5" in env.content_string, "check mode wrote a file"

    playbook("site.yml", "--limit", "staging-1")
    assert (compose.sha256sum, env.sha256sum) == sums
    assert container_ids(counter_host, "hitcounter") == ids, "the containers already ran the desired config"
    assert_converged("--limit", "staging-1")


def test_containers_changed_by_hand_behind_unchanged_files_are_put_back(counter_host):
    """A converged host costs no compose up; this is what the skip must still find: a container
    made from another config by hand (compose's config hash) and a web replica removed by hand."""
    before = hits(counter_host)
    counter_host.check_output(
        "printf 'services:\\n  redis:\\n    labels:\\n      by-hand: \"1\"\\n' >/tmp/by-hand.yaml && "
        "docker compose -p hitcounter --project-directory /opt/hitcounter -f /opt/hitcounter/compose.yaml "
        f"-f /tmp/by-hand.yaml up -d --no-deps --wait redis && docker rm -f {replicas(counter_host, 'hitcounter')[-1]}")
    assert inspect(counter_host, "hitcounter-redis-1")["Config"]["Labels"].get("by-hand") == "1"

    output = playbook("site.yml", "--check", "--diff", "--limit", "staging-1")
    assert set(changed_tasks(output)) == {
        "compose_stack : Run docker compose up --wait for the data services, one by one",
        "compose_stack : Run docker compose up --wait for the web replicas (none runs an old release)"}
    assert inspect(counter_host, "hitcounter-redis-1")["Config"]["Labels"].get("by-hand") == "1", "check mode recreated"

    playbook("site.yml", "--limit", "staging-1")
    assert "by-hand" not in inspect(counter_host, "hitcounter-redis-1")["Config"]["Labels"]
    assert len(replicas(counter_host, "hitcounter")) == 2
    assert hits(counter_host) == before + 1
    assert_converged("--limit", "staging-1")


def test_removed_network_is_reported_then_recreated_with_the_data(counter_host):
    before = hits(counter_host)
    counter_host.check_output(f"docker stop $(docker ps -q --filter label={COMPOSE_PROJECT}=hitcounter) && docker network rm hitcounter_default")

    output = playbook("site.yml", "--check", "--diff", "--limit", "staging-1")
    assert "recreate hitcounter-redis-1 (its network was removed)" in output
    assert not counter_host.run("docker network inspect hitcounter_default").succeeded, "check mode made the network"

    playbook("site.yml", "--limit", "staging-1")
    assert counter_host.run("docker network inspect hitcounter_default").succeeded
    assert hits(counter_host) == before + 1
    assert_converged("--limit", "staging-1")


def test_config_changes_recreate_only_the_affected_service_and_keep_data(counter_host, users_host):
    count, names = hits(counter_host), user_names(users_host)
    counter_ids, users_ids = container_ids(counter_host, "hitcounter"), container_ids(users_host, "users")

    try:
        playbook("site.yml", "-e", json.dumps({"hitcounter_workers": 3, "users_threads": 4}))
        after_env = container_ids(counter_host, "hitcounter"), container_ids(users_host, "users")
        assert after_env[0]["redis"] == counter_ids["redis"] and after_env[0]["web"] != counter_ids["web"]
        assert after_env[1]["db"] == users_ids["db"] and after_env[1]["web"] != users_ids["web"]
        assert web_env(counter_host, "hitcounter")["GUNICORN_WORKERS"] == "3"
        assert web_env(users_host, "users")["GUNICORN_THREADS"] == "4"
        assert hits(counter_host) == count + 1
        assert user_names(users_host) == names

        playbook("site.yml", "-e", json.dumps({"hitcounter_workers": 3, "users_threads": 4, "hitcounter_redis_memory": "96M"}))
        after_limit = container_ids(counter_host, "hitcounter")
        assert after_limit["redis"] != counter_ids["redis"] and after_limit["web"] == after_env[0]["web"]
        assert inspect(counter_host, "hitcounter-redis-1")["HostConfig"]["Memory"] == 96 * 2**20
        assert hits(counter_host) == count + 2, "the counter was lost with the Redis container"
    finally:
        playbook("site.yml")
    assert web_env(counter_host, "hitcounter")["GUNICORN_WORKERS"] == "2"
    assert hits(counter_host) == count + 3 and user_names(users_host) == names
    assert_converged()


def test_rolling_run_stops_at_an_unhealthy_host_and_the_others_keep_serving(counter_host, users_host):
    users_ids = container_ids(users_host, "users")
    names = user_names(users_host)
    try:
        # Redis has 16 databases: db 99 passes the variable checks but fails the app's health check.
        rc, output = run_playbook("site.yml", "-e", json.dumps({"hitcounter_redis_db": 99, "users_threads": 4,
                                                               "compose_stack_wait_timeout": 20}))
        assert rc != 0, output
        assert "Stack hitcounter did not come up healthy" in output
        recap = output.split("PLAY RECAP", 1)[1]
        assert re.search(r"staging-1\s+: .*failed=1", recap), recap
        assert "staging-2" not in recap.split("TASKS RECAP")[0] or re.search(r"staging-2\s+: .*changed=0", recap), recap
        assert container_ids(users_host, "users") == users_ids, "the rollout went on past the failed host"
        assert web_env(users_host, "users")["GUNICORN_THREADS"] != "4"
        assert user_names(users_host) == names
    finally:
        playbook("site.yml")
    assert hits(counter_host) > 1
    assert_converged()


def test_backup_restores_onto_a_rebuilt_host_and_a_stack_switch_leaves_nothing(counter_host, users_host):
    playbook("backup.yml")
    count, names = hits(counter_host) - 1, user_names(users_host)
    post_user(users_host, API, "after-the-backup")

    # Rebuild staging-2 from scratch (a new VM: new engine, no volumes), give it the hit counter
    # with staging-1's data.
    playbook("local.yml", "-e", "staging_host_name=staging-2", "-e", "staging_host_state=absent")
    ssh_port = users_host.ansible.get_variables()["ansible_port"]
    playbook("local.yml", "-e", "staging_host_name=staging-2", "-e", f"staging_host_ssh_port={ssh_port}",
             "-e", '{"staging_host_ports": []}')
    playbook("site.yml", "--limit", "staging-2", "-e", "app_stack=hitcounter")
    playbook("restore.yml", "--limit", "staging-2", "-e", "app_stack=hitcounter", "-e", "restore_from=staging-1")
    assert hits(users_host) == count + 1

    # Switch it to users (its inventory stack): check mode reports it and removes nothing; the real
    # run leaves nothing of the hit counter but its data volume.
    output = playbook("site.yml", "--check", "--diff", "--limit", "staging-2")
    assert "Would deploy users for the first time" in output and "changed: [staging-2] => (item=hitcounter-web-1)" in output
    assert container_ids(users_host, "hitcounter").keys() == {"proxy", "web", "redis"}, "check mode removed the hit counter"
    playbook("site.yml", "--limit", "staging-2")
    assert project_leftovers(users_host, "hitcounter") == NOTHING_LEFT
    assert volumes(users_host, "hitcounter") == ["hitcounter_redis-data"]
    assert user_names(users_host) == []
    # The rebuilt VM's history of the hit counter outlives the switch: its first deploy, the restore.
    assert [(entry["action"], entry["result"]) for entry in deploy_history(users_host, "hitcounter")] == [("deploy", "ok"), ("restore", "ok")]

    playbook("restore.yml", "--limit", "staging-2")
    assert user_names(users_host) == names
    assert_converged("--limit", "staging-2")


def test_teardown_keeps_the_volumes_unless_purged(users_host):
    names = user_names(users_host)
    rc, output = run_playbook("teardown.yml", "--limit", "staging-2", "-e", "teardown_purge=maybe")
    assert rc != 0 and "Nothing was changed" in output
    assert container_ids(users_host, "users").keys() == {"proxy", "web", "db"}

    playbook("teardown.yml", "--limit", "staging-2")
    # The kept volume keeps the secrets that open it.
    assert project_leftovers(users_host, "users") == dict(NOTHING_LEFT, files=["secrets"])
    assert volumes(users_host, "users") == ["users_db-data"]
    assert recap_changed(playbook("teardown.yml", "--limit", "staging-2")) == 0

    playbook("site.yml", "--limit", "staging-2")
    assert user_names(users_host) == names, "the kept volume lost rows"

    playbook("teardown.yml", "--limit", "staging-2", "-e", "teardown_purge=true")
    assert volumes(users_host, "users") == []
    assert project_leftovers(users_host, "users") == NOTHING_LEFT
