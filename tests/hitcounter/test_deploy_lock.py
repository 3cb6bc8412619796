"""One deploy at a time per host (roles/deploy_lock): two site.yml runs at once, a lock left by a
killed controller (named, broken on purpose, expired), check mode without the lock."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import failure_report, hold_apt_lock, recap_changed, run_playbook
from stack import wait_for

LOCK = "/run/lock/docker-hosts-deploy.lock"
HELD = "Another deploy holds this host"


@pytest.fixture
def stale_lock(host):
    """A lock as a controller killed mid-run leaves it (its run never releases it)."""
    def leave(age):
        record = {"token": "killed-run", "taken": time.time() - age,
                  "holder": {"user": "alice", "controller": "laptop-7", "playbook": "rollback.yml", "started": "2026-12-01T08:00:00Z"}}
        host.check_output(f"printf '%s' '{json.dumps(record)}' > {LOCK}")
    yield leave
    host.run(f"rm -f {LOCK}")


def test_two_site_runs_at_once_exactly_one_proceeds(host):
    # The first run is kept inside its lock (its first-boot wait waits for a held dpkg lock), so
    # the second surely meets it, however slow this machine is.
    hold_apt_lock(host, 120)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(run_playbook, "site.yml")
        wait_for("the first run to take the deploy lock", lambda: host.file(LOCK).exists or first.done(), 60)
        started = time.monotonic()
        rc, second = run_playbook("site.yml")
        seconds = time.monotonic() - started
        host.check_output("systemctl stop apt-lock-holder")
        first_rc, first_output = first.result()
    assert first_rc == 0, failure_report(first_output)
    assert rc != 0, "both runs proceeded at once"
    # The second stopped at the lock, before any change, and said who holds the host.
    assert HELD in second and "running site.yml since" in second, failure_report(second)
    assert recap_changed(second) == 0
    assert "TASK [docker_engine" not in second, "the second run went past the lock"
    print(f"the second run failed after {seconds:.1f} s")
    assert not host.file(LOCK).exists, "the lock outlived the run that took it"


def test_a_lock_left_by_a_killed_run_names_its_holder_and_is_broken_only_on_purpose(host, stale_lock):
    stale_lock(age=120)
    rc, output = run_playbook("site.yml")
    assert rc != 0 and HELD in output and "alice@laptop-7 running rollback.yml since 2026-12-01T08:00:00Z" in output, failure_report(output)
    assert "killed-run" in host.file(LOCK).content_string, "a failed run removed another run's lock"

    rc, output = run_playbook("site.yml", "-e", "deploy_lock_break=true")
    assert rc == 0, failure_report(output)
    assert "Breaking the deploy lock on this host held by alice@laptop-7" in output
    assert recap_changed(output) == 0
    assert not host.file(LOCK).exists


def test_an_expired_lock_is_taken_over_with_a_warning(host, stale_lock):
    stale_lock(age=7200)
    rc, output = run_playbook("site.yml", "-e", "deploy_lock_expire_after=3600")
    assert rc == 0, failure_report(output)
    assert "because it is older than deploy_lock_expire_after (3600 s)" in output
    assert not host.file(LOCK).exists


def test_check_mode_neither_takes_nor_needs_the_lock(host, stale_lock):
    stale_lock(age=60)
    rc, output = run_playbook("site.yml", "--check")
    assert rc == 0 and HELD not in output, failure_report(output)
    assert recap_changed(output) == 0
    assert "killed-run" in host.file(LOCK).content_string
