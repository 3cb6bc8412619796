#!/usr/bin/python
"""Waits for a fresh VM's first boot to let go of the package system (cloud-init done, no process
holding apt's or dpkg's locks: unattended-upgrades, apt-daily, cloud-init's own apt), then runs
the role's read-only probe script, all in one round trip."""

DOCUMENTATION = r"""
module: docker_engine_first_boot
short_description: Wait until cloud-init is done and nothing holds the apt/dpkg locks, then probe
description:
  - Runs C(cloud-init status --wait) where cloud-init is installed, then polls the locks that apt
    and dpkg take (POSIX record locks, as apt takes them) until none is held, then runs O(probe).
  - Read-only; supports check mode. On timeout it fails naming the holder (pid and command).
options:
  timeout:
    description: Seconds to wait in all (cloud-init and locks together).
    type: int
    required: true
  locks:
    description: Lock files to wait for.
    type: list
    elements: path
    default: [/var/lib/dpkg/lock-frontend, /var/lib/dpkg/lock, /var/lib/apt/lists/lock, /var/cache/apt/archives/lock]
  probe:
    description: A read-only shell script to run once the package system is free (its output is returned).
    type: str
    default: ""
"""

RETURN = r"""
waited:
  description: Seconds spent waiting.
  type: float
  returned: always
stdout_lines:
  description: The probe's output, line by line.
  type: list
  returned: success
"""

import errno
import fcntl
import os
import shutil
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

LOCKS = ["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock", "/var/cache/apt/archives/lock"]


def held(path):
    """True if another process holds a POSIX lock on path (apt's way: fcntl F_SETLK)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return True
        raise
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def holder(path):
    """'pid N (command line)' of the process that holds a lock on path, from /proc/locks."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            # "1: POSIX  ADVISORY  WRITE 1234 fd:01:131090 0 EOF" (a blocked waiter has "->" first)
            if "->" in fields or len(fields) < 6 or int(fields[5].rsplit(":", 1)[1]) != inode:
                continue
            pid = fields[4]
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    command = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                command = "?"
            return f"pid {pid} ({command})"
    return "a process this host does not name"


def main():
    module = AnsibleModule(
        argument_spec={"timeout": {"type": "int", "required": True},
                       "locks": {"type": "list", "elements": "path", "default": LOCKS},
                       "probe": {"type": "str", "default": ""}},
        supports_check_mode=True)
    timeout, started = module.params["timeout"], time.monotonic()
    deadline = started + timeout
    nothing_changed = ("Nothing was changed on this host. Let it finish (or stop it), then run again; "
                       "docker_engine_first_boot_timeout sets how long to wait.")
    cloud_init = shutil.which("cloud-init")
    if cloud_init:
        try:
            done = subprocess.run([cloud_init, "status", "--wait"], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            module.fail_json(msg=f"cloud-init was still running after {timeout} s (first boot not finished). {nothing_changed}",
                             waited=time.monotonic() - started)
        # 0: done, 2: done with recoverable errors; 1: cloud-init failed, which apt's locks do not wait for.
        if done.returncode not in (0, 2):
            module.warn(f"cloud-init status --wait exited {done.returncode}: {done.stdout.strip()} {done.stderr.strip()}")
    while True:
        busy = [path for path in module.params["locks"] if held(path)]
        if not busy:
            break
        if time.monotonic() >= deadline:
            module.fail_json(msg=f"{busy[0]} is still held after {timeout} s by {holder(busy[0])}. {nothing_changed}",
                             waited=round(time.monotonic() - started, 1), held=busy)
        time.sleep(1)
    waited = round(time.monotonic() - started, 1)
    probe = subprocess.run(["/bin/sh", "-c", module.params["probe"]], capture_output=True, text=True) if module.params["probe"] else None
    if probe is not None and probe.returncode != 0:
        module.fail_json(msg=f"The probe failed ({probe.returncode}): {probe.stderr.strip()}", waited=waited)
    stdout = probe.stdout if probe else ""
    module.exit_json(changed=False, waited=waited, stdout=stdout, stdout_lines=stdout.splitlines())


if __name__ == "__main__":
    main()
