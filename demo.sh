#!/usr/bin/env bash
# The demo on the embedded default (no cloud): builds the host and the task modules, runs the
# guide's step-counter job with `taskhost run` on a directory store, then interrupts a longer
# job with a fuel budget and resumes it from its checkpoint. Exits non-zero if a result is wrong.
set -euo pipefail
cd "$(dirname "$0")"

echo "== building (first time: several minutes on 2 cores)"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
bash tests/build-guests.sh
cargo build -q -p taskhost
taskhost() { cargo run -q -p taskhost -- "$@"; }
wasm="${GUEST_TARGET_DIR:-guest-tasks/target}/wasm32-wasip2/release/step_counter.wasm"
store="$(mktemp -d)"
trap 'rm -rf "$store"' EXIT

echo "== the guide's job: 600 steps"
out="$(taskhost run "$wasm" --store "$store" --input '{"job_id": "job-0", "steps": 600}' | tail -n1)"
echo "$out"
[ "$out" = '{"job_id":"job-0","steps":600,"sum":180300}' ] || { echo "wrong result: $out" >&2; exit 1; }

echo "== a longer job cut off by its fuel budget (as if the node died) ..."
input='{"job_id": "job-long", "steps": 2000000, "checkpoint_every": 10000}'
set +e
taskhost run "$wasm" --store "$store" --input "$input" --fuel 200000000
code=$?
set -e
[ "$code" -eq 4 ] || { echo "expected exit 4 (limit hit), got $code" >&2; exit 1; }

echo "== ... resumed from its checkpoint"
out="$(taskhost run "$wasm" --store "$store" --input "$input" | tail -n1)"
echo "$out"
[ "$out" = '{"job_id":"job-long","steps":2000000,"sum":2000001000000}' ] || { echo "wrong result: $out" >&2; exit 1; }
echo "demo ok: both results verified"
