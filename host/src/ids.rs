//! Validated identifiers: a [`JobId`], a [`ModuleHash`] or an [`InputName`] can only hold a
//! valid value, so code that builds storage keys from them (or shows them to a task) never
//! sees a path separator or an empty string.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Longest job id accepted (docs/design.md section 3: 1..=200 characters).
pub const MAX_JOB_ID_LEN: usize = 200;

/// A job id: 1..=200 characters from `[A-Za-z0-9._-]`, and not `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for JobId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_JOB_ID_LEN {
            return Err(format!(
                "job_id must be 1 to {MAX_JOB_ID_LEN} characters long (got {})",
                s.len()
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "job_id may only contain A-Z a-z 0-9 . _ - (found {c:?})"
            ));
        }
        if s == "." || s == ".." {
            return Err("job_id may not be \".\" or \"..\"".into());
        }
        Ok(JobId(s.to_owned()))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sha256 of a task module's bytes; written `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleHash([u8; 32]);

impl ModuleHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ModuleHash(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for ModuleHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hexpart = s.strip_prefix("sha256:").ok_or_else(|| {
            format!("module reference {s:?} must look like sha256:<64 lowercase hex digits>")
        })?;
        if hexpart.len() != 64
            || !hexpart
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "module reference {s:?} must look like sha256:<64 lowercase hex digits>"
            ));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hexpart, &mut out).map_err(|e| e.to_string())?;
        Ok(ModuleHash(out))
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        let long = "a".repeat(201);
        let cases: &[(&str, bool)] = &[
            ("job-0", true),
            ("A.b_c-9", true),
            (&long[..200], true),
            (&long, false),
            ("", false),
            ("a/b", false),
            ("..", false),
            ("a b", false),
            ("é", false),
        ];
        for (input, ok) in cases {
            assert_eq!(input.parse::<JobId>().is_ok(), *ok, "{input:?}");
        }
    }

    /// A task's name may be up to `MAX_CALL_BYTES` long: the error about it stays short
    /// and on one line (before the fix, `Debug` of 1 MiB of `\x01` made a 6 MiB error).
    #[test]
    fn a_huge_invalid_name_makes_a_short_error() {
        for name in [
            "\x01".repeat(1 << 20),
            "x".repeat(1 << 20),
            "日".repeat(1 << 18),
        ] {
            let e = check_name(&name).unwrap_err();
            assert!(e.len() < 1024, "{} bytes", e.len());
            assert!(!e.contains('\x01') && !e.contains('\n'), "{e}");
        }
        let e = check_name("a\nb").unwrap_err();
        assert!(e.starts_with("`a\\nb` is not a valid name"), "{e}");
        assert_eq!(
            shown_name(&"ab".repeat(200)),
            format!("{}...", "ab".repeat(100))
        );
    }

    #[test]
    fn module_hashes() {
        let h = ModuleHash::of(b"abc");
        assert_eq!(
            h.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.to_string().parse::<ModuleHash>().unwrap(), h);
        for bad in [
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "sha256:ba78",
            "md5:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ] {
            assert!(bad.parse::<ModuleHash>().is_err(), "{bad}");
        }
    }
}

/// Where a job stands, as `status` derives it from what is stored (docs/design.md §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Nothing stored yet: no worker has started it.
    Queued,
    /// A checkpoint whose owner's lease is live.
    Running,
    /// A checkpoint with no live lease: it waits for its next delivery.
    Waiting,
    /// Its result is stored.
    Done,
    /// Its error is stored (dead-lettered).
    Failed,
    /// A user cancelled it (`job cancel`): no worker runs it again.
    Cancelled,
    /// A user paused it (`job pause`): its checkpoint waits for `job resume`.
    Paused,
}

impl JobState {
    /// The state's name, as `status` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Waiting => "waiting",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Paused => "paused",
        }
    }

    /// Done, failed or cancelled: nothing more will happen to it by itself.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

impl FromStr for JobState {
    type Err = String;

    /// A state by its name (`queued`, `running`, `waiting`, `done`, `failed`, `cancelled`,
    /// `paused`).
    fn from_str(s: &str) -> Result<JobState, String> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Waiting,
            JobState::Done,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Paused,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| {
            format!(
                "{s:?} is not a state (queued, running, waiting, done, failed, cancelled, paused)"
            )
        })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A worker's id as checkpoint headers record it (docs/design.md §4, `owner`):
/// `<host>-<pid>-<6 random hex>`. The random part keeps ids unique where every container's
/// process is PID 1. Formatted and read only here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerId(String);

impl WorkerId {
    /// A new id for this process on `host` (empty: `worker`).
    pub fn new(host: &str) -> WorkerId {
        let mut b = [0u8; 3];
        getrandom::fill(&mut b).expect("the OS random source works");
        let host = if host.is_empty() { "worker" } else { host };
        WorkerId(format!("{host}-{}-{}", std::process::id(), hex::encode(b)))
    }

    /// The process id an `owner` names, if it is a worker id.
    pub fn pid_of(owner: &str) -> Option<u32> {
        let mut parts = owner.rsplit('-');
        let random = parts.next()?;
        let pid = parts.next()?;
        (random.len() == 6 && random.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| pid.parse().ok())
            .flatten()
    }

    /// The id: `<host>-<pid>-<6 hex digits>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of one batch of jobs `submit` published (`<ms since epoch>-<8 random hex>`): names
/// its record, [`crate::keys::submitted`]. Sorts by time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchId(String);

impl BatchId {
    /// A new id, unique with overwhelming probability.
    pub fn new() -> BatchId {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).expect("the OS random source works");
        BatchId(format!("{:013}-{}", crate::time::now_ms(), hex::encode(b)))
    }
}

impl Default for BatchId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod worker_id_tests {
    use super::WorkerId;

    #[test]
    fn a_worker_id_names_its_process() {
        let id = WorkerId::new("node-a-1");
        assert_eq!(WorkerId::pid_of(id.as_str()), Some(std::process::id()));
        assert!(id.as_str().starts_with("node-a-1-"));
        assert!(WorkerId::new("").as_str().starts_with("worker-"));
        for owner in ["run-12", "", "a-b-c", "host-12-zzzzzz", "host-x-abcdef"] {
            assert_eq!(WorkerId::pid_of(owner), None, "{owner}");
        }
        assert_eq!(WorkerId::pid_of("h-7-0a1b2c"), Some(7));
    }
}

/// The name a job's message gives one of its inputs (the only thing the task sees of it,
/// never its key): valid by construction, as [`check_name`] says.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InputName(String);

impl InputName {
    /// The name as the message gives it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InputName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_name(s)?;
        Ok(InputName(s.to_owned()))
    }
}

impl fmt::Display for InputName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Looks an input up by the name a task passes (a map keyed by `InputName` answers `&str`).
impl std::borrow::Borrow<str> for InputName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Longest input or artifact name (bytes).
pub const MAX_NAME_LEN: usize = 200;

/// Checks an input or artifact name: 1..=200 characters from `[A-Za-z0-9._-]`, not starting
/// with `.`. The error quotes at most [`MAX_NAME_LEN`] bytes of `name` ([`shown_name`]),
/// whatever its length: a task's name may be up to `MAX_CALL_BYTES` long.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a valid name (1 to {MAX_NAME_LEN} characters from [A-Za-z0-9._-], not starting with '.')",
            shown_name(name)
        ))
    }
}

/// A name a task passed, for an error or a log line: escaped as task text
/// ([`Inert`](crate::inert::Inert)), of at most [`MAX_NAME_LEN`] bytes (cut between
/// characters, `...` marking the cut). So what the host writes about a name is bounded
/// however long the task made it; a valid name is shown whole.
pub fn shown_name(name: &str) -> String {
    let prefix = crate::inert::cut(name, MAX_NAME_LEN);
    let mut shown = crate::inert::Inert(prefix).to_string();
    if shown.len() > MAX_NAME_LEN || prefix.len() < name.len() {
        shown.truncate(crate::inert::cut(&shown, MAX_NAME_LEN).len());
        shown.push_str("...");
    }
    shown
}

/// Longest module name, and longest tag, accepted (`NAME:TAG`).
pub const MAX_TAG_PART_LEN: usize = 128;

/// A movable name of a module, `NAME:TAG` (docs/design.md §4, `modules/tags/`): NAME and
/// TAG are each 1..=128 characters from `[A-Za-z0-9._-]`, starting with a letter or a
/// digit. `NAME` alone means `NAME:latest`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleTag {
    name: String,
    tag: String,
}

/// The tag `NAME` alone stands for.
pub const DEFAULT_TAG: &str = "latest";

impl ModuleTag {
    /// The name part (before the `:`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag part (after the `:`).
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

fn check_tag_part(what: &str, s: &str) -> Result<(), String> {
    let ok = (1..=MAX_TAG_PART_LEN).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "module {what} {s:?} must be 1 to {MAX_TAG_PART_LEN} characters from [A-Za-z0-9._-], starting with a letter or digit"
        ))
    }
}

impl FromStr for ModuleTag {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, tag) = s.split_once(':').unwrap_or((s, DEFAULT_TAG));
        if name == "sha256" {
            return Err(format!(
                "{s:?} is not a module name: `sha256` names a hash (sha256:<64 lowercase hex>)"
            ));
        }
        check_tag_part("name", name)?;
        check_tag_part("tag", tag)?;
        Ok(ModuleTag {
            name: name.to_owned(),
            tag: tag.to_owned(),
        })
    }
}

impl fmt::Display for ModuleTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// How a user names a module: its hash (immutable) or a tag (movable, resolved to a hash
/// once, where it is used: `submit`, a worker's start).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModuleRef {
    /// `sha256:<hex>`: that module, always.
    Hash(ModuleHash),
    /// `NAME:TAG`: whichever module the tag names when it is resolved.
    Tag(ModuleTag),
}

impl FromStr for ModuleRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("sha256:") {
            return s.parse().map(ModuleRef::Hash);
        }
        s.parse()
            .map(ModuleRef::Tag)
            .map_err(|e| format!("{e} (a module is sha256:<64 lowercase hex> or NAME[:TAG])"))
    }
}

impl fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModuleRef::Hash(h) => h.fmt(f),
            ModuleRef::Tag(t) => t.fmt(f),
        }
    }
}

#[cfg(test)]
mod module_ref_tests {
    use super::*;

    #[test]
    fn module_refs() {
        let long = "a".repeat(MAX_TAG_PART_LEN + 1);
        let hash = ModuleHash::of(b"abc").to_string();
        let cases: &[(&str, Option<&str>)] = &[
            ("prime", Some("prime:latest")),
            ("prime:v2", Some("prime:v2")),
            (
                "Prime-count.x_1:2025-01-01",
                Some("Prime-count.x_1:2025-01-01"),
            ),
            (&hash, Some(&hash)),
            (&long[1..], Some("")),
            (&long, None),
            ("", None),
            (":v1", None),
            ("prime:", None),
            ("prime:v1:v2", None),
            ("-prime", None),
            ("prime:.v1", None),
            ("a/b", None),
            ("prime:v 1", None),
            ("sha256:abc", None),
            ("sha256", None),
            ("é:v1", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<ModuleRef>();
            match want {
                None => assert!(got.is_err(), "{input:?} parsed as {got:?}"),
                Some("") => assert!(got.is_ok(), "{input:?}: {got:?}"),
                Some(w) => assert_eq!(got.unwrap().to_string(), *w, "{input:?}"),
            }
        }
    }
}
