"""The users API behind its entry proxy: a web rollout under a paced read load and a steady
writer loses no request and no acknowledged row; kills of gunicorn workers and of PostgreSQL
under a paced POST load fail no request and store every acknowledged row exactly once; a resent
Idempotency-Key gets the first answer; an outage past the wait gets a JSON 503."""

import json
import re
import time

import pytest

from conftest import failure_report, recap_changed, run_playbook
from stack import (PacedLoad, assert_quick_json_503_while_down, container_exec, crash_main_process, http, inspect, replicas,
                   supervisor_status, wait_for, wait_healthy)

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
    with PacedLoad(host, f"{api}/users", proxy="users-proxy-1") as load:
        playbook("-e", json.dumps({"users_env": {"DRILL": "rollout"}}))
    host.check_output("touch /root/writer.stop")
    time.sleep(1)
    # Each answer: the JSON body on its line (the API ends it with a newline), then " <status>".
    written = host.check_output("cat /root/writer.out")
    statuses, bodies = re.findall(r"(?m)^ (\d{3})$", written), re.findall(r"(?m)^(\{.*\})$", written)
    assert load.result["failed"] == 0 and load.result["total"] > 100, load.report()
    assert len(statuses) > 20 and set(statuses) == {"201"} and len(bodies) == len(statuses), written[-3000:]
    assert not set(replicas(host, "users")) & set(old), "the old replicas still run"
    # Every acknowledged row is stored, with its name (one query: a request per row took minutes).
    acknowledged = {user["id"]: user["name"] for user in map(json.loads, bodies)}
    stored = container_exec(host, DB, "psql -U users -d users -tA -F '|' -c "
                            f"'SELECT id, name FROM users WHERE id IN ({', '.join(map(str, acknowledged))})'")
    assert {int(row.split("|", 1)[0]): row.split("|", 1)[1] for row in stored.splitlines()} == acknowledged

    playbook()
    assert recap_changed(playbook("--check")) == 0


def posts_stored_exactly_once(host, api, fault, prefix, rate=50):
    """fault() under a paced POST load of a new name per request: no request fails, and every
    acknowledged POST is one row (none lost, none written twice)."""
    with PacedLoad(host, f"{api}/users", rate=rate, name_prefix=prefix, proxy="users-proxy-1") as load:
        fault()
    result = load.result
    assert result["failed"] == 0 and result["total"] > 100, load.report()
    rows, names = container_exec(host, DB, "psql -U users -d users -tA -F ' ' -c "
                                 f"\"SELECT count(*), count(DISTINCT name) FROM users WHERE name LIKE '{prefix}-%'\"").split()
    assert (int(rows), int(names)) == (result["total"], result["total"]), (result, "rows lost or written twice")


def test_worker_kills_under_post_load_write_every_row_exactly_once(host, api):
    """kill -9 of one replica's gunicorn worker, 10 times: the proxy resends what the dead worker
    never answered (possibly after its commit), and the request's X-Request-ID keeps it one row."""
    victim = replicas(host, "users")[0]

    def kill_workers():
        for _ in range(10):
            _, _, master = supervisor_status(host, victim)
            container_exec(host, victim, f"for pid in $(cat /proc/{master}/task/{master}/children); do kill -9 $pid; done")
            time.sleep(1)
        wait_healthy(host, victim)
    posts_stored_exactly_once(host, api, kill_workers, "worker-kill", rate=100)


def test_kill_of_postgres_under_post_load_costs_latency_not_a_request(host, api):
    def crash():
        restarts = crash_main_process(host, DB)
        wait_for("PostgreSQL to be restarted", lambda: inspect(host, DB)["RestartCount"] > restarts, 30)
        wait_healthy(host, DB)
    posts_stored_exactly_once(host, api, crash, "db-kill")


def test_a_resent_idempotency_key_gets_the_first_answer_and_a_changed_body_a_422(host, api):
    key = {"Idempotency-Key": f"drill-{time.time_ns()}"}
    first = http(host, f"{api}/users", "POST", json.dumps({"name": "Idem Potent"}), headers=key)
    again = http(host, f"{api}/users", "POST", json.dumps({"name": "Idem Potent"}), headers=key)
    assert first[0] == again[0] == 201 and json.loads(again[1]) == json.loads(first[1]), (first, again)
    changed = http(host, f"{api}/users", "POST", json.dumps({"name": "Someone Else"}), headers=key)
    assert changed[0] == 422 and "another body" in json.loads(changed[1])["detail"], changed
    rows = container_exec(host, DB, "psql -U users -d users -tAc \"SELECT count(*) FROM users WHERE name = 'Idem Potent'\"")
    assert rows == "1"


def test_database_outage_past_the_wait_gets_a_json_503_and_the_api_recovers(host, api, stack_vars):
    # Each request waits users_db_wait_seconds for PostgreSQL, then answers at once.
    assert_quick_json_503_while_down(host, DB, f"{api}/users", stack_vars.get("users_db_wait_seconds", 5) + 1.5)
