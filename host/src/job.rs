//! The job message (docs/design.md "The job message"): Pub/Sub `data` is a JSON document
//! with a `job_id`; the module is the data's `module` field, else the message attribute
//! `module`, else the worker's `DEFAULT_MODULE`. The whole document is the task's input.
//!
//! A job is bound to its work: the module and the sha256 of the input ([`JobMessage::work`];
//! the input without the fields `module`, `restart` and `upgrade_module`, keys sorted), which
//! the checkpoint records. Two optional boolean fields say what to do when the stored job was
//! bound to other work: `restart` (start over from nothing) and `upgrade_module` (same input,
//! resume from the checkpoint with this message's module).

use std::collections::BTreeMap;

use sha2::Digest;

use crate::ids::{JobId, ModuleHash};

/// A validated job message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobMessage {
    pub job_id: JobId,
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
    pub inputs: BTreeMap<String, String>,
}

/// Longest input key accepted (S3 and R2 allow 1024 bytes).
const MAX_INPUT_KEY: usize = 1024;

/// The `inputs` field of a job document: names checked like artifact names, keys made of
/// `/`-separated parts of `[A-Za-z0-9._-]` (no `.` or `..` part) outside the host's own
/// prefixes (`jobs/`, `modules/`, ...). `Err` is the reason the message is dead-lettered.
pub fn parse_inputs(
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<BTreeMap<String, String>, String> {
    let Some(value) = obj.get("inputs") else {
        return Ok(BTreeMap::new());
    };
    let map = value
        .as_object()
        .ok_or("inputs must be an object {\"NAME\": \"KEY\", ...}")?;
    let mut inputs = BTreeMap::new();
    for (name, key) in map {
        crate::files::check_name(name).map_err(|e| format!("input name {e}"))?;
        let key = key
            .as_str()
            .ok_or_else(|| format!("input `{name}` must name an object key (a string)"))?;
        let parts_ok = key.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
        if key.len() > MAX_INPUT_KEY || !parts_ok {
            return Err(format!(
                "input `{name}`: key {key:?} is not a valid object key (at most {MAX_INPUT_KEY} bytes of '/'-separated parts from [A-Za-z0-9._-], no '.' or '..' part)"
            ));
        }
        if let Some(p) = crate::keys::RESERVED_PREFIXES
            .iter()
            .find(|p| key.starts_with(*p))
        {
            return Err(format!(
                "input `{name}`: key {key:?} is under the host's own prefix `{p}`: a task may not read it"
            ));
        }
        inputs.insert(name.clone(), key.to_owned());
    }
    Ok(inputs)
}

/// What a job computes: the module and the sha256 (hex) of its input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Work {
    pub module: String,
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
mod tests {
    use super::*;

    #[test]
    fn work_ignores_how_to_run_and_key_order() {
        let h = ModuleHash::of(b"m");
        let attr = BTreeMap::from([("module".to_owned(), h.to_string())]);
        let work = |doc: &str| JobMessage::parse(doc.as_bytes(), &attr, None).unwrap();
        let a = work(r#"{"job_id":"a","steps":3,"x":[1,2]}"#);
        let b = work(&format!(
            r#"{{"x":[1,2],"restart":true,"module":"{h}","steps":3,"job_id":"a"}}"#
        ));
        assert_eq!(a.work, b.work);
        assert!(!a.restart && b.restart && !b.upgrade_module);
        let c = work(r#"{"job_id":"a","steps":4,"x":[1,2]}"#);
        assert_ne!(a.work.input_sha256, c.work.input_sha256);
        assert_eq!(a.work.module, h.to_string());
        assert!(JobMessage::parse(br#"{"job_id":"a","restart":1}"#, &attr, None).is_err());
    }

    #[test]
    fn inputs_are_names_to_keys_outside_the_hosts_prefixes() {
        let h = ModuleHash::of(b"m");
        let attr = BTreeMap::from([("module".to_owned(), h.to_string())]);
        let parse = |inputs: &str| {
            let doc = format!(r#"{{"job_id":"a","inputs":{inputs}}}"#);
            JobMessage::parse(doc.as_bytes(), &attr, None).map(|m| m.inputs)
        };
        let ok = parse(r#"{"data":"inputs/abc","b.txt":"my/set/b.txt"}"#).unwrap();
        assert_eq!(ok["data"], "inputs/abc");
        assert_eq!(ok.len(), 2);
        for (bad, why) in [
            (
                r#"{"data":"jobs/x/checkpoint"}"#,
                "host's own prefix `jobs/`",
            ),
            (
                r#"{"data":"modules/x.wasm"}"#,
                "host's own prefix `modules/`",
            ),
            (r#"{"data":"a/../jobs/x"}"#, "not a valid object key"),
            (r#"{"data":"/abs"}"#, "not a valid object key"),
            (r#"{"data":""}"#, "not a valid object key"),
            (r#"{"data":"a b"}"#, "not a valid object key"),
            (r#"{"data":7}"#, "must name an object key"),
            (r#"{".hidden":"k"}"#, "not a valid name"),
            (r#"["k"]"#, "inputs must be an object"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(parse("{}").unwrap().is_empty());
    }

    /// (data, attributes, default module, expected module or a substring of the error)
    type Case<'a> = (
        &'a str,
        BTreeMap<String, String>,
        Option<&'a ModuleHash>,
        Result<ModuleHash, &'a str>,
    );

    #[test]
    fn messages() {
        let h = ModuleHash::of(b"m");
        let other = ModuleHash::of(b"other");
        let attr = |v: &str| BTreeMap::from([("module".to_owned(), v.to_owned())]);
        let none = BTreeMap::new();
        let cases: Vec<Case> = vec![
            (
                r#"{"job_id":"a","steps":1}"#,
                attr(&h.to_string()),
                None,
                Ok(h),
            ),
            (
                &*Box::leak(format!(r#"{{"job_id":"a","module":"{h}"}}"#).into_boxed_str()),
                attr(&other.to_string()),
                None,
                Ok(h),
            ),
            (r#"{"job_id":"a"}"#, none.clone(), Some(&other), Ok(other)),
            (r#"{"job_id":"a"}"#, none.clone(), None, Err("no module")),
            (
                r#"{"job_id":"a"}"#,
                attr("sha256:xyz"),
                None,
                Err("sha256:<64"),
            ),
            (
                r#"{"steps":1}"#,
                attr(&h.to_string()),
                None,
                Err("no job_id"),
            ),
            (
                r#"{"job_id":"a/b"}"#,
                attr(&h.to_string()),
                None,
                Err("may only contain"),
            ),
            (
                r#"{"job_id":7}"#,
                attr(&h.to_string()),
                None,
                Err("must be a string"),
            ),
            ("not json", attr(&h.to_string()), None, Err("not JSON")),
            ("[1]", attr(&h.to_string()), None, Err("not a JSON object")),
        ];
        for (data, attrs, default, want) in cases {
            let got = JobMessage::parse(data.as_bytes(), &attrs, default);
            match (got, want) {
                (Ok(m), Ok(module)) => {
                    assert_eq!(m.module, module, "{data}");
                    assert_eq!(m.input, data);
                }
                (Err(e), Err(sub)) => assert!(e.contains(sub), "{data}: {e}"),
                (got, want) => panic!("{data}: got {got:?}, want {want:?}"),
            }
        }
        assert!(
            JobMessage::parse(&[0xff], &none, Some(&h))
                .unwrap_err()
                .contains("UTF-8")
        );
    }
}
