"""Invalid variables stop the play before any change (changes that roll out: test_zero_downtime.py)."""

import json
import os

import pytest

from conftest import PROJECT_DIR, recap_changed, run_playbook
from stack import inspect, replicas
from test_hitcounter import REDIS


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
    ({"compose_stack_tls": "on"}, "compose_stack_tls is \"on\": choose none, provided or self-signed"),
    # The scenario's certificate "a" with the key of "b" (molecule/kit/make-test-ca).
    ({"compose_stack_tls_private_key_file": os.path.join(PROJECT_DIR, ".cache", "tls", "b.key")},
     "(CN=staging a, valid until 20"),
])
def test_invalid_variables_stop_before_any_change(unchanged_stack, extra_vars, message):
    rc, output = run_playbook("site.yml", "-e", json.dumps(extra_vars))
    assert rc != 0, output
    assert message in output, output
    assert recap_changed(output) == 0, output
