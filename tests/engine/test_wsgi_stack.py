"""app_stack: wsgi, any WSGI app behind the entry proxy: seed 003's bottle app deployed from its
folder as it is, then a falcon app (another framework, module, callable, health path and env,
and a Redis from compose_stack's data services) rolled out over it under paced load, and
rolled back. Runs on the scenario's converged engine
host (no stack of its own) and leaves it without one."""

import json
import os

import pytest

from conftest import PROJECT_DIR, failure_report, recap_changed, run_playbook
from stack import PacedLoad, http, http_get, inspect, replicas, supervisor_status

APPS = os.path.join(PROJECT_DIR, "tests", "wsgi-apps")
BOTTLE = ["-e", "app_stack=wsgi", "-e", f"wsgi_app_src={APPS}/bottle-hello"]
FALCON = ["-e", "app_stack=wsgi", "-e", json.dumps({
    "wsgi_app_src": f"{APPS}/falcon-greeting", "wsgi_app": "app:application", "wsgi_health_path": "/ready", "wsgi_datastore": "redis",
    "wsgi_env": {"GREETING": "Hello from falcon, configured by the environment!"}})]
URL = "http://127.0.0.1:8000/"


@pytest.fixture(scope="module")
def bottle(host):
    rc, output = run_playbook("site.yml", *BOTTLE)
    assert rc == 0, failure_report(output)
    yield output
    rc, output = run_playbook("teardown.yml", "-e", "teardown_stack=wsgi", "-e", "teardown_purge=true")
    assert rc == 0, failure_report(output)


def test_the_seeds_bottle_app_is_served_as_it_is_behind_the_proxy(host, bottle):
    assert http_get(host, URL) == (200, "Hello from docker!")
    web = replicas(host, "wsgi")
    assert len(web) == 2
    for name in web:
        config = inspect(host, name)
        assert config["State"]["Health"]["Status"] == "healthy"
        assert config["Config"]["User"] == "10001:10001"
        assert config["HostConfig"]["ReadonlyRootfs"] and config["HostConfig"]["CapDrop"] == ["ALL"]
        assert config["HostConfig"]["Memory"] == 128 * 1024 * 1024
        assert config["HostConfig"]["PortBindings"] in (None, {}), f"{name} publishes a port: only the proxy may"
        assert supervisor_status(host, name)[:2] == ("gunicorn", "RUNNING")


def test_a_second_run_changes_nothing(bottle):
    rc, output = run_playbook("site.yml", *BOTTLE)
    assert rc == 0, failure_report(output)
    assert recap_changed(output) == 0, output


def test_another_framework_rolls_out_and_back_with_no_failed_request(host, bottle):
    with PacedLoad(host, URL, proxy="wsgi-proxy-1") as load:
        rc, output = run_playbook("site.yml", *FALCON)
    assert rc == 0, failure_report(output)
    assert load.result["failed"] == 0, load.report()
    first, second = (json.loads(http(host, URL)[1]) for _ in range(2))
    assert first["greeting"] == "Hello from falcon, configured by the environment!"
    assert second["visits"] == first["visits"] + 1, "the falcon app does not count in its Redis"
    assert "wsgi-redis-1" in host.check_output("docker ps --format '{{.Names}}'").split()
    with PacedLoad(host, URL, proxy="wsgi-proxy-1") as load:
        rc, output = run_playbook("rollback.yml", "-e", "app_stack=wsgi")
    assert rc == 0, failure_report(output)
    assert load.result["failed"] == 0, load.report()
    assert http_get(host, URL) == (200, "Hello from docker!")
    assert "wsgi-redis-1" not in host.check_output("docker ps -a --format '{{.Names}}'").split(), "bottle's release has no Redis"
    # The inventory's release again (bottle): the rollback's files are the live ones.
    rc, output = run_playbook("site.yml", *BOTTLE)
    assert rc == 0, failure_report(output)
    assert recap_changed(output) == 0, output
