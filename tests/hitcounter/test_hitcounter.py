"""The hit counter on a staging host: containers and limits, counting, concurrency, supervisor,
crash drills and a staging-host reboot. Expected values come from the scenario's variables."""

import os
import subprocess

import pytest
import yaml

from conftest import container_name
from stack import (assert_limits, assert_published_by_nat, assert_supervisor_restarts_gunicorn, container_env, container_exec, crash_and_wait_for_restart,
                   http_get, inspect, kill_in_container, page_count, reboot_staging_host, supervisor_status, wait_for,
                   replicas, wait_healthy, wait_until_the_proxy_routes)

REDIS = "hitcounter-redis-1"


@pytest.fixture
def web(host):
    """One web replica: rollouts (other modules' drills) give replicas new names."""
    return replicas(host, "hitcounter")[0]


@pytest.fixture(scope="module")
def page_url(stack_vars):
    return f"http://127.0.0.1:{stack_vars['hitcounter_port']}/"


def hits_in_redis(host, stack_vars):
    return int(container_exec(host, REDIS, f"redis-cli -p {stack_vars['hitcounter_redis_port']} get hits") or 0)


def gunicorn_workers(host, web, master_pid):
    """PIDs (in the container) of the gunicorn master's children. One read of the kernel's own
    list: scanning /proc races with processes that exit between listing and reading."""
    return set(container_exec(host, web, f"cat /proc/{master_pid}/task/{master_pid}/children").split())


def test_containers_run_with_the_configured_policy_and_limits(host, web, stack_vars):
    assert assert_limits(host, web, stack_vars, "hitcounter_web")["Config"]["User"] == "10001:10001"
    assert assert_limits(host, REDIS, stack_vars, "hitcounter_redis")["Config"]["User"] == "999:999"


def test_web_gets_its_redis_address_from_the_environment(host, web, stack_vars):
    env = container_env(host, web)
    assert env["HOST_REDIS"] == "redis"
    assert env["PORT_REDIS"] == str(stack_vars["hitcounter_redis_port"])
    command = inspect(host, REDIS)["Config"]["Cmd"]
    assert command[command.index("--port") + 1] == str(stack_vars["hitcounter_redis_port"])


def test_published_port_answers_and_each_get_counts_one(host, stack_vars, page_url):
    assert_published_by_nat(host, "hitcounter", stack_vars)
    first = page_count(host, page_url)
    assert [page_count(host, page_url) for _ in range(5)] == [first + n for n in range(1, 6)]
    assert hits_in_redis(host, stack_vars) == first + 5


def test_200_concurrent_requests_add_exactly_200(host, stack_vars, page_url):
    before = hits_in_redis(host, stack_vars)
    script = ("import concurrent.futures as f, urllib.request as u\n"
              f"def get(_): return u.urlopen('{page_url}', timeout=30).status\n"
              "with f.ThreadPoolExecutor(50) as p: print(sum(s == 200 for s in p.map(get, range(200))))")
    assert host.check_output(f"python3 -c \"{script}\"") == "200"
    assert hits_in_redis(host, stack_vars) - before == 200


def test_redis_is_not_reachable_on_any_host_port(host, stack_vars):
    assert not any(binding for binding in (inspect(host, REDIS)["NetworkSettings"]["Ports"] or {}).values())
    redis_port = str(stack_vars["hitcounter_redis_port"])
    listening = host.socket.get_listening_sockets()
    assert not [socket for socket in listening if socket.rsplit(":", 1)[-1] in (redis_port, "6379")], listening


def test_supervisor_runs_gunicorn(host, web):
    name, state, pid = supervisor_status(host, web)
    assert (name, state) == ("gunicorn", "RUNNING")
    assert pid > 1


def test_supervisor_restarts_a_killed_gunicorn_master(host, web, page_url):
    assert_supervisor_restarts_gunicorn(host, web, page_url)


def test_gunicorn_respawns_a_killed_worker(host, web, page_url):
    _, _, master = supervisor_status(host, web)
    workers = wait_for("gunicorn workers", lambda: gunicorn_workers(host, web, master), 15)
    victim = sorted(workers)[0]
    kill_in_container(host, web, victim)
    wait_for("a replacement worker", lambda: (now := gunicorn_workers(host, web, master))
             and victim not in now and len(now) == len(workers), 15)
    assert supervisor_status(host, web)[2] == master
    assert http_get(host, page_url)[0] == 200


def test_web_comes_back_after_its_main_process_is_killed(host, web, page_url):
    crash_and_wait_for_restart(host, web)
    assert http_get(host, page_url)[0] == 200


def test_redis_comes_back_after_its_main_process_is_killed(host, page_url):
    crash_and_wait_for_restart(host, REDIS)
    wait_for("the page to count again", lambda: http_get(host, page_url)[0] == 200, 15)


def test_counter_survives_a_graceful_redis_restart(host, stack_vars, page_url):
    count = page_count(host, page_url)
    host.check_output(f"docker restart {REDIS}")
    wait_healthy(host, REDIS)
    assert hits_in_redis(host, stack_vars) == count
    wait_for("the page to count again", lambda: http_get(host, page_url)[0] == 200, 15)


def client_connects(stack_vars, client, port):
    """Whether a client machine at `client` on the staging network (a container on this
    machine, like another VM) gets an HTTP answer from the staging host's `port`: True, or curl's
    exit code (7: refused, 28: no answer within 3 s)."""
    with open(os.environ["MOLECULE_FILE"], encoding="utf-8") as handle:
        network = yaml.safe_load(handle)["platforms"][0]["networks"][0]
    url = f"http://{network['ipv4_address']}:{port}/"
    proc = subprocess.run(["docker", "run", "--rm", "--network", network["name"], "--ip", client, "--entrypoint", "curl",
                           "staging-host:kit", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", url],
                          capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout == "200" or proc.returncode


def assert_entry_firewalled(stack_vars):
    """An allowed client gets the page, one outside compose_stack_allowed_sources gets no
    connection, and Redis's port answers nobody (it is not published)."""
    allowed, outside = stack_vars["firewall_test_clients"]["allowed"], stack_vars["firewall_test_clients"]["outside"]
    assert client_connects(stack_vars, allowed, stack_vars["hitcounter_port"]) is True
    assert client_connects(stack_vars, outside, stack_vars["hitcounter_port"]) == 28, "a client outside the allowed range connected"
    assert client_connects(stack_vars, allowed, stack_vars["hitcounter_redis_port"]) == 7, "Redis is reachable from the network"


def test_entry_port_answers_only_the_allowed_sources(stack_vars):
    assert_entry_firewalled(stack_vars)


def test_engine_stack_and_firewall_come_back_after_a_staging_host_reboot(host, web, stack_vars, page_url):
    count = page_count(host, page_url)
    reboot_staging_host(host, container_name(host))
    wait_healthy(host, REDIS, 120)
    wait_healthy(host, web, 120)
    wait_until_the_proxy_routes(host, "hitcounter")
    assert hits_in_redis(host, stack_vars) == count
    assert page_count(host, page_url) == count + 1
    assert_entry_firewalled(stack_vars)
