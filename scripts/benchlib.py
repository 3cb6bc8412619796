"""Shared parts of the stack benchmarks: a fresh staging host, a deploy through site.yml, wrk
runs inside the staging host, memory sampling and OOM detection. Figures only, no assertions."""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECONDS = int(os.environ.get("BENCH_SECONDS", "20"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))


class StagingHost:
    """A fresh staging host (playbooks/local.yml) removed on exit unless BENCH_KEEP is set."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        # No published ports (the load runs inside the host), so it can run beside `make up`'s host.
        self.playbook("playbooks/local.yml", "-e", f"staging_host_name={self.name}", "-e", '{"staging_host_ports": []}')
        self.inventory_dir = tempfile.TemporaryDirectory()
        os.symlink(os.path.join(PROJECT, "inventories/local/group_vars"), os.path.join(self.inventory_dir.name, "group_vars"))
        return self

    def __exit__(self, *exc):
        self.inventory_dir.cleanup()
        if not os.environ.get("BENCH_KEEP"):
            self.playbook("playbooks/local.yml", "-e", f"staging_host_name={self.name}", "-e", "staging_host_state=absent")

    def inventory(self, stack):
        """An inventory of this host alone, with the local inventory's group_vars and `stack`."""
        path = os.path.join(self.inventory_dir.name, "hosts.yml")
        with open(path, "w") as handle:
            handle.write(f"docker_hosts:\n  hosts:\n    {self.name}:\n"
                         f"      ansible_connection: community.docker.docker\n      app_stack: {stack}\n")
        return path

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

    def sh(self, command):
        return run("docker", "exec", self.name, "sh", "-c", command)

    def inspect(self, container):
        return json.loads(self.sh(f"docker inspect {container}"))[0]

    def memory_mib(self, container):
        usage = self.sh(f"docker stats --no-stream --format '{{{{.MemUsage}}}}' {container}").split("/")[0].strip()
        number, unit = re.match(r"([\d.]+)\s*([KMG]i?B|B)", usage).groups()
        return float(number) * {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]

    def run_like(self, container, name, port, command="", env=""):
        """Another container from the same image, limits, env file and network as `container`."""
        web = self.inspect(container)
        config = web["HostConfig"]
        project = web["Config"]["Labels"]["com.docker.compose.project"]
        self.sh(f"docker run -d --name {name} --network {project}_default --memory {config['Memory']} "
                f"--cpus {config['NanoCpus'] / 1e9} --pids-limit {config['PidsLimit']} "
                f"--env-file /opt/{project}/.env {env} "
                + " ".join(f"-v {m['Source']}:{m['Destination']}:ro" for m in web["Mounts"] if m["Type"] == "bind")
                + f" -p 127.0.0.1:{port}:8000 {web['Config']['Image']} {command}")
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

    def measure(self, container, load):
        """Runs load() while sampling the container's memory; adds peak/steady MiB and OOM."""
        before = self.inspect(container)
        peak, done = [0.0], threading.Event()
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], self.memory_mib(container))
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = load()
        finally:
            done.set()
            sampler.join()
        time.sleep(2)
        after = self.inspect(container)
        result.update(peak=peak[0], steady=self.memory_mib(container),
                      oom=after["State"]["OOMKilled"] or after["RestartCount"] > before["RestartCount"])
        return result


def run(*cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT)
    if proc.returncode != 0:
        sys.exit(f"[bench] failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout.strip()
