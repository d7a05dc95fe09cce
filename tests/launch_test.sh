#!/usr/bin/env bash
# Tests launch.sh, the worker container's entrypoint, with a fake worker binary
# (TASKHOST_BIN) that records its PID, arguments and environment.
#
#   bash tests/launch_test.sh        (also run by `cargo test`: host/tests/all/launch.rs)
#
# Each run of launch.sh gets a clean environment (env -i) built here, so settings of the
# machine running the tests cannot leak in. Prints one line per check and, last,
# "N passed, M failed"; exits non-zero if any check failed.
set -uo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
launch="$here/../launch.sh"
work="$(mktemp -d)"
bg_pid=""
fake_pid=""
cleanup() {
    if [[ -n "$bg_pid" ]]; then
        kill -KILL "$bg_pid" 2>/dev/null || true
    fi
    # A fake worker that launch.sh started as a child (no exec) outlives it: stop it too.
    if [[ -n "$fake_pid" ]]; then
        kill -TERM "$fake_pid" 2>/dev/null || true
    fi
    rm -rf -- "$work"
}
trap cleanup EXIT

passed=0
failed=0
# check DESCRIPTION COMMAND...: runs the command, counts and prints the outcome.
check() {
    local desc="$1"
    shift
    if "$@"; then
        passed=$((passed + 1))
        printf 'ok     %s\n' "$desc"
    else
        failed=$((failed + 1))
        printf 'FAILED %s\n' "$desc"
        if [[ -n "${last:-}" ]]; then
            printf '       launch.sh stderr was:\n'
            sed 's/^/       | /' "$work/$last.err"
        fi
    fi
}

# ---- the fake worker ----------------------------------------------------------------------
fake="$work/fake-taskhost"
cat >"$fake" <<'EOF'
#!/usr/bin/env bash
# Stands in for `taskhost`: records $$ (the PID launch.sh was started with, if launch.sh
# exec'd it), its arguments and its environment; with FAKE_WAIT=1 waits for SIGTERM.
rec="${FAKE_RECORD:?}"
{
    echo "pid=$$"
    for a in "$@"; do echo "arg=$a"; done
} >"$rec.args"
env >"$rec.env"
if [[ "${FAKE_WAIT:-}" == 1 ]]; then
    sleeper=""
    trap 'echo "got TERM" >>"$rec.args"; kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep 60 &
    sleeper=$!
    echo ready >"$rec.ready"
    wait "$sleeper"
    echo "no TERM" >>"$rec.args"
    exit 1
fi
exit 0
EOF
chmod +x "$fake"
rec="$work/rec"
mkdir -p "$work/home"

key_json='{"type":"service_account","private_key":"secret-xyz"}'
key_b64="$(printf '%s' "$key_json" | base64 -w0)"
secret="secret-xyz"
required=(PROJECT_ID SUBSCRIPTION_ID R2_BUCKET_NAME R2_S3_ENDPOINT_URL R2_AWS_ACCESS_KEY_ID
    R2_AWS_SECRET_ACCESS_KEY)

# The environment of a correctly configured container, minus the credentials.
base_env=(
    "PATH=$PATH" "HOME=$work/home" "TASKHOST_BIN=$fake" "FAKE_RECORD=$rec"
    PROJECT_ID=proj SUBSCRIPTION_ID=jobs-sub R2_BUCKET_NAME=bucket
    R2_S3_ENDPOINT_URL=http://127.0.0.1:9 R2_AWS_ACCESS_KEY_ID=akid
    R2_AWS_SECRET_ACCESS_KEY=sak
)

# env_without NAME: base_env less NAME, into the array E.
env_without() {
    E=()
    local kv
    for kv in "${base_env[@]}"; do
        [[ "$kv" == "$1="* ]] || E+=("$kv")
    done
}

# launch NAME [VAR=VALUE...] [-- ARGS...]: runs launch.sh in env -i with E plus the
# assignments, stdout/stderr into $work/NAME.{out,err}; sets rc. E defaults to base_env.
launch_umask=022
launch() {
    last="$1"
    shift
    local envs=()
    while (($# > 0)) && [[ "$1" != -- ]]; do
        envs+=("$1")
        shift
    done
    if (($# > 0)); then shift; fi
    rm -f -- "$rec".*
    (
        umask "$launch_umask"
        exec env -i "${E[@]}" "${envs[@]}" bash "$launch" "$@"
    ) >"$work/$last.out" 2>"$work/$last.err"
    rc=$?
    E=("${base_env[@]}")
}
E=("${base_env[@]}")

# Small predicates for check.
rc_is() { [[ "$rc" == "$1" ]]; }
worker_started() { [[ -f "$rec.args" ]]; }
worker_not_started() { [[ ! -e "$rec.args" ]]; }
err_has() { grep -qF -- "$1" "$work/$last.err"; }
err_lacks() { ! grep -qF -- "$1" "$work/$last.err"; }
output_lacks() { ! grep -qF -- "$1" "$work/$last.out" "$work/$last.err"; }
err_lines_are() { [[ "$(grep -c 'is not set' "$work/$last.err")" == "$1" ]]; }
args_are() { [[ "$(grep '^arg=' "$rec.args" | tr '\n' ' ')" == "$1" ]]; }
worker_env_has() { grep -qxF -- "$1" "$rec.env"; }
worker_env_lacks_var() { ! grep -q "^$1=" "$rec.env"; }
worker_env_lacks_text() { ! grep -qF -- "$1" "$rec.env"; }
file_is() { [[ -f "$1" ]] && cmp -s "$1" <(printf '%s' "$2"); }
mode_is() { [[ "$(stat -c %a -- "$1")" == "$2" ]]; }
only_file_in() { [[ "$(ls -A -- "$1")" == "$2" ]]; }
# Combinations.
err_has_all() {
    local s
    for s in "$@"; do err_has "$s" || return 1; done
}
refused_naming() { rc_is 2 && err_has "$1" && worker_not_started; }
started() { rc_is 0 && worker_started; }
started_with() { started && args_are "$1"; }
one_sentence_naming() { [[ "$(wc -l <"$work/$last.err")" == 1 ]] && err_has_all "$@"; }
empty_dir() { [[ -d "$1" && -z "$(ls -A -- "$1")" ]]; }

echo "== (a) GCP_KEY decodes to GOOGLE_APPLICATION_CREDENTIALS, mode 600, never printed"
creds_dir="$work/creds dir/nested"
creds="$creds_dir/keys.json"
launch_umask=000 # launch.sh must not rely on the caller's umask
launch a "GCP_KEY=$key_b64" "GOOGLE_APPLICATION_CREDENTIALS=$creds" -- --max-failures 7
launch_umask=022
check "a: exit 0 (the worker's exit code)" rc_is 0
check "a: the key file holds exactly the decoded JSON" file_is "$creds" "$key_json"
check "a: the key file has mode 600" mode_is "$creds" 600
check "a: the directory launch.sh created has mode 700" mode_is "$creds_dir" 700
check "a: no temporary file left beside the key" only_file_in "$creds_dir" keys.json
check "a: the key text is not in launch.sh's output" output_lacks "$secret"
check "a: the base64 key is not in launch.sh's output" output_lacks "$key_b64"
check "a: the worker runs as 'worker' with the arguments passed through" \
    args_are "arg=worker arg=--max-failures arg=7 "
check "a: the worker sees GOOGLE_APPLICATION_CREDENTIALS" \
    worker_env_has "GOOGLE_APPLICATION_CREDENTIALS=$creds"

echo "== (b) GCP_KEY is not in the worker's environment"
check "b: no GCP_KEY variable" worker_env_lacks_var GCP_KEY
check "b: the key text is nowhere in the worker's environment" worker_env_lacks_text "$secret"
check "b: the base64 key is nowhere in the worker's environment" worker_env_lacks_text "$key_b64"

# A stale key file (say, from an image layer or an earlier start) is replaced, mode 600.
printf 'stale' >"$creds"
chmod 644 "$creds"
launch a2 "GCP_KEY=$key_b64" "GOOGLE_APPLICATION_CREDENTIALS=$creds"
check "a: an existing key file is replaced by GCP_KEY's key" file_is "$creds" "$key_json"
check "a: the replaced key file has mode 600" mode_is "$creds" 600

echo "== (c) each missing required setting: exit 2 and a sentence naming it"
for name in "${required[@]}"; do
    env_without "$name"
    launch "missing-$name" "GCP_KEY=$key_b64" "GOOGLE_APPLICATION_CREDENTIALS=$work/c/keys.json"
    check "c: $name unset: exit 2" rc_is 2
    check "c: $name unset: a sentence names it" err_has "$name is not set:"
    check "c: $name unset: only that setting is reported" err_lines_are 1
    check "c: $name unset: the worker is not started" worker_not_started
    env_without "$name"
    launch "empty-$name" "$name=" "GCP_KEY=$key_b64" "GOOGLE_APPLICATION_CREDENTIALS=$work/c/keys.json"
    check "c: $name empty: exit 2 and a sentence naming it" \
        refused_naming "$name is not set:"
done

launch no-creds
check "c: no GCP_KEY, no GOOGLE_APPLICATION_CREDENTIALS: exit 2" rc_is 2
check "c: ... a sentence names GCP_KEY and says how to make it" \
    err_has_all "GCP_KEY is not set" "base64 -w0 keys.json"
check "c: ... the worker is not started" worker_not_started

launch no-file "GOOGLE_APPLICATION_CREDENTIALS=$work/absent/keys.json"
check "c: no GCP_KEY, GOOGLE_APPLICATION_CREDENTIALS names no file: exit 2" rc_is 2
check "c: ... a sentence names GCP_KEY and the missing file" \
    err_has_all "GCP_KEY is not set" "$work/absent/keys.json"

launch no-path "GCP_KEY=$key_b64"
check "c: GCP_KEY without GOOGLE_APPLICATION_CREDENTIALS: exit 2" rc_is 2
check "c: ... a sentence names GOOGLE_APPLICATION_CREDENTIALS" \
    err_has "GOOGLE_APPLICATION_CREDENTIALS is not set:"
check "c: ... the key is not printed" output_lacks "$secret"

E=("PATH=$PATH" "TASKHOST_BIN=$fake" "FAKE_RECORD=$rec")
launch nothing
check "c: nothing set: exit 2" rc_is 2
check "c: nothing set: all 7 missing settings are listed, one sentence each" err_lines_are 7
for name in "${required[@]}" GCP_KEY; do
    check "c: nothing set: $name is named" err_has "$name is not set"
done
check "c: nothing set: the worker is not started" worker_not_started

# Not failures: the emulator needs no credentials; an existing key file needs no GCP_KEY;
# --help needs no settings at all.
launch emulator "PUBSUB_EMULATOR_HOST=127.0.0.1:8085" "GCP_KEY=$key_b64" \
    "GOOGLE_APPLICATION_CREDENTIALS=$work/emu/keys.json"
check "c: PUBSUB_EMULATOR_HOST set: starts without credentials" \
    started
check "c: PUBSUB_EMULATOR_HOST set: says why no key file is written" err_has "PUBSUB_EMULATOR_HOST is set"
check "c: PUBSUB_EMULATOR_HOST set: no key file is written" test ! -e "$work/emu"
check "c: PUBSUB_EMULATOR_HOST set: GCP_KEY is still not passed on" worker_env_lacks_var GCP_KEY

mkdir -p "$work/existing"
printf '%s' "$key_json" >"$work/existing/keys.json"
launch existing "GOOGLE_APPLICATION_CREDENTIALS=$work/existing/keys.json"
check "c: no GCP_KEY but an existing key file: starts" started
check "c: ... says it uses the existing file" err_has "using the existing key file"
check "c: ... leaves the file as it was" file_is "$work/existing/keys.json" "$key_json"

E=("PATH=$PATH" "TASKHOST_BIN=$fake" "FAKE_RECORD=$rec")
launch help -- --help
check "c: --help needs no settings: the worker gets 'worker --help'" \
    started_with "arg=worker arg=--help "

echo "== (d) a GCP_KEY that is not base64 JSON fails clearly"
bad_names=("not base64" "base64 of text, not JSON" "raw JSON, not base64" "base64 of a JSON array")
bad_keys=(
    "this is not base64!"
    "$(printf 'hello, %s' "$secret" | base64 -w0)"
    "$key_json"
    "$(printf '["%s"]' "$secret" | base64 -w0)"
)
for i in "${!bad_names[@]}"; do
    what="${bad_names[$i]}"
    dir="$work/bad$i"
    launch "bad$i" "GCP_KEY=${bad_keys[$i]}" "GOOGLE_APPLICATION_CREDENTIALS=$dir/keys.json"
    check "d: $what: exit 2" rc_is 2
    check "d: $what: one sentence naming GCP_KEY and how to make it" \
        one_sentence_naming "GCP_KEY does not decode" "base64 -w0"
    check "d: $what: the key is not printed" output_lacks "$secret"
    check "d: $what: the worker is not started" worker_not_started
    check "d: $what: no key file or temporary file is left" empty_dir "$dir"
done

printf 'x' >"$work/a-file"
launch unwritable "GCP_KEY=$key_b64" "GOOGLE_APPLICATION_CREDENTIALS=$work/a-file/keys.json"
check "d: the key's directory cannot be made: exit 2" rc_is 2
check "d: ... one sentence naming GOOGLE_APPLICATION_CREDENTIALS" \
    one_sentence_naming "GOOGLE_APPLICATION_CREDENTIALS"
check "d: ... the worker is not started" worker_not_started

echo "== (f) GCP_CREDENTIAL_CONFIG: the keyless workload identity configuration"
wif_json='{"type":"external_account","audience":"//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/salad/providers/salad","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","token_url":"https://sts.googleapis.com/v1/token","credential_source":{"url":"http://169.254.169.254/v1/token","headers":{"Metadata":"true"},"format":{"type":"json","subject_token_field_name":"jwt"}}}'
wif_file="$work/f/creds.json"
launch f "GCP_CREDENTIAL_CONFIG=$wif_json" "GOOGLE_APPLICATION_CREDENTIALS=$wif_file" \
    "NO_PROXY=internal.example"
check "f: JSON as is: starts" started
check "f: the file holds exactly the configuration" file_is "$wif_file" "$wif_json"
check "f: the file has mode 600" mode_is "$wif_file" 600
check "f: no GCP_CREDENTIAL_CONFIG in the worker's environment" \
    worker_env_lacks_var GCP_CREDENTIAL_CONFIG
check "f: NO_PROXY keeps its value and adds the metadata service" \
    worker_env_has "NO_PROXY=internal.example,169.254.169.254"
check "f: no_proxy names the metadata service" worker_env_has "no_proxy=169.254.169.254"
check "f: says no key is used" err_has "no key"
launch f64 "GCP_CREDENTIAL_CONFIG=$(printf '%s' "$wif_json" | base64 -w0)" \
    "GOOGLE_APPLICATION_CREDENTIALS=$wif_file"
check "f: base64 of it: starts" started
check "f: base64 of it: the file holds the decoded configuration" file_is "$wif_file" "$wif_json"
launch fboth "GCP_CREDENTIAL_CONFIG=$wif_json" "GCP_KEY=$key_b64" \
    "GOOGLE_APPLICATION_CREDENTIALS=$work/fboth/creds.json"
check "f: both GCP_KEY and GCP_CREDENTIAL_CONFIG: exit 2 naming both" \
    refused_naming "GCP_KEY and GCP_CREDENTIAL_CONFIG are both set"
check "f: ... the key is not printed" output_lacks "$secret"
launch fkey "GCP_CREDENTIAL_CONFIG=$key_json" "GOOGLE_APPLICATION_CREDENTIALS=$work/fkey/creds.json"
check "f: a service-account key as GCP_CREDENTIAL_CONFIG: exit 2" rc_is 2
check "f: ... one sentence naming GCP_CREDENTIAL_CONFIG" \
    one_sentence_naming "GCP_CREDENTIAL_CONFIG is not an external_account"
check "f: ... the key is not printed" output_lacks "$secret"
check "f: ... no file is left" empty_dir "$work/fkey"
launch fnopath "GCP_CREDENTIAL_CONFIG=$wif_json"
check "f: without GOOGLE_APPLICATION_CREDENTIALS: exit 2 naming it" \
    refused_naming "GOOGLE_APPLICATION_CREDENTIALS is not set:"

echo "== (e) exec: the worker is launch.sh's process, and SIGTERM reaches it"
rm -f -- "$rec".*
last="exec"
(
    exec env -i "${base_env[@]}" "GCP_KEY=$key_b64" \
        "GOOGLE_APPLICATION_CREDENTIALS=$work/e/keys.json" FAKE_WAIT=1 bash "$launch"
) >"$work/exec.out" 2>"$work/exec.err" &
bg_pid=$!
for _ in $(seq 1 200); do
    [[ -f "$rec.ready" ]] && break
    sleep 0.05
done
check "e: the worker started and waits for a signal" test -f "$rec.ready"
fake_pid="$(sed -n 's/^pid=//p' "$rec.args" 2>/dev/null)"
check "e: the worker's PID is the PID launch.sh was started with" \
    grep -qx "pid=$bg_pid" "$rec.args"
kill -TERM "$bg_pid" 2>/dev/null
wait "$bg_pid"
rc=$?
bg_pid=""
check "e: after SIGTERM to that PID the process exits 0 (the worker's own exit)" rc_is 0
check "e: the worker recorded 'got TERM'" grep -qx "got TERM" "$rec.args"
check "e: the key is not in launch.sh's output" output_lacks "$secret"

echo "$passed passed, $failed failed"
((failed == 0))
