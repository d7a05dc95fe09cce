#!/usr/bin/env python3
"""`taskhost status` at scale: the overview of 10,000 jobs from listings.

    tests/bench/status_scale.sh [--jobs N]      # installs and builds, then runs this

Starts the S3 test server (tests/s3/serve.py --request-log) on a free port and seeds its
bucket directly (boto3, no worker): N jobs (default 10,000) in every state, as workers and
`submit` leave them: 60 % done (checkpoint + result), 5 % failed (checkpoint + error), 5 %
running (a checkpoint written just now), 5 % waiting (a checkpoint two minutes old, by its
lease), 25 % queued (only named by the `submitted/` batch records, 1,000 ids each). Then runs
`taskhost status` (the overview: counts and the first page of 25 jobs) and
`taskhost status --workers`, and reports each one's wall time and S3 requests (counted from
the server's request log, without the seeding requests). Checks the counts.

Goal (issue 15): the overview of 10,000 jobs under 5 s and under 100 requests.
Exit status: 0 when the goal and the counts hold, 1 otherwise, 2 when it could not run.
"""

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config

REPO = Path(__file__).resolve().parents[2]
SERVE_PY = REPO / "tests/s3/serve.py"
KEY_ID, SECRET = "taskhost-test", "taskhost-test-secret"
BUCKET = "taskhost-bench"
DRIVER = "taskhost-bench-driver"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint(header):
    """A checkpoint object as taskhost's `checkpoint::encode` writes it (no task data)."""
    head = json.dumps(header).encode()
    return b"THCP" + bytes([1, 0]) + struct.pack(">I", len(head)) + head


def header(attempts, lease_until_ms, progress):
    return {
        "attempts": attempts, "failures": 0, "progress": progress, "fuel_used": 1000,
        "owner": "bench-1-abcdef", "lease_until_ms": lease_until_ms,
        "lease_period_ms": 60_000, "module": "", "input_sha256": "", "nonce": "00",
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--taskhost", required=True)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="taskhost-status-bench-"))
    log = work / "requests.log"
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "S3_TEST_ACCESS_KEY_ID": KEY_ID,
           "S3_TEST_SECRET_ACCESS_KEY": SECRET}
    server = subprocess.Popen([args.python, str(SERVE_PY), str(port), "--request-log", str(log)],
                              env=env, stdout=open(work / "serve.log", "w"), stderr=subprocess.STDOUT)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for _ in range(300):
            try:
                opener.open(endpoint + "/_taskhost/health", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        else:
            print("the S3 server did not start", file=sys.stderr)
            return 2
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID,
                          aws_secret_access_key=SECRET, region_name="auto",
                          config=Config(s3={"addressing_style": "path"}, user_agent_extra=DRIVER,
                                        max_pool_connections=16,
                                        request_checksum_calculation="when_required"))
        s3.create_bucket(Bucket=BUCKET)
        now = int(time.time() * 1000)
        n = args.jobs
        puts, expect = [], {"queued": 0, "running": 0, "waiting": 0, "done": 0, "failed": 0}
        ids = [f"job-{i:05d}" for i in range(n)]
        for i, job in enumerate(ids):
            k = i % 20
            if k < 12:
                expect["done"] += 1
                puts.append((f"jobs/{job}/checkpoint", checkpoint(header(1, now + 60_000, [0, 10]))))
                puts.append((f"jobs/{job}/result", json.dumps({"job_id": job, "sum": i}).encode()))
            elif k == 12:
                expect["failed"] += 1
                puts.append((f"jobs/{job}/checkpoint", checkpoint(header(3, 0, [5, 10]))))
                puts.append((f"jobs/{job}/error", b"the task trapped 3 times: out of fuel"))
            elif k == 13:
                expect["running"] += 1
                puts.append((f"jobs/{job}/checkpoint", checkpoint(header(1, now + 600_000, [3, 10]))))
            elif k == 14:
                expect["waiting"] += 1
                puts.append((f"jobs/{job}/checkpoint", checkpoint(header(1, 0, [2, 10]))))
            else:
                expect["queued"] += 1
        for b in range(0, n, 1000):
            batch = "\n".join(ids[b:b + 1000]) + "\n"
            puts.append((f"submitted/{now:013d}-{b:08x}", batch.encode()))
        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda kv: s3.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), puts))
        print(f"seeded {n} jobs ({len(puts)} objects) in {time.monotonic() - t0:.1f} s")
        # "waiting": checkpoints older than the lease window (the listing's LastModified is
        # the server's clock, so they were written early; wait out a short window instead).
        os.environ.pop("AWS_PROFILE", None)
        cli_env = {"PATH": os.environ.get("PATH", ""), "R2_BUCKET_NAME": BUCKET,
                   "R2_S3_ENDPOINT_URL": endpoint, "R2_AWS_ACCESS_KEY_ID": KEY_ID,
                   "R2_AWS_SECRET_ACCESS_KEY": SECRET, "RUST_LOG": "warn"}
        # Every checkpoint was written within the last seconds; a window of 1 s after a
        # short wait makes them all "waiting" in the counts: the counts then check the
        # listing, the page checks the headers.
        time.sleep(3)
        ok = True
        for name, cmd in [("overview", ["status", "--json", "--ack-deadline-seconds", "1"]),
                          ("table", ["status", "--ack-deadline-seconds", "1"]),
                          ("workers", ["status", "--workers"])]:
            before = sum(1 for _ in open(log))
            t0 = time.monotonic()
            out = subprocess.run([args.taskhost, *cmd], env=cli_env, capture_output=True, text=True)
            took = time.monotonic() - t0
            lines = open(log).read().splitlines()[before:]
            requests = [l for l in lines if DRIVER not in l]
            kinds = {}
            for l in requests:
                m, uri = l.split("\t")[:2]
                kind = "list" if "list-type=2" in uri else m
                kinds[kind] = kinds.get(kind, 0) + 1
            print(f"status {name}: {took:.2f} s, {len(requests)} S3 requests {kinds}")
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 2
            if name == "overview":
                o = json.loads(out.stdout)
                c = o["counts"]
                want = dict(expect, waiting=expect["waiting"] + expect["running"], running=0,
                            total=n)
                if c != want:
                    print(f"counts {c} != expected {want}", file=sys.stderr)
                    ok = False
                if len(o["jobs"]) != min(25, n):
                    print(f"page of {len(o['jobs'])} jobs", file=sys.stderr)
                    ok = False
                if took >= 5 or len(requests) >= 100:
                    print("goal missed: under 5 s and 100 requests", file=sys.stderr)
                    ok = False
        return 0 if ok else 1
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
