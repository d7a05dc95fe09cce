//! `taskhost task new NAME`: a new task module crate that builds as is.
//!
//! The crate vendors the guest SDK (`taskhost-guest/`: its manifest, its source and the WIT
//! world), taken at compile time from this repository's own files (`guest-tasks/sdk`,
//! `wit/task.wit`), so a new crate always matches the host that made it. Its workspace
//! settings (dependency versions, lints, release profile), its cargo config (the target and
//! the loop-unrolling flags) and its lock file are those of
//! `guest-tasks/`, the workspace the repository's own task modules build in.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

/// The guest workspace's manifest: the source of the new crate's workspace sections.
const GUEST_WORKSPACE: &str = include_str!("../../../guest-tasks/Cargo.toml");
/// The guest workspace's lock file: the new crate starts from the same versions.
const GUEST_LOCK: &str = include_str!("../../../guest-tasks/Cargo.lock");
/// The guest workspace's cargo config (the wasm32-wasip2 target, loop-unrolling flags).
const GUEST_CARGO_CONFIG: &str = include_str!("../../../guest-tasks/.cargo/config.toml");
const SDK_MANIFEST: &str = include_str!("../../../guest-tasks/sdk/Cargo.toml");
const SDK_LIB: &str = include_str!("../../../guest-tasks/sdk/src/lib.rs");
/// The SDK's source files (path in the vendored crate, contents), `lib.rs` first.
const SDK_SOURCES: &[(&str, &str)] = &[
    ("taskhost-guest/src/lib.rs", SDK_LIB),
    (
        "taskhost-guest/src/error.rs",
        include_str!("../../../guest-tasks/sdk/src/error.rs"),
    ),
    (
        "taskhost-guest/src/checkpoint.rs",
        include_str!("../../../guest-tasks/sdk/src/checkpoint.rs"),
    ),
    (
        "taskhost-guest/src/inputs.rs",
        include_str!("../../../guest-tasks/sdk/src/inputs.rs"),
    ),
    (
        "taskhost-guest/src/artifacts.rs",
        include_str!("../../../guest-tasks/sdk/src/artifacts.rs"),
    ),
    (
        "taskhost-guest/src/progress.rs",
        include_str!("../../../guest-tasks/sdk/src/progress.rs"),
    ),
    (
        "taskhost-guest/src/log.rs",
        include_str!("../../../guest-tasks/sdk/src/log.rs"),
    ),
    (
        "taskhost-guest/src/job.rs",
        include_str!("../../../guest-tasks/sdk/src/job.rs"),
    ),
    (
        "taskhost-guest/src/nn.rs",
        include_str!("../../../guest-tasks/sdk/src/nn.rs"),
    ),
    (
        "taskhost-guest/src/input.rs",
        include_str!("../../../guest-tasks/sdk/src/input.rs"),
    ),
];
const SDK_WIT: &str = include_str!("../../../wit/task.wit");
/// The `nn` template's task: the `classify` example (model inference over an input's
/// records, checkpointed, predictions as an artifact).
const NN_TEMPLATE: &str = include_str!("../../../guest-tasks/classify/src/lib.rs");

/// The SDK's package name, which the new crate must not take.
const SDK_PACKAGE: &str = "taskhost-guest";

/// The longest crate name accepted (crates.io's limit).
const MAX_NAME_LEN: usize = 64;

/// Write task modules.
#[derive(Args, Debug)]
pub struct TaskArgs {
    #[command(subcommand)]
    pub command: TaskCommand,
}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Create DIR/NAME, a new task module crate that builds as is with
    /// `cargo build --release` (a wasm32-wasip2 component of the taskhost:task world).
    ///
    /// The crate holds a minimal typed task in src/lib.rs and the guest SDK, vendored in
    /// NAME/taskhost-guest/ (the SDK and WIT world of this taskhost). Refuses to write into
    /// an existing directory.
    New(NewArgs),
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// The crate's name: ASCII letters, digits, `-` and `_`, starting with a letter, at most
    /// 64 characters, not a Rust keyword. The module is built as NAME.wasm (`-` becomes `_`).
    pub name: String,
    /// The directory to create the crate in (as DIR/NAME).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// What the task starts as: `basic` (a checkpointed sum) or `nn` (model inference over
    /// an input's records in batches, through `taskhost_guest::nn`: the `classify` example).
    #[arg(long, value_enum, default_value = "basic")]
    pub template: Template,
}

/// The task a new crate starts from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// A checkpointed sum of 1..=count.
    Basic,
    /// The `classify` example: an ONNX model run over an input's records.
    Nn,
}

pub async fn main(args: TaskArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TaskCommand::New(new) => {
            let root = new.dir.join(&new.name);
            create(&new.name, &root, new.template)?;
            print_next_steps(&new.name, &root, new.template);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes the crate `name` into `root`, which must not exist (its parent is created if
/// needed). On a failure after `root` was created, removes `root` again.
fn create(name: &str, root: &Path, template: Template) -> anyhow::Result<()> {
    if let Err(why) = check_name(name) {
        bail!("invalid task name \"{name}\": {why}");
    }
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::create_dir(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("{} exists already: not overwriting it", root.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", root.display())),
    }
    let written = files(name, template)
        .into_iter()
        .try_for_each(|(path, text)| {
            let path = root.join(path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
        });
    if written.is_err() {
        // `root` is ours: it did not exist before this call.
        let _ = std::fs::remove_dir_all(root);
    }
    written
}

/// The files of the crate `name`: (path relative to the crate's root, contents).
fn files(name: &str, template: Template) -> Vec<(&'static str, String)> {
    let task = match template {
        Template::Basic => task_source(name),
        Template::Nn => NN_TEMPLATE.to_string(),
    };
    let mut files = vec![
        ("Cargo.toml", manifest(name)),
        ("Cargo.lock", GUEST_LOCK.to_string()),
        (".cargo/config.toml", GUEST_CARGO_CONFIG.to_string()),
        (".gitignore", "/target\n".to_string()),
        ("src/lib.rs", task),
        ("taskhost-guest/Cargo.toml", SDK_MANIFEST.to_string()),
        ("taskhost-guest/wit/task.wit", SDK_WIT.to_string()),
    ];
    files.extend(SDK_SOURCES.iter().map(|(p, s)| (*p, s.to_string())));
    files
}

/// The crate's `Cargo.toml`: the package, then a workspace of the package and the
/// vendored SDK with the guest workspace's settings.
fn manifest(name: &str) -> String {
    let lib = lib_name(name);
    format!(
        r#"# A taskhost task module, made by `taskhost task new`: a WebAssembly component
# (wasm32-wasip2, set in .cargo/config.toml) of the world taskhost:task/task.
#
#   cargo build --release  ->  target/wasm32-wasip2/release/{lib}.wasm
[package]
name = "{name}"
version = "0.1.0"
edition.workspace = true
rust-version.workspace = true
publish = false

[lib]
name = "{lib}"
crate-type = ["cdylib"]

[dependencies]
taskhost-guest.workspace = true
serde.workspace = true

[lints]
workspace = true

# The crate is a workspace of its own, with the guest SDK vendored in taskhost-guest/.
[workspace]
resolver = "3"
members = ["taskhost-guest"]

{}"#,
        workspace_sections(GUEST_WORKSPACE)
    )
}

/// The sections of the guest workspace's manifest from `[workspace.package]` on (package
/// defaults, dependencies, lints, profiles), with its path dependencies replaced by the
/// vendored SDK.
fn workspace_sections(manifest: &str) -> String {
    let mut out = String::new();
    let mut started = false;
    let mut section = "";
    for line in manifest.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed;
            started |= section == "[workspace.package]";
        }
        if !started {
            continue;
        }
        if section == "[workspace.dependencies]" && trimmed.contains("path =") {
            if trimmed.starts_with(SDK_PACKAGE) {
                out.push_str("taskhost-guest = { path = \"taskhost-guest\" }\n");
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The crate's `src/lib.rs`: a minimal typed task.
fn task_source(name: &str) -> String {
    let ty = type_name(name);
    format!(
        r#"//! `{lib}.wasm`: a taskhost task module. Input `{{"count": 10}}`, output
//! `{{"done": 10, "sum": 55}}`: it adds up 1..=count, a checkpoint per step.

use serde::{{Deserialize, Serialize}};
use taskhost_guest::{{Error, Task, checkpoint, progress}};

/// The job document (its other fields, like `job_id`, are ignored).
#[derive(Deserialize)]
struct Input {{
    count: u64,
}}

/// The checkpoint, and at the end the result: the steps done and their sum.
#[derive(Default, Serialize, Deserialize)]
struct State {{
    done: u64,
    sum: u64,
}}

struct {ty};

impl Task for {ty} {{
    type Input = Input;
    type Output = State;

    fn run(input: Input) -> Result<State, Error> {{
        let mut state: State = checkpoint::load_or_default()?;
        while state.done < input.count {{
            state.done += 1;
            state.sum += state.done;
            checkpoint::save(&state)?; // on a conflict, `?` stops the task at once
            progress::report(state.done, input.count);
        }}
        Ok(state)
    }}
}}

taskhost_guest::export_task!({ty});
"#,
        lib = lib_name(name),
    )
}

/// Prints what to do with the new crate.
fn print_next_steps(name: &str, root: &Path, template: Template) {
    let wasm = format!("target/wasm32-wasip2/release/{}.wasm", lib_name(name));
    if template == Template::Nn {
        println!(
            "Created {root}: a model inference task (the classify example in src/lib.rs, the \
             SDK in taskhost-guest/; its input is described at the top of src/lib.rs).\n\
             \n\
             Next:\n  \
             cd {root}\n  \
             cargo build --release     # needs the target: rustup target add wasm32-wasip2\n  \
             # the module: {wasm}; run it on a worker with ORT_DYLIB_PATH set\n  \
             taskhost module push {wasm}",
            root = root.display(),
        );
        return;
    }
    println!(
        "Created {root}: a task module crate (the task in src/lib.rs, the SDK in \
         taskhost-guest/).\n\
         \n\
         Next:\n  \
         cd {root}\n  \
         cargo build --release     # needs the target: rustup target add wasm32-wasip2\n  \
         # the module: {wasm}\n  \
         taskhost run {wasm} --input '{{\"job_id\": \"try-1\", \"count\": 10}}'\n  \
         taskhost module push {wasm}",
        root = root.display(),
    );
}

/// The crate's `[lib] name`, which names the `.wasm`.
fn lib_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The task's type: `name` in CamelCase (`my-task` -> `MyTask`), suffixed with `Task` if
/// that would clash with a name the template uses.
fn type_name(name: &str) -> String {
    let mut ty: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first.into_iter().chain(chars).collect::<String>()
        })
        .collect();
    const TAKEN: [&str; 8] = [
        "Input",
        "State",
        "Error",
        "Task",
        "Serialize",
        "Deserialize",
        "Result",
        "Self",
    ];
    if TAKEN.contains(&ty.as_str()) {
        ty.push_str("Task");
    }
    ty
}

/// Checks that `name` is a crate name cargo accepts and that the template can use.
///
/// # Errors
///
/// A sentence saying what is wrong.
fn check_name(name: &str) -> Result<(), String> {
    const KEYWORDS: [&str; 52] = [
        "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
        "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
        "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub",
        "ref", "return", "self", "static", "struct", "super", "trait", "true", "try", "type",
        "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield", "union",
    ];
    // Names cargo refuses for a package: the standard crates and its own directories.
    const RESERVED: [&str; 10] = [
        "alloc",
        "core",
        "proc_macro",
        "std",
        "test",
        "build",
        "deps",
        "examples",
        "incremental",
        "taskhost_guest",
    ];
    let Some(first) = name.chars().next() else {
        return Err("it is empty".to_string());
    };
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "it has {} characters, more than {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if !first.is_ascii_alphabetic() {
        return Err("it must start with an ASCII letter".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "'{bad}' is not allowed: use ASCII letters, digits, '-' and '_'"
        ));
    }
    if KEYWORDS.contains(&name) {
        return Err("it is a Rust keyword".to_string());
    }
    if RESERVED.contains(&lib_name(name).to_ascii_lowercase().as_str()) {
        return Err("the name is reserved (by cargo, or by the vendored SDK)".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["my-task", "digest2", "A_b-c", "x"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "2fast",
            "-x",
            "my task",
            "tâche",
            "a/b",
            "fn",
            "std",
            "taskhost-guest",
            "taskhost_guest",
            long.as_str(),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn type_names() {
        assert_eq!(type_name("my-task"), "MyTask");
        assert_eq!(type_name("a__b"), "AB");
        assert_eq!(type_name("task"), "TaskTask");
        assert_eq!(type_name("input"), "InputTask");
    }

    #[test]
    fn manifest_vendors_the_sdk() {
        let m = manifest("my-task");
        assert!(m.contains("name = \"my-task\""), "{m}");
        assert!(m.contains("name = \"my_task\""), "{m}");
        assert!(
            m.contains("taskhost-guest = { path = \"taskhost-guest\" }"),
            "{m}"
        );
        assert!(m.contains("[workspace.package]"), "{m}");
        assert!(m.contains("wit-bindgen = "), "{m}");
        assert!(m.contains("[profile.release]"), "{m}");
        assert!(!m.contains("path = \"sdk\""), "{m}");
        assert!(!m.contains("prime-core"), "{m}");
        assert_eq!(m.matches("[workspace]").count(), 1, "{m}");
        // The vendored SDK reads its world where the crate puts it.
        assert!(SDK_LIB.contains("path: \"wit/task.wit\""));
        assert!(SDK_MANIFEST.contains("name = \"taskhost-guest\""));
    }

    #[test]
    fn every_sdk_source_file_is_vendored() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-tasks/sdk/src");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let path = format!("taskhost-guest/src/{name}");
            assert!(
                SDK_SOURCES.iter().any(|(p, _)| *p == path),
                "{name} is not in SDK_SOURCES"
            );
        }
        let nn = files("my-nn", Template::Nn);
        let lib = &nn.iter().find(|(p, _)| *p == "src/lib.rs").unwrap().1;
        assert!(lib.contains("taskhost_guest::nn"), "{lib}");
        // The guest workspace's build settings, loop unrolling included (what keeps fuel
        // metering cheap), are the new crate's.
        let config = &nn
            .iter()
            .find(|(p, _)| *p == ".cargo/config.toml")
            .unwrap()
            .1;
        assert!(config.contains("target = \"wasm32-wasip2\""), "{config}");
        assert!(config.contains("-unroll-partial-threshold="), "{config}");
    }

    #[test]
    fn refuses_an_existing_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("my-task");
        create("my-task", &root, Template::Basic).unwrap();
        assert!(root.join("taskhost-guest/wit/task.wit").exists());
        assert!(root.join("taskhost-guest/src/nn.rs").exists());
        let err = create("my-task", &root, Template::Basic)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exists already"), "{err}");
        let err = create("fn", &tmp.path().join("fn"), Template::Basic)
            .unwrap_err()
            .to_string();
        assert!(err.contains("keyword"), "{err}");
        assert!(!tmp.path().join("fn").exists());
    }
}
