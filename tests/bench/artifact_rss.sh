#!/usr/bin/env bash
# Host memory under a task that writes huge artifacts (issue 14): `taskhost run` of the
# `hostile` module writing 8 artifacts in single calls of CALL_MB MiB each, on the directory
# store, under a task memory cap of CALL_MB + 128 MiB. Prints the process's peak resident
# set (VmHWM, polled every 5 ms) beside the figure docs/design.md derives ("Host memory a
# task can make the worker use"): task memory + the call's copy + 8 parts. Calls over
# MAX_CALL_BYTES (128 MiB) trap the task before the host copies them.
#
#   tests/bench/artifact_rss.sh            # 8 x 128 MiB calls (1 GiB written), then 8 x 1 GiB
#   CALL_MB=64 tests/bench/artifact_rss.sh # one size only
#
# Builds the task modules and the release host first, like tests/bench/run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZES="${CALL_MB:-128 1024}"
bash tests/build-guests.sh
cargo build --release -p taskhost
TASKHOST="${CARGO_TARGET_DIR:-target}/release/taskhost"
WASM="${GUEST_TARGET_DIR:-guest-tasks/target}/wasm32-wasip2/release/hostile.wasm"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
for CALL_MB in $SIZES; do
MEMORY_MB=$((CALL_MB + 128))
INPUT="{\"job_id\":\"rss-$CALL_MB\",\"mode\":\"big_writes\",\"artifacts\":8,\"call_mb\":$CALL_MB,\"calls\":1}"
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
took = time.time() - started
call = int(call_mb)
copy = min(call, 128)
if p.returncode != 0:
    print(f"8 artifacts in {call} MiB calls: the task was stopped (exit {p.returncode}: a call over MAX_CALL_BYTES traps) after {took:.1f} s")
else:
    print(f"8 artifacts in {call} MiB calls ({8 * call} MiB written) in {took:.1f} s")
bound = call + copy + 9 * 8
print(f"  peak RSS {peak} MiB; task memory {call} + the call's copy {copy} + 9 parts of 8 = {bound} MiB, + the process's own")
PY
done
