//! The checkpoint object's bytes: magic `THCP`, a version, a flag (task data or none), the
//! JSON [`Header`]'s length and the header (attempts, failures, progress, fuel, owner and its
//! lease, the job's binding, the [`ArtifactRecord`]s, a per-write nonce), then the task's
//! bytes. [`encode`] and [`decode`] are the only code that knows the layout (docs/design.md, "Storage layout").

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"THCP";
const FORMAT_VERSION: u8 = 1;

/// The bookkeeping the host keeps beside the task's bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Runs started (1 = the first run). Incremented by every claim.
    pub attempts: u32,
    /// Runs that ended in a trap (panic, fuel, memory, timeout). Interruptions don't count.
    pub failures: u32,
    /// Runs in a row that started and did not end cleanly (their worker was killed or
    /// crashed, a host function panicked, or the job was lost) with no save between: every
    /// claim adds 1, a save sets it to 1 (this run), a clean end to 0. Past `MAX_CRASHES`
    /// the job is dead-lettered (`exec`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crashes: u32,
    /// Runs in a row whose task failed after the store failed its own input or artifact
    /// calls while the checkpoint's writes went through (`exec`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub storage_failed_runs: u32,
    /// Last progress the task reported: (done, total).
    #[serde(default)]
    pub progress: Option<(u64, u64)>,
    /// Fuel consumed over all runs: the ended ones, and in the writes of a running job the
    /// running one's so far (a run killed mid-way counts up to its last write).
    #[serde(default)]
    pub fuel_used: u64,
    /// The task's wall time over all runs that ended, ms.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub wall_ms: u64,
    /// Host compute the task asked for (wasi-nn loads and inference) over all runs that
    /// ended, ms: part of `wall_ms`, unseen by fuel. Omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub host_compute_ms: u64,
    /// Input bytes the task read, over all runs that ended.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub input_bytes: u64,
    /// Artifact bytes the task uploaded, over all runs that ended.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub artifact_bytes: u64,
    /// Checkpoint bytes written after the claims, over all runs that ended.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub checkpoint_bytes: u64,
    /// Runs that did not end cleanly, over the job's life (counted by the claim after
    /// them: `crashes` was not 0). Omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crashed_runs: u32,
    /// The reason of the last failure, if any.
    #[serde(default)]
    pub last_failure: Option<String>,
    /// Which worker wrote this version (for `status`).
    #[serde(default)]
    pub owner: String,
    /// Until when the owner's lease holds (ms since the Unix epoch); 0: released (a header
    /// written before this field existed reads as released).
    #[serde(default)]
    pub lease_until_ms: u64,
    /// The owner's lease period (its ack deadline) in ms; 0: unknown.
    #[serde(default)]
    pub lease_period_ms: u64,
    /// The work the job is bound to: the module (`sha256:<hex>`)...
    #[serde(default)]
    pub module: String,
    /// ... and the sha256 of its input (empty in checkpoints written before jobs were bound).
    #[serde(default)]
    pub input_sha256: String,
    /// The job's artifacts: finished ones, and how far open ones are durable (the state at
    /// the task's last `save`; see `files`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactRecord>,
    /// A user's request to stop the job (`taskhost job cancel` / `job pause`): written by
    /// the command `If-Match` the tag it read, so the owner's next write is refused and it
    /// stops; a claim that finds it does not run the job (docs/design.md "Job control").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<Control>,
    /// Written by a claim that starts the job over (`"restart": true`) before it deletes the
    /// old work's result, manifest, error and the listing's markers: while it is set, a
    /// result under the job's key may be the old work's and is not trusted. The claim clears
    /// it once they are gone, before the run; a claim that finds it set (its claimer died in
    /// between) deletes them again (docs/design.md "A job is bound to its work").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub old_outputs: bool,
    /// Milliseconds since the Unix epoch at this write.
    #[serde(default)]
    pub updated_ms: u64,
    /// Random per write, so every write changes the ETag even when nothing else changed.
    pub nonce: String,
}

/// A user's request to stop a job, as the checkpoint header records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// Cancel or pause.
    pub action: Action,
    /// Who asked (`<user>@<host>` of the command, or what `--by` said).
    pub by: String,
    /// When the command recorded it (ms since the Unix epoch, the command's clock).
    pub at_ms: u64,
}

/// What a [`Control`] record asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Stop the job for good (`cancelled`).
    Cancel,
    /// Stop the job, keeping its checkpoint, until `job resume` clears the record (`paused`).
    Pause,
}

impl Action {
    /// The action's name: `cancel` or `pause`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Pause => "pause",
        }
    }
}

/// An artifact as a checkpoint header records it: finished (its final size and tag), or
/// open with the parts uploaded so far (what `files::Artifacts::resume` continues from).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// The artifact's name (its key is `jobs/<id>/artifacts/<name>`).
    pub name: String,
    /// Finished: the artifact's size. Open: its durable bytes (the parts uploaded).
    pub size: u64,
    /// Whether `finish` made it an object; `false`: still open, to be continued or discarded.
    #[serde(default)]
    pub finished: bool,
    /// Finished: the object's tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Open: the multipart upload holding the parts, if one was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
    /// Open: the parts' tags, part 1 first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

/// What a job cost over all its runs: the accounting `status` shows. While the job runs (or
/// after it failed) it is read from the checkpoint header ([`Header::usage`]); a done job's
/// is the note kept with its result (docs/design.md §4), written as this JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Fuel the task consumed, over all runs.
    pub fuel: u64,
    /// Wall-clock time of the runs, in ms (from each run's start to its end).
    pub wall_ms: u64,
    /// Host compute (wasi-nn graph loads and inference) within `wall_ms`, in ms.
    #[serde(default)]
    pub host_compute_ms: u64,
    /// Runs started (the header's `attempts`).
    pub attempts: u32,
    /// Runs that ended without a clean end (the worker killed or crashed).
    pub crashes: u32,
    /// Bytes of checkpoint objects written, over all runs.
    pub checkpoint_bytes: u64,
    /// Input bytes the task read, over all runs.
    pub input_bytes: u64,
    /// Artifact bytes the task wrote, over all runs.
    pub artifact_bytes: u64,
}

/// One run's figures, added to the header's totals when the run ends ([`Header::add_run`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunUsage {
    /// Fuel this run consumed.
    pub fuel: u64,
    /// This run's wall-clock time, in ms.
    pub wall_ms: u64,
    /// This run's host compute (wasi-nn), in ms.
    pub host_compute_ms: u64,
    /// Bytes of checkpoint objects this run wrote.
    pub checkpoint_bytes: u64,
    /// Input bytes this run read.
    pub input_bytes: u64,
    /// Artifact bytes this run wrote.
    pub artifact_bytes: u64,
}

impl Header {
    /// Whether a result or error stored under the job's keys is this work's: not while a
    /// start-over has yet to delete the old work's ([`Header::old_outputs`]). The one rule
    /// every reader of a result's existence asks (a listing, which reads no header, cannot).
    pub fn outputs_current(&self) -> bool {
        !self.old_outputs
    }

    /// Adds an ended run's figures to the totals.
    pub fn add_run(&mut self, run: &RunUsage) {
        self.fuel_used = self.fuel_used.saturating_add(run.fuel);
        self.wall_ms = self.wall_ms.saturating_add(run.wall_ms);
        self.host_compute_ms = self.host_compute_ms.saturating_add(run.host_compute_ms);
        self.checkpoint_bytes = self.checkpoint_bytes.saturating_add(run.checkpoint_bytes);
        self.input_bytes = self.input_bytes.saturating_add(run.input_bytes);
        self.artifact_bytes = self.artifact_bytes.saturating_add(run.artifact_bytes);
    }

    /// The totals this header records.
    pub fn usage(&self) -> Usage {
        Usage {
            fuel: self.fuel_used,
            wall_ms: self.wall_ms,
            host_compute_ms: self.host_compute_ms,
            attempts: self.attempts,
            crashes: self.crashed_runs,
            checkpoint_bytes: self.checkpoint_bytes,
            input_bytes: self.input_bytes,
            artifact_bytes: self.artifact_bytes,
        }
    }
}

/// Encodes a checkpoint object: magic, version, header length, JSON header, task bytes.
pub fn encode(header: &Header, data: Option<&[u8]>) -> Vec<u8> {
    let head = serde_json::to_vec(header).expect("header serializes");
    let mut out = Vec::with_capacity(10 + head.len() + data.map_or(0, |d| d.len()));
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(data.is_some() as u8);
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    if let Some(d) = data {
        out.extend_from_slice(d);
    }
    out
}

/// Decodes what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> anyhow::Result<(Header, Option<Vec<u8>>)> {
    anyhow::ensure!(
        bytes.len() >= 10 && &bytes[..4] == MAGIC,
        "not a taskhost checkpoint object"
    );
    anyhow::ensure!(
        bytes[4] == FORMAT_VERSION,
        "checkpoint format version {} is not supported (this host reads {FORMAT_VERSION})",
        bytes[4]
    );
    let has_data = match bytes[5] {
        0 => false,
        1 => true,
        other => anyhow::bail!("checkpoint data flag {other} is neither 0 nor 1: damaged"),
    };
    let len = u32::from_be_bytes(bytes[6..10].try_into().unwrap()) as usize;
    let rest = &bytes[10..];
    anyhow::ensure!(rest.len() >= len, "checkpoint header is truncated");
    let header: Header = serde_json::from_slice(&rest[..len])?;
    let data = has_data.then(|| rest[len..].to_vec());
    Ok((header, data))
}

/// A fresh random nonce for a write's header.
pub(super) fn nonce() -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).expect("the OS random source works");
    hex::encode(b)
}

#[cfg(test)]
mod props {
    use proptest::collection::vec;
    use proptest::option::of;
    use proptest::prelude::*;

    use super::{Action, ArtifactRecord, Control, FORMAT_VERSION, Header, MAGIC, decode, encode};

    fn records() -> impl Strategy<Value = ArtifactRecord> {
        (
            any::<String>(),
            any::<u64>(),
            any::<bool>(),
            of(any::<String>()),
            of(any::<String>()),
            vec(any::<String>(), 0..3),
        )
            .prop_map(
                |(name, size, finished, etag, upload, parts)| ArtifactRecord {
                    name,
                    size,
                    finished,
                    etag,
                    upload,
                    parts,
                },
            )
    }

    fn headers() -> impl Strategy<Value = Header> {
        (
            (
                any::<u32>(),
                any::<u32>(),
                of(any::<(u64, u64)>()),
                any::<u64>(),
            ),
            (
                of(any::<String>()),
                any::<String>(),
                any::<u64>(),
                any::<u64>(),
            ),
            (any::<String>(), any::<String>(), vec(records(), 0..3)),
            (any::<u64>(), any::<String>(), any::<(u32, u32)>()),
            (any::<(u64, u64, u64, u64)>(), any::<u32>(), any::<u64>()),
            of((any::<bool>(), any::<String>(), any::<u64>())),
        )
            .prop_map(
                |(
                    (attempts, failures, progress, fuel_used),
                    (last_failure, owner, lease_until_ms, lease_period_ms),
                    (module, input_sha256, artifacts),
                    (updated_ms, nonce, (crashes, storage_failed_runs)),
                    (
                        (wall_ms, input_bytes, artifact_bytes, checkpoint_bytes),
                        crashed_runs,
                        host_compute_ms,
                    ),
                    control,
                )| Header {
                    attempts,
                    failures,
                    crashes,
                    storage_failed_runs,
                    progress,
                    fuel_used,
                    wall_ms,
                    host_compute_ms,
                    input_bytes,
                    artifact_bytes,
                    checkpoint_bytes,
                    crashed_runs,
                    last_failure,
                    owner,
                    lease_until_ms,
                    lease_period_ms,
                    module,
                    input_sha256,
                    artifacts,
                    control: control.map(|(pause, by, at_ms)| Control {
                        action: if pause { Action::Pause } else { Action::Cancel },
                        by,
                        at_ms,
                    }),
                    // Either value, from a bit of another field (the tuples are full).
                    old_outputs: host_compute_ms & 1 == 1,
                    updated_ms,
                    nonce,
                },
            )
    }

    fn data() -> impl Strategy<Value = Option<Vec<u8>>> {
        of(vec(any::<u8>(), 0..512))
    }

    /// Bytes to decode: arbitrary ones; the magic and version before arbitrary bytes or a
    /// JSON text with any length field; a valid object with some bytes overwritten and its
    /// end cut anywhere.
    fn objects() -> impl Strategy<Value = Vec<u8>> {
        const KEYS: &[&str] = &[
            "attempts",
            "failures",
            "progress",
            "fuel_used",
            "owner",
            "nonce",
            "artifacts",
            "name",
            "size",
            "parts",
        ];
        let framed = (
            prop_oneof![Just(0), Just(1), any::<u8>()],
            proptest::option::of(any::<u32>()),
            crate::props::bytes_or_json(KEYS, KEYS),
            vec(any::<u8>(), 0..8),
        )
            .prop_map(|(flag, len, head, data)| {
                let mut out = MAGIC.to_vec();
                out.extend([FORMAT_VERSION, flag]);
                // None: the header's true length.
                out.extend(len.unwrap_or(head.len() as u32).to_be_bytes());
                out.extend(head);
                out.extend(data);
                out
            });
        let damaged = (
            headers(),
            data(),
            vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            proptest::option::of(any::<prop::sample::Index>()),
        )
            .prop_map(|(h, d, edits, cut)| {
                let mut out = encode(&h, d.as_deref());
                for (at, b) in edits {
                    let i = at.index(out.len());
                    out[i] = b;
                }
                if let Some(cut) = cut {
                    out.truncate(cut.index(out.len() + 1));
                }
                out
            });
        prop_oneof![vec(any::<u8>(), 0..64), framed, damaged]
    }

    proptest! {
        #[test]
        fn decode_round_trips(h in headers(), d in data()) {
            let (h2, d2) = decode(&encode(&h, d.as_deref())).unwrap();
            prop_assert_eq!(h2, h);
            prop_assert_eq!(d2, d);
        }

        /// Any bytes: no panic; what it accepts encodes back to the same object.
        #[test]
        fn decode_never_panics(bytes in objects()) {
            if let Ok((h, d)) = decode(&bytes) {
                let (h2, d2) = decode(&encode(&h, d.as_deref())).unwrap();
                prop_assert_eq!(h2, h);
                prop_assert_eq!(d2, d);
            }
        }
    }
}

#[cfg(test)]
mod damaged {
    use super::{Header, decode, encode};

    /// A data flag other than 0 or 1 is damage, never "no data": the task's bytes are not
    /// silently dropped (the job would start over) but the checkpoint is unreadable.
    #[test]
    fn a_data_flag_other_than_0_or_1_is_unreadable() {
        let mut bytes = encode(&Header::default(), Some(b"state"));
        assert_eq!(decode(&bytes).unwrap().1.as_deref(), Some(&b"state"[..]));
        for flag in [2u8, 0x81, 0xff] {
            bytes[5] = flag;
            let e = decode(&bytes).unwrap_err();
            assert!(e.to_string().contains("data flag"), "{flag}: {e}");
        }
    }
}

#[cfg(test)]
mod usage {
    use super::{Header, RunUsage};

    #[test]
    fn runs_add_up_and_old_headers_read_as_zero() {
        let mut h: Header =
            serde_json::from_str(r#"{"attempts":2,"failures":0,"fuel_used":4,"nonce":""}"#)
                .unwrap();
        let run = RunUsage {
            fuel: 1,
            wall_ms: 2,
            host_compute_ms: 1,
            checkpoint_bytes: 3,
            input_bytes: 4,
            artifact_bytes: 5,
        };
        h.add_run(&run);
        h.add_run(&run);
        let u = h.usage();
        assert_eq!(u.host_compute_ms, 2);
        assert_eq!(
            (
                u.fuel,
                u.wall_ms,
                u.checkpoint_bytes,
                u.input_bytes,
                u.artifact_bytes
            ),
            (6, 4, 6, 8, 10)
        );
        assert_eq!((u.attempts, u.crashes), (2, 0));
    }
}
