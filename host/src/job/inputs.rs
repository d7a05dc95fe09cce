//! A job document's `inputs`: the objects the task may read, by name (docs/design.md §3).

use std::collections::BTreeMap;

use crate::ids::InputName;

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
