"""Helpers for verifying a compose stack on a staging host: containers, HTTP, fault drills."""

import json
import os
import pwd
import re
import shlex
import socket
import subprocess
import time

SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def size_in_bytes(size):
    """Compose memory sizes ("128M", "1g") in bytes."""
    number, unit = re.fullmatch(r"(\d+)([bkmg]?)", str(size).lower()).groups()
    return int(number) * SIZE_UNITS[unit]


def inspect(host, container):
    return json.loads(host.check_output(f"docker inspect {container}"))[0]


def container_exec(host, container, command):
    """stdout of `command` (a shell string) run in a running container. Retried when runc reports
    that the exec never started ("OCI runtime exec failed ... read init-p: connection reset by
    peer", seen once on a busy CI machine): the command did not run, so a retry is safe. Any other
    failure, or a non-zero exit of the command itself, fails at once."""
    for attempt in range(3):
        result = host.run(f"docker exec {container} sh -c {shlex.quote(command)}")
        if "OCI runtime exec failed" not in result.stdout + result.stderr:
            break
        time.sleep(0.5)
    assert result.rc == 0, f"docker exec {container} {command} exited {result.rc}: {result.stdout}{result.stderr}"
    return result.stdout.strip()


def assert_published_by_nat(host, project, stack_vars):
    """The entry proxy's port is published on the stack's bind address, as kernel NAT (with
    userland-proxy off there is no docker-proxy; HTTP checks show that it answers)."""
    port = stack_vars[f"{project}_port"]
    bindings = inspect(host, f"{project}-proxy-1")["NetworkSettings"]["Ports"]["8000/tcp"]
    assert bindings == [{"HostIp": stack_vars.get(f"{project}_bind_address", "127.0.0.1"), "HostPort": str(port)}], bindings
    assert not host.process.filter(comm="docker-proxy")


def container_env(host, container):
    """The environment a container runs with, as a dict."""
    return dict(item.split("=", 1) for item in inspect(host, container)["Config"]["Env"])


def wait_for(what, check, timeout, interval=0.5):
    """Poll check() until it returns a truthy value; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


def http(host, url, method="GET", body=None, content_type="application/json", headers=None, cacert=""):
    """(status, body) of a request sent from the staging host itself (an https URL verified against `cacert`)."""
    command = f"curl -s --max-time 15 -X {method} -w '\\n%{{http_code}}'" + (f" --cacert {shlex.quote(cacert)}" if cacert else "")
    command += "".join(f" -H {shlex.quote(f'{name}: {value}')}" for name, value in (headers or {}).items())
    if body is not None:
        command = f"printf %s {shlex.quote(body)} | {command} -H 'Content-Type: {content_type}' --data-binary @-"
    result = host.run(f"{command} {shlex.quote(url)}")
    text, _, status = result.stdout.rpartition("\n")
    return int(status or 0), text


def http_get(host, url):
    return http(host, url)


def page_count(host, url):
    """The hit counter's value, read by loading its page (which adds one)."""
    status, body = http_get(host, url)
    assert status == 200, body
    return int(re.fullmatch(r"Hello World! (\d+) times\.", body).group(1))


def post_user(host, api, name, cacert=""):
    """POST /users on the users API at `api`; returns the created user."""
    status, body = http(host, f"{api}/users", "POST", json.dumps({"name": name}), cacert=cacert)
    assert status == 201, body
    return json.loads(body)


def wait_healthy(host, container, timeout=60):
    return wait_for(f"{container} to be running and healthy", lambda: (
        (state := inspect(host, container)["State"])["Running"]
        and state.get("Health", {}).get("Status", "healthy") == "healthy"), timeout)


def crash_main_process(host, container):
    """kill -9 of the container's main PID on the host that runs its engine (a `docker kill`
    would count as a manual stop and cancel the restart policy). Returns the RestartCount before."""
    state = inspect(host, container)
    started = state["State"]["StartedAt"]
    # The engine applies a restart policy only to containers that ran at least 10 s.
    wait_for(f"{container} to have run 10 s", lambda: host.run(
        f"test $(( $(date +%s) - $(date -d {started} +%s) )) -ge 11").rc == 0, 20)
    host.check_output(f"kill -9 {state['State']['Pid']}")
    return state["RestartCount"]


def crash_and_wait_for_restart(host, container, timeout=60):
    """kill -9 of the container's main process; its restart policy brings it back healthy."""
    restarts = crash_main_process(host, container)
    wait_for(f"{container} to be restarted by its policy",
             lambda: inspect(host, container)["RestartCount"] > restarts, timeout)
    wait_healthy(host, container, timeout)


def supervisor_status(host, container):
    """(name, state, pid) of gunicorn from `supervisorctl status` in the container. supervisord
    runs inside the container, out of reach of testinfra's supervisor module, so its status
    line is read here: "gunicorn RUNNING pid 7, uptime 0:01:02"."""
    line = container_exec(host, container, "supervisorctl -c /etc/wsgi/supervisord.conf status gunicorn")
    name, state, *rest = line.split()
    pid = int(rest[1].rstrip(",")) if state == "RUNNING" else None
    return name, state, pid


def kill_in_container(host, container, pid):
    # The slim python image has no kill binary; the shell's builtin does it.
    container_exec(host, container, f"kill -9 {pid}")


def assert_supervisor_restarts_gunicorn(host, container, url):
    """kill -9 of the gunicorn master: supervisor starts a new one and HTTP answers again."""
    _, _, old_pid = supervisor_status(host, container)
    kill_in_container(host, container, old_pid)
    wait_for("supervisor to start a new gunicorn master",
             lambda: (status := supervisor_status(host, container))[1] == "RUNNING" and status[2] != old_pid, 15)
    # The new master retries its bind for a few seconds while the old workers let go of it.
    wait_for("HTTP to answer after the gunicorn restart", lambda: http_get(host, url)[0] == 200, 15)


def reboot_staging_host(host, name):
    """Restart the staging-host container (a VM reboot, from its hypervisor) and wait until it
    answers over SSH again with systemd booted (a refused login is retried)."""
    subprocess.run(["docker", "restart", "-t", "60", name], check=True, capture_output=True)
    wait_for("the host to answer over SSH with systemd booted", lambda: booted(host), 120, interval=1)


def booted(host):
    """True once the host answers over SSH and systemd has booted (testinfra raises on ssh's 255)."""
    try:
        return host.run("systemctl is-system-running --wait").stdout.strip() in ("running", "degraded")
    except RuntimeError:
        return False
    assert host.service("docker").is_running


def assert_limits(host, container, stack_vars, prefix):
    """The container runs with the restart policy, limits and hardening of its variables."""
    state = inspect(host, container)
    config = state["HostConfig"]
    stack = prefix.split("_")[0]
    assert state["State"]["Running"], container
    assert config["RestartPolicy"]["Name"] == stack_vars.get(f"{stack}_restart_policy", "unless-stopped")
    assert config["Memory"] == size_in_bytes(stack_vars[f"{prefix}_memory"]), container
    assert config["NanoCpus"] == round(float(stack_vars[f"{prefix}_cpus"]) * 1e9), container
    assert config["PidsLimit"] == int(stack_vars[f"{prefix}_pids"]), container
    assert config["ReadonlyRootfs"] is True, container
    assert config["CapDrop"] == ["ALL"], container
    assert "no-new-privileges:true" in config["SecurityOpt"], container
    return state


def replicas(host, project, service="web"):
    """Names of the running containers of a compose service: replicas come and go with rollouts."""
    return sorted(host.check_output(
        f"docker ps --filter label=com.docker.compose.project={project} "
        f"--filter label=com.docker.compose.service={service} --format '{{{{.Names}}}}'").split())


def release_of(host, project):
    """The release label of a stack's running web replicas (one release once a rollout is over)."""
    releases = {inspect(host, name)["Config"]["Labels"]["compose-stack.release"] for name in replicas(host, project)}
    assert len(releases) == 1, releases
    return releases.pop()


def deploy_history(host, project):
    """The stack's deploy history (compose_stack's tasks/history-append.yml), oldest first."""
    history = host.file(f"/var/lib/compose-stack/{project}/history.jsonl")
    return [json.loads(line) for line in history.content_string.splitlines()] if history.exists else []


def assert_last_history_entry(host, project, action, result, release):
    """The newest history line is this action's, by whoever runs the tests, from this controller."""
    entry = deploy_history(host, project)[-1]
    assert (entry["action"], entry["result"], entry["release"]) == (action, result, release), entry
    assert (entry["stack"], entry["host"], entry["user"], entry["controller"]) == (
        project, host.backend.get_hostname(), pwd.getpwuid(os.getuid()).pw_name, socket.gethostname()), entry
    return entry


def address(host, container):
    return next(iter(inspect(host, container)["NetworkSettings"]["Networks"].values()))["IPAddress"]


def replica_addresses(host, project):
    return {address(host, name) for name in replicas(host, project)}


def proxy_health_view(host, project):
    """{replica address: status} of the web backend in the entry proxy's health view (stats CSV)."""
    status, body = http(host, f"http://{address(host, f'{project}-proxy-1')}:8404/stats;csv")
    assert status == 200, body
    rows = [line.split(",") for line in body.lstrip("# ").splitlines()]
    header = rows[0]
    return {row[header.index("addr")].rsplit(":", 1)[0]: row[header.index("status")]
            for row in rows[1:] if row[0] == "web" and row[1] not in ("FRONTEND", "BACKEND") and row[header.index("addr")]}


def wait_until_the_proxy_routes(host, project, timeout=30):
    """Healthy replicas take traffic once the proxy's own checks (every second, up after 2) and
    DNS have seen them: wait for a replica UP in its health view, without sending a request."""
    wait_for(f"the {project} proxy to see a replica up", lambda: "UP" in proxy_health_view(host, project).values(), timeout)


# An HAProxy httplog line: timers, status, bytes, two cookies, termination state.
PROXY_REQUEST = re.compile(r" -?\d+/-?\d+/-?\d+/-?\d+/\+?-?\d+ (-1|\d{3}) \S+ \S+ \S+ (\S{4}) ")


def proxy_failure(line):
    """A server change, or a request that got no 2xx/3xx or whose session ended abnormally."""
    request = PROXY_REQUEST.search(line)
    if request:
        status, state = request.groups()
        return status[0] not in "23" or state != "----"
    return "Server " in line


class PacedLoad:
    """scripts/paced-load.py in the background on the staging host (loopback traffic only):
    RATE requests/s, a new connection each, until the block ends; .result holds its figures."""

    SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "paced-load.py")

    def __init__(self, host, url, rate=50, threads=8, name_prefix="", proxy="", cafile=""):
        self.host, self.url, self.rate, self.threads, self.result = host, url, rate, threads, None
        self.cafile = cafile  # an https URL's CA on the staging host (each request verifies the chain)
        self.name_prefix = name_prefix  # POST /users of a new name each (scripts/paced-load.py)
        self.proxy = proxy  # the entry proxy's container: its log of failed requests goes into .result

    def __enter__(self):
        with open(self.SCRIPT, encoding="utf-8") as handle:
            script = handle.read()
        self.started = self.host.check_output("date +%s")
        self.host.check_output(f"cat > /root/paced-load.py <<'EOF'\n{script}\nEOF\nrm -f /root/paced-load.stop /root/paced-load.json")
        trust = f"SSL_CERT_FILE={shlex.quote(self.cafile)} " if self.cafile else ""
        self.host.check_output(f"{trust}setsid nohup python3 /root/paced-load.py {shlex.quote(self.url)} {self.rate} {self.threads} "
                               f"/root/paced-load.stop {shlex.quote(self.name_prefix)} >/root/paced-load.json 2>&1 </dev/null &")
        time.sleep(2)
        return self

    def __exit__(self, *exc):
        time.sleep(2)
        self.host.check_output("touch /root/paced-load.stop")
        output = wait_for("the paced load to report", lambda: self.host.run("cat /root/paced-load.json").stdout.strip(), 30)
        self.result = json.loads(output)
        if self.result["failed"] and self.proxy:
            # The proxy logs only requests that failed or were retried: the failed ones (status and
            # termination state say why) and server changes first, then the log's tail.
            log = self.host.run(f"docker logs --since {self.started} {self.proxy} 2>&1").stdout.splitlines()
            self.result["proxy_failures"] = [line for line in log if proxy_failure(line)][:40]
            self.result["proxy_log_tail"] = log[-20:]
        return False

    def report(self):
        return json.dumps(self.result, indent=1)


def assert_quick_json_503_while_down(host, container, url, within):
    """With a data service stopped, each request gets a JSON 503 within `within` seconds (never a
    hang or a 500), from the app or from the proxy once no replica is healthy; then it recovers."""
    host.check_output(f"docker stop {container}")
    try:
        for _ in range(6):
            # Timed by curl on the staging host (a command from here costs a second of its own).
            body, _, timing = host.run(f"curl -s --max-time 10 -w '\\n%{{http_code}} %{{time_total}}' {shlex.quote(url)}").stdout.rpartition("\n")
            status, seconds = timing.split()
            assert status == "503" and "error" in json.loads(body), (status, body)
            assert float(seconds) < within, f"a request took {seconds} s while {container} was down"
            time.sleep(0.5)
    finally:
        host.check_output(f"docker start {container}")
    wait_healthy(host, container)
    wait_for("answers again", lambda: http(host, url)[0] == 200, 30)
