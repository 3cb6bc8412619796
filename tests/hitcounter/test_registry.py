"""Images from a real registry (the kit's: molecule/kit/registry). The hit counter's app image is
built once, pushed to the private registry and run by digest; every image the release names is
pinned to its digest. Five new app images leave exactly compose_stack_keep_releases of them on the
host, and the disk near the first deploy's, and rollback.yml still serves. A registry that is
down, refuses the password or is not trusted stops the play before any running container is
touched, while the old release serves with 0 failed requests (the drill's paced load)."""

import datetime
import json
import os
import re
import shutil
import ssl
import urllib.request

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import PROJECT_DIR, failure_report, run_playbook
from stack import inspect, release_of, replicas
from test_hitcounter import page_url  # noqa: F401 (a fixture drill uses)
from test_zero_downtime import drill, playbook  # noqa: F401 (drill is a fixture)

PINNED = re.compile(r"^[^@]+:[^@/]+@sha256:[0-9a-f]{64}$")
# Each new app version carries this many random bytes: an app layer of its own that
# compression cannot shrink, so an app image left behind shows in the disk use.
APP_LAYER_BYTES = 32 * 1024 ** 2
TLS = os.path.join(PROJECT_DIR, ".cache", "tls")


def compose_of(host, path="/opt/hitcounter/compose.yaml"):
    return yaml.safe_load(host.file(path).content_string)


def web_image(compose):
    return compose["services"][compose["x-compose-stack"]["web_service"]]["image"]


def new_app(tmp_path, name):
    """A new build of the hit counter's app: the same code plus a layer of random bytes."""
    app = tmp_path / name
    shutil.copytree(os.path.join(PROJECT_DIR, "roles", "hitcounter", "files", "app"), app)
    (app / "build.bin").write_bytes(os.urandom(APP_LAYER_BYTES))
    return str(app)


def app_image_ids(host):
    """Ids of the hit counter's app images on the host (compose_stack labels them)."""
    return set(host.check_output("docker image ls -q --no-trunc --filter label=compose-stack.app=hitcounter").split())


def image_id(host, reference):
    return host.check_output(f"docker image inspect -f '{{{{.Id}}}}' {reference}")


def docker_disk_bytes(host):
    """Bytes under /var/lib/docker (-x: not the running containers' merged mounts)."""
    return int(host.check_output("du -sbx /var/lib/docker").split()[0])


def registry_has(reference):
    """Whether the kit's private registry (asked from this machine) serves the manifest of a pinned reference."""
    name, digest = reference.split("@")
    registry, repository = name.rsplit(":", 1)[0].split("/", 1)
    port = registry.rsplit(":", 1)[1]
    with open(os.path.join(PROJECT_DIR, ".cache", "registry", "password"), encoding="utf-8") as handle:
        password = handle.read().strip()
    request = urllib.request.Request(
        f"https://localhost:{port}/v2/{repository}/manifests/{digest}", method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"})
    auth = urllib.request.HTTPBasicAuthHandler(urllib.request.HTTPPasswordMgrWithDefaultRealm())
    auth.passwd.add_password(None, f"https://localhost:{port}/", "deploy", password)
    opener = urllib.request.build_opener(auth, urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=os.path.join(TLS, "ca.crt"))))
    try:
        return opener.open(request, timeout=10).status == 200
    except urllib.error.HTTPError as error:
        assert error.code == 404, error
        return False


def other_ca_pem():
    """A CA certificate that did not sign the registry's: what a host that trusts the wrong CA has."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the kit CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_every_image_of_the_release_is_pinned_and_the_app_image_comes_from_the_registry(host, stack_vars):
    compose = compose_of(host)
    images = {name: service["image"] for name, service in compose["services"].items()}
    assert all(PINNED.match(image) for image in images.values()), images
    assert web_image(compose).startswith(f"{stack_vars['compose_stack_registry']}/hitcounter-app:"), images
    assert registry_has(web_image(compose)), f"the registry does not serve {web_image(compose)}"
    for name in replicas(host, "hitcounter"):
        assert inspect(host, name)["Image"] == image_id(host, web_image(compose)), name
    history = [json.loads(line) for line in host.file("/var/lib/compose-stack/hitcounter/history.jsonl").content_string.splitlines()]
    assert history[-1]["images"] == images, history[-1]


def test_five_new_app_images_leave_the_kept_releases_and_rollback_still_serves(host, stack_vars, drill, tmp_path):
    keep = stack_vars.get("compose_stack_keep_releases", 3)
    deployed = []
    for n in range(5):
        playbook("-e", json.dumps({"hitcounter_app_src": new_app(tmp_path, f"app-{n}")}))
        deployed.append(web_image(compose_of(host)))
        if n == 0:
            first_deploy_bytes = docker_disk_bytes(host)
    assert len(set(deployed)) == 5, deployed
    # The live release, the previous one and the replaced ones kept: keep in all.
    kept = [compose_of(host), compose_of(host, "/opt/hitcounter/previous/compose.yaml")] + [
        compose_of(host, f"{path}/compose.yaml") for path in host.check_output("ls -d /opt/hitcounter/releases/*").split()]
    assert {web_image(compose) for compose in kept} == set(deployed[-keep:]), (deployed, [web_image(c) for c in kept])
    assert app_image_ids(host) == {image_id(host, image) for image in deployed[-keep:]}
    grown = docker_disk_bytes(host) - first_deploy_bytes
    print(f"[prune] /var/lib/docker after the 1st of 5 new app images: {first_deploy_bytes / 1024 ** 2:.0f} MiB, "
          f"after the 5th: {grown / 1024 ** 2:+.0f} MiB (app layers of {APP_LAYER_BYTES / 1024 ** 2:.0f} MiB)")
    # keep - 1 more app layers than after the first deploy, not 4 (one per deploy), plus room for logs.
    assert grown < (keep - 1) * APP_LAYER_BYTES + APP_LAYER_BYTES // 2, grown

    rc, output = drill(lambda: run_playbook("rollback.yml"))
    assert rc == 0, failure_report(output)
    assert web_image(compose_of(host)) == deployed[-2]


@pytest.mark.parametrize("fault", ["down", "wrong password", "wrong CA"])
def test_a_registry_fault_stops_the_deploy_before_any_container_and_the_old_release_serves(host, stack_vars, drill, tmp_path, fault):
    registry = stack_vars["compose_stack_registry"]
    with open(os.path.join(TLS, "ca.crt"), encoding="utf-8") as handle:
        kit_ca = handle.read()
    app = new_app(tmp_path, "app-fault")
    faults = {
        # Nothing answers on that port: a registry that is down (no login asked, so the first pull fails).
        "down": ({"compose_stack_registry": "registry.kit:5999", "compose_stack_registry_username": ""},
                 ["Pull the app image if it was pushed already to registry.kit:5999 failed for hitcounter", "connection refused",
                  "Check that the registry registry.kit:5999 answers"]),
        "wrong password": ({"compose_stack_registry_password": "not-the-password"},
                           [f"Could not log in to the registry {registry} as deploy", "401 Unauthorized"]),
        "wrong CA": ({"docker_engine_registry_ca_certs": {"registry.kit:5443": kit_ca, registry: other_ca_pem()}},
                     [f"Pull the app image if it was pushed already to {registry} failed for hitcounter",
                      "certificate signed by unknown authority", f"Check that the registry {registry} answers"]),
    }
    extra, expected = faults[fault]
    containers = {name: inspect(host, name)["Id"] for name in host.check_output(
        "docker ps -a --filter label=com.docker.compose.project=hitcounter --format '{{.Names}}'").split()}
    release = release_of(host, "hitcounter")

    rc, output = drill(lambda: run_playbook("site.yml", "-e", json.dumps({"hitcounter_app_src": app, **extra})))
    assert rc != 0, failure_report(output)
    message = " ".join(output.split())
    assert all(part in message for part in expected) and "Nothing running was changed" in message, failure_report(output)
    assert {name: inspect(host, name)["Id"] for name in containers} == containers
    assert release_of(host, "hitcounter") == release

    # Once the fault is mended (the kit's CA back, the right password), the same app deploys.
    if fault == "wrong CA":
        playbook("-e", json.dumps({"hitcounter_app_src": app}))
        assert registry_has(web_image(compose_of(host)))
