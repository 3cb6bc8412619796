"""gunicorn settings, all from the environment (12-factor)."""

import os
import subprocess
import sys

from gunicorn.http import wsgi

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# gevent only where the app's requirements install it (and its libraries cooperate with it).
worker_class = os.environ.get("GUNICORN_WORKER_CLASS") or ("gthread" if threads > 1 else "sync")
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# /tmp is a tmpfs (read-only root filesystem); heartbeat files there stay in memory.
worker_tmp_dir = "/tmp"
# gunicorn 23+ control socket: the root filesystem is read-only, so it lives in /tmp too.
control_socket = "/tmp/gunicorn.ctl"
accesslog = "-" if os.environ.get("GUNICORN_ACCESS_LOG", "0") == "1" else None
errorlog = "-"


def on_starting(server):
    """Run the app's idempotent schema migration (WSGI_MIGRATE=module:function) once, before any
    worker serves. It runs in a child process, so the master does not keep the app's libraries
    in memory; a failure stops gunicorn and supervisor retries it."""
    target = os.environ.get("WSGI_MIGRATE")
    if target:
        module, function = target.split(":")
        server.log.info("migrating: %s", target)
        code = f"import {module}; {module}.{function}()"
        subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())


class _Collected:
    """Stands in for the socket while a response's headers and first body bytes are written."""

    def __init__(self):
        self.data = []

    def sendall(self, data):
        self.data.append(data)


class OneSendResponse(wsgi.Response):
    """Sends a response's headers with its first body bytes, in one send. gunicorn sends them
    apart: a worker killed in between leaves the client a status line and no body (a truncated
    201, say), which the entry proxy cannot resend once it has forwarded the headers."""

    def write(self, arg):
        if self.headers_sent:
            super().write(arg)
            return
        sock, self.sock = self.sock, _Collected()
        try:
            super().write(arg)
        finally:
            collected, self.sock = self.sock.data, sock
        sock.sendall(b"".join(collected))


# wsgi.create() builds HTTP/1 responses from this module attribute; workers inherit it (fork).
wsgi.Response = OneSendResponse
