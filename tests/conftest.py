"""Shared fixtures of the testinfra verifiers: they run on the controller and reach the staging
host through molecule's inventory (ansible backend, docker connection)."""

import os
import re
import subprocess

import pytest

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def container_name(host):
    """The staging host is a container on this machine, named like its inventory host."""
    return host.backend.host.name if hasattr(host.backend.host, "name") else str(host.backend.host)


@pytest.fixture(scope="module")
def deliver_kit_image(host):
    """Copy an image built by molecule/kit from this machine's engine into the staging host's
    engine (docker save | docker load), the way an air-gapped host gets its images."""

    def deliver(image):
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(["docker", "exec", "-i", container_name(host), "docker", "load", "-q"],
                       stdin=save.stdout, check=True, capture_output=True)
        assert save.wait() == 0, f"docker save {image} failed: build it with molecule/kit/build-images"
        return image

    return deliver


@pytest.fixture(scope="module")
def stack_vars(host):
    """The staging host's inventory variables: what the scenario asked for."""
    return host.ansible.get_variables()


def run_playbook(playbook, *args, inventory=None):
    """Run a playbook of this project against molecule's inventory (or `inventory`); returns (rc, output)."""
    cmd = ["ansible-playbook", "-i", inventory or os.environ["MOLECULE_INVENTORY_FILE"],
           os.path.join(PROJECT_DIR, "playbooks", playbook), *args]
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               ANSIBLE_ROLES_PATH=os.path.join(PROJECT_DIR, "roles"))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=PROJECT_DIR)
    return proc.returncode, proc.stdout + proc.stderr


def changed_tasks(output):
    """Names of the tasks that reported a change (check mode says what it would change)."""
    return re.findall(r"TASK \[([^\]]+)\][^\n]*\n(?:(?!TASK \[).*\n)*?changed: ", output)


def recap_changed(output):
    """The number of changed tasks in a playbook run's PLAY RECAP."""
    counts = re.findall(r"changed=(\d+)", output.split("PLAY RECAP", 1)[-1])
    assert counts, output
    return sum(int(n) for n in counts)
