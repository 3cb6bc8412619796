"""Variable changes roll out on a re-run; invalid variables stop the play before any change."""

import json

import pytest

from conftest import recap_changed, run_playbook
from stack import container_env, inspect, replicas, size_in_bytes

REDIS = "hitcounter-redis-1"


def assert_web_replicas(host, memory, workers):
    names = replicas(host, "hitcounter")
    assert len(names) == host.ansible.get_variables().get("hitcounter_web_replicas", 2), names
    for name in names:
        assert inspect(host, name)["HostConfig"]["Memory"] == size_in_bytes(memory), name
        assert container_env(host, name)["GUNICORN_WORKERS"] == workers, name
    return names


def test_changed_limit_and_env_roll_out_and_keep_redis(host):
    redis_id = inspect(host, REDIS)["Id"]
    before = replicas(host, "hitcounter")
    rc, output = run_playbook("site.yml", "-e", json.dumps({"hitcounter_web_memory": "96M", "hitcounter_workers": 3}))
    assert rc == 0, output
    assert not set(assert_web_replicas(host, "96M", "3")) & set(before), "old replicas were left running"
    assert inspect(host, REDIS)["Id"] == redis_id, "redis was recreated for a web-only change"

    rc, output = run_playbook("site.yml")
    assert rc == 0, output
    assert_web_replicas(host, host.ansible.get_variables()["hitcounter_web_memory"], "2")


@pytest.fixture
def unchanged_stack(host):
    def snapshot():
        return ([inspect(host, name)["Id"] for name in replicas(host, "hitcounter") + [REDIS]],
                [host.file(path).sha256sum for path in ("/opt/hitcounter/compose.yaml", "/opt/hitcounter/.env")])
    before = snapshot()
    yield
    assert snapshot() == before, "a failed run changed the stack"


@pytest.mark.parametrize("extra_vars, message", [
    ({"hitcounter_web_memory": "lots"}, "hitcounter_web_memory is \"lots\": give a size such as 128M"),
    ({"hitcounter_port": 70000}, "hitcounter_port is 70000: a TCP port is 1-65535"),
    ({"hitcounter_web_cpus": 0}, "hitcounter_web_cpus is 0: it must be greater than 0"),
    ({"hitcounter_restart_policy": "sometimes"}, "value of hitcounter_restart_policy must be one of"),
    ({"hitcounter_workers": "many"}, "argument 'hitcounter_workers' is of type str and we were unable to convert to int"),
    ({"app_stack": "wordpress"}, "app_stack is \"wordpress\"; choose one of"),
])
def test_invalid_variables_stop_before_any_change(unchanged_stack, extra_vars, message):
    rc, output = run_playbook("site.yml", "-e", json.dumps(extra_vars))
    assert rc != 0, output
    assert message in output, output
    assert recap_changed(output) == 0, output
