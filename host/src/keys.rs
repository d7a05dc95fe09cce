//! Every storage key taskhost reads or writes, built in this one module, only from validated
//! ids ([`JobId`], [`ModuleHash`], [`ModuleTag`]): no other module formats a key.
//!
//! | key | what |
//! |---|---|
//! | `modules/<sha256-hex>.wasm` | a task module, create-only |
//! | `modules/<sha256-hex>.json` | the module's push record (when, by which host, its world) |
//! | `modules/tags/<name>/<tag>` | a tag: which module `NAME:TAG` names (moved by `If-Match`) |
//! | `jobs/<job_id>/checkpoint` | the job's checkpoint: its fence and lease record |
//! | `jobs/<job_id>/result` | the job's result, create-only |
//! | `jobs/<job_id>/error` | why the job was dead-lettered |
//! | `jobs/<job_id>/manifest` | the finished job's artifacts (JSON), written just before the result |
//! | `jobs/<job_id>/artifacts/<name>` | an artifact of the job |
//! | `jobs/<job_id>/cancelled`, `jobs/<job_id>/paused` | the listing's marker of a user's cancel or pause |
//! | `jobs/<job_id>/work` | the job's module and document as `submit` published them (`job::StoredWork`) |
//! | `inputs/<sha256-hex>` | an input uploaded by `taskhost submit --input`, create-only |
//! | `taskhost-probe/<name>` | a worker's startup write check (deleted at once) |
//! | `submitted/<batch_id>` | the job ids of one batch `submit` published and their module (`status::batch`) |
//! | `workers/<worker_id>` | a worker's heartbeat (JSON), deleted when it exits cleanly |
//! | `poison/jobs/<job_id>/<message>` | why a message naming this job was dead-lettered at parse time |
//! | `poison/messages/<message>` | the same for a message without a valid job id |

use crate::ids::{BatchId, JobId, ModuleHash, ModuleTag};

/// Where every job's objects live.
pub const JOBS_PREFIX: &str = "jobs/";

/// Where modules, their records and their tags live.
pub const MODULES_PREFIX: &str = "modules/";
/// Where tags live (inside [`MODULES_PREFIX`]; no module hash is `tags`).
pub const TAGS_PREFIX: &str = "modules/tags/";

/// The module's bytes (a component), create-only.
pub fn module(hash: &ModuleHash) -> String {
    format!("{MODULES_PREFIX}{}.wasm", hash.hex())
}

/// The module's push record (JSON, `crate::registry::ModuleRecord`).
pub fn module_record(hash: &ModuleHash) -> String {
    format!("{MODULES_PREFIX}{}.json", hash.hex())
}

/// The module a `modules/<hex>.wasm` key names; `None` for any other key.
pub fn module_of_key(key: &str) -> Option<ModuleHash> {
    let hex = key.strip_prefix(MODULES_PREFIX)?.strip_suffix(".wasm")?;
    format!("sha256:{hex}").parse().ok()
}

/// The tag record of `NAME:TAG` (JSON, `crate::registry::TagRecord`).
pub fn tag(tag: &ModuleTag) -> String {
    format!("{TAGS_PREFIX}{}/{}", tag.name(), tag.tag())
}

/// The tag a `modules/tags/<name>/<tag>` key names; `None` for any other key.
pub fn tag_of_key(key: &str) -> Option<ModuleTag> {
    let (name, tag) = key.strip_prefix(TAGS_PREFIX)?.split_once('/')?;
    format!("{name}:{tag}").parse().ok()
}

/// The job's checkpoint: its fence and lease record, and the task's saved state.
pub fn checkpoint(job: &JobId) -> String {
    format!("{JOBS_PREFIX}{job}/checkpoint")
}

/// The job's result document, create-only: once it exists the job is done.
pub fn result(job: &JobId) -> String {
    format!("{JOBS_PREFIX}{job}/result")
}

/// Why the job was dead-lettered (plain text, overwritten).
pub fn error(job: &JobId) -> String {
    format!("{JOBS_PREFIX}{job}/error")
}

/// The finished job's artifacts (JSON, `crate::files::Manifest`), written just before the
/// result.
pub fn manifest(job: &JobId) -> String {
    format!("{JOBS_PREFIX}{job}/manifest")
}

/// The listing's marker of a cancelled (`"cancel"`) or paused (`"pause"`) job, written by
/// `job cancel` / `job pause` after the checkpoint header's record (which is what counts).
pub fn stopped(job: &JobId, action: &str) -> String {
    let name = if action == "pause" {
        "paused"
    } else {
        "cancelled"
    };
    format!("{JOBS_PREFIX}{job}/{name}")
}

/// The job's work as `submit` published it (JSON, `crate::job::StoredWork`): what `job
/// resume`, `job retry` and `dead-letter replay` publish again.
pub fn work(job: &JobId) -> String {
    format!("{JOBS_PREFIX}{job}/work")
}

/// Where a job's artifacts live.
pub fn artifacts_prefix(job: &JobId) -> String {
    format!("{JOBS_PREFIX}{job}/artifacts/")
}

/// An artifact's key; `name` is checked by [`crate::ids::check_name`].
pub fn artifact(job: &JobId, name: &str) -> String {
    format!("{}{name}", artifacts_prefix(job))
}

/// An uploaded input, named by the sha256 (hex) of its bytes.
pub fn input(sha256_hex: &str) -> String {
    format!("inputs/{sha256_hex}")
}

/// The sha256 an uploaded input's key names (`inputs/<64 lower-case hex>`, as [`input`]
/// makes it); `None` for any other key.
pub fn input_sha256(key: &str) -> Option<[u8; 32]> {
    let hex = key.strip_prefix("inputs/")?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

/// Where `submit` records the job ids of each batch it publishes.
pub const SUBMITTED_PREFIX: &str = "submitted/";

/// The record of one published batch: its job ids and their module (`status::batch`).
pub fn submitted(batch: &BatchId) -> String {
    format!("{SUBMITTED_PREFIX}{batch}")
}

/// Where workers publish their heartbeats.
pub const WORKERS_PREFIX: &str = "workers/";

/// A worker's heartbeat record; `None` unless the id is made of `[A-Za-z0-9._-]` (checked by
/// [`crate::ids::check_name`]; a worker id is).
pub fn worker(id: &str) -> Option<String> {
    crate::ids::check_name(id).ok()?;
    Some(format!("{WORKERS_PREFIX}{id}"))
}

/// Where workers record the messages they dead-lettered at parse time (poison).
pub const POISON_PREFIX: &str = "poison/";
/// Poison records of messages that named a valid job id: `<this><job_id>/<message>`.
pub const POISON_JOBS_PREFIX: &str = "poison/jobs/";
/// Poison records of messages without a valid job id: `<this><message>`.
pub const POISON_MESSAGES_PREFIX: &str = "poison/messages/";

/// The record of a poison message (`message_id` as the queue gave it: a name made of
/// `[A-Za-z0-9._-]` is used as is, anything else by the hex of its sha256's first 16 bytes),
/// under its job when the message named a valid one.
pub fn poison(job: Option<&JobId>, message_id: &str) -> String {
    use sha2::Digest as _;
    let message = match crate::ids::check_name(message_id) {
        Ok(()) => message_id.to_owned(),
        Err(_) => hex::encode(&sha2::Sha256::digest(message_id.as_bytes())[..16]),
    };
    match job {
        Some(job) => format!("{POISON_JOBS_PREFIX}{job}/{message}"),
        None => format!("{POISON_MESSAGES_PREFIX}{message}"),
    }
}

/// Where the poison records of messages naming `job` live (`poison/jobs/<job_id>/`).
pub fn poison_of(job: &JobId) -> String {
    format!("{POISON_JOBS_PREFIX}{job}/")
}

/// Prefixes of the host's own objects: a job's input key may not start with one.
pub const RESERVED_PREFIXES: [&str; 6] = [
    JOBS_PREFIX,
    MODULES_PREFIX,
    PROBE_PREFIX,
    SUBMITTED_PREFIX,
    WORKERS_PREFIX,
    POISON_PREFIX,
];

/// Where probe objects are.
pub const PROBE_PREFIX: &str = "taskhost-probe/";

/// A probe object's key; `name` must be made of `[A-Za-z0-9._-]` (a worker id is).
pub fn probe(name: &str) -> String {
    format!("{PROBE_PREFIX}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key built here reads back as what built it; other keys read as nothing.
    #[test]
    fn registry_keys_round_trip() {
        let h = ModuleHash::of(b"m");
        assert_eq!(module_of_key(&module(&h)), Some(h));
        assert_eq!(module_of_key(&module_record(&h)), None);
        let t: ModuleTag = "prime:v2".parse().unwrap();
        assert_eq!(tag(&t), "modules/tags/prime/v2");
        assert_eq!(tag_of_key(&tag(&t)), Some(t));
        for other in [
            "modules/tags/prime",
            "modules/tags/a/b/c",
            "modules/x.wasm",
            "jobs/a/result",
        ] {
            assert_eq!(tag_of_key(other), None, "{other}");
            assert_eq!(module_of_key(other), None, "{other}");
        }
    }

    /// An uploaded input's key names its sha256; nothing else does.
    #[test]
    fn input_keys_name_their_sha256() {
        let sha = [0xab; 32];
        assert_eq!(input_sha256(&input(&hex::encode(sha))), Some(sha));
        let upper = format!("inputs/{}", hex::encode_upper(sha));
        let short = format!("inputs/{}", &hex::encode(sha)[1..]);
        let nested = format!("inputs/x/{}", hex::encode(sha));
        let other = format!("in/{}", hex::encode(sha));
        for key in [upper, short, nested, other, "inputs/".into()] {
            assert_eq!(input_sha256(&key), None, "{key}");
        }
    }
}
