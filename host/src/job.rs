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

/// Longest input key accepted (S3 and R2 allow 1024 bytes).
const MAX_INPUT_KEY: usize = 1024;

/// The `inputs` field of a job document: names checked like artifact names, keys made of
/// `/`-separated parts of `[A-Za-z0-9._-]` (no `.` or `..` part) outside the host's own
/// prefixes (`jobs/`, `modules/`, ...). `Err` is the reason the message is dead-lettered.
pub fn parse_inputs(
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<BTreeMap<InputName, String>, String> {
    let Some(value) = obj.get("inputs") else {
        return Ok(BTreeMap::new());
    };
    let map = value
        .as_object()
        .ok_or("inputs must be an object {\"NAME\": \"KEY\", ...}")?;
    let mut inputs = BTreeMap::new();
    for (name, key) in map {
        let name: InputName = name.parse().map_err(|e| format!("input name {e}"))?;
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
        inputs.insert(name, key.to_owned());
    }
    Ok(inputs)
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

#[cfg(test)]
mod props {
    use std::collections::BTreeMap;

    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use sha2::Digest;

    use super::{InputName, JobMessage, NOT_WORK};
    use crate::ids::ModuleHash;
    use crate::keys::RESERVED_PREFIXES;

    const KEYS: &[&str] = &[
        "job_id",
        "module",
        "inputs",
        "restart",
        "upgrade_module",
        "steps",
    ];
    const WORDS: &[&str] = &[
        "a",
        ".",
        "..",
        "job-0",
        "a/b",
        "sha256:",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "inputs/abc",
        "jobs/x/checkpoint",
        "modules/m.wasm",
        "taskhost-probe/p",
        "a/../b",
        "/abs",
        "",
    ];

    fn id_char(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"._-".contains(&b)
    }

    /// The documented rules, restated: 1..=200 of `[A-Za-z0-9._-]`, not `.` or `..`.
    fn valid_job_id(s: &str) -> bool {
        (1..=200).contains(&s.len()) && s.bytes().all(id_char) && s != "." && s != ".."
    }

    fn valid_module(s: &str) -> bool {
        s.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    }

    fn valid_input_name(s: &str) -> bool {
        (1..=200).contains(&s.len()) && !s.starts_with('.') && s.bytes().all(id_char)
    }

    fn valid_input_key(s: &str) -> bool {
        s.len() <= 1024
            && s.split('/')
                .all(|p| !p.is_empty() && p != "." && p != ".." && p.bytes().all(id_char))
            && !RESERVED_PREFIXES.iter().any(|p| s.starts_with(p))
    }

    /// Checks an accepted message against the document it came from and the rules.
    fn check_accepted(
        text: &str,
        attrs: &BTreeMap<String, String>,
        default: Option<&ModuleHash>,
        m: &JobMessage,
    ) -> Result<(), TestCaseError> {
        let doc: Value = serde_json::from_str(text).expect("accepted data is JSON");
        let obj = doc.as_object().expect("accepted data is an object");
        prop_assert!(valid_job_id(m.job_id.as_str()), "job id {:?}", m.job_id);
        prop_assert_eq!(Some(m.job_id.as_str()), obj["job_id"].as_str());
        let module = m.module.to_string();
        prop_assert!(valid_module(&module), "module {module}");
        let want = match obj.get("module") {
            Some(v) => v.as_str().map(str::to_owned),
            None => attrs
                .get("module")
                .cloned()
                .or(default.map(|d| d.to_string())),
        };
        prop_assert_eq!(Some(&module), want.as_ref());
        prop_assert_eq!(&m.input, text);
        prop_assert_eq!(m.restart, obj.get("restart") == Some(&Value::Bool(true)));
        prop_assert_eq!(
            m.upgrade_module,
            obj.get("upgrade_module") == Some(&Value::Bool(true))
        );
        let mut what = obj.clone();
        for name in NOT_WORK {
            what.remove(name);
        }
        let canonical = serde_json::to_vec(&what).unwrap();
        prop_assert_eq!(&m.work.module, &module);
        prop_assert_eq!(
            &m.work.input_sha256,
            &hex::encode(sha2::Sha256::digest(&canonical))
        );
        let named: BTreeMap<InputName, String> = match obj.get("inputs") {
            None => BTreeMap::new(),
            Some(v) => v
                .as_object()
                .expect("accepted inputs are an object")
                .iter()
                .map(|(k, v)| {
                    let name = k.parse().expect("accepted names are valid");
                    (name, v.as_str().expect("keys are strings").to_owned())
                })
                .collect(),
        };
        prop_assert_eq!(&m.inputs, &named);
        for (name, key) in &m.inputs {
            prop_assert!(valid_input_name(name.as_str()), "input name {name:?}");
            prop_assert!(valid_input_key(key), "input key {key:?}");
        }
        Ok(())
    }

    /// Mostly `good`, else any JSON value.
    fn mostly(good: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
        prop_oneof![5 => good, 1 => crate::props::json(KEYS, WORDS)].boxed()
    }

    fn hash_text() -> impl Strategy<Value = String> {
        any::<[u8; 4]>().prop_map(|b| ModuleHash::of(&b).to_string())
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(WORDS).prop_map(str::to_owned),
            any::<String>(),
        ]
    }

    fn attributes() -> impl Strategy<Value = BTreeMap<String, String>> {
        btree_map(
            prop_oneof![Just("module".to_owned()), any::<String>()],
            prop_oneof![2 => hash_text(), 1 => word()],
            0..3,
        )
    }

    fn default_module() -> impl Strategy<Value = Option<ModuleHash>> {
        proptest::option::of(any::<[u8; 4]>().prop_map(|b| ModuleHash::of(&b)))
    }

    /// Message data: arbitrary bytes, or a JSON object with the fields the parser reads, each
    /// mostly valid, sometimes anything.
    fn data() -> impl Strategy<Value = Vec<u8>> {
        use proptest::option::weighted;
        let job_id = prop_oneof![4 => "[A-Za-z0-9._-]{1,12}", 1 => word()].prop_map(Value::from);
        let name = prop_oneof![8 => "[A-Za-z0-9_-][A-Za-z0-9._-]{0,7}", 1 => word()];
        let key = prop_oneof![
            8 => "[A-Za-z0-9._-]{1,6}(/[A-Za-z0-9._-]{1,6}){0,3}",
            2 => "(jobs|modules|taskhost-probe)/[A-Za-z0-9._-]{1,6}",
            1 => word(),
        ]
        .prop_map(Value::from);
        let inputs =
            btree_map(name, mostly(key), 0..4).prop_map(|m| Value::Object(m.into_iter().collect()));
        let flag = || weighted(0.3, mostly(any::<bool>().prop_map(Value::Bool)));
        let doc = (
            btree_map(word(), crate::props::json(KEYS, WORDS), 0..3),
            weighted(0.9, mostly(job_id)),
            weighted(0.5, mostly(hash_text().prop_map(Value::from))),
            weighted(0.5, mostly(inputs)),
            flag(),
            flag(),
        )
            .prop_map(|(mut obj, job_id, module, inputs, restart, upgrade)| {
                for (name, v) in [
                    ("job_id", job_id),
                    ("module", module),
                    ("inputs", inputs),
                    ("restart", restart),
                    ("upgrade_module", upgrade),
                ] {
                    if let Some(v) = v {
                        obj.insert(name.to_owned(), v);
                    }
                }
                serde_json::to_vec(&obj).unwrap()
            });
        prop_oneof![
            1 => vec(any::<u8>(), 0..256),
            1 => crate::props::json(KEYS, WORDS).prop_map(|v| serde_json::to_vec(&v).unwrap()),
            4 => doc,
        ]
    }

    /// A well-formed message: (data, attributes, default module, what it must parse to).
    fn well_formed() -> impl Strategy<
        Value = (
            String,
            BTreeMap<String, String>,
            Option<ModuleHash>,
            JobMessage,
        ),
    > {
        let job_id = "[A-Za-z0-9._-]{1,200}".prop_filter("not . or ..", |s| s != "." && s != "..");
        let part = "[A-Za-z0-9._-]{1,12}".prop_filter("not . or ..", |s| s != "." && s != "..");
        let key = vec(part, 1..5)
            .prop_map(|parts| parts.join("/"))
            .prop_filter("outside the host's prefixes", |k| {
                !RESERVED_PREFIXES.iter().any(|p| k.starts_with(p))
            });
        let inputs =
            proptest::option::of(btree_map("[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}", key, 0..4));
        let flag = proptest::option::of(any::<bool>());
        let extra = btree_map(
            "[a-z]{1,8}".prop_filter("not a field the parser reads", |k| {
                !KEYS.contains(&k.as_str())
            }),
            crate::props::json(KEYS, WORDS),
            0..3,
        );
        (
            job_id,
            any::<[u8; 4]>().prop_map(|b| ModuleHash::of(&b)),
            0..3u8,
            inputs,
            flag.clone(),
            flag,
            extra,
        )
            .prop_map(|(job_id, module, place, inputs, restart, upgrade, extra)| {
                let mut doc = json!({"job_id": job_id});
                let obj = doc.as_object_mut().unwrap();
                obj.extend(extra);
                let other = ModuleHash::of(b"other");
                let (attrs, default) = match place {
                    // In the data: it wins over the attribute and the default.
                    0 => {
                        obj.insert("module".into(), module.to_string().into());
                        (
                            BTreeMap::from([("module".to_owned(), other.to_string())]),
                            Some(other),
                        )
                    }
                    // The attribute wins over the default.
                    1 => (
                        BTreeMap::from([("module".to_owned(), module.to_string())]),
                        Some(other),
                    ),
                    _ => (BTreeMap::new(), Some(module)),
                };
                if let Some(inputs) = &inputs {
                    obj.insert("inputs".into(), json!(inputs));
                }
                if let Some(r) = restart {
                    obj.insert("restart".into(), r.into());
                }
                if let Some(u) = upgrade {
                    obj.insert("upgrade_module".into(), u.into());
                }
                let text = doc.to_string();
                let want = JobMessage {
                    job_id: job_id.parse().unwrap(),
                    module,
                    input: text.clone(),
                    work: super::Work::of(&module, &text),
                    restart: restart == Some(true),
                    upgrade_module: upgrade == Some(true),
                    inputs: inputs
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(name, key)| (name.parse().expect("a valid name"), key))
                        .collect(),
                };
                (text, attrs, default, want)
            })
    }

    proptest! {
        /// Any data and attributes: no panic; what it accepts follows the documented rules.
        #[test]
        fn parse_never_panics(data in data(), attrs in attributes(), default in default_module()) {
            if let Ok(m) = JobMessage::parse(&data, &attrs, default.as_ref()) {
                check_accepted(std::str::from_utf8(&data).unwrap(), &attrs, default.as_ref(), &m)?;
            }
        }

        /// Well-formed messages are accepted, as they say.
        #[test]
        fn well_formed_messages_are_accepted((text, attrs, default, want) in well_formed()) {
            let got = JobMessage::parse(text.as_bytes(), &attrs, default.as_ref());
            prop_assert_eq!(got.as_ref(), Ok(&want), "{}", text);
            check_accepted(&text, &attrs, default.as_ref(), got.as_ref().unwrap())?;
        }
    }
}
