#!/usr/bin/env python3
"""Load generator for the S3 test server (tests/s3/serve.py): how many small requests it
serves, and how much of its CPU each one costs.

    $VENV/bin/python tests/bench/s3_server.py [--procs 4] [--threads 2] [--seconds 10]
        [--requests 20000] [--server tests/s3/serve.py] [--rounds 1]

VENV from `tests/s3/setup-venv.sh --bench` (it has moto for the server, botocore for the
clients). Each round starts the server (`--server`, default this checkout's serve.py, run
with this python) on a free port, waits for `GET /_taskhost/health`, creates a bucket, then
runs PROCS client processes of THREADS threads each. Every thread keeps one HTTP/1.1
keep-alive connection and repeats, until the round's request budget (--requests, shared
evenly) or its time (--seconds) runs out:

    PUT  new key, If-None-Match: *   (200)
    GET  a key that was never written (404 NoSuchKey)
    PUT  a ~300-byte object          (200)
    GET  that object                 (200, the same bytes)

Requests are signed with SigV4 by botocore (payload hash included, as the host's SDK does)
and sent with http.client: light clients, so that the server is the bottleneck. After the
round the server is stopped by its PID (SIGTERM, then SIGKILL).

Printed per round: requests/s (wall), the server's CPU seconds (user + system, from
/proc/PID/stat) per 1,000 requests, the clients' CPU per 1,000 requests, the load average,
and the count of unexpected answers. The server's CPU per request is the robust figure on a
shared machine; requests/s also depends on what else runs. With several --server paths the
rounds alternate between them (A B A B ...), and a summary gives each one's median.

Exit status: 0 when every answer was the expected one, 1 otherwise, 2 when a server did not
start.
"""

import argparse
import hashlib
import http.client
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

try:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError as e:  # pragma: no cover - a usage error, said in one sentence
    sys.exit(f"s3_server.py: {e}: run it with the venv's python (tests/s3/setup-venv.sh --bench)")

REPO = Path(__file__).resolve().parents[2]
SERVE_PY = REPO / "tests/s3/serve.py"
# The key pair serve.py accepts by default (host/tests/all/support/s3.rs uses the same).
ACCESS_KEY_ID = "taskhost-test"
SECRET_ACCESS_KEY = "taskhost-test-secret"
REGION = "auto"  # R2's region, as the host sends it; serve.py maps it to us-east-1
BUCKET = "bench"
START_TIMEOUT = 30.0  # s for the server to answer its health check
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Client:
    """One keep-alive connection that signs and sends S3 requests."""

    def __init__(self, port):
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self.auth = SigV4Auth(Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY), "s3", REGION)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method, path, body=b"", headers=None):
        """Returns (status, body)."""
        url = f"http://{self.host}{path}"
        req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
        req.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
        self.auth.add_auth(req)
        self.conn.request(method, path, body=body or None, headers=dict(req.headers.items()))
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.will_close:
            self.conn.close()
        return resp.status, data


def client_thread(port, deadline, budget, out):
    """Runs the request loop on one connection; appends (requests, unexpected, first error)."""
    client = Client(port)
    prefix = f"c/{uuid.uuid4().hex[:12]}"
    payload = os.urandom(150).hex().encode()  # 300 bytes
    done = bad = 0
    first_error = None
    i = 0

    def check(what, status, expected, data=None, want=None):
        nonlocal bad, first_error
        if status != expected or (want is not None and data != want):
            bad += 1
            if first_error is None:
                first_error = f"{what}: {status} (expected {expected}) {data[:200]!r}"

    while done < budget and time.monotonic() < deadline:
        i += 1
        key = f"/{BUCKET}/{prefix}/{i}"
        status, data = client.request(
            "PUT", key + "/lease", payload[:40], {"If-None-Match": "*"}
        )
        check("conditional PUT", status, 200, data)
        status, data = client.request("GET", key + "/missing")
        check("GET missing", status, 404, data)
        status, data = client.request("PUT", key + "/object", payload)
        check("PUT", status, 200, data)
        status, data = client.request("GET", key + "/object")
        check("GET", status, 200, data, payload)
        done += 4
    out.append((done, bad, first_error))


def client_process(port, threads, start_at, seconds, budget, results):
    """THREADS client threads; puts (requests, unexpected, first error, cpu seconds)."""
    import threading

    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + seconds
    out = []
    workers = [
        threading.Thread(target=client_thread, args=(port, deadline, budget // threads, out))
        for _ in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    t = os.times()
    results.put(
        (
            sum(o[0] for o in out),
            sum(o[1] for o in out),
            next((o[2] for o in out if o[2]), None),
            t.user + t.system,
        )
    )


def start_server(server, port, python):
    proc = subprocess.Popen(
        [python, str(server), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server} exited: {proc.stderr.read().decode(errors='replace')}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_taskhost/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError(f"{server} did not answer its health check in {START_TIMEOUT} s")


def stop_server(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def run_round(server, args):
    port = free_port()
    proc = start_server(server, port, args.python)
    try:
        setup = Client(port)
        status, data = setup.request("PUT", f"/{BUCKET}")
        if status != 200:
            raise RuntimeError(f"CreateBucket: {status} {data[:200]!r}")
        # Warm up (first requests import code paths), then measure.
        status, _ = setup.request("PUT", f"/{BUCKET}/warm", b"x")
        status, _ = setup.request("GET", f"/{BUCKET}/warm")
        setup.conn.close()

        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        start_at = time.time() + 0.5
        per_proc = args.requests // args.procs
        procs = [
            ctx.Process(
                target=client_process,
                args=(port, args.threads, start_at, args.seconds, per_proc, results),
            )
            for _ in range(args.procs)
        ]
        for p in procs:
            p.start()
        time.sleep(max(0.0, start_at - time.time()))
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        got = [results.get() for _ in procs]
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        for p in procs:
            p.join()
    finally:
        stop_server(proc)
    n = sum(g[0] for g in got)
    return {
        "requests": n,
        "rps": n / (t1 - t0),
        "server_ms": 1000 * (cpu1 - cpu0) / n if n else float("nan"),
        "client_ms": 1000 * sum(g[3] for g in got) / n if n else float("nan"),
        "bad": sum(g[1] for g in got),
        "first_error": next((g[2] for g in got if g[2]), None),
        "load": os.getloadavg()[0],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=4, help="client processes (4)")
    ap.add_argument("--threads", type=int, default=2, help="threads per client process (2)")
    ap.add_argument("--seconds", type=float, default=10.0, help="time per round (10 s)")
    ap.add_argument("--requests", type=int, default=20000, help="requests per round (20,000)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds per server (1)")
    ap.add_argument(
        "--server", action="append", type=Path, help="serve.py to measure (repeatable)"
    )
    ap.add_argument("--python", default=sys.executable, help="python that runs the server")
    args = ap.parse_args()
    servers = args.server or [SERVE_PY]

    by_server = {s: [] for s in servers}
    failed = False
    for r in range(args.rounds):
        for server in servers:
            try:
                res = run_round(server, args)
            except RuntimeError as e:
                print(f"s3_server.py: {e}", file=sys.stderr)
                return 2
            by_server[server].append(res)
            print(
                f"{server}: round {r + 1}: {res['requests']} requests, {res['rps']:.0f} req/s, "
                f"server CPU {res['server_ms']:.2f} s per 1,000 requests, clients' CPU "
                f"{res['client_ms']:.2f} s per 1,000, load average {res['load']:.2f}, "
                f"unexpected answers {res['bad']}",
                flush=True,
            )
            if res["bad"]:
                failed = True
                print(f"  first unexpected answer: {res['first_error']}", flush=True)
    if args.rounds > 1 or len(servers) > 1:
        print("median per server:")
        for server, runs in by_server.items():
            print(
                f"  {server}: {statistics.median(r['rps'] for r in runs):.0f} req/s, server CPU "
                f"{statistics.median(r['server_ms'] for r in runs):.2f} s per 1,000 requests "
                f"({len(runs)} rounds)"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
