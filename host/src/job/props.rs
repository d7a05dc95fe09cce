//! Property tests of [`JobMessage::parse`](super::JobMessage::parse): any data, no panic;
//! what it accepts follows the documented rules.

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
    let inputs = proptest::option::of(btree_map("[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}", key, 0..4));
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
