"""The entry proxy's edge on the converged hit-counter host: maintenance mode flipped under a
paced load, request limits met with real sockets (a body over the limit, a slowloris crowd, a
per-source rate limit) and the Prometheus exporter scraped."""

import json
import shlex
import textwrap
import time

from conftest import failure_report, run_playbook
from stack import PacedLoad, address, http, proxy_health_view, replica_addresses, replicas, wait_for
from test_hitcounter import client_connects, hits_in_redis, page_url  # noqa: F401 (page_url is a fixture)
from test_zero_downtime import PROXY, playbook

METRICS = "http://127.0.0.1:8405/metrics"


def maintenance(state):
    rc, output = run_playbook("maintenance.yml", "-e", f"maintenance={state}")
    assert rc == 0, failure_report(output)
    return output


def headers_and_body(host, url, accept, curl_options=""):
    """(status, headers (lower-case names), body) of one GET with this Accept header."""
    result = host.run(f"curl -s -D - --max-time 10 {curl_options} -H {shlex.quote('Accept: ' + accept)} {shlex.quote(url)}")
    head, _, body = result.stdout.replace("\r\n", "\n").partition("\n\n")
    status_line, *lines = head.splitlines()
    return int(status_line.split()[1]), dict(line.lower().split(": ", 1) for line in lines), body


def backend_requests(host):
    """Requests the proxy has sent to the web replicas (the web backend's stot in its stats CSV)."""
    status, body = http(host, f"http://{address(host, PROXY)}:8404/stats;csv")
    assert status == 200, body
    rows = [line.split(",") for line in body.lstrip("# ").splitlines()]
    return int(next(row for row in rows if row[:2] == ["web", "BACKEND"])[rows[0].index("stot")])


def run_python(host, script):
    """Runs a Python script on the staging host (its sockets are the clients) and returns its JSON line."""
    return json.loads(host.check_output(f"python3 - <<'EOF'\n{textwrap.dedent(script)}\nEOF"))


def test_maintenance_mode_answers_503_keeps_checking_survives_a_deploy_and_flips_with_no_failed_request(host, stack_vars, page_url):
    before = hits_in_redis(host, stack_vars)
    try:
        with PacedLoad(host, page_url, proxy=PROXY) as load:
            maintenance("on")
            status, headers, body = headers_and_body(host, page_url, "application/json")
            assert (status, headers["content-type"], json.loads(body)["error"]) == (503, "application/json", "Service Unavailable")
            assert headers["retry-after"] == "300", headers
            status, headers, body = headers_and_body(host, page_url, "text/html,application/xhtml+xml")
            assert (status, headers["content-type"], headers["retry-after"]) == (503, "text/html; charset=utf-8", "300")
            assert "Down for maintenance" in body
            # A rollout while in maintenance: gated on the proxy's health checks, and it stays on.
            old = replicas(host, "hitcounter")
            output = playbook("-e", json.dumps({"hitcounter_env": {"DRILL": f"maintenance-{time.time_ns()}"}}))
            assert not set(replicas(host, "hitcounter")) & set(old), "site.yml rolled nothing out"
            assert host.file("/opt/hitcounter/proxy/maintenance").content_string == "on\n", output[-2000:]
            assert headers_and_body(host, page_url, "application/json")[0] == 503
            view = proxy_health_view(host, "hitcounter")
            assert {view.get(a) for a in replica_addresses(host, "hitcounter")} == {"UP"}, view
            maintenance("off")
    finally:
        if host.file("/opt/hitcounter/proxy/maintenance").content_string:  # the test stopped while on
            maintenance("off")
        playbook()  # back to the inventory's release
    result = load.result
    # Every request before the switch and after it was answered by the app; while it was on, by
    # the maintenance 503. None was reset or lost on either flip or in the rollout.
    assert set(result["errors"]) == {"HTTP 503"}, load.report()
    assert 0 < result["failed"] < result["total"] - 100, load.report()
    assert hits_in_redis(host, stack_vars) - before == result["total"] - result["failed"], (result, "the app saw a maintenance request")
    assert http(host, page_url)[0] == 200


def test_a_body_over_the_limit_gets_a_json_413_before_any_replica_sees_it(host, stack_vars, page_url):
    limit = stack_vars.get("hitcounter_max_body_bytes", 1024)
    sent_before = backend_requests(host)
    answers = run_python(host, f"""
        import json, socket
        def send(head, body):
            with socket.create_connection(("127.0.0.1", {stack_vars['hitcounter_port']}), timeout=10) as sock:
                sock.sendall(head + body)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            status = answer.split(b" ", 2)[1].decode()
            return status, answer.partition(b"\\r\\n\\r\\n")[2].decode()
        body = b"x" * ({limit} + 1)
        announced = send(b"POST / HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body), body)
        chunked = send(b"POST / HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n",
                       b"%x\\r\\n%s\\r\\n0\\r\\n\\r\\n" % (len(body), body))
        print(json.dumps([announced, chunked]))
    """)
    for status, body in answers:
        assert (status, json.loads(body)["error"]) == ("413", "Payload Too Large"), answers
    assert backend_requests(host) == sent_before, "a replica got a request over the body limit"
    assert http(host, page_url, "POST", "x" * limit, "text/plain")[0] != 413


def test_slowloris_connections_are_closed_at_the_request_timeout_and_starve_no_client(host, stack_vars, page_url):
    """200 connections that send a header line a second and never finish: each is closed once the
    proxy's request timeout (10 s) has passed, while paced clients are served all along."""
    with PacedLoad(host, page_url, proxy=PROXY, rate=20) as load:
        held = run_python(host, f"""
            import json, socket, time
            started = time.monotonic()
            socks = []
            for n in range(200):
                sock = socket.create_connection(("127.0.0.1", {stack_vars['hitcounter_port']}), timeout=30)
                sock.sendall(b"GET / HTTP/1.1\\r\\nHost: t\\r\\n")
                sock.setblocking(False)
                socks.append(sock)
            closed = {{}}
            while len(closed) < len(socks) and time.monotonic() - started < 25:
                for n, sock in enumerate(socks):
                    if n in closed:
                        continue
                    try:
                        sock.send(b"X-Slow: %d\\r\\n" % n)
                        if sock.recv(4096) == b"":
                            closed[n] = time.monotonic() - started
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed[n] = time.monotonic() - started
                time.sleep(1)
            print(json.dumps({{"closed": len(closed), "first": min(closed.values(), default=None),
                               "last": max(closed.values(), default=None)}}))
        """)
    assert held["closed"] == 200, held
    assert 9 <= held["first"] and held["last"] <= 14, held
    assert load.result["failed"] == 0 and load.result["total"] > 200, load.report()


def test_a_per_source_rate_limit_answers_json_429(host, stack_vars, page_url):
    try:
        playbook("-e", json.dumps({"compose_stack_proxy_rate_limit": 20}))
        # The reload gave the proxy a fresh table: this source's 10 s window opens at its first request.
        started = time.monotonic()
        statuses = [http(host, page_url) for _ in range(30)]
        assert time.monotonic() - started < 9, "the burst outlasted the rate limit's window; the counts below would mean nothing"
        assert [status for status, _ in statuses] == [200] * 20 + [429] * 10, statuses
        assert json.loads(statuses[-1][1])["error"] == "Too Many Requests"
    finally:
        playbook()
    wait_for("the page to be served again", lambda: http(host, page_url)[0] == 200, 15)


def test_prometheus_metrics_count_requests_per_replica_and_stay_on_the_host(host, stack_vars, page_url):
    def served():
        """{server slot: 2xx answers} of the web replicas, and the slots the exporter reports UP."""
        status, body = http(host, METRICS)
        assert status == 200, body
        counts, up = {}, set()
        for line in body.splitlines():
            if line.startswith('haproxy_server_http_responses_total{proxy="web"') and 'code="2xx"' in line:
                counts[line.split('server="')[1].split('"')[0]] = int(float(line.rsplit(" ", 1)[1]))
            if line.startswith('haproxy_server_status{proxy="web"') and 'state="UP"' in line and line.endswith(" 1"):
                up.add(line.split('server="')[1].split('"')[0])
        return counts, up

    before, up = served()
    assert len(up) == len(replicas(host, "hitcounter")), up
    for _ in range(20):
        assert http(host, page_url)[0] == 200
    after, _ = served()
    moved = {server: after[server] - before.get(server, 0) for server in after if after[server] != before.get(server, 0)}
    assert sum(moved.values()) == 20 and set(moved) <= up and len(moved) == len(up), moved
    assert client_connects(stack_vars, stack_vars["firewall_test_clients"]["allowed"], 8405) == 7, "metrics are reachable from the network"
