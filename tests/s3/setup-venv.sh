#!/usr/bin/env bash
# Makes (or reuses) the Python venv that runs the S3 test server (tests/s3/serve.py).
#
#   tests/s3/setup-venv.sh          # prints the venv's path as its last line
#   tests/s3/setup-venv.sh --bench  # the same, with the benchmark's clients too (tests/bench/)
#
# Where: ${TASKHOST_VENV:-$HOME/.cache/taskhost/venv}. Idempotent: a venv that already has
# the pinned moto is reused as it is. Uses the machine's python3 (3.9+).
#
# moto[s3] only, not moto[server]: the server extra pulls in every AWS service's
# dependencies and takes minutes to install; serve.py needs just the S3 backend plus
# flask/flask-cors (which moto's WSGI dispatcher imports).
#
# --bench also installs the pinned google-cloud-pubsub and boto3 that tests/bench/churn.py
# and tests/bench/guide_worker.py use (checked on Python 3.11); without it nothing of theirs
# is installed or checked.
set -euo pipefail

MOTO_VERSION=5.2.5
FLASK_VERSION=3.1.3
FLASK_CORS_VERSION=6.0.5
PUBSUB_VERSION=2.44.0
BOTO3_VERSION=1.44.8
VENV="${TASKHOST_VENV:-$HOME/.cache/taskhost/venv}"

BENCH=0
case "${1:-}" in
    "") ;;
    --bench) BENCH=1 ;;
    *) echo "usage: setup-venv.sh [--bench]" >&2; exit 2 ;;
esac

have_moto() {
    # Package metadata only: importing moto takes seconds, this takes milliseconds.
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" - "$MOTO_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
ok = version("moto") == sys.argv[1] and version("flask") and version("flask-cors")
sys.exit(0 if ok else 1)
PY
}

have_bench() {
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" - "$PUBSUB_VERSION" "$BOTO3_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
ok = version("google-cloud-pubsub") == sys.argv[1] and version("boto3") == sys.argv[2]
sys.exit(0 if ok else 1)
PY
}

# Everything asked for is there already (moto, and with --bench the benchmark's clients).
ready() {
    have_moto && { [ "$BENCH" = 0 ] || have_bench; }
}

said_ready() {
    echo "moto $MOTO_VERSION already in $VENV" >&2
    if [ "$BENCH" = 1 ]; then
        echo "google-cloud-pubsub $PUBSUB_VERSION and boto3 $BOTO3_VERSION already in $VENV" >&2
    fi
    echo "$VENV"
}

if ready; then
    said_ready
    exit 0
fi

command -v python3 >/dev/null || { echo "setup-venv.sh: python3 not found" >&2; exit 1; }
mkdir -p "$(dirname "$VENV")"
# Another process (another test run) may be creating it too: serialize on a lock.
exec 9>"$VENV.lock"
if command -v flock >/dev/null; then flock 9; fi
if ready; then
    said_ready
    exit 0
fi

if ! have_moto; then
    echo "creating $VENV with moto[s3]==$MOTO_VERSION" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "moto[s3]==$MOTO_VERSION" "flask==$FLASK_VERSION" "flask-cors==$FLASK_CORS_VERSION" >&2
    have_moto || { echo "setup-venv.sh: moto did not install into $VENV" >&2; exit 1; }
fi
if [ "$BENCH" = 1 ] && ! have_bench; then
    echo "installing google-cloud-pubsub==$PUBSUB_VERSION boto3==$BOTO3_VERSION into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "google-cloud-pubsub==$PUBSUB_VERSION" "boto3==$BOTO3_VERSION" >&2
    have_bench || {
        echo "setup-venv.sh: google-cloud-pubsub/boto3 did not install into $VENV" >&2
        exit 1
    }
fi
echo "$VENV"
