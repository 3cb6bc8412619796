"""Filters of the compose_stack role.

compose_stack_definition: the compose definition compose_stack deploys, from the stack's
template and the parts every stack shares (tasks/release.yml).
compose_stack_pinned_images: image names pinned to the digests a registry gave them
(name:tag@sha256:...), from docker_image_info's images (tasks/images.yml).
compose_stack_by_digest: a pinned image name without its tag (name@sha256:...), which the Docker
modules look up and pull (they do not parse name:tag@sha256:...).
compose_stack_web_image: the image a release's web replicas run (tasks/keep-release.yml).
compose_stack_start_order: the services of a compose file, dependencies first.
compose_stack_objects_by_project: the docker objects of each project, from one docker_host_info
listing (tasks/docker-objects.yml).
compose_stack_drift: what `compose up` would have to repair in a project, from the docker
objects docker_host_info listed (tasks/docker-objects.yml). Check mode reports it, because
`compose up --dry-run` fails as soon as a dependency is stopped.
compose_stack_unconverged: why `compose up` would still have work on a host whose release, images
and containers did not drift (empty: nothing to do, so the deploy skips compose).
compose_stack_rollout: a service's replicas sorted for a rolling update (tasks/roll.yml).
compose_stack_proxy_up: the replica addresses HAProxy's health view (CSV) reports UP.
compose_stack_swarm: the stack file `docker stack deploy` gets, made from the compose file a
single host gets (one stack definition, two engines).
compose_stack_swarm_failed_updates: the services whose update a stack deploy started and Swarm
rolled back.
compose_stack_swarm_unconverged: why a stack has not converged after docker stack deploy (its
tasks, not the update status, which Swarm can report completed for an update whose tasks fail).
compose_stack_swarm_versions: the services' versions in `docker service inspect` output (a deploy
records them; the next one is skipped when no service changed since).
compose_stack_invalid_cidrs: the entries of compose_stack_allowed_sources that are not IPv4 networks.
compose_stack_subject_alt_names: a certificate's subjectAltName value (DNS:... and IP:...) for names.
compose_stack_history_table: the last entries of a stack's deploy history (JSON lines written by
tasks/history-append.yml) as the rows of a table, for playbooks/history.yml."""

import csv
import hashlib
import ipaddress
import json
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

SERVICE_LABEL = "com.docker.compose.service"
CONFIG_HASH_LABEL = "com.docker.compose.config-hash"


def _plain(value):
    """A plain copy of a value made of mappings, lists and scalars (copy.deepcopy of Ansible's
    lazily templated containers is slow: seconds for one compose definition)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _merged(base, override):
    """`override` on top of `base`: dicts merge key by key, anything else (lists too) is replaced."""
    merged = _plain(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = _plain(value)
    return merged


def compose_stack_definition(stack, shared):
    """The compose definition compose_stack deploys: the stack's template (`stack`, as a dict),
    with under every service what every service shares (shared.hardening and the restart policy
    shared.restart), under the web service (shared.web_service) the common web service
    (shared.web), the data service (shared.datastore, a rendered templates/datastores/<kind>:
    its service, volumes and secrets, what web gets of it, and the record backup and restore
    read; web waits for it to be healthy), and the entry proxy (shared.proxy, as service
    shared.proxy_service). A stack's own keys win. The web service is labelled (shared.release_label) with its release: a hash of
    its definition without the replica count, and of .env (shared.env), so that replicas whose
    label differs are rolled and a change of the replica count alone rolls nothing. Images named
    in shared.images (compose_stack_pinned_images) are pinned to their digest first, so a new
    digest under the same tag is a new release. An
    x-compose-stack record names the web and proxy services and the proxy's stats port (read back
    from the host by rollback and restore, which get no stack variables)."""
    web, proxy = shared["web_service"], shared["proxy_service"]
    services = stack.get("services") or {}
    if web not in services:
        raise AnsibleFilterError(f"the stack's compose template defines no service {web!r} (compose_stack_proxy.service); "
                                 f"it defines: {', '.join(services) or 'none'}")
    if proxy in services:
        raise AnsibleFilterError(f"the stack's compose template defines a service {proxy!r}: that name is the entry proxy's")
    base = dict(shared["hardening"], restart=shared["restart"])
    datastore = shared.get("datastore") or {}
    web_shared = shared["web"]
    if datastore:
        store = datastore["record"]["service"]
        services = dict(services, **{store: _merged(datastore["service"], services.get(store) or {})})
        web_shared = _merged(web_shared, dict(datastore.get("web", {}), depends_on={store: {"condition": "service_healthy"}}))
    compose = {key: _plain(value) for key, value in stack.items() if key != "services"}
    for key in ("volumes", "secrets"):
        if datastore.get(key):
            compose[key] = _merged(datastore[key], compose.get(key) or {})
    compose["services"] = {}
    for name, service in services.items():
        compose["services"][name] = _merged(_merged(base, web_shared) if name == web else base, service or {})
    compose["services"][proxy] = _merged(base, shared["proxy"])
    pinned = shared.get("images") or {}
    for service in compose["services"].values():
        service["image"] = pinned.get(service.get("image"), service.get("image"))
    definition = _merged(compose["services"][web], {"deploy": {"replicas": 0}})
    definition.get("labels", {}).pop(shared["release_label"], None)
    release = hashlib.sha256((json.dumps(definition, sort_keys=True) + shared["env"]).encode()).hexdigest()[:16]
    compose["services"][web].setdefault("labels", {})[shared["release_label"]] = release
    compose["x-compose-stack"] = {"web_service": web, "proxy_service": proxy, "stats_port": shared["stats_port"]}
    if datastore:
        compose["x-compose-stack"]["datastore"] = _plain(datastore["record"])
    return compose


def compose_stack_pinned_images(images):
    """{name:tag: name:tag@sha256:...} for each tag of `images` (docker_image_info's) whose
    repository a registry gave a digest (RepoDigests: pulled or pushed). An image loaded from an
    archive or built here has none, and keeps its tag."""
    pinned = {}
    for image in images:
        digests = dict(entry.split("@", 1) for entry in image.get("RepoDigests") or [])
        for tag in image.get("RepoTags") or []:
            repository = tag.rsplit(":", 1)[0]
            if repository in digests:
                pinned[tag] = f"{tag}@{digests[repository]}"
    return pinned


def compose_stack_by_digest(image):
    """`image` (name:tag@sha256:...) as name@sha256:...; a name without a digest is returned as is."""
    name, at, digest = image.partition("@")
    if not at:
        return image
    repository, colon, tag = name.rpartition(":")
    return f"{repository if colon and '/' not in tag else name}@{digest}"


def compose_stack_web_image(compose):
    """The image of a compose definition's web service (named by its x-compose-stack record)."""
    return compose["services"][compose["x-compose-stack"]["web_service"]]["image"]


def compose_stack_start_order(compose):
    services = compose["services"]
    order = []

    def visit(name, path=()):
        if name in path:
            raise ValueError(f"depends_on cycle: {' -> '.join(path + (name,))}")
        if name not in order:
            for dependency in services[name].get("depends_on") or []:
                visit(dependency, path + (name,))
            order.append(name)

    for name in services:
        visit(name)
    return order


def compose_stack_objects_by_project(host_info, projects, project_label, app_label):
    """docker_host_info's containers, networks and volumes (labelled with `project_label`) and app
    images (labelled with `app_label`), one dict per project in `projects`: {item (the project),
    containers, networks, volumes, images, host_info}. One listing serves every project."""
    def owned(kind, label, project):
        return [entry for entry in host_info.get(kind) or [] if (entry.get("Labels") or {}).get(label) == project]

    return [{"item": project, "containers": owned("containers", project_label, project),
             "networks": owned("networks", project_label, project), "volumes": owned("volumes", project_label, project),
             "images": owned("images", app_label, project), "host_info": host_info.get("host_info", {})}
            for project in projects]


def compose_stack_drift(objects, services):
    network_ids = {network["Id"] for network in objects["networks"]}
    present = {}
    summary = []
    lost_network = False
    for container in objects["containers"]:
        name = container["Names"][0].lstrip("/")
        service = container["Labels"].get(SERVICE_LABEL)
        present[service] = name
        if service not in services:
            summary.append(f"remove {name} (service {service} is no longer defined)")
            continue
        attached = container["NetworkSettings"]["Networks"].values()
        if any(network["NetworkID"] not in network_ids for network in attached):
            lost_network = True
            summary.append(f"recreate {name} (its network was removed)")
        elif container["State"] != "running":
            summary.append(f"start {name} ({container['State']})")
    summary.extend(f"create the {service} container (missing)" for service in services if service not in present)
    return {"summary": summary, "lost_network": lost_network}


def compose_stack_unconverged(objects, compose, config_hashes, release_label):
    """Reasons a project's containers differ from `compose` (the deployed compose.yaml as a dict):
    a container not running healthy, a data or proxy container whose config hash differs from
    what `docker compose config --hash '*'` printed (`config_hashes`), a web replica of another
    release (compose's hash of a scaled service differs from the printed one, so web is compared
    by its release label), or a service with more or fewer containers than it asks for."""
    web = compose["x-compose-stack"]["web_service"]
    expected_hashes = dict(line.split() for line in config_hashes.splitlines() if line.strip())
    counts = {}
    reasons = []
    for container in objects["containers"]:
        name = container["Names"][0].lstrip("/")
        labels = container["Labels"]
        service = labels.get(SERVICE_LABEL)
        counts[service] = counts.get(service, 0) + 1
        status = container.get("Status", "")
        if container["State"] != "running" or "(unhealthy)" in status or "(health: starting)" in status:
            reasons.append(f"{name} is not running healthy ({status})")
        elif service == web:
            if labels.get(release_label) != compose["services"][web]["labels"][release_label]:
                reasons.append(f"{name} runs another release")
        elif labels.get(CONFIG_HASH_LABEL) != expected_hashes.get(service):
            reasons.append(f"{name} was made from another config")
    for service, definition in compose["services"].items():
        want = (definition.get("deploy") or {}).get("replicas", 1)
        if counts.get(service, 0) != want:
            reasons.append(f"{service} has {counts.get(service, 0)} containers, not {want}")
    return reasons


def compose_stack_rollout(containers, label, release):
    """IDs of the running replicas of another release (outdated: their `label` differs from
    `release`), of the stopped ones, and of those of the desired release (all_current, any
    state), with the addresses of the running ones (current_addresses), and the running ones
    whose health check fails (unhealthy: compose up --wait gives up on them at once)."""
    plan = {"outdated": [], "stopped": [], "all_current": [], "current_addresses": [], "unhealthy": []}
    for container in containers:
        running = container["State"] == "running"
        if running and "(unhealthy)" in container.get("Status", ""):
            plan["unhealthy"].append(container["Id"])
        current = container["Labels"].get(label) == release
        if current:
            plan["all_current"].append(container["Id"])
            if running:
                plan["current_addresses"].extend(network["IPAddress"] for network in container["NetworkSettings"]["Networks"].values())
        if not running:
            plan["stopped"].append(container["Id"])
        elif not current:
            plan["outdated"].append(container["Id"])
    return plan


def compose_stack_proxy_up(stats_csv, backend):
    """Addresses (without port) of the servers of `backend` that HAProxy's /stats;csv shows UP."""
    rows = csv.DictReader(stats_csv.lstrip("# ").splitlines())
    return [row["addr"].rsplit(":", 1)[0] for row in rows
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
            and row["status"].startswith("UP") and row["addr"]]


# Compose restart policies as Swarm restart conditions.
SWARM_RESTART = {"no": "none", "on-failure": "on-failure", "always": "any", "unless-stopped": "any"}


def compose_stack_swarm(compose, options):
    """The compose file of a single host (compose_stack's, as a dict) as a Swarm stack file.
    Only engine-specific keys change: restart -> deploy.restart_policy; tmpfs -> tmpfs mounts;
    a bind mount of a project folder (the proxy's config) -> one Swarm config per file, named by
    its content hash (configs are immutable: a new name rolls the service); secrets are readable
    only by the service's user; published ports name their mode. depends_on, security_opt
    (Swarm services have no no-new-privileges) and the project name have no Swarm equivalent.
    Web rolls start-first and rolls back on failure; data services are pinned to the node with
    the data label; the proxy runs on every node.
    options: endpoint_mode (dnsrr|vip), publish_mode (host|ingress), data_label, update_monitor,
    stack (the stack's name), project_files ({path under the project: its content})."""
    roles = compose["x-compose-stack"]
    web, proxy = roles["web_service"], roles["proxy_service"]
    stack = {key: value for key, value in compose.items() if key != "name"}
    stack["services"] = {}
    configs = {}
    for name, service in compose["services"].items():
        service = _plain(service)
        restart = service.pop("restart", "unless-stopped")
        for key in ("depends_on", "security_opt", "container_name"):
            service.pop(key, None)
        volumes = [{"type": "tmpfs", "target": target} for target in service.pop("tmpfs", [])]
        for volume in service.pop("volumes", []):
            source, target = volume.split(":")[:2]
            if not source.startswith("./"):
                volumes.append(volume)
                continue
            folder = source[2:].rstrip("/") + "/"
            for path, content in sorted(options["project_files"].items()):
                if path.startswith(folder):
                    digest = hashlib.sha256(content.encode()).hexdigest()
                    config = f"{name}_{path[len(folder):]}".replace(".", "_")
                    configs[config] = {"file": f"./{path}", "name": f"{options['stack']}_{config}_{digest[:12]}"}
                    service.setdefault("configs", []).append({"source": config, "target": f"{target}/{path[len(folder):]}"})
        if volumes:
            service["volumes"] = volumes
        uid = str(service.get("user", "0")).split(":")[0]
        service["secrets"] = [{"source": secret, "target": secret} if isinstance(secret, str) else dict(secret)
                              for secret in service.get("secrets", [])]
        for secret in service["secrets"]:
            secret.update({"uid": uid, "mode": 0o400})
        if not service["secrets"]:
            del service["secrets"]
        service["ports"] = [_swarm_port(port, options["publish_mode"]) for port in service.get("ports", [])]
        if not service["ports"]:
            del service["ports"]
        deploy = service.setdefault("deploy", {})
        deploy["endpoint_mode"] = options["endpoint_mode"]
        deploy["restart_policy"] = {"condition": SWARM_RESTART[restart], "delay": "1s"}
        if name == web:
            # A new replica serves next to the old ones until it is healthy; one that is not
            # (or fails within the monitor window) makes Swarm roll the service back.
            rolling = {"parallelism": 1, "order": "start-first", "monitor": options["update_monitor"]}
            deploy["update_config"] = dict(rolling, failure_action="rollback", max_failure_ratio=0)
            deploy["rollback_config"] = dict(rolling, failure_action="pause")
        elif name == proxy:
            deploy["mode"] = "global"
            # A host-mode port is held by one container at a time.
            order = "stop-first" if options["publish_mode"] == "host" else "start-first"
            deploy["update_config"] = {"parallelism": 1, "order": order, "failure_action": "rollback",
                                       "monitor": options["update_monitor"]}
        else:
            # A datastore keeps its named volume on one node, and one container writes it.
            deploy["placement"] = {"constraints": [f"node.labels.{options['data_label']} == true"]}
            deploy["update_config"] = {"parallelism": 1, "order": "stop-first", "failure_action": "rollback"}
        stack["services"][name] = service
    if configs:
        stack["configs"] = configs
    return stack


def _swarm_inspected(output):
    """(name, version, update status JSON) per line of `docker service inspect --format
    '{{.Spec.Name}} {{.Version.Index}} {{json .UpdateStatus}}'`."""
    return [tuple((line.split(" ", 2) + ["", ""])[:3]) for line in output.splitlines() if line.strip()]


def compose_stack_swarm_failed_updates(before, after):
    """Services whose update this deploy started and Swarm rolled back or paused, as
    "service: message", from two outputs of the inspect above (before and after docker stack
    deploy)."""

    def statuses(output):
        return {name: json.loads(status) for name, _, status in _swarm_inspected(output)
                if status.strip() not in ("", "null")}

    earlier = statuses(before)
    return [f"{name}: {status.get('State')} ({status.get('Message', '')})" for name, status in sorted(statuses(after).items())
            if status.get("State") in ("rollback_started", "rollback_completed", "rollback_paused", "paused")
            and status.get("StartedAt") != earlier.get(name, {}).get("StartedAt")]


def compose_stack_swarm_unconverged(output):
    """Why a stack has not converged, one reason per service, from the lines the convergence read
    in tasks/swarm-up.yml prints: `service <name> <running>/<desired>...`, `update <name> <state>`
    and `task <service>.<slot or node> <current state>` for each running task of the service's
    current spec. Empty: every service runs at least its desired count of current tasks (running means
    healthy, for a service with a health check) and no update or rollback is under way."""
    desired, states, running = {}, {}, {}
    for line in output.splitlines():
        kind, _, rest = line.partition(" ")
        fields = rest.split()
        if kind == "service" and len(fields) >= 2:
            desired[fields[0]] = int(fields[1].split("/")[1])
        elif kind == "update" and fields:
            states[fields[0]] = fields[1] if len(fields) > 1 else ""
        elif kind == "task" and len(fields) >= 2 and fields[1] == "Running":
            service = fields[0].rsplit(".", 1)[0]
            running[service] = running.get(service, 0) + 1
    reasons = []
    for name in sorted(desired):
        if states.get(name) in ("updating", "rollback_started"):
            reasons.append(f"{name}: {states[name].replace('_', ' ')}")
        # At least: a task on a node that is down still shows its last state (a global service
        # keeps it), and docker's own wait leaves those nodes out the same way.
        elif running.get(name, 0) < desired[name]:
            reasons.append(f"{name}: {running.get(name, 0)} of {desired[name]} tasks of its current spec running")
    return reasons


def compose_stack_swarm_versions(output):
    """"name version" lines, sorted, of the inspect above: a service changed or updated by
    anyone (by hand, or by Swarm rolling it back) has another version."""
    return "\n".join(sorted(f"{name} {version}" for name, version, _ in _swarm_inspected(output)))


def compose_stack_subject_alt_names(names):
    """openssl's subjectAltName value for DNS names and IP addresses: "DNS:web1,IP:127.0.0.1"."""
    def entry(name):
        try:
            return f"IP:{ipaddress.ip_address(name)}"
        except ValueError:
            return f"DNS:{name}"
    return ",".join(entry(str(name)) for name in names)


def compose_stack_invalid_cidrs(sources):
    """The entries of a list that are not IPv4 networks ("192.0.2.0/24", "198.51.100.7")."""
    invalid = []
    for source in sources if isinstance(sources, list) else [sources]:
        try:
            ipaddress.IPv4Network(str(source), strict=False)
        except ValueError:
            invalid.append(source)
    return invalid


def compose_stack_history_table(history, last=20):
    """A header and one row per entry, oldest first, of the last `last` JSON lines of `history`
    (a line that is not JSON, say cut off by a full disk, is shown as such, not dropped)."""
    columns = ("time (UTC)", "action", "result", "release", "by", "changes")
    rows = []
    for line in [line for line in str(history).splitlines() if line.strip()][-int(last):]:
        try:
            entry = json.loads(line)
        except ValueError:
            rows.append(("?", "?", "unreadable", "", "", line[:60]))
            continue
        by = f"{entry.get('user', '?')}@{entry.get('controller', '?')}"
        changes = ", ".join(entry.get("changes") or []) or "-"
        if entry.get("error"):
            changes += f" ({entry['error'].splitlines()[0][:80]})"
        rows.append((entry.get("time", "?"), entry.get("action", "?"), entry.get("result", "?"),
                     entry.get("release", "?"), by, changes))
    widths = [max(len(str(row[index])) for row in [columns, *rows]) for index in range(len(columns) - 1)]
    return ["  ".join([str(cell).ljust(width) for cell, width in zip(row, widths)] + [str(row[-1])]).rstrip()
            for row in [columns, *rows]]


def _swarm_port(port, mode):
    """A compose port ("[address:]published:target") in Swarm's long syntax (no bind address)."""
    published, target = str(port).split(":")[-2:]
    return {"target": int(target), "published": int(published), "protocol": "tcp", "mode": mode}


class FilterModule:
    def filters(self):
        return {"compose_stack_definition": compose_stack_definition, "compose_stack_pinned_images": compose_stack_pinned_images,
                "compose_stack_web_image": compose_stack_web_image, "compose_stack_by_digest": compose_stack_by_digest,
                "compose_stack_drift": compose_stack_drift, "compose_stack_start_order": compose_stack_start_order,
                "compose_stack_rollout": compose_stack_rollout, "compose_stack_unconverged": compose_stack_unconverged,
                "compose_stack_proxy_up": compose_stack_proxy_up, "compose_stack_swarm": compose_stack_swarm,
                "compose_stack_swarm_versions": compose_stack_swarm_versions,
                "compose_stack_objects_by_project": compose_stack_objects_by_project,
                "compose_stack_swarm_failed_updates": compose_stack_swarm_failed_updates,
                "compose_stack_swarm_unconverged": compose_stack_swarm_unconverged,
                "compose_stack_invalid_cidrs": compose_stack_invalid_cidrs, "compose_stack_subject_alt_names": compose_stack_subject_alt_names,
                "compose_stack_history_table": compose_stack_history_table}
