"""Shared parts of the stack benchmarks: a fresh staging host, a deploy through site.yml, wrk
runs inside the staging host, memory sampling and OOM detection. Figures only, no assertions."""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECONDS = int(os.environ.get("BENCH_SECONDS", "20"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
TUNING = os.environ.get("BENCH_TUNING", "1") != "0"
EVENT_RATE = float(os.environ.get("BENCH_EVENT_RATE", "50"))
with open(os.path.join(PROJECT, "scripts", "paced-load.py")) as handle:
    PACED_LOAD = handle.read()


SSH_DIR = os.path.join(PROJECT, ".cache", "ssh")


def free_port():
    """A free port on this machine's loopback, for a staging host's sshd."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class StagingHost:
    """A fresh staging host (playbooks/local.yml), reached over SSH as deploy with sudo like any
    inventory host, and removed on exit unless BENCH_KEEP is set. Docker here only creates and
    removes it (and stops or starts it: `hypervisor`)."""

    def __init__(self, name, network=""):
        self.name, self.network, self.port = name, network, free_port()

    def __enter__(self):
        # No published ports but its sshd (the load runs inside the host), so it can run beside `make up`'s host.
        self.playbook("playbooks/local.yml", "-e", f"staging_host_name={self.name}", "-e", f"staging_host_ssh_port={self.port}",
                      "-e", '{"staging_host_ports": []}', "-e", f"staging_host_network={self.network}")
        # Loads go to the host's own address, as a client on the network would. Published ports
        # are DNAT in the kernel there and at 127.0.0.1 (userland-proxy off, docker_engine's default).
        self.address = self.sh("ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1")
        self.inventory_dir = tempfile.TemporaryDirectory()
        os.symlink(os.path.join(PROJECT, "inventories/local/group_vars"), os.path.join(self.inventory_dir.name, "group_vars"))
        return self

    def __exit__(self, *exc):
        self.inventory_dir.cleanup()
        if not os.environ.get("BENCH_KEEP"):
            self.playbook("playbooks/local.yml", "-e", f"staging_host_name={self.name}", "-e", "staging_host_state=absent")

    def ssh_args(self):
        """How Ansible and this bench log in: this checkout's key, the host key recorded at its
        first boot, one persistent connection."""
        return ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={SSH_DIR}/known_hosts",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
                "-o", f"ControlPath={SSH_DIR}/cm-%C"]

    def inventory_host(self, **host_vars):
        """This host's entry in a YAML inventory (the local group_vars say user and become)."""
        entry = {"ansible_host": "127.0.0.1", "ansible_port": self.port,
                 "ansible_private_key_file": os.path.join(SSH_DIR, "id_ed25519"),
                 "ansible_ssh_common_args": " ".join(self.ssh_args()), **host_vars}
        return f"    {self.name}:\n" + "".join(f"      {key}: {json.dumps(value)}\n" for key, value in entry.items())

    def inventory(self, stack):
        """An inventory of this host alone, with the local inventory's group_vars and `stack`."""
        path = os.path.join(self.inventory_dir.name, "hosts.yml")
        with open(path, "w") as handle:
            handle.write("docker_hosts:\n  hosts:\n" + self.inventory_host(app_stack=stack))
        return path

    def hypervisor(self, action):
        """stop, start or restart of the VM, as its hypervisor does it."""
        run("docker", action, self.name)

    @staticmethod
    def playbook(*args):
        return run("ansible-playbook", *args)

    def deploy(self, stack, extra_args):
        """site.yml with the local inventory's group_vars, aimed at this host only; returns
        (seconds the playbook took, changed tasks in its recap)."""
        print(f"[bench] deploying {stack}", " ".join(extra_args), flush=True)
        started = time.monotonic()
        output = self.playbook("-i", self.inventory(stack), "playbooks/site.yml", *extra_args)
        seconds = time.monotonic() - started
        self.sh("command -v wrk >/dev/null || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1)")
        changed = sum(int(n) for n in re.findall(r"changed=(\d+)", output.split("PLAY RECAP", 1)[-1]))
        return seconds, changed

    def tuning(self, stack, extra, variants, measure):
        """For each (name, change) in `variants`, `stack` redeployed with one setting changed from
        the deployed config, then measure(name). A change is site.yml arguments, or a function of
        this host applied after a plain deploy (for settings that have no role variable)."""
        results = []
        for name, change in variants if TUNING else []:
            try:
                self.deploy(stack, extra if callable(change) else [*extra, *change])
            except CommandFailed as failed:
                # The health gate rolled the variant back (e.g. workers OOM-killed at the limit).
                reason = re.findall(r"Perhaps out of memory|did not come up healthy", str(failed))
                print(f"[bench] {name}: not deployed ({reason[0] if reason else 'site.yml failed'})", flush=True)
                results.append({"name": name, "failed": reason[0] if reason else "site.yml failed"})
                continue
            if callable(change):
                change(self)
            results.append(measure(name))
        return results

    def sh(self, command):
        """A command on the host as root, over SSH with sudo."""
        return run("ssh", "-p", str(self.port), "-i", os.path.join(SSH_DIR, "id_ed25519"), *self.ssh_args(),
                   "deploy@127.0.0.1", f"sudo sh -c {shlex.quote(command)}")

    def inspect(self, container):
        return json.loads(self.sh(f"docker inspect {container}"))[0]

    def container_address(self, container):
        return next(iter(self.inspect(container)["NetworkSettings"]["Networks"].values()))["IPAddress"]

    def memory_mib(self, containers):
        """{container: MiB in use}, from one `docker stats` call."""
        usage = {}
        for line in self.sh(f"docker stats --no-stream --format '{{{{.Name}}}} {{{{.MemUsage}}}}' {' '.join(containers)}").splitlines():
            name, used = line.split(" ", 1)
            number, unit = re.match(r"([\d.]+)\s*([KMG]i?B|B)", used.split("/")[0].strip()).groups()
            usage[name] = float(number) * {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]
        return usage

    def replicas(self, stack, service="web"):
        """Names of the running containers of a compose service (rollouts give new names)."""
        return sorted(self.sh(f"docker ps --filter label=com.docker.compose.project={stack} "
                              f"--filter label=com.docker.compose.service={service} --format '{{{{.Names}}}}'").split())

    def run_like(self, container, name, port, command="", env=""):
        """Another container from the same image, limits, env file and network as `container`."""
        web = self.inspect(container)
        config = web["HostConfig"]
        project = web["Config"]["Labels"]["com.docker.compose.project"]
        self.sh(f"docker run -d --name {name} --network {project}_default --memory {config['Memory']} "
                f"--cpus {config['NanoCpus'] / 1e9} --pids-limit {config['PidsLimit']} "
                f"--env-file /opt/{project}/.env {env} "
                + " ".join(f"-v {m['Source']}:{m['Destination']}:ro" for m in web["Mounts"] if m["Type"] == "bind")
                + f" -p {port}:8000 {web['Config']['Image']} {command}")
        return web

    def wrk(self, url, script="", seconds=SECONDS):
        """requests/s, p50/p99 (ms), completed requests and non-2xx (incl. socket errors)."""
        out = self.sh(f"wrk -t2 -c{CONCURRENCY} -d{seconds}s --latency {script} '{url}'")
        def field(pattern, default=None):
            match = re.search(pattern, out, re.MULTILINE)
            return match.group(1) if match else default
        def ms(value):
            number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
            return float(number) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        return {"rps": float(field(r"Requests/sec:\s+([\d.]+)")), "complete": int(field(r"(\d+) requests in")),
                "non2xx": int(field(r"Non-2xx or 3xx responses: (\d+)", 0)) + (sum(map(int, errors.groups())) if errors else 0),
                # Latency distribution lines only ("     50%    1.23ms"): the Req/Sec line's "+/- Stdev"
                # column can also end in "50%".
                "p50": ms(field(r"^\s+50%\s+(\S+)$")), "p99": ms(field(r"^\s+99%\s+(\S+)$"))}

    def measure(self, containers, load):
        """Runs load() while sampling the memory of `containers` (names); adds the highest peak
        and steady MiB of any of them, and whether any was OOM-killed or restarted."""
        restarts = {name: self.inspect(name)["RestartCount"] for name in containers}
        peak, done = [0.0], threading.Event()
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], *self.memory_mib(containers).values())
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = load()
        finally:
            done.set()
            sampler.join()
        time.sleep(2)
        after = {name: self.inspect(name) for name in containers}
        result.update(peak=peak[0], steady=max(self.memory_mib(containers).values()),
                      oom=any(state["State"]["OOMKilled"] or state["RestartCount"] > restarts[name]
                              for name, state in after.items()))
        return result


def under_load(host, path, action, rate=EVENT_RATE, base="http://127.0.0.1:8000", cafile=""):
    """Runs action() under a paced load on base + path (https: verified against `cafile` on the
    host), from 3 s before to 3 s after it; returns the load's figures."""
    host.sh("rm -f /tmp/stop-load")
    result = {}
    threads = 16 if rate > 100 else 8
    trust = f"SSL_CERT_FILE={cafile} " if cafile else ""
    load = threading.Thread(target=lambda: result.update(json.loads(host.sh(
        f"{trust}python3 - {base}{path} {rate} {threads} /tmp/stop-load <<'EOF'\n{PACED_LOAD}\nEOF"))))
    load.start()
    time.sleep(3)
    action()
    time.sleep(3)
    host.sh("touch /tmp/stop-load")
    load.join()
    return result


def tls_args(host, certificate):
    """site.yml arguments for TLS with a certificate ("a" or "b") of the kit's test CA
    (molecule/kit/make-test-ca); the CA's root goes to /root/bench-ca.crt on the host."""
    tls = os.path.join(PROJECT, ".cache", "tls")
    with open(os.path.join(tls, "ca.crt")) as handle:
        host.sh(f"cat > /root/bench-ca.crt <<'EOF'\n{handle.read()}\nEOF")
    return ["-e", json.dumps({"compose_stack_tls": "provided",
                              "compose_stack_tls_certificate_file": os.path.join(tls, f"{certificate}.chain.pem"),
                              "compose_stack_tls_private_key_file": os.path.join(tls, f"{certificate}.key")})]


def wait(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"[bench] timed out waiting for {what}")
        time.sleep(0.5)


class CommandFailed(SystemExit):
    """A command failed: ends the bench with its output, unless caught (a tuning variant)."""


def run(*cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT)
    if proc.returncode != 0:
        raise CommandFailed(f"[bench] failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout.strip()
