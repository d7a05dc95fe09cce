#!/usr/bin/env python3
"""The cost of metrics and heartbeats on the embedded default (issue 15 item 10).

    tests/bench/metrics_embedded.py --taskhost target/release/taskhost \\
        --module guest-tasks/target/wasm32-wasip2/release/step_counter.wasm [--rounds 4]

One worker (default slots) on the embedded default (a SQLite queue file and a store
directory in a fresh temporary directory per run), --jobs one-step step-counter jobs
(steps 1, step_ms 0) submitted before the worker starts. Runs --rounds times with metrics
and heartbeats off and on, alternately (on: METRICS_ADDR set and /metrics scraped every
second, 15 times Prometheus's usual rate, and HEARTBEAT_SECONDS=1; off: HEARTBEAT_SECONDS=0).
Per run: the rate from the worker's own `job done` lines, the worker's CPU time (user +
system, /proc/PID/stat) per job from the first job done to the last (less sensitive to
other load on the machine than the rate; in clock ticks, 10 ms), and after --idle seconds (20) of idling its memory: VmRSS,
VmHWM, and the anonymous and file-backed parts (smaps_rollup) with its thread count.
Prints each run and the medians with their spread (min..max). Extra worker environment:
--env KEY=VALUE (repeatable), e.g. MALLOC_ARENA_MAX=2 for an experiment.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from logtail import TASKHOST_DONE, LogTail, stamp_of



# Loopback only: never through a proxy.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(values):
    values = sorted(values)
    n = len(values)
    return (values[n // 2] + values[(n - 1) // 2]) / 2


def proc_fields(pid):
    """VmRSS, VmHWM, Threads (status) and Rss, Anonymous (smaps_rollup), kB."""
    fields = {}
    text = Path(f"/proc/{pid}/status").read_text() + Path(f"/proc/{pid}/smaps_rollup").read_text()
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key] = int(parts[0])
    return fields


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def done_lines(log):
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if TASKHOST_DONE in line
    ]


def wait_done_cpu(p, log, jobs, timeout, poll):
    """Waits until the worker `p` logged `jobs` results in `log`; returns its CPU seconds per
    job between the first poll that saw a job done and the last job: without the start (the
    module's compilation). The log is read incrementally (`LogTail`)."""
    deadline = time.monotonic() + timeout
    first = None  # (CPU seconds, jobs done) when the first job was seen done
    tail, done = LogTail(log), 0
    while (done := done + sum(TASKHOST_DONE in line for line in tail.new_lines())) < jobs:
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker stopped or timed out; see {log}")
        if first is None and done:
            first = (cpu_seconds(p.pid), done)
        time.sleep(poll)
    first = first or (0.0, 0)
    return (cpu_seconds(p.pid) - first[0]) / max(1, jobs - first[1])


def one_run(args, on, base_env):
    with tempfile.TemporaryDirectory(prefix="th-metrics-") as d:
        d = Path(d)
        env = dict(base_env)
        env["HOME"] = str(d)
        env["TASKHOST_CACHE_DIR"] = str(d / "cache")
        env["HEARTBEAT_SECONDS"] = "1" if on else "0"
        url = None
        if on:
            port = free_port()
            env["METRICS_ADDR"] = f"127.0.0.1:{port}"
            url = f"http://127.0.0.1:{port}/metrics"

        def th(*a):
            return subprocess.run(
                [args.taskhost, *a], cwd=d, env=env, check=True, capture_output=True, text=True
            ).stdout

        module = th("module", "push", args.module).strip().split()[-1]
        csv = d / "jobs.csv"
        csv.write_text(
            "job_id,steps,step_ms\n" + "".join(f"j{i},1,0\n" for i in range(args.jobs))
        )
        th("submit", "--module", module, str(csv))
        log = d / "worker.log"
        argv = [args.taskhost, "worker"]
        cg_out = d / "callgrind.out"
        if args.callgrind:
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg_out}", *argv]
        with open(log, "w") as out:
            p = subprocess.Popen(argv, cwd=d, env=env, stdout=out, stderr=subprocess.STDOUT)
        stop = threading.Event()
        scrapes = [0]

        def scrape():
            while not stop.wait(1.0):
                try:
                    NO_PROXY.open(url, timeout=2).read()
                    scrapes[0] += 1
                except OSError:
                    pass

        scraper = threading.Thread(target=scrape, daemon=True) if url else None
        if scraper:
            scraper.start()
        try:
            cpu = wait_done_cpu(p, log, args.jobs, args.timeout, 0.02)
            if not args.callgrind:
                time.sleep(args.idle)
                mem = proc_fields(p.pid)
        finally:
            stop.set()
            p.terminate()
            p.wait(300)
        if args.callgrind:
            # The instructions the whole run executed (its start included: the same on both
            # sides), from callgrind's `summary:` line.
            for line in cg_out.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    return {"instructions": int(line.split()[1]), "scrapes": scrapes[0]}
            raise RuntimeError(f"no summary in {cg_out}")
        stamps = [stamp_of(line) for line in done_lines(log)]
        rate = (len(stamps) - 1) / (max(stamps) - min(stamps))
        return {
            "rate": rate,
            "cpu_ms": cpu * 1000,
            "rss": mem.get("VmRSS", 0) / 1024,
            "hwm": mem.get("VmHWM", 0) / 1024,
            "anon": mem.get("Anonymous", 0) / 1024,
            "file": (mem.get("Rss", 0) - mem.get("Anonymous", 0)) / 1024,
            "threads": mem.get("Threads", 0),
            "scrapes": scrapes[0],
        }


def spread(values):
    return f"{median(values):.2f} ({min(values):.2f}..{max(values):.2f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--taskhost", required=True)
    ap.add_argument("--module", required=True, help="step_counter.wasm")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--idle", type=float, default=20.0, help="s idle before memory is read")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the worker")
    ap.add_argument(
        "--callgrind",
        action="store_true",
        help="run the worker under valgrind --tool=callgrind and compare the instructions it "
        "executed (repeatable on a loaded machine; heartbeats and scrapes come more often per "
        "job than natively, as the run is slower: an upper bound of their cost)",
    )
    args = ap.parse_args()
    args.taskhost = str(Path(args.taskhost).resolve())
    args.module = str(Path(args.module).resolve())
    base = {k: v for k, v in os.environ.items() if k not in ("PROJECT_ID", "R2_BUCKET_NAME")}
    for kv in args.env:
        k, _, v = kv.partition("=")
        base[k] = v
    runs = {False: [], True: []}
    for r in range(args.rounds):
        for on in (False, True):
            res = one_run(args, on, base)
            runs[on].append(res)
            if args.callgrind:
                print(
                    f"   #{r + 1} {'on ' if on else 'off'}: {res['instructions']:,} instructions,"
                    f" {res['instructions'] / args.jobs:,.0f} per job, {res['scrapes']} scrapes",
                    flush=True,
                )
                continue
            print(
                f"   #{r + 1} {'on ' if on else 'off'}: {res['rate']:.1f} jobs/s, "
                f"{res['cpu_ms']:.2f} ms CPU/job, idle RSS {res['rss']:.1f} MB (HWM "
                f"{res['hwm']:.1f}, anon {res['anon']:.1f}, file {res['file']:.1f}), "
                f"{res['threads']} threads, {res['scrapes']} scrapes",
                flush=True,
            )
    off, on = runs[False], runs[True]
    if args.callgrind:
        i_off = median([x["instructions"] for x in off])
        i_on = median([x["instructions"] for x in on])
        print(
            f"instructions off {i_off:,.0f}, on {i_on:,.0f} (medians): cost "
            f"{(i_on - i_off) / i_off * 100:+.2f} % of the whole run (start included)"
        )
        return
    rate_off, rate_on = median([x["rate"] for x in off]), median([x["rate"] for x in on])
    cpu_off, cpu_on = median([x["cpu_ms"] for x in off]), median([x["cpu_ms"] for x in on])
    print(
        f"rate jobs/s off {spread([x['rate'] for x in off])}, on {spread([x['rate'] for x in on])}:"
        f" cost {(rate_off - rate_on) / rate_off * 100:+.1f} %"
    )
    print(
        f"CPU ms/job off {spread([x['cpu_ms'] for x in off])}, "
        f"on {spread([x['cpu_ms'] for x in on])}: cost {(cpu_on - cpu_off) / cpu_off * 100:+.1f} %"
    )
    for key in ("rss", "anon", "file", "hwm"):
        print(
            f"idle {key} MB off {spread([x[key] for x in off])}, on {spread([x[key] for x in on])}"
        )


if __name__ == "__main__":
    main()
