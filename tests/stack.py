"""Helpers for verifying a compose stack on a staging host: containers, HTTP, fault drills."""

import json
import re
import time

SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def size_in_bytes(size):
    """Compose memory sizes ("128M", "1g") in bytes."""
    number, unit = re.fullmatch(r"(\d+)([bkmg]?)", str(size).lower()).groups()
    return int(number) * SIZE_UNITS[unit]


def inspect(host, container):
    return json.loads(host.check_output(f"docker inspect {container}"))[0]


def wait_for(what, check, timeout, interval=0.5):
    """Poll check() until it returns a truthy value; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


def http_get(host, url):
    """(status, body) of a GET from the staging host itself."""
    result = host.run(f"curl -s --max-time 5 -w '\\n%{{http_code}}' {url}")
    body, _, status = result.stdout.rpartition("\n")
    return int(status or 0), body


def wait_healthy(host, container, timeout=60):
    return wait_for(f"{container} to be running and healthy", lambda: (
        (state := inspect(host, container)["State"])["Running"]
        and state.get("Health", {}).get("Status", "healthy") == "healthy"), timeout)


def crash_main_process(host, container):
    """kill -9 of the container's main PID on the host that runs its engine (a `docker kill`
    would count as a manual stop and cancel the restart policy). Returns the RestartCount before."""
    state = inspect(host, container)
    started = state["State"]["StartedAt"]
    # The engine applies a restart policy only to containers that ran at least 10 s.
    wait_for(f"{container} to have run 10 s", lambda: host.run(
        f"test $(( $(date +%s) - $(date -d {started} +%s) )) -ge 11").rc == 0, 20)
    host.check_output(f"kill -9 {state['State']['Pid']}")
    return state["RestartCount"]


def wait_restarted(host, container, restart_count_before, timeout=60):
    wait_for(f"{container} to be restarted by its policy",
             lambda: inspect(host, container)["RestartCount"] > restart_count_before, timeout)
    wait_healthy(host, container, timeout)
