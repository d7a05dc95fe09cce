#!/usr/bin/env bash
# Host memory under a task that writes huge artifacts (issue 14): `taskhost run` of the
# `hostile` module writing 8 artifacts in single calls of CALL_MB (default 1024) MiB each,
# on the directory store, under a task memory cap of CALL_MB + 128 MiB. Prints the process's
# peak resident set (VmHWM, polled every 5 ms) beside the figure docs/design.md derives
# ("Host memory a task can make the worker use"): task memory + the call's copy + 8 parts.
#
#   tests/bench/artifact_rss.sh            # 8 x 1 GiB (writes 8 GiB to a temporary directory)
#   CALL_MB=256 tests/bench/artifact_rss.sh
#
# Builds the task modules and the release host first, like tests/bench/run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
CALL_MB="${CALL_MB:-1024}"
bash tests/build-guests.sh
cargo build --release -p taskhost
TASKHOST="${CARGO_TARGET_DIR:-target}/release/taskhost"
WASM="${GUEST_TARGET_DIR:-guest-tasks/target}/wasm32-wasip2/release/hostile.wasm"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
MEMORY_MB=$((CALL_MB + 128))
INPUT="{\"job_id\":\"rss\",\"mode\":\"big_writes\",\"artifacts\":8,\"call_mb\":$CALL_MB,\"calls\":1}"
python3 - "$TASKHOST" "$WASM" "$WORK" "$MEMORY_MB" "$INPUT" "$CALL_MB" <<'PY'
import subprocess, sys, time
taskhost, wasm, work, memory_mb, job, call_mb = sys.argv[1:]
started = time.time()
p = subprocess.Popen(
    [taskhost, "run", wasm, "--store", f"{work}/store", "--memory-mb", memory_mb, "--input", job],
    env={"TASKHOST_CACHE_DIR": f"{work}/cache", "PATH": "/usr/bin:/bin"},
    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
peak = 0
while p.poll() is None:
    try:
        for line in open(f"/proc/{p.pid}/status"):
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) // 1024)
    except OSError:
        pass
    time.sleep(0.005)
out = p.stdout.read().decode().strip().splitlines()
took = time.time() - started
if p.returncode != 0:
    sys.exit(f"taskhost run failed ({p.returncode}): {out}")
call = int(call_mb)
bound = call * 2 + 8 * 8 + 8
print(f"8 artifacts in {call} MiB calls ({8 * call} MiB written) in {took:.1f} s")
print(f"peak RSS {peak} MiB; task memory {call} MiB + the call's copy {call} MiB + 9 parts of 8 MiB = {bound} MiB + the process's own")
print(f"without streaming each artifact would keep its whole call: {8 * call} MiB more")
PY
