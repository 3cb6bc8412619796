"""The users API behind its entry proxy: a web rollout under a paced read load and a steady
writer loses no request and no acknowledged row; a database outage gets a quick JSON 503."""

import json
import re
import time

import pytest

from conftest import failure_report, recap_changed, run_playbook
from stack import PacedLoad, assert_quick_json_503_while_down, container_exec, replicas

DB = "users-db-1"
# A steady writer on the staging host: one POST /users every 0.1 s until /root/writer.stop exists;
# curl writes each answer's body, then " <status>".
WRITER = """i=0
while [ ! -e /root/writer.stop ]; do
  i=$((i+1))
  curl -s --max-time 5 -H 'Content-Type: application/json' -d "{\\"name\\": \\"writer-$i\\"}" -w ' %{http_code}\\n' API/users
  sleep 0.1
done >/root/writer.out 2>&1"""


@pytest.fixture(scope="module")
def api(stack_vars):
    return f"http://127.0.0.1:{stack_vars['users_port']}"


def playbook(*args):
    rc, output = run_playbook("site.yml", *args)
    assert rc == 0, failure_report(output)
    return output


def test_rollout_loses_no_request_and_no_acknowledged_row(host, api):
    old = replicas(host, "users")
    host.check_output("rm -f /root/writer.stop /root/writer.out")
    host.check_output(f"cat > /root/writer.sh <<'EOF'\n{WRITER.replace('API', api)}\nEOF")
    host.check_output("setsid nohup sh /root/writer.sh </dev/null >/dev/null 2>&1 &")
    with PacedLoad(host, f"{api}/users") as load:
        playbook("-e", json.dumps({"users_env": {"DRILL": "rollout"}}))
    host.check_output("touch /root/writer.stop")
    time.sleep(1)
    # Each answer: the JSON body on its line (the API ends it with a newline), then " <status>".
    written = host.check_output("cat /root/writer.out")
    statuses, bodies = re.findall(r"(?m)^ (\d{3})$", written), re.findall(r"(?m)^(\{.*\})$", written)
    assert load.result["failed"] == 0 and load.result["total"] > 100, load.result
    assert len(statuses) > 20 and set(statuses) == {"201"} and len(bodies) == len(statuses), written[-3000:]
    assert not set(replicas(host, "users")) & set(old), "the old replicas still run"
    # Every acknowledged row is stored, with its name (one query: a request per row took minutes).
    acknowledged = {user["id"]: user["name"] for user in map(json.loads, bodies)}
    stored = container_exec(host, DB, "psql -U users -d users -tA -F '|' -c "
                            f"'SELECT id, name FROM users WHERE id IN ({', '.join(map(str, acknowledged))})'")
    assert {int(row.split("|", 1)[0]): row.split("|", 1)[1] for row in stored.splitlines()} == acknowledged

    playbook()
    assert recap_changed(playbook("--check")) == 0


def test_database_outage_gets_a_quick_json_503_and_the_api_recovers(host, api):
    # The API's connect timeout is 3 s.
    assert_quick_json_503_while_down(host, DB, f"{api}/users", 4.5)
