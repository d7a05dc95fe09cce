#!/usr/bin/env bash
# `taskhost status` at scale (tests/bench/status_scale.py): 10,000 jobs seeded in the S3 test
# server, the overview's time and S3 requests. Builds the release host first.
#
#   tests/bench/status_scale.sh [--jobs N]
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="$(bash tests/s3/setup-venv.sh | tail -n 1)"
cargo build --release -p taskhost >&2
TASKHOST="${CARGO_TARGET_DIR:-target}/release/taskhost"
exec "$VENV/bin/python" tests/bench/status_scale.py --taskhost "$TASKHOST" --python "$VENV/bin/python" "$@"
