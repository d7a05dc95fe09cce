//! The table of cases: what each message is and what must become of it.

use super::*;

/// What must become of a message.
pub(super) enum Expect {
    /// Poison: dead-lettered with a reason containing every one of these; acked; nothing
    /// stored for the job (docs/design.md section 6: "no error object").
    Poison(Vec<String>),
    /// An unusable module: dead-lettered with the reason; `jobs/<id>/error` holds it; the
    /// job was never started (no checkpoint), no result.
    Unusable(Vec<String>),
    /// The task ran exactly once and failed (a task error, or a trap with MAX_FAILURES=1):
    /// dead-lettered with the reason; `jobs/<id>/error` holds it; `failures` in the header.
    Failed { says: Vec<String>, failures: u64 },
    /// Finished: a result, which passes this check; not dead-lettered, no error.
    Finished(fn(&Value) -> Result<(), String>),
}

impl Expect {
    pub(super) fn says(&self) -> &[String] {
        match self {
            Expect::Poison(s) | Expect::Unusable(s) | Expect::Failed { says: s, .. } => s,
            Expect::Finished(_) => &[],
        }
    }

    pub(super) fn dead_lettered(&self) -> bool {
        !matches!(self, Expect::Finished(_))
    }
}

pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) data: Vec<u8>,
    pub(super) attributes: BTreeMap<String, String>,
    /// The message's job id when it is a valid one (its `jobs/<id>/...` keys).
    pub(super) job: Option<&'static str>,
    pub(super) expect: Expect,
}

pub(super) fn says(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

pub(super) fn module_attr(module: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("module".to_string(), module.to_string())])
}

/// The modules the table refers to.
pub(super) struct Modules {
    pub(super) step: String,
    pub(super) misbehave: String,
    /// Named by a hash its bytes (step_counter's) do not have.
    pub(super) tampered: String,
    /// Planted under their real sha256 (`module push` refuses them).
    pub(super) garbage: String,
    pub(super) core: String,
    pub(super) other_world: String,
    /// A well-formed name with nothing in the store.
    pub(super) absent: String,
}

pub(super) async fn modules(b: &Backend) -> Modules {
    let step = b.push("step_counter").await;
    let misbehave = b.push("misbehave").await;
    let fake = sha256_hex(format!("the module the submitter meant ({})", b.label).as_bytes());
    let tampered = b.plant(&fake, support::guests::bytes("step_counter")).await;
    let garbage_bytes = b"this is not webassembly at all".to_vec();
    let garbage = b.plant(&sha256_hex(&garbage_bytes), garbage_bytes).await;
    let core_bytes = b"\0asm\x01\0\0\0".to_vec();
    let core = b.plant(&sha256_hex(&core_bytes), core_bytes).await;
    let other_bytes = support::guests::bytes("other_world");
    let other_world = b.plant(&sha256_hex(&other_bytes), other_bytes).await;
    let absent = format!("sha256:{}", sha256_hex(b"a module nobody ever pushed"));
    Modules {
        step,
        misbehave,
        tampered,
        garbage,
        core,
        other_world,
        absent,
    }
}

pub(super) fn table(m: &Modules, escape_addr: &str) -> Vec<Case> {
    let step = || module_attr(&m.step);
    let mis = || module_attr(&m.misbehave);
    let json = |v: Value| v.to_string().into_bytes();
    let long_id = "a".repeat(201);
    let upper_ref = format!("sha256:{}", m.step["sha256:".len()..].to_uppercase());
    let trap = |kind: &str, more: &[&str]| {
        let mut s = says(&["failed 1 times (limit 1)", &format!("last: {kind}: ")]);
        s.extend(says(more));
        s
    };
    vec![
        // --- poison: the message itself is unusable.
        Case {
            name: "not JSON",
            data: b"this is not json".to_vec(),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["message data is not JSON"])),
        },
        Case {
            name: "JSON but not an object",
            data: br#"["job_id", "bad-array"]"#.to_vec(),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["message data is not a JSON object"])),
        },
        Case {
            name: "a JSON string, not an object",
            data: br#""bad-string""#.to_vec(),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["message data is not a JSON object"])),
        },
        Case {
            name: "not UTF-8",
            data: b"{\"job_id\":\"bad-\xff\xfe\",\"steps\":1}".to_vec(),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["message data is not UTF-8"])),
        },
        Case {
            name: "empty data",
            data: Vec::new(),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["message data is not JSON", "EOF"])),
        },
        Case {
            name: "job_id missing",
            data: json(serde_json::json!({"steps": 3})),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["message has no job_id"])),
        },
        Case {
            name: "job_id not a string",
            data: json(serde_json::json!({"job_id": 7, "steps": 3})),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["job_id must be a string"])),
        },
        Case {
            name: "job_id empty",
            data: json(serde_json::json!({"job_id": "", "steps": 3})),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["job_id must be 1 to 200 characters long (got 0)"])),
        },
        Case {
            name: "job_id too long (201)",
            data: json(serde_json::json!({"job_id": long_id, "steps": 3})),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["job_id must be 1 to 200 characters long (got 201)"])),
        },
        Case {
            name: "job_id with '/'",
            data: json(serde_json::json!({"job_id": "bad/slash", "steps": 3})),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&[
                "job_id may only contain A-Z a-z 0-9 . _ -",
                "(found '/')",
            ])),
        },
        Case {
            name: "job_id '..'",
            data: json(serde_json::json!({"job_id": "..", "steps": 3})),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&[r#"job_id may not be "." or "..""#])),
        },
        Case {
            name: "module malformed (attribute)",
            data: json(serde_json::json!({"job_id": "bad-module-ref", "steps": 3})),
            attributes: module_attr("sha256:xyz"),
            job: Some("bad-module-ref"),
            expect: Expect::Poison(says(&[
                r#"module reference "sha256:xyz""#,
                "must look like sha256:<64 lowercase hex digits>",
            ])),
        },
        Case {
            name: "module field malformed (it wins over a valid attribute)",
            data: json(
                serde_json::json!({"job_id": "bad-module-field", "module": upper_ref, "steps": 3}),
            ),
            attributes: step(),
            job: Some("bad-module-field"),
            expect: Expect::Poison(says(&[
                &format!("module reference {upper_ref:?}"),
                "must look like sha256:<64 lowercase hex digits>",
            ])),
        },
        Case {
            name: "an input key under the host's own jobs/ prefix",
            data: json(serde_json::json!({
                "job_id": "bad-input-key",
                "inputs": {"data": "jobs/victim/checkpoint"},
            })),
            attributes: step(),
            job: Some("bad-input-key"),
            expect: Expect::Poison(says(&[
                "input `data`",
                "under the host's own prefix `jobs/`",
            ])),
        },
        Case {
            name: "an input key that climbs out of its prefix",
            data: json(serde_json::json!({
                "job_id": "bad-input-dots",
                "inputs": {"data": "inputs/../modules/x.wasm"},
            })),
            attributes: step(),
            job: Some("bad-input-dots"),
            expect: Expect::Poison(says(&["input `data`", "not a valid object key"])),
        },
        Case {
            name: "module not a string",
            data: json(serde_json::json!({"job_id": "bad-module-type", "module": 42, "steps": 3})),
            attributes: step(),
            job: Some("bad-module-type"),
            expect: Expect::Poison(says(&[r#"module must be a string "sha256:<hex>""#])),
        },
        Case {
            name: "module missing (no field, no attribute, no DEFAULT_MODULE)",
            data: json(serde_json::json!({"job_id": "bad-no-module", "steps": 3})),
            attributes: BTreeMap::new(),
            job: Some("bad-no-module"),
            expect: Expect::Poison(says(&[
                "message names no module",
                "the worker has no DEFAULT_MODULE",
            ])),
        },
        // --- unusable modules: the message is fine, the module it names is not.
        Case {
            name: "module tampered (bytes do not hash to its name)",
            data: json(serde_json::json!({"job_id": "bad-tampered", "steps": 3})),
            attributes: module_attr(&m.tampered),
            job: Some("bad-tampered"),
            expect: Expect::Unusable(says(&[
                &format!("module {} is unusable", m.tampered),
                &format!("hash to {}, not {}", m.step, m.tampered),
                "tampered with",
            ])),
        },
        Case {
            name: "module garbage (not wasm)",
            data: json(serde_json::json!({"job_id": "bad-garbage", "steps": 3})),
            attributes: module_attr(&m.garbage),
            job: Some("bad-garbage"),
            expect: Expect::Unusable(says(&[
                &format!("module {} is unusable", m.garbage),
                "not a WebAssembly file",
            ])),
        },
        Case {
            name: "a core module, not a component",
            data: json(serde_json::json!({"job_id": "bad-core", "steps": 3})),
            attributes: module_attr(&m.core),
            job: Some("bad-core"),
            expect: Expect::Unusable(says(&[
                &format!("module {} is unusable", m.core),
                "a core WebAssembly module, not a component",
            ])),
        },
        Case {
            name: "a component of another world",
            data: json(serde_json::json!({"job_id": "bad-other-world", "steps": 3})),
            attributes: module_attr(&m.other_world),
            job: Some("bad-other-world"),
            expect: Expect::Unusable(says(&[
                &format!("module {} is unusable", m.other_world),
                "a component of another world, not of taskhost:task/task@0.3.0 or taskhost:task/task@0.2.0 or taskhost:task/task@0.1.0",
            ])),
        },
        Case {
            name: "module not in the store (after MISSING_MODULE_RETRY_SECONDS)",
            data: json(serde_json::json!({"job_id": "bad-absent", "steps": 3})),
            attributes: module_attr(&m.absent),
            job: Some("bad-absent"),
            expect: Expect::Unusable(says(&[&format!("module {} is not in the store", m.absent)])),
        },
        // --- misbehaving tasks.
        Case {
            name: "task error",
            data: json(serde_json::json!({"job_id": "bad-fail", "mode": "fail"})),
            attributes: mis(),
            job: Some("bad-fail"),
            expect: Expect::Failed {
                says: says(&["the task failed: the task failed on purpose"]),
                failures: 0,
            },
        },
        Case {
            name: "panic",
            data: json(serde_json::json!({"job_id": "bad-panic", "mode": "panic"})),
            attributes: mis(),
            job: Some("bad-panic"),
            expect: Expect::Failed {
                says: trap(
                    "Panic",
                    &["task panicked", "misbehave: panicking on purpose"],
                ),
                failures: 1,
            },
        },
        Case {
            name: "infinite loop",
            data: json(serde_json::json!({"job_id": "bad-loop", "mode": "loop"})),
            attributes: mis(),
            job: Some("bad-loop"),
            expect: Expect::Failed {
                says: trap("Fuel", &["fuel budget exhausted"]),
                failures: 1,
            },
        },
        Case {
            name: "memory bomb",
            data: json(serde_json::json!({"job_id": "bad-membomb", "mode": "membomb"})),
            attributes: mis(),
            job: Some("bad-membomb"),
            expect: Expect::Failed {
                // One line, the cause itself (no wasm backtrace).
                says: trap(
                    "Memory",
                    &[&format!(
                        "memory limit of {} bytes reached",
                        TASK_MEMORY_MB << 20
                    )],
                ),
                failures: 1,
            },
        },
        Case {
            name: "checkpoint too large",
            data: json(serde_json::json!({
                "job_id": "bad-big-checkpoint",
                "mode": "save_loop",
                "count": 1,
                "bytes": MAX_CHECKPOINT_BYTES + 1,
            })),
            attributes: mis(),
            job: Some("bad-big-checkpoint"),
            expect: Expect::Failed {
                says: says(&[&format!(
                    "the task failed: checkpoint too large: the host's limit is {MAX_CHECKPOINT_BYTES} bytes"
                )]),
                failures: 0,
            },
        },
        Case {
            name: "output flood",
            data: json(
                serde_json::json!({"job_id": "bad-flood", "mode": "flood", "bytes": FLOOD_BYTES}),
            ),
            attributes: mis(),
            job: Some("bad-flood"),
            expect: Expect::Finished(|r| {
                (r["flooded"] == FLOOD_BYTES)
                    .then_some(())
                    .ok_or_else(|| format!("not {FLOOD_BYTES} bytes flooded"))
            }),
        },
        Case {
            name: "escape attempt",
            data: json(
                serde_json::json!({"job_id": "bad-escape", "mode": "escape", "addr": escape_addr}),
            ),
            attributes: mis(),
            job: Some("bad-escape"),
            expect: Expect::Finished(|r| {
                for k in ["read", "create", "list", "connect"] {
                    let s = r[k].as_str().unwrap_or_default();
                    if !s.starts_with("error: ") {
                        return Err(format!("{k} was not refused: {s:?}"));
                    }
                }
                if r["env"] != 0 {
                    return Err("the task saw environment variables".into());
                }
                if r["args"].as_u64().is_none_or(|n| n > 1) {
                    return Err("the task saw arguments".into());
                }
                Ok(())
            }),
        },
    ]
}
