#!/usr/bin/env bash
# Makes (or reuses) the Python venv with ONNX Runtime and the `onnx` package for the wasi-nn
# tests (host/tests/all/nn/) and benchmark, and prints the path of ONNX Runtime's shared
# library (`libonnxruntime.so*` inside the wheel's `onnxruntime/capi/`) as its last line.
#
#   tests/nn/setup-ort.sh           # prints e.g. /root/.cache/taskhost/ort-venv/.../libonnxruntime.so.1.31.1
#   tests/nn/setup-ort.sh --python  # the same, then prints the venv's python instead
#
# Where: ${TASKHOST_ORT_VENV:-$HOME/.cache/taskhost/ort-venv}. Idempotent: a venv that has the
# pinned versions is reused as it is. Uses the machine's python3 (3.10+).
#
# The onnxruntime version must serve the ONNX Runtime API version the host's `ort` crate asks
# for (host/Cargo.toml: `ort` feature `api-22`, i.e. ONNX Runtime 1.22 or newer); the test
# pins one that does. numpy comes with onnxruntime; `onnx` builds the tests' models.
set -euo pipefail

ORT_VERSION=1.31.1
ONNX_VERSION=1.20.1
VENV="${TASKHOST_ORT_VENV:-$HOME/.cache/taskhost/ort-venv}"

have() {
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" - "$ORT_VERSION" "$ONNX_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
ok = version("onnxruntime") == sys.argv[1] and version("onnx") == sys.argv[2]
sys.exit(0 if ok else 1)
PY
}

lib_path() {
    "$VENV/bin/python" - <<'PY'
import glob, os, sys
import importlib.util
spec = importlib.util.find_spec("onnxruntime")
capi = os.path.join(os.path.dirname(spec.origin), "capi")
libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")))
if not libs:
    sys.exit("setup-ort.sh: no libonnxruntime.so* in " + capi)
print(libs[0])
PY
}

PRINT=lib
case "${1:-}" in
    "") ;;
    --python) PRINT=python ;;
    *) echo "usage: setup-ort.sh [--python]" >&2; exit 2 ;;
esac

if ! have; then
    command -v python3 >/dev/null || { echo "setup-ort.sh: python3 not found" >&2; exit 1; }
    mkdir -p "$(dirname "$VENV")"
    # Another test run may be creating it too: serialize on a lock.
    exec 9>"$VENV.lock"
    if command -v flock >/dev/null; then flock 9; fi
    if ! have; then
        echo "creating $VENV with onnxruntime==$ORT_VERSION onnx==$ONNX_VERSION" >&2
        python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION" >&2
        have || { echo "setup-ort.sh: onnxruntime/onnx did not install into $VENV" >&2; exit 1; }
    fi
fi
if [ "$PRINT" = python ]; then
    echo "$VENV/bin/python"
else
    lib_path
fi
