"""Unit tests of roles/compose_stack/library/compose_stack_release.py, run the way Ansible runs a
module (a JSON file of arguments), on a temporary folder."""

import base64
import json
import os
import pathlib
import subprocess
import sys

MODULE = pathlib.Path(__file__).resolve().parents[2] / "roles" / "compose_stack" / "library" / "compose_stack_release.py"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def run(tmp_path, check_mode=False, expect_failure=False, **args):
    arguments = tmp_path.parent / f"{tmp_path.name}-args.json"
    arguments.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check_mode, _ansible_diff=True)}))
    done = subprocess.run([sys.executable, str(MODULE), str(arguments)], capture_output=True, text=True, check=False)
    result = json.loads(done.stdout)
    assert bool(result.get("failed")) == expect_failure, result
    return result


def mode(path):
    return oct(os.stat(path).st_mode & 0o7777)


def test_a_first_release_creates_folders_and_files_with_their_modes(tmp_path):
    root = tmp_path / "stack"
    result = run(tmp_path, path=str(root), directories={"": "0750", "proxy": "0755"},
                 files={"compose.yaml": b64("a: 1\n"), "proxy/haproxy.cfg": b64("cfg\n"), ".env": b64("A=1\n")},
                 modes={"compose.yaml": "0640", "proxy/haproxy.cfg": "0644"})
    assert result["changed"] and result["before"] == {}
    assert sorted(result["changed_files"]) == [".env", "compose.yaml", "proxy/haproxy.cfg"]
    assert (root / "compose.yaml").read_text() == "a: 1\n"
    assert (mode(root), mode(root / "proxy"), mode(root / "compose.yaml"), mode(root / ".env")) == ("0o750", "0o755", "0o640", "0o600")


def test_the_same_release_again_changes_nothing_and_returns_the_live_one(tmp_path):
    files = {"compose.yaml": b64("a: 1\n")}
    run(tmp_path, path=str(tmp_path / "s"), directories={"": "0750"}, files=files)
    again = run(tmp_path, path=str(tmp_path / "s"), directories={"": "0750"}, files=files)
    assert not again["changed"] and again["changed_files"] == [] and again["before"] == files


def test_a_new_release_replaces_changed_files_atomically_and_returns_what_it_replaced(tmp_path):
    root = tmp_path / "s"
    run(tmp_path, path=str(root), directories={"": "0750"}, files={"compose.yaml": b64("a: 1\n"), ".env": b64("A=1\n")})
    inode = os.stat(root / "compose.yaml").st_ino
    result = run(tmp_path, path=str(root), files={"compose.yaml": b64("a: 2\n"), ".env": b64("A=1\n")})
    assert result["changed_files"] == ["compose.yaml"]
    assert result["before"] == {"compose.yaml": b64("a: 1\n"), ".env": b64("A=1\n")}
    assert (root / "compose.yaml").read_text() == "a: 2\n"
    assert os.stat(root / "compose.yaml").st_ino != inode, "the file was rewritten in place, not replaced by a rename"
    assert [diff["after"] for diff in result["diff"]] == ["a: 2\n"]
    assert not [name for name in os.listdir(root) if name.startswith(".release-")]


def test_a_mode_change_alone_is_a_change_without_rewriting(tmp_path):
    root = tmp_path / "s"
    run(tmp_path, path=str(root), directories={"": "0750"}, files={"f": b64("x")}, modes={"f": "0600"})
    inode = os.stat(root / "f").st_ino
    result = run(tmp_path, path=str(root), files={"f": b64("x")}, modes={"f": "0644"})
    assert result["changed_files"] == ["f"] and mode(root / "f") == "0o644" and os.stat(root / "f").st_ino == inode


def test_check_mode_reports_the_change_and_writes_nothing(tmp_path):
    root = tmp_path / "s"
    run(tmp_path, path=str(root), directories={"": "0750"}, files={"f": b64("old")})
    result = run(tmp_path, check_mode=True, path=str(root), directories={"": "0750", "new": "0700"}, files={"f": b64("new")})
    assert result["changed"] and result["changed_files"] == ["f"] and result["changed_directories"] == ["new"]
    assert (root / "f").read_text() == "old" and not (root / "new").exists()


def test_a_missing_folder_is_a_clear_failure(tmp_path):
    result = run(tmp_path, expect_failure=True, path=str(tmp_path / "never-deployed" / "previous"), files={"f": b64("x")})
    assert "never-deployed/previous does not exist" in result["msg"]


def test_absent_paths_are_removed_and_read_files_returned_in_the_same_run(tmp_path):
    root = tmp_path / "stack"
    (root / "tls").mkdir(parents=True)
    (root / "tls" / "proxy.pem").write_text("key\n")
    (root / "swarm-services").write_text("s_web 12\n")
    args = dict(path=str(root), files={"compose.yaml": b64("a: 1\n")}, absent=["tls", "gone"], read=["swarm-services", "missing"])
    checked = run(tmp_path, check_mode=True, **args)
    assert checked["changed"] and checked["removed"] == ["tls"] and (root / "tls" / "proxy.pem").exists()
    result = run(tmp_path, **args)
    assert result["removed"] == ["tls"] and not (root / "tls").exists()
    assert result["read"] == {"swarm-services": b64("s_web 12\n")}
    again = run(tmp_path, **args)
    assert not again["changed"] and again["removed"] == []
