#!/usr/bin/env bash
# Makes (or reuses) the Python venv with ONNX Runtime and the `onnx` package for the wasi-nn
# tests (host/tests/all/nn/) and benchmark, and prints the path of ONNX Runtime's shared
# library (`libonnxruntime.so*` inside the wheel's `onnxruntime/capi/`) as its last line.
#
#   tests/nn/setup-ort.sh           # prints e.g. /root/.cache/taskhost/ort-venv/.../libonnxruntime.so.1.31.1
#   tests/nn/setup-ort.sh --python  # the same, then prints the venv's python instead
#   tests/nn/setup-ort.sh --old     # the same, then prints the library of ONNX Runtime
#                                   # $OLD_ORT_VERSION instead, one the worker must refuse
#                                   # (host/src/nn/engine.rs, MIN_VERSION)
#
# Where: ${TASKHOST_ORT_VENV:-$HOME/.cache/taskhost/ort-venv}. Idempotent: a venv that has the
# pinned versions is reused as it is. Uses the machine's python3 (3.10+).
#
# The onnxruntime version must serve the ONNX Runtime API version the host's `ort` crate asks
# for (host/Cargo.toml: `ort` feature `api-22`, i.e. ONNX Runtime 1.22 or newer) and be one the
# worker loads (host/src/nn/engine.rs, MIN_VERSION: 1.27 or newer); the test pins one that does. numpy comes with onnxruntime; `onnx` builds the tests' models.
set -euo pipefail

ORT_VERSION=1.31.1
ONNX_VERSION=1.20.1
# The newest release older than the worker's oldest (1.27): it reads a sparse initializer's
# external data from any file or address. Only its library is taken from the wheel.
OLD_ORT_VERSION=1.26.0
VENV="${TASKHOST_ORT_VENV:-$HOME/.cache/taskhost/ort-venv}"
OLD_DIR="$VENV-old-$OLD_ORT_VERSION"

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

# The old release's library in $OLD_DIR, if it is there.
old_lib() {
    ls "$OLD_DIR"/libonnxruntime.so* 2>/dev/null | head -n 1
}

PRINT=lib
case "${1:-}" in
    "") ;;
    --python) PRINT=python ;;
    --old) PRINT=old ;;
    *) echo "usage: setup-ort.sh [--python | --old]" >&2; exit 2 ;;
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
if [ "$PRINT" = old ] && [ -z "$(old_lib)" ]; then
    exec 9>"$VENV.lock"
    if command -v flock >/dev/null; then flock 9; fi
    if [ -z "$(old_lib)" ]; then
        echo "fetching onnxruntime==$OLD_ORT_VERSION's library into $OLD_DIR" >&2
        rm -rf "$OLD_DIR.tmp" && mkdir -p "$OLD_DIR.tmp"
        "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: -d "$OLD_DIR.tmp" "onnxruntime==$OLD_ORT_VERSION" >&2
        "$VENV/bin/python" - "$OLD_DIR.tmp" <<'PY'
import glob, os, sys, zipfile
d = sys.argv[1]
(wheel,) = glob.glob(os.path.join(d, "onnxruntime-*.whl"))
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if "/capi/libonnxruntime.so" in n]
    if not names:
        sys.exit("setup-ort.sh: no libonnxruntime.so* in " + wheel)
    for n in names:
        with open(os.path.join(d, os.path.basename(n)), "wb") as out:
            out.write(z.read(n))
os.remove(wheel)
PY
        rm -rf "$OLD_DIR" && mv "$OLD_DIR.tmp" "$OLD_DIR"
        [ -n "$(old_lib)" ] || { echo "setup-ort.sh: no library in $OLD_DIR" >&2; exit 1; }
    fi
fi
case "$PRINT" in
    python) echo "$VENV/bin/python" ;;
    old) old_lib ;;
    *) lib_path ;;
esac
