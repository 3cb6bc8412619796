"""TLS at the entry proxy of the converged hit-counter host (compose_stack_tls: provided, with a
chain from the kit's test CA, molecule/kit/make-test-ca): real clients on the staging host check
the certificate and its chain and are refused TLS 1.0 and 1.1; the key is readable by the proxy
alone; a new certificate, the redirect and HSTS are loaded by the hitless reload with no failed
HTTPS request."""

import json
import os
import re

import pytest

from conftest import PROJECT_DIR
from stack import PacedLoad, http, inspect, wait_for
from test_edge import headers_and_body
from test_hitcounter import hits_in_redis, page_url  # noqa: F401 (page_url is a fixture)
from test_zero_downtime import PROXY, playbook

TLS_DIR = os.path.join(PROJECT_DIR, ".cache", "tls")
CA_ON_HOST = "/root/test-ca.crt"
HTTPS = "https://127.0.0.1:8443/"
PEM = "/opt/hitcounter/tls/provided.pem"


def kit_tls_file(name):
    with open(os.path.join(TLS_DIR, name), encoding="utf-8") as handle:
        return handle.read()


def key_lines(name):
    """The base64 lines of a test key: none of them may show up outside the proxy's PEM."""
    return [line for line in kit_tls_file(name).splitlines() if line and not line.startswith("-----")]


@pytest.fixture(scope="module")
def ca(host):
    """The test CA's root certificate on the staging host, where the clients run."""
    host.check_output(f"cat > {CA_ON_HOST} <<'EOF'\n{kit_tls_file('ca.crt')}\nEOF")
    return CA_ON_HOST


def handshake(host, *options):
    """openssl s_client against the proxy's HTTPS port: (exit code, its whole output)."""
    result = host.run(f"openssl s_client -connect 127.0.0.1:8443 -servername localhost {' '.join(options)} </dev/null 2>&1")
    return result.rc, result.stdout


def served_chain(host, ca):
    """Subjects of the certificates the proxy sends, after a verified handshake."""
    rc, output = handshake(host, "-showcerts", "-verify_return_error", "-CAfile", ca)
    assert rc == 0 and "Verify return code: 0 (ok)" in output, output
    return re.findall(r"^ *\d+ s:(.*)$", output, re.MULTILINE)


def test_https_serves_the_certificate_and_its_chain_to_a_client_that_trusts_the_root(host, ca, page_url):
    assert served_chain(host, ca) == ["CN=staging a", "CN=compose-stack test intermediate CA"]
    result = host.run(f"curl -s --max-time 10 --cacert {ca} -w '\\n%{{http_code}}' {HTTPS}")
    assert result.rc == 0 and re.fullmatch(r"Hello World! \d+ times\.\n200", result.stdout), result.stdout + result.stderr
    # Without the root, curl does not trust it; plain HTTP is still served (no redirect asked).
    assert host.run(f"curl -s --max-time 10 -o /dev/null {HTTPS}").rc == 60
    assert http(host, page_url)[0] == 200


def test_tls_1_0_and_1_1_are_refused_and_1_2_and_1_3_accepted(host, ca):
    for version in ("-tls1", "-tls1_1"):
        # SECLEVEL=0 lets this client offer the old versions: the refusal must be the server's.
        rc, output = handshake(host, version, "-cipher", "DEFAULT@SECLEVEL=0")
        assert rc != 0 and "alert protocol version" in output, output
    for version, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        rc, output = handshake(host, version, "-CAfile", ca, "-verify_return_error")
        assert rc == 0 and f"Protocol: {name}" in output.replace("Protocol  :", "Protocol:"), output


def test_the_key_is_readable_by_the_proxy_alone_and_shows_up_nowhere_else(host):
    folder, pem = host.file(PEM.rsplit("/", 1)[0]), host.file(PEM)
    assert (folder.uid, folder.mode, pem.uid, pem.mode) == (99, 0o500, 99, 0o400)
    assert inspect(host, PROXY)["Config"]["User"] == "99:99"
    assert set(key_lines("a.key")) <= set(pem.content_string.splitlines())
    # The key's lines as grep patterns, made on the host: a command line that carried them would
    # itself be logged (Ansible logs each module's arguments to the journal).
    patterns = "/run/test-key-lines"
    host.check_output(f"sed -n '/BEGIN PRIVATE KEY/,/END PRIVATE KEY/p' {PEM} | grep -v -- ----- > {patterns}")
    try:
        for where in (f"docker inspect {PROXY}", f"docker logs {PROXY} 2>&1"):
            assert host.run(f"{where} | grep -c -F -f {patterns}").stdout.strip() == "0", where
        places = "/opt/hitcounter /var/lib/compose-stack /var/log /home/deploy /root /tmp"
        found = host.run(f"grep -rlF -f {patterns} {places}").stdout.split()
        assert found == [PEM], found
    finally:
        host.check_output(f"rm -f {patterns}")


def test_a_new_certificate_redirect_and_hsts_load_with_no_failed_https_request(host, ca, stack_vars):
    proxy_started = inspect(host, PROXY)["State"]["StartedAt"]
    before = hits_in_redis(host, stack_vars)
    rotated = {"compose_stack_tls_certificate_file": os.path.join(TLS_DIR, "b.chain.pem"),
               "compose_stack_tls_private_key_file": os.path.join(TLS_DIR, "b.key"),
               "compose_stack_tls_redirect": True, "compose_stack_tls_hsts_max_age": 31536000}
    try:
        with PacedLoad(host, HTTPS, proxy=PROXY, cafile=ca) as load:
            output = playbook("-e", json.dumps(rotated))
            wait_for("the new certificate", lambda: served_chain(host, ca)[0] == "CN=staging b", 10)
        result = load.result
        assert result["failed"] == 0, load.report()
        assert result["total"] > 100, load.report()
        assert hits_in_redis(host, stack_vars) - before == result["total"], (result, "the counter lost or doubled a hit")
        assert inspect(host, PROXY)["State"]["StartedAt"] == proxy_started, "the proxy was restarted, not reloaded"
        assert not any(line in output for line in key_lines("b.key")), "the key is in the playbook's output"
        plain = f"http://127.0.0.1:{stack_vars['hitcounter_port']}/some/path?q=1"
        status, headers, _ = headers_and_body(host, plain, "*/*")
        assert (status, headers.get("location")) == (308, "https://127.0.0.1:8443/some/path?q=1"), headers
        _, headers, _ = headers_and_body(host, HTTPS, "*/*", f"--cacert {ca}")
        assert headers.get("strict-transport-security") == "max-age=31536000", headers
    finally:
        playbook()  # back to the inventory's certificate, no redirect, no HSTS
    assert served_chain(host, ca)[0] == "CN=staging a"
    assert http(host, f"http://127.0.0.1:{stack_vars['hitcounter_port']}/")[0] == 200
