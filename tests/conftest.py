"""Shared fixtures of the testinfra verifiers: they run on the controller and reach the staging
hosts through molecule's inventory (ansible backend: SSH as deploy, with sudo). Docker on this
machine is only their hypervisor (create, destroy, stop, reboot)."""

import os
import re
import shlex
import subprocess
import time

import pytest

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def container_name(host):
    """The staging host's name for its hypervisor (a container on this machine named like its
    inventory host): for reboots and stops, never for commands."""
    return host.backend.host.name if hasattr(host.backend.host, "name") else str(host.backend.host)


def ssh_command(host):
    """`ssh ... deploy@address` to the staging host, from its inventory variables (as Ansible logs in)."""
    hostvars = host.ansible.get_variables()
    key = hostvars.get("ansible_private_key_file") or hostvars["ansible_ssh_private_key_file"]
    return ["ssh", "-p", str(hostvars["ansible_port"]), "-i", key, "-o", "BatchMode=yes",
            *shlex.split(hostvars.get("ansible_ssh_common_args", "")), f"{hostvars['ansible_user']}@{hostvars['ansible_host']}"]


@pytest.fixture(scope="module")
def deliver_kit_image(host):
    """Copy an image built by molecule/kit from this machine's engine into the staging host's
    engine (docker save | ssh ... sudo docker load), the way an air-gapped host gets its images."""

    def deliver(image):
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run([*ssh_command(host), "sudo docker load -q"], stdin=save.stdout, check=True, capture_output=True)
        assert save.wait() == 0, f"docker save {image} failed: build it with molecule/kit/build-images"
        return image

    return deliver


@pytest.fixture(scope="module")
def stack_vars(host):
    """The staging host's inventory variables: what the scenario asked for."""
    return host.ansible.get_variables()


# dpkg's frontend lock held the way apt and unattended-upgrades hold it (a POSIX lock: flock
# does not stop apt), for argv[1] seconds, with a file marking when it was taken and released.
APT_LOCK_HOLDER = """
import fcntl, sys, time
lock = open('/var/lib/dpkg/lock-frontend', 'a')
fcntl.lockf(lock, fcntl.LOCK_EX)
open(sys.argv[2] + '.held', 'w').write(repr(time.time()))
time.sleep(float(sys.argv[1]))
open(sys.argv[2] + '.released', 'w').write(repr(time.time()))
"""


def hold_apt_lock(host, seconds, unit="apt-lock-holder"):
    """Holds the host's dpkg lock for `seconds` in a transient systemd unit (as a first boot's
    unattended-upgrades would) and returns once it is held; /run/<unit>.released records when it
    let go. `systemctl stop <unit>` lets go early."""
    marks = f"/run/{unit}"
    host.check_output(f"rm -f {marks}.held {marks}.released && systemd-run --unit={unit} --collect "
                      f"python3 -c {shlex.quote(APT_LOCK_HOLDER)} {seconds} {marks}")
    deadline = time.monotonic() + 30
    while not host.file(f"{marks}.held").exists:
        assert time.monotonic() < deadline, f"{unit} did not take the dpkg lock"
        time.sleep(0.2)
    return marks


def run_playbook(playbook, *args, inventory=None):
    """Run a playbook of this project against molecule's inventory (or `inventory`); returns (rc, output)."""
    cmd = ["ansible-playbook", "-i", inventory or os.environ["MOLECULE_INVENTORY_FILE"],
           os.path.join(PROJECT_DIR, "playbooks", playbook), *args]
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               ANSIBLE_ROLES_PATH=os.path.join(PROJECT_DIR, "roles"))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=PROJECT_DIR)
    return proc.returncode, proc.stdout + proc.stderr


def failure_report(output, tail=3000):
    """A failed playbook run, most telling first: one line naming the task that stopped the play
    and its message (pytest's summary, and so CI's tail, shows only a message's first line), then
    each error with the task it names (Ansible prints the task's file, line and name under it)
    and each failed result, then the output's last lines (often container logs)."""
    lines = output.splitlines()
    failed = [number for number, line in enumerate(lines)
              if line.startswith("[ERROR]") or re.match(r"(fatal|failed): \[", line)]
    failures = ["\n".join(lines[number:number + 12]) for number in failed]
    head = "\n\n".join(failures) if failures else "(no failed task in the output)"
    return f"FAILED TASKS: {last_failure(lines, failed)}\n{head}\n\nLAST LINES:\n{output[-tail:]}"


def last_failure(lines, failed, limit=400):
    """`TASK [name] host: message` of the last failed result (the one that stopped the play), or
    the first error when no task failed (a playbook that does not parse)."""
    results = [number for number in failed if not lines[number].startswith("[ERROR]")]
    if not results:
        return lines[failed[0]][:limit] if failed else "(no failed task in the output)"
    result = lines[results[-1]]
    task = next((line.split(" ***", 1)[0].strip() for line in reversed(lines[:results[-1]])
                 if line.startswith("TASK [")), "TASK [?]")
    host = re.match(r"\w+: \[([^\]]+)\]", result).group(1)
    message = re.search(r'"msg": "((?:[^"\\]|\\.)*)"', result)
    return f"{task} {host}: {(message.group(1) if message else result)[:limit]}"


def changed_tasks(output):
    """Names of the tasks that reported a change (check mode says what it would change)."""
    return re.findall(r"TASK \[([^\]]+)\][^\n]*\n(?:(?!TASK \[).*\n)*?changed: ", output)


def recap_changed(output):
    """The number of changed tasks in a playbook run's PLAY RECAP."""
    counts = re.findall(r"changed=(\d+)", output.split("PLAY RECAP", 1)[-1])
    assert counts, output
    return sum(int(n) for n in counts)
