//! The job message (docs/design.md "The job message"): Pub/Sub `data` is a JSON document
//! with a `job_id`; the module is the data's `module` field, else the message attribute
//! `module`, else the worker's `DEFAULT_MODULE`. The whole document is the task's input.
//!
//! A job is bound to its work: the module and the sha256 of the input ([`JobMessage::work`];
//! the input without the fields `module`, `restart` and `upgrade_module`, keys sorted), which
//! the checkpoint records. Two optional boolean fields say what to do when the stored job was
//! bound to other work: `restart` (start over from nothing) and `upgrade_module` (same input,
//! resume from the checkpoint with this message's module).
//!
//! `inputs.rs`: the `inputs` field's rules; `stored.rs`: the job's work as `submit` stores it
//! (`jobs/<id>/work`), which `job resume`, `job retry` and `dead-letter replay` publish again.

mod inputs;
mod stored;

pub use inputs::parse_inputs;
pub use stored::{StoredWork, with_module};

use std::collections::BTreeMap;

use sha2::Digest;

use crate::ids::{InputName, JobId, ModuleHash};

/// A validated job message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobMessage {
    /// The job's id: its storage keys, and the one result it gets.
    pub job_id: JobId,
    /// The module to run (a tag in the message is resolved before it becomes a job).
    pub module: ModuleHash,
    /// The whole data document, given to the task as its input.
    pub input: String,
    /// What the job computes, as recorded in its checkpoint.
    pub work: Work,
    /// `"restart": true`: when the stored job was bound to other work, discard it (its
    /// checkpoint, result and error) and start over.
    pub restart: bool,
    /// `"upgrade_module": true`: when the stored job ran another module on the same input,
    /// resume from its checkpoint with this message's module.
    pub upgrade_module: bool,
    /// `"inputs": {"NAME": "KEY", ...}`: the objects the task may read, by name.
    pub inputs: BTreeMap<InputName, String>,
}

/// What a job computes: the module and the sha256 (hex) of its input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// The module's hash as text (`sha256:<hex>`); empty when unbound.
    pub module: String,
    /// The sha256 (lower-case hex) of the input: of a JSON object without the fields that
    /// say how to run it (`module`, `restart`, `upgrade_module`), keys sorted; of any other
    /// text as it is. Empty when unbound.
    pub input_sha256: String,
}

impl Work {
    /// The work of `input` (a JSON object; any other text is hashed as it is) on `module`.
    pub fn of(module: &ModuleHash, input: &str) -> Work {
        match serde_json::from_str::<serde_json::Value>(input) {
            Ok(serde_json::Value::Object(obj)) => Work::of_object(module, &obj),
            _ => Work {
                module: module.to_string(),
                input_sha256: hex::encode(sha2::Sha256::digest(input.as_bytes())),
            },
        }
    }

    fn of_object(module: &ModuleHash, obj: &serde_json::Map<String, serde_json::Value>) -> Work {
        let mut what = obj.clone();
        for name in NOT_WORK {
            what.remove(name);
        }
        // serde_json's map keeps keys sorted: the same document always hashes the same.
        let canonical = serde_json::to_vec(&what).expect("a JSON map serializes");
        Work {
            module: module.to_string(),
            input_sha256: hex::encode(sha2::Sha256::digest(&canonical)),
        }
    }

    /// Whether no work is recorded (a checkpoint written before jobs were bound).
    pub fn is_unbound(&self) -> bool {
        self.module.is_empty() && self.input_sha256.is_empty()
    }
}

/// The fields of a job document that say how to run it, not what it computes.
const NOT_WORK: [&str; 3] = ["module", "restart", "upgrade_module"];

impl JobMessage {
    /// The job id of a message that is not a job (poison), when its data still names a
    /// valid one: `{"job_id": "..."}` in a JSON object.
    pub fn job_id_of(data: &[u8]) -> Option<JobId> {
        let doc: serde_json::Value = serde_json::from_slice(data).ok()?;
        doc.get("job_id")?.as_str()?.parse().ok()
    }

    /// Parses and validates a message. `Err` is the reason a poison message is dead-lettered.
    pub fn parse(
        data: &[u8],
        attributes: &BTreeMap<String, String>,
        default_module: Option<&ModuleHash>,
    ) -> Result<JobMessage, String> {
        let text = std::str::from_utf8(data).map_err(|_| "message data is not UTF-8".to_owned())?;
        let doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("message data is not JSON: {e}"))?;
        let obj = doc
            .as_object()
            .ok_or_else(|| "message data is not a JSON object".to_owned())?;
        let job_id = match obj.get("job_id") {
            Some(serde_json::Value::String(s)) => s.parse::<JobId>()?,
            Some(_) => return Err("job_id must be a string".into()),
            None => return Err("message has no job_id".into()),
        };
        let module = match (obj.get("module"), attributes.get("module")) {
            (Some(serde_json::Value::String(s)), _) => s.parse::<ModuleHash>()?,
            (Some(_), _) => return Err("module must be a string \"sha256:<hex>\"".into()),
            (None, Some(s)) => s.parse::<ModuleHash>()?,
            (None, None) => *default_module.ok_or_else(|| {
                "message names no module (data field or attribute \"module\") and the worker has no DEFAULT_MODULE".to_owned()
            })?,
        };
        let flag = |name: &str| match obj.get(name) {
            None | Some(serde_json::Value::Bool(false)) => Ok(false),
            Some(serde_json::Value::Bool(true)) => Ok(true),
            Some(_) => Err(format!("{name} must be true or false")),
        };
        let (restart, upgrade_module) = (flag("restart")?, flag("upgrade_module")?);
        let work = Work::of_object(&module, obj);
        let inputs = parse_inputs(obj)?;
        Ok(JobMessage {
            job_id,
            module,
            input: text.to_owned(),
            work,
            restart,
            upgrade_module,
            inputs,
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
