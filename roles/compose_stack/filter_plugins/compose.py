"""Filters of the compose_stack role.

compose_stack_start_order: the services of a compose file, dependencies first.
compose_stack_drift: what `compose up` would have to repair in a project, from the docker
objects docker_host_info listed (tasks/docker-objects.yml). Check mode reports it, because
`compose up --dry-run` fails as soon as a dependency is stopped."""

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


class FilterModule:
    def filters(self):
        return {"compose_stack_drift": compose_stack_drift, "compose_stack_start_order": compose_stack_start_order}
