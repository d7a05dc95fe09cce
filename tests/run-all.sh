#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need (the
# wasm32-wasip2 target, the S3 server's Python venv, ONNX Runtime's venv), builds the task
# modules, then runs
# `cargo test` on every target of the workspace (the integration tests are one binary,
# host/tests/all; the arguments go to this run, e.g. `tests/run-all.sh leasing::`) and the
# native unit tests of guest-tasks/prime-core (outside the workspace). A failing test
# binary does not stop the others; the script fails if any test failed. Test servers (the
# Pub/Sub emulator, the S3 server) are started by the tests themselves on free ports and
# stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== S3 test server venv"
bash tests/s3/setup-venv.sh

echo "== ONNX Runtime venv (the wasi-nn tests: onnxruntime's shared library, onnx for models)"
bash tests/nn/setup-ort.sh

echo "== chromium (the status page's browser test)"
bash tests/setup-chromium.sh

echo "== task modules (wasm32-wasip2)"
bash tests/build-guests.sh

status=0
# The guest workspace builds for wasm32-wasip2 by default (guest-tasks/.cargo/config.toml):
# its pure core's unit tests run natively, for the host's own target.
echo "== prime-core and workloads-core unit tests (native)"
host_target="$(rustc -vV | sed -n 's/^host: //p')"
(
    cd guest-tasks || exit 1
    if [ -n "${GUEST_TARGET_DIR:-}" ]; then export CARGO_TARGET_DIR="$GUEST_TARGET_DIR"; fi
    cargo test -p prime-core -p workloads-core --target "$host_target" --locked --lib
) || status=$?

echo "== cargo test"
# The integration tests mostly wait (on servers, lease deadlines, outages they stage), so
# twice as many run at once as there are cores (at least 4): on 2 cores the suite took
# 652-801 s two at a time and 510 s four at a time under the same load (load 6).
if [ -z "${RUST_TEST_THREADS:-}" ]; then
    cores="$(nproc)"
    RUST_TEST_THREADS=$(( cores * 2 > 4 ? cores * 2 : 4 ))
    export RUST_TEST_THREADS
fi
cargo test --workspace --all-targets --no-fail-fast --locked "$@" || status=$?

exit "$status"
