#!/usr/bin/env bash
# The side-by-side benchmark: taskhost against the guide's worker design.
#
#   tests/bench/run.sh                     # the churn scenario (3 workers, kills, 40 jobs)
#   tests/bench/run.sh --scenario small    # 200 one-step jobs: jobs/s and S3 requests per job
#   tests/bench/run.sh --scenario metrics  # the cost of metrics on the one-step-job rate, idle RSS
#
# Installs what it needs (the S3 server's venv plus google-cloud-pubsub and boto3, by
# tests/s3/setup-venv.sh --bench), builds the task modules (tests/build-guests.sh) and the
# release host (`cargo build --release -p taskhost`, into ${CARGO_TARGET_DIR:-target}), then
# runs tests/bench/churn.py with the given flags (`--help` lists them). Needs Java 17 for the
# Pub/Sub emulator, like the tests. Exits with churn.py's status.
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "== venv (S3 server, Pub/Sub and S3 clients)" >&2
VENV="$(bash tests/s3/setup-venv.sh --bench | tail -n 1)"

echo "== task modules (wasm32-wasip2)" >&2
bash tests/build-guests.sh

echo "== taskhost (release)" >&2
cargo build --release -p taskhost

# Relative target directories are relative to the repo root, as for cargo.
TASKHOST="${CARGO_TARGET_DIR:-target}/release/taskhost"
exec "$VENV/bin/python" tests/bench/churn.py --taskhost "$TASKHOST" "$@"
