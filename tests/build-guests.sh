#!/usr/bin/env bash
# Builds the task modules in guest-tasks/ (their own cargo workspace) for wasm32-wasip2.
# They land in ${GUEST_TARGET_DIR:-guest-tasks/target}/wasm32-wasip2/release/*.wasm, where
# the host's tests and the demo look for them.
#
#   tests/build-guests.sh           what the tests need (the workspace's default members)
#   tests/build-guests.sh --bench   also the benchmark's `workloads` module
set -euo pipefail
cd "$(dirname "$0")/../guest-tasks"
# A fresh machine has no wasm32-wasip2 standard library yet (the README's bench commands start here).
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
if [ -n "${GUEST_TARGET_DIR:-}" ]; then export CARGO_TARGET_DIR="$GUEST_TARGET_DIR"; fi
cargo build --release --target wasm32-wasip2 --locked --quiet
if [ "${1:-}" = "--bench" ]; then
    cargo build --release --target wasm32-wasip2 --locked --quiet -p workloads
fi
