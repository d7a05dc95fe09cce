//! A job's work as `taskhost submit` stores it (`jobs/<id>/work`, docs/design.md §4): the
//! module, the job document exactly as published and the priority lane it was published to,
//! so that `job resume`, `job retry` and `dead-letter replay` can publish the same job again,
//! to the same lane, without the submitter's file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::JobMessage;
use crate::ids::ModuleHash;
use crate::queue::lanes::LaneName;

/// The message attribute that names a job's module (section 3).
const MODULE_ATTRIBUTE: &str = "module";

/// A job's stored work: what its message carries. Only [`StoredWork::new`] and
/// [`StoredWork::decode`] make one, both from a document [`JobMessage::parse`] accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWork {
    /// The module the message names (its `module` attribute), `sha256:<hex>`.
    module: String,
    /// The job document, the message's data, byte for byte.
    document: String,
    /// The lane it was published to; absent: the default lane (and records stored before
    /// lanes were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lane: Option<String>,
}

impl StoredWork {
    /// The work of a job document published with the attribute `module`; `Err` (the parse
    /// error) when a worker would refuse the message.
    pub fn new(module: &ModuleHash, document: &str) -> Result<StoredWork, String> {
        let work = StoredWork {
            module: module.to_string(),
            document: document.to_owned(),
            lane: None,
        };
        work.job()?;
        Ok(work)
    }

    /// The same work, published to `lane`.
    pub fn on_lane(self, lane: &LaneName) -> StoredWork {
        StoredWork {
            lane: (!lane.is_default()).then(|| lane.to_string()),
            ..self
        }
    }

    /// The lane it is published to.
    pub fn lane(&self) -> LaneName {
        self.lane
            .as_deref()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(LaneName::default_lane)
    }

    /// The record's bytes (JSON `{"module", "document"}`).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a stored work serializes")
    }

    /// Reads a record; `Err` says why it is not a valid job's work.
    pub fn decode(bytes: &[u8]) -> Result<StoredWork, String> {
        let work: StoredWork =
            serde_json::from_slice(bytes).map_err(|e| format!("not a stored work record: {e}"))?;
        work.job()?;
        if let Some(lane) = &work.lane {
            lane.parse::<LaneName>()
                .map_err(|e| format!("not a stored work record: lane: {e}"))?;
        }
        Ok(work)
    }

    /// The job as a worker will read it.
    pub fn job(&self) -> Result<JobMessage, String> {
        JobMessage::parse(self.document.as_bytes(), &self.attributes(), None)
    }

    /// The message's data: the job document.
    pub fn data(&self) -> &str {
        &self.document
    }

    /// The message's attributes: `module`.
    pub fn attributes(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(MODULE_ATTRIBUTE.to_owned(), self.module.clone())])
    }

    /// The same job on another module, resuming from its checkpoint (the `upgrade_module`
    /// rule, docs/design.md §5): the document names `module` and asks `upgrade_module`.
    pub fn on_module(&self, module: &ModuleHash) -> StoredWork {
        StoredWork {
            module: module.to_string(),
            document: with_module(&self.document, module),
            lane: self.lane.clone(),
        }
    }
}

/// A job document moved to `module` on the same input (`"module"` set, `"upgrade_module":
/// true`), for a replay with a fixed module. Data that is not a JSON object (a poison
/// message's) is returned as it is: only the attribute can name its module.
pub fn with_module(data: &str, module: &ModuleHash) -> String {
    match serde_json::from_str::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(mut obj)) => {
            obj.insert("module".into(), module.to_string().into());
            obj.insert("upgrade_module".into(), true.into());
            serde_json::Value::Object(obj).to_string()
        }
        _ => data.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_work_is_a_valid_job_and_moves_to_another_module_on_the_same_input() {
        let m = ModuleHash::of(b"m");
        let doc = r#"{"job_id":"a","steps":3}"#;
        let work = StoredWork::new(&m, doc).unwrap();
        let back = StoredWork::decode(&work.encode()).unwrap();
        assert_eq!(back, work);
        assert_eq!(back.data(), doc, "the document byte for byte");
        let job = back.job().unwrap();
        assert_eq!((job.job_id.as_str(), job.module), ("a", m));

        let n = ModuleHash::of(b"n");
        let moved = work.on_module(&n).job().unwrap();
        assert_eq!(moved.module, n);
        assert!(moved.upgrade_module);
        assert_eq!(moved.work.input_sha256, job.work.input_sha256, "same input");

        assert!(StoredWork::new(&m, r#"{"steps":3}"#).is_err(), "no job id");
        assert!(StoredWork::decode(b"{}").is_err());
        assert!(StoredWork::decode(br#"{"module":"x","document":"{\"job_id\":\"a\"}"}"#).is_err());
        assert_eq!(with_module("not json", &n), "not json");
    }

    #[test]
    fn a_stored_work_keeps_its_lane_and_refuses_a_bad_one() {
        let m = ModuleHash::of(b"m");
        let doc = r#"{"job_id":"a"}"#;
        let plain = StoredWork::new(&m, doc).unwrap();
        assert!(plain.lane().is_default());
        let urgent: LaneName = "urgent".parse().unwrap();
        let work = plain.clone().on_lane(&urgent);
        let back = StoredWork::decode(&work.encode()).unwrap();
        assert_eq!(back.lane(), urgent);
        assert_eq!(
            back.on_module(&ModuleHash::of(b"n")).lane(),
            urgent,
            "a replay on another module stays on its lane"
        );
        // The default lane is not written: records stay as they were before lanes.
        let default = plain.on_lane(&LaneName::default_lane());
        assert!(
            !String::from_utf8(default.encode())
                .unwrap()
                .contains("lane")
        );
        let bad = br#"{"module":"sha256:0000000000000000000000000000000000000000000000000000000000000000","document":"{\"job_id\":\"a\"}","lane":"no spaces"}"#;
        let err = StoredWork::decode(bad).unwrap_err();
        assert!(err.contains("lane"), "{err}");
    }
}
