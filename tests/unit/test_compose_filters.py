"""Unit tests of every filter in roles/compose_stack/filter_plugins/compose.py (no host, no engine)."""

import importlib.util
import json
import pathlib

import pytest
from ansible.errors import AnsibleFilterError

ROLE = pathlib.Path(__file__).resolve().parents[2] / "roles" / "compose_stack"
spec = importlib.util.spec_from_file_location("compose_filters", ROLE / "filter_plugins" / "compose.py")
compose = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compose)

LABEL = "compose-stack.release"
SHARED = {"web": {"image": "app:1", "user": "10001:10001", "deploy": {"replicas": 2}, "tmpfs": ["/tmp"]},
          "proxy": {"image": "haproxy:3.0", "ports": ["127.0.0.1:8000:8000"], "volumes": ["./proxy:/usr/local/etc/haproxy:ro"]},
          "hardening": {"read_only": True, "cap_drop": ["ALL"]}, "restart": "unless-stopped",
          "web_service": "web", "proxy_service": "proxy", "stats_port": 8404, "release_label": LABEL, "env": "A=1\n"}


def definition(stack=None, **shared):
    stack = stack or {"name": "s", "services": {"web": {"depends_on": ["db"]}, "db": {"image": "db:1", "cap_add": ["CHOWN"]}},
                      "volumes": {"data": None}}
    return compose.compose_stack_definition(stack, dict(SHARED, **shared))


def container(name, service="web", state="running", status="Up 1 minute (healthy)", labels=None, address="10.0.0.2", ident=None):
    return {"Id": ident or name, "Names": [f"/{name}"], "State": state, "Status": status,
            "Labels": {compose.SERVICE_LABEL: service, **(labels or {})},
            "NetworkSettings": {"Networks": {"s_default": {"NetworkID": "net1", "IPAddress": address}}}}


def test_definition_merges_shared_parts_under_every_service_and_the_stacks_own_keys_win():
    result = definition()
    web, db, proxy = (result["services"][name] for name in ("web", "db", "proxy"))
    assert web["image"] == "app:1" and web["depends_on"] == ["db"] and web["read_only"] is True
    assert db["cap_add"] == ["CHOWN"] and db["cap_drop"] == ["ALL"] and db["restart"] == "unless-stopped"
    assert "user" not in db, "the web service's shared keys leaked into a data service"
    assert proxy["ports"] == ["127.0.0.1:8000:8000"] and proxy["read_only"] is True
    assert result["volumes"] == {"data": None}
    assert result["x-compose-stack"] == {"web_service": "web", "proxy_service": "proxy", "stats_port": 8404}
    overridden = definition({"services": {"web": {"user": "20000:20000", "deploy": {"resources": {"limits": {"memory": "1G"}}}}}})
    assert overridden["services"]["web"]["user"] == "20000:20000"
    assert overridden["services"]["web"]["deploy"] == {"replicas": 2, "resources": {"limits": {"memory": "1G"}}}


def test_release_label_follows_the_web_definition_and_env_but_not_the_replica_count():
    release = definition()["services"]["web"]["labels"][LABEL]
    assert len(release) == 16
    assert definition(web=dict(SHARED["web"], deploy={"replicas": 5}))["services"]["web"]["labels"][LABEL] == release
    assert definition(web=dict(SHARED["web"], image="app:2"))["services"]["web"]["labels"][LABEL] != release
    assert definition(env="A=2\n")["services"]["web"]["labels"][LABEL] != release
    # A data service's change is not a web release (it restarts the data service only).
    other_db = {"services": {"web": {"depends_on": ["db"]}, "db": {"image": "db:2"}}, "volumes": {"data": None}}
    assert definition(other_db)["services"]["web"]["labels"][LABEL] == release


def test_pinned_images_give_each_tag_its_registry_digest_and_the_definition_uses_them():
    images = [{"RepoTags": ["redis:7.4"], "RepoDigests": ["redis@sha256:aa"]},
              {"RepoTags": ["registry.kit:5444/s-app:1", "s-app:1"], "RepoDigests": ["registry.kit:5444/s-app@sha256:bb"]},
              {"RepoTags": ["haproxy:3.0"], "RepoDigests": []}]  # loaded from an archive: no digest
    pinned = compose.compose_stack_pinned_images(images)
    assert pinned == {"redis:7.4": "redis:7.4@sha256:aa", "registry.kit:5444/s-app:1": "registry.kit:5444/s-app:1@sha256:bb"}
    plain = definition()
    pinned_web = definition(images={"app:1": "app:1@sha256:cc", "db:1": "db:1@sha256:dd"})
    assert [pinned_web["services"][name]["image"] for name in ("web", "db", "proxy")] == ["app:1@sha256:cc", "db:1@sha256:dd", "haproxy:3.0"]
    assert compose.compose_stack_web_image(pinned_web) == "app:1@sha256:cc"
    assert [compose.compose_stack_by_digest(name) for name in ("registry.kit:5444/s-app:1@sha256:bb", "registry.kit:5444/s-app@sha256:bb",
                                                              "redis:7.4", "registry.kit:5444/s-app")] == [
        "registry.kit:5444/s-app@sha256:bb", "registry.kit:5444/s-app@sha256:bb", "redis:7.4", "registry.kit:5444/s-app"]
    # The same tag with another digest is another release.
    assert pinned_web["services"]["web"]["labels"][LABEL] != plain["services"]["web"]["labels"][LABEL]


def test_definition_refuses_a_template_without_the_web_service_or_with_a_proxy_service():
    with pytest.raises(AnsibleFilterError, match="defines no service 'web'.*it defines: db"):
        definition({"services": {"db": {}}})
    with pytest.raises(AnsibleFilterError, match="entry proxy"):
        definition({"services": {"web": {}, "proxy": {}}})


def test_start_order_puts_dependencies_first_and_names_a_cycle():
    services = {"web": {"depends_on": {"db": {"condition": "service_healthy"}}}, "db": {}, "proxy": {"depends_on": ["web"]}}
    assert compose.compose_stack_start_order({"services": services}) == ["db", "web", "proxy"]
    with pytest.raises(ValueError, match="a -> b -> a"):
        compose.compose_stack_start_order({"services": {"a": {"depends_on": ["b"]}, "b": {"depends_on": ["a"]}}})


def test_drift_names_what_compose_up_must_repair():
    objects = {"networks": [{"Id": "net1"}],
               "containers": [container("s-web-1"), container("s-db-1", "db", state="exited", status="Exited (1)"),
                              container("s-old-1", "old")]}
    drift = compose.compose_stack_drift(objects, ["db", "web", "proxy"])
    assert drift == {"summary": ["start s-db-1 (exited)", "remove s-old-1 (service old is no longer defined)",
                                 "create the proxy container (missing)"], "lost_network": False}
    lost = compose.compose_stack_drift({"networks": [], "containers": [container("s-web-1")]}, ["web"])
    assert lost == {"summary": ["recreate s-web-1 (its network was removed)"], "lost_network": True}


def test_unconverged_compares_web_by_release_and_the_rest_by_config_hash():
    compose_file = {"x-compose-stack": {"web_service": "web"},
                    "services": {"web": {"labels": {LABEL: "r2"}, "deploy": {"replicas": 2}}, "db": {}}}
    hashes = "db abc\nweb ignored\n"
    converged = {"containers": [container("s-web-1", labels={LABEL: "r2"}), container("s-web-2", labels={LABEL: "r2"}),
                                container("s-db-1", "db", labels={compose.CONFIG_HASH_LABEL: "abc"})]}
    assert compose.compose_stack_unconverged(converged, compose_file, hashes, LABEL) == []
    drifted = {"containers": [container("s-web-1", labels={LABEL: "r1"}), container("s-web-2", status="Up (health: starting)"),
                              container("s-db-1", "db", labels={compose.CONFIG_HASH_LABEL: "old"})]}
    assert compose.compose_stack_unconverged(drifted, compose_file, hashes, LABEL) == [
        "s-web-1 runs another release", "s-web-2 is not running healthy (Up (health: starting))", "s-db-1 was made from another config"]
    assert compose.compose_stack_unconverged({"containers": []}, compose_file, hashes, LABEL) == [
        "web has 0 containers, not 2", "db has 0 containers, not 1"]


def test_rollout_sorts_replicas_into_outdated_stopped_current_and_unhealthy():
    replicas = [container("old", labels={LABEL: "r1"}, address="10.0.0.2"),
                container("new", labels={LABEL: "r2"}, address="10.0.0.3"),
                container("sick", labels={LABEL: "r2"}, status="Up (unhealthy)", address="10.0.0.4"),
                container("dead", labels={LABEL: "r1"}, state="exited", status="Exited (137)")]
    assert compose.compose_stack_rollout(replicas, LABEL, "r2") == {
        "outdated": ["old"], "stopped": ["dead"], "all_current": ["new", "sick"],
        "current_addresses": ["10.0.0.3", "10.0.0.4"], "unhealthy": ["sick"]}


def test_proxy_up_lists_the_addresses_haproxy_reports_up_for_one_backend():
    stats = ("# pxname,svname,status,addr\n"
             "web,FRONTEND,OPEN,\nweb,web1,UP,10.0.0.2:8000\nweb,web2,DOWN,10.0.0.3:8000\n"
             "web,web3,UP 1/2,10.0.0.4:8000\nweb,web4,MAINT,\nother,o1,UP,10.0.0.9:8000\nweb,BACKEND,UP,\n")
    assert compose.compose_stack_proxy_up(stats, "web") == ["10.0.0.2", "10.0.0.4"]


def test_swarm_turns_the_compose_definition_into_a_stack_file():
    files = {"proxy/haproxy.cfg": "Y2ZnCg==", ".env": "QT0xCg=="}
    stack = compose.compose_stack_swarm(dict(definition(), services=dict(definition()["services"], web=dict(
        definition()["services"]["web"], secrets=[{"source": "pw_app", "target": "pw"}]))), {
        "stack": "s", "endpoint_mode": "dnsrr", "publish_mode": "host", "data_label": "stack-data",
        "update_monitor": "10s", "project_files": files})
    web, db, proxy = (stack["services"][name] for name in ("web", "db", "proxy"))
    assert "name" not in stack and "depends_on" not in web and "restart" not in web
    assert web["deploy"]["update_config"]["order"] == "start-first" and web["deploy"]["update_config"]["failure_action"] == "rollback"
    assert web["deploy"]["restart_policy"] == {"condition": "any", "delay": "1s"}
    assert web["volumes"] == [{"type": "tmpfs", "target": "/tmp"}]
    assert web["secrets"] == [{"source": "pw_app", "target": "pw", "uid": "10001", "mode": 0o400}]
    assert db["deploy"]["placement"] == {"constraints": ["node.labels.stack-data == true"]}
    assert proxy["deploy"]["mode"] == "global" and proxy["deploy"]["update_config"]["order"] == "stop-first"
    assert proxy["ports"] == [{"target": 8000, "published": 8000, "protocol": "tcp", "mode": "host"}]
    config = proxy["configs"][0]
    assert config["target"] == "/usr/local/etc/haproxy/haproxy.cfg"
    assert stack["configs"][config["source"]]["file"] == "./proxy/haproxy.cfg"
    assert stack["configs"][config["source"]]["name"].startswith("s_proxy_haproxy_cfg_")


def inspect(**statuses):
    """`docker service inspect --format '{{.Spec.Name}} {{.Version.Index}} {{json .UpdateStatus}}'` output."""
    return "\n".join(f"s_{name} {len(name)} {json.dumps(status) if status else 'null'}" for name, status in statuses.items())


def test_swarm_failed_updates_names_only_rollbacks_this_deploy_started():
    before = inspect(web={"State": "rollback_completed", "StartedAt": "t1", "Message": "old"}, db=None)
    after = inspect(web={"State": "rollback_completed", "StartedAt": "t1", "Message": "old"},
                    db={"State": "rollback_completed", "StartedAt": "t2", "Message": "update rolled back"},
                    proxy={"State": "completed", "StartedAt": "t3"})
    assert compose.compose_stack_swarm_failed_updates(before, after) == ["s_db: rollback_completed (update rolled back)"]


def test_swarm_versions_are_sorted_name_version_lines():
    output = inspect(web={"State": "completed", "StartedAt": "t1"}, db=None) + "\n"
    assert compose.compose_stack_swarm_versions(output) == "s_db 2\ns_web 3"
    assert compose.compose_stack_swarm_versions("") == ""


def test_invalid_cidrs_lists_what_is_not_an_ipv4_network():
    assert compose.compose_stack_invalid_cidrs(["192.0.2.0/24", "198.51.100.7", "0.0.0.0/0"]) == []
    assert compose.compose_stack_invalid_cidrs(["10.0.0.0/33", "2001:db8::/32", "any", 5]) == ["10.0.0.0/33", "2001:db8::/32", "any", 5]
    assert compose.compose_stack_invalid_cidrs("10.0.0.1") == []


def test_every_filter_is_registered_and_named_in_the_docstring():
    filters = compose.FilterModule().filters()
    public = {name for name in dir(compose) if name.startswith("compose_stack_") and callable(getattr(compose, name))}
    assert set(filters) == public
    for name in filters:
        assert f"\n{name}:" in compose.__doc__, f"{name} is not described in the module docstring"


def test_definition_merges_a_data_service_its_volumes_secrets_and_what_web_gets_of_it():
    datastore = {"service": {"image": "postgres:17", "cap_add": ["CHOWN"]}, "volumes": {"db-data": None},
                 "secrets": {"db_password": {"file": "./secrets/db_password"}},
                 "web": {"secrets": [{"source": "db_password_app", "target": "db_password"}]},
                 "record": {"kind": "postgres", "service": "db", "volume": "db-data", "file": "users.dump"}}
    result = definition({"services": {"web": {}}, "volumes": {"own": None}}, datastore=datastore)
    db, web = result["services"]["db"], result["services"]["web"]
    assert db["image"] == "postgres:17" and db["cap_drop"] == ["ALL"] and db["restart"] == "unless-stopped"
    assert web["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert web["secrets"] == [{"source": "db_password_app", "target": "db_password"}] and web["image"] == "app:1"
    assert result["volumes"] == {"db-data": None, "own": None} and result["secrets"] == datastore["secrets"]
    assert result["x-compose-stack"]["datastore"] == datastore["record"]
    # The stack's template may still say more about its data service: its keys win.
    tuned = definition({"services": {"web": {}, "db": {"stop_grace_period": "90s"}}}, datastore=datastore)
    assert tuned["services"]["db"]["stop_grace_period"] == "90s" and tuned["services"]["db"]["image"] == "postgres:17"
    assert "datastore" not in definition()["x-compose-stack"]


def test_history_table_shows_the_last_entries_oldest_first_with_who_what_and_why():
    entries = [{"time": f"2026-12-03T10:0{n}:00Z", "action": "deploy", "result": "ok", "release": f"r{n}",
                "user": "ops", "controller": "laptop", "changes": [".env"]} for n in range(3)]
    entries.append({"time": "2026-12-03T10:09:00Z", "action": "deploy", "result": "rolled back", "release": "bad",
                    "user": "ops", "controller": "laptop", "changes": [], "error": "web-3 unhealthy\nmore"})
    history = "\n".join(json.dumps(entry) for entry in entries) + "\n{\"cut off"
    table = compose.compose_stack_history_table(history, 3)
    assert table[0].split() == ["time", "(UTC)", "action", "result", "release", "by", "changes"]
    assert [row.split()[:3] for row in table[1:]] == [["2026-12-03T10:02:00Z", "deploy", "ok"],
                                                        ["2026-12-03T10:09:00Z", "deploy", "rolled"], ["?", "?", "unreadable"]]
    assert "r2" in table[1] and "ops@laptop" in table[1] and table[1].endswith(".env")
    assert table[2].endswith("- (web-3 unhealthy)")
    assert table[0].index("action") == table[1].index("deploy") == table[2].index("deploy"), "the columns are not aligned"
    assert compose.compose_stack_history_table("", 5) == ["time (UTC)  action  result  release  by  changes"]


def test_subject_alt_names_tell_ip_addresses_from_dns_names():
    assert compose.compose_stack_subject_alt_names(["staging-1", "localhost", "127.0.0.1", "::1"]) == \
        "DNS:staging-1,DNS:localhost,IP:127.0.0.1,IP:::1"


def test_objects_by_project_sorts_one_listing_by_label():
    label, app = "com.docker.compose.project", "compose-stack.app"
    host_info = {
        "containers": [{"Id": "c1", "Labels": {label: "users"}}, {"Id": "c2", "Labels": {label: "wsgi"}}],
        "networks": [{"Id": "n1", "Labels": {label: "users"}}],
        # The engine lists a volume without labels as null.
        "volumes": [{"Name": "v1", "Labels": None}, {"Name": "v2", "Labels": {label: "users"}}],
        "images": [{"Id": "i1", "Labels": {app: "users"}}, {"Id": "i2", "Labels": {label: "users"}}],
        "host_info": {"Swarm": {"NodeID": "n"}},
    }
    users, hitcounter = compose.compose_stack_objects_by_project(host_info, ["users", "hitcounter"], label, app)
    assert users == {"item": "users", "containers": [{"Id": "c1", "Labels": {label: "users"}}],
                     "networks": [{"Id": "n1", "Labels": {label: "users"}}], "volumes": [{"Name": "v2", "Labels": {label: "users"}}],
                     "images": [{"Id": "i1", "Labels": {app: "users"}}], "host_info": {"Swarm": {"NodeID": "n"}}}
    assert [hitcounter[kind] for kind in ("containers", "networks", "volumes", "images")] == [[], [], [], []]


def test_swarm_unconverged_counts_running_tasks_of_the_current_spec():
    converged = "\n".join([
        "service s_web 3/3", "service s_proxy 3/3 (max 1 per node)", "service s_redis 1/1",
        "update s_web completed", "update s_proxy ", "update s_redis rollback_completed",
        "task s_web.1 Running 2 minutes ago", "task s_web.2 Running 2 minutes ago", "task s_web.3 Running 1 minute ago",
        "task s_proxy.abc Running 2 minutes ago", "task s_proxy.def Running 2 minutes ago", "task s_proxy.ghi Running 1 minute ago",
        "task s_redis.1 Running 5 minutes ago",
    ])
    assert compose.compose_stack_swarm_unconverged(converged) == []
    # An update Swarm called completed whose new tasks never became healthy (they start again and
    # again): the old tasks still run, but they are not of the current spec and are not listed.
    failing = converged.replace("task s_web.2 Running 2 minutes ago", "task s_web.2 Starting 3 seconds ago").replace(
        "task s_web.3 Running 1 minute ago\n", "")
    assert compose.compose_stack_swarm_unconverged(failing) == ["s_web: 1 of 3 tasks of its current spec running"]
    rolling_back = converged.replace("update s_redis rollback_completed", "update s_redis rollback_started")
    assert compose.compose_stack_swarm_unconverged(rolling_back) == ["s_redis: rollback started"]
