//! What a component says about itself, read from its bytes without compiling them: the
//! names it imports and exports at its top level, the `taskhost:task` world version those
//! names carry, and the guest SDK's version when the SDK left its custom section.

use serde::{Deserialize, Serialize};
use wasmparser::{Parser, Payload};

/// The custom section the guest SDK (`taskhost-guest`) writes its version into.
pub const SDK_SECTION: &str = "taskhost-sdk";

/// A component's shape, as `module list` and `module inspect` show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// `taskhost:task@<version>` from the world's interfaces it imports; `None` when it
    /// imports none of them (a task that uses no import links with every version).
    pub world: Option<String>,
    /// Top-level import names (`taskhost:task/checkpoint@0.2.0`, `wasi:io/streams@0.2.6`...).
    pub imports: Vec<String>,
    /// Top-level export names (`run`).
    pub exports: Vec<String>,
    /// The guest SDK's version, when the component carries [`SDK_SECTION`].
    pub sdk: Option<String>,
}

/// Reads `bytes`' top-level imports and exports and the SDK section. Errors when the bytes
/// are not a well-formed WebAssembly binary; a core module gives empty lists.
pub fn describe(bytes: &[u8]) -> anyhow::Result<Description> {
    let mut d = Description::default();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(s) if depth == 0 => {
                for import in s {
                    d.imports.push(import?.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(s) if depth == 0 => {
                for export in s {
                    d.exports.push(export?.name.name.to_owned());
                }
            }
            Payload::CustomSection(c) if c.name() == SDK_SECTION => {
                let v = String::from_utf8_lossy(c.data()).trim().to_owned();
                d.sdk = (!v.is_empty()).then_some(v);
            }
            _ => {}
        }
    }
    d.world = world_of(&d.imports);
    Ok(d)
}

/// `taskhost:task@<version>` from the first import of the world's package that names one.
fn world_of(imports: &[String]) -> Option<String> {
    imports.iter().find_map(|i| {
        let rest = i.strip_prefix("taskhost:task/")?;
        let (_, version) = rest.split_once('@')?;
        Some(format!("taskhost:task@{version}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_world_is_the_version_of_its_imports() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            world_of(&names(&[
                "wasi:io/streams@0.2.6",
                "taskhost:task/log@0.1.0"
            ])),
            Some("taskhost:task@0.1.0".into())
        );
        assert_eq!(world_of(&names(&["wasi:io/streams@0.2.6"])), None);
        assert_eq!(world_of(&names(&["taskhost:task/log"])), None);
    }

    #[test]
    fn not_wasm_is_an_error_and_a_core_module_has_no_names() {
        assert!(describe(b"hello").is_err());
        let core = wat::parse_str("(module)").unwrap();
        assert_eq!(describe(&core).unwrap(), Description::default());
    }
}
