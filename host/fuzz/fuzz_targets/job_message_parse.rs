//! `JobMessage::parse` on any data and attributes, with or without a default module: no
//! panic, and a message it accepts keeps the documented rules (docs/design.md "The job
//! message"): a valid job id, a `sha256:<64 hex>` module, `input` equal to the data text,
//! input names and keys valid and never under the host's own prefixes.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use taskhost::ids::ModuleHash;
use taskhost::job::JobMessage;
use taskhost::keys::RESERVED_PREFIXES;

fn id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._-".contains(&b)
}

fuzz_target!(|args: (BTreeMap<String, String>, bool, &[u8])| {
    let (attributes, has_default, data) = args;
    let default = has_default.then(|| ModuleHash::of(b"default"));
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
