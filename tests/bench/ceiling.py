#!/usr/bin/env python3
"""The host's own ceiling on the embedded default (issue 19 item 5): one-step jobs, one worker.

    tests/bench/ceiling.py --taskhost before=/path/to/old/taskhost --taskhost after=target/release/taskhost \\
        --module guest-tasks/target/wasm32-wasip2/release/step_counter.wasm [--jobs 1000] [--rounds 3]

Each run: a fresh directory with a SQLite queue file and a store directory (what
`taskhost demo` and `taskhost worker` use without Pub/Sub settings), --jobs one-step
step-counter jobs (steps 1, step_ms 0) submitted before the worker starts, then one worker
(default slots: the CPUs, or --slots) until every job is done. Per run: the rate from the
worker's own `job done` lines (first to last), the whole run's time from the worker's start
(its start-up included) and the worker's CPU time per job. The binaries run alternately,
--rounds times each (on a shared machine only a side-by-side comparison means anything);
then the medians and spread (min..max) per binary, and the load average before and after.
The runs' directories are deleted together at the end (--delete-between: after each run).

--phases adds one run per binary with debug logs (JSON) and prints where a job's time goes,
from its pull to its settlement, as medians over the jobs of the phases the worker's debug and
info lines delimit: the pull (`pulled`, the queue's answer), the wait until the job's handler
runs, the module's lookup, the claim, the run (instantiation included), the end (the
checkpoint writer's finish and the result's write) and the settlement (the ack). Logging
every line costs time too: the phase run's rate is not the rate above.

--strace adds one run per binary under `strace -f` and prints, per job, the file calls the
worker made (created files, removes, renames, fsyncs, locks, extended attributes), its
start-up included.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from logtail import TASKHOST_DONE, parse_stamp, stamp_of
from metrics_embedded import done_lines, median, wait_done_cpu


# What --strace counts: the calls that create, remove, rename and flush files.
TRACED = "openat,unlink,unlinkat,rename,renameat2,fsync,fdatasync,mkdir,rmdir,flock,fsetxattr"


def one_run(args, binary, phases=False, trace=None):
    # Each run's directory is kept until the whole benchmark ends (see --delete-between).
    d = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("PROJECT_ID", "R2_BUCKET_NAME")}
        env.update(HOME=str(d), TASKHOST_CACHE_DIR=str(d / "cache"), HEARTBEAT_SECONDS="0")
        if args.slots:
            env["WORKER_SLOTS"] = str(args.slots)
        if phases:
            env.update(PHASES_ENV)

        def th(*a):
            return subprocess.run(
                [binary, *a], cwd=d, env=env, check=True, capture_output=True, text=True
            ).stdout

        module = th("module", "push", args.module).strip().split()[-1]
        csv = d / "jobs.csv"
        csv.write_text("job_id,steps,step_ms\n" + "".join(f"j{i},1,0\n" for i in range(args.jobs)))
        th("submit", "--module", module, str(csv))
        log = d / "worker.log"
        with open(log, "w") as out:
            started = time.time()
            cmd = [binary, "worker"]
            if trace:
                cmd = ["strace", "-f", "-qq", "-o", str(trace), "-e", f"trace={TRACED}", *cmd]
            p = subprocess.Popen(cmd, cwd=d, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            cpu = wait_done_cpu(p, log, args.jobs, args.timeout, 0.01)
        finally:
            # Under strace the worker is strace's child: it gets the SIGTERM.
            kids = Path(f"/proc/{p.pid}/task/{p.pid}/children") if trace else None
            for pid in kids.read_text().split() if kids and kids.exists() else [p.pid]:
                os.kill(int(pid), signal.SIGTERM)
            p.wait(60)
        lines = done_lines(log)
        stamps = [stamp_of(line) for line in lines]
        res = {
            "rate": (len(stamps) - 1) / (max(stamps) - min(stamps)),
            "total": max(stamps) - started,
            "cpu_ms": cpu * 1000,
        }
        if phases:
            res["phases"] = phase_times(log)
        return res
    finally:
        if args.delete_between:
            shutil.rmtree(d, ignore_errors=True)


def syscall_counts(trace):
    """Per call: how many succeeded and failed; and the files created (openat with O_CREAT
    that succeeded), from an `strace -f` log (a call cut by another thread's line ends on a
    `<... resumed>` line of the same thread)."""
    counts, pending = {}, {}
    for line in Path(trace).read_text(errors="replace").splitlines():
        pid, _, rest = line.partition(" ")
        m = re.match(r"<\.\.\. (\w+) resumed>", rest)
        if m:
            call, args = m.group(1), pending.pop(pid, "")
        else:
            m = re.match(r"(\w+)\((.*)", rest)
            if not m:
                continue
            call, args = m.group(1), m.group(2)
            if rest.endswith("<unfinished ...>"):
                pending[pid] = args
                continue
        ok = re.search(r"\) += (-?\d+)", rest)
        ok = ok is not None and int(ok.group(1)) >= 0
        key = call + (" ok" if ok else " failed")
        counts[key] = counts.get(key, 0) + 1
        if call == "openat" and "O_CREAT" in args and ok:
            counts["files created"] = counts.get("files created", 0) + 1
    return counts


# The worker's environment for --phases: its debug lines, as JSON, which `phase_times` reads.
PHASES_ENV = {"LOG_FORMAT": "json", "RUST_LOG": "info,taskhost=debug"}

# (phase, from the line, to the line): each job's lines, by `message`.
PHASES = [
    ("handler start (pulled -> received)", "pulled", "message received"),
    ("module lookup", "message received", "module ready"),
    ("claim (checkpoint create)", "module ready", "job started"),
    ("run (instantiate + task)", "job started", "task run ended"),
    ("end (finish + result write)", "task run ended", TASKHOST_DONE),
    ("settle (ack)", TASKHOST_DONE, "message settled"),
    ("slot held (received -> slot freed)", "message received", "slot freed"),
    ("commit place held (slot freed -> settled)", "slot freed", "message settled"),
]


def phase_times(log):
    """Median ms of each phase over the jobs, and the pulls' own time (`pull_us`)."""
    jobs, pulls, pulled_at = {}, [], []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        msg, t = rec.get("message"), parse_stamp(rec["timestamp"])
        if msg == "pulled":
            if rec.get("messages", 0):
                pulls.append(int(rec["pull_us"]) / 1000)
                pulled_at.append(t)
            continue
        job = rec.get("job_id") or rec.get("job")
        if job:
            jobs.setdefault(job, {}).setdefault(msg, t)
    # A job's pull: the last pull answered before its handler started.
    pulled_at.sort()
    for lines in jobs.values():
        got = lines.get("message received")
        if got is not None:
            before = [p for p in pulled_at if p <= got]
            if before:
                lines["pulled"] = before[-1]
    out = {}
    for name, a, b in PHASES:
        ds = [(ls[b] - ls[a]) * 1000 for ls in jobs.values() if a in ls and b in ls]
        if ds:
            out[name] = (statistics.median(ds), statistics.mean(ds), len(ds))
    whole = [
        (ls["message settled"] - ls["pulled"]) * 1000
        for ls in jobs.values()
        if "pulled" in ls and "message settled" in ls
    ]
    if whole:
        out["whole (pull answered -> settled)"] = (statistics.median(whole), statistics.mean(whole), len(whole))
    if pulls:
        out["pull (the queue's answer)"] = (statistics.median(pulls), statistics.mean(pulls), len(pulls))
    return out


def spread(values):
    return f"{median(values):.1f} ({min(values):.1f}..{max(values):.1f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--taskhost", action="append", required=True, help="LABEL=PATH (repeatable)")
    ap.add_argument("--module", required=True, help="step_counter.wasm")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slots", type=int, default=0, help="WORKER_SLOTS (default: the worker's)")
    ap.add_argument("--phases", action="store_true", help="also one run per binary with the phase breakdown")
    ap.add_argument("--strace", action="store_true", help="also one run per binary under strace: file calls per job")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument(
        "--delete-between",
        action="store_true",
        help="delete each run's directory right after it (default: all at the end). On ext4 "
        "without a journal every new inode is checked against those deleted in the last "
        "60 s (360 s while their inode table block is dirty), so a run right after another "
        "run's thousands of deletes pays for them: this measures that",
    )
    args = ap.parse_args()
    args.workdir = tempfile.mkdtemp(prefix="th-ceiling-")
    try:
        run_all(args)
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)


def run_all(args):
    args.module = str(Path(args.module).resolve())
    binaries = []
    for spec in args.taskhost:
        label, _, path = spec.rpartition("=")
        binaries.append((label or path, str(Path(path).resolve())))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    runs = {label: [] for label, _ in binaries}
    for r in range(args.rounds):
        for label, path in binaries:
            res = one_run(args, path)
            runs[label].append(res)
            print(
                f"   #{r + 1} {label}: {res['rate']:.0f} jobs/s, {args.jobs} jobs in "
                f"{res['total']:.2f} s with start-up, {res['cpu_ms']:.2f} ms CPU/job",
                flush=True,
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for label, _ in binaries:
        rs = runs[label]
        print(
            f"{label}: {spread([x['rate'] for x in rs])} jobs/s; {args.jobs} jobs in "
            f"{spread([x['total'] for x in rs])} s with start-up; "
            f"{spread([x['cpu_ms'] for x in rs])} ms CPU/job (medians (min..max) of {len(rs)})"
        )
    if args.phases:
        for label, path in binaries:
            res = one_run(args, path, phases=True)
            print(f"{label}, phases (debug logs on: {res['rate']:.0f} jobs/s), ms median / mean over jobs:")
            for name, (med, mean, n) in res["phases"].items():
                print(f"   {name:40} {med:8.3f} / {mean:8.3f}  ({n})")
    if args.strace:
        for label, path in binaries:
            with tempfile.TemporaryDirectory(prefix="th-ceiling-strace-") as t:
                trace = Path(t) / "trace"
                one_run(args, path, trace=trace)
                counts = syscall_counts(trace)
            print(f"{label}, file calls per job under strace (the worker's start included):")
            for name, n in sorted(counts.items()):
                print(f"   {name:24} {n / args.jobs:6.2f}")


if __name__ == "__main__":
    main()
