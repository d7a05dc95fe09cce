#!/usr/bin/env python3
"""Time from `taskhost job cancel` to the task stopped (issue 16, item 7).

On the embedded default (SQLite queue, directory store): one worker runs N long step-counter
jobs at once; each is cancelled by its own `job cancel` command, one after another; the
latency of a job is from the start of its command to the worker's log line saying it
stopped it ("stopped by a user's request", LOG_FORMAT=json timestamps). Prints p50 and max.

  python3 tests/bench/cancel_latency.py --bin target/debug/taskhost \
      --wasm guest-tasks/target/wasm32-wasip2/release/step_counter.wasm --ack-deadline 10
"""
import argparse, datetime, json, os, statistics, subprocess, sys, tempfile, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--ack-deadline", type=int, default=60)
    # Steps between the task's saves: a job that saves often has its header rewritten at
    # every save (at most once a second), one that never does only after lease extensions.
    ap.add_argument("--checkpoint-every", type=int, default=1_000_000)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="cancel-bench-")
    env = dict(os.environ, QUEUE_FILE=f"{d}/queue.sqlite", STORE_DIR=f"{d}/store",
               TOPIC_ID="bench", SUBSCRIPTION_ID="bench-sub", LOG_FORMAT="json",
               ACK_DEADLINE_SECONDS=str(a.ack_deadline), TASKHOST_CACHE_DIR=f"{d}/cache",
               RUST_LOG="info")
    for k in ("PROJECT_ID", "R2_BUCKET_NAME"):
        env.pop(k, None)
    run = lambda *args: subprocess.run([a.bin, *args], env=env, check=True,
                                       capture_output=True, text=True)
    run("setup")
    module = run("module", "push", a.wasm).stdout.strip().splitlines()[-1]
    ids = [f"c{i}" for i in range(a.jobs)]
    with open(f"{d}/jobs.jsonl", "w") as f:
        for i in ids:
            f.write(json.dumps({"job_id": i, "steps": 1_000_000, "step_ms": 50,
                                "checkpoint_every": a.checkpoint_every}) + "\n")
    run("submit", "--quiet", "--module", module, f"{d}/jobs.jsonl")
    log = open(f"{d}/worker.log", "w")
    worker = subprocess.Popen([a.bin, "worker", "--slots", str(a.jobs)], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            o = json.loads(run("status", "--json", "--state", "running").stdout)
            if o["matching"] == a.jobs:
                break
            assert time.time() < deadline, o["counts"]
            time.sleep(0.5)
        asked = {}
        for i in ids:
            asked[i] = time.time()
            run("job", "cancel", i, "--yes", "--by", "bench")
        stopped = {}
        deadline = time.time() + 2 * a.ack_deadline + 30
        while len(stopped) < a.jobs:
            assert time.time() < deadline, f"stopped {len(stopped)} of {a.jobs}"
            time.sleep(0.5)
            for line in open(f"{d}/worker.log"):
                try:
                    v = json.loads(line)
                except ValueError:
                    continue
                if "stopped by a user's request" in v.get("message", ""):
                    ts = datetime.datetime.fromisoformat(v["timestamp"].replace("Z", "+00:00"))
                    stopped[v["job"]] = ts.timestamp()
        lat = sorted(stopped[i] - asked[i] for i in ids)
        print(f"ack deadline {a.ack_deadline} s, {a.jobs} running jobs: "
              f"checkpoint every {a.checkpoint_every} steps: p50 {statistics.median(lat):.2f} s, max {lat[-1]:.2f} s")
    finally:
        worker.terminate()
        worker.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
