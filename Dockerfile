# syntax=docker/dockerfile:1
# The taskhost worker image for SaladCloud (docs/saladcloud.md):
#
#   docker build -t <registry>/taskhost:<tag> .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts and COPY --chmod.

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

# Cache mounts keep the crate downloads and compiled dependencies between builds (a rebuild
# after a change to host/ compiles only taskhost). target/ is a cache mount, so the binary is
# copied out in the same step. Symbols are stripped for a smaller image (panics still name
# the failing location; backtraces lose function names).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked -p taskhost --bin taskhost \
    && install -m 0755 target/release/taskhost /usr/local/bin/taskhost

# ---- runtime --------------------------------------------------------------------------------
FROM debian:bookworm-slim

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

# Defaults only; every secret (GCP_KEY, R2_AWS_SECRET_ACCESS_KEY, ...) comes from the
# container group's environment at run time, never from the image.
ENV TASKHOST_CACHE_DIR=/home/taskhost/cache \
    GOOGLE_APPLICATION_CREDENTIALS=/home/taskhost/keys/keys.json

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
