"""A fresh VM's first boot holds apt's locks (cloud-init, unattended-upgrades): site.yml waits
for them before any change, and on timeout fails naming the holder, having changed nothing.
Both drills run on one more staging host made fresh for them (no engine yet), then removed."""

import os
import socket
import time

import pytest
import testinfra
import yaml

from conftest import PROJECT_DIR, failure_report, hold_apt_lock, run_playbook

FRESH = "staging-first-boot"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """(inventory, testinfra host) of a fresh staging host reached like the others: SSH as deploy."""
    port = free_port()
    rc, output = run_playbook("local.yml", "-e", f"staging_host_name={FRESH}", "-e", f"staging_host_ssh_port={port}",
                              "-e", '{"staging_host_ports": []}')
    assert rc == 0, failure_report(output)
    folder = tmp_path_factory.mktemp("first-boot")
    os.symlink(os.path.join(PROJECT_DIR, "inventories", "local", "group_vars"), folder / "group_vars")
    host_vars = {"ansible_host": "127.0.0.1", "ansible_port": port, "app_stack": "none",
                 "ansible_private_key_file": os.path.join(PROJECT_DIR, ".cache", "ssh", "id_ed25519"),
                 "ansible_ssh_common_args": "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes"}
    (folder / "hosts.yml").write_text(yaml.safe_dump({"docker_hosts": {"hosts": {FRESH: host_vars}}}))
    inventory = str(folder / "hosts.yml")
    yield inventory, testinfra.get_host(f"ansible://{FRESH}?ansible_inventory={inventory}")
    run_playbook("local.yml", "-e", f"staging_host_name={FRESH}", "-e", "staging_host_state=absent")


def test_a_lock_held_past_the_timeout_fails_naming_its_holder_and_nothing_is_changed(fresh):
    inventory, host = fresh
    hold_apt_lock(host, 120)
    try:
        rc, output = run_playbook("site.yml", "-e", "docker_engine_first_boot_timeout=5", inventory=inventory)
    finally:
        host.check_output("systemctl stop apt-lock-holder")
    assert rc != 0
    assert "/var/lib/dpkg/lock-frontend is still held after 5 s by pid" in output, failure_report(output)
    assert "import fcntl, sys, time" in output and "Nothing was changed on this host" in output, failure_report(output)
    for path in ("/etc/docker", "/etc/systemd/system/docker.service.d", "/run/lock/docker-hosts-deploy.lock"):
        assert not host.file(path).exists, f"{path} was written by a run that said nothing was changed"
    assert not host.package("docker.io").is_installed


def test_a_cold_run_waits_for_a_lock_held_longer_than_apt_waits_then_succeeds(fresh):
    inventory, host = fresh
    # apt alone gives up after 60 s.
    marks = hold_apt_lock(host, 65)
    started = time.monotonic()
    rc, output = run_playbook("site.yml", inventory=inventory)
    print(f"cold site.yml behind a 65 s dpkg lock: {time.monotonic() - started:.1f} s")
    assert rc == 0, failure_report(output)
    released = float(host.file(f"{marks}.released").content_string)
    installed = host.file("/var/lib/dpkg/info/docker.io.list").mtime.timestamp()
    assert installed > released, "the engine was installed while the lock was held"
    assert host.service("docker").is_running
