//! `JobMessage::parse` on any data, with a module attribute or not and a default module or
//! not: no panic, and a message it accepts keeps the documented rules (docs/design.md "The
//! job message"): a valid job id, a `sha256:<64 hex>` module, `input` equal to the data text,
//! input names and keys valid and never under the host's own prefixes.
//!
//! The input's first byte picks the attributes and the default (bit 0: a default module;
//! bits 1-2: no `module` attribute, a valid one, an invalid one, an empty one); the rest is
//! the message data, so seeds and crashes are the data as it is, after one byte.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use taskhost::ids::ModuleHash;
use taskhost::job::JobMessage;
use taskhost::keys::RESERVED_PREFIXES;

fn id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._-".contains(&b)
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&flags, data)) = bytes.split_first() else {
        return;
    };
    let default = (flags & 1 == 1).then(|| ModuleHash::of(b"default"));
    let attribute = match (flags >> 1) & 3 {
        0 => None,
        1 => Some(ModuleHash::of(b"attribute").to_string()),
        2 => Some(format!("sha256:{}", "0".repeat(63))),
        _ => Some(String::new()),
    };
    let attributes: BTreeMap<String, String> = attribute
        .map(|m| ("module".to_owned(), m))
        .into_iter()
        .collect();
    let Ok(m) = JobMessage::parse(data, &attributes, default.as_ref()) else {
        return;
    };
    let id = m.job_id.as_str();
    assert!((1..=200).contains(&id.len()) && id.bytes().all(id_char) && id != "." && id != "..");
    let module = m.module.to_string();
    let hex = module.strip_prefix("sha256:").expect("sha256:");
    assert!(
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(m.input.as_bytes(), data);
    assert_eq!(m.work.module, module);
    for (name, key) in &m.inputs {
        assert!(
            (1..=200).contains(&name.len()) && !name.starts_with('.') && name.bytes().all(id_char)
        );
        assert!(key.len() <= 1024);
        assert!(
            key.split('/')
                .all(|p| !p.is_empty() && p != "." && p != ".." && p.bytes().all(id_char))
        );
        assert!(
            !RESERVED_PREFIXES.iter().any(|p| key.starts_with(p)),
            "{key}"
        );
    }
});
