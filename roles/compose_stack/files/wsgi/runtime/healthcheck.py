"""Container healthcheck: GET <path> (argument, default /healthz) on the port gunicorn binds."""

import os
import sys
import urllib.request

path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
port = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000").rsplit(":", 1)[1]
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as error:  # any failure means unhealthy
    print(error)
    sys.exit(1)
