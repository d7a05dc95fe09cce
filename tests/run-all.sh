#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need (the
# wasm32-wasip2 target, the S3 server's Python venv), builds the task modules, then runs
# `cargo test`. Test servers (the Pub/Sub emulator, the S3 server) are started by the tests
# themselves on free ports and stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== S3 test server venv"
bash tests/s3/setup-venv.sh

echo "== task modules (wasm32-wasip2)"
bash tests/build-guests.sh

echo "== cargo test"
cargo test --workspace --all-targets "$@"
