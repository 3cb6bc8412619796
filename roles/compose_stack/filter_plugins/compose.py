"""Filters of the compose_stack role.

compose_stack_start_order: the services of a compose file, dependencies first.
compose_stack_drift: what `compose up` would have to repair in a project, from the docker
objects docker_host_info listed (tasks/docker-objects.yml). Check mode reports it, because
`compose up --dry-run` fails as soon as a dependency is stopped.
compose_stack_rollout: a service's replicas sorted for a rolling update (tasks/roll.yml).
compose_stack_proxy_up: the replica addresses HAProxy's health view (CSV) reports UP."""

import csv

SERVICE_LABEL = "com.docker.compose.service"


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


def compose_stack_rollout(containers, label, release):
    """IDs of the running replicas of another release (outdated: their `label` differs from
    `release`), of the stopped ones, and of those of the desired release (all_current, any
    state), with the addresses of the running ones (current_addresses)."""
    plan = {"outdated": [], "stopped": [], "all_current": [], "current_addresses": []}
    for container in containers:
        running = container["State"] == "running"
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


class FilterModule:
    def filters(self):
        return {"compose_stack_drift": compose_stack_drift, "compose_stack_start_order": compose_stack_start_order,
                "compose_stack_rollout": compose_stack_rollout, "compose_stack_proxy_up": compose_stack_proxy_up}
