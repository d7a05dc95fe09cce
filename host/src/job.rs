//! The job message (DESIGN.md "The job message"): Pub/Sub `data` is a JSON document with a
//! `job_id`; the module is the data's `module` field, else the message attribute `module`,
//! else the worker's `DEFAULT_MODULE`. The whole document is the task's input.

use std::collections::BTreeMap;

use crate::ids::{JobId, ModuleHash};

/// A validated job message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobMessage {
    pub job_id: JobId,
    pub module: ModuleHash,
    /// The whole data document, given to the task as its input.
    pub input: String,
}

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
        Ok(JobMessage {
            job_id,
            module,
            input: text.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
