"""The docker_engine role on a staging host: service, compose, daemon options, users, a real
published container with a memory limit, live-restore across an engine restart, and the effect of
each CIS default (icc off, no-new-privileges, userland-proxy off)."""

import re

import pytest

from stack import http_get, inspect, wait_for

PROBE_IMAGE = "probe-web:kit"
PROBE_PORT = 18080


def test_docker_is_active_and_enabled(host):
    docker = host.service("docker")
    assert docker.is_running
    assert docker.is_enabled


def test_compose_v2_is_at_least_2_18(host):
    version = host.check_output("docker compose version --short")
    major, minor = (int(part) for part in re.match(r"v?(\d+)\.(\d+)", version).groups())
    assert (major, minor) >= (2, 18), version


def test_daemon_json_options_are_in_effect(host):
    assert host.file("/etc/docker/daemon.json").mode == 0o644
    assert host.check_output("docker info --format '{{.LoggingDriver}}'") == "json-file"
    assert host.check_output("docker info --format '{{.LiveRestoreEnabled}}'") == "true"
    assert "name=no-new-privileges" in host.check_output("docker info --format '{{json .SecurityOptions}}'")


def test_dockerd_runs_with_the_configured_environment(host):
    pid = host.check_output("systemctl show -p MainPID --value docker")
    environ = host.file(f"/proc/{pid}/environ").content.split(b"\0")
    assert b"DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1" in environ


def test_configured_users_are_in_the_docker_group(host):
    assert "docker" in host.user("deploy").groups


@pytest.fixture(scope="module")
def probe_container(host, deliver_kit_image):
    deliver_kit_image(PROBE_IMAGE)
    host.run("docker rm -f probe-web")
    host.check_output(f"docker run -d --name probe-web --memory 128m "
                      f"-p 127.0.0.1:{PROBE_PORT}:8080 {PROBE_IMAGE}")
    yield "probe-web"
    host.run("docker rm -f probe-web")


def probe_page(host):
    return wait_for("the probe container to answer", lambda: (
        (response := http_get(host, f"http://127.0.0.1:{PROBE_PORT}/"))[0] == 200 and response[1]), 15)


def test_published_container_with_memory_limit_answers(host, probe_container):
    state = inspect(host, probe_container)
    assert state["State"]["Running"]
    assert state["HostConfig"]["Memory"] == 128 * 1024 * 1024
    assert probe_page(host).strip() == "probe-web ok"


def test_userland_proxy_off_publishes_by_kernel_nat_for_local_clients_too(host, probe_container):
    """CIS 2.16: no docker-proxy process, yet a client on the host's loopback gets the page (DNAT
    in the OUTPUT chain; dockerd itself only holds the port, so that nothing else takes it)."""
    assert not host.process.filter(comm="docker-proxy")
    # With the userland proxy, Docker's OUTPUT jump leaves loopback out ("! -d 127.0.0.0/8").
    output_jumps = [rule for rule in host.check_output("iptables -t nat -S OUTPUT").splitlines() if rule.endswith("-j DOCKER")]
    assert output_jumps and not [rule for rule in output_jumps if "127.0.0.0/8" in rule], output_jumps
    assert probe_page(host).strip() == "probe-web ok"


def busybox(host, args, network="bridge"):
    """A throwaway container of the probe image running busybox `args` (its exit code and output)."""
    return host.run(f"docker run --rm --network {network} --entrypoint /bin/busybox {PROBE_IMAGE} {args}")


def test_icc_off_isolates_containers_on_the_default_bridge_only(host, probe_container):
    """CIS 2.2: a container on the default bridge cannot reach another one there; on a
    user-defined network (every compose stack's) it can."""
    target = inspect(host, probe_container)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert busybox(host, f"wget -q -T 3 -O - http://{target}:8080/").rc != 0
    host.run("docker rm -f icc-peer; docker network rm icc-check")
    host.check_output("docker network create icc-check")
    try:
        host.check_output(f"docker run -d --name icc-peer --network icc-check {PROBE_IMAGE}")
        reached = wait_for("a peer on a user-defined network", lambda: (
            result := busybox(host, "wget -q -T 3 -O - http://icc-peer:8080/", "icc-check")).rc == 0 and result.stdout, 15)
        assert reached.strip() == "probe-web ok"
    finally:
        host.run("docker rm -f icc-peer; docker network rm icc-check")


def test_no_new_privileges_is_the_default_for_every_container(host):
    """CIS 2.14: a container started without any security option runs with no_new_privs set."""
    assert re.search(r"^NoNewPrivs:\s+1$", busybox(host, "grep NoNewPrivs /proc/self/status").stdout, re.M)


def test_container_survives_engine_restart(host, probe_container):
    before = inspect(host, probe_container)["State"]
    dockerd_before = host.check_output("systemctl show -p MainPID --value docker")
    host.check_output("systemctl restart docker")
    dockerd_after = host.check_output("systemctl show -p MainPID --value docker")
    assert dockerd_after != dockerd_before, "dockerd was not restarted"
    after = inspect(host, probe_container)["State"]
    assert after["Running"]
    assert after["Pid"] == before["Pid"], "the container was restarted, not kept alive"
    assert after["StartedAt"] == before["StartedAt"]
    assert probe_page(host).strip() == "probe-web ok"
