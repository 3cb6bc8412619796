"""Paced HTTP load (stdlib only; runs inside the staging host): RATE GET requests per second in
total, spread over THREADS threads on a fixed schedule, each request on a new connection, until
STOP_FILE exists. With NAME_PREFIX, each request is instead a POST of {"name": NAME_PREFIX-<n>}
(a new name each) that counts as answered on a 201. Unlike wrk, a refused connection does not turn into a burst of retries, so
failed / total is the share of requests a steady client would have seen fail.
Prints one JSON line: total, failed, first/last failure (s since start), error kinds, the
longest gap between two answered requests (s), the slowest failed request (ms: how long a
client waited for its error) and the p99 and slowest latency of the answered requests (ms).
Usage: python3 paced-load.py URL RATE THREADS STOP_FILE [NAME_PREFIX]"""

import collections
import json
import os
import sys
import threading
import time
import urllib.request

url, rate, threads, stop_file = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
name_prefix = sys.argv[5] if len(sys.argv) > 5 else None
started = time.monotonic()
lock = threading.Lock()
total, failures, answered, latencies, slowest_failure, kinds = 0, [], [], [], 0.0, collections.Counter()


def client(offset):
    global total, slowest_failure
    interval = threads / rate
    due = started + offset * interval / threads
    sent_count = 0
    while not os.path.exists(stop_file):
        time.sleep(max(0.0, due - time.monotonic()))
        due += interval
        sent_count += 1
        request, expected = url, 200
        if name_prefix:
            body = json.dumps({"name": f"{name_prefix}-{offset}-{sent_count}"}).encode()
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            expected = 201
        sent = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()  # a cut-off body (its replica died mid-answer) fails here
                error = None if response.status == expected else f"HTTP {response.status}"
        except Exception as exc:  # refused, reset, timeout, HTTP error: all count as failed
            error = getattr(exc, "code", None) and f"HTTP {exc.code}" or type(exc).__name__
        done = time.monotonic()
        with lock:
            total += 1
            if error:
                failures.append(done - started)
                slowest_failure = max(slowest_failure, done - sent)
                kinds[error] += 1
            else:
                answered.append(done)
                latencies.append(done - sent)


workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
answered.sort()
latencies.sort()
print(json.dumps({"total": total, "failed": len(failures), "seconds": round(time.monotonic() - started, 1),
                  "first_failure": round(min(failures), 2) if failures else None,
                  "last_failure": round(max(failures), 2) if failures else None, "errors": dict(kinds),
                  "longest_gap": round(max((b - a for a, b in zip(answered, answered[1:])), default=0.0), 2),
                  "slowest_failure_ms": round(1000 * slowest_failure),
                  "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))]) if latencies else None,
                  "slowest_ms": round(1000 * latencies[-1]) if latencies else None}))
