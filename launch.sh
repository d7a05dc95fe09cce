#!/usr/bin/env bash
# The worker container's entrypoint (see Dockerfile and docs/saladcloud.md).
#
# 1. Checks the required settings and lists every missing one (exit 2), so a container
#    group with a typo fails at once with a readable log instead of crash-looping.
# 2. Writes the Google credentials to $GOOGLE_APPLICATION_CREDENTIALS (mode 600), from one of:
#    - GCP_CREDENTIAL_CONFIG: an `external_account` configuration (workload identity
#      federation, keyless: the worker exchanges SaladCloud's instance identity token for a
#      short-lived Google token), as JSON or base64 of it. It holds no secret. Since its
#      token source is the instance metadata service, 169.254.169.254 is added to NO_PROXY.
#    - GCP_KEY: a service-account key, base64-encoded (SaladCloud has no secret files, only
#      environment variables).
#    Anything that does not decode to a JSON object of the right type fails with exit 2.
# 3. Removes GCP_KEY and GCP_CREDENTIAL_CONFIG from the environment and execs
#    `taskhost worker "$@"`: the worker replaces this shell (same PID), so the SIGTERM the
#    container runtime sends on scale-down reaches the worker itself, which flushes
#    checkpoints and hands its jobs back.
#
# Never add `set -x` here: it would print the key. No message below prints GCP_KEY or the
# decoded key.
#
# TASKHOST_BIN overrides the worker binary (tests use a fake one); default: taskhost on PATH.
set -euo pipefail

me="launch.sh"

say() { printf '%s: %s\n' "$me" "$*" >&2; }

# Help and version need no settings: `docker run IMAGE --help` shows the worker's flags.
wants_help=false
for arg in "$@"; do
    case "$arg" in
        -h | --help | -V | --version) wants_help=true ;;
    esac
done

emulator="${PUBSUB_EMULATOR_HOST:-}"
key_b64="${GCP_KEY:-}"
config="${GCP_CREDENTIAL_CONFIG:-}"
key_file="${GOOGLE_APPLICATION_CREDENTIALS:-}"

# ---- 1. required settings: one sentence per missing one, all of them at once -------------
problems=()
need() {
    local name="$1" what="$2"
    if [[ -z "${!name:-}" ]]; then
        problems+=("$name is not set: $what.")
    fi
}

if [[ "$wants_help" == false ]]; then
    need PROJECT_ID "the Google Cloud project that holds the Pub/Sub topics and subscription"
    need SUBSCRIPTION_ID "the pull subscription the worker leases jobs from"
    need R2_BUCKET_NAME "the R2 bucket that holds the task modules and the job checkpoints"
    need R2_S3_ENDPOINT_URL "the R2 S3 endpoint, https://<account-id>.r2.cloudflarestorage.com"
    need R2_AWS_ACCESS_KEY_ID "the access key id of an R2 API token with read and write access to the bucket"
    need R2_AWS_SECRET_ACCESS_KEY "the secret access key of that R2 API token"
    if [[ -z "$emulator" ]]; then
        if [[ -n "$key_b64" && -n "$config" ]]; then
            problems+=("GCP_KEY and GCP_CREDENTIAL_CONFIG are both set: set only GCP_CREDENTIAL_CONFIG (keyless, docs/saladcloud.md) or only GCP_KEY.")
        elif [[ (-n "$key_b64" || -n "$config") && -z "$key_file" ]]; then
            problems+=("GOOGLE_APPLICATION_CREDENTIALS is not set: it names the file that launch.sh writes the credentials of GCP_KEY or GCP_CREDENTIAL_CONFIG to.")
        elif [[ -z "$key_b64" && -z "$config" && -z "$key_file" ]]; then
            problems+=("GCP_KEY is not set, nor GCP_CREDENTIAL_CONFIG, nor GOOGLE_APPLICATION_CREDENTIALS: set GCP_CREDENTIAL_CONFIG to the workload identity configuration (keyless, docs/saladcloud.md) or GCP_KEY to the base64 of a service-account key JSON (base64 -w0 keys.json).")
        elif [[ -z "$key_b64" && -z "$config" && ! -f "$key_file" ]]; then
            problems+=("GCP_KEY is not set, nor GCP_CREDENTIAL_CONFIG, and GOOGLE_APPLICATION_CREDENTIALS ($key_file) is not an existing file: set GCP_CREDENTIAL_CONFIG (keyless, docs/saladcloud.md) or GCP_KEY to the base64 of the service-account key JSON (base64 -w0 keys.json).")
        fi
    fi
fi

if ((${#problems[@]} > 0)); then
    for p in "${problems[@]}"; do
        say "$p"
    done
    say "refusing to start: ${#problems[@]} required setting(s) missing (see docs/saladcloud.md)."
    exit 2
fi

# ---- 2. the credentials file ------------------------------------------------------------
# write_credentials VALUE KIND HINT: decodes VALUE (base64, or JSON as is when it starts with
# `{` and KIND is external_account) into $key_file, mode 600, atomically; exit 2 with one
# sentence (HINT) when it is not a JSON object of that "type".
write_credentials() {
    local value="$1" kind="$2" hint="$3"
    # Everything created from here on is readable by this user only (dir 700, file 600).
    umask 077
    local key_dir
    key_dir="$(dirname -- "$key_file")"
    if ! mkdir -p -- "$key_dir" 2>/dev/null; then
        say "cannot create $key_dir for the credentials file named by GOOGLE_APPLICATION_CREDENTIALS."
        exit 2
    fi
    # Decode next to the target, check, then rename: the file is either absent or complete,
    # never half-written. printf is a shell builtin, so the value never shows up in a
    # process's arguments (ps).
    if ! tmp="$(mktemp -- "$key_dir/.keys.json.XXXXXX" 2>/dev/null)"; then
        say "cannot write to $key_dir, the directory of GOOGLE_APPLICATION_CREDENTIALS."
        exit 2
    fi
    trap 'rm -f -- "$tmp"' EXIT
    local decoded=ok content trimmed
    if [[ "$kind" == external_account && "${value#"${value%%[![:space:]]*}"}" == \{* ]]; then
        printf '%s' "$value" >"$tmp"
    else
        printf '%s' "$value" | base64 --decode >"$tmp" 2>/dev/null || decoded=bad
    fi
    if [[ "$decoded" == ok ]]; then
        # A JSON object (first and last non-blank characters are { and }) naming its type.
        # The worker's credentials loader reports anything subtler.
        {
            content="$(<"$tmp")"
        } 2>/dev/null
        trimmed="${content#"${content%%[![:space:]]*}"}"
        trimmed="${trimmed%"${trimmed##*[![:space:]]}"}"
        if [[ "$trimmed" != \{*\} ]]; then
            decoded=bad
        elif [[ "$kind" == external_account && "$trimmed" != *'"external_account"'* ]]; then
            decoded=bad
        fi
        unset content trimmed
    fi
    if [[ "$decoded" != ok ]]; then
        say "$hint"
        exit 2
    fi
    chmod 600 -- "$tmp"
    mv -f -- "$tmp" "$key_file"
    trap - EXIT
}

if [[ "$wants_help" == true ]]; then
    : # nothing to write for --help / --version
elif [[ -n "$emulator" ]]; then
    say "PUBSUB_EMULATOR_HOST is set ($emulator): no credentials needed, not writing a key file."
elif [[ -n "$config" ]]; then
    write_credentials "$config" external_account \
        "GCP_CREDENTIAL_CONFIG is not an external_account credential configuration: set it to the JSON that gcloud iam workload-identity-pools create-cred-config writes (docs/saladcloud.md), or base64 of it."
    # The token source is the instance metadata service, which must be reached directly.
    for v in NO_PROXY no_proxy; do
        export "$v=${!v:+${!v},}169.254.169.254"
    done
    say "wrote the workload identity configuration from GCP_CREDENTIAL_CONFIG to $key_file: no key, tokens come from the instance metadata service."
elif [[ -z "$key_b64" ]]; then
    say "GCP_KEY is not set: using the existing key file $key_file."
else
    write_credentials "$key_b64" service_account \
        "GCP_KEY does not decode to a JSON service-account key: set it to the base64 of the key file, e.g. base64 -w0 keys.json."
    say "wrote the service-account key from GCP_KEY to $key_file (mode 600)."
fi

# ---- 3. become the worker ---------------------------------------------------------------
# The key stays in the file only: the worker (and anything it might spawn) never sees it.
unset GCP_KEY GCP_CREDENTIAL_CONFIG key_b64 config
exec "${TASKHOST_BIN:-taskhost}" worker "$@"
