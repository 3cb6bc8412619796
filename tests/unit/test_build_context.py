"""roles/compose_stack/files/build-context.py: a reproducible tar whose checksum names the app image."""

import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "compose_stack", "files", "build-context.py")


def pack(out, app):
    done = subprocess.run([sys.executable, SCRIPT, str(out), f"app={app}"], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_the_same_sources_give_the_same_checksum_and_a_changed_file_a_new_one(tmp_path):
    app, out = tmp_path / "app", tmp_path / "ctx" / "context.tar"
    app.mkdir()
    (app / "wsgi.py").write_text("app = None\n")
    first = pack(out, app)
    assert first["changed"] and out.exists()
    # The second run trusts the recorded listing (nothing read again) and gives the same checksum.
    assert pack(out, app) == {"changed": False, "sha256": first["sha256"]}
    (app / "wsgi.py").write_text("app = 1\n")
    changed = pack(out, app)
    assert changed["changed"] and changed["sha256"] != first["sha256"]
    # Back to the first content: the first checksum again (the tar has no mtimes), and the file
    # on disk is rewritten to it.
    (app / "wsgi.py").write_text("app = None\n")
    assert pack(out, app) == {"changed": True, "sha256": first["sha256"]}


def test_a_lost_tar_is_packed_again(tmp_path):
    app, out = tmp_path / "app", tmp_path / "context.tar"
    app.mkdir()
    (app / "wsgi.py").write_text("app = None\n")
    first = pack(out, app)
    out.unlink()
    assert pack(out, app) == {"changed": True, "sha256": first["sha256"]}
