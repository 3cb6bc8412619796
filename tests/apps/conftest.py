"""Real servers for the app tests: redis-server and PostgreSQL processes on free loopback ports."""

import glob
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import redis


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, tmp_path):
        self.port = free_port()
        self.dir = tmp_path
        self.process = None

    def start(self):
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/prepare-machine installs it)"
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
                time.sleep(0.05)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


class PostgresServer:
    """A real PostgreSQL server (Debian's binaries) in a temporary directory, run as the
    `postgres` user (initdb refuses root), listening on a free loopback port."""

    def __init__(self, tmp_path, password="test-password"):
        bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        assert bindirs, "PostgreSQL is not installed (scripts/prepare-machine installs it)"
        self.bin = bindirs[-1]
        self.port = free_port()
        self.dir = tmp_path / "pg"
        self.password_file = tmp_path / "db_password"
        self.password_file.write_text(password + "\n")
        self.env = {"DB_HOST": "127.0.0.1", "DB_PORT": str(self.port), "DB_NAME": "users",
                    "DB_USER": "users", "DB_PASSWORD_FILE": str(self.password_file)}
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        shutil.copy(self.password_file, self.dir / "pwfile")
        shutil.chown(self.dir / "pwfile", "postgres", "postgres")
        self.as_postgres(f"{self.bin}/initdb", "-D", str(self.dir / "data"), "-U", "users",
                         f"--pwfile={self.dir / 'pwfile'}", "--auth=scram-sha-256", "-E", "UTF8")
        self.start()
        self.as_postgres(f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "users", "users",
                         env={"PGPASSWORD": password})

    def as_postgres(self, *command, env=None):
        subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *command],
                       check=True, capture_output=True, env={**os.environ, **(env or {})}, cwd=self.dir)

    def start(self):
        self.as_postgres(f"{self.bin}/pg_ctl", "-D", str(self.dir / "data"), "-w", "-l", str(self.dir / "log"), "-o",
                         f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self):
        self.as_postgres(f"{self.bin}/pg_ctl", "-D", str(self.dir / "data"), "-w", "-m", "fast", "stop")


@pytest.fixture
def postgres_server():
    # Not tmp_path: its parents are private to root, and the server runs as postgres.
    base = pathlib.Path(tempfile.mkdtemp(prefix="users-pg-"))
    shutil.chown(base, "postgres", "postgres")
    server = PostgresServer(base)
    yield server
    try:
        server.stop()
    except subprocess.CalledProcessError:
        pass  # already stopped by the test
    shutil.rmtree(base)
