"""Bad input stops the play with a message a person can act on, before any change."""

import pytest

from conftest import recap_changed, run_playbook

WATCHED_FILES = ["/etc/docker/daemon.json", "/etc/systemd/system/docker.service.d/environment.conf"]


@pytest.fixture
def unchanged_host(host):
    """Fails the test if a failed run changed the host's engine config or package set."""
    def snapshot():
        return ([host.file(path).sha256sum for path in WATCHED_FILES],
                host.check_output("dpkg-query -W -f='${Package} ${Version}\\n'"))
    before = snapshot()
    yield
    assert snapshot() == before, "a failed run changed the host"


@pytest.fixture
def os_release(host):
    """Makes the staging host claim another OS for one test, then restores it."""
    host.check_output("cp -a /etc/os-release /root/os-release.saved")

    def claim(os_id, version_id):
        host.check_output(f"rm /etc/os-release && printf 'ID={os_id}\\nVERSION_ID=\"{version_id}\"\\n' >/etc/os-release")

    yield claim
    host.check_output("rm -f /etc/os-release && mv /root/os-release.saved /etc/os-release")


def assert_stopped_before_any_change(rc, output, message):
    assert rc != 0, output
    assert message in output, output
    assert recap_changed(output) == 0, output


@pytest.mark.parametrize("extra_vars, message", [
    ('{"docker_engine_source": "snap"}',
     "value of docker_engine_source must be one of: docker, distro, got: snap"),
    ('{"docker_engine_daemon_options": "debug"}',
     "argument 'docker_engine_daemon_options' is of type str and we were unable to convert to dict"),
    ('{"docker_engine_daemon_options": ["debug"]}',
     "argument 'docker_engine_daemon_options' is of type list and we were unable to convert to dict"),
])
def test_invalid_variables_stop_at_the_argument_specs(unchanged_host, extra_vars, message):
    rc, output = run_playbook("site.yml", "-e", extra_vars)
    assert "Validating arguments against arg spec" in output
    assert_stopped_before_any_change(rc, output, message)


def test_invalid_user_names_stop_before_any_change(unchanged_host):
    # argument_specs turns [["deploy"]] into the string "['deploy']"; the role's own check catches it.
    rc, output = run_playbook("site.yml", "-e", '{"docker_engine_users": [["deploy"]]}')
    assert_stopped_before_any_change(rc, output, "docker_engine_users must be a list of user names")


def test_unsupported_os_stops_before_any_change(unchanged_host, os_release):
    os_release("fedora", "40")
    rc, output = run_playbook("site.yml")
    assert_stopped_before_any_change(rc, output, "this host runs fedora 40. Nothing was changed.")


def test_debian_12_archive_without_compose_v2_stops_with_advice(unchanged_host, os_release):
    os_release("debian", "12")
    rc, output = run_playbook("site.yml", "-e", '{"docker_engine_source": "distro"}')
    assert_stopped_before_any_change(rc, output, "Set docker_engine_source: docker")
