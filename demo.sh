#!/usr/bin/env bash
# The README's first command: builds what the demo needs (the wasm32-wasip2 target, the task
# modules, the host), then runs `taskhost demo` on the embedded default (a local queue and a
# directory store; no cloud, no Java). Extra arguments go to `taskhost demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")"
echo "== building (the first time takes several minutes on 2 cores)"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
bash tests/build-guests.sh
cargo build -q -p taskhost
exec cargo run -q -p taskhost -- demo "$@"
