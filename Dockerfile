# syntax=docker/dockerfile:1
# The taskhost worker image for SaladCloud (docs/saladcloud.md):
#
#   docker build -t <registry>/taskhost:<tag> .
#
# Model inference for tasks (wasi-nn on ONNX Runtime): the default image carries ONNX Runtime's
# CPU library and sets ORT_DYLIB_PATH to it. A GPU image (CUDA) for SaladCloud's GPU nodes:
#
#   docker build -t <registry>/taskhost:<tag>-gpu \
#     --build-arg ORT_PACKAGE=onnxruntime-gpu --build-arg NN_PROVIDER=cuda \
#     --build-arg RUNTIME_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 .
#
# `--build-arg ORT_PACKAGE=` (empty) builds an image without ONNX Runtime (no inference). The
# GPU image is built the same way but cannot be tested without a GPU (docs/saladcloud.md).
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts and COPY --chmod.

# The wheel ONNX Runtime's shared library is taken from (`onnxruntime`, `onnxruntime-gpu`, or
# empty for none), its version (one the host's `ort` crate serves: 1.22 or newer; the tests
# use this one, tests/nn/setup-ort.sh), the execution provider (`cpu` or `cuda`) and the
# runtime stage's base image (for CUDA: an NVIDIA CUDA 12 + cuDNN 9 runtime image whose glibc
# is at least bookworm's).
ARG ORT_PACKAGE=onnxruntime
ARG ORT_VERSION=1.31.1
ARG NN_PROVIDER=cpu
ARG RUNTIME_BASE=debian:bookworm-slim

# ---- build ----------------------------------------------------------------------------------
# Bookworm on both stages: the binary links against the build stage's glibc, so the runtime
# must have the same or a newer one. 1.95 is the workspace's rust-version.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Only what cargo needs to resolve the workspace and build the host:
# - Cargo.toml, Cargo.lock: the workspace and its pinned dependencies (--locked below);
# - host/: the crate (its benches/ and tests/ too: cargo checks that declared targets exist);
# - wit/: the WIT world, read at compile time by the bindgen! macro (path "../wit");
# - guest-tasks/prime-core: the host's dev-dependency (a path dependency must resolve even
#   for a build that does not use it);
# - guest-tasks' manifest, lock file, cargo config and the SDK's sources: `taskhost task new`
#   embeds them (include_str!) in the crates it writes. The rest of guest-tasks/ is not
#   needed: the image runs modules fetched from R2 and builds none.
# rust-toolchain.toml is left out on purpose: it asks for the `stable` channel plus the wasm
# target, rustfmt and clippy, which would make rustup download a second toolchain here; the
# image's own pinned toolchain is the one to build with.
COPY Cargo.toml Cargo.lock ./
COPY host/ host/
COPY wit/ wit/
COPY guest-tasks/prime-core/ guest-tasks/prime-core/
COPY guest-tasks/Cargo.toml guest-tasks/Cargo.lock guest-tasks/
COPY guest-tasks/.cargo/ guest-tasks/.cargo/
COPY guest-tasks/sdk/Cargo.toml guest-tasks/sdk/
COPY guest-tasks/sdk/src/ guest-tasks/sdk/src/
COPY guest-tasks/classify/src/lib.rs guest-tasks/classify/src/lib.rs

# Cache mounts keep the crate downloads and compiled dependencies between builds (a rebuild
# after a change to host/ compiles only taskhost). target/ is a cache mount, so the binary is
# copied out in the same step. Symbols are stripped for a smaller image (panics still name
# the failing location; backtraces lose function names).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked -p taskhost --bin taskhost \
    && install -m 0755 target/release/taskhost /usr/local/bin/taskhost

# ---- ONNX Runtime ---------------------------------------------------------------------------
# The shared libraries of the wheel (libonnxruntime.so*, and for CUDA its providers' libraries),
# unpacked from the wheel without installing Python into the runtime image.
FROM python:3.11-slim-bookworm AS ort
ARG ORT_PACKAGE
ARG ORT_VERSION
RUN mkdir -p /opt/onnxruntime \
    && if [ -n "$ORT_PACKAGE" ]; then \
        pip download --quiet --no-deps --only-binary=:all: -d /tmp/wheel \
            "$ORT_PACKAGE==$ORT_VERSION" \
        && python -c 'import glob, os, zipfile; \
w = zipfile.ZipFile(glob.glob("/tmp/wheel/*.whl")[0]); \
libs = [n for n in w.namelist() if n.startswith("onnxruntime/capi/lib") and ".so" in n]; \
[open("/opt/onnxruntime/" + os.path.basename(n), "wb").write(w.read(n)) for n in libs]; \
main = [n for n in libs if os.path.basename(n).startswith("libonnxruntime.so")][0]; \
os.symlink(os.path.basename(main), "/opt/onnxruntime/libonnxruntime.so")' \
        && rm -rf /tmp/wheel; \
    fi

# ---- runtime --------------------------------------------------------------------------------
FROM ${RUNTIME_BASE}
ARG ORT_PACKAGE
ARG NN_PROVIDER

# ca-certificates: the worker talks TLS to Pub/Sub and R2 and verifies them against the system
# roots. Nothing else: bash and coreutils (base64, mktemp) for launch.sh are in the base image.
# Unpinned on purpose: the point is to get Debian's current security updates at build time.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed non-root uid/gid, so file ownership and runAsUser-style checks are predictable. The
# home directory holds everything the worker writes:
# - cache/: compiled task modules (the runtime insists on a private, mode 700 directory it owns);
# - keys/: the service-account key launch.sh writes from GCP_KEY (mode 700, the key 600);
# - the working directory itself (a local directory store would go to .taskhost/store; the
#   worker uses R2).
RUN groupadd --gid 10001 taskhost \
    && useradd --no-log-init --uid 10001 --gid taskhost --home-dir /home/taskhost --create-home \
        --shell /usr/sbin/nologin taskhost \
    && install -d -m 0700 -o taskhost -g taskhost /home/taskhost/cache /home/taskhost/keys

COPY --from=build /usr/local/bin/taskhost /usr/local/bin/taskhost
COPY --chmod=0755 launch.sh /usr/local/bin/launch.sh
COPY --from=ort /opt/onnxruntime/ /opt/onnxruntime/

# Defaults only; every secret (GCP_KEY, R2_AWS_SECRET_ACCESS_KEY, ...) comes from the
# container group's environment at run time, never from the image.
# ORT_DYLIB_PATH is empty (unset, for the worker) in an image built without ONNX Runtime.
ENV TASKHOST_CACHE_DIR=/home/taskhost/cache \
    GOOGLE_APPLICATION_CREDENTIALS=/home/taskhost/keys/keys.json \
    ORT_DYLIB_PATH=${ORT_PACKAGE:+/opt/onnxruntime/libonnxruntime.so} \
    TASK_NN_PROVIDER=${NN_PROVIDER}

USER 10001:10001
WORKDIR /home/taskhost

# SIGTERM is what the worker handles: stop pulling, stop tasks at their next yield, flush
# checkpoints, hand the messages back, exit 0. launch.sh execs the worker, so the signal reaches
# it directly (no shell in between to swallow it).
STOPSIGNAL SIGTERM

# Exec form: launch.sh is PID 1's program (then the worker is), not a child of /bin/sh -c.
# No init (tini) is needed: the worker installs its own SIGTERM/SIGINT handlers and starts no
# child processes that would need reaping.
# Arguments given to `docker run IMAGE ...` (or the container group's command arguments) are
# passed on to `taskhost worker`; no CMD, so there are none by default.
ENTRYPOINT ["/usr/local/bin/launch.sh"]
