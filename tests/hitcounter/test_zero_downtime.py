"""Zero-downtime drills behind the entry proxy: each one runs under a paced load (50 req/s, a new
connection per request) and asserts that no request failed and that the hit counter moved by
exactly the number of answered requests (no lost and no double increment)."""

import json
import os
import shutil

import pytest
import yaml

from conftest import PROJECT_DIR, changed_tasks, failure_report, recap_changed, run_playbook
from stack import (PacedLoad, assert_last_history_entry, assert_quick_json_503_while_down, container_env, crash_main_process, deploy_history, inspect, kill_in_container,
                   proxy_health_view, release_of, replica_addresses, replicas, size_in_bytes, supervisor_status, wait_for, wait_healthy)
from test_hitcounter import REDIS, hits_in_redis, page_url  # noqa: F401 (page_url is a fixture)

PROXY = "hitcounter-proxy-1"


@pytest.fixture
def drill(host, stack_vars, page_url):
    """Runs the body under a paced load; asserts 0 failed requests and an exact counter."""
    def run(action):
        before = hits_in_redis(host, stack_vars)
        with PacedLoad(host, page_url, proxy=PROXY) as load:
            outcome = action()
        result = load.result
        assert result["failed"] == 0, load.report()
        assert result["total"] > 100, load.report()
        assert hits_in_redis(host, stack_vars) - before == result["total"], (result, "the counter lost or doubled a hit")
        wait_for("every replica to be up in the proxy", lambda: (view := proxy_health_view(host, "hitcounter"))
                 and set(view) >= replica_addresses(host, "hitcounter") and all(view[a] == "UP" for a in replica_addresses(host, "hitcounter")), 20)
        return outcome
    return run


def assert_web_replicas(host, memory, workers):
    """As many replicas as the scenario asks for, each with this memory limit and worker count."""
    names = replicas(host, "hitcounter")
    assert len(names) == host.ansible.get_variables().get("hitcounter_web_replicas", 2), names
    for name in names:
        assert inspect(host, name)["HostConfig"]["Memory"] == size_in_bytes(memory), name
        assert container_env(host, name)["GUNICORN_WORKERS"] == workers, name
    return names


def playbook(*args):
    rc, output = run_playbook("site.yml", *args)
    assert rc == 0, failure_report(output)
    return output


def test_only_the_proxy_is_published_and_it_sees_every_replica_up(host, stack_vars):
    published = {name for name in host.check_output("docker ps --format '{{.Names}}'").split()
                 if any(inspect(host, name)["NetworkSettings"]["Ports"].get(port) for port in inspect(host, name)["NetworkSettings"]["Ports"] or {})}
    assert published == {PROXY}
    assert len(replicas(host, "hitcounter")) == stack_vars.get("hitcounter_web_replicas", 2)
    view = proxy_health_view(host, "hitcounter")
    assert {address: view.get(address) for address in replica_addresses(host, "hitcounter")} == dict.fromkeys(replica_addresses(host, "hitcounter"), "UP")


def test_new_app_image_rolls_out_with_no_failed_request(host, drill, tmp_path):
    app = tmp_path / "app"
    shutil.copytree(os.path.join(PROJECT_DIR, "roles", "hitcounter", "files", "app"), app)
    with open(app / "app.py", "a", encoding="utf-8") as handle:
        handle.write("\n# A new build of the app (zero-downtime drill).\n")
    old_image = {inspect(host, name)["Config"]["Image"] for name in replicas(host, "hitcounter")}
    drill(lambda: playbook("-e", json.dumps({"hitcounter_app_src": str(app)})))
    new_image = {inspect(host, name)["Config"]["Image"] for name in replicas(host, "hitcounter")}
    assert len(new_image) == 1 and new_image != old_image, (old_image, new_image)


def test_web_env_change_rolls_out_with_no_failed_request(host, drill):
    old = replicas(host, "hitcounter")
    drill(lambda: playbook("-e", json.dumps({"hitcounter_env": {"DRILL": "env"}})))
    assert not set(replicas(host, "hitcounter")) & set(old)
    entry = assert_last_history_entry(host, "hitcounter", "deploy", "ok", release_of(host, "hitcounter"))
    assert ".env" in entry["changes"] and entry["images"]["web"].split("/")[-1].startswith("hitcounter-app:"), entry


def test_web_limit_change_rolls_out_with_no_failed_request_and_keeps_redis(host, drill):
    redis_id = inspect(host, REDIS)["Id"]
    old = replicas(host, "hitcounter")
    drill(lambda: playbook("-e", json.dumps({"hitcounter_env": {"DRILL": "env"}, "hitcounter_web_memory": "112M",
                                             "hitcounter_workers": 3})))
    assert not set(assert_web_replicas(host, "112M", "3")) & set(old), "old replicas were left running"
    assert inspect(host, REDIS)["Id"] == redis_id, "redis was recreated for a web-only change"


def test_rollback_goes_to_the_previous_release_with_no_failed_request(host, stack_vars, drill):
    output = drill(lambda: run_playbook("rollback.yml"))
    assert output[0] == 0, failure_report(output[1])
    assert_web_replicas(host, stack_vars["hitcounter_web_memory"], "2")
    assert_last_history_entry(host, "hitcounter", "rollback", "ok", release_of(host, "hitcounter"))


def kept_releases(host):
    """Ids of the releases the host keeps for rollback_to, newest first."""
    return host.check_output("ls -t /opt/hitcounter/releases").split()


def previous_release(host):
    compose = yaml.safe_load(host.file("/opt/hitcounter/previous/compose.yaml").content_string)
    return compose["services"]["web"]["labels"]["compose-stack.release"]


def test_rollback_to_a_kept_release_skips_the_previous_one_with_no_failed_request(host, drill):
    def two_back():
        return [release for release in kept_releases(host) if release not in (previous_release(host), release_of(host, "hitcounter"))]
    if not two_back():  # run alone on a fresh host: two deploys keep the live release two back
        for name in ("one", "two"):
            playbook("-e", json.dumps({"hitcounter_env": {"DRILL": f"rollback-to-{name}"}}))
    live, kept, target = release_of(host, "hitcounter"), kept_releases(host), two_back()[0]
    assert len(kept) <= host.ansible.get_variables().get("compose_stack_keep_releases", 3), kept

    rc, output = run_playbook("rollback.yml", "-e", "rollback_to=0123456789abcdef")
    assert rc != 0 and f"keeps no release 0123456789abcdef of hitcounter; it keeps {', '.join(kept)} (newest first" in output, failure_report(output)
    assert release_of(host, "hitcounter") == live

    rc, output = drill(lambda: run_playbook("rollback.yml", "-e", f"rollback_to={target}"))
    assert rc == 0, failure_report(output)
    assert release_of(host, "hitcounter") == target
    entry = assert_last_history_entry(host, "hitcounter", "rollback", "ok", target)
    deployed = next(line for line in deploy_history(host, "hitcounter") if line["release"] == target)
    assert entry["images"] == deployed["images"], (entry, deployed)
    # The release it left is kept (newest), and previous/ is that one: a plain rollback goes forward again.
    assert kept_releases(host)[0] == previous_release(host) == live


def test_graceful_restart_of_one_replica_costs_no_request(host, drill):
    drill(lambda: host.check_output(f"docker restart {replicas(host, 'hitcounter')[0]}"))


def test_kill_of_one_replicas_main_process_costs_no_request(host, drill):
    victim = replicas(host, "hitcounter")[0]

    def crash():
        restarts = crash_main_process(host, victim)
        wait_for(f"{victim} to be restarted", lambda: inspect(host, victim)["RestartCount"] > restarts, 30)
        wait_healthy(host, victim)
    drill(crash)


def test_kill_of_one_replicas_gunicorn_master_costs_no_request(host, drill):
    victim = replicas(host, "hitcounter")[0]

    def crash():
        _, _, master = supervisor_status(host, victim)
        kill_in_container(host, victim, master)
        wait_for("a new gunicorn master", lambda: (state := supervisor_status(host, victim))[1] == "RUNNING" and state[2] != master, 20)
        wait_healthy(host, victim)
    drill(crash)


def test_proxy_config_change_reloads_in_place_with_no_failed_request(host, drill):
    proxy_id = inspect(host, PROXY)["Id"]
    output = drill(lambda: playbook("-e", json.dumps({"compose_stack_proxy_maxconn": 1999})))
    reload = "compose_stack : Reload the proxy in place (HAProxy master-worker reload keeps its listening socket)"
    assert reload in changed_tasks(output)
    assert inspect(host, PROXY)["Id"] == proxy_id, "the proxy was recreated"
    assert "maxconn 1999" in host.file("/opt/hitcounter/proxy/haproxy.cfg").content_string


def test_bad_deploy_is_rolled_back_with_no_failed_request_and_the_next_good_run_converges(host, stack_vars, drill):
    live = replicas(host, "hitcounter")
    env = host.file("/opt/hitcounter/.env").content_string
    # Port 1 has no Redis: the new replicas never pass /healthz.
    bad_release = {"hitcounter_env": {"PORT_REDIS": "1"}, "compose_stack_wait_timeout": 20}
    rc, output = drill(lambda: run_playbook("site.yml", "-e", json.dumps(bad_release)))
    assert rc != 0, output[-6000:]
    assert "the previous release is still live" in output, output[-6000:]
    assert replicas(host, "hitcounter") == live, "the live replicas were touched"
    assert host.file("/opt/hitcounter/.env").content_string == env, "the failed release's files stayed"
    failed = deploy_history(host, "hitcounter")[-1]
    assert (failed["action"], failed["result"]) == ("deploy", "rolled back") and failed["error"], failed
    assert failed["release"] != release_of(host, "hitcounter") and ".env" in failed["changes"], failed

    playbook()
    assert_web_replicas(host, stack_vars["hitcounter_web_memory"], "2")
    assert recap_changed(playbook("--check")) == 0


def test_kill_of_redis_costs_latency_not_a_request(host, drill):
    """Redis restarts by its policy and reloads its append-only file; requests wait for it, and
    a request whose INCR Redis ran before it died counts once on the retry (its request ID)."""
    def crash():
        restarts = crash_main_process(host, REDIS)
        wait_for("Redis to be restarted", lambda: inspect(host, REDIS)["RestartCount"] > restarts, 30)
        wait_healthy(host, REDIS)
    drill(crash)


def test_dockerd_restart_costs_no_request(host, drill):
    """live-restore keeps the containers running; with userland-proxy off the published port is
    kernel NAT, with no docker-proxy process to lose."""
    pid = host.check_output("systemctl show -p MainPID --value docker")
    drill(lambda: host.check_output("systemctl restart docker"))
    assert host.check_output("systemctl show -p MainPID --value docker") != pid, "dockerd was not restarted"


def test_redis_outage_past_the_wait_gets_a_json_503_and_the_page_recovers(host, page_url, stack_vars):
    # Each request waits hitcounter_redis_wait_seconds for Redis, then answers at once.
    assert_quick_json_503_while_down(host, REDIS, page_url, stack_vars.get("hitcounter_redis_wait_seconds", 5) + 1.5)
