"""playbooks/history.yml on the converged hit-counter host. The lines it prints are written by
every deploy, rollback and failed deploy: the drills in test_zero_downtime.py check each kind,
and the idempotence step that a run changing nothing writes none."""

import json

from conftest import failure_report, run_playbook
from stack import deploy_history


def test_history_yml_prints_the_last_entries_as_a_table_oldest_first(host):
    entries = deploy_history(host, "hitcounter")[-3:]
    assert entries and all(entry["images"]["redis"] for entry in entries), entries
    rc, output = run_playbook("history.yml", "-e", f"history_lines={len(entries)}")
    assert rc == 0, failure_report(output)
    # The debug task's msg list, one row per line, up to its closing bracket on a line of its own.
    table = output.split('"msg": [\n', 1)[1].split("\n    ]", 1)[0]
    header, *rows = [json.loads(line.strip().rstrip(",")) for line in table.splitlines()]
    assert header.split()[:3] == ["time", "(UTC)", "action"], table
    assert [row.split()[:2] for row in rows] == [[e["time"], e["action"]] for e in entries], table
    assert all(f"  {e['result']}  " in row and f"  {e['release']}  " in row and f"  {e['user']}@{e['controller']}  " in row
               for e, row in zip(entries, rows)), table
