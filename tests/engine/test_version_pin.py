"""docker_engine_version pins the engine with apt preferences, and unsetting it removes the pin;
neither run touches the installed engine."""

import json

from conftest import recap_changed, run_playbook

PREFERENCES = "/etc/apt/preferences.d/docker-engine.pref"


def test_version_pin_is_written_then_removed(host):
    installed = host.package("docker.io").version
    pattern = installed.split("+")[0] + "*"

    rc, output = run_playbook("site.yml", "-e", json.dumps({"docker_engine_version": pattern}))
    assert rc == 0, output
    assert recap_changed(output) == 1, output
    preferences = host.file(PREFERENCES).content_string
    assert "Package: docker.io\n" in preferences
    assert f"Pin: version {pattern}\n" in preferences
    assert "Pin-Priority: 1001" in preferences
    assert host.package("docker.io").version == installed

    rc, output = run_playbook("site.yml")
    assert rc == 0, output
    assert recap_changed(output) == 1, output
    assert not host.file(PREFERENCES).exists
    assert host.package("docker.io").version == installed
